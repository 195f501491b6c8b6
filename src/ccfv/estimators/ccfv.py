"""CC-FV: Class Consistency with Feature Variety (Yang et al., MICCAI 2023).

Reference: Yang, Wei, He, Yang, Ye, Gu, "Pick the Best Pre-trained Model: Towards
Transferability Estimation for Medical Image Segmentation", MICCAI 2023, arXiv 2307.11958.
The formulas below are those of ``docs/explanation/method.md``; ``variant="official"``
reproduces the released code (github.com/EndoluminalSurgicalVision-IMR/CCFV) on purpose,
quirks included.

Per layer l, with N cases, C foreground classes, F_j^k the sampled features of class k in
case j fitted by a Gaussian, and v_j all sampled features of case j (background included):

``variant="paper"`` (default)::

    W2(F_i, F_j)  = sqrt(max(0, |mu_i - mu_j|^2 + Tr S_i + Tr S_j - 2 Tr(S_i^1/2 S_j S_i^1/2)^1/2))
                    (a W2^2 below the round-off of its own terms counts as exactly 0)
    C_cons        = sum_k  mean_{i<j} W2(F_i^k, F_j^k)          (= 1/(N(N-1)) sum_k sum_{i!=j})
    E_s(v)        = mean_{a!=b} |u_a - u_b|^-s,   u = v / |v|   (s = 0: mean log 1/|u_a - u_b|)
    F_v           = mean_j 1 / E_s(v_j)
    T             = mean_l log(F_v / C_cons)

``variant="official"`` (the released ``main.py`` + ``utils/ccfv.py``)::

    W2            = sqrt(|W2^2|)                                 (abs, not clip)
    g_j           = mean of all sampled features of case j       (no unit normalisation)
    variety       = mean_{i<j} (|g_i - g_j|^2 + 1e-3)^(-s/2)     (an energy across cases)
    w             = 0; for each class k: w += sum_{i<j} W2(F_i^k, F_j^k); w += w / (N_k^2 / 2) / C
    T             = sum_l log(variety / w)

Larger T = more transferable. The trace term is evaluated without any d x d matrix square
root (see :mod:`ccfv.estimators.gaussian`), so the official values are the released formulas
without ``scipy.linalg.sqrtm``'s round-off.

Missing data never crashes and is never counted as distance 0: a case in which a foreground
class has fewer than 2 samples is left out of that class's pairs, a class present (with >= 2
samples) in fewer than 2 cases contributes nothing, a case with fewer than 2 samples is left out
of the variety term; each such skip is reported in ``CCFVResult.warnings`` and as a
:class:`ccfv.errors.CCFVWarning`.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.distance import pdist, squareform

from ccfv.errors import CCFVWarning, UserError
from ccfv.estimators._threads import one_blas_thread
from ccfv.estimators.featureset import (
    CaseIndices,
    FeatureSet,
    foreground_classes,
    validate_feature_set,
)
from ccfv.estimators.gaussian import (
    bhattacharyya_pairs,
    fit_gaussian,
    kl_pairs,
    w2_squared_pairs,
)

VARIANTS = ("paper", "official")
DISTANCES = ("wasserstein", "kl", "bhattacharyya")
#: Unit-sphere distances at or below this are coincident points (paper variety, eps = 0).
COINCIDENT = 1e-6
#: The released code's constant under the square root of the cross-case variety.
OFFICIAL_EPS = 1e-3


@dataclass
class LayerParts:
    """One layer's share of a CC-FV score.

    ``variety`` is F_v (paper) or the released cross-case energy (official); ``consistency``
    is C_cons (paper) or the released running total ``w`` (official); either is ``None`` when
    the options leave it out. ``term`` is the layer's summand of the score.
    ``class_consistency[k]`` is the mean (paper) or sum (official) of class k's pairwise
    distances, ``class_pairs[k]`` how many case pairs were compared for class k.
    """

    layer: str
    variety: float | None
    consistency: float | None
    term: float
    class_consistency: dict[int, float] = field(default_factory=dict)
    class_pairs: dict[int, int] = field(default_factory=dict)


@dataclass
class CCFVResult:
    """A CC-FV score with its parts, the options that produced it and what was skipped."""

    score: float
    variant: str
    options: dict
    layers: list[LayerParts]
    warnings: list[str]


class _Notes(list):
    """The skips of one computation: kept for the result and warned about as they happen."""

    def append(self, note: str) -> None:
        super().append(note)
        warnings.warn(note, CCFVWarning, stacklevel=3)


def _pair_distances(
    gaussians, distance: str, variant: str, ridge: float, workers: int | None = None
) -> np.ndarray:
    if distance == "wasserstein":
        if variant == "official":
            return np.sqrt(np.abs(w2_squared_pairs(gaussians, workers=workers)))
        return np.sqrt(
            np.maximum(w2_squared_pairs(gaussians, round_off_to_zero=True, workers=workers), 0.0)
        )
    if distance == "kl":
        return kl_pairs(gaussians, ridge)
    return bhattacharyya_pairs(gaussians, ridge)


def _energy(V: np.ndarray, s: float, normalise: bool, eps: float, where: str, notes) -> float:
    """Mean pairwise Riesz s-energy of the rows of V (the paper's E_s, mean over a != b)."""
    if normalise:
        norms = np.linalg.norm(V, axis=1, keepdims=True)
        zero = norms[:, 0] == 0
        if zero.any():
            notes.append(
                f"{where}: {int(zero.sum())} all-zero feature vector(s) cannot be put on "
                "the unit sphere and stay at the origin"
            )
            norms[zero] = 1.0
        V = V / norms
    dist = pdist(V) if eps == 0 else np.sqrt(pdist(V, "sqeuclidean") + eps)
    close = dist <= COINCIDENT
    if close.any():
        notes.append(
            f"{where}: {int(close.sum())} of {dist.size} sample pairs coincide; their "
            f"distance is floored at {COINCIDENT:g} (pass eps > 0 to soften)"
        )
        dist = np.maximum(dist, COINCIDENT)
    if s == 0:
        return float(np.mean(-np.log(dist)))
    return float(np.mean(dist ** (-s)))


def _pair_matrix(n_cases: int, kept: np.ndarray, condensed: np.ndarray) -> np.ndarray:
    """An (N, N) matrix holding ``condensed`` (pdist order over the ``kept`` cases), NaN
    wherever a case was not kept."""
    out = np.full((n_cases, n_cases), np.nan)
    if kept.size >= 2:
        out[np.ix_(kept, kept)] = squareform(condensed, checks=False)
    return out


@dataclass
class _LayerTables:
    """One layer's per-case and per-pair quantities; :meth:`CCFVTables.parts` sums them up."""

    layer: str
    case_variety: np.ndarray | None = None  # paper: 1 / E_s(v_j), NaN where skipped
    variety_kept: np.ndarray | None = None  # official: cases with samples
    pair_variety: np.ndarray | None = None  # official: (N, N) cross-case energies
    class_valid: dict[int, np.ndarray] = field(default_factory=dict)  # cases with >= 2
    class_pairs: dict[int, np.ndarray] = field(default_factory=dict)  # (N, N) distances


def _variety_tables(t: _LayerTables, cases, variant, s, normalise, eps, notes) -> None:
    layer = t.layer
    if variant == "official":
        kept = []
        for c, (X, _) in enumerate(cases):
            if X.shape[0] == 0:
                notes.append(f"layer {layer!r}: case {c} has no samples; left out of variety")
            else:
                kept.append(c)
        t.variety_kept = np.asarray(kept, dtype=np.int64)
        if len(kept) < 2:
            t.pair_variety = np.full((len(cases), len(cases)), np.nan)
            return
        G = np.stack([cases[c][0].mean(axis=0) for c in kept])
        if normalise:
            G = G / np.maximum(np.linalg.norm(G, axis=1, keepdims=True), np.finfo(float).tiny)
        sq = pdist(G, "sqeuclidean") + eps
        energies = -0.5 * np.log(sq) if s == 0 else sq ** (-s / 2)
        t.pair_variety = _pair_matrix(len(cases), t.variety_kept, energies)
        return
    t.case_variety = np.full(len(cases), np.nan)
    for c, (X, _) in enumerate(cases):
        if X.shape[0] < 2:
            notes.append(
                f"layer {layer!r}: case {c} has {X.shape[0]} sample(s); left out of feature variety"
            )
            continue
        t.case_variety[c] = 1.0 / _energy(X, s, normalise, eps, f"layer {layer!r}, case {c}", notes)


def _unit_rows(X: np.ndarray) -> np.ndarray:
    """Each row divided by its Euclidean norm (all-zero rows stay at the origin)."""
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


def _consistency_tables(
    t: _LayerTables, cases, classes, variant, distance, ridge, sphere, notes, workers=None
) -> None:
    for k in classes:
        gaussians, kept = [], []
        for c, (X, y) in enumerate(cases):
            Xk = _unit_rows(X[y == k]) if sphere else X[y == k]
            if Xk.shape[0] < 2:
                notes.append(
                    f"layer {t.layer!r}: class {k} has {Xk.shape[0]} sample(s) in case "
                    f"{c}; that case is left out of the class's pairs"
                )
                continue
            gaussians.append(fit_gaussian(Xk))
            kept.append(c)
        valid = np.zeros(len(cases), dtype=bool)
        valid[kept] = True
        t.class_valid[k] = valid
        dist = (
            _pair_distances(gaussians, distance, variant, ridge, workers)
            if len(kept) >= 2
            else np.zeros(0)
        )
        t.class_pairs[k] = _pair_matrix(len(cases), np.asarray(kept, dtype=np.int64), dist)


def _upper(matrix: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The pairs i < j of ``matrix`` among cases ``idx`` (sorted), in pdist order."""
    return matrix[np.ix_(idx, idx)][np.triu_indices(idx.size, 1)]


def _variety(t: _LayerTables, idx: np.ndarray, variant: str) -> float:
    if variant == "official":
        # _variety_tables fills these two for the official variant, case_variety otherwise
        assert t.variety_kept is not None and t.pair_variety is not None
        kept = idx[np.isin(idx, t.variety_kept)]
        if kept.size < 2:
            raise UserError(
                f"layer {t.layer!r}: fewer than 2 cases have samples; variety is "
                "undefined: add cases"
            )
        return float(np.mean(_upper(t.pair_variety, kept)))
    assert t.case_variety is not None
    values = t.case_variety[idx]
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise UserError(f"layer {t.layer!r}: no case has 2 samples; feature variety is undefined")
    return float(np.mean(values))


def _consistency(t: _LayerTables, idx: np.ndarray, variant: str, notes):
    """C_cons (paper) or the running total w (official) over cases ``idx``, per-class parts."""
    per_class: dict[int, float] = {}
    pairs: dict[int, int] = {}
    total = 0.0
    n_classes = len(t.class_pairs)
    for k, matrix in t.class_pairs.items():
        kept = idx[t.class_valid[k][idx]]
        n_k = kept.size
        if n_k < 2:
            notes.append(
                f"layer {t.layer!r}: class {k} has >= 2 samples in {n_k} case(s); it "
                "contributes nothing to class consistency"
            )
            continue
        dist = _upper(matrix, kept)
        pairs[k] = dist.size
        if variant == "paper":
            per_class[k] = float(dist.mean())
            total += per_class[k]
        else:
            per_class[k] = float(dist.sum())
            total += per_class[k]
            total += total / (n_k * n_k / 2) / n_classes
    if not pairs:
        raise UserError(
            f"layer {t.layer!r}: no foreground class has at least 2 samples in at least 2 cases, "
            "so class consistency is undefined: sample more voxels per class or add cases"
        )
    return total, per_class, pairs


def _log_ratio(layer: str, numerator: float, denominator: float, what: str) -> float:
    if not (numerator > 0 and denominator > 0 and math.isfinite(numerator / denominator)):
        raise UserError(
            f"layer {layer!r}: cannot take log({what}) with {what} = {numerator!r}/{denominator!r}"
            "; both must be positive and finite (with s = 0 the energy can be negative: use s > 0"
            "; a consistency of 0 means identical Gaussians in every case)"
        )
    return math.log(numerator / denominator)


@one_blas_thread
def ccfv_tables(
    features: FeatureSet,
    variant: str = "paper",
    *,
    distance: str = "wasserstein",
    consistency_only: bool = False,
    variety_only: bool = False,
    s: float = 1.0,
    normalize: bool | None = None,
    eps: float | None = None,
    layers: Sequence[str] | None = None,
    ridge: float = 1e-3,
    normalize_consistency: bool = False,
    workers: int | None = None,
) -> CCFVTables:
    """The per-case and per-pair quantities of CC-FV, from which any subset of cases is scored.

    Every CC-FV term is a mean (or sum) of per-case values (paper variety) or per-case-pair
    values (class distances, official variety), so the quantities are computed once and
    :meth:`CCFVTables.parts` / :meth:`CCFVTables.score` sum them up over all cases or over a
    subset (the bootstrap over target cases, :mod:`ccfv.bootstrap`, re-scores this way
    without fitting a Gaussian again).

    Parameters: those of :func:`ccfv_parts`, which is ``ccfv_tables(...).parts()``.
    ``workers`` (threads for the pairwise W2 products, default the usable CPU cores, at most
    8; 1 = serial) changes the time only, never the value, and is not one of the result's
    ``options``. The tables are computed with BLAS on
    :data:`ccfv.estimators._threads.BLAS_THREADS` threads (default 1), the W2 products always
    on one: the matrices are small, and BLAS threads on top of the W2 workers oversubscribe
    the cores.

    Returns
    -------
    CCFVTables
    """
    if variant not in VARIANTS:
        raise UserError(f"unknown CC-FV variant {variant!r}: use one of {VARIANTS}")
    if distance not in DISTANCES:
        raise UserError(f"unknown distance {distance!r}: use one of {DISTANCES}")
    if consistency_only and variety_only:
        raise UserError("consistency_only and variety_only exclude each other: set at most one")
    if not (s >= 0 and math.isfinite(s)):
        raise UserError(f"energy exponent s={s!r}: use a finite s >= 0 (the paper uses s = 1)")
    if not ridge > 0:
        raise UserError(f"ridge={ridge!r}: use a positive ridge (default 1e-3)")
    if workers is not None and (
        not isinstance(workers, numbers.Integral) or isinstance(workers, bool) or workers < 1
    ):
        raise UserError(
            f"workers={workers!r}: use an integer >= 1 (threads for the W2 pairs) "
            "or leave it unset for the usable CPU cores"
        )
    normalise = (variant == "paper") if normalize is None else bool(normalize)
    eps = (0.0 if variant == "paper" else OFFICIAL_EPS) if eps is None else float(eps)
    if not (eps >= 0 and math.isfinite(eps)):
        raise UserError(f"eps={eps!r}: use a finite eps >= 0")
    data = validate_feature_set(features, layers=layers)
    classes = foreground_classes(data)
    if not classes and not variety_only:
        raise UserError(
            "no sample carries a foreground class id (> 0): class consistency "
            "needs labelled foreground voxels; check the labels of the feature set"
        )
    options = dict(
        distance=distance,
        consistency_only=consistency_only,
        variety_only=variety_only,
        s=s,
        normalize=normalise,
        eps=eps,
        layers=list(data),
        ridge=ridge,
        normalize_consistency=bool(normalize_consistency),
    )
    notes = _Notes()
    tables = []
    for layer, cases in data.items():
        t = _LayerTables(layer)
        if not consistency_only:
            _variety_tables(t, cases, variant, s, normalise, eps, notes)
        if not variety_only:
            _consistency_tables(
                t,
                cases,
                classes,
                variant,
                distance,
                ridge,
                normalize_consistency,
                notes,
                workers,
            )
        tables.append(t)
    n_cases = len(next(iter(data.values())))
    return CCFVTables(variant, options, tables, n_cases, list(notes))


@dataclass
class CCFVTables:
    """What :func:`ccfv_tables` computed: per layer, per-case and per-case-pair quantities."""

    variant: str
    options: dict
    layers: list[_LayerTables]
    n_cases: int
    notes: list[str]

    def parts(self, cases: CaseIndices | None = None) -> CCFVResult:
        """The CC-FV result over ``cases`` (indices of distinct cases; default all)."""
        idx = (
            np.arange(self.n_cases)
            if cases is None
            else np.unique(np.asarray(cases, dtype=np.int64))
        )
        if idx.size and (idx[0] < 0 or idx[-1] >= self.n_cases):
            raise UserError(f"case indices {list(idx)} outside 0..{self.n_cases - 1}")
        notes = _Notes()
        consistency_only = self.options["consistency_only"]
        variety_only = self.options["variety_only"]
        parts = []
        for t in self.layers:
            variety = None if consistency_only else _variety(t, idx, self.variant)
            consistency, per_class, pairs = (
                (None, {}, {}) if variety_only else _consistency(t, idx, self.variant, notes)
            )
            if variety_only:
                assert variety is not None  # ccfv_tables rejects variety_only with consistency_only
                term = _log_ratio(t.layer, variety, 1.0, "variety")
            elif consistency_only:
                assert consistency is not None
                term = _log_ratio(t.layer, 1.0, consistency, "1/consistency")
            else:
                assert variety is not None and consistency is not None
                term = _log_ratio(t.layer, variety, consistency, "variety/consistency")
            parts.append(LayerParts(t.layer, variety, consistency, term, per_class, pairs))
        terms = [p.term for p in parts]
        score = float(np.mean(terms) if self.variant == "paper" else np.sum(terms))
        return CCFVResult(
            score=score,
            variant=self.variant,
            options=dict(self.options),
            layers=parts,
            warnings=self.notes + list(notes),
        )

    def score(self, cases: CaseIndices | None = None) -> float:
        """The CC-FV score over ``cases`` (default all)."""
        return self.parts(cases).score


def ccfv_parts(
    features: FeatureSet,
    variant: str = "paper",
    *,
    distance: str = "wasserstein",
    consistency_only: bool = False,
    variety_only: bool = False,
    s: float = 1.0,
    normalize: bool | None = None,
    eps: float | None = None,
    layers: Sequence[str] | None = None,
    ridge: float = 1e-3,
    normalize_consistency: bool = False,
    workers: int | None = None,
) -> CCFVResult:
    """CC-FV score of one model's feature set, with its per-layer parts.

    Parameters
    ----------
    features : mapping ``layer -> [(X, y) per case]``
        X (n_samples, dim) sampled voxel features, y (n_samples,) their class ids
        (0 = background, used by the variety term only). Validated here.
    variant : ``"paper"`` (Eq. 1-5 of the paper) or ``"official"`` (the released code).
    distance : ``"wasserstein"`` (W2, the method's), ``"kl"`` (symmetrised Kullback-Leibler)
        or ``"bhattacharyya"`` between the per-case Gaussians of a class (paper's Table 2).
    consistency_only, variety_only : drop the other term (ablations); the score becomes
        ``log(1 / consistency)`` or ``log(variety)`` per layer.
    s : energy exponent (s > 0: |.|^-s; s = 0: log 1/|.|). Both variants.
    normalize : project features to the unit sphere before the variety term. Default:
        True for ``"paper"``, False for ``"official"`` (the released code does not).
    eps : added to squared distances in the variety term. Default: 0 for ``"paper"``
        (coincident pairs are floored and reported), 1e-3 for ``"official"`` (its constant).
    layers : names of the layers to use (default: all).
    ridge : for ``kl`` and ``bhattacharyya`` only: ``ridge * Tr(S) / d`` is added to each
        covariance's diagonal so that rank-deficient covariances (fewer samples than dims)
        have an inverse and a determinant.
    normalize_consistency : project every sampled feature vector to the unit sphere before
        the class Gaussians are fitted (not in the paper; off by default). W2 is in feature
        units, so without it a layer whose features are twice as large is judged twice as
        inconsistent, while the paper's variety term (on the unit sphere) ignores scale; with
        it both terms are invariant to rescaling a layer. Per sample, so subsets of cases
        (the bootstrap) still re-score exactly from the tables.
    workers : threads sharing the pairwise W2 products (default: the usable CPU cores, at
        most 8; 1 = serial). The time changes, the value does not.

    Returns
    -------
    CCFVResult
        ``score``, ``layers`` (one :class:`LayerParts` each), ``warnings`` (every skip).
    """
    return ccfv_tables(
        features,
        variant,
        distance=distance,
        consistency_only=consistency_only,
        variety_only=variety_only,
        s=s,
        normalize=normalize,
        eps=eps,
        layers=layers,
        ridge=ridge,
        normalize_consistency=normalize_consistency,
        workers=workers,
    ).parts()


def ccfv_score(features: FeatureSet, variant: str = "paper", **options) -> float:
    """CC-FV transferability score of one model (larger = better to fine-tune).

    ``T = mean_layers log(F_v / C_cons)`` for ``variant="paper"``,
    ``T = sum_layers log(variety / w)`` for ``variant="official"``; see the module docstring
    for the terms and :func:`ccfv_parts` for the options and the per-layer parts.
    """
    return ccfv_parts(features, variant, **options).score
