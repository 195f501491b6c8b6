"""Gaussians fitted to sampled features, and batched distances between all pairs of them.

Each set of samples X (n x d) is summarised by its mean ``mu`` and a *factor* ``A`` (d x r) of
its unbiased covariance, ``S = A A^T``, taken from the thin SVD of the centred samples,
``X - mu = U diag(s) V^T``, as ``A = V diag(s) / sqrt(n - 1)`` with the numerically zero
singular values dropped (so ``r = rank(S) <= min(n - 1, d)``). This one factor serves both
regimes of docs/explanation/method.md: when n < d it spans the samples (the n_i x n_j
cross-product form), when d < n it is a per-case square root of S computed once.

The 2-Wasserstein trace term never needs a d x d matrix square root of a product:

    Tr (S_i^1/2 S_j S_i^1/2)^1/2 = || S_i^1/2 S_j^1/2 ||_*  = || A_i^T A_j ||_*

(the nuclear norm is unchanged when a square root is replaced by any factor of the same
covariance), and ``A_i^T A_j`` is only r_i x r_j. All pairs are batched: one matrix product
per case against every later case, one stacked eigen/singular-value solve of the small
products (:func:`nuclear_norms`).

KL and Bhattacharyya need inverses and determinants, which do not exist for the rank-deficient
covariances of n < d samples; they use ``S + ridge * (Tr S / d) * I`` and say so.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

#: Batches of pairwise d x d work are cut to keep their arrays under this many float64 values.
_MAX_BATCH_VALUES = 2**25


@dataclass(frozen=True)
class Gaussian:
    """Mean, covariance factor (``S = factor @ factor.T``, unbiased) and ``Tr S`` of a sample."""

    mean: np.ndarray
    factor: np.ndarray
    trace: float
    n: int


def fit_gaussian(X: np.ndarray) -> Gaussian:
    """Fit mean and unbiased covariance (as a factor) to samples X (n x d), n >= 2."""
    n, d = X.shape
    if n < 2:
        raise ValueError(f"a Gaussian needs at least 2 samples, got {n}")
    mean = X.mean(axis=0)
    s, vt = np.linalg.svd(X - mean, full_matrices=False, compute_uv=True)[1:]
    trace = float(np.sum(s**2) / (n - 1))
    keep = s > (s[0] * max(n, d) * np.finfo(np.float64).eps if s.size else 0.0)
    factor = (vt[keep].T * s[keep]) / np.sqrt(n - 1)
    return Gaussian(mean=mean, factor=factor, trace=trace, n=n)


def _stack(gaussians: list[Gaussian]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Means (N, d), zero-padded factors (N, d, r_max) and traces (N,)."""
    d = gaussians[0].mean.shape[0]
    r_max = max(1, max(g.factor.shape[1] for g in gaussians))
    factors = np.zeros((len(gaussians), d, r_max))
    for i, g in enumerate(gaussians):
        factors[i, :, : g.factor.shape[1]] = g.factor
    means = np.stack([g.mean for g in gaussians])
    traces = np.array([g.trace for g in gaussians])
    return means, factors, traces


