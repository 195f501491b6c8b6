"""N-LEEP: LEEP with a Gaussian mixture as the "source classifier" (Li et al., CVPR 2021).

Reference: Li, Jia, Sang, Zhu, Green, Wang, Gong, "Ranking Neural Checkpoints", CVPR 2021,
arXiv 2011.11200. Constants checked against the public re-implementation
that later benchmarks (SFDA, ECCV 2022) use: ``NLEEP`` in ``metrics.py`` of
github.com/TencentARC/SFDA.

N-LEEP replaces LEEP's source-model softmax by the posteriors of a Gaussian mixture fitted to the
target features themselves, so it needs no source head::

    F'        = PCA(F), keeping the fewest components whose explained variance >= `variance`
                (0.8 = "80% of the energy", as in the reference code)
    GMM       = Gaussian mixture on F' with K = components_per_class * n_classes components
                (full covariances, scikit-learn defaults: k-means init, reg_covar 1e-6,
                100 EM iterations, one init), K capped at n_samples
    theta_i   = GMM posteriors p(component | x_i)              (the "source predictions")
    N-LEEP    = LEEP(theta, y)                                  (see :mod:`ccfv.estimators.leep`)

``components_per_class = 5`` is the reference code's ``component_ratio = 5`` (K = 5 x the
number of target classes); the paper treats the number of components, like the PCA energy, as a
free parameter of the method and studies both in an ablation. n_classes counts the classes
present in the samples (background included). Unlike the SFDA repository's ``NLEEP``, which
returns the mean expected empirical prediction without the log, the log of LEEP is kept (N-LEEP
is LEEP with a GMM head, as the paper defines it).

Cost: the EM of a full-covariance mixture is O(iterations x n x K x k^2) for k PCA dimensions;
on 24000 samples of 32 channels, 3 classes (K = 15), it takes tens of seconds on two CPU cores,
far more than the other baselines (the SFDA paper reports a 22.5x wall-clock gap).

Deterministic for a given ``seed``: the PCA is an exact SVD (``svd_solver="full"``) and the
mixture's k-means initialisation uses ``random_state=seed``. Larger = more transferable.
"""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture

from ccfv.errors import UserError
from ccfv.estimators._labelled import labelled_samples
from ccfv.estimators.featureset import FeatureSet
from ccfv.estimators.leep import _leep


def nleep_score(features: FeatureSet, *, layer: str | None = None, variance: float = 0.8,
                components_per_class: int = 5, seed: int = 0) -> float:
    """N-LEEP of a feature set's layer.

    Parameters
    ----------
    features : feature set ``{layer: [(X, y) per case]}``; the chosen layer's rows of all
        cases are pooled.
    layer : which layer; default the last (the layer before the final convolution).
    variance : fraction of the feature variance the PCA keeps, in (0, 1] (1 keeps every
        component).
    components_per_class : Gaussian components per target class (total capped at the number
        of samples).
    seed : random state of the mixture's initialisation.

    Returns
    -------
    float, <= 0; larger = more transferable.

    Raises
    ------
    UserError
        Fewer than 2 classes, constant features, or an option out of range.
    """
    if not (isinstance(variance, numbers.Real) and 0 < variance <= 1):
        raise UserError(f"nleep: variance={variance!r} must be a fraction in (0, 1], e.g. 0.8")
    if (not isinstance(components_per_class, numbers.Integral)
            or isinstance(components_per_class, bool) or components_per_class < 1):
        raise UserError(f"nleep: components_per_class={components_per_class!r} must be an "
                        "integer >= 1, e.g. 5")
    data = labelled_samples(features, layer, "nleep")
    X, labels = data.X, data.labels
    theta = _gmm_posteriors(X, n_classes=int(labels.max()) + 1, variance=float(variance),
                            components_per_class=int(components_per_class), seed=seed)
    return _leep(theta, labels)


def _gmm_posteriors(X: np.ndarray, *, n_classes: int, variance: float,
                    components_per_class: int, seed: int) -> np.ndarray:
    """PCA to ``variance`` of the energy, then the posteriors of a seeded Gaussian mixture."""
    if not np.any(np.ptp(X, axis=0) > 0):
        raise UserError(
            "nleep: every feature channel is constant over the samples, so there is nothing for "
            "the PCA and the mixture to fit: check that the layer's features are not all equal")
    pca = PCA(n_components=None if variance >= 1 else variance, svd_solver="full")
    reduced = pca.fit_transform(X)
    n_components = min(components_per_class * n_classes, X.shape[0])
    gmm = GaussianMixture(n_components=n_components, covariance_type="full",
                          random_state=seed)
    gmm.fit(reduced)
    return gmm.predict_proba(reduced)
