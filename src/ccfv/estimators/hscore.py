"""H-score and its shrinkage (regularised) version: class-mean spread in whitened features.

References:

- H-score: Bao, Li, Huang, Wang, Zheng, Tong, "An Information-Theoretic Approach to
  Transferability in Task Transfer Learning", ICIP 2019 (doi 10.1109/ICIP.2019.8803726).
  Checked against TLlib (``tllib/ranking/hscore.py``) and the authors' code as quoted in
  google-research ``stable_transfer/transferability/hscore.py``.
- Shrinkage H-score: Ibrahim, Ponomareva, Mazumder, "Newer is not always better: Rethinking
  transferability metrics, their peculiarities, stability and performance", ECML PKDD 2022,
  arXiv 2110.06893. Checked against TLlib's ``regularized_h_score``.

With X (n x d) the pooled features of one layer, mu their mean, mu_k the mean of class k (all
classes present, background 0 included) and n_k its size::

    S      = 1/n (X - mu)^T (X - mu)                       (cov f)
    B      = sum_k n_k/n (mu_k - mu)(mu_k - mu)^T          (cov E[f | y])
    H      = tr(S^+ B)
    S_a    = (1 - a) S + a m I,   m = tr(S)/d,   a = Ledoit-Wolf shrinkage of X
    H_a    = tr(S_a^-1 (1 - a) B)

``a`` is the Ledoit-Wolf (2004) coefficient as scikit-learn's ``ledoit_wolf_shrinkage``
computes it (divisor n, centred data), in closed form from the singular values of X - mu and
the row norms: with F = ||S||_F^2, b = (sum_i |x_i - mu|^4 / n - F) / (n d) and
g = (F - d m^2) / d, a = min(b, g) / g (a = 0 when min(b, g) = 0; a = 0 for d = 1).

H uses the same divisor for S and B, so it equals the authors' ``tr(pinv(cov f) cov g)`` with
``np.cov`` (divisor n - 1) for both. TLlib's ``regularized_h_score`` divides S by n
(scikit-learn) but B by n - 1: its value is ``n/(n - 1)`` times ``H_a`` here. With a = 0,
``H_a = H``.

Both are computed from the thin SVD X - mu = U diag(s) V^T (from the smaller Gram matrix, see
:mod:`ccfv.estimators._labelled`): B and S share the right singular vectors
(mu_k - mu = V diag(s) U^T 1_k / n_k), so::

    H   = sum_k |U_r^T 1_k|^2 / n_k
    H_a = (1 - a) sum_k 1/n_k sum_i (u_i^T 1_k)^2 s_i^2 / ((1 - a) s_i^2 + n a m)

with U_r the left singular vectors whose squared singular value exceeds ``s_max^2 * max(n, d) *
machine eps`` (the pseudo-inverse's cut-off, relative to the largest eigenvalue of S: about
1e-11 for 50 000 samples where the authors' ``pinv(rcond=1e-15)`` keeps round-off; directions
below it carry no class-mean difference). This is exact for rank-deficient S (collinear
channels, n <= d) and never forms a d x d inverse.

0 <= H <= K - 1 for K classes (B <= S). When n <= d and the n - 1 centred samples are linearly
independent (generic features), H = K - 1 whatever the features: the plain H-score cannot rank
such input, the shrinkage version still can. Larger = more transferable.
"""

from __future__ import annotations

import numpy as np

from ccfv.estimators._labelled import Labelled, labelled_samples, left_projections
from ccfv.estimators._threads import one_blas_thread
from ccfv.estimators.featureset import FeatureSet


@one_blas_thread
def hscore(features: FeatureSet, *, layer: str | None = None) -> float:
    """H-score ``tr(cov(f)^+ cov(E[f|y]))`` of one layer's pooled features (larger = better).

    Parameters
    ----------
    features : feature set ``{layer: [(X, y) per case]}``.
    layer : which layer; default the last (the layer before the final convolution).

    Returns
    -------
    float in ``[0, K - 1]`` for K classes (0 when the features are constant).

    Raises
    ------
    UserError
        Fewer than 2 classes among the samples.
    FeatureSetError
        A malformed feature set.
    """
    data = labelled_samples(features, layer, "hscore")
    _, projected, _ = _class_projections(data)
    return _within_bound(float(np.sum(projected**2 / data.counts)), data)


@one_blas_thread
def regularized_hscore(features: FeatureSet, *, layer: str | None = None) -> float:
    """Shrinkage H-score ``tr(S_a^-1 (1 - a) cov(E[f|y]))`` (Ledoit-Wolf ``a``; larger = better).

    Parameters
    ----------
    features : feature set ``{layer: [(X, y) per case]}``.
    layer : which layer; default the last (the layer before the final convolution).

    Returns
    -------
    float in ``[0, K - 1]`` for K classes (0 when the features are constant).

    Raises
    ------
    UserError
        Fewer than 2 classes among the samples.
    FeatureSetError
        A malformed feature set.
    """
    data = labelled_samples(features, layer, "reg-hscore")
    lam, projected, Xc = _class_projections(data)
    if lam.size == 0:
        return 0.0
    n, d = Xc.shape
    alpha = _ledoit_wolf_shrinkage(Xc, lam)
    mean_var = float(np.sum(lam)) / (n * d)  # m = tr(S)/d
    weights = lam / ((1.0 - alpha) * lam + n * alpha * mean_var)
    return _within_bound(
        float((1.0 - alpha) * np.sum(weights[:, None] * projected**2 / data.counts)), data
    )


def _within_bound(value: float, data: Labelled) -> float:
    """``value`` clipped to ``[0, K - 1]``: the H-score is the sum of the squared norms of the
    class indicators' projections (divided by the class sizes) onto an orthonormal basis, at
    most K - 1 in exact arithmetic (B <= S), and reaches it when the features are constant
    within every class; there the sum rounds to K - 1 + 1e-15. The clip keeps the documented
    bound; it never moves a value by more than round-off."""
    return min(max(value, 0.0), float(data.classes.size - 1))


def _class_projections(data: Labelled):
    """Squared singular values (r,) of the centred X, ``U_r^T 1_k`` (r, K), the centred X."""
    Xc = data.X - data.X.mean(axis=0)
    lam, projected, _ = left_projections(Xc, data.one_hot())
    return lam, projected, Xc


def _ledoit_wolf_shrinkage(Xc: np.ndarray, lam: np.ndarray) -> float:
    """Ledoit-Wolf shrinkage of centred samples Xc (n x d); ``lam``: its nonzero s_i^2."""
    n, d = Xc.shape
    if d == 1:
        return 0.0  # scikit-learn's convention
    eig = lam / n  # nonzero eigenvalues of S
    mu = float(np.sum(eig)) / d
    frob2 = float(np.sum(eig**2))  # ||S||_F^2
    fourth = float(np.sum(np.sum(Xc**2, axis=1) ** 2))  # sum_i |x_i|^4
    beta = (fourth / n - frob2) / (n * d)
    delta = (frob2 - d * mu**2) / d  # ||S - mu I||_F^2 / d
    beta = min(beta, delta)
    return 0.0 if beta <= 0.0 else beta / delta
