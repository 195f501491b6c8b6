"""GBC: Gaussian Bhattacharyya Coefficient, the overlap of per-class Gaussians of the features.

Reference: Pandy, Agostinelli, Uijlings, Ferrari, Mensink, "Transferability Estimation using
Bhattacharyya Class Separability", CVPR 2022, arXiv 2111.12780. Checked against the authors'
release (github.com/google-research/google-research, ``stable_transfer/transferability/gbc.py``
and its configs).

With X the pooled features of one layer, optionally reduced to its first ``pca_dim`` principal
components, each class k present (background 0 included) is a Gaussian with the class mean
mu_k and the per-dimension maximum-likelihood variances v_k (divisor n_k, as the release)::

    diagonal:   Sigma_k = diag(v_k)
    spherical:  Sigma_k = sbar_k I,   sbar_k = mean_j v_kj
    S           = (Sigma_i + Sigma_j) / 2
    D_B(i, j)   = 1/8 (mu_i - mu_j)^T S^-1 (mu_i - mu_j)
                  + 1/2 log(det S / sqrt(det Sigma_i det Sigma_j))
    BC(i, j)    = exp(-D_B(i, j))
    GBC         = - sum_i sum_{j != i} BC(i, j)        (ordered pairs: each pair counts twice,
                                                        as in the paper and the release)

GBC <= 0; larger (closer to 0) = better separated classes = more transferable.

Choices, documented:

- ``pca_dim=64`` by default: the release reduces the features to 64 principal components
  before GBC (its source-selection configs, classification and segmentation). The reduction
  applies only when the layer has more than ``pca_dim`` channels; components whose variance
  is at or below ``var_max * max(n, d) * machine eps`` (none when n > d and the features are
  not collinear) are dropped. The axes come from the smaller Gram matrix of the centred
  features (see :mod:`ccfv.estimators._labelled`). ``pca_dim=None`` keeps the raw channels.
- ``covariance="diagonal"`` by default: the release's segmentation config (its classification
  config uses "spherical").
- variances are floored at 1e-4 times the pooled variance of the same dimension (a class with
  1 sample or a channel constant within a class still gives a finite distance); the release
  floors at an absolute 1e-4, which is the same for features of unit variance but not scale
  invariant. A channel constant over ALL samples carries no information and is dropped.
- spherical: the log-determinant term is ``d/2 log(((sbar_i + sbar_j)/2) / sqrt(sbar_i
  sbar_j))``, exact for two spherical Gaussians in d dimensions; the release's spherical
  branch omits the factor d.
"""

from __future__ import annotations

import numpy as np

from ccfv.errors import UserError
from ccfv.estimators._labelled import labelled_samples, spectrum
from ccfv.estimators._threads import one_blas_thread
from ccfv.estimators.featureset import FeatureSet

COVARIANCES = ("diagonal", "spherical")
#: Class variances are floored at this fraction of the pooled variance of their dimension.
VARIANCE_FLOOR = 1e-4


@one_blas_thread
def gbc_score(
    features: FeatureSet,
    *,
    layer: str | None = None,
    covariance: str = "diagonal",
    pca_dim: int | None = 64,
) -> float:
    """GBC of one layer's pooled features for the voxel classes (larger = better, <= 0).

    Parameters
    ----------
    features : feature set ``{layer: [(X, y) per case]}``.
    layer : which layer; default the last (the layer before the final convolution).
    covariance : ``"diagonal"`` (per-dimension variances) or ``"spherical"`` (one variance
        per class, the mean of its per-dimension variances).
    pca_dim : reduce to this many principal components first when the layer has more
        channels (the release's 64); ``None``: no reduction.

    Returns
    -------
    float in ``[-K (K - 1), 0]`` for K classes: minus the sum of the Bhattacharyya
    coefficients over ordered pairs of distinct classes.

    Raises
    ------
    UserError
        Fewer than 2 classes, an unknown ``covariance`` or a bad ``pca_dim``.
    FeatureSetError
        A malformed feature set.
    """
    if covariance not in COVARIANCES:
        raise UserError(f"gbc: covariance must be one of {COVARIANCES}, got {covariance!r}")
    if pca_dim is not None and not (
        isinstance(pca_dim, (int, np.integer)) and not isinstance(pca_dim, bool) and pca_dim >= 1
    ):
        raise UserError(f"gbc: pca_dim must be a positive integer or None, got {pca_dim!r}")
    data = labelled_samples(features, layer, "gbc")
    X = data.X
    if pca_dim is not None and X.shape[1] > pca_dim:
        X = _principal_components(X, pca_dim)
    X = X[:, np.ptp(X, axis=0) > 0]  # drop channels constant everywhere
    means, variances = _class_moments(X, data.labels, data.classes.size)
    distances = _bhattacharyya(means, variances, covariance)
    coefficients = np.exp(-distances)
    np.fill_diagonal(coefficients, 0.0)
    return float(-coefficients.sum())


def _principal_components(X: np.ndarray, dim: int) -> np.ndarray:
    """Scores of the centred X on its first ``dim`` principal axes (numerically zero dropped)."""
    Xc = X - X.mean(axis=0)
    lam, W, right = spectrum(Xc)
    keep = min(dim, lam.size)
    if right:
        return Xc @ W[:, :keep]  # W = V: the principal axes
    return W[:, :keep] * np.sqrt(lam[:keep])  # W = U: scores are U diag(s)


def _class_moments(X: np.ndarray, labels: np.ndarray, n_classes: int):
    """Per-class means (K, d) and floored maximum-likelihood variances (K, d)."""
    d = X.shape[1]
    means = np.empty((n_classes, d))
    variances = np.empty((n_classes, d))
    for c in range(n_classes):
        rows = X[labels == c]
        means[c] = rows.mean(axis=0)
        variances[c] = np.mean((rows - means[c]) ** 2, axis=0)
    floor = VARIANCE_FLOOR * np.var(X, axis=0)
    return means, np.maximum(variances, floor)


def _bhattacharyya(means: np.ndarray, variances: np.ndarray, covariance: str) -> np.ndarray:
    """Bhattacharyya distances (K, K) between diagonal or spherical Gaussians."""
    d = means.shape[1]
    if covariance == "spherical":
        variances = variances.mean(axis=1, keepdims=True) if d else np.ones((len(means), 1))
        weight = float(d)  # log det of sbar I_d is d log sbar
    else:
        weight = 1.0
    diff2 = (means[:, None, :] - means[None, :, :]) ** 2
    avg = 0.5 * (variances[:, None, :] + variances[None, :, :])
    logv = np.log(variances)
    mahalanobis = np.sum(diff2 / avg, axis=2) / 8.0
    log_det = weight * np.sum(np.log(avg) - 0.5 * (logv[:, None, :] + logv[None, :, :]), axis=2)
    # Both terms are >= 0 in exact arithmetic (AM >= GM of the variances); the log-det term
    # can round to -1e-16 for equal variances, which would give a coefficient exp(-d) > 1.
    # Clip at 0 so every Bhattacharyya coefficient stays in (0, 1] and GBC in [-K(K-1), 0].
    return np.maximum(mahalanobis + 0.5 * log_det, 0.0)
