"""How far each estimator's scores move when the bank is pre-trained again.

Pre-training is not bit-reproducible across machines: the same config and seed give other
weights (benchmarks/results/v2/transfer2d-v2/legacy-runs/README.md). Two ``ccfv bench``
summaries of the same targets, scored on two such realisations of the bank, say how much of a
score is the model's recipe and how much is the realisation::

    python benchmarks/score_stability.py OLD/summary.json NEW/summary.json [--out FILE.md]

Per target and method: the Spearman correlation between the two realisations' scores over the
bank (1: the realisation does not matter), and the weighted Kendall tau of each realisation's
scores against the ground truth of OLD (its fine-tuned Dice, mean over seeds, made from OLD's
checkpoints). Where NEW carries its own fine-tuned Dice (runs fine-tuned from its own
checkpoints, not OLD's Dice rescored), also the weighted tau of NEW's scores against NEW's
Dice; and per target the agreement of the two ground truths (Spearman and weighted tau between
the two realisations' mean Dice over the bank) and of the two verdicts (Spearman over the
methods between each one's weighted tau in the one and in the other realisation): how far the
benchmark's verdict on the estimators survives re-pre-training, the instrument's noise at the
level of the realisation. Only targets and methods present in both summaries; a model with a
non-finite score in either is left out of that method's figures.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr, weightedtau


def _load(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"{p}: no such file: give the summary.json of a `ccfv bench` run")
    try:
        summary = json.loads(p.read_text())
    except json.JSONDecodeError as error:
        raise SystemExit(f"{p}: not JSON ({error}): give a summary.json of `ccfv bench`") from None
    if "targets" not in summary:
        raise SystemExit(f"{p}: no 'targets': give a summary.json of `ccfv bench`")
    return summary


def _truth(models: dict, names: list[str]) -> np.ndarray:
    """Mean fine-tuned Dice over the seeds, per model of ``names``."""
    return np.array([float(np.mean(models[m]["dice"])) for m in names])


def _common(old: dict, new: dict):
    """Per target of both summaries: ``(target, OLD's models, NEW's models, common names)``."""
    for target in [t for t in old["targets"] if t in new["targets"]]:
        mo, mn = old["targets"][target]["models"], new["targets"][target]["models"]
        yield target, mo, mn, sorted(set(mo) & set(mn))


def stability(old: dict, new: dict) -> dict[str, dict[str, dict[str, float | int]]]:
    """``{target: {method: {"spearman", "wtau_old", "wtau_new", "wtau_new_own", "n"}}}`` (see
    the module doc; ``wtau_new_own`` is NEW's scores against NEW's own Dice)."""
    out: dict[str, dict[str, dict[str, float | int]]] = {}
    for target, mo, mn, models in _common(old, new):
        truth, truth_new = _truth(mo, models), _truth(mn, models)
        methods = [m for m in mo[models[0]]["scores"] if m in mn[models[0]]["scores"]]
        out[target] = {}
        for method in methods:
            so = np.array([_num(mo[m]["scores"].get(method)) for m in models])
            sn = np.array([_num(mn[m]["scores"].get(method)) for m in models])
            ok = np.isfinite(so) & np.isfinite(sn)
            if ok.sum() < 3:
                continue
            out[target][method] = {
                "spearman": float(spearmanr(so[ok], sn[ok])[0]),
                "wtau_old": float(weightedtau(truth[ok], so[ok])[0]),
                "wtau_new": float(weightedtau(truth[ok], sn[ok])[0]),
                "wtau_new_own": float(weightedtau(truth_new[ok], sn[ok])[0]),
                "n": int(ok.sum()),
            }
    return out


def ground_truth_agreement(old: dict, new: dict) -> dict[str, dict[str, float | int | bool]]:
    """``{target: {"spearman", "wtau", "n", "own"}}``: the two realisations' mean fine-tuned
    Dice over the common models; ``own`` is False where NEW holds OLD's Dice (rescored only)."""
    out: dict[str, dict[str, float | int | bool]] = {}
    for target, mo, mn, models in _common(old, new):
        a, b = _truth(mo, models), _truth(mn, models)
        out[target] = {
            "spearman": float(spearmanr(a, b)[0]),
            "wtau": float(weightedtau(a, b)[0]),
            "n": len(models),
            "own": bool(np.any(a != b)),
        }
    return out


