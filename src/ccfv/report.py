"""Write a ranking: scores.csv, scores.json, report.md with a dot plot (PNG), and a table."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from ccfv.files import atomic_write


def ranking_table(
    scores: dict[str, dict[str, float | None]], methods: list[str], bootstrap: dict | None = None
) -> str:
    """A plain-text table of models ranked by the first method (best first).

    With ``bootstrap`` (:meth:`ccfv.bootstrap.BootstrapResult.to_dict`), two more columns give
    each model's interval of the first method over resampled cases and the fraction of
    replicates in which it ranks first, and a last line says how often the top model stays top.
    """
    order = sorted(scores, key=lambda m: -_value(scores[m].get(methods[0])))
    width = max(5, *(len(m) for m in scores))
    # every column at least as wide as its header and its cells, two spaces between columns,
    # so that long method names (ccfv[distance=kl; s=2]) never run into each other
    widths = [
        max(len(m), 10, *(len(_fmt(scores[model].get(m))) for model in scores)) for m in methods
    ]
    head = f"{'rank':>4}  {'model':<{width}}" + "".join(
        f"  {m:>{w}}" for m, w in zip(methods, widths)
    )
    if bootstrap:
        interval = f"{round(100 * bootstrap['level'])}% interval"
        head += f"  {interval:>20}  {'P(first)':>8}"
    lines = [head, "-" * len(head)]
    rank = 0
    for model in order:
        cells = "".join(f"  {_fmt(scores[model].get(m)):>{w}}" for m, w in zip(methods, widths))
        if bootstrap:
            iv = bootstrap["models"].get(model) or {}
            interval = "" if iv.get("low") is None else f"[{iv['low']:.4f}, {iv['high']:.4f}]"
            first = "" if iv.get("p_first") is None else f"{iv['p_first']:.2f}"
            cells += f"  {interval:>20}  {first:>8}"
        # a model without a score of the ranking method has no rank (all failed: no rank 1)
        ranked = math.isfinite(_value(scores[model].get(methods[0])))
        rank += ranked
        lines.append(f"{str(rank) if ranked else '-':>4}  {model:<{width}}{cells}")
    if bootstrap:
        lines.append(bootstrap_sentence(bootstrap))
    return "\n".join(lines)


def bootstrap_sentence(bootstrap: dict) -> str:
    """One line: how often the top model stays top over resampled target cases."""
    if bootstrap.get("p_top_stays") is None:
        return (
            f"bootstrap ({bootstrap['n_boot']} resamples of the target cases): no replicate "
            "could score every model, so no rank-first probability"
        )
    return (
        f"bootstrap over target cases ({bootstrap['method']}, {bootstrap['n_valid']} of "
        f"{bootstrap['n_boot']} resamples scored every model): the top model "
        f"'{bootstrap['top']}' stays first in {100 * bootstrap['p_top_stays']:.0f}% of them"
    )


def dropped_lines(dropped: dict) -> list[str]:
    """report.md lines on the planned voxels each model's preprocessing cropped away
    (``details["dropped"]``, :func:`ccfv.extract.dropped_voxels` per model); none if no drops."""
    if not any(d["dropped"] for d in dropped.values()):
        return []
    lines = ["## Planned voxels outside the preprocessed image (dropped)", ""]
    for model, d in dropped.items():
        worst = sorted(
            ((n, case, k) for case, per in d["per_case"].items() for k, n in per.items()),
            reverse=True,
        )[:3]
        where = "; ".join(f"case {case} class {k}: {n}" for n, case, k in worst)
        lines.append(
            f"- `{model}`: {d['dropped']} of {d['planned']} "
            f"({100 * d['rate']:.2f}%)" + (f", most in {where}" if where else "")
        )
    return lines + ["", "Per case and class: `details.dropped` in scores.json.", ""]


def _value(x):
    return -math.inf if x is None or (isinstance(x, float) and math.isnan(x)) else x


def _fmt(x):
    return "failed" if x is None else f"{x:.4f}"


def plot_scores(
    path: Path,
    scores: dict,
    methods: list[str],
    order: list[str],
    bootstrap: dict | None,
    title: str,
) -> None:
    """``scores.png``: one dot per model at its score of the first method, with its bootstrap
    interval as a line, on one axis shared by all models (not bars from 0: CC-FV's scores are
    usually negative, and a bar from 0 would make the worst model the longest). A model without
    a score is listed with "failed" instead of a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.45 * len(order) + 1.2))
    ys = list(range(len(order)))[::-1]
    values = [_value(scores[m].get(methods[0])) for m in order]
    finite = [v for v in values if math.isfinite(v)]
    for model, y, v in zip(order, ys, values):
        if not math.isfinite(v):
            continue
        iv = ((bootstrap or {}).get("models") or {}).get(model) or {}
        if iv.get("low") is not None and iv.get("high") is not None:
            ax.plot(
                [iv["low"], iv["high"]], [y, y], color="tab:blue", lw=1.5, solid_capstyle="butt"
            )
            ax.plot([iv["low"], iv["high"]], [y, y], "|", color="tab:blue", ms=8)
        ax.plot([v], [y], "o", color="tab:blue", ms=7, zorder=3)
    if finite:
        ax.margins(x=0.08)
    else:
        ax.set_xlim(0, 1)
        ax.set_xticks([])
    for _model, y, v in zip(order, ys, values):
        if not math.isfinite(v):
            ax.annotate(
                "failed", (0.01, y), xycoords=("axes fraction", "data"), va="center", color="grey"
            )
    ax.set_yticks(ys, order)
    ax.set_ylim(-0.7, len(order) - 0.3)
    ax.grid(axis="x", color="0.9")
    label = f"{methods[0]} score (larger = better to fine-tune)"
    if bootstrap:
        label += f"; line: {round(100 * bootstrap['level'])}% bootstrap interval"
    ax.set_xlabel(label)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(
    out_dir: str | Path,
    scores: dict[str, dict[str, float | None]],
    methods: list[str],
    details: dict | None = None,
    title: str = "ccfv ranking",
) -> dict[str, Path]:
    """Write ``scores.csv`` (``model`` + one column per method), ``scores.json``,
    ``scores.png`` (the first method's score per model as a dot with its bootstrap interval,
    :func:`plot_scores`) and ``report.md`` into ``out_dir``.

    ``scores`` maps model -> method -> value (None where a model failed). ``details`` may hold
    ``notes`` (lines for a Notes section), ``failures`` (model -> message) and
    ``method_failures`` (model -> method -> message), each written as its own section.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    order = sorted(scores, key=lambda m: -_value(scores[m].get(methods[0])))
    rows = [["model", *methods]] + [
        [m, *("" if scores[m].get(k) is None else repr(scores[m][k]) for k in methods)]
        for m in order
    ]
    text = io.StringIO(newline="")
    csv.writer(text).writerows(rows)
    atomic_write(out / "scores.csv", text.getvalue())
    atomic_write(
        out / "scores.json",
        json.dumps(
            {"methods": methods, "ranking": order, "scores": scores, "details": details or {}},
            indent=1,
        ),
    )

    boot = (details or {}).get("bootstrap")
    plot_scores(out / "scores.png", scores, methods, order, boot, title)

    md = [
        f"# {title}",
        "",
        "Models ranked by `" + methods[0] + "` (larger = better starting point for fine-tuning).",
        "",
        "```",
        ranking_table(scores, methods, boot),
        "```",
        "",
        "![scores](scores.png)",
        "",
    ]
    details = details or {}
    if details.get("notes"):
        md += ["## Notes", ""] + [f"- {note}" for note in details["notes"]] + [""]
    if details.get("failures") or details.get("method_failures"):
        md += ["## Failures", ""]
        md += [
            f"- `{model}`: {message}" for model, message in (details.get("failures") or {}).items()
        ]
        md += [
            f"- `{model}`, `{method}`: {message}"
            for model, failed in (details.get("method_failures") or {}).items()
            for method, message in failed.items()
        ]
        md.append("")
    if details:
        md += ["## Run", ""] + [
            f"- {k}: {v}"
            for k, v in details.items()
            if k
            not in ("per_model", "bootstrap", "dropped", "notes", "failures", "method_failures")
        ]
        for model, info in (details.get("per_model") or {}).items():
            md.append(f"- `{model}`: {info}")
        md.append("")
        md += dropped_lines(details.get("dropped") or {})
    atomic_write(out / "report.md", "\n".join(md))
    return {
        "csv": out / "scores.csv",
        "json": out / "scores.json",
        "png": out / "scores.png",
        "md": out / "report.md",
    }
