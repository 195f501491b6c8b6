"""The select rows of the benchmark's results (:mod:`ccfv.bench.selection` computes them): a
markdown section for ``tables.md`` and the plot ``select_regret_vs_compute.png``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ccfv.bench.selection import EVERYTHING, HINDSIGHT, SELECT, TRAINING_FREE
from ccfv.files import write_png

__all__ = ["plot_selection", "selection_section"]


def _num(value, digits: int = 3) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _with_interval(value, interval, digits: int = 3) -> str:
    if value is None:
        return "–"
    text = _num(value, digits)
    return text + (f" [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]" if interval else "")


def _plan_text(row: Mapping[str, Any]) -> str:
    if row["method"] != SELECT:
        return "–"
    plan = row["plan"]
    steps = [plan["base_steps"] * 2**r for r in range(len(plan["counts"]))]
    text = " → ".join(f"{n}×{s}" for n, s in zip(plan["counts"], steps))
    text += f" ({plan['total_steps']} of {row['budget']} steps)"
    if plan["notes"]:
        text += "; " + "; ".join(plan["notes"])
    return text


def _method_text(row: Mapping[str, Any]) -> str:
    if row["method"] in (TRAINING_FREE, HINDSIGHT):
        extra = f" (`{row['estimator']}`"
        if "weighted_tau" in row:
            extra += f", weighted tau {row['weighted_tau']:.2f}"
        return row["method"] + extra + ")"
    return str(row["method"])


def _compute_text(row: Mapping[str, Any]) -> tuple[str, str]:
    c = row["compute"]
    steps = _num(c["fraction_steps"], 3)
    if c["fraction_seconds"] is None:
        seconds = "~0 (scoring time not recorded)"
    else:
        seconds = _num(c["fraction_seconds"], 3)
        if row["method"] == SELECT and not c.get("scoring_included", True):
            seconds += " (fine-tuning only)"
    return steps, seconds


def selection_section(stats: Mapping[str, Any]) -> list[str]:
    """The select rows as markdown: how they are made, the headline over the reliable targets,
    a table per target (see docs/explanation/benchmark-statistics.md, "Select as a method")."""
    md = [
        "",
        "## `ccfv select` replayed on the fine-tuning runs",
        "",
        f"Per target and seed: the top K models by `{stats['estimator']}`, successive halving "
        "on their runs' validation Dice at each rung's end (the curve point at that step; "
        "survivors by validation Dice, ties by the ranking), the pick the last survivor. The "
        "learning-rate schedule is the full fine-tune's (a live `ccfv select --top K --budget "
        "<plan steps> --schedule-steps <fine-tuning steps>` runs the same plan and schedule, "
        "on its own patches and validation). Budgets B "
        f"are multiples {stats['settings']['budgets']} of the target's fine-tuning steps; a "
        "plan's base is rounded down to the curves' grid and its last rung ends by the run's "
        "last step (the plan column shows the plan used). Regret: the best model's mean test "
        "Dice minus the pick's (ground-truth means over all seeds), averaged over the seeds, "
        "95% bootstrap interval (the seeds' picks and the ground truth's test cases and seeds "
        "resampled). Best-group hit rate: share of seeds whose pick is in the best group "
        "(Wilson interval; a training-free pick is the same on every seed: one trial per "
        "target). Compute: fine-tuning steps of all rungs / (models x fine-tuning "
        "steps); in seconds, from each run's seconds per step, with the scoring time where "
        "recorded. Baselines: the training-free top-1 (of the default estimator; of the "
        "target's best estimator by weighted tau, chosen in hindsight) and fine-tuning every "
        "model (per seed, the one of best validation Dice).",
        "",
    ]
    head = stats["headline"]
    if head["reliable"]:
        md += [
            f"### Across the reliable targets ({', '.join(head['reliable'])})",
            "",
            "| method | targets | mean regret | best-group hit rate (all seeds) | "
            "compute (steps) | compute (seconds) |",
            "|---|---|---|---|---|---|",
        ]
        for key, e in head["rows"].items():
            hit = e["best_group_hit"]
            md.append(
                f"| {key} | {len(e['targets'])} | {_num(e['regret'])} | "
                f"{_with_interval(hit['rate'], hit['interval'], 2)} | "
                f"{_num(e['fraction_steps'])} | {_num(e['fraction_seconds'])} |"
            )
        md.append("")
    else:
        md += ["No reliable target has select rows: no headline.", ""]
    for t, r in stats["per_target"].items():
        md += [f"### {t}", ""]
        if "skipped" in r:
            md += [f"Skipped: {r['skipped']}.", ""]
            continue
        md += [
            f"{r['models']} models, {r['seeds']} seeds, {r['finetune_steps']} fine-tuning steps "
            f"(validation every {r['eval_every']}); fine-tuning the bank: "
            f"{r['full_finetune_seconds']:.0f} s per seed; scoring: "
            + (
                f"{r['scoring_seconds']:.0f} s (every scoring method, one feature pass)"
                if r["scoring_seconds"] is not None
                else "not recorded"
            )
            + f". Best group: {', '.join(r['best_group'])}.",
            "",
        ]
        if "no_ranking" in r:
            md += [f"No select rows: {r['no_ranking']}.", ""]
        md += [
            "| method | K | B | plan | regret [95% CI] | best-group hit rate [95% CI] | "
            "compute (steps) | compute (seconds) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in r["rows"]:
            hit = row["best_group_hit"]
            steps, seconds = _compute_text(row)
            is_select = row["method"] == SELECT
            md.append(
                f"| {_method_text(row)} | {row['top'] if is_select else '–'} | "
                f"{row['budget'] if is_select else '–'} | "
                f"{_plan_text(row)} | "
                f"{_with_interval(row['regret']['value'], row['regret']['interval'])} | "
                f"{_with_interval(hit['rate'], hit['interval'], 2)} | {steps} | {seconds} |"
            )
        for miss in r["not_run"]:
            what = f"K = {miss['top']}" + (f", B = {miss['budget']}" if "budget" in miss else "")
            md.append(f"\nNot run: {what}: {miss['reason']}")
        md.append("")
    md += ["![regret against compute](select_regret_vs_compute.png)"]
    return md


def plot_selection(stats: Mapping[str, Any], path: str | Path) -> Path | None:
    """Regret against compute (log x): the fraction of the seconds of fine-tuning every model,
    the scoring time included (the ranking select starts from, and all the training-free top-1
    costs); where a target's seconds are not recorded, the fraction of fine-tuning steps (the
    training-free top-1 at the left edge, marked ~0). One panel per target with rows: one
    marker per (K, budget) of select (colour: K, shape: budget), the training-free top-1 and
    fine-tuning everything (1.0); bars: the regret's 95% interval. None without rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {t: r for t, r in stats["per_target"].items() if r.get("rows")}
    if not panels:
        return None

    def x_of(compute: Mapping[str, Any]) -> float | None:
        seconds = compute["fraction_seconds"]
        return seconds if seconds else (compute["fraction_steps"] or None)

    xs = [x for r in panels.values() for row in r["rows"] if (x := x_of(row["compute"]))]
    in_seconds = all(
        row["compute"]["fraction_seconds"] for r in panels.values() for row in r["rows"]
    )
    floor = 10 ** math.floor(math.log10(min(xs) / 3)) if xs else 1e-3
    ks = sorted({row["top"] for r in panels.values() for row in r["rows"] if "top" in row})
    multiples = sorted(
        {row["multiple"] for r in panels.values() for row in r["rows"] if "multiple" in row}
    )
    cmap = plt.get_cmap("viridis")
    colour = {k: cmap(i / max(1, len(ks) - 1) * 0.85) for i, k in enumerate(ks)}
    shape = dict(zip(multiples, "os^Dv"))
    n = len(panels)
    ncols = min(2, n)
    nrows = math.ceil(n / ncols)
    legend_width = 3.4  # inches beside the panels, so that the legend hides no marker
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(5.4 * ncols + legend_width, 4.0 * nrows), squeeze=False
    )
    for ax, (t, r) in zip(axes.flat, panels.items()):
        for row in r["rows"]:
            reg = row["regret"]
            c = row["compute"]
            y = reg["value"]
            iv = reg["interval"] or [y, y]
            yerr = [[max(0.0, y - iv[0])], [max(0.0, iv[1] - y)]]
            x = x_of(c) or floor
            if row["method"] == SELECT:
                style = dict(marker=shape.get(row["multiple"], "o"), color=colour[row["top"]])
                label = f"select K={row['top']}, B={row['multiple']:g}x"
            elif row["method"] == EVERYTHING:
                x, style, label = 1.0, dict(marker="s", color="black"), EVERYTHING
            else:
                hind = row["method"] == HINDSIGHT
                style = dict(marker="X", color="tab:orange" if hind else "tab:red")
                # one legend serves every panel: the hindsight estimator (each target's own)
                # is written beside its marker
                label = "training-free top-1" + (
                    ", best estimator in hindsight (named)" if hind else f": {row['estimator']}"
                )
                label += "" if x_of(c) else " (x: ~0, not recorded)"
                if hind:
                    ax.annotate(
                        row["estimator"],
                        (x, y),
                        xytext=(6, -3),
                        textcoords="offset points",
                        fontsize=6.5,
                    )
            ax.errorbar([x], [y], yerr=yerr, ls="", ms=7, capsize=2, label=label, **style)
        ax.set_xscale("log")
        ax.set_xlabel(
            "compute / fine-tuning every model (seconds, scoring incl.)"
            if in_seconds
            else "compute / fine-tuning every model (steps)"
        )
        ax.set_ylabel("regret (Dice), 95% interval")
        ax.set_title(t, fontsize=9)
        ax.grid(alpha=0.3, which="both")
    legend: dict[str, Any] = {}
    for ax in axes.flat[:n]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    handles, labels = list(legend.values()), list(legend)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("ccfv select replayed on the fine-tuning runs", fontsize=10)
    right = 5.4 * ncols / (5.4 * ncols + legend_width)
    fig.tight_layout(rect=(0, 0, right, 1))
    fig.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(right, 0.5))
    return write_png(fig, path)
