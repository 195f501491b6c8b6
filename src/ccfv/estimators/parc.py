"""PARC: Pairwise Annotation Representation Comparison (Bolya et al., NeurIPS 2021).

Reference: Bolya, Mittapalli, Hoffman, "Scalable Diverse Model Selection for Accessible
Transfer Learning", NeurIPS 2021, arXiv 2111.06977. Checked against the
authors' code, ``methods.PARC`` of github.com/dbolya/parc (``PARC(n_dims=32)``, the "PARC f=32"
of its demo).

With F the sampled features (n x d) and Y their one-hot labels (n x C)::

    F'      = StandardScaler(PCA_k(F)),   k = min(pca_dim, rank F)    (each column mean 0, std 1)
    D_F     = 1 - corrcoef(F')            (n x n; Pearson correlation between SAMPLES)
    D_Y     = 1 - corrcoef(Y)             (0 within a class, C/(C-1) between classes)
    PARC    = 100 * spearman( triu(D_F), triu(D_Y) )     (upper triangles without diagonal)

The factor 100 is the paper's (and its code's) reporting scale: PARC lies in [-100, 100].
Larger = the feature geometry separates the target classes the way the labels do = more
transferable.

Implementation notes (same value, different arithmetic or a decision the reference leaves open):

- PCA is an exact SVD of the centred features (the reference uses scikit-learn's randomized
  solver with one power iteration, an approximation). PARC depends on the component signs
  (correlation between samples is taken across components), so they follow scikit-learn's
  convention: each component's largest-magnitude loading is positive. Components whose
  singular value is at round-off level (``s <= s_max * max(n, d) * eps``) carry no signal
  and are dropped before standardising (standardising would blow their round-off up to unit
  variance). ``pca_dim=None`` skips the PCA and standardises the raw channels (constant
  channels dropped), the reference's ``n_dims=None``. The reference's PCA needs ``d >= 32``;
  here ``k`` simply stops at the rank.
- D_Y takes two values, so its Spearman ranks are an increasing affine map of the indicator
  "different classes"; the Spearman correlation is therefore computed as the Pearson
  correlation between the (tie-averaged) ranks of D_F and that indicator, with the rank sum
  of one group (the Mann-Whitney identity) from one integer sort of the dissimilarities
  (on their 1e-12 grid) tagged with the group. This equals ``scipy.stats.spearmanr`` to
  round-off; no n x n matrix is formed.
- Ranks see round-off as real differences. The reference's label RDM ``1 - corrcoef(Y)``
  holds 0 or 2e-16 for same-class pairs at random, which Spearman ranks apart (on 120 random
  samples this moved PARC from 11.52 to 11.80); here D_Y is exact. Duplicated samples (flat
  background regions give them) make feature dissimilarities equal in exact arithmetic but not
  in floating point, so D_F is rounded to 12 decimals before ranking: such pairs tie as they
  should, and no value moves by more than 5e-13.
- PARC is O(n^2) in time and memory (n(n-1)/2 pairs). Above ``max_samples`` samples
  (default 3000: 4.5 M pairs, about 150 MB and ~1 s) a class-stratified, seeded subsample of
  exactly ``max_samples`` samples is scored instead: every class keeps its share of the
  samples (largest remainders; at least 2 samples of every class that has them, so each class
  has a within-class pair). A typical run, 20 cases x 3 classes x 400 voxels = 24000 samples,
  would otherwise need 288 M pairs (several GB). The cap keeps the estimator's meaning (the
  class mix is kept) and 4.5 M pairs still pin the rank correlation down closely; the SFDA
  benchmark code (github.com/TencentARC/SFDA, ``PARC_Score``) likewise meant to cap PARC at a
  stratified 15000 samples. ``max_samples=None`` scores every sample.
"""

from __future__ import annotations

import numbers

import numpy as np
from scipy.spatial.distance import pdist

from ccfv.errors import UserError
from ccfv.estimators._labelled import labelled_samples
from ccfv.estimators._threads import one_blas_thread
from ccfv.estimators.featureset import FeatureSet

#: The default cap on the number of samples PARC compares pairwise.
MAX_SAMPLES = 3000
#: Dissimilarities (in [0, 2]) are rounded to this many decimals before ranking.
DECIMALS = 12


