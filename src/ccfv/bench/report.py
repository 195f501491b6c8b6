"""The benchmark's results: statistics per target and averaged, tables, plots, summary.json.

Written to ``out``:

- ``summary.json``: the raw numbers every table is computed from,
  ``{"targets": {TASK: {"models": {MODEL: {"dice": [per seed], "scores": {METHOD: value}}}}}}``
  plus ``statistics`` (per target and averaged), ``config``, ``commit`` and ``wall_seconds``;
- ``tables.md``: Table 1 (weighted tau and Pearson per target, main methods), Spearman and
  top-1 regret, each with the average over all targets and over the multi-class targets, the
  ablation table (every CC-FV variant), the per-class analysis (:mod:`ccfv.bench.per_class`),
  the ground truth with its seed spread and per-class Dice;
- ``fig2_<target>.png``: standardised score against fine-tuned Dice, one panel per method;
- ``classes_<target>.png`` (multi-class targets): class consistency against class Dice;
- the select rows (:mod:`ccfv.bench.selection`: ``ccfv select`` replayed on the fine-tuning
  runs, config key ``select``): ``summary.json["select"]``, a section of ``tables.md`` and
  ``select_regret_vs_compute.png`` (:mod:`ccfv.bench.selection_report`).
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ccfv.bench.per_class import (
    CLASS_CONSISTENCY,
    class_statistics,
    mean_class_dice,
    plot_class_consistency,
)
from ccfv.bench.selection_report import plot_selection, selection_section
from ccfv.errors import UserError, collect_ccfv_warnings
from ccfv.estimators.registry import DEFAULT_METHOD
from ccfv.evaluation import CORRELATIONS, evaluate, plot_scores_vs_truth
from ccfv.files import atomic_write, write_png

STATS = (*CORRELATIONS, "top1_relative", "regret")
#: Bootstrap replicates of the ground truth behind every interval of the reliability section
#: (the config's ``statistics.bootstrap``; 100 under ``--quick``).
BOOTSTRAP = 1000
#: The estimator every other main method is compared with, pairwise (if it was run).
REFERENCE = "ccfv"


def reliability_statistics(summary: dict, main: list[str], n_boot: int = BOOTSTRAP) -> dict:
    """Per target :func:`ccfv.reliability.target_report` (its replicates dropped), the
    :func:`ccfv.reliability.headline`, and the paired comparisons of :data:`REFERENCE` with
    every other main method (per target: the difference in weighted tau and Spearman with
    its interval; across the reliable targets, and across all: sign and permutation tests)."""
    from ccfv.reliability import (
        TargetRuns,
        across_targets,
        headline,
        paired_difference,
        target_report,
    )

    reports, runs_of = {}, {}
    for t, entry in summary["targets"].items():
        models = entry["models"]
        runs = TargetRuns.from_models(models)
        if len(runs.usable()) < 3:
            continue
        scores = {name: m.get("scores", {}) for name, m in models.items()}
        with collect_ccfv_warnings():
            reports[t] = target_report(runs, scores, n_boot=n_boot)
        runs_of[t] = (runs, scores)
    head = headline(reports)
    paired = {}
    if any(REFERENCE in r["estimators"] for r in reports.values()):
        for other in (m for m in main if m != REFERENCE):
            row: dict[str, Any] = {"per_target": {}}
            for t, (runs, scores) in runs_of.items():
                a = {m: scores[m].get(REFERENCE) for m in scores}
                b = {m: scores[m].get(other) for m in scores}
                row["per_target"][t] = {
                    stat: paired_difference(a, b, runs, stat, replicates=reports[t]["replicates"])
                    for stat in ("weighted_tau", "spearman")
                }
            for name, subset in (("reliable", head["reliable"]), ("all", list(runs_of))):
                row[f"across_{name}"] = {
                    stat: across_targets([row["per_target"][t][stat]["difference"] for t in subset])
                    for stat in ("weighted_tau", "spearman")
                }
            paired[other] = row
    for r in reports.values():
        r.pop("replicates", None)
    return {
        "per_target": reports,
        "headline": head,
        "n_boot": n_boot,
        "paired": {"reference": REFERENCE, "versus": paired},
    }


def _iv(entry: dict | None, digits: int = 2) -> str:
    """``value [lo, hi]`` of a statistic with its interval."""
    if not entry or entry.get("value") is None:
        return "–"
    iv = entry.get("interval")
    text = f"{entry['value']:.{digits}f}"
    return text + (f" [{iv[0]:.{digits}f}, {iv[1]:.{digits}f}]" if iv else "")


def reliability_section(rel: dict, main: list[str]) -> list[str]:
    """The reliability statistics as markdown (see docs/explanation/benchmark-statistics.md)."""
    reports, head = rel["per_target"], rel["headline"]
    md = [
        "",
        "## Reliability of the ground truth",
        "",
        "Split-half reliability: with >= 4 seeds, every balanced split of the seeds into two "
        "halves, the correlation between the halves' mean Dice, averaged (with 2-3 seeds: "
        "one seed against the mean of the others). Noise ceiling: what a perfect estimator "
        "would expect against this ground truth (parametric bootstrap from each model's mean "
        "and seed sd). Best group: the models whose difference to the best is not "
        f"significant (95% bootstrap interval over test cases and seeds, "
        f"{rel.get('n_boot', BOOTSTRAP)} "
        "replicates).",
        "",
        "| target | models | seeds | test cases | method | split-half wtau | split-half "
        "Spearman | split-half Kendall | Dice range | seed sd | median gap | noise ceiling "
        "wtau | noise ceiling Spearman | best group |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t, r in reports.items():
        rel_t, noise, ceiling = r["reliability"], r["noise"], r["noise_ceiling"] or {}
        rng = noise["dice_range"]
        md.append(
            f"| {t} | {r['n_models']} | {r['n_seeds']} | {r['n_test_cases'] or '–'} | "
            f"{rel_t.get('method') or '–'} | {_fmt(rel_t.get('weighted_tau'), 2)} | "
            f"{_fmt(rel_t.get('spearman'), 2)} | {_fmt(rel_t.get('kendall_tau'), 2)} | "
            f"{f'{rng[0]:.2f}-{rng[1]:.2f}' if rng else '–'} | "
            f"{_fmt(noise['mean_seed_sd'], 3)} | {_fmt(noise['median_gap'], 3)} | "
            f"{_fmt((ceiling.get('weighted_tau') or {}).get('mean'), 2)} | "
            f"{_fmt((ceiling.get('spearman') or {}).get('mean'), 2)} | "
            f"{len(r['best_group']['group'])}: {', '.join(r['best_group']['group'][:4])}"
            f"{' ...' if len(r['best_group']['group']) > 4 else ''} |"
        )
    reliable = head["reliable"]
    md += [
        "",
        f"## Headline: targets with split-half Spearman >= {head['threshold']}",
        "",
        f"Reliable targets: {', '.join(reliable) if reliable else 'none'}. Ground truth too "
        "noisy (left out of the headline): "
        + (
            ", ".join(
                f"{t} (split-half Spearman {_fmt(v['reliability'].get('spearman'), 2)}"
                f", seed sd {_fmt(v['noise']['mean_seed_sd'], 3)}, median gap "
                f"{_fmt(v['noise']['median_gap'], 3)})"
                for t, v in head["too_noisy"].items()
            )
            or "none"
        )
        + ".",
        "",
    ]
    if reliable:
        md += [
            "| method | targets | weighted tau | Spearman | Pearson | top-1 regret | "
            "best-group hit rate | top-3 recall |",
            "|---|---|---|---|---|---|---|---|",
        ]

        def rate(x):
            return (
                f"{x['rate']:.2f} [{x['interval'][0]:.2f}, {x['interval'][1]:.2f}]"
                if x["rate"] is not None
                else "–"
            )

        for m in main:
            e = head["estimators"].get(m)
            if e:
                md.append(
                    f"| `{m}` | {e['n_targets']} | {_fmt(e['weighted_tau'])} | "
                    f"{_fmt(e['spearman'])} | {_fmt(e['pearson'])} | "
                    f"{_fmt(e['regret'])} | {rate(e['best_group_hit'])} | "
                    f"{rate(e['top3_recall'])} |"
                )
    targets = list(reports)
    for stat, title in (
        ("weighted_tau", "Weighted tau"),
        ("spearman", "Spearman"),
        ("regret", "Top-1 regret (Dice)"),
    ):
        md += [
            "",
            f"### {title} per target, with 95% intervals (test cases and seeds resampled)",
            "",
            "| method | " + " | ".join(targets) + " |",
            "|---|" + "---|" * len(targets),
        ]
        for m in main:
            md.append(
                f"| `{m}` | "
                + " | ".join(_iv(reports[t]["estimators"].get(m, {}).get(stat)) for t in targets)
                + " |"
            )
    md += [
        "",
        "### Best-group hit (top-1 in the best group) / top-3 recall per target",
        "",
        "| method | " + " | ".join(targets) + " |",
        "|---|" + "---|" * len(targets),
    ]
    for m in main:
        cells = []
        for t in targets:
            e = reports[t]["estimators"].get(m, {})
            cells.append(
                "–"
                if "best_group_hit" not in e
                else f"{'yes' if e['best_group_hit'] else 'no'} / "
                f"{'yes' if e['top3_recall'] else 'no'}"
            )
        md.append(f"| `{m}` | " + " | ".join(cells) + " |")
    versus = rel["paired"]["versus"]
    if versus:
        ref = rel["paired"]["reference"]
        md += [
            "",
            f"### Paired: `{ref}` minus each method (weighted tau; 95% interval over "
            "the same replicates; across targets: sign test / permutation test p)",
            "",
            "| method | " + " | ".join(targets) + " | reliable targets: mean, +/-, p "
            "(sign, perm.) | all targets: mean, +/-, p (sign, perm.) |",
            "|---|" + "---|" * (len(targets) + 2),
        ]
        for other, row in versus.items():
            cells = []
            for t in targets:
                d = row["per_target"][t]["weighted_tau"]
                cells.append(_iv({"value": d["difference"], "interval": d["interval"]}))

            def across(a):
                if not a["n"]:
                    return "–"
                return (
                    f"{_fmt(a['mean'])}, {a['positive']}/{a['negative']}, "
                    f"{_fmt(a['sign_test_p'], 2)} / {_fmt(a['permutation_p'], 2)}"
                )

            md.append(
                f"| `{other}` | " + " | ".join(cells) + " | "
                f"{across(row['across_reliable']['weighted_tau'])} | "
                f"{across(row['across_all']['weighted_tau'])} |"
            )
    return md


def plot_fig2(
    target: str, models: dict, report: dict, methods: list[str], path: str | Path
) -> Path:
    """Fig. 2 of the paper with the noise drawn in: per method, the standardised score
    against each model's mean fine-tuned Dice with its 95% interval (test cases and seeds
    resampled); marker = architecture, colour = source task, black edge = the best group, red
    ring = the model the score ranks first. One legend for the figure instead of a label per
    point (v1's labels overlapped)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    truth, intervals = report["truth"], report["truth_interval"]
    group = set(report["best_group"]["group"])
    names = list(truth)
    archs = list(dict.fromkeys(n.split("__")[0] for n in names))
    sources = list(dict.fromkeys(n.split("__", 1)[1] for n in names))
    markers = dict(zip(archs, "osD^vP*X"))
    cmap = plt.get_cmap("tab10")
    colours = {s: cmap(i % 10) for i, s in enumerate(sources)}
    n = len(methods)
    ncols = min(3, max(1, n))
    nrows = math.ceil(n / ncols) if n else 1
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.8 * nrows + 1.0), squeeze=False)
    for ax, method in zip(axes.flat, methods):
        usable = [
            m
            for m in names
            if models[m].get("scores", {}).get(method) is not None
            and math.isfinite(models[m]["scores"][method])
        ]
        if len(usable) < 3:
            ax.axis("off")
            continue
        x = np.array([models[m]["scores"][method] for m in usable], dtype=float)
        sd = x.std()
        z = (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)
        pick = usable[int(np.argmax(x))]
        for zi, m in zip(z, usable):
            y = truth[m]
            iv = intervals.get(m) or [y, y]
            arch, source = m.split("__", 1)
            ax.errorbar(
                zi,
                y,
                yerr=[[y - iv[0]], [iv[1] - y]],
                fmt="none",
                ecolor=colours[source],
                alpha=0.6,
                lw=1,
                zorder=2,
            )
            ax.scatter(
                [zi],
                [y],
                marker=markers[arch],
                s=44,
                color=colours[source],
                edgecolors="black" if m in group else "none",
                linewidths=1.2,
                zorder=3,
            )
            if m == pick:
                ax.scatter([zi], [y], s=170, facecolors="none", edgecolors="red", lw=1.4, zorder=4)
        e = report["estimators"].get(method, {})
        ax.set_title(f"{method}\nweighted tau {_iv(e.get('weighted_tau'))}", fontsize=8.5)
        ax.set_xlabel("standardised score", fontsize=8)
        ax.set_ylabel("fine-tuned Dice (95% interval)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles = [Line2D([], [], marker=markers[a], ls="", color="grey", label=a) for a in archs]
    handles += [Line2D([], [], marker="o", ls="", color=colours[s], label=s) for s in sources]
    handles += [
        Line2D([], [], marker="o", ls="", mfc="white", mec="black", label="best group"),
        Line2D([], [], marker="o", ls="", mfc="none", mec="red", ms=10, label="ranked first"),
    ]
    fig.legend(
        handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=7.5, frameon=False
    )
    fig.suptitle(f"{target}: score vs fine-tuned Dice", fontsize=10)
    fig.tight_layout(rect=(0, 0.9 / (3.8 * nrows + 1.0) + 0.03, 1, 0.97))
    return write_png(fig, path)


def truth_of(models: dict) -> dict[str, float]:
    """Mean fine-tuned Dice over seeds, per model (models without any Dice left out)."""
    out = {}
    for name, m in models.items():
        values = [d for d in m["dice"] if d is not None]
        if values:
            out[name] = float(np.mean(values))
    return out


def seed_spread(models: dict) -> dict:
    """How noisy the ground truth is next to the gaps between models.

    ``mean_seed_sd``: mean over models of the standard deviation of Dice over seeds;
    ``median_gap``: median difference in mean Dice between models adjacent in the Dice order.
    """
    sds = [
        float(np.std([d for d in m["dice"] if d is not None], ddof=1))
        for m in models.values()
        if sum(d is not None for d in m["dice"]) > 1
    ]
    means = sorted(truth_of(models).values())
    gaps = np.diff(means)
    return {
        "mean_seed_sd": float(np.mean(sds)) if sds else None,
        "median_gap": float(np.median(gaps)) if gaps.size else None,
    }


def target_statistics(models: dict) -> dict[str, dict]:
    """``{method: {statistic: value or None, n_models}}`` for one target."""
    truth = truth_of(models)
    scores = {name: m["scores"] for name, m in models.items()}
    methods = list(dict.fromkeys(k for m in scores.values() for k in m))
    out = {}
    for method in methods:
        try:
            with collect_ccfv_warnings():
                (row,) = evaluate(scores, truth, methods=[method])
        except UserError as error:
            out[method] = {s: None for s in STATS} | {"n_models": 0, "note": str(error)}
            continue
        out[method] = {s: row[s] for s in STATS} | {"n_models": row["n_models"]}
    return out


def average(per_target: dict[str, dict[str, dict]]) -> dict[str, dict]:
    """Mean of each statistic over the targets where it is defined (and how many)."""
    methods = list(dict.fromkeys(m for t in per_target.values() for m in t))
    out = {}
    for method in methods:
        row = {}
        for stat in STATS:
            values = [
                t[method][stat]
                for t in per_target.values()
                if method in t and t[method][stat] is not None
            ]
            row[stat] = float(np.mean(values)) if values else None
        row["n_targets"] = sum(
            method in t and t[method]["weighted_tau"] is not None for t in per_target.values()
        )
        out[method] = row
    return out


def _fmt(value, digits=3) -> str:
    return (
        "–"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.{digits}f}"
    )


