"""The pre-registered rule that picks the package's default estimator (issue 16, item 3).

``docs/explanation/choosing-the-default.md`` states the rule in words; this script is the same
rule as code, applied to a benchmark ``summary.json`` (``targets[T]["models"][M]``: ``dice``
per seed, ``dice_per_case`` in protocol v2, ``scores`` per method)::

    python benchmarks/apply_default_rule.py --summary RESULTS/summary.json --out DIR

It writes ``DIR/default_rule.json`` and ``DIR/default_rule.md`` and prints the decision. The
constants below (candidates, baselines, threshold, replicates, seed, level, tie margin) are
part of the rule: changing them after a v2 score exists breaks the pre-registration.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ccfv.errors import CCFVWarning, UserError

#: The incumbent: the default stays this unless a candidate qualifies.
INCUMBENT = "ccfv"
#: CC-FV-family estimators that may become the default (exact registry strings).
CANDIDATES = [
    "ccfv",
    "ccfv-paper",
    "ccfv-official",
    "ccfv-pca",
    "ccfv-pca[whiten=true]",
    "ccfv-null",
    "ccfv-hscore",
]
#: The baselines a candidate must beat.
BASELINES = [
    "logme",
    "transrate",
    "leep",
    "gbc",
    "hscore",
    "reg-hscore",
    "nleep",
    "nce",
    "parc",
    "sfda",
]
#: Reliable targets: split-half Spearman of the fine-tuned Dice >= this (issue 13).
THRESHOLD = 0.8
#: Bootstrap replicates of the ground truth and their seed (as the benchmark report).
N_BOOT = 1000
SEED = 0
#: Across-target test level (two-sided sign-flip permutation test of the mean difference).
LEVEL = 0.05
#: Fewest reliable targets with which that test can reach LEVEL (exact: p >= 2 / 2**n).
MIN_TARGETS_FOR_TEST = 6
#: Mean weighted taus closer than this count as tied.
TIE = 0.01


def _finite(value) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def within_architecture_tau(
    scores: Mapping[str, float | None], truth: Mapping[str, float]
) -> float | None:
    """Mean over architectures (the model name's part before ``__``) with >= 3 scored models
    of the weighted tau between the scores and the mean Dice among that architecture's
    models; None when no architecture has 3."""
    from ccfv.evaluation import weighted_tau

    archs: dict[str, list[str]] = {}
    for m in truth:
        if _finite(scores.get(m)):
            archs.setdefault(m.split("__")[0], []).append(m)
    taus: list[float] = []
    for ms in archs.values():
        if len(ms) >= 3:
            tau = weighted_tau([float(scores[m] or 0.0) for m in ms], [truth[m] for m in ms])
            if tau is not None and math.isfinite(tau):
                taus.append(tau)
    return float(np.mean(taus)) if taus else None


def target_tables(
    summary: Mapping, methods: Sequence[str], n_boot: int = N_BOOT, seed: int = SEED
) -> dict:
    """Per target: the reliability, each method's statistics (``estimator_statistics``), its
    within-architecture tau, the runs and the replicates (for paired comparisons)."""
    from ccfv.reliability import TargetRuns, target_report

    out = {}
    for t, entry in summary["targets"].items():
        models = entry["models"]
        runs = TargetRuns.from_models(models)
        if len(runs.usable()) < 3:
            continue
        scores = {
            name: {k: v for k, v in m.get("scores", {}).items() if k in methods}
            for name, m in models.items()
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CCFVWarning)
            report = target_report(runs, scores, n_boot=n_boot, seed=seed)
        report["within"] = {
            method: within_architecture_tau(
                {m: scores[m].get(method) for m in scores}, report["truth"]
            )
            for method in methods
        }
        out[t] = {"report": report, "runs": runs, "scores": scores}
    return out


def _wtau(table: dict, method: str) -> float | None:
    entry = table["report"]["estimators"].get(method, {})
    value = (entry.get("weighted_tau") or {}).get("value")
    return value if _finite(value) else None


def _mean(values) -> float | None:
    values = [v for v in values if _finite(v)]
    return float(np.mean(values)) if values else None


def apply_rule(
    summary: Mapping,
    candidates: Sequence[str] = tuple(CANDIDATES),
    baselines: Sequence[str] = tuple(BASELINES),
    threshold: float = THRESHOLD,
    n_boot: int = N_BOOT,
    seed: int = SEED,
) -> dict:
    """The decision: ``default`` (the method chosen), ``qualified``, per candidate the checks,
    the best baseline, the reliable targets and every figure the README reports. On an interim
    summary (``summary["interim"]``, written by ``ccfv bench --targets``) the same figures,
    with ``interim`` set and ``default`` the incumbent: only a complete run decides."""
    result = _decide(summary, candidates, baselines, threshold, n_boot, seed)
    if summary.get("interim"):
        result["interim"] = dict(summary["interim"], rule_would_pick=result["default"])
        result["decision"] = f"interim, not applied (a partial run): {result['decision']}"
        result["default"] = INCUMBENT
    return result


def pick_best_baseline(figures: dict, baselines: Sequence[str]) -> str:
    """Step 2 of the rule: b*, the baseline with the highest mean weighted tau over the
    reliable targets; baselines within ``TIE`` of it are tied and the tie goes to the higher
    mean within-architecture tau, then the name.

    ``figures`` maps a method to ``{"weighted_tau": ..., "within_architecture_tau": ...}``
    (either may be None); only the ``baselines`` with a weighted tau take part.
    """
    scored = [b for b in baselines if _finite(figures.get(b, {}).get("weighted_tau"))]
    if not scored:
        raise UserError(f"no baseline has a weighted tau (baselines: {', '.join(baselines)})")
    best_wtau = max(figures[b]["weighted_tau"] for b in scored)
    tied = [b for b in scored if figures[b]["weighted_tau"] >= best_wtau - TIE]
    return min(tied, key=lambda b: (-_within(figures, b), b))


def pick_default(figures: dict, qualified: Sequence[str]) -> str:
    """Step 4 of the rule: among the ``qualified`` candidates, the highest mean weighted tau;
    candidates within ``TIE`` of it are tied and the tie goes to the higher mean
    within-architecture tau, then the name, except that the incumbent, if tied, stays unless
    a tied candidate has a strictly higher within-architecture tau.

    ``figures`` as for :func:`pick_best_baseline`; every qualified candidate has a weighted tau.
    """
    if not qualified:
        raise UserError("no qualified candidate: the default stays " + INCUMBENT)
    top = max(figures[c]["weighted_tau"] for c in qualified)
    tied = [c for c in qualified if figures[c]["weighted_tau"] >= top - TIE]
    if INCUMBENT in tied and len(tied) > 1:
        others = [
            c for c in tied if c != INCUMBENT and _within(figures, c) > _within(figures, INCUMBENT)
        ]
        tied = others or [INCUMBENT]
    return min(tied, key=lambda c: (-_within(figures, c), c))


def _within(figures: dict, method: str) -> float:
    """The method's mean within-architecture tau, -inf where missing (0.0 is a value): the
    key that breaks ties in steps 2 and 4."""
    value = figures[method].get("within_architecture_tau")
    return value if _finite(value) else -math.inf


def _decide(summary, candidates, baselines, threshold, n_boot, seed) -> dict:
    from ccfv.reliability import across_targets, paired_difference

    methods = list(dict.fromkeys([*candidates, *baselines]))
    tables = target_tables(summary, methods, n_boot, seed)
    reliable = [
        t
        for t, tab in tables.items()
        if ((tab["report"]["reliability"] or {}).get("spearman") or -2) >= threshold
    ]
    result: dict = {
        "threshold": threshold,
        "reliable": reliable,
        "n_boot": n_boot,
        "seed": seed,
        "incumbent": INCUMBENT,
        "targets": {t: {"reliability": tables[t]["report"]["reliability"]} for t in tables},
    }
    if not reliable:
        result.update(
            default=INCUMBENT,
            qualified=[],
            best_baseline=None,
            candidates={},
            decision="no reliable target: the default stays " + INCUMBENT,
        )
        return result

    def summary_of(method: str) -> dict:
        per = {t: _wtau(tables[t], method) for t in reliable}
        stats = [tables[t]["report"]["estimators"].get(method, {}) for t in reliable]
        top3 = [s.get("top3_recall") for s in stats if "top3_recall" in s]
        return {
            "scored_on_all": all(v is not None for v in per.values()),
            "weighted_tau": _mean(per.values()),
            "weighted_tau_per_target": {
                t: tables[t]["report"]["estimators"].get(method, {}).get("weighted_tau")
                for t in reliable
            },
            "within_architecture_tau": _mean(
                tables[t]["report"]["within"].get(method) for t in reliable
            ),
            "top3_recall": float(np.mean(top3)) if top3 else None,
        }

    figures = {m: summary_of(m) for m in methods}
    scored = [b for b in baselines if figures[b]["scored_on_all"]]
    if not scored:
        raise UserError(
            "no baseline is scored on every reliable target: the rule compares "
            "with the best baseline; run the benchmark with the baselines"
        )

    best = pick_best_baseline(figures, scored)
    result["best_baseline"] = best
    result["figures"] = figures
    checks = {}
    for c in candidates:
        f = figures[c]
        row: dict = {"scored_on_all": f["scored_on_all"]}
        if not f["scored_on_all"]:
            row["qualifies"] = False
            checks[c] = row
            continue
        paired = {}
        for t in reliable:
            tab = tables[t]
            a = {m: tab["scores"][m].get(c) for m in tab["scores"]}
            b = {m: tab["scores"][m].get(best) for m in tab["scores"]}
            paired[t] = paired_difference(
                a, b, tab["runs"], "weighted_tau", replicates=tab["report"]["replicates"]
            )
        diffs = [paired[t]["difference"] for t in reliable]
        across = across_targets(diffs, seed=seed)
        row["paired"] = paired
        row["across"] = across
        row["beats_mean"] = f["weighted_tau"] > figures[best]["weighted_tau"]
        row["no_interval_below_zero"] = all(
            paired[t]["interval"] is not None and paired[t]["interval"][1] >= 0 for t in reliable
        )
        if len(reliable) >= MIN_TARGETS_FOR_TEST:
            row["test"] = f"sign-flip permutation p < {LEVEL} and mean difference > 0"
            row["passes_test"] = bool(
                across["permutation_p"] is not None
                and across["permutation_p"] < LEVEL
                and (across["mean"] or 0) > 0
            )
        else:
            row["test"] = (
                f"{len(reliable)} reliable target(s) < {MIN_TARGETS_FOR_TEST}: the "
                "difference must be > 0 on every reliable target"
            )
            row["passes_test"] = all(_finite(d) and d > 0 for d in diffs)
        row["qualifies"] = bool(
            row["beats_mean"] and row["no_interval_below_zero"] and row["passes_test"]
        )
        checks[c] = row
    result["candidates"] = checks
    qualified = [c for c in candidates if checks[c]["qualifies"]]
    result["qualified"] = qualified
    if not qualified:
        result["default"] = INCUMBENT
        result["decision"] = (
            f"no candidate beats the best baseline {best}: the default stays {INCUMBENT}"
        )
        return result
    chosen = pick_default(figures, qualified)
    result["default"] = chosen
    result["decision"] = (
        f"{chosen} qualifies (beats {best}) with the highest mean weighted "
        f"tau over the reliable targets: it is the default"
    )
    return result


def _f(x, digits=3) -> str:
    return "-" if not _finite(x) else f"{x:.{digits}f}"


def markdown(result: dict) -> str:
    lines = [
        "# The default by the pre-registered rule",
        "",
        f"Reliable targets (split-half Spearman >= {result['threshold']}): "
        f"{', '.join(result['reliable']) or 'none'}",
        "",
        f"**Decision: {result['decision']}.**",
        "",
    ]
    if result.get("interim"):
        lines += [
            f"Interim: this summary holds {', '.join(result['interim']['targets'])} of the "
            f"config's targets {', '.join(result['interim']['of'])}; by the rule, only the "
            "complete run changes the default.",
            "",
        ]
    if not result.get("figures"):
        return "\n".join(lines) + "\n"
    best = result["best_baseline"]
    lines += [
        f"Best baseline: `{best}`.",
        "",
        "| method | mean weighted tau | within-architecture tau | top-3 recall | "
        "d vs best baseline (mean) | positive targets | permutation p | qualifies |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m, f in result["figures"].items():
        c = result["candidates"].get(m, {})
        across = c.get("across", {})
        lines.append(
            f"| `{m}` | {_f(f['weighted_tau'])} | {_f(f['within_architecture_tau'])} | "
            f"{_f(f['top3_recall'], 2)} | {_f(across.get('mean'))} | "
            f"{across.get('positive', '-')}/{across.get('n', '-')} | "
            f"{_f(across.get('permutation_p'))} | "
            f"{'yes' if c.get('qualifies') else ('no' if c else 'baseline')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--summary", type=Path, required=True, help="benchmark summary.json")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    args = parser.parse_args(argv)
    try:
        if not args.summary.is_file():
            raise UserError(
                f"--summary {args.summary}: no such file; pass the summary.json "
                "that ccfv bench wrote"
            )
        summary = json.loads(args.summary.read_text())
        if "targets" not in summary:
            raise UserError(
                f"--summary {args.summary}: no 'targets' key; is it a ccfv bench summary.json?"
            )
        result = apply_rule(summary)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "default_rule.json").write_text(json.dumps(result, indent=1, default=str))
    (args.out / "default_rule.md").write_text(markdown(result))
    print(result["decision"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
