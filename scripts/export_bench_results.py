#!/usr/bin/env python
"""Export the finished runs of a ``ccfv bench`` work folder into the repository, or restore them.

The benchmark caches every stage in its work folder (``.ccfv_bench/<name>``, not committed);
the fine-tuning runs are the expensive part and each is one small JSON file (the Dice per
class and per test case, the validation curve). This script copies those files into
``benchmarks/results/v2/<name>/`` so that they can be committed while a run is still going, and
copies them back into a fresh work folder (``--restore``) so that a next session resumes
without redoing them (the file names carry the digests of the config, so a run is only reused
by the same protocol)::

    python scripts/export_bench_results.py --config benchmarks/transfer2d-v2.yaml
    python scripts/export_bench_results.py --config benchmarks/transfer2d-v2.yaml --restore

Written on export: ``runs/<target>/<model>__<digest>__seed<s>.json`` (the cache files, compact),
``convergence/<target>/...`` (the convergence study's runs), ``sources.json`` (each pre-trained
source model's validation Dice on its own task, its last loss, steps and seconds; merged into the
file already there, so that an export never drops a source model) and
``progress.json`` (per target: runs done of expected, and the missing ones).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ccfv.bench.config import load_config  # noqa: E402
from ccfv.bench.run import SCRATCH, finetune_path, model_name  # noqa: E402
from ccfv.errors import UserError  # noqa: E402


class _Named:
    """Stands for a prepared task where only its name matters (:func:`finetune_path`)."""

    def __init__(self, name: str):
        self.name = name


def _run_files(folder: Path):
    return sorted(p for p in folder.glob("*/*.json") if not p.name.startswith("."))


def expected_runs(config) -> dict[str, list[Path]]:
    """The fine-tuning cache files of the whole benchmark, per target (relative paths), each
    target on its own seeds (``finetune_seeds``, else ``finetune.seeds``)."""
    names = list(config.task_specs)
    out = {}
    for target in config.targets:
        models = [
            model_name(a, s)
            for a in config["architectures"]
            for s in [*(n for n in names if n != target), SCRATCH]
        ]
        out[target] = [
            finetune_path(config, m, _Named(target), seed, Path("."))
            for m in models
            for seed in config.finetune_seeds(target)
        ]
    return out


def export(config, work: Path, dest: Path) -> dict:
    import torch

    dest.mkdir(parents=True, exist_ok=True)
    for kind in ("finetune", "convergence"):
        for path in _run_files(work / kind):
            target_dir = dest / ("runs" if kind == "finetune" else kind) / path.parent.name
            target_dir.mkdir(parents=True, exist_ok=True)
            data = json.loads(path.read_text())
            (target_dir / path.name).write_text(json.dumps(data, separators=(",", ":")))
    # merged into what was exported before: a work folder whose pre-training is still running
    # (a fresh machine re-doing it) must not drop the committed source models it lacks yet
    written = dest / "sources.json"
    sources = json.loads(written.read_text()) if written.is_file() else {}
    for path in sorted((work / "pretrain").glob("*.pt")):
        meta = torch.load(path, map_location="cpu", weights_only=True)["meta"]
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
    written.write_text(json.dumps(dict(sorted(sources.items())), indent=1))
    progress = {}
    for target, paths in expected_runs(config).items():
        done = [p for p in paths if (work / p).is_file()]
        progress[target] = {
            "done": len(done),
            "expected": len(paths),
            "missing": [p.name for p in paths if not (work / p).is_file()],
        }
    (dest / "progress.json").write_text(json.dumps(progress, indent=1))
    return progress


def restore(work: Path, dest: Path) -> int:
    copied = 0
    for kind, folder in (("finetune", "runs"), ("convergence", "convergence")):
        for path in _run_files(dest / folder):
            target = work / kind / path.parent.name / path.name
            if not target.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                copied += 1
    return copied


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
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    work = Path(args.work or Path(".ccfv_bench") / config["name"])
    dest = Path(args.dest or ROOT / "benchmarks" / "results" / "v2" / config["name"])
    if args.restore:
        print(f"restored {restore(work, dest)} run(s) from {dest} into {work}")
        return 0
    progress = export(config, work, dest)
    for target, p in progress.items():
        print(f"{target}: {p['done']} / {p['expected']} fine-tuning runs")
    print(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