def _table(per_target, avg, methods, stat, targets, multi=None) -> list[str]:
    """A method x target table of ``stat`` with the average (and the multi-class average)."""
    head = (
        "| method | "
        + " | ".join(targets)
        + " | average |"
        + (" multi-class average |" if multi else "")
    )
    lines = [head, "|" + "---|" * (len(targets) + 2 + bool(multi))]
    for method in methods:
        cells = [_fmt(per_target[t].get(method, {}).get(stat)) for t in targets]
        extra = f" {_fmt(multi.get(method, {}).get(stat))} |" if multi else ""
        lines.append(
            f"| `{method}` | " + " | ".join(cells) + f" | {_fmt(avg[method][stat])} |" + extra
        )
    return lines


def _class_section(summary: dict, per_class: dict, targets: list[str]) -> list[str]:
    """The per-class analysis (:mod:`ccfv.bench.per_class`) as markdown."""
    md = [
        "",
        "## Per-class consistency against per-class Dice",
        "",
        "Class consistency score c_k = -mean over layers of log C_k (C_k: mean W2 between the "
        "cases' Gaussians of class k on the target-train cases; higher = more consistent), "
        "against the fine-tuned Dice of class k (test split, mean over seeds). Across models: "
        "weighted tau / Spearman over the bank, per class. Across classes: Spearman over the "
        "classes of one model, mean over the models (share of models where it is > 0).",
        "",
        "| target | class | "
        + " | ".join(f"`{v}` across models (wtau / rho)" for v in CLASS_CONSISTENCY)
        + " |",
        "|---|---|" + "---|" * len(CLASS_CONSISTENCY),
    ]
    for t in targets:
        stats = per_class.get(t)
        if not stats:
            continue
        for cls in summary["targets"][t].get("classes", []):
            cells = []
            for v in CLASS_CONSISTENCY:
                row = stats[v]["across_models"].get(cls, {})
                cells.append(f"{_fmt(row.get('weighted_tau'))} / {_fmt(row.get('spearman'))}")
            md.append(f"| {t} | {cls} | " + " | ".join(cells) + " |")
        if len(summary["targets"][t].get("classes", [])) >= 2:
            cells = []
            for v in CLASS_CONSISTENCY:
                row = stats[v]["across_classes"]
                cells.append(
                    f"across classes: rho {_fmt(row['mean_spearman'])} "
                    f"({_fmt(row['share_positive'], 2)} > 0)"
                )
            md.append(f"| {t} | *all classes* | " + " | ".join(cells) + " |")
    return md


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _finetune_seconds(summary: dict) -> float:
    return float(
        sum(
            sum(m.get("finetune_seconds") or [])
            for t in summary["targets"].values()
            for m in t["models"].values()
        )
    )


