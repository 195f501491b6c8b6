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
- ``classes_<target>.png`` (multi-class targets): class consistency against class Dice.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import warnings
from pathlib import Path

import numpy as np
import yaml

from ccfv.bench.per_class import class_statistics, mean_class_dice, plot_class_consistency
from ccfv.errors import CCFVWarning, UserError
from ccfv.evaluation import CORRELATIONS, evaluate, plot_scores_vs_truth

STATS = (*CORRELATIONS, "top1_relative", "regret")


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
    sds = [float(np.std([d for d in m["dice"] if d is not None], ddof=1))
           for m in models.values() if sum(d is not None for d in m["dice"]) > 1]
    means = sorted(truth_of(models).values())
    gaps = np.diff(means)
    return {"mean_seed_sd": float(np.mean(sds)) if sds else None,
            "median_gap": float(np.median(gaps)) if gaps.size else None}


def target_statistics(models: dict) -> dict[str, dict]:
    """``{method: {statistic: value or None, n_models}}`` for one target."""
    truth = truth_of(models)
    scores = {name: m["scores"] for name, m in models.items()}
    methods = list(dict.fromkeys(k for m in scores.values() for k in m))
    out = {}
    for method in methods:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CCFVWarning)
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
            values = [t[method][stat] for t in per_target.values()
                      if method in t and t[method][stat] is not None]
            row[stat] = float(np.mean(values)) if values else None
        row["n_targets"] = sum(method in t and t[method]["weighted_tau"] is not None
                               for t in per_target.values())
        out[method] = row
    return out


def _fmt(value, digits=3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.{digits}f}"


def _table(per_target, avg, methods, stat, targets, multi=None) -> list[str]:
    """A method x target table of ``stat`` with the average (and the multi-class average)."""
    head = "| method | " + " | ".join(targets) + " | average |" + (
        " multi-class average |" if multi else "")
    lines = [head, "|" + "---|" * (len(targets) + 2 + bool(multi))]
    for method in methods:
        cells = [_fmt(per_target[t].get(method, {}).get(stat)) for t in targets]
        extra = f" {_fmt(multi.get(method, {}).get(stat))} |" if multi else ""
        lines.append(f"| `{method}` | " + " | ".join(cells) + f" | {_fmt(avg[method][stat])} |"
                     + extra)
    return lines


def _class_section(summary: dict, per_class: dict, targets: list[str]) -> list[str]:
    """The per-class analysis (:mod:`ccfv.bench.per_class`) as markdown."""
    from ccfv.bench.run import CLASS_CONSISTENCY

    md = ["", "## Per-class consistency against per-class Dice", "",
          "Class consistency score c_k = -mean over layers of log C_k (C_k: mean W2 between the "
          "cases' Gaussians of class k on the target-train cases; higher = more consistent), "
          "against the fine-tuned Dice of class k (test split, mean over seeds). Across models: "
          "weighted tau / Spearman over the bank, per class. Across classes: Spearman over the "
          "classes of one model, mean over the models (share of models where it is > 0).", "",
          "| target | class | " + " | ".join(f"`{v}` across models (wtau / rho)"
                                             for v in CLASS_CONSISTENCY) + " |",
          "|---|---|" + "---|" * len(CLASS_CONSISTENCY)]
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
                cells.append(f"across classes: rho {_fmt(row['mean_spearman'])} "
                             f"({_fmt(row['share_positive'], 2)} > 0)")
            md.append(f"| {t} | *all classes* | " + " | ".join(cells) + " |")
    return md


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _finetune_seconds(summary: dict) -> float:
    return float(sum(sum(m.get("finetune_seconds") or [])
                     for t in summary["targets"].values() for m in t["models"].values()))


