"""The figure of ``ccfv evaluate``: score vs. fine-tuned Dice, one panel per method."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ccfv.errors import collect_ccfv_warnings
from ccfv.evaluation.metrics import _first_pick, evaluate
from ccfv.files import write_png


def plot_scores_vs_truth(
    scores: Mapping[str, Mapping[str, float | None]],
    truth: Mapping[str, float],
    path: str | Path,
    *,
    rows: Sequence[Mapping] | None = None,
    methods: Sequence[str] | None = None,
) -> Path:
    """Draw the CC-FV paper's Fig. 2 for each method and write it as a PNG (atomically).

    One panel per method: the standardised score (z-score over the models used,
    :math:`(T_i - \\bar T)/\\mathrm{sd}(T)`, 0 for all when the score is constant) on the x axis
    against the fine-tuned Dice on the y axis, one labelled marker per model, and the method's
    weighted tau and Pearson r in the panel title. ``rows`` are :func:`evaluate`'s rows for
    the same inputs (computed when not given).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if rows is None:
        with collect_ccfv_warnings():
            rows = evaluate(scores, truth, methods=methods)
    n = len(rows)
    ncols = min(3, max(1, n))
    nrows = math.ceil(n / ncols) if n else 1
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.9 * nrows), squeeze=False)

    def stat(value):
        return "n/a" if value is None else f"{value:.3f}"

    for ax, row in zip(axes.flat, rows):
        models = row["models"]
        # evaluate() lists in row["models"] only the models with a finite score
        x = np.array([scores[m][row["method"]] for m in models], dtype=np.float64)
        y = np.array([float(truth[m]) for m in models])
        sd = x.std()
        z = (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)
        pick = models[_first_pick(x, y)]
        best = models[int(np.argmax(y))]
        colours = ["tab:red" if m == pick else "tab:blue" for m in models]
        ax.scatter(z, y, c=colours, s=36, zorder=3)
        for zi, yi, m in zip(z, y, models):
            ax.annotate(
                m,
                (zi, yi),
                xytext=(4, 3),
                textcoords="offset points",
                fontsize=7,
                annotation_clip=False,
            )
        if sd > 0:
            slope, intercept = np.polyfit(z, y, 1)
            grid = np.linspace(z.min(), z.max(), 2)
            ax.plot(grid, slope * grid + intercept, color="grey", lw=1, ls="--", zorder=2)
        ax.set_title(
            f"{row['method']}\nweighted tau = {stat(row['weighted_tau'])}, "
            f"Pearson r = {stat(row['pearson'])}",
            fontsize=9,
        )
        ax.set_xlabel(
            "standardised score (z over the models)\n"
            f"picked: {pick}" + ("" if pick == best else f" (best: {best})"),
            fontsize=8,
        )
        ax.set_ylabel("fine-tuned Dice", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.margins(x=0.25, y=0.1)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("Score vs fine-tuned Dice (red: the model each score ranks first)", fontsize=10)
    fig.tight_layout()
    return write_png(fig, path)
