"""How sure is a ranking? Bootstrap over target cases, on cached features (no forward pass).

A transferability score is computed from a handful of labelled target cases, so it carries
sampling noise: another draw of cases could reorder the bank. :func:`bootstrap_ranking`
measures that noise by re-scoring every model on resampled cases:

- replicate ``b`` draws ``N`` case indices with replacement (``N`` = number of target cases),
  the SAME draw for every model, so that models are compared on the same cases;
- a case drawn more than once counts once (the replicate keeps the distinct cases drawn,
  about 63% of them on average). Pairwise estimators such as CC-FV compare cases with each
  other, and a case compared with its own copy would add a distance of exactly 0 and inflate
  consistency; keeping distinct cases treats every estimator alike and never does that;
- a draw with fewer than ``min_cases`` distinct cases (2) is drawn again;
- a model whose estimator cannot score a replicate (e.g. a class left in fewer than 2 cases)
  gets no value there; that is counted, never replaced by a number.

Reported per model: the percentile interval of its replicate scores (``level``, default 95%),
their standard deviation, and the fraction of replicates in which it ranks first; and for the
ranking, ``p_top_stays``: the fraction of replicates in which the model ranked first on all
cases is still ranked first. Replicates in which some model could not be scored are left out
of both fractions (``n_valid`` counts the others). Seeded: same seed, same draws, same result.

The pieces work one model at a time (:func:`resample_cases`, then :func:`replicate_scores` per
model with the same draws, then :func:`summarize`), so ``ccfv rank`` never holds more than one
model's features; :func:`bootstrap_ranking` chains them for feature sets held in memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ccfv.errors import UserError, collect_ccfv_warnings

if TYPE_CHECKING:
    from ccfv.estimators.featureset import CaseIndices

__all__ = [
    "BootstrapResult",
    "ModelInterval",
    "bootstrap_ranking",
    "replicate_scores",
    "resample_cases",
    "summarize",
]


@dataclass(frozen=True)
class ModelInterval:
    """One model's bootstrap summary for one method."""

    low: float | None
    high: float | None
    std: float | None
    p_first: float | None
    n_scored: int


@dataclass
class BootstrapResult:
    """Bootstrap of one method over target cases; see the module docstring."""

    method: str
    n_boot: int
    level: float
    seed: int
    top: str | None
    p_top_stays: float | None
    n_valid: int
    models: dict[str, ModelInterval] = field(default_factory=dict)
    replicates: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "n_boot": self.n_boot,
            "level": self.level,
            "seed": self.seed,
            "top": self.top,
            "p_top_stays": self.p_top_stays,
            "n_valid": self.n_valid,
            "models": {m: vars(iv) for m, iv in self.models.items()},
        }


def resample_cases(
    n_cases: int, n_boot: int, seed: int = 0, min_cases: int = 2
) -> list[np.ndarray]:
    """``n_boot`` sorted arrays of distinct case indices, one bootstrap draw each."""
    if n_cases < min_cases:
        raise UserError(
            f"the bootstrap needs at least {min_cases} target cases, got "
            f"{n_cases}: add cases or turn it off (--bootstrap 0)"
        )
    rng = np.random.default_rng([int(seed), 0xB007])
    draws: list[np.ndarray] = []
    while len(draws) < n_boot:
        idx = np.unique(rng.integers(0, n_cases, n_cases))
        if idx.size >= min_cases:
            draws.append(idx)
    return draws


def replicate_scores(
    features: Mapping,
    predictions: Sequence | None,
    score: Callable[..., float],
    draws: Sequence[np.ndarray],
    progress: str | None = None,
    scorer: Callable[[CaseIndices], float] | None = None,
) -> np.ndarray:
    """One model's score on every draw of :func:`resample_cases` (NaN where it cannot be
    scored: the estimator raised a UserError or gave a non-finite value).

    ``score`` is called as ``score(features, predictions=...)`` on each subset of cases; a
    registered :class:`ccfv.estimators.registry.Estimator` is asked to ``prepare`` instead,
    which lets CC-FV compute its per-case and per-pair terms once for all draws. ``scorer``:
    a subset scorer already prepared (``Estimator.prepare``), used as it is.
    """
    from ccfv.estimators.registry import subset_scorer

    values = np.full(len(draws), np.nan)
    with collect_ccfv_warnings():
        if scorer is None and hasattr(score, "prepare"):
            try:
                scorer = score.prepare(features, predictions)
            except UserError:
                return values
        elif scorer is None:
            scorer = subset_scorer(
                lambda sub, preds: score(sub, predictions=preds), features, predictions
            )
        from ccfv.progress import progress as bar

        iterator = bar(enumerate(draws), desc=str(progress), unit="draw", enabled=bool(progress))
        for b, idx in iterator:
            try:
                value = float(scorer(idx))
            except UserError:
                continue
            if math.isfinite(value):
                values[b] = value
    return values


