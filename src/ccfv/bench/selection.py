"""``ccfv select`` as a method of the benchmark: its successive halving replayed on the
fine-tuning runs the benchmark has already made (plain numpy; no I/O, no torch).

Every benchmark run is a full fine-tune (``finetune.steps`` steps, the package's one training
loop, a polynomial learning-rate decay over the whole run) whose validation Dice was measured
every ``finetune.eval_every`` steps on a validation split carved out of target-train, never the
test split. Successive halving needs, for each candidate, only its validation Dice at each rung's
end, so a select on a target and seed ``s`` is replayed from those curves:

1. candidates: the top K models by the default estimator's scores
   (:data:`ccfv.estimators.registry.DEFAULT_METHOD`, the benchmark's own scores), in that
   order;
2. plan: :func:`ccfv.select.plan.halving_plan` for K and a total budget of B steps, fitted to
   the runs by :func:`fit_plan` (base rounded down to a multiple of ``eval_every``, the last
   rung ending by the runs' last step);
3. at each rung, a candidate's value is the curve point of its seed-``s`` run at the rung's
   end; the survivors are :func:`ccfv.select.plan.survivors` of those values (ties: the
   ranking order), as in ``ccfv select``; the pick is the last survivor.

The halving is select's (its plan, its survivors); the training is the same loop
(:func:`ccfv.training.fit`: Adam, DiceCE, polynomial decay). The replay differs from a live
``ccfv select`` in its schedule, which runs over the full fine-tuning budget instead of ending
at the last rung's end (``ccfv select --schedule-steps`` runs that schedule live), and in the
data side, which is the benchmark's: its split, its batches (whole images at the benchmark's
size, flips and quarter turns, ``finetune.batch_size``) and its validation Dice (on the whole
validation images), where a live select trains on patches at the model's window and validates
by sliding windows. The pick is then scored with the ground truth: its mean test Dice over all
seeds of its full fine-tunes.

Per target and (K, B) (:func:`target_selection`): the pick's **regret** (best model's mean test
Dice minus the pick's, averaged over the seeds; 95% bootstrap interval), its **best-group hit
rate** over the seeds (Wilson interval, :func:`ccfv.reliability.rate_interval`; a
training-free pick, the same on every seed, is one trial) and its
**compute** as a fraction of fine-tuning the whole bank (steps, and seconds from each run's
seconds per step). Beside them the baselines on the same axes: the training-free top-1 (of the
default estimator, and of the target's best estimator by weighted tau, chosen in hindsight)
and fine-tuning everything (per seed, the model of best validation Dice).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ccfv.errors import UserError
from ccfv.estimators.registry import DEFAULT_METHOD
from ccfv.reliability import finite_scores, percentile_interval
from ccfv.select.plan import Plan, halving_plan, survivors

__all__ = [
    "Replay",
    "curve_value",
    "fit_plan",
    "pick_regret",
    "replay_halving",
    "selection_headline",
    "selection_statistics",
    "target_selection",
]

#: The baselines' labels in the tables, summary.json and the plot.
TRAINING_FREE = "training-free top-1"
HINDSIGHT = "training-free top-1, best estimator in hindsight"
EVERYTHING = "fine-tune everything"
SELECT = "select"


# ------------------------------------------------------------------------------------------------
# the replay


def fit_plan(k: int, budget: int, run_steps: int, eval_every: int) -> tuple[Plan, list[str]]:
    """The halving plan of ``ccfv select --top k --budget budget`` fitted to runs of
    ``run_steps`` steps validated every ``eval_every`` steps, and what the fitting changed.

    ``halving_plan(k, budget)`` gives the base ``b = budget // sum(counts[r] * 2**r)``; the
    replay can read a candidate's validation Dice only on the runs' grid, so the base is rounded
    down to a multiple of ``eval_every`` (every rung end ``b * (2**(r + 1) - 1)`` is then on the
    grid), and lowered (a multiple of ``eval_every``) until the last rung ends by ``run_steps``
    (a run holds no later point; for K = 1 this caps the one candidate at a full fine-tune).
    The plan's schedule is ``run_steps`` (the runs' own). The plan used spends
    ``total_steps <= budget``; the same plan runs live as ``ccfv select --top k --budget
    <its total_steps> --schedule-steps <run_steps>``.

    Raises :class:`UserError` when no base of at least ``eval_every`` steps fits.
    """
    if isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every < 1:
        raise UserError(
            f"finetune.eval_every {eval_every!r}: the replay of select needs validation curves "
            "(finetune.eval_every >= 1 and finetune.val_fraction > 0)"
        )
    plan = halving_plan(k, int(budget))
    weight = sum(n * 2**r for r, n in enumerate(plan.counts))
    span = 2**plan.rungs - 1  # the last rung ends at base * span
    base = plan.base // eval_every * eval_every
    cap = int(run_steps) // span // eval_every * eval_every
    notes = []
    if base != plan.base:
        notes.append(
            f"base rounded down from {plan.base} to {base} steps (the curves' grid of "
            f"{eval_every} steps)"
        )
    if cap < base:
        notes.append(
            f"base capped at {cap} steps: the last rung must end by the runs' {run_steps} steps"
        )
        base = cap
    if base < eval_every:
        raise UserError(
            f"select.budgets: a budget of {budget} steps for K = {k} (rungs of "
            f"{list(plan.counts)} candidates) leaves a base of {base} steps, less than the "
            f"runs' validation interval (finetune.eval_every {eval_every}) within their "
            f"{run_steps} steps: give a budget of at least {weight * eval_every} steps for "
            f"this K (a larger select.budgets multiple) or a smaller K in select.top"
        )
    return replace(plan, base=base, schedule=int(run_steps)), notes


def curve_value(curve: Sequence[Sequence[float]] | None, step: int) -> float | None:
    """The validation Dice of ``curve`` (``[[step, dice], ...]``) at ``step``; None when the
    curve is missing or holds no finite point at that step."""
    if curve is None:
        return None
    for point in curve:
        if int(point[0]) == int(step):
            value = point[1]
            return float(value) if value is not None and math.isfinite(value) else None
    return None


@dataclass(frozen=True)
class Replay:
    """One replayed selection: the ``candidates`` (ranking order), the ``plan``, per rung the
    value of every candidate that entered it, the ``pick`` (None: every candidate failed) and
    the ``steps`` each candidate trained (its last rung's end; 0 without a run)."""

    candidates: tuple[str, ...]
    plan: Plan
    rungs: tuple[dict[str, float | None], ...]
    pick: str | None
    steps: dict[str, int]

    @property
    def total_steps(self) -> int:
        """Fine-tuning steps of all rungs (the plan's ``total_steps`` unless a run failed)."""
        return int(sum(self.steps.values()))


def replay_halving(
    candidates: Sequence[str],
    curves: Mapping[str, Sequence[Sequence[float]] | None],
    plan: Plan,
    run_steps: int,
    eval_every: int,
) -> Replay:
    """Successive halving over ``candidates`` (the top K, in ranking order) replayed on their
    runs' validation ``curves`` (model -> ``[[step, dice], ...]``, None: no run, a failed
    candidate): at the end of rung ``r`` each remaining candidate's value is its curve point at
    ``plan.ends[r]``, the better ``plan.counts[r + 1]`` go on (one after the last rung) by
    :func:`ccfv.select.plan.survivors`, ties by the ranking order; a candidate whose run or
    point is missing counts as failed (never kept), as in ``ccfv select``.

    Raises :class:`UserError` when a rung end is not a multiple of ``eval_every`` or lies past
    ``run_steps`` (the runs hold no value there; :func:`fit_plan` gives a plan that fits)."""
    candidates = list(candidates)
    if len(candidates) != plan.counts[0]:
        raise UserError(
            f"{len(candidates)} candidate(s) for a plan of rungs of {list(plan.counts)}: "
            "give as many candidates as the plan's first rung"
        )
    bad = [e for e in plan.ends if e % eval_every or e > run_steps]
    if bad:
        raise UserError(
            f"select budget {plan.total_steps} steps for K = {len(candidates)}: rung ends "
            f"{list(plan.ends)} do not fit the fine-tuning runs (validation every "
            f"{eval_every} steps, {run_steps} steps in all; {bad} off that grid): give a budget "
            "whose plan's rung ends are multiples of finetune.eval_every within the runs "
            "(ccfv.bench.selection.fit_plan fits one)"
        )
    alive = list(candidates)
    steps = {c: 0 for c in candidates}
    rungs: list[dict[str, float | None]] = []
    for r, end in enumerate(plan.ends):
        values = {}
        for c in alive:
            curve = curves.get(c)
            values[c] = curve_value(curve, end)
            if curve is not None:
                steps[c] = int(end)
        rungs.append(values)
        keep = plan.counts[r + 1] if r + 1 < plan.rungs else 1
        alive = survivors(values, candidates, keep)
        if not alive:
            break
    return Replay(tuple(candidates), plan, tuple(rungs), alive[0] if alive else None, steps)


# ------------------------------------------------------------------------------------------------
# statistics of a pick


def pick_regret(
    picks: Sequence[int],
    truth: np.ndarray,
    replicates: np.ndarray,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Regret of one pick per seed (``picks``: model indices), in Dice (0-1, the units of the
    estimators' top-1 regret).

    Value: ``mean_s (max_i truth_i - truth_{picks_s})``, ``truth`` the models' mean test Dice
    over all seeds. Interval: bootstrap percentiles; replicate ``b`` draws the seeds' picks with
    replacement and takes the truth from ``replicates[b]`` (:func:`ccfv.reliability
    .replicate_truth`: test cases and the ground truth's seeds resampled), so it carries both
    the selection's seed-to-seed spread and the ground truth's noise. Returns ``{"value",
    "interval", "per_seed"}``."""
    p = np.asarray(picks, dtype=np.int64)
    t = np.asarray(truth, dtype=np.float64)
    per_seed = t.max() - t[p]
    reps = np.asarray(replicates, dtype=np.float64)
    rng = np.random.default_rng([int(seed), 18])
    draws = p[rng.integers(0, p.size, size=(reps.shape[0], p.size))]
    boot = reps.max(axis=1, keepdims=True) - np.take_along_axis(reps, draws, axis=1)
    return {
        "value": float(per_seed.mean()),
        "interval": percentile_interval(boot.mean(axis=1).tolist(), level),
        "per_seed": [float(v) for v in per_seed],
    }


def _order(scores: Mapping[str, float | None], models: Sequence[str]) -> list[str]:
    """Models with a finite score, highest first; ties in the bank's order (stable)."""
    finite = finite_scores(scores, models)
    return sorted(finite, key=lambda m: -finite[m])


def _hindsight(
    methods: Sequence[str], models: Mapping[str, Mapping], truth: Mapping[str, float]
) -> tuple[str, float] | None:
    """The method of ``methods`` with the highest weighted tau against ``truth`` on this
    target (>= 3 models with a finite score), and its weighted tau."""
    from ccfv.evaluation import weighted_tau

    best = None
    for method in methods:
        names = _order({m: models[m].get("scores", {}).get(method) for m in truth}, list(truth))
        if len(names) < 3:
            continue
        value = weighted_tau(
            [float(models[m]["scores"][method]) for m in names], [truth[m] for m in names]
        )
        if value is not None and (best is None or value > best[1]):
            best = (method, float(value))
    return best


def _best_validation(model: Mapping[str, Any], s: int) -> float:
    """Seed ``s``'s best validation Dice of a model: ``validation_dice`` (the run's
    ``best_dice``) where stored, else the largest point of its curve."""
    stored = model.get("validation_dice")
    if stored is not None and s < len(stored) and stored[s] is not None:
        return float(stored[s])
    return max(float(v) for _, v in model["validation_curve"][s])


def _missing_runs(models: Mapping[str, Mapping], n_seeds: int) -> list[str]:
    """``model (seed s)`` for every run the replay needs and the summary lacks: a test Dice,
    a validation curve and the run's seconds for every seed."""
    out = []
    for name, m in models.items():
        dice = list(m.get("dice") or [])
        curves = list(m.get("validation_curve") or [])
        seconds = list(m.get("finetune_seconds") or [])
        for s in range(n_seeds):
            if (
                s >= len(dice)
                or dice[s] is None
                or s >= len(curves)
                or not curves[s]
                or s >= len(seconds)
                or seconds[s] is None
            ):
                out.append(f"{name} (seed {s})")
    return out


def target_selection(
    entry: Mapping[str, Any],
    *,
    top: Sequence[int],
    budgets: Sequence[float],
    eval_every: int,
    n_seeds: int,
    methods: Sequence[str] = (),
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    method: str = DEFAULT_METHOD,
) -> dict:
    """Select replayed on one target, with the baselines.

    ``entry`` is the target's entry of the benchmark summary: ``models`` (per model ``dice``,
    ``validation_curve``, ``validation_dice`` and ``finetune_seconds`` per seed, ``scores``),
    ``finetune_steps`` and, where recorded, ``scoring_seconds``. For every K of ``top`` and
    budget of ``budgets`` (multiples of the target's fine-tuning steps: B = round(multiple x
    steps)), per seed the replayed pick (:func:`replay_halving` on :func:`fit_plan`'s plan);
    each row holds the picks, the regret (:func:`pick_regret`), the best-group hit rate over
    the seeds (:func:`ccfv.reliability.rate_interval`; the best group of
    :func:`ccfv.reliability.best_group` on the same replicates as the reliability section) and
    the compute. ``methods``: the candidates of the hindsight baseline. A target whose models
    lack a run for a seed is skipped (``skipped`` says which); without scores of ``method``
    only the fine-tune-everything baseline is computed (``no_ranking`` says why)."""
    from ccfv.reliability import TargetRuns, best_group, rate_interval, replicate_truth

    models = entry["models"]
    names = list(models)
    if not any("validation_curve" in m for m in models.values()):
        return {
            "skipped": "no validation curves in the runs (finetune.val_fraction 0 or "
            "finetune.eval_every 0): the replay reads a candidate's validation Dice at each "
            "rung's end"
        }
    missing = _missing_runs(models, n_seeds)
    if missing:
        return {
            "skipped": f"{len(missing)} run(s) missing or without a validation curve or test "
            f"Dice: {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}"
        }
    if len(names) < 2:
        return {"skipped": f"{len(names)} model(s): a selection needs at least 2"}
    run_steps = int(entry["finetune_steps"])
    runs = TargetRuns.from_models(models)  # complete: the models and replicates of the
    # reliability section (the same seed), so the same best group
    replicates = replicate_truth(runs, names, n_boot, seed)
    group = best_group(runs, names, replicates=replicates, level=level)["group"]
    truth = np.array([np.mean(models[m]["dice"][:n_seeds]) for m in names], dtype=np.float64)
    index = {m: i for i, m in enumerate(names)}
    seconds = np.array(
        [[float(models[m]["finetune_seconds"][s]) for s in range(n_seeds)] for m in names]
    )
    full_seconds = seconds.sum(axis=0)  # per seed: fine-tuning every model
    scoring = entry.get("scoring_seconds")
    scoring = float(scoring) if scoring is not None else None

    def row(
        label: str,
        picks: list[str],
        steps: list[dict[str, int]] | None,
        per_seed: bool = True,
        **extra,
    ) -> dict:
        reg = pick_regret([index[p] for p in picks], truth, replicates, seed, level)
        out: dict[str, Any] = {"method": label, **extra, "picks": picks, "regret": reg}
        # the hit rate's trials: one per seed where the pick depends on the seed (its runs'
        # curves); a training-free pick is the same on every seed, one trial per target
        out["hit_trials"] = [p in group for p in (picks if per_seed else picks[:1])]
        out["best_group_hit"] = rate_interval(out["hit_trials"], level)
        if steps is None:  # fine-tune everything
            out["compute"] = {"steps": len(names) * run_steps, "fraction_steps": 1.0}
            out["compute"] |= {"seconds": float(full_seconds.mean()), "fraction_seconds": 1.0}
        else:
            used = [sum(st.values()) for st in steps]
            sec = [
                sum(seconds[index[c], s] / run_steps * n for c, n in st.items())
                for s, st in enumerate(steps)
            ]
            # training-free without a recorded scoring time: unknown (~0), None
            known = scoring is not None or any(used)
            frac = [
                (sec[s] + (scoring or 0.0)) / float(full_seconds[s])
                for s in range(n_seeds)
                if known and full_seconds[s] > 0
            ]
            out["compute"] = {
                "steps": float(np.mean(used)),
                "fraction_steps": float(np.mean(used)) / (len(names) * run_steps),
                "seconds": float(np.mean(sec)),
                "fraction_seconds": float(np.mean(frac)) if len(frac) == n_seeds else None,
                "scoring_included": scoring is not None,
            }
        return out

    result: dict[str, Any] = {
        "models": len(names),
        "seeds": n_seeds,
        "finetune_steps": run_steps,
        "eval_every": eval_every,
        "best_group": group,
        "truth": {m: float(v) for m, v in zip(names, truth)},
        "full_finetune_seconds": float(full_seconds.mean()),
        "scoring_seconds": scoring,
        "rows": [],
        "not_run": [],
    }
    order = _order({m: models[m].get("scores", {}).get(method) for m in names}, names)
    everything = []
    for s in range(n_seeds):
        rank = {m: i for i, m in enumerate(order)}
        best = sorted(
            names, key=lambda m: (-_best_validation(models[m], s), rank.get(m, len(names)))
        )
        everything.append(best[0])
    if len(order) < 1:
        result["no_ranking"] = (
            f"no model has a finite `{method}` score (scoring not run, or `{method}` not among "
            "scoring.methods): the select rows and the training-free baselines need them"
        )
    else:
        for k in top:
            if k > len(order):
                result["not_run"].append(
                    {"top": k, "reason": f"K = {k} exceeds the {len(order)} ranked models"}
                )
                continue
            for multiple in budgets:
                budget = int(round(float(multiple) * run_steps))
                try:
                    plan, notes = fit_plan(k, budget, run_steps, eval_every)
                except UserError as error:
                    result["not_run"].append(
                        {"top": k, "budget": budget, "multiple": multiple, "reason": str(error)}
                    )
                    continue
                replays = [
                    replay_halving(
                        order[:k],
                        {m: models[m]["validation_curve"][s] for m in order[:k]},
                        plan,
                        run_steps,
                        eval_every,
                    )
                    for s in range(n_seeds)
                ]
                if any(r.pick is None for r in replays):
                    result["not_run"].append(
                        {
                            "top": k,
                            "budget": budget,
                            "multiple": multiple,
                            "reason": "every candidate failed",
                        }
                    )
                    continue
                result["rows"].append(
                    row(
                        SELECT,
                        [r.pick for r in replays],  # type: ignore[misc]
                        [r.steps for r in replays],
                        top=k,
                        budget=budget,
                        multiple=multiple,
                        plan={**plan.to_dict(), "notes": notes},
                        rungs=[[dict(v) for v in r.rungs] for r in replays],
                    )
                )
        result["rows"].append(
            row(
                TRAINING_FREE,
                [order[0]] * n_seeds,
                [{}] * n_seeds,
                per_seed=False,
                estimator=method,
            )
        )
        found = _hindsight(methods, models, dict(zip(names, truth)))
        if found is not None:
            best_method, tau = found
            top1 = _order({m: models[m].get("scores", {}).get(best_method) for m in names}, names)[
                0
            ]
            result["rows"].append(
                row(
                    HINDSIGHT,
                    [top1] * n_seeds,
                    [{}] * n_seeds,
                    per_seed=False,
                    estimator=best_method,
                    weighted_tau=tau,
                )
            )
    result["rows"].append(row(EVERYTHING, everything, None))
    return result


def selection_statistics(
    summary: Mapping[str, Any],
    select: Mapping[str, Any],
    *,
    eval_every: int,
    n_seeds: int | Mapping[str, int],
    reliable: Sequence[str],
    methods: Sequence[str] = (),
    n_boot: int = 1000,
) -> dict:
    """:func:`target_selection` for every target of the benchmark ``summary`` (``select``:
    the config's ``select`` key, ``top`` and ``budgets``), and the :func:`selection_headline`
    over the ``reliable`` targets (split-half Spearman >= 0.8). ``n_seeds``: the seeds of
    every target, or per target (the config's ``finetune_seeds``)."""
    per_target = {
        t: target_selection(
            entry,
            top=select["top"],
            budgets=select["budgets"],
            eval_every=eval_every,
            n_seeds=n_seeds if isinstance(n_seeds, int) else n_seeds[t],
            methods=methods,
            n_boot=n_boot,
        )
        for t, entry in summary["targets"].items()
    }
    return {
        "settings": {"top": list(select["top"]), "budgets": list(select["budgets"])},
        "estimator": DEFAULT_METHOD,
        "per_target": per_target,
        "headline": selection_headline(per_target, reliable),
    }


def _key(row: Mapping[str, Any]) -> str:
    """One label per row kind across targets: ``select K=3 B=1x``, or the baseline's name."""
    if row["method"] == SELECT:
        return f"select K={row['top']} B={row['multiple']:g}x"
    return str(row["method"])


def selection_headline(per_target: Mapping[str, Mapping], reliable: Sequence[str]) -> dict:
    """Across the ``reliable`` targets that have select rows, per row kind (each K and budget
    multiple, each baseline): the mean regret, the best-group hit rate pooled over the rows'
    trials on those targets (``hit_trials``: each seed's pick where it depends on the seed, one
    pick per target for the training-free rows; Wilson interval) and the mean compute
    fractions."""
    from ccfv.reliability import rate_interval

    used = [t for t in reliable if per_target.get(t, {}).get("rows")]
    table: dict[str, dict] = {}
    for t in used:
        for r in per_target[t]["rows"]:
            e = table.setdefault(
                _key(r), {"targets": [], "regret": [], "hits": [], "steps": [], "seconds": []}
            )
            e["targets"].append(t)
            e["regret"].append(r["regret"]["value"])
            e["hits"] += r["hit_trials"]
            e["steps"].append(r["compute"]["fraction_steps"])
            e["seconds"].append(r["compute"]["fraction_seconds"])
    out = {}
    for key, e in table.items():
        secs = [v for v in e["seconds"] if v is not None]
        out[key] = {
            "targets": e["targets"],
            "regret": float(np.mean(e["regret"])),
            "best_group_hit": rate_interval(e["hits"]),
            "fraction_steps": float(np.mean(e["steps"])),
            "fraction_seconds": float(np.mean(secs)) if len(secs) == len(e["seconds"]) else None,
        }
    return {"reliable": used, "rows": out}
