"""What ``ccfv select`` writes: ``selection.json``, ``report.md``, ``curves.png`` and the
winner's weights (``winner/model.pt``, a plain state dict; for nnU-Net entries also
``winner/checkpoint_final.pth`` in the format of nnU-Net's trainer)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["report_text", "write_outputs"]


def report_text(result: dict[str, Any]) -> str:
    """The Markdown report of a selection."""
    win = result["winner"]
    lines = [
        f"# ccfv select on {Path(result['data']).name}",
        "",
        f"Winner: **{win['model']}**, validation Dice {win['val_dice']:.4f} after "
        f"{win['steps']} fine-tuning steps.",
        "",
        "## Candidates",
        "",
        "| model | training-free rank | CC-FV | validation Dice per rung | steps | output head |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in result["candidates"].items():
        rungs = ", ".join("-" if v is None else f"{v:.4f}" for v in c["rungs"])
        head = (
            "failed"
            if c["head_reinitialised"] is None
            else "kept"
            if not c["head_reinitialised"]
            else "re-initialised (" + ", ".join(c["head_reinitialised"]) + ")"
        )
        lines.append(
            f"| {name} | {c['rank']} | {c['ccfv']:.4f} | {rungs or '-'} | {c['steps']} | {head} |"
        )
    failed = {n: c["failure"] for n, c in result["candidates"].items() if c["failure"]}
    if failed:
        lines += ["", "Failed candidates:", ""] + [f"- {n}: {m}" for n, m in failed.items()]
    plan, split, comp = result["plan"], result["split"], result["compute"]
    same = comp["all_models_same_budget"]
    lines += [
        "",
        "## How",
        "",
        f"- Successive halving, budget {plan['budget']}: rungs of {plan['counts']} "
        f"candidates ending at steps {plan['rung_ends']} ({plan['total_steps']} steps in "
        "all); the better half by validation Dice goes on with twice the steps.",
        f"- Split ({split['grouping']}, seed {split['seed']}): train {split['train']}, "
        f"validation {split['val']}.",
        f"- Training: Adam lr {result['settings']['lr']}, poly schedule over "
        f"{plan['schedule_steps']} steps"
        + (
            " (`--schedule-steps`: each candidate stops at its rung ends)"
            if plan["schedule_steps"] != plan["rung_ends"][-1]
            else ""
        )
        + ", DiceCE loss, "
        f"{result['settings']['batch_size']} patches per step at the model's window "
        "(RandCropByPosNegLabeld 2:1 foreground, random flips), device "
        f"{result['settings']['device']}"
        + (" with mixed precision" if result["settings"]["amp"] else "")
        + ".",
        "- Validation: sliding-window inference at the model's window on each "
        "validation case, Dice on the case's own label grid, mean over its classes.",
        "",
        "## Compute",
        "",
        f"- Ranking: {comp['ranking_seconds']:.1f} s.",
        f"- Fine-tuning: {comp['training_steps']} steps, {comp['training_seconds']:.1f} s.",
        f"- Fine-tuning all {same['models']} ranked models for {same['steps_each']} steps "
        f"each: {same['steps']} steps, about {same['seconds_estimate']:.0f} s (estimate: "
        f"{same['note']}); select used {100 * (comp['fraction_of_all'] or 0):.1f} % of "
        "those steps.",
        "",
        "![validation Dice against steps](curves.png)",
        "",
    ]
    return "\n".join(lines)


def write_outputs(result: dict[str, Any], out: Path, run, entry, prepared, target) -> None:
    """Write everything into ``out`` (every file through :func:`ccfv.files.atomic_write`)."""
    import torch

    from ccfv.bank import kind_of
    from ccfv.files import atomic_write
    from ccfv.select.plot import plot_curves

    out.mkdir(parents=True, exist_ok=True)
    winner = out / "winner"
    winner.mkdir(exist_ok=True)
    state = run.load_state()
    weights = {k: v.detach().cpu().clone() for k, v in state.model.items()}
    atomic_write(winner / "model.pt", lambda fh: torch.save(weights, fh))
    result["winner"]["weights"] = str(winner / "model.pt")
    handover = kind_of(entry).trainer_checkpoint(entry, weights, result["classes"])
    if handover is not None:  # e.g. nnU-Net's checkpoint_final.pth
        name, ckpt = handover
        atomic_write(winner / name, lambda fh: torch.save(ckpt, fh))
        result["winner"]["trainer_checkpoint"] = str(winner / name)
    plot_curves(
        result["candidates"], out / "curves.png", f"ccfv select on {Path(result['data']).name}"
    )
    atomic_write(out / "selection.json", json.dumps(result, indent=2, default=str))
    atomic_write(out / "report.md", report_text(result))
