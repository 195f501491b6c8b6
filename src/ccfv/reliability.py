"""How sure is a transfer benchmark? The reliability of its ground truth, intervals for its figures.

The ground truth of a transfer benchmark is the fine-tuned Dice of each model, a mean over a few
fine-tuning seeds on a finite test split; it is noisy, and a statistic of an estimator against
it (weighted tau, say) inherits that noise. This module measures the noise and carries it into
every figure (pure numpy/scipy: arrays in, numbers out; no I/O, no torch). See
``docs/explanation/benchmark-statistics.md`` for the why.

Data of one target (:class:`TargetRuns`): per model, the Dice per seed, and where the
benchmark stored it (protocol v2) the Dice per seed, test case and class, from which every
seed's Dice is recomputed exactly (mean over the classes of each class's mean over the cases
that contain it).

- :func:`split_half` -- reliability of the ground truth: with >= 4 seeds, every balanced split
  of the seeds into two halves, the Spearman, Kendall and weighted tau (and Pearson) between
  the halves' mean Dice, averaged over the splits; with 2-3 seeds, one seed against the mean of
  the others, averaged over the seeds (``method`` says which);
- :func:`seed_noise` -- seed sd of each model against the gaps between models adjacent in Dice;
- :func:`replicate_truth` -- bootstrap replicates of the ground truth: the test cases resampled
  (the same cases for every model: they are paired) and the seeds resampled per model;
- :func:`noise_ceiling` -- what a perfect estimator (scores = the true mean Dice) would get
  against a finite-seed ground truth: parametric bootstrap from each model's mean and seed sd;
- :func:`best_group` -- the models that the noise cannot tell from the best (the 95% interval of
  their difference to the best covers 0);
- :func:`estimator_statistics` -- each estimator's weighted tau, Kendall, Spearman, Pearson and
  top-1 regret with 95% intervals over the replicates, its top-1 hit of the best group and its
  top-3 recall;
- :func:`paired_difference` -- two estimators on one target: the difference of a statistic with
  its interval over the same replicates; :func:`across_targets` -- their per-target
  differences: a sign test and a sign-flip permutation test;
- :func:`headline` -- averages only over the targets whose split-half Spearman is >= 0.8; the
  others are listed as "ground truth too noisy" with their figures.

Every statistic: float64; undefined values are None, never a silent NaN.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ccfv.errors import UserError
from ccfv.evaluation import kendall_tau, pearson, regret, spearman, weighted_tau

#: Rank statistics of an estimator (or of one half of the seeds) against the ground truth.
CORRELATION_STATS = {
    "weighted_tau": weighted_tau,
    "kendall_tau": kendall_tau,
    "spearman": spearman,
    "pearson": pearson,
}
#: Split-half Spearman a target needs to enter the headline.
RELIABLE_SPEARMAN = 0.8


@dataclass
class TargetRuns:
    """The fine-tuning runs of one target.

    ``dice``: model -> Dice per seed (None for a failed run). ``cases`` (optional): model ->
    array ``(seeds, test cases, classes)`` of per-case Dice, NaN where the class is absent from
    the case's label; the case axis is the same test cases in the same order for every model.
    """

    dice: dict[str, list[float | None]]
    cases: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_models(cls, models: Mapping[str, Mapping]) -> TargetRuns:
        """From a benchmark summary's ``targets[T]["models"]`` (``dice`` per seed and, v2,
        ``dice_per_case``: per seed ``{case id: [Dice per class or None]}``). Per-case data are
        used only when every model has them for every seed, over the same cases."""
        dice = {name: list(m["dice"]) for name, m in models.items()}
        cases: dict[str, np.ndarray] = {}
        per_case: dict[str, Any] = {name: m.get("dice_per_case") for name, m in models.items()}
        if per_case and all(
            v and all(isinstance(s, Mapping) for s in v) for v in per_case.values()
        ):
            ids = sorted(next(iter(per_case.values()))[0])
            if all(sorted(s) == ids for v in per_case.values() for s in v):
                for name, seeds in per_case.items():
                    cases[name] = np.array(
                        [
                            [[np.nan if x is None else float(x) for x in s[c]] for c in ids]
                            for s in seeds
                        ],
                        dtype=np.float64,
                    )
        return cls(dice, cases)

    def usable(self) -> list[str]:
        """Models with at least one seed's Dice."""
        return [m for m, v in self.dice.items() if any(d is not None for d in v)]