def _num(value) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.nan


def verdict_agreement(result: dict) -> dict[str, dict[str, float | int]]:
    """``{target: {"spearman", "n"}}``: the Spearman correlation over the methods between
    their weighted tau on OLD (OLD's scores, OLD's Dice) and on NEW (NEW's scores, NEW's own
    Dice): whether the benchmark's ranking of the estimators survives re-pre-training."""
    out: dict[str, dict[str, float | int]] = {}
    for target, methods in result.items():
        pairs = [
            (r["wtau_old"], r["wtau_new_own"])
            for r in methods.values()
            if math.isfinite(r["wtau_old"]) and math.isfinite(r["wtau_new_own"])
        ]
        if len(pairs) >= 3:
            a, b = zip(*pairs, strict=True)
            out[target] = {"spearman": float(spearmanr(a, b)[0]), "n": len(pairs)}
    return out


def markdown(result: dict, truths: dict, old: str, new: str) -> str:
    own = any(t["own"] for t in truths.values())
    lines = [
        "# Estimator scores on two pre-trained realisations of the same bank",
        "",
        f"Old: `{old}`; new: `{new}` (`python benchmarks/score_stability.py {old} {new}`).",
        "Spearman: between the two realisations' scores over the bank. Weighted tau: each",
        "realisation's scores against the old ground truth (its fine-tuned Dice)"
        + (
            "; own: the new scores against the new ground truth (the Dice of runs fine-tuned "
            "from the new checkpoints)."
            if own
            else "."
        ),
        "",
    ]
    if own:
        verdict = verdict_agreement(result)
        lines += [
            "The two ground truths (mean fine-tuned Dice over the seeds, each from its own "
            "checkpoints), agreement over the bank; and the two verdicts on the estimators "
            "(each method's weighted tau in its own realisation, scores and Dice), Spearman "
            "over the methods:",
            "",
            "| target | models | ground truths: Spearman | weighted tau "
            "| verdicts: Spearman | methods |",
            "|---|---|---|---|---|---|",
        ]
        for t, g in truths.items():
            if g["own"]:
                v = verdict.get(t)
                tail = f"{v['spearman']:.3f} | {v['n']}" if v else "n/a | 0"
                lines.append(f"| {t} | {g['n']} | {g['spearman']:.3f} | {g['wtau']:.3f} | {tail} |")
        lines.append("")
    targets = list(result)
    methods = [m for m in result[targets[0]] if all(m in result[t] for t in targets)]
    head = ["method"]
    for t in targets:
        head += [f"{t}: Spearman old/new", f"{t}: wtau old", f"{t}: wtau new"]
        if truths[t]["own"]:
            head.append(f"{t}: wtau new, own")
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        row = [f"`{m}`"]
        for t in targets:
            r = result[t][m]
            row += [f"{r['spearman']:.3f}", f"{r['wtau_old']:+.2f}", f"{r['wtau_new']:+.2f}"]
            if truths[t]["own"]:
                row.append(f"{r['wtau_new_own']:+.2f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", help="summary.json scored on the first realisation")
    parser.add_argument("new", help="summary.json scored on the second realisation")
    parser.add_argument("--out", help="write the markdown table there (default: print it)")
    args = parser.parse_args(argv)
    old, new = _load(args.old), _load(args.new)
    result = stability(old, new)
    if not result:
        raise SystemExit(f"{args.old}, {args.new}: no target in common")
    text = markdown(result, ground_truth_agreement(old, new), args.old, args.new)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
