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
per case against every later case of the same rank, one stacked eigenvalue solve of the small
products' Gram matrices (:func:`nuclear_norms`), spread over worker threads.

KL and Bhattacharyya need inverses and determinants, which do not exist for the rank-deficient
covariances of n < d samples; they use ``S + ridge * (Tr S / d) * I`` and say so.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ccfv.estimators._threads import limited

#: Batches of pairwise d x d work are cut to keep their arrays under this many float64 values.
_MAX_BATCH_VALUES = 2**25
#: Below this many multiply-adds (about 3 ms on one core) the W2 pairs are computed serially:
#: starting and feeding worker threads would cost more than they save.
_MIN_PARALLEL_WORK = 5e7


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

    The cases are grouped by the rank r of their factor (the number of its columns). Case i's
    products with the later cases of rank r are one matrix product, ``A_i^T [A_j ...]`` (the
    group's factors side by side, stored once, so no copy per pair), whose
    (r_i, m, r) result goes to :func:`nuclear_norms` as a strided view, the Gram product taken
    on the smaller side, min(r_i, r) x min(r_i, r). Grouping keeps the products exactly as
    wide as the factors: zero-padding the factors to a common width (the earlier code) gave the
    Gram of a pair of unequal ranks exact zero eigenvalues, which sent every such pair to the
    SVD fallback (on 60 cases of 40-100 samples in 256 dimensions, 838 of 1770 pairs, and twice
    the time: ``benchmarks/bench_estimator.py``, part 2). Equal ranks (one group) give the
    products of the earlier code.

    The cases are shared out over ``workers`` threads (default :func:`default_workers`; NumPy
    releases the GIL in its matrix products and eigensolvers), each pair computed the same way
    whatever the number of threads, so the values do not depend on it. BLAS is held to one
    thread meanwhile (the products are small, and BLAS threads on top of the workers compete
    for the same cores). Below :data:`_MIN_PARALLEL_WORK` multiply-adds in all (small feature
    sets) the pairs are computed serially whatever ``workers`` says.
    """
    n = len(gaussians)
    if n < 2:
        return np.zeros(0)
    d = gaussians[0].mean.shape[0]
    means = np.stack([g.mean for g in gaussians])
    traces = np.array([g.trace for g in gaussians])
    ranks = np.array([g.factor.shape[1] for g in gaussians])
    # per rank r > 0: the cases of that rank in index order and their factors side by side,
    # (d, count * r); the cases after i of rank r are a tail of the group
    groups = []
    for r in np.unique(ranks[ranks > 0]):
        members = np.flatnonzero(ranks == r)
        wide = np.concatenate([gaussians[j].factor for j in members], axis=1)
        groups.append((int(r), members, wide))
    tiny = 64 * np.finfo(np.float64).eps
    squared_means = np.sum(means**2, axis=1)

    def row(i: int) -> np.ndarray:
        factor = gaussians[i].factor
        nuclear = np.zeros(n - 1 - i)
        if factor.shape[1] > 0:
            for r, members, wide in groups:
                first = int(np.searchsorted(members, i, side="right"))
                later = members[first:]
                if later.size == 0:
                    continue
                cross = (factor.T @ wide[:, first * r :]).reshape(factor.shape[1], later.size, r)
                stack = cross.transpose(1, 0, 2)  # (m, r_i, r): pair k is A_i^T A_later[k]
                if r < factor.shape[1]:
                    stack = np.swapaxes(stack, 1, 2)
                nuclear[later - i - 1] = nuclear_norms(stack)
        mean_gap = np.sum((means[i + 1 :] - means[i]) ** 2, axis=1)
        sq = mean_gap + traces[i] + traces[i + 1 :] - 2.0 * nuclear
        if round_off_to_zero:
            scale = squared_means[i] + squared_means[i + 1 :] + traces[i] + traces[i + 1 :]
            sq[sq <= tiny * scale] = 0.0
        return sq

    workers = default_workers() if workers is None else int(workers)
    r_max = int(ranks.max())
    work = n * (n - 1) / 2 * r_max * r_max * (d + r_max)
    with limited(1, "blas"):
        if workers <= 1 or n < 3 or work < _MIN_PARALLEL_WORK:
            rows = [row(i) for i in range(n - 1)]
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                rows = list(pool.map(row, range(n - 1)))
    return np.concatenate(rows)


def nuclear_norms(matrices: np.ndarray) -> np.ndarray:
    """Sum of singular values of each matrix in a stack (m, p, q), p <= q (any strides).

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