# ------------------------------------------------------------------------------------------------
# aggregation


def seed_dice_from_cases(cases: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Dice per seed from ``(seeds, cases, classes)`` per-case Dice: per class the (weighted)
    mean over the cases that contain it, then the mean over the classes that occur.

    ``weights`` ``(B, cases)`` (bootstrap counts) gives ``(B, seeds)``; without, ``(seeds,)``.
    A seed with no class occurring is NaN.
    """
    x = np.asarray(cases, dtype=np.float64)
    finite = np.isfinite(x)
    values = np.where(finite, x, 0.0)
    w = np.ones((1, x.shape[1])) if weights is None else np.asarray(weights, dtype=np.float64)
    num = np.einsum("bn,snk->bsk", w, values)
    den = np.einsum("bn,snk->bsk", w, finite.astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
        occurs = np.isfinite(per_class)
        out = np.where(
            occurs.any(axis=2),
            np.nansum(per_class, axis=2) / np.maximum(occurs.sum(axis=2), 1),
            np.nan,
        )
    return out[0] if weights is None else out


def _matrix(runs: TargetRuns, models: Sequence[str]) -> np.ndarray:
    """``(models, seeds)`` Dice, NaN for a missing run (seeds padded to the longest model)."""
    n = max(len(runs.dice[m]) for m in models)
    out = np.full((len(models), n), np.nan)
    for i, m in enumerate(models):
        for j, d in enumerate(runs.dice[m]):
            if d is not None:
                out[i, j] = float(d)
    return out


def _means(matrix: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.nanmean(matrix, axis=1)


# ------------------------------------------------------------------------------------------------
# reliability of the ground truth


def _halves(n: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Every split of seeds 0..n-1 into two halves of n // 2 and n - n // 2 seeds, each
    unordered split once."""
    k = n // 2
    seen, out = set(), []
    for a in itertools.combinations(range(n), k):
        b = tuple(i for i in range(n) if i not in a)
        key = frozenset([a, b]) if len(a) == len(b) else (a, b)
        if key in seen:
            continue
        seen.add(key)
        out.append((a, b))
    return out


def split_half(dice: np.ndarray) -> dict:
    """Reliability of a ground truth of ``dice`` ``(models, seeds)`` (no NaN).

    With >= 4 seeds (``method: "split_half"``): for every balanced split of the seeds into two
    halves, each statistic of :data:`CORRELATION_STATS` between the two halves' mean Dice per
    model; the mean over the splits (splits where a statistic is undefined are left out; None
    when it is undefined in all). With 2 or 3 seeds (``method: "one_vs_rest"``): one seed's Dice
    against the mean of the others, averaged over the seeds. One seed: every value None.

    Returns ``{statistic: value, "method", "n_splits", "n_seeds", "n_models"}``.
    """
    x = np.asarray(dice, dtype=np.float64)
    if x.ndim != 2 or not np.all(np.isfinite(x)):
        raise UserError(
            f"split_half needs a (models, seeds) array of finite Dice, got shape "
            f"{x.shape}{' with NaN' if x.ndim == 2 else ''}"
        )
    m, s = x.shape
    out: dict = {"n_seeds": s, "n_models": m}
    if s < 2 or m < 3:
        return (
            out
            | {k: None for k in CORRELATION_STATS}
            | {
                "method": None,
                "n_splits": 0,
                "note": f"{s} seed(s) and {m} model(s): needs >= 2 seeds and >= 3 models",
            }
        )
    if s >= 4:
        pairs = [(x[:, list(a)].mean(axis=1), x[:, list(b)].mean(axis=1)) for a, b in _halves(s)]
        out["method"] = "split_half"
    else:
        pairs = [(x[:, j], np.delete(x, j, axis=1).mean(axis=1)) for j in range(s)]
        out["method"] = "one_vs_rest"
    out["n_splits"] = len(pairs)
    for name, fn in CORRELATION_STATS.items():
        values = [v for v in (fn(a, b) for a, b in pairs) if v is not None]
        out[name] = float(np.mean(values)) if values else None
    return out


def seed_noise(dice: np.ndarray) -> dict:
    """Seed noise of ``dice`` ``(models, seeds)`` against the gaps between the models.

    ``mean_seed_sd``: mean over models of the sample sd (ddof 1) of the Dice over seeds;
    ``median_gap``: median difference between the mean Dice of models adjacent in the Dice
    order; ``sd_over_gap``: their ratio (>> 1: neighbours cannot be told apart);
    ``dice_range``: lowest and highest mean Dice.
    """
    x = np.asarray(dice, dtype=np.float64)
    means = _means(x)
    counts = np.isfinite(x).sum(axis=1)
    sds = [float(np.nanstd(row, ddof=1)) for row, c in zip(x, counts) if c > 1]
    finite = np.sort(means[np.isfinite(means)])
    gaps = np.diff(finite)
    sd = float(np.mean(sds)) if sds else None
    gap = float(np.median(gaps)) if gaps.size else None
    return {
        "mean_seed_sd": sd,
        "median_gap": gap,
        "sd_over_gap": (sd / gap if sd is not None and gap else None),
        "dice_range": ([float(finite[0]), float(finite[-1])] if finite.size else None),
    }


# ------------------------------------------------------------------------------------------------
# bootstrap replicates of the ground truth


def replicate_truth(
    runs: TargetRuns,
    models: Sequence[str],
    n_boot: int = 2000,
    seed: int = 0,
    resample_cases: bool = True,
) -> np.ndarray:
    """``(n_boot, models)`` bootstrap replicates of the mean Dice of each model.

    Each replicate draws the test cases with replacement (one draw shared by every model and
    seed: the models are compared on the same cases) when per-case Dice are stored and
    ``resample_cases``, recomputes each seed's Dice from them (:func:`seed_dice_from_cases`),
    then draws each model's seeds with replacement (independently per model) and averages.
    Without per-case Dice only the seeds are resampled. Seeded: the same call gives the same
    replicates.
    """
    rng = np.random.default_rng(seed)
    models = list(models)
    out = np.empty((n_boot, len(models)))
    use_cases = resample_cases and all(m in runs.cases for m in models) and models
    if use_cases:
        n_cases = runs.cases[models[0]].shape[1]
        weights = rng.multinomial(n_cases, np.full(n_cases, 1.0 / n_cases), size=n_boot)
    for i, m in enumerate(models):
        if use_cases:
            per_seed = seed_dice_from_cases(runs.cases[m], weights)  # (B, S)
        else:
            d = np.array([np.nan if v is None else float(v) for v in runs.dice[m]])
            per_seed = np.broadcast_to(d, (n_boot, d.size))
        per_seed = per_seed[:, np.isfinite(per_seed).all(axis=0)] if per_seed.size else per_seed
        s = per_seed.shape[1]
        if s == 0:
            out[:, i] = np.nan
            continue
        pick = rng.integers(0, s, size=(n_boot, s))
        out[:, i] = np.take_along_axis(per_seed, pick, axis=1).mean(axis=1)
    return out


def percentile_interval(values: Iterable[float | None], level: float = 0.95) -> list[float] | None:
    """The central ``level`` percentile interval of the finite ``values`` (bootstrap
    replicates); None with fewer than 2."""
    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size < 2:
        return None
    lo, hi = np.quantile(v, [(1 - level) / 2, 1 - (1 - level) / 2])
    return [float(lo), float(hi)]


def noise_ceiling(
    means: ArrayLike, sds: ArrayLike, n_seeds: int, n_boot: int = 2000, seed: int = 0
) -> dict:
    """What a perfect estimator would get against a ground truth of ``n_seeds`` seeds.

    Parametric bootstrap: the true mean Dice of model i is taken to be ``means[i]``; a
    simulated ground truth draws each model's mean of ``n_seeds`` seeds as
    ``means[i] + sd[i] / sqrt(n_seeds) * z`` (z standard normal); the perfect estimator scores
    every model by ``means``. Returns, per statistic of :data:`CORRELATION_STATS` and for the
    top-1 ``regret``, ``{"mean", "interval"}`` over the simulations: no estimator can expect to
    beat ``mean`` on this benchmark.
    """
    mu = np.asarray(means, dtype=np.float64)
    sd = np.asarray(sds, dtype=np.float64)
    if mu.shape != sd.shape or mu.size < 3 or not (np.isfinite(mu).all() and np.isfinite(sd).all()):
        raise UserError(
            f"noise_ceiling needs finite means and seed sds of >= 3 models, got "
            f"{mu.size} and {sd.size}"
        )
    if n_seeds < 1:
        raise UserError(f"noise_ceiling: n_seeds {n_seeds}; give >= 1")
    rng = np.random.default_rng(seed)
    sims = mu + sd / math.sqrt(n_seeds) * rng.standard_normal((n_boot, mu.size))
    out = {}
    for name, fn in {**CORRELATION_STATS, "regret": regret}.items():
        values = [fn(mu, t) for t in sims]
        finite = [v for v in values if v is not None]
        out[name] = {
            "mean": float(np.mean(finite)) if finite else None,
            "interval": percentile_interval(finite),
        }
    return out


def best_group(
    runs: TargetRuns,
    models: Sequence[str] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    replicates: np.ndarray | None = None,
) -> dict:
    """The models the noise cannot tell from the best.

    The best is the model of highest mean Dice; a model belongs to the best group when the
    ``level`` interval (bootstrap percentiles of :func:`replicate_truth`: test cases paired,
    seeds per model) of its difference in mean Dice to the best covers 0 (its lower end <= 0).
    Returns ``{"best", "group" (best first, then by mean Dice), "differences": {model:
    {"difference", "interval"}}}``.
    """
    models = list(models) if models is not None else runs.usable()
    means = _means(_matrix(runs, models))
    if replicates is None:
        replicates = replicate_truth(runs, models, n_boot, seed)
    b = int(np.nanargmax(means))
    diffs = {}
    group = [models[b]]
    for i, m in enumerate(models):
        if i == b:
            continue
        d = replicates[:, b] - replicates[:, i]
        iv = percentile_interval(d, level)
        diffs[m] = {"difference": float(means[b] - means[i]), "interval": iv}
        if iv is None or iv[0] <= 0:
            group.append(m)
    group = [group[0]] + sorted(group[1:], key=lambda m: -means[models.index(m)])
    return {"best": models[b], "group": group, "differences": diffs}


# ------------------------------------------------------------------------------------------------
# estimators


def _ranked(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the k highest scores (ties: lower index first; a stable order)."""
    return [int(i) for i in np.argsort(-scores, kind="stable")[:k]]


def finite_scores(scores: Mapping[str, float | None], models: Sequence[str]) -> dict[str, float]:
    """model -> score as a float, for the ``models`` whose score is given and finite."""
    out = {}
    for m in models:
        s = scores.get(m)
        if s is not None and math.isfinite(float(s)):
            out[m] = float(s)
    return out


def estimator_statistics(
    scores: Mapping[str, float | None],
    runs: TargetRuns,
    replicates: np.ndarray | None = None,
    group: Sequence[str] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """One estimator on one target, with intervals.

    ``scores``: model -> score (larger = predicted better; None or non-finite: left out).
    Point values against the mean Dice over seeds; intervals: the ``level`` percentiles of the
    statistic against each replicate of :func:`replicate_truth` (pass ``replicates`` to share
    them between estimators, in the order of ``runs.usable()``). Returns, for each statistic of
    :data:`CORRELATION_STATS` and ``regret`` (top-1 regret in Dice: best mean Dice minus the
    mean Dice of the model scored highest), ``{"value", "interval"}``; plus ``best_group_hit``
    (is the top-scored model in ``group``, the best group) and ``top3_recall`` (is a model of
    the best group among the three highest scores), and ``n_models``.
    """
    models = runs.usable()
    if replicates is None:
        replicates = replicate_truth(runs, models, n_boot, seed)
    finite = finite_scores(scores, models)
    keep = [i for i, m in enumerate(models) if m in finite]
    if len(keep) < 3:
        return {
            "n_models": len(keep),
            "note": f"{len(keep)} model(s) with a finite score: needs >= 3",
        }
    names = [models[i] for i in keep]
    x = np.array([finite[m] for m in names])
    truth = _means(_matrix(runs, names))
    reps = replicates[:, keep]
    out: dict = {"n_models": len(keep)}
    for name, fn in {**CORRELATION_STATS, "regret": regret}.items():
        value = fn(x, truth)
        rep = [fn(x, r) for r in reps if np.isfinite(r).all()]
        out[name] = {"value": value, "interval": percentile_interval(rep, level)}
    if group is None:
        group = best_group(runs, models, replicates=replicates, level=level)["group"]
    in_group = set(group)
    top = _ranked(x, 3)
    out["best_group_hit"] = names[top[0]] in in_group
    out["top3_recall"] = any(names[i] in in_group for i in top)
    out["top1"] = names[top[0]]
    return out


def paired_difference(
    scores_a: Mapping[str, float | None],
    scores_b: Mapping[str, float | None],
    runs: TargetRuns,
    statistic: str = "weighted_tau",
    replicates: np.ndarray | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Estimator A minus estimator B on one target: ``statistic`` (a key of
    :data:`CORRELATION_STATS` or ``regret``) of each against the same ground-truth replicates,
    their difference per replicate, its ``level`` interval. Only models both score count.
    Returns ``{"difference", "interval", "n_models"}`` (None where undefined)."""
    fn = {**CORRELATION_STATS, "regret": regret}.get(statistic)
    if fn is None:
        raise UserError(
            f"unknown statistic {statistic!r}; known: {', '.join([*CORRELATION_STATS, 'regret'])}"
        )
    models = runs.usable()
    if replicates is None:
        replicates = replicate_truth(runs, models, n_boot, seed)
    finite_a, finite_b = finite_scores(scores_a, models), finite_scores(scores_b, models)
    keep = [i for i, m in enumerate(models) if m in finite_a and m in finite_b]
    if len(keep) < 3:
        return {"difference": None, "interval": None, "n_models": len(keep)}
    names = [models[i] for i in keep]
    a = np.array([finite_a[m] for m in names])
    b = np.array([finite_b[m] for m in names])
    truth = _means(_matrix(runs, names))
    va, vb = fn(a, truth), fn(b, truth)
    diffs = []
    for r in replicates[:, keep]:
        ra, rb = fn(a, r), fn(b, r)
        if ra is not None and rb is not None:
            diffs.append(ra - rb)
    return {
        "difference": (va - vb if va is not None and vb is not None else None),
        "interval": percentile_interval(diffs, level),
        "n_models": len(keep),
    }


def across_targets(
    differences: Sequence[float | None], n_resamples: int = 9999, seed: int = 0
) -> dict:
    """Per-target differences of two estimators (A - B): is A better across targets?

    ``sign_test``: two-sided binomial test of the number of positive differences among the
    non-zero ones (:func:`scipy.stats.binomtest`, p = 0.5); ``permutation``: two-sided
    sign-flip permutation test of the mean difference (:func:`scipy.stats.permutation_test`,
    ``permutation_type="samples"``; exact when 2**n <= ``n_resamples``). None values are left
    out. Returns ``{"n", "mean", "positive", "negative", "sign_test_p", "permutation_p"}``.
    """
    from scipy.stats import binomtest, permutation_test

    d = np.array([x for x in differences if x is not None and math.isfinite(x)], dtype=np.float64)
    out: dict = {
        "n": int(d.size),
        "mean": float(d.mean()) if d.size else None,
        "positive": int((d > 0).sum()),
        "negative": int((d < 0).sum()),
    }
    nonzero = out["positive"] + out["negative"]
    out["sign_test_p"] = float(binomtest(out["positive"], nonzero, 0.5).pvalue) if nonzero else None
    if d.size >= 2 and np.any(d != 0):
        res = permutation_test(
            (d,),
            lambda x: np.mean(x),
            permutation_type="samples",
            n_resamples=n_resamples,
            alternative="two-sided",
            random_state=np.random.default_rng(seed),
        )
        out["permutation_p"] = float(min(1.0, res.pvalue))
    else:
        out["permutation_p"] = None
    return out


def rate_interval(hits: Sequence[bool], level: float = 0.95) -> dict:
    """A hit rate over targets with its Wilson interval (:meth:`scipy.stats.binomtest
    .proportion_ci`)."""
    from scipy.stats import binomtest

    n, k = len(hits), int(sum(bool(h) for h in hits))
    if n == 0:
        return {"rate": None, "interval": None, "n": 0}
    ci = binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    return {"rate": k / n, "interval": [float(ci.low), float(ci.high)], "n": n}


# ------------------------------------------------------------------------------------------------
# one target, all estimators; the headline


def target_report(
    runs: TargetRuns,
    scores: Mapping[str, Mapping[str, float | None]],
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Everything of one target: ``reliability`` (:func:`split_half`), ``noise``
    (:func:`seed_noise`), ``noise_ceiling`` (None with one seed), ``best_group``, ``truth``
    (mean Dice per model) and ``truth_interval`` (its bootstrap interval), per method of
    ``scores`` (model -> method -> score) :func:`estimator_statistics`, and ``replicates``
    (the ``(n_boot, models)`` array all of them used, models in ``runs.usable()`` order)."""
    models = runs.usable()
    matrix = _matrix(runs, models)
    complete = matrix[:, np.isfinite(matrix).all(axis=0)]
    replicates = replicate_truth(runs, models, n_boot, seed)
    group = best_group(runs, models, replicates=replicates, level=level)
    out: dict[str, Any] = {
        "n_models": len(models),
        "n_seeds": int(complete.shape[1]),
        "n_test_cases": (
            int(runs.cases[models[0]].shape[1])
            if models and all(m in runs.cases for m in models)
            else None
        ),
        "reliability": split_half(complete),
        "noise": seed_noise(matrix),
        "best_group": group,
        "truth": {m: float(v) for m, v in zip(models, _means(matrix))},
        "truth_interval": {
            m: percentile_interval(replicates[:, i], level) for i, m in enumerate(models)
        },
    }
    if complete.shape[1] >= 2 and len(models) >= 3:
        out["noise_ceiling"] = noise_ceiling(
            _means(complete), complete.std(axis=1, ddof=1), complete.shape[1], n_boot, seed
        )
    else:
        out["noise_ceiling"] = None
    methods = list(dict.fromkeys(k for s in scores.values() for k in s))
    out["estimators"] = {
        method: estimator_statistics(
            {m: scores.get(m, {}).get(method) for m in models},
            runs,
            replicates,
            group["group"],
            level=level,
        )
        for method in methods
    }
    out["replicates"] = replicates  # for paired comparisons; not JSON (dropped by the report)
    return out


def headline(
    reports: Mapping[str, Mapping],
    threshold: float = RELIABLE_SPEARMAN,
    stats: Sequence[str] = ("weighted_tau", "spearman", "pearson", "regret"),
) -> dict:
    """Average each estimator's statistics over the targets whose split-half Spearman is >=
    ``threshold`` (``reliable``), with its best-group hit rate and top-3 recall (Wilson
    intervals); the other targets are listed in ``too_noisy`` with their reliability figures.
    """
    reliable = [
        t for t, r in reports.items() if (r["reliability"].get("spearman") or -2) >= threshold
    ]
    noisy = {
        t: {"reliability": r["reliability"], "noise": r["noise"]}
        for t, r in reports.items()
        if t not in reliable
    }
    methods = list(dict.fromkeys(m for t in reliable for m in reports[t]["estimators"]))
    table = {}
    for method in methods:
        rows = [reports[t]["estimators"].get(method, {}) for t in reliable]
        rows = [r for r in rows if "n_models" in r and r.get("weighted_tau")]
        entry: dict[str, Any] = {"n_targets": len(rows)}
        for s in stats:
            values = [r[s]["value"] for r in rows if r[s]["value"] is not None]
            entry[s] = float(np.mean(values)) if values else None
        entry["best_group_hit"] = rate_interval([r["best_group_hit"] for r in rows])
        entry["top3_recall"] = rate_interval([r["top3_recall"] for r in rows])
        table[method] = entry
    return {"threshold": threshold, "reliable": reliable, "too_noisy": noisy, "estimators": table}