def is_ablation(method: str) -> bool:
    return method.startswith("ccfv") and method not in ("ccfv", "ccfv-paper", "ccfv-official")


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
        per_arch = {a: target_statistics({n: m for n, m in models.items()
                                          if n.split("__")[0] == a})
                    for a in config["architectures"]}
        within[t] = average(per_arch)
    within_avg = average(within)
    multi_targets = [t for t in targets if len(summary["targets"][t].get("classes", [])) >= 2]
    multi = average({t: per_target[t] for t in multi_targets}) if multi_targets else None
    # the multi-class column only where it differs from the average over all targets
    multi_column = multi if multi_targets and len(multi_targets) < len(targets) else None
    from ccfv.bench.run import CLASS_CONSISTENCY

    per_class = {t: class_statistics(summary["targets"][t], CLASS_CONSISTENCY) for t in targets
                 if any(m.get("class_consistency") for m in
                        summary["targets"][t]["models"].values())}
    summary["statistics"] = {"per_target": per_target, "average": avg, "seed_spread": spreads,
                             "multiclass_targets": multi_targets, "average_multiclass": multi,
                             "within_architecture": {"per_target": within,
                                                     "average": within_avg},
                             "per_class": per_class}
    summary["commit"] = _commit()
    methods = list(avg)
    main = [m for m in methods if not is_ablation(m)]
    ablations = [m for m in methods if m.startswith("ccfv")]
    seeds = config["finetune"]["seeds"]
    n_models = {t: len(summary["targets"][t]["models"]) for t in targets}
    md = [f"# Transfer benchmark `{config['name']}`", "",
          f"Leave one task out over {len(targets)} target(s); per target a bank of "
          f"{', '.join(f'{n_models[t]}' for t in targets)} models "
          f"({', '.join(config['architectures'])} pre-trained on every other task, and from "
          f"scratch); ground truth: Dice on the target's test split after fine-tuning, "
          f"mean over {len(seeds)} seed(s) {seeds}. Estimators on "
          f"{config['scoring']['cases']} target-train cases. Commit `{summary['commit'][:12]}`. "
          f"Training time recorded by the stages: pre-training "
          f"{summary.get('pretrain_seconds', 0) / 60:.1f} min, fine-tuning "
          f"{_finetune_seconds(summary) / 60:.1f} min; this invocation (cached stages are read, "
          f"not redone) {summary.get('wall_seconds', 0) / 60:.1f} min. "
          "Larger is better for every statistic except regret."
          + (f" Multi-class targets (the multi-class average): {', '.join(multi_targets)}."
             if multi_targets else ""), "",
          "## Weighted Kendall tau (the paper's Table 1)", ""]
    md += _table(per_target, avg, main, "weighted_tau", targets, multi_column)
    md += ["", "## Pearson r", ""] + _table(per_target, avg, main, "pearson", targets, multi_column)
    md += ["", "## Spearman rho", ""] + _table(per_target, avg, main, "spearman", targets,
                                                multi_column)
    md += ["", "## Top-1 regret (best Dice - Dice of the model ranked first)", ""]
    md += _table(per_target, avg, main, "regret", targets, multi_column)
    md += ["", "## Within one architecture (weighted tau among the models of one "
           "architecture, averaged over the architectures)", "",
           "Ranking the sources of one architecture, without comparing architectures:", ""]
    md += _table(within, within_avg, [m for m in main if m in within_avg], "weighted_tau",
                 targets)
    md += ["", "## CC-FV variants and ablations (weighted tau; the paper's Table 2)", ""]
    md += _table(per_target, avg, ablations, "weighted_tau", targets, multi_column)
    md += _class_section(summary, per_class, targets)
    md += ["", "## Ground truth and its noise", "",
           "| target | models | mean seed sd of Dice | median gap between adjacent models |",
           "|---|---|---|---|"]
    for t in targets:
        md.append(f"| {t} | {n_models[t]} | {_fmt(spreads[t]['mean_seed_sd'], 4)} | "
                  f"{_fmt(spreads[t]['median_gap'], 4)} |")
    for t in targets:
        models = summary["targets"][t]["models"]
        classes = summary["targets"][t].get("classes", [])
        by_class = classes if len(classes) >= 2 else []
        md += ["", f"### {t}", "", "| model | Dice per seed | mean |"
               + "".join(f" {c} |" for c in by_class), "|---|---|---|" + "---|" * len(by_class)]
        for name, m in sorted(models.items(), key=lambda kv: -truth_of(models).get(kv[0], -1)):
            dice_k = mean_class_dice(m)
            md.append(f"| {name} | {', '.join(_fmt(d, 4) for d in m['dice'])} | "
                      f"{_fmt(truth_of(models).get(name), 4)} |"
                      + "".join(f" {_fmt(dice_k.get(c), 4)} |" for c in by_class))
    paths = {}
    for t in targets:
        models = summary["targets"][t]["models"]
        scores = {name: m["scores"] for name, m in models.items()}
        usable = [m for m in main if per_target[t].get(m, {}).get("n_models", 0) >= 3]
        if usable:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CCFVWarning)
                paths[f"fig2_{t}"] = plot_scores_vs_truth(scores, truth_of(models),
                                                          out / f"fig2_{t}.png", methods=usable)
            md += ["", f"![{t}](fig2_{t}.png)"]
        if t in multi_targets and t in per_class:
            paths[f"classes_{t}"] = plot_class_consistency(
                t, summary["targets"][t], CLASS_CONSISTENCY, out / f"classes_{t}.png")
            md += ["", f"![per-class consistency, {t}](classes_{t}.png)"]
    (out / "tables.md").write_text("\n".join(md) + "\n")
    (out / "config.yaml").write_text(yaml.safe_dump(config.raw, sort_keys=False))
    tmp = out / f".summary.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(summary, indent=1, default=str))
    os.replace(tmp, out / "summary.json")
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
    ``tracks`` records each run's config, commit and training times.
    """
    out = Path(out)
    merged = {"targets": {}, "tracks": {},
              "statistics": {"per_target": {}, "per_track": {}, "headline": {}}}
    within_per_target = {}
    columns = []
    for folder in results:
        path = Path(folder) / "summary.json"
        if not path.is_file():
            raise UserError(f"{path} does not exist: run `ccfv bench --config ... --out "
                            f"{folder}` first")
        run = json.loads(path.read_text())
        track = run["config"]["name"]
        if track in merged["tracks"]:
            raise UserError(f"{path}: track {track!r} is given twice")
        clash = set(run["targets"]) & set(merged["targets"])
        if clash:
            raise UserError(f"{path}: targets {sorted(clash)} are already in another track")
        stats = run["statistics"]
        merged["tracks"][track] = {k: run.get(k) for k in ("config", "commit", "wall_seconds",
                                                             "pretrain_seconds")}
        merged["tracks"][track]["finetune_seconds"] = _finetune_seconds(run)
        for t, target in run["targets"].items():
            merged["targets"][t] = {**target, "track": track}
            merged["statistics"]["per_target"][t] = stats["per_target"][t]
            within_per_target[t] = stats["within_architecture"]["per_target"][t]
        merged["statistics"]["per_track"][track] = {
            "targets": list(run["targets"]), "average": stats["average"],
            "multiclass_targets": stats.get("multiclass_targets", []),
            "average_multiclass": stats.get("average_multiclass"),
            "within_architecture": stats["within_architecture"]["average"]}
        columns.append((f"{track}: average over {len(run['targets'])} target(s)",
                        stats["average"]))
        if stats.get("average_multiclass") and len(stats["multiclass_targets"]) < len(
                run["targets"]):
            columns.append((f"{track}: multi-class average "
                            f"({', '.join(stats['multiclass_targets'])})",
                            stats["average_multiclass"]))
    if len(merged["tracks"]) > 1:
        everything = merged["statistics"]["per_target"]
        merged["statistics"]["average_all"] = average(everything)
        columns.append((f"all {len(everything)} targets", merged["statistics"]["average_all"]))
        merged["statistics"]["within_architecture_all"] = average(within_per_target)
        columns.append((f"all {len(everything)} targets, within one architecture",
                        merged["statistics"]["within_architecture_all"]))
    methods = list(dict.fromkeys(m for _, avg in columns for m in avg))
    headline = merged["statistics"]["headline"]
    for method in methods:
        headline[method] = {name: avg.get(method, {}).get("weighted_tau")
                            for name, avg in columns}
    md = ["# Benchmark headline: weighted Kendall tau", "",
          "| method | " + " | ".join(name for name, _ in columns) + " |",
          "|---|" + "---|" * len(columns)]
    for method in methods:
        md.append(f"| `{method}` | " + " | ".join(_fmt(v) for v in headline[method].values())
                  + " |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "headline.md").write_text("\n".join(md) + "\n")
    tmp = out / f".summary.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(merged, indent=1, default=str))
    os.replace(tmp, out / "summary.json")
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
                ax.plot(curve[:, 0], curve[:, 1], color=colour, alpha=0.35 + 0.65 * (j + 1)
                        / len(budgets), lw=1.2, label=model if j == len(budgets) - 1 else None)
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
