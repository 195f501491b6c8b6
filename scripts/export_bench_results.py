#!/usr/bin/env python
"""Export the finished runs of a ``ccfv bench`` work folder into the repository, or restore them.

The benchmark caches every stage in its work folder (``.ccfv_bench/<name>``, not committed);
the fine-tuning runs are the expensive part and each is one small JSON file (the Dice per
class and per test case, the validation curve). This script copies those files, and the
checkpoints they started from, into ``benchmarks/results/v2/<name>/`` so that they can be
committed while a run is still going, and copies them back into a fresh work folder
(``--restore``: the checkpoints first) so that a next session resumes without pre-training or
fine-tuning again. A run's file name carries the digests of the config and the fingerprint of
its starting checkpoint's weights, so a run is only reused by the same protocol from the same
weights (pre-training is not reproducible across machines: the same seed and config give other
weights on another CPU, hence the checkpoints are committed too)::

    python scripts/export_bench_results.py --config benchmarks/transfer2d-v2.yaml
    python scripts/export_bench_results.py --config benchmarks/transfer2d-v2.yaml --restore

Written on export: ``runs/<target>/<model>__<digest>__seed<s>.json`` (the cache files, compact;
only runs that record their ``checkpoint``: runs made before the fingerprint are left out),
``convergence/<target>/...`` (the convergence study's runs), ``checkpoints/*.pt`` (every
checkpoint of ``work/pretrain``: the source models and the scratch initialisations),
``sources.json`` (each pre-trained source model's validation Dice on its own task, its last
loss, steps, seconds and ``fingerprint``; merged into the file already there, so that an export
never drops a source model) and ``progress.json`` (per target: runs done of expected, and the
missing ones; a model without a checkpoint yet is missing as "not pre-trained yet").

A checkpoint of the work folder whose committed namesake holds other weights stops the export
(and, the other way round, the restore) with an error before anything is copied.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import sys
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ccfv.bench.checkpoints import fingerprint_once, load_checkpoint  # noqa: E402
from ccfv.bench.config import load_config  # noqa: E402
from ccfv.bench.run import (  # noqa: E402
    SCRATCH,
    bank_jobs,
    finetune_path,
    model_name,
    pretrain_path,
)
from ccfv.errors import UserError  # noqa: E402

CHECKPOINTS = "checkpoints"


class _Named:
    """Stands for a prepared task where only its name matters (:func:`finetune_path`)."""

    def __init__(self, name: str):
        self.name = name


class Expected(NamedTuple):
    """One fine-tuning run the benchmark expects: its cache file relative to the work folder,
    or None with ``why`` when its name cannot be known yet (its checkpoint does not exist)."""

    model: str
    seed: int
    path: Path | None
    why: str = ""


NOT_PRETRAINED = "not pre-trained yet"


def _run_files(folder: Path):
    return sorted(p for p in folder.glob("*/*.json") if not p.name.startswith("."))


def _checkpoint_files(folder: Path) -> list[Path]:
    """The checkpoints of a folder: ``*.pt``, not the claims' ``.lock`` files nor the
    temporary files of a checkpoint being written (both start with a dot)."""
    return sorted(p for p in folder.glob("*.pt") if not p.name.startswith("."))


def _fingerprint_of(name: str, folders: list[Path]) -> str | None:
    """The fingerprint of checkpoint file ``name`` in the first of ``folders`` that has it."""
    for folder in folders:
        if (folder / name).is_file():
            return fingerprint_once(folder / name)
    return None


def expected_runs(config, checkpoints: list[Path]) -> dict[str, list[Expected]]:
    """The fine-tuning runs of the whole benchmark, per target, each target on its own seeds
    (``finetune_seeds``, else ``finetune.seeds``). A run's cache name carries the fingerprint
    of its starting checkpoint, read from the first folder of ``checkpoints`` that holds the
    checkpoint (the work folder's ``pretrain``, then the committed ``checkpoints``); a model
    whose checkpoint is in none of them is expected with ``path`` None ("not pre-trained
    yet")."""
    names = list(config.task_specs)
    out = {}
    for target in config.targets:
        runs = []
        for arch, src in bank_jobs(config["architectures"], names, target):
            model = model_name(arch, src)
            task = None if src == SCRATCH else _Named(src)
            file = pretrain_path(config, arch, task, Path(".")).name
            fingerprint = _fingerprint_of(file, checkpoints)
            for seed in config.finetune_seeds(target):
                if fingerprint is None:
                    runs.append(Expected(model, seed, None, NOT_PRETRAINED))
                    continue
                path = finetune_path(
                    config, model, _Named(target), seed, Path("."), checkpoint=fingerprint
                )
                runs.append(Expected(model, seed, path))
        out[target] = runs
    return out


def _refuse_conflicts(pairs: list[tuple[Path, Path]], fix: str) -> None:
    """Raise UserError, before anything is written, when a ``(work file, committed file)``
    pair of checkpoints that both exist hold other weights (identical bytes: the same)."""
    conflicts = []
    for mine, theirs in pairs:
        if not (mine.is_file() and theirs.is_file()) or filecmp.cmp(mine, theirs, shallow=False):
            continue
        if fingerprint_once(mine) != fingerprint_once(theirs):
            conflicts.append((mine, theirs))
    if conflicts:
        mine, theirs = conflicts[0]
        more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
        raise UserError(
            f"{mine} (weights {fingerprint_once(mine)}) is not the committed {theirs} "
            f"(weights {fingerprint_once(theirs)}){more}: {fix}"
        )


def _copy_atomic(source: Path, target: Path) -> None:
    """Copy a checkpoint so that a benchmark reading the folder never sees half of it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.copy.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def export(config, work: Path, dest: Path) -> dict:

    saved = _checkpoint_files(work / "pretrain")
    _refuse_conflicts(
        [(path, dest / CHECKPOINTS / path.name) for path in saved],
        "this work folder was pre-trained anew instead of restored; export into another "
        "--dest, or remove the committed checkpoint if these weights replace it (its "
        "committed runs then no longer count)",
    )
    dest.mkdir(parents=True, exist_ok=True)
    for kind in ("finetune", "convergence"):
        for path in _run_files(work / kind):
            data = json.loads(path.read_text())
            if kind == "finetune" and "checkpoint" not in data:
                continue  # made before runs recorded their checkpoint: not tied to its weights
            target_dir = dest / ("runs" if kind == "finetune" else kind) / path.parent.name
            target_dir.mkdir(parents=True, exist_ok=True)
            (target_dir / path.name).write_text(json.dumps(data, separators=(",", ":")))
    # the checkpoints the runs started from (source models and scratch initialisations)
    for path in saved:
        target = dest / CHECKPOINTS / path.name
        if not target.is_file():
            _copy_atomic(path, target)
    # merged into what was exported before: a work folder whose pre-training is still running
    # (a fresh machine re-doing it) must not drop the committed source models it lacks yet
    written = dest / "sources.json"
    sources = json.loads(written.read_text()) if written.is_file() else {}
    for path in saved:
        meta = load_checkpoint(path)[1]
        if meta.get("source") == SCRATCH:
            continue
        sources[path.stem] = {
            k: meta.get(k)
            for k in (
                "arch",
                "source",
                "source_val_dice",
                "best_step",
                "curve",
                "loss_last",
                "steps",
                "seconds",
            )
        }
        sources[path.stem]["fingerprint"] = fingerprint_once(path)
    written.write_text(json.dumps(dict(sorted(sources.items())), indent=1))
    progress = {}
    folders = [work / "pretrain", dest / CHECKPOINTS]
    for target, runs in expected_runs(config, folders).items():
        progress[target] = {
            "done": sum(r.path is not None and (work / r.path).is_file() for r in runs),
            "expected": len(runs),
            "missing": [
                f"{r.model}__seed{r.seed} ({r.why})" if r.path is None else r.path.name
                for r in runs
                if r.path is None or not (work / r.path).is_file()
            ],
        }
    (dest / "progress.json").write_text(json.dumps(progress, indent=1))
    return progress


def restore(work: Path, dest: Path) -> tuple[int, int]:
    """Copy the committed checkpoints into ``work/pretrain`` (so that a fresh machine reuses
    them instead of pre-training again), then the runs; files already in ``work`` are kept.
    Returns ``(checkpoints copied, runs copied)``. Raises UserError, copying nothing, when a
    checkpoint of ``work`` holds other weights than its committed namesake."""
    committed = _checkpoint_files(dest / CHECKPOINTS)
    _refuse_conflicts(
        [(work / "pretrain" / path.name, path) for path in committed],
        "nothing was restored: remove the work file, or restore into another --work",
    )
    checkpoints = 0
    for path in committed:
        target = work / "pretrain" / path.name
        if not target.is_file():
            _copy_atomic(path, target)
            checkpoints += 1
    copied = 0
    for kind, folder in (("finetune", "runs"), ("convergence", "convergence")):
        for path in _run_files(dest / folder):
            target = work / kind / path.parent.name / path.name
            if not target.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                copied += 1
    return checkpoints, copied


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the benchmark YAML")
    parser.add_argument("--work", help="its work folder (default .ccfv_bench/NAME)")
    parser.add_argument("--dest", help="the exported runs (default benchmarks/results/v2/NAME)")
    parser.add_argument("--quick", action="store_true", help="the config's quick profile")
    parser.add_argument(
        "--restore",
        action="store_true",
        help="copy the exported runs back into the work folder instead",
    )
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, quick=args.quick)
        work = Path(args.work or Path(".ccfv_bench") / config["name"])
        dest = Path(args.dest or ROOT / "benchmarks" / "results" / "v2" / config["name"])
        if args.restore:
            checkpoints, runs = restore(work, dest)
            print(f"restored {checkpoints} checkpoint(s) and {runs} run(s) from {dest} into {work}")
            return 0
        progress = export(config, work, dest)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for target, p in progress.items():
        print(f"{target}: {p['done']} / {p['expected']} fine-tuning runs")
    print(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
