"""Write a ranking: scores.csv, scores.json, report.md with a bar chart (PNG), and a table."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def ranking_table(scores: dict[str, dict[str, float]], methods: list[str],
                  bootstrap: dict | None = None) -> str:
    """A plain-text table of models ranked by the first method (best first).

    With ``bootstrap`` (:meth:`ccfv.bootstrap.BootstrapResult.to_dict`), two more columns give
    each model's interval of the first method over resampled cases and the fraction of
    replicates in which it ranks first, and a last line says how often the top model stays top.
    """
    order = sorted(scores, key=lambda m: -_value(scores[m].get(methods[0])))
    width = max(5, *(len(m) for m in scores))
    head = f"{'rank':>4}  {'model':<{width}}" + "".join(f"{m:>16}" for m in methods)
    if bootstrap:
        interval = f"{round(100 * bootstrap['level'])}% interval"
        head += f"{interval:>22}{'P(first)':>10}"
    lines = [head, "-" * len(head)]
    for rank, model in enumerate(order, 1):
        cells = "".join(f"{_fmt(scores[model].get(m)):>16}" for m in methods)
        if bootstrap:
            iv = bootstrap["models"].get(model) or {}
            interval = ("" if iv.get("low") is None
                        else f"[{iv['low']:.4f}, {iv['high']:.4f}]")
            first = "" if iv.get("p_first") is None else f"{iv['p_first']:.2f}"
            cells += f"{interval:>22}{first:>10}"
        lines.append(f"{rank:>4}  {model:<{width}}{cells}")
    if bootstrap:
        lines.append(bootstrap_sentence(bootstrap))
    return "\n".join(lines)


def bootstrap_sentence(bootstrap: dict) -> str:
    """One line: how often the top model stays top over resampled target cases."""
    if bootstrap.get("p_top_stays") is None:
        return (f"bootstrap ({bootstrap['n_boot']} resamples of the target cases): no replicate "
                "could score every model, so no rank-first probability")
    return (f"bootstrap over target cases ({bootstrap['method']}, {bootstrap['n_valid']} of "
            f"{bootstrap['n_boot']} resamples scored every model): the top model "
            f"'{bootstrap['top']}' stays first in {100 * bootstrap['p_top_stays']:.0f}% of them")


def dropped_lines(dropped: dict) -> list[str]:
    """report.md lines on the planned voxels each model's preprocessing cropped away
    (``details["dropped"]``, :func:`ccfv.extract.dropped_voxels` per model); none if no drops."""
    if not any(d["dropped"] for d in dropped.values()):
        return []
    lines = ["## Planned voxels outside the preprocessed image (dropped)", ""]
    for model, d in dropped.items():
        worst = sorted(((n, case, k) for case, per in d["per_case"].items()
                        for k, n in per.items()), reverse=True)[:3]
        where = "; ".join(f"case {case} class {k}: {n}" for n, case, k in worst)
        lines.append(f"- `{model}`: {d['dropped']} of {d['planned']} "
                     f"({100 * d['rate']:.2f}%)" + (f", most in {where}" if where else ""))
    return lines + ["", "Per case and class: `details.dropped` in scores.json.", ""]


def _value(x):
    return -math.inf if x is None or (isinstance(x, float) and math.isnan(x)) else x


def _fmt(x):
    return "failed" if x is None else f"{x:.4f}"


def write_report(out_dir: str | Path, scores: dict[str, dict[str, float]], methods: list[str],
                 details: dict | None = None, title: str = "ccfv ranking") -> dict[str, Path]:
    """Write ``scores.csv`` (``model`` + one column per method), ``scores.json``,
    ``scores.png`` (bar chart of the first method) and ``report.md`` into ``out_dir``.

    ``scores`` maps model -> method -> value (None where a model failed).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    order = sorted(scores, key=lambda m: -_value(scores[m].get(methods[0])))
    rows = [["model", *methods]] + [[m, *("" if scores[m].get(k) is None else repr(scores[m][k])
                                          for k in methods)] for m in order]
    tmp = out / "scores.csv.tmp"
    with open(tmp, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    os.replace(tmp, out / "scores.csv")
    _atomic_write(out / "scores.json", json.dumps(
        {"methods": methods, "ranking": order, "scores": scores, "details": details or {}},
        indent=1))

    fig, ax = plt.subplots(figsize=(7, 0.45 * len(order) + 1.2))
    values = [_value(scores[m].get(methods[0])) for m in order]
    finite = [v for v in values if math.isfinite(v)]
    floor = min(finite) if finite else 0.0
    bars = [v if math.isfinite(v) else floor for v in values]
    xerr = None
    boot = (details or {}).get("bootstrap")
    if boot:  # the bootstrap interval as an asymmetric error bar (0 where there is none)
        ivs = [boot["models"].get(m) or {} for m in order]
        xerr = [[max(0.0, b - iv["low"]) if iv.get("low") is not None else 0.0
                 for b, iv in zip(bars, ivs)],
                [max(0.0, iv["high"] - b) if iv.get("high") is not None else 0.0
                 for b, iv in zip(bars, ivs)]]
    ax.barh(range(len(order))[::-1], bars, xerr=xerr, capsize=3,
            color=["tab:blue" if math.isfinite(v) else "lightgrey" for v in values])
    ax.set_yticks(range(len(order))[::-1], order)
    ax.set_xlabel(f"{methods[0]} score (larger = better to fine-tune)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out / "scores.png", dpi=110)
    plt.close(fig)

    boot = (details or {}).get("bootstrap")
    md = [f"# {title}", "", "Models ranked by `" + methods[0] + "` (larger = better starting "
          "point for fine-tuning).", "", "```", ranking_table(scores, methods, boot), "```", "",
          "![scores](scores.png)", ""]
    if details:
        md += ["## Run", ""] + [f"- {k}: {v}" for k, v in details.items()
                                if k not in ("per_model", "bootstrap", "dropped")]
        for model, info in (details.get("per_model") or {}).items():
            md.append(f"- `{model}`: {info}")
        md.append("")
        md += dropped_lines(details.get("dropped") or {})
    _atomic_write(out / "report.md", "\n".join(md))
    return {"csv": out / "scores.csv", "json": out / "scores.json", "png": out / "scores.png",
            "md": out / "report.md"}
