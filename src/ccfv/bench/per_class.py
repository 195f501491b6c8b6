"""Per-class analysis of the benchmark: is a class that is consistent across cases the class
that fine-tunes well?

The scoring stage records, for every bank model, CC-FV's per-class consistency on the target's
train split (:func:`ccfv.bench.run.class_consistency`: per class and layer, the mean W2 between
the cases' Gaussians of that class; lower = more consistent). Here it is set against the
fine-tuned Dice of the same class (test split, mean over seeds). A class's consistency score is

    c_k = - mean over layers of log(consistency of class k)

(higher = more consistent; the log and the mean over layers follow CC-FV's own
``T = mean_l log(F_v / C_cons)``). Two questions, per consistency variant:

- **across models** (per target and class): does the model whose class k is more consistent
  fine-tune to a higher Dice on class k? Weighted tau and Spearman over the bank's models.
- **across classes** (per target and model, targets with >= 2 classes): within one model, do
  its more consistent classes get the higher Dice? Spearman over the classes, averaged over
  the models, and the share of models where it is positive.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ccfv.evaluation import spearman, weighted_tau
from ccfv.files import write_png

#: The CC-FV variants whose per-class consistency the benchmark records (per model, class,
#: layer), to set class consistency against the fine-tuned Dice of each class.
CLASS_CONSISTENCY: dict[str, dict[str, Any]] = {
    "ccfv": {"normalize_consistency": True},
    "ccfv-paper": {},
}


def mean_class_dice(model: dict) -> dict[str, float]:
    """Fine-tuned Dice of each class, mean over the seeds where it is defined."""
    out = {}
    for cls in dict.fromkeys(k for d in model.get("dice_per_class", []) for k in d):
        values = [d[cls] for d in model["dice_per_class"] if d.get(cls) is not None]
        if values:
            out[cls] = float(np.mean(values))
    return out


def class_points(target: dict, variant: str) -> dict[str, dict[str, tuple[float, float]]]:
    """``{class: {model: (consistency score c_k, mean Dice of class k)}}`` for one target
    (models without a finite value for the class are left out of that class)."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for name, model in target["models"].items():
        per_class = model.get("class_consistency", {}).get(variant, {})
        dice = mean_class_dice(model)
        for cls, layers in per_class.items():
            values = [v for v in layers if v is not None and v > 0 and math.isfinite(v)]
            if values and cls in dice:
                out.setdefault(cls, {})[name] = (-float(np.mean(np.log(values))), dice[cls])
    return out


def class_statistics(target: dict, variants) -> dict:
    """Both analyses of the module docstring for one target, per consistency variant."""
    out = {}
    for variant in variants:
        points = class_points(target, variant)
        across_models = {}
        for cls, by_model in points.items():
            x = [v[0] for v in by_model.values()]
            y = [v[1] for v in by_model.values()]
            across_models[cls] = {
                "weighted_tau": weighted_tau(x, y) if len(x) >= 3 else None,
                "spearman": spearman(x, y) if len(x) >= 3 else None,
                "n_models": len(x),
            }
        within = []
        models = {m for by_model in points.values() for m in by_model}
        for model in sorted(models):
            pairs = [by_model[model] for by_model in points.values() if model in by_model]
            if len(pairs) >= 2:
                rho = spearman([p[0] for p in pairs], [p[1] for p in pairs])
                if rho is not None:
                    within.append(rho)
        out[variant] = {
            "across_models": across_models,
            "across_classes": {
                "mean_spearman": float(np.mean(within)) if within else None,
                "share_positive": (float(np.mean([r > 0 for r in within])) if within else None),
                "n_models": len(within),
            },
        }
    return out


def plot_class_consistency(target_name: str, target: dict, variants, path: str | Path) -> Path:
    """One panel per variant: c_k against the class's Dice, a colour per class, a marker per
    model; written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(variants)
    fig, axes = plt.subplots(1, len(variants), figsize=(5.2 * len(variants), 4.2), squeeze=False)
    for ax, variant in zip(axes.flat, variants):
        for i, (cls, by_model) in enumerate(class_points(target, variant).items()):
            x = [v[0] for v in by_model.values()]
            y = [v[1] for v in by_model.values()]
            ax.scatter(x, y, s=28, color=f"C{i}", label=cls, zorder=3)
        ax.set_xlabel("c_k = -mean_l log C_k  (higher = more consistent)")
        ax.set_ylabel("fine-tuned Dice of the class")
        ax.set_title(f"{target_name}\n{variant}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return write_png(fig, path)