#: The options of the variant study: a CC-FV method with one of them switches a part of the
#: method off or swaps it, and is reported among the ablations, not as a method of its own.
ABLATION_OPTIONS = ("variety_only", "consistency_only", "layers", "distance", "normalize")


def is_ablation(method: str) -> bool:
    """A CC-FV variant of the variant study (``ccfv-paper[layers=last]``) or under the
    proportional sampling budget (``ccfv@proportional``), reported apart; the CC-FV estimators
    (``ccfv``, ``ccfv-pca[whiten=true]``, ...) are methods like the baselines."""
    options = method.partition("[")[2]
    return method.startswith("ccfv") and (
        "@" in method or any(f"{o}=" in options for o in ABLATION_OPTIONS)
    )


def _seeds_text(seeds: dict[str, list[int]], default: list[int]) -> str:
    """``N seed(s) [..]``, and where a target has seeds of its own, theirs per target."""
    common = next(iter(seeds.values())) if len(set(map(tuple, seeds.values()))) == 1 else default
    text = f"{len(common)} seed(s) {common}"
    own = [f"{t}: {len(s)} seed(s) {s}" for t, s in seeds.items() if s != common]
    return text + (f" ({'; '.join(own)})" if own else "")


def _selection(summary: dict, config, rel: dict, main: list[str]) -> dict:
    """The replay of ``ccfv select`` on the fine-tuning runs (:mod:`ccfv.bench.selection`),
    with the config's ``select`` key (its defaults where a config has none), each target on
    its own seeds."""
    from ccfv.bench.config import DEFAULTS
    from ccfv.bench.selection import selection_statistics

    finetune = config["finetune"]
    return selection_statistics(
        summary,
        config.raw.get("select") or DEFAULTS["select"],
        eval_every=int(finetune.get("eval_every") or 0),
        n_seeds={t: len(config.finetune_seeds(t)) for t in summary["targets"]},
        reliable=rel["headline"]["reliable"],
        methods=main,
        n_boot=config["statistics"]["bootstrap"],
    )


