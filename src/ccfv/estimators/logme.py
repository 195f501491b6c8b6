"""LogME: the logarithm of the maximum evidence of a Bayesian linear model on the features.

Reference: You, Liu, Wang, Long, "LogME: Practical Assessment of Pre-trained Models for
Transfer Learning", ICML 2021, arXiv 2102.11005 (Algorithm 1); the fixed-point form of the
updates is that of You et al., "Ranking and Tuning Pre-trained Models: A New Paradigm for
Exploiting Model Hubs", JMLR 2022, arXiv 2110.10545. Checked against the authors' release
(github.com/thuml/LogME, ``LogME.py``, ``_fit_fixed_point``).

With F (n x D) the pooled features of one layer (not centred, no bias column, as in the paper)
and, for every class k present (background 0 included), the one-hot target y = [label == k]::

    y | F, w ~ N(F w, 1/beta I_n),    w ~ N(0, 1/alpha I_D)
    A        = alpha I + beta F^T F,   m = beta A^-1 F^T y
    gamma    = sum_i beta s_i / (alpha + beta s_i)
    L(alpha, beta) = D/2 log alpha + n/2 log beta - n/2 log 2 pi
                     - beta/2 |y - F m|^2 - alpha/2 |m|^2 - 1/2 log det A
                   ( = log N(y; 0, 1/beta I_n + 1/alpha F F^T), the evidence )
    fixed point:   alpha <- gamma / |m|^2,   beta <- (n - gamma) / |y - F m|^2,
                   from alpha = beta = 1, until |t' - t| <= tol t for t = alpha / beta
    LogME    = mean over classes of L(alpha*, beta*) / n

with s_i the squared singular values of F. One thin SVD of F serves every class and every
iteration: with x = U^T y and t = alpha / beta, every quantity is a sum over the min(n, D)
singular directions. The SVD comes from the eigendecomposition of the smaller Gram matrix
(F^T F when n >= D, as the release's ``truncated_svd``; F F^T when n < D), so it costs
O(n D min(n, D)) and n < D is no dearer than n > D (see :mod:`ccfv.estimators._labelled`).

Differences from the release, all deliberate:

- ``log det A`` counts the D - rank directions where F is zero (eigenvalue alpha); the release
  omits their ``(D - rank)/2 log alpha`` when n < D, which overstates the evidence there.
- the evidence is evaluated at the final (alpha, beta) with m and |y - F m| of those very
  values (the release mixes the last update with the previous posterior);
- no 1e-5 added to the denominators: the two limits the iteration can run into are handled
  exactly. alpha -> inf (the features do not help this class) gives the evidence of the
  weight-free model, n/2 log(n / |y|^2) - n/2 - n/2 log 2 pi. It is taken when t passes 1e12
  times the largest s_i, or earlier, when t still rises beyond 100 times the largest s_i and
  alpha = inf is a local maximum of the evidence: rho = |y|^2 sum_i s_i / (n sum_i s_i x_i^2)
  >= 1, the sign of dL/d(1/alpha) at 1/alpha = 0 (otherwise the updates drift there for
  hundreds of iterations);
  beta -> inf (t below 1e-12 times the smallest s_i, possible only when y lies in the span of
  the features: residual outside it <= 1e-8 |y|^2) is the noise-free fit, whose evidence is
  finite when F has full row rank (rank n, so n <= D) and unbounded otherwise, which raises
  UserError;
- only classes present are scored (the release also loops over absent ids below the maximum).

Squared singular values at or below ``s_max^2 * max(n, D) * machine eps`` count as zero
(collinear or constant feature channels are fine). Larger = the features explain the labels
better.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np

from ccfv.errors import CCFVWarning, UserError
from ccfv.estimators._labelled import labelled_samples, left_projections
from ccfv.estimators._threads import one_blas_thread
from ccfv.estimators.featureset import FeatureSet

#: t = alpha/beta beyond this multiple of the largest s_i is the alpha -> inf limit.
_T_LARGE = 1e12
#: t rising beyond this multiple of the largest s_i, with alpha = inf a local maximum, is
#: taken as the alpha -> inf limit the updates are heading for.
_T_ASYMPTOTIC = 1e2
#: t below this multiple of the smallest s_i is the beta -> inf (noise-free) limit.
_T_SMALL = 1e-12
#: A class whose indicator leaves a residual |y - U U^T y|^2 <= this times |y|^2 outside the
#: features is fitted exactly (above the round-off of the residual, see ``left_projections``).
_EXACT_FIT = 1e-8
#: At max_iter, a last step that moved the evidence by at most this fraction counts as settled.
_SETTLED = 1e-9
_LOG_2PI = math.log(2.0 * math.pi)


@one_blas_thread
def logme_score(
    features: FeatureSet, *, layer: str | None = None, max_iter: int = 100, tol: float = 1e-3
) -> float:
    """LogME of one layer's pooled features for the voxel classes (larger = better).

    Parameters
    ----------
    features : feature set ``{layer: [(X, y) per case]}``.
    layer : which layer; default the last (the layer before the final convolution).
    max_iter : most fixed-point iterations per class.
    tol : stop when ``t = alpha/beta`` changes by at most ``tol * t`` (the release's 1e-3).

    Returns
    -------
    float: mean over the classes present of the maximised log evidence divided by n.

    Raises
    ------
    UserError
        Fewer than 2 classes, features that are all zero, a class indicator that is an exact
        linear function of rank-deficient features (unbounded evidence), bad options.
    FeatureSetError
        A malformed feature set.

    Warns
    -----
    CCFVWarning
        A class whose fixed point did not converge in ``max_iter`` iterations and whose
        evidence still moved by more than 1e-9 of itself in the last one (the value at the
        last iterate is used). The updates converge linearly and can be slow for a class the
        features barely explain (hundreds of iterations) while the evidence has long settled;
        that case is not warned about.
    """
    if isinstance(max_iter, bool) or not (
        isinstance(max_iter, (int, np.integer)) and max_iter >= 1
    ):
        raise UserError(f"logme: max_iter must be a positive integer, got {max_iter!r}")
    if not (np.isfinite(tol) and tol > 0):
        raise UserError(f"logme: tol must be a positive number, got {tol!r}")
    data = labelled_samples(features, layer, "logme")
    F = data.X
    n, d = F.shape
    sigma, Xp, residual = left_projections(F, data.one_hot())  # x = U^T y per class
    if sigma.size == 0:
        raise UserError(
            f"logme: every feature of layer {data.layer!r} is 0; LogME needs "
            "features that vary: check the layer and the model"
        )
    residual[residual <= _EXACT_FIT * data.counts] = 0.0  # y in the span of the features
    k = sigma.size
    evidences = []
    for c, klass in enumerate(data.classes):
        ev = _class_evidence(
            sigma, Xp[:, c], float(residual[c]), float(data.counts[c]), n, max_iter, tol
        )
        if ev.status == "unbounded":
            raise UserError(
                f"logme: the indicator of class {int(klass)} is an exact linear function of "
                f"the {d} features of layer {data.layer!r} (rank {k} < {n} samples, zero "
                "residual), so its evidence grows without bound; LogME cannot rank such "
                "features: check for a feature channel that copies the labels"
            )
        if ev.status == "max_iter":
            warnings.warn(
                f"logme: the fixed point of class {int(klass)} (layer {data.layer!r}) did not "
                f"converge in {max_iter} iterations (alpha/beta = {ev.alpha / ev.beta:.3g}); "
                "its evidence at the last iterate is used: raise max_iter",
                CCFVWarning,
                stacklevel=2,
            )
        evidences.append(ev.evidence / n)
    return float(np.mean(evidences))


class _Evidence(NamedTuple):
    """Outcome of one class: the evidence L (not divided by n) at the final alpha, beta.

    ``status``: "converged", "settled" (max_iter reached, the last step moved the evidence by
    at most 1e-9 of itself), "max_iter" (not settled), "alpha_inf" (the weight-free limit),
    "beta_inf" (the noise-free limit of full-row-rank features) or "unbounded".
    """

    evidence: float
    alpha: float
    beta: float
    iterations: int
    status: str


def _posterior_terms(sigma, x2, r2, n, t):
    """gamma, n - gamma, |m|^2 and |y - F m|^2 at t = alpha/beta (no cancellation)."""
    denom = sigma + t
    gamma = float(np.sum(sigma / denom))
    rest = (n - sigma.size) + float(np.sum(t / denom))  # n - gamma, exact for tiny t
    m2 = float(np.sum(sigma * x2 / denom**2))
    res2 = float(np.sum(x2 * (t / denom) ** 2)) + r2
    return gamma, rest, m2, res2


def _log_evidence(sigma, x2, r2, n, alpha, beta):
    """L(alpha, beta) for finite positive alpha, beta, evaluated without overflow."""
    t = alpha / beta
    _, _, m2, res2 = _posterior_terms(sigma, x2, r2, n, t)
    k = sigma.size
    return (
        0.5 * k * math.log(alpha)
        + 0.5 * (n - k) * math.log(beta)
        - 0.5 * float(np.sum(np.log(t + sigma)))
        - 0.5 * beta * res2
        - 0.5 * alpha * m2
        - 0.5 * n * _LOG_2PI
    )


def _weight_free_limit(y2, n):
    """sup over beta of the evidence as alpha -> inf: y ~ N(0, 1/beta I)."""
    return 0.5 * n * (math.log(n / y2) - 1.0 - _LOG_2PI)


def _noise_free_limit(sigma, x2, n):
    """sup over alpha of the evidence as beta -> inf, for F of full row rank (k = n)."""
    q = float(np.sum(x2 / sigma))
    alpha = n / q
    return (
        0.5 * n * (math.log(alpha) - 1.0 - _LOG_2PI) - 0.5 * float(np.sum(np.log(sigma)))
    ), alpha


def _class_evidence(sigma, x, r2, y2, n, max_iter, tol) -> _Evidence:
    """Maximise the evidence of one target by the fixed-point updates.

    ``sigma``: retained squared singular values of F (k,); ``x``: U^T y (k,); ``r2``: squared
    norm of y outside the span of U; ``y2``: |y|^2; ``n``: the number of samples.
    """
    x2 = x**2
    if not np.any(x2 > 0):  # y orthogonal to every feature
        return _Evidence(_weight_free_limit(y2, n), math.inf, n / y2, 0, "alpha_inf")
    t_large = _T_LARGE * sigma[0]
    t_asymptotic = _T_ASYMPTOTIC * sigma[0]
    # alpha = inf is a local maximum of the evidence iff rho >= 1 (d L / d(1/alpha) <= 0 there)
    rho = float(np.sum(sigma)) * y2 / (n * float(np.sum(sigma * x2)))
    # the noise-free limit exists only for an exact fit (no residual outside the features)
    t_small = _T_SMALL * sigma[-1] if r2 == 0.0 else 0.0
    alpha, beta = 1.0, 1.0
    t = alpha / beta
    for it in range(1, max_iter + 1):
        gamma, rest, m2, res2 = _posterior_terms(sigma, x2, r2, n, t)
        if res2 == 0.0:  # t underflowed: the noise-free limit
            return _noise_free_or_unbounded(sigma, x2, n, it)
        previous = (alpha, beta)
        alpha, beta = gamma / m2, rest / res2
        t_new = alpha / beta
        if t_new > t_large or (t_new > max(t, t_asymptotic) and rho >= 1.0):
            return _Evidence(_weight_free_limit(y2, n), math.inf, n / y2, it, "alpha_inf")
        if t_new < t_small:
            return _noise_free_or_unbounded(sigma, x2, n, it)
        done = abs(t_new - t) <= tol * t
        t = t_new
        if done:
            return _Evidence(
                _log_evidence(sigma, x2, r2, n, alpha, beta), alpha, beta, it, "converged"
            )
    value = _log_evidence(sigma, x2, r2, n, alpha, beta)
    before = _log_evidence(sigma, x2, r2, n, *previous) if max_iter > 1 else -math.inf
    settled = abs(value - before) <= _SETTLED * abs(value)
    return _Evidence(value, alpha, beta, max_iter, "settled" if settled else "max_iter")


def _noise_free_or_unbounded(sigma, x2, n, it) -> _Evidence:
    if sigma.size < n:
        return _Evidence(math.inf, 0.0, math.inf, it, "unbounded")
    value, alpha = _noise_free_limit(sigma, x2, n)
    return _Evidence(value, alpha, math.inf, it, "beta_inf")