def summarize(
    method: str,
    replicates: Mapping[str, np.ndarray],
    full_scores: Mapping[str, float | None],
    level: float = 0.95,
    seed: int = 0,
) -> BootstrapResult:
    """Intervals, rank-first fractions and ``p_top_stays`` from every model's replicates
    (all computed on the same draws)."""
    if not 0 < level < 1:
        raise UserError(f"level={level}: give a coverage in (0, 1), e.g. 0.95")
    models = list(replicates)
    if not models:
        raise UserError("no model to bootstrap")
    table = np.stack([np.asarray(replicates[m], dtype=np.float64) for m in models])
    finite_full = {
        m: v
        for m, v in full_scores.items()
        if m in replicates and v is not None and math.isfinite(v)
    }
    top = max(finite_full, key=lambda m: finite_full[m]) if finite_full else None
    complete = np.all(np.isfinite(table), axis=0)
    winners = np.argmax(np.where(np.isfinite(table), table, -np.inf), axis=0)
    n_valid = int(complete.sum())
    alpha = (1.0 - level) / 2.0
    out = {}
    for i, m in enumerate(models):
        v = table[i][np.isfinite(table[i])]
        if v.size:
            low, high = np.quantile(v, [alpha, 1.0 - alpha])
            std = float(v.std(ddof=1)) if v.size > 1 else 0.0
            p_first = float(np.mean(winners[complete] == i)) if n_valid else None
            out[m] = ModelInterval(float(low), float(high), std, p_first, int(v.size))
        else:
            out[m] = ModelInterval(None, None, None, None, 0)
    return BootstrapResult(
        method=method,
        n_boot=table.shape[1],
        level=level,
        seed=seed,
        top=top,
        p_top_stays=out[top].p_first if top is not None else None,
        n_valid=n_valid,
        models=out,
        replicates={m: table[i] for i, m in enumerate(models)},
    )


def bootstrap_ranking(
    inputs: Mapping[str, tuple[Mapping, Sequence | None]],
    score: Callable[..., float],
    method: str,
    full_scores: Mapping[str, float],
    n_boot: int = 100,
    level: float = 0.95,
    seed: int = 0,
) -> BootstrapResult:
    """Bootstrap one method's ranking of several models over their common target cases.

    Parameters
    ----------
    inputs : ``{model: (feature set, predictions or None)}``; every feature set holds the
        same cases in the same order (the shared sampling plan guarantees it).
    score : the estimator, called as ``score(features, predictions=...)``.
    method : its name, for messages and the result.
    full_scores : ``{model: score on all cases}``; the model with the largest is the "top".
    n_boot : number of replicates (>= 1).
    level : central percentile interval, in (0, 1).
    seed : seeds the draws.
    """
    if n_boot < 1:
        raise UserError(f"n_boot={n_boot}: give at least 1 bootstrap replicate (or skip it)")
    n_cases = {m: len(next(iter(feats.values()))) for m, (feats, _) in inputs.items()}
    if len(set(n_cases.values())) > 1:
        raise UserError(
            f"models hold different numbers of cases {n_cases}: the bootstrap "
            "compares models on the same cases; extract them with one plan"
        )
    if not n_cases:
        raise UserError("no model to bootstrap")
    draws = resample_cases(next(iter(n_cases.values())), n_boot, seed)
    replicates = {m: replicate_scores(f, p, score, draws) for m, (f, p) in inputs.items()}
    return summarize(method, replicates, full_scores, level, seed)
