"""The plot of ``ccfv select``: validation Dice against training steps, one line per candidate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_curves"]


def plot_curves(candidates: dict[str, dict[str, Any]], path: str | Path, title: str) -> Path:
    """Write the curves (``candidates[name]["curve"]``: ``[[step, dice], ...]``) to ``path``
    (PNG) through :func:`ccfv.files.atomic_write`."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ccfv.files import atomic_write

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, info in candidates.items():
        curve = info.get("curve") or []
        if curve:
            steps, dice = zip(*curve)
            ax.plot(steps, dice, marker="o", label=f"{name} (rank {info['rank']})")
    ax.set_xlabel("training steps")
    ax.set_ylabel("validation Dice")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return atomic_write(path, buffer.getvalue())