def default_workers() -> int:
    """Threads for the pairwise W2 work: the CPU cores this process may use, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def w2_squared_pairs(
    gaussians: list[Gaussian], round_off_to_zero: bool = False, workers: int | None = None
) -> np.ndarray:
    """Squared 2-Wasserstein distances of all pairs i < j, in ``scipy.spatial.distance.pdist``
    order.

    ``W2^2 = |mu_i - mu_j|^2 + Tr S_i + Tr S_j - 2 || A_i^T A_j ||_*``, exact up to round-off;
    the result can be slightly negative for (nearly) identical Gaussians. With
    ``round_off_to_zero`` every value below the round-off of its own terms,
    ``64 eps (|mu_i|^2 + |mu_j|^2 + Tr S_i + Tr S_j)``, is returned as exactly 0 (such pairs are
    numerically identical); otherwise the caller decides how to clip.

    Case i's products with every later case are one matrix product, ``A_i^T [A_i+1 ... A_N]``;
    the cases are shared out over ``workers`` threads (default :func:`default_workers`; NumPy
    releases the GIL in its matrix products and eigensolvers), each pair computed the same way
    whatever the number of threads, so the values do not depend on it. With more than one
    worker, BLAS is held to one thread meanwhile, so that the two kinds of threads do not
    compete for the same cores.
    """
    means, factors, traces = _stack(gaussians)
    n, d, r_max = factors.shape
    # every factor's columns side by side, (d, N * r_max): case j's are columns j*r_max...
    wide = np.ascontiguousarray(factors.transpose(1, 0, 2)).reshape(d, n * r_max)
    tiny = 64 * np.finfo(np.float64).eps
    squared_means = np.sum(means**2, axis=1)

    def row(i: int) -> np.ndarray:
        factor = gaussians[i].factor
        m = n - 1 - i
        if factor.shape[1] == 0:
            nuclear = np.zeros(m)
        else:
            cross = (factor.T @ wide[:, (i + 1) * r_max :]).reshape(factor.shape[1], m, r_max)
            nuclear = nuclear_norms(np.ascontiguousarray(cross.transpose(1, 0, 2)))
        mean_gap = np.sum((means[i + 1 :] - means[i]) ** 2, axis=1)
        sq = mean_gap + traces[i] + traces[i + 1 :] - 2.0 * nuclear
        if round_off_to_zero:
            scale = squared_means[i] + squared_means[i + 1 :] + traces[i] + traces[i + 1 :]
            sq[sq <= tiny * scale] = 0.0
        return sq

    if n < 2:
        return np.zeros(0)
    workers = default_workers() if workers is None else int(workers)
    if workers <= 1 or n < 3:
        rows = [row(i) for i in range(n - 1)]
    else:
        with (
            threadpool_limits(limits=1, user_api="blas"),
            ThreadPoolExecutor(max_workers=workers) as pool,
        ):
            rows = list(pool.map(row, range(n - 1)))
    return np.concatenate(rows)


def nuclear_norms(matrices: np.ndarray) -> np.ndarray:
    """Sum of singular values of each matrix in a stack (m, p, q), p <= q.

    Fast path: ``sqrt`` of the eigenvalues of the symmetric Gram ``C C^T`` (eigvalsh is several
    times cheaper than an SVD). Squaring loses the small singular values' accuracy, so every
    matrix whose Gram has an eigenvalue below ``1e-8`` of its largest (singular values spread
    over more than 4 decades, e.g. rank-deficient products) is redone with an SVD; above that
    threshold the fast path's error is below 1e-10 of the norm.
    """
    gram = np.matmul(matrices, np.swapaxes(matrices, 1, 2))
    eig = np.linalg.eigvalsh(gram)
    top = eig[:, -1:]
    norms = np.sqrt(np.clip(eig, 0.0, None)).sum(axis=1)
    redo = np.any(eig < 1e-8 * top, axis=1) & (top[:, 0] > 0)
    if redo.any():
        norms[redo] = np.linalg.svd(matrices[redo], compute_uv=False).sum(axis=1)
    return norms


def regularised_covariances(gaussians: list[Gaussian], ridge: float) -> np.ndarray:
    """Full covariances (N, d, d) with ``ridge * Tr S / d`` added to the diagonal.

    A covariance with zero trace (all samples equal) gets ``ridge`` itself.
    """
    d = gaussians[0].mean.shape[0]
    covs = np.empty((len(gaussians), d, d))
    for i, g in enumerate(gaussians):
        covs[i] = g.factor @ g.factor.T
        covs[i][np.diag_indices(d)] += ridge * (g.trace / d if g.trace > 0 else 1.0)
    return covs


def _chunks(m: int, d: int):
    step = max(1, _MAX_BATCH_VALUES // max(1, d * d))
    for start in range(0, m, step):
        yield slice(start, min(m, start + step))


def kl_pairs(gaussians: list[Gaussian], ridge: float) -> np.ndarray:
    """Symmetrised KL divergence ``(KL(i||j) + KL(j||i)) / 2`` of all pairs i < j (pdist order).

    ``KL(i||j) = 1/2 [Tr(S_j^-1 S_i) + (mu_j - mu_i)^T S_j^-1 (mu_j - mu_i) - d
    + ln det S_j - ln det S_i]``; the log-determinants cancel in the symmetrised form.
    Covariances are ridge-regularised (see :func:`regularised_covariances`).
    """
    means = np.stack([g.mean for g in gaussians])
    covs = regularised_covariances(gaussians, ridge)
    inverses = np.linalg.inv(covs)
    inverses = 0.5 * (inverses + np.swapaxes(inverses, 1, 2))
    d = means.shape[1]
    out = []
    for i in range(len(gaussians) - 1):
        gap = means[i + 1 :] - means[i]
        tr_ji = np.einsum("mab,ab->m", inverses[i + 1 :], covs[i])
        tr_ij = np.einsum("ab,mab->m", inverses[i], covs[i + 1 :])
        maha = np.einsum("ma,mab,mb->m", gap, inverses[i + 1 :] + inverses[i], gap)
        out.append(0.25 * (tr_ji + tr_ij + maha - 2 * d))
    return np.concatenate(out) if out else np.zeros(0)


def bhattacharyya_pairs(gaussians: list[Gaussian], ridge: float) -> np.ndarray:
    """Bhattacharyya distance of all pairs i < j (pdist order).

    ``D_B = 1/8 (mu_i - mu_j)^T S^-1 (mu_i - mu_j) + 1/2 ln(det S / sqrt(det S_i det S_j))``
    with ``S = (S_i + S_j) / 2``; covariances ridge-regularised.
    """
    means = np.stack([g.mean for g in gaussians])
    covs = regularised_covariances(gaussians, ridge)
    logdets = 2.0 * np.log(np.diagonal(np.linalg.cholesky(covs), axis1=1, axis2=2)).sum(axis=1)
    d = means.shape[1]
    out = []
    for i in range(len(gaussians) - 1):
        m = len(gaussians) - 1 - i
        for part in _chunks(m, d):
            j = np.arange(i + 1, len(gaussians))[part]
            avg = 0.5 * (covs[i] + covs[j])
            chol = np.linalg.cholesky(avg)
            logdet = 2.0 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)
            gap = means[j] - means[i]
            maha = np.einsum("ma,ma->m", gap, np.linalg.solve(avg, gap[..., None])[..., 0])
            out.append(maha / 8.0 + 0.5 * (logdet - 0.5 * (logdets[i] + logdets[j])))
    return np.concatenate(out) if out else np.zeros(0)
