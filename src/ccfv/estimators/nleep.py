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

Cost: the EM of a full-covariance mixture is O(iterations x n x K x k^2) for k PCA dimensions.
Two things made it take tens of seconds on 24000 samples of 32 channels, 3 classes (K = 15), on
a loaded 2-core machine: BLAS threads fighting over the cores in thousands of small matrix
products (each EM step is K products of an n x k matrix with a k x k one), and scikit-learn's
per-component loops. So by default (``mixture="fast"``) the EM runs here, under one BLAS
thread (``threads=1``), as scikit-learn's ``GaussianMixture.fit`` + ``predict_proba`` does it
step for step (same k-means initialisation, called from scikit-learn; same M-step, Cholesky
factors, log-sum-exp and stopping rule ``|change of mean log-likelihood| < 1e-3``), with the
E-step's K products batched into one and the final E-step done once instead of twice. The
posteriors agree with scikit-learn's to round-off (the tests check 1e-10 relative on the score);
``mixture="sklearn"`` calls ``GaussianMixture`` itself (the reference, kept for comparison),
``threads=None`` leaves the process's BLAS thread setting alone.
``benchmarks/bench_estimator.py`` times both.

Deterministic for a given ``seed``: the PCA is an exact SVD (``svd_solver="full"``) and the
mixture's k-means initialisation uses ``random_state=seed``. Larger = more transferable.
"""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np
import scipy.linalg
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from sklearn.utils import check_random_state

from ccfv.errors import UserError
from ccfv.estimators._labelled import labelled_samples
from ccfv.estimators._threads import limited
from ccfv.estimators.featureset import FeatureSet
from ccfv.estimators.leep import _leep

#: Ways to fit the mixture: this module's EM (default) or scikit-learn's ``GaussianMixture``.
MIXTURES = ("fast", "sklearn")
#: scikit-learn ``GaussianMixture`` defaults that both ways use.
REG_COVAR, TOL, MAX_ITER = 1e-6, 1e-3, 100


def nleep_score(
    features: FeatureSet,
    *,
    layer: str | None = None,
    variance: float = 0.8,
    components_per_class: int = 5,
    seed: int = 0,
    mixture: str = "fast",
    threads: int | None = 1,
) -> float:
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
    mixture : ``"fast"`` (this module's batched EM, scikit-learn's steps) or ``"sklearn"``
        (``GaussianMixture`` itself); the same posteriors to round-off.
    threads : BLAS threads during the PCA and the EM (default 1: many small products, where
        more threads on a shared machine cost more than they give); ``None``: leave the
        process's setting.

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
    if (
        not isinstance(components_per_class, numbers.Integral)
        or isinstance(components_per_class, bool)
        or components_per_class < 1
    ):
        raise UserError(
            f"nleep: components_per_class={components_per_class!r} must be an integer >= 1, e.g. 5"
        )
    if mixture not in MIXTURES:
        raise UserError(f"nleep: mixture={mixture!r} must be one of {', '.join(MIXTURES)}")
    if threads is not None and (
        not isinstance(threads, numbers.Integral) or isinstance(threads, bool) or threads < 1
    ):
        raise UserError(
            f"nleep: threads={threads!r} must be an integer >= 1 (default 1) or "
            "None to keep the process's BLAS threads"
        )
    data = labelled_samples(features, layer, "nleep")
    X, labels = data.X, data.labels
    with limited(threads):
        theta = _gmm_posteriors(
            X,
            n_classes=int(labels.max()) + 1,
            variance=float(variance),
            components_per_class=int(components_per_class),
            seed=seed,
            mixture=mixture,
        )
    return _leep(theta, labels)


def _gmm_posteriors(
    X: np.ndarray,
    *,
    n_classes: int,
    variance: float,
    components_per_class: int,
    seed: int,
    mixture: str = "fast",
) -> np.ndarray:
    """PCA to ``variance`` of the energy, then the posteriors of a seeded Gaussian mixture."""
    if not np.any(np.ptp(X, axis=0) > 0):
        raise UserError(
            "nleep: every feature channel is constant over the samples, so there is nothing for "
            "the PCA and the mixture to fit: check that the layer's features are not all equal"
        )
    pca = PCA(n_components=None if variance >= 1 else variance, svd_solver="full")
    reduced = pca.fit_transform(X)
    n_components = min(components_per_class * n_classes, X.shape[0])
    if mixture == "fast":
        return _em_posteriors(reduced, n_components, seed)
    gmm = GaussianMixture(n_components=n_components, covariance_type="full", random_state=seed)
    gmm.fit(reduced)
    return gmm.predict_proba(reduced)


def _em_posteriors(X: np.ndarray, n_components: int, seed: int) -> np.ndarray:
    """Posteriors of a full-covariance Gaussian mixture fitted by EM, step for step as
    scikit-learn's ``GaussianMixture(n_components, covariance_type="full", random_state=seed)``
    (k-means initialisation, ``reg_covar`` 1e-6, ``tol`` 1e-3, 100 iterations, one init)."""
    X = np.ascontiguousarray(X, dtype=np.float64)
    n = X.shape[0]
    random_state = check_random_state(seed)  # as GaussianMixture.fit_predict does
    label = KMeans(n_clusters=n_components, n_init=1, random_state=random_state).fit(X).labels_
    resp = np.zeros((n, n_components))
    resp[np.arange(n), label] = 1
    weights, means, prec_chol = _m_step(X, resp)
    weights /= n  # initialisation: weights = nk / n
    lower_bound, converged = -np.inf, False
    for _ in range(MAX_ITER):
        previous = lower_bound
        log_prob_norm, log_resp = _e_step(X, weights, means, prec_chol)
        weights, means, prec_chol = _m_step(X, np.exp(log_resp))
        weights /= weights.sum()
        lower_bound = float(np.mean(log_prob_norm))
        if abs(lower_bound - previous) < TOL:
            converged = True
            break
    if not converged:
        warnings.warn(
            "nleep: the Gaussian mixture's EM did not converge in "
            f"{MAX_ITER} iterations; its last parameters are used",
            ConvergenceWarning,
            stacklevel=3,
        )
    return np.exp(_e_step(X, weights, means, prec_chol)[1])


def _m_step(X: np.ndarray, resp: np.ndarray):
    """Weights (unnormalised), means and precision Cholesky factors from responsibilities
    (scikit-learn's ``_estimate_gaussian_parameters`` + ``_compute_precision_cholesky``)."""
    d = X.shape[1]
    nk = resp.sum(axis=0) + 10 * np.finfo(resp.dtype).eps
    means = (resp.T @ X) / nk[:, np.newaxis]
    eye = np.eye(d)
    prec_chol = np.empty((means.shape[0], d, d))
    for k in range(means.shape[0]):
        diff = X - means[k, :]
        covariance = ((resp[:, k] * diff.T) @ diff) / nk[k]
        covariance.flat[:: d + 1] += REG_COVAR
        try:
            cov_chol = scipy.linalg.cholesky(covariance, lower=True)
        except np.linalg.LinAlgError:
            raise UserError(
                "nleep: a Gaussian component of the mixture collapsed (singular covariance: "
                "duplicated or too few samples for the components); use fewer "
                "components_per_class or another layer"
            ) from None
        prec_chol[k] = scipy.linalg.solve_triangular(cov_chol, eye, lower=True).T
    return nk, means, prec_chol


def _e_step(X: np.ndarray, weights: np.ndarray, means: np.ndarray, prec_chol: np.ndarray):
    """Per-sample log-likelihood and log-responsibilities (scikit-learn's
    ``_estimate_log_prob_resp``), the K Mahalanobis products batched into one."""
    n, d = X.shape
    K = means.shape[0]
    log_det = np.sum(np.log(prec_chol.reshape(K, -1)[:, :: d + 1]), axis=1)
    stacked = np.ascontiguousarray(prec_chol.transpose(1, 0, 2)).reshape(d, K * d)
    shift = np.stack([means[k] @ prec_chol[k] for k in range(K)]).reshape(K * d)
    y = X @ stacked
    y -= shift
    np.square(y, out=y)
    maha = y.reshape(n, K, d).sum(axis=2)
    weighted = -0.5 * (d * math.log(2 * math.pi) + maha) + log_det + np.log(weights)
    log_prob_norm = _logsumexp_rows(weighted)
    with np.errstate(under="ignore"):
        log_resp = weighted - log_prob_norm[:, np.newaxis]
    return log_prob_norm, log_resp


def _logsumexp_rows(a: np.ndarray) -> np.ndarray:
    """log sum exp over each row, as scikit-learn's ``_logsumexp(a, axis=1)`` computes it
    (the maxima taken out, ``log1p`` of the rest)."""
    a_max = np.max(a, axis=1, keepdims=True)
    index_max = a == a_max
    rest = a.copy()
    rest[index_max] = -np.inf
    m = np.sum(index_max.astype(a.dtype), axis=1, keepdims=True, dtype=a.dtype)
    shift = np.where(np.isfinite(a_max), a_max, 0)
    s = np.sum(np.exp(rest - shift), axis=1, keepdims=True, dtype=a.dtype)
    s = np.where(s == 0, s, s / m)
    return np.squeeze(np.log1p(s) + np.log(m) + a_max, axis=1)