@one_blas_thread
def parc_score(
    features: FeatureSet,
    *,
    layer: str | None = None,
    pca_dim: int | None = 32,
    max_samples: int | None = MAX_SAMPLES,
    seed: int = 0,
) -> float:
    """PARC of a feature set's layer, in [-100, 100].

    Parameters
    ----------
    features : feature set ``{layer: [(X, y) per case]}``; the chosen layer's rows of all
        cases are pooled.
    layer : which layer; default the last (the layer before the final convolution).
    pca_dim : PCA dimension before the correlations (the paper's f = 32); ``None``: no PCA.
    max_samples : at most this many samples are compared pairwise (class-stratified seeded
        subsample above it); ``None``: no cap (O(n^2) memory).
    seed : seed of the subsample.

    Returns
    -------
    float in [-100, 100]; larger = more transferable.

    Raises
    ------
    UserError
        Fewer than 2 classes, no two samples of one class, features of (numerical) rank < 2,
        a sample whose reduced features are all equal, or an option out of range.
    """
    if pca_dim is not None and (
        not isinstance(pca_dim, numbers.Integral) or isinstance(pca_dim, bool) or pca_dim < 2
    ):
        raise UserError(
            f"parc: pca_dim={pca_dim!r} must be an integer >= 2 (the paper uses 32) "
            "or None for no PCA"
        )
    if max_samples is not None and (
        not isinstance(max_samples, numbers.Integral)
        or isinstance(max_samples, bool)
        or max_samples < 10
    ):
        raise UserError(
            f"parc: max_samples={max_samples!r} must be an integer >= 10 (default "
            f"{MAX_SAMPLES}) or None for no cap"
        )
    data = labelled_samples(features, layer, "parc")
    X, labels = data.X, data.labels
    if max_samples is not None and len(labels) > max_samples:
        keep = _stratified_subsample(labels, int(max_samples), seed)
        X, labels = X[keep], labels[keep]
    reduced = _reduce(X, pca_dim)
    return 100.0 * _parc(reduced, labels)