def write_results(summary: dict, config, out: str | Path) -> dict[str, Path]:
    """Compute the statistics into ``summary`` and write every file (see module doc)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    targets = list(summary["targets"])
    per_target = {t: target_statistics(summary["targets"][t]["models"]) for t in targets}
    avg = average(per_target)
    spreads = {t: seed_spread(summary["targets"][t]["models"]) for t in targets}
    # the same statistics among the models of ONE architecture (averaged over architectures):
    # separates "ranks the sources" from "ranks the architectures"
    within = {}
    for t in targets:
        models = summary["targets"][t]["models"]
        per_arch = {
            a: target_statistics({n: m for n, m in models.items() if n.split("__")[0] == a})
            for a in config["architectures"]
        }
        within[t] = average(per_arch)
    within_avg = average(within)
    multi_targets = [t for t in targets if len(summary["targets"][t].get("classes", [])) >= 2]
    multi = average({t: per_target[t] for t in multi_targets}) if multi_targets else None
    # the multi-class column only where it differs from the average over all targets
    multi_column = multi if multi_targets and len(multi_targets) < len(targets) else None
    per_class = {
        t: class_statistics(summary["targets"][t], CLASS_CONSISTENCY)
        for t in targets
        if any(m.get("class_consistency") for m in summary["targets"][t]["models"].values())
    }
    summary["statistics"] = {
        "per_target": per_target,
        "average": avg,
        "seed_spread": spreads,
        "multiclass_targets": multi_targets,
        "average_multiclass": multi,
        "within_architecture": {"per_target": within, "average": within_avg},
        "per_class": per_class,
    }
    summary["commit"] = _commit()
    # the package's default estimator, so that anyone can recompute the headline for it
    summary["default_method"] = DEFAULT_METHOD
    methods = list(avg)
    main = [m for m in methods if not is_ablation(m)]
    rel = reliability_statistics(summary, main, n_boot=config["statistics"]["bootstrap"])
    summary["statistics"]["reliability"] = rel
    ablations = [m for m in methods if m.startswith("ccfv")]
    seeds = {t: config.finetune_seeds(t) for t in targets}
    n_models = {t: len(summary["targets"][t]["models"]) for t in targets}
    md = [
        f"# Transfer benchmark `{config['name']}`",
        "",
        f"Leave one task out over {len(targets)} target(s); per target a bank of "
        f"{', '.join(f'{n_models[t]}' for t in targets)} models "
        f"({', '.join(config['architectures'])} pre-trained on every other task, and from "
        f"scratch); ground truth: Dice on the target's test split after fine-tuning, "
        f"mean over {_seeds_text(seeds, config['finetune']['seeds'])}. Estimators on "
        f"{config['scoring']['cases']} target-train cases. Commit `{summary['commit'][:12]}`. "
        f"Training time recorded by the stages: pre-training "
        f"{summary.get('pretrain_seconds', 0) / 60:.1f} min, fine-tuning "
        f"{_finetune_seconds(summary) / 60:.1f} min; this invocation (cached stages are read, "
        f"not redone) {summary.get('wall_seconds', 0) / 60:.1f} min. "
        "Larger is better for every statistic except regret."
        + (
            f" Multi-class targets (the multi-class average): {', '.join(multi_targets)}."
            if multi_targets
            else ""
        ),
        "",
        "## Weighted Kendall tau (the paper's Table 1)",
        "",
    ]
    if summary.get("interim"):
        part = summary["interim"]
        md[3:3] = [
            f"**Interim report**: {len(part['targets'])} of the config's {len(part['of'])} "
            f"targets ({', '.join(part['targets'])}; `ccfv bench --targets`); the others "
            f"({', '.join(t for t in part['of'] if t not in part['targets'])}) are not in it.",
            "",
        ]
    for t in targets:
        for name, errors in summary["targets"][t].get("finetune_failures", {}).items():
            md[3:3] = [
                f"**Left out of {t}**: `{name}`, whose fine-tuning failed ({'; '.join(errors)}).",
                "",
            ]
    md += _table(per_target, avg, main, "weighted_tau", targets, multi_column)
    md += ["", "## Pearson r", ""] + _table(per_target, avg, main, "pearson", targets, multi_column)
    md += ["", "## Spearman rho", ""] + _table(
        per_target, avg, main, "spearman", targets, multi_column
    )
    md += ["", "## Top-1 regret (best Dice - Dice of the model ranked first)", ""]
    md += _table(per_target, avg, main, "regret", targets, multi_column)
    md += [
        "",
        "## Within one architecture (weighted tau among the models of one "
        "architecture, averaged over the architectures)",
        "",
        "Ranking the sources of one architecture, without comparing architectures:",
        "",
    ]
    md += _table(within, within_avg, [m for m in main if m in within_avg], "weighted_tau", targets)
    md += ["", "## CC-FV variants and ablations (weighted tau; the paper's Table 2)", ""]
    md += _table(per_target, avg, ablations, "weighted_tau", targets, multi_column)
    md += reliability_section(rel, main)
    summary["select"] = _selection(summary, config, rel, main)
    md += selection_section(summary["select"])
    if summary.get("sources"):
        md += [
            "",
            "## Source models: validation Dice on their own source task",
            "",
            "A held-out share of each source task's cases (`pretrain.val_fraction`), the "
            "checkpoint of best validation Dice kept (a source model that learned little is "
            "not a pre-trained model).",
            "",
            "| source model | validation Dice | steps | last loss |",
            "|---|---|---|---|",
        ]
        for name, src in summary["sources"].items():
            md.append(
                f"| {name} | {_fmt(src.get('source_val_dice'), 4)} | "
                f"{src.get('steps') or '–'} | {_fmt(src.get('loss_last'), 3)} |"
            )
    md += _class_section(summary, per_class, targets)
    md += [
        "",
        "## Ground truth and its noise",
        "",
        "| target | models | mean seed sd of Dice | median gap between adjacent models |",
        "|---|---|---|---|",
    ]
    for t in targets:
        md.append(
            f"| {t} | {n_models[t]} | {_fmt(spreads[t]['mean_seed_sd'], 4)} | "
            f"{_fmt(spreads[t]['median_gap'], 4)} |"
        )
    for t in targets:
        models = summary["targets"][t]["models"]
        classes = summary["targets"][t].get("classes", [])
        by_class = classes if len(classes) >= 2 else []
        md += [
            "",
            f"### {t}",
            "",
            "| model | Dice per seed | mean |" + "".join(f" {c} |" for c in by_class),
            "|---|---|---|" + "---|" * len(by_class),
        ]
        for name, m in sorted(models.items(), key=lambda kv: -truth_of(models).get(kv[0], -1)):
            dice_k = mean_class_dice(m)
            md.append(
                f"| {name} | {', '.join(_fmt(d, 4) for d in m['dice'])} | "
                f"{_fmt(truth_of(models).get(name), 4)} |"
                + "".join(f" {_fmt(dice_k.get(c), 4)} |" for c in by_class)
            )
    paths = {}
    for t in targets:
        models = summary["targets"][t]["models"]
        scores = {name: m["scores"] for name, m in models.items()}
        usable = [m for m in main if per_target[t].get(m, {}).get("n_models", 0) >= 3]
        if usable and t in rel["per_target"]:
            paths[f"fig2_{t}"] = plot_fig2(
                t, models, rel["per_target"][t], usable, out / f"fig2_{t}.png"
            )
            md += ["", f"![{t}](fig2_{t}.png)"]
        elif usable:
            with collect_ccfv_warnings():
                paths[f"fig2_{t}"] = plot_scores_vs_truth(
                    scores, truth_of(models), out / f"fig2_{t}.png", methods=usable
                )
            md += ["", f"![{t}](fig2_{t}.png)"]
        if t in multi_targets and t in per_class:
            paths[f"classes_{t}"] = plot_class_consistency(
                t, summary["targets"][t], CLASS_CONSISTENCY, out / f"classes_{t}.png"
            )
            md += ["", f"![per-class consistency, {t}](classes_{t}.png)"]
    selection_plot = plot_selection(summary["select"], out / "select_regret_vs_compute.png")
    if selection_plot is not None:
        paths["select_regret_vs_compute"] = selection_plot
    (out / "tables.md").write_text("\n".join(md) + "\n")
    (out / "config.yaml").write_text(yaml.safe_dump(config.raw, sort_keys=False))
    atomic_write(out / "summary.json", json.dumps(summary, indent=1, default=str))
    paths.update(summary=out / "summary.json", tables=out / "tables.md")
    return paths


def combine_results(results: list[str | Path], out: str | Path) -> dict:
    """Merge the ``summary.json`` of several benchmark runs (tracks, e.g. the 2D and the 3D
    benchmark) into ``out/summary.json`` and a headline table ``out/headline.md``.

    The merged summary keeps the per-run schema: ``targets`` holds every target of every
    track (each tagged with its ``track``), ``statistics.per_target`` their statistics;
    ``statistics.per_track`` holds each track's ``average`` and ``average_multiclass``,
    ``statistics.average_all`` the average over every target of every track (with several
    tracks) and ``statistics.within_architecture_all`` the same among the models of one
    architecture, and ``statistics.headline`` the weighted tau of each method in each average.
    ``tracks`` records each run's config, commit and training times. A track whose summary
    is interim (``ccfv bench --targets``) makes the merge interim too (``interim``: the merged
    targets, and every track's config targets), so the default rule does not decide on it.
    """
    out = Path(out)
    merged: dict[str, Any] = {
        "default_method": DEFAULT_METHOD,
        "targets": {},
        "tracks": {},
        "statistics": {"per_target": {}, "per_track": {}, "headline": {}},
    }
    within_per_target = {}
    reliability: dict = {}  # per target, from the tracks that have it (protocol v2 reports)
    n_boots: set = set()  # their bootstrap replicates (statistics.bootstrap of each track)
    columns = []
    of_config: list[str] = []  # every track's config targets (an interim track: all of them)
    for folder in results:
        path = Path(folder) / "summary.json"
        if not path.is_file():
            raise UserError(
                f"{path} does not exist: run `ccfv bench --config ... --out {folder}` first"
            )
        run = json.loads(path.read_text())
        track = run["config"]["name"]
        if track in merged["tracks"]:
            raise UserError(f"{path}: track {track!r} is given twice")
        clash = set(run["targets"]) & set(merged["targets"])
        if clash:
            raise UserError(f"{path}: targets {sorted(clash)} are already in another track")
        stats = run["statistics"]
        merged["tracks"][track] = {
            k: run.get(k) for k in ("config", "commit", "wall_seconds", "pretrain_seconds")
        }
        merged["tracks"][track]["finetune_seconds"] = _finetune_seconds(run)
        if run.get("interim"):
            merged["tracks"][track]["interim"] = run["interim"]
        of_config += (run.get("interim") or {}).get("of", list(run["targets"]))
        for t, target in run["targets"].items():
            merged["targets"][t] = {**target, "track": track}
            merged["statistics"]["per_target"][t] = stats["per_target"][t]
            if t in stats.get("reliability", {}).get("per_target", {}):
                reliability[t] = stats["reliability"]["per_target"][t]
                n_boots.add(stats["reliability"].get("n_boot", BOOTSTRAP))
            within_per_target[t] = stats["within_architecture"]["per_target"][t]
        merged["statistics"]["per_track"][track] = {
            "targets": list(run["targets"]),
            "average": stats["average"],
            "multiclass_targets": stats.get("multiclass_targets", []),
            "average_multiclass": stats.get("average_multiclass"),
            "within_architecture": stats["within_architecture"]["average"],
        }
        columns.append((f"{track}: average over {len(run['targets'])} target(s)", stats["average"]))
        if stats.get("average_multiclass") and len(stats["multiclass_targets"]) < len(
            run["targets"]
        ):
            columns.append(
                (
                    f"{track}: multi-class average ({', '.join(stats['multiclass_targets'])})",
                    stats["average_multiclass"],
                )
            )
    if len(merged["tracks"]) > 1:
        everything = merged["statistics"]["per_target"]
        merged["statistics"]["average_all"] = average(everything)
        columns.append((f"all {len(everything)} targets", merged["statistics"]["average_all"]))
        merged["statistics"]["within_architecture_all"] = average(within_per_target)
        columns.append(
            (
                f"all {len(everything)} targets, within one architecture",
                merged["statistics"]["within_architecture_all"],
            )
        )
    methods = list(dict.fromkeys(m for _, avg in columns for m in avg))
    headline = merged["statistics"]["headline"]
    for method in methods:
        headline[method] = {name: avg.get(method, {}).get("weighted_tau") for name, avg in columns}
    md = [
        "# Benchmark headline: weighted Kendall tau",
        "",
        "| method | " + " | ".join(name for name, _ in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for method in methods:
        md.append(
            f"| `{method}` | " + " | ".join(_fmt(v) for v in headline[method].values()) + " |"
        )
    if reliability:
        from ccfv.reliability import headline as reliable_headline

        rel = {
            "per_target": reliability,
            "headline": reliable_headline(reliability),
            "n_boot": "/".join(str(n) for n in sorted(n_boots)),
            "paired": {"reference": REFERENCE, "versus": {}},
        }
        merged["statistics"]["reliability"] = rel
        md += reliability_section(rel, [m for m in methods if not is_ablation(m)])
    if any("interim" in t for t in merged["tracks"].values()):
        # a track of some of its config's targets (``--targets``): the merge is interim too
        merged["interim"] = {"targets": list(merged["targets"]), "of": of_config}
        md[1:1] = [
            "",
            f"**Interim report**: {len(merged['targets'])} of the tracks' {len(of_config)} "
            "targets (a track run with `ccfv bench --targets`).",
        ]
    out.mkdir(parents=True, exist_ok=True)
    (out / "headline.md").write_text("\n".join(md) + "\n")
    atomic_write(out / "summary.json", json.dumps(merged, indent=1, default=str))
    return merged


def plot_convergence(target: str, entry: dict, path: str | Path) -> Path:
    """Validation Dice against fine-tuning steps, one line per model and budget (the
    convergence study of :func:`ccfv.bench.run.run_convergence`), each budget's test Dice
    marked at its end."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (model, budgets) in enumerate(sorted(entry.items())):
        colour = colours[i % len(colours)]
        for j, (steps, run) in enumerate(sorted(budgets.items(), key=lambda kv: int(kv[0]))):
            if run.get("curve"):
                curve = np.asarray(run["curve"], dtype=float)
                ax.plot(
                    curve[:, 0],
                    curve[:, 1],
                    color=colour,
                    alpha=0.35 + 0.65 * (j + 1) / len(budgets),
                    lw=1.2,
                    label=model if j == len(budgets) - 1 else None,
                )
            if run.get("test_dice") is not None:
                ax.plot([int(steps)], [run["test_dice"]], "x", color=colour, ms=7)
    ax.set_xlabel("fine-tuning steps (one run per budget; x: test Dice at the end)")
    ax.set_ylabel("validation Dice")
    ax.set_title(f"convergence study: {target}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