def _stratified_subsample(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted indices of ``size`` samples, each class keeping its share (seeded)."""
    counts = np.bincount(labels)
    quota = size * counts / counts.sum()
    take = np.maximum(np.floor(quota).astype(np.int64), np.minimum(counts, 2))
    surplus = int(take.sum()) - size
    while surplus > 0:  # the at-least-2 rule overshot: trim the largest
        c = int(np.argmax(take))
        take[c] -= 1
        surplus -= 1
    remainder = quota - np.floor(quota)
    for c in np.argsort(-remainder, kind="stable"):  # largest remainders first
        if surplus == 0:
            break
        if take[c] < counts[c]:
            take[c] += 1
            surplus += 1
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(np.flatnonzero(labels == c), size=int(take[c]), replace=False)
        for c in range(len(counts))
        if take[c] > 0
    ]
    return np.sort(np.concatenate(chosen))


def _reduce(X: np.ndarray, pca_dim: int | None) -> np.ndarray:
    """PCA to ``pca_dim`` components (signal only), each column standardised."""
    centred = X - X.mean(axis=0)
    if pca_dim is None:
        std = centred.std(axis=0)
        keep = std > np.abs(X).max(axis=0) * X.shape[0] * np.finfo(float).eps
        reduced = centred[:, keep] / std[keep]
    else:
        U, s, Vt = np.linalg.svd(centred, full_matrices=False)
        rank = int(np.sum(s > s[0] * max(X.shape) * np.finfo(float).eps)) if s[0] > 0 else 0
        k = min(pca_dim, rank)
        # sign convention of scikit-learn's PCA: the largest |loading| of a component is > 0
        signs = np.sign(Vt[np.arange(k), np.argmax(np.abs(Vt[:k]), axis=1)])
        # standardised PCA scores: U s / std(U s) = U sqrt(n), since U's columns have mean 0
        reduced = U[:, :k] * signs * np.sqrt(X.shape[0])
    if reduced.shape[1] < 2:
        raise UserError(
            f"parc: the features have {reduced.shape[1]} channel(s) of non-zero variance "
            "(numerical rank < 2); PARC correlates samples across channels and needs at "
            "least 2: use another layer"
        )
    return reduced


def _parc(F: np.ndarray, labels: np.ndarray, ranks: str = "one-sort") -> float:
    """Spearman correlation of the sample-correlation RDM with the label RDM (not x 100)."""
    rows = F - F.mean(axis=1, keepdims=True)
    flat = np.linalg.norm(rows, axis=1) <= np.abs(F).max(axis=1) * F.shape[1] * 1e-12
    if flat.any():
        raise UserError(
            f"parc: {int(flat.sum())} sample(s) (first: row {int(np.flatnonzero(flat)[0])}) "
            "have all reduced features equal, so their correlation with other samples is "
            "undefined: use another layer or pca_dim"
        )
    # 1 - Pearson in i < j order, on a grid of 1e-12 (as integers: rint(D * 1e12), the
    # numerator of np.round(D, 12)), so that pairs equal in exact arithmetic (duplicated
    # samples) tie instead of being ordered by their round-off
    dissimilarity = pdist(F, "correlation")
    different = pdist(labels[:, None].astype(np.float64), "cityblock") > 0
    if ranks == "two-sorts":
        return _spearman_two_sorts(np.round(dissimilarity, DECIMALS), different)
    np.multiply(dissimilarity, 10.0**DECIMALS, out=dissimilarity)
    grid = np.rint(dissimilarity).astype(np.int64)
    m = grid.size
    m1 = int(np.count_nonzero(different))
    if m1 == 0 or m1 == m:
        raise UserError(
            "parc: no two samples share a class, so there is no within-class pair to compare "
            "with the between-class pairs: sample at least 2 voxels of some class"
        )
    # one sort of (dissimilarity, group) keys gives the tie groups of the dissimilarities and
    # how many between-class pairs each holds; a tie group starting at 0-based position a
    # with t members has the tie-averaged 1-based rank a + (t + 1) / 2
    grid <<= 1
    grid |= different
    grid.sort()
    in_group = grid & 1
    grid >>= 1
    edges = np.flatnonzero(np.concatenate(([True], grid[1:] != grid[:-1], [True])))
    starts = edges[:-1]
    ties = np.diff(edges)
    between = np.add.reduceat(in_group, starts)
    rank_sum = float(np.sum(between * (2 * starts + ties + 1))) / 2.0
    ties = ties.astype(np.float64)
    rank_var = (m * m - 1.0) / 12.0 - np.sum(ties**3 - ties) / (12.0 * m)
    if rank_var <= 0:
        raise UserError(
            "parc: every pair of samples is equally (dis)similar, so the Spearman correlation "
            "is undefined: the features carry no pairwise structure; use another layer"
        )
    return _spearman(rank_sum, rank_var, m, m1)


def _spearman_two_sorts(dissimilarity: np.ndarray, different: np.ndarray) -> float:
    """The same Spearman correlation as :func:`_parc` computes, the earlier way: a sort of all
    (rounded) dissimilarities, a sort of the between-class ones and two binary searches (the
    reference that ``benchmarks/bench_estimator.py`` times the one-sort path against)."""
    grid = dissimilarity
    m = grid.size
    m1 = int(np.count_nonzero(different))
    if m1 == 0 or m1 == m:
        raise UserError(
            "parc: no two samples share a class, so there is no within-class pair to compare "
            "with the between-class pairs: sample at least 2 voxels of some class"
        )
    ordered = np.sort(grid)
    group = np.sort(grid[different])
    below = np.searchsorted(ordered, group, side="left")
    upto = np.searchsorted(ordered, group, side="right")
    rank_sum = float(np.sum(below + upto + 1)) / 2.0
    edges = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1], [True])))
    ties = np.diff(edges).astype(np.float64)
    rank_var = (m * m - 1.0) / 12.0 - np.sum(ties**3 - ties) / (12.0 * m)
    if rank_var <= 0:
        raise UserError(
            "parc: every pair of samples is equally (dis)similar, so the Spearman correlation "
            "is undefined: the features carry no pairwise structure; use another layer"
        )
    return _spearman(rank_sum, rank_var, m, m1)


def _spearman(rank_sum: float, rank_var: float, m: int, m1: int) -> float:
    """Pearson correlation of tie-averaged ranks (rank sum ``rank_sum`` of the m1 pairs of one
    group, rank variance ``rank_var``) with the 0/1 indicator of that group."""
    p = m1 / m
    covariance = rank_sum / m - (m + 1.0) / 2.0 * p
    # a Spearman correlation lies in [-1, 1]; the tie-corrected ratio can round just past
    # +-1 when the ranks separate the groups exactly: clip so PARC stays in [-100, 100]
    return float(np.clip(covariance / np.sqrt(rank_var * p * (1.0 - p)), -1.0, 1.0))
