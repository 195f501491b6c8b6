"""The transfer benchmark, leave one task out: does the score pick the model that fine-tunes best?

Stages, each cached under ``work/`` and resumable (a killed run redoes at most the network
being trained or the model being scored):

1. **tasks** (:mod:`ccfv.bench.tasks`): one input format, a fixed written-down split.
2. **pre-training**: every architecture on every task (all its prepared cases), from a seeded
   initialisation; plus each architecture's seeded initialisation itself ("no pre-train").
   ``work/pretrain/<arch>__<task>-<digest>.pt``.
3. **banks**: for target T, every architecture pre-trained on every OTHER task, plus every
   architecture from scratch (the paper's bank at CPU scale).
4. **fine-tuning** (the ground truth): every bank model on T's train split, all weights loaded
   except the final convolution block (re-initialised), nothing frozen, the same steps,
   optimiser and batch for all; Dice on T's test split (mean over foreground classes and per
   class); one run per seed. ``work/finetune/<target>/<model>__<digest>__seed<s>.json``.
5. **scores**: ``ccfv rank`` on T's train split only (``scoring.cases`` of its cases, one
   sampling plan shared by all models), every method of ``scoring.methods`` (ablations are
   methods with options, ``ccfv[distance=kl]``), and ``scoring.proportional`` again with the
   proportional budget (columns ``<method>@proportional``). Features are cached in
   ``work/features``.
6. **statistics** (:mod:`ccfv.evaluation`): per target and averaged over targets; written by
   :mod:`ccfv.bench.report`.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from pathlib import Path

import numpy as np
import yaml

from ccfv.bench.config import BenchConfig
from ccfv.bench.tasks import PreparedTask, prepare_task
from ccfv.errors import CCFVWarning, UserError

SCRATCH = "scratch"
PROPORTIONAL = "@proportional"


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float))
    os.replace(tmp, path)


def model_name(arch: str, source: str) -> str:
    """Bank model name: ``<arch>__<source task>`` or ``<arch>__scratch``."""
    return f"{arch}__{source}"


def _cases_digest(config: BenchConfig, task: str) -> str:
    """Digest of what changes a task's cases beyond the common keys: the subjects set aside
    for derived tasks and a derived task's classes ("" for plain tasks, whose digests stay)."""
    spec = config.task_specs.get(task)
    if spec is None:  # scratch
        return ""
    extra = {}
    folder = spec.parent or spec.name
    if config["source_cases"].get(folder):
        extra["source_cases"] = config["source_cases"][folder]
        extra["groups"] = config["groups"].get(folder)
    if spec.labels is not None:
        extra["labels"] = spec.labels
    return config.digest_of(extra) if extra else ""


def _device_digest(device: str) -> str:
    """'' on the CPU (the digests runs always had), else a digest of the device type: runs
    on another device are other runs (their numbers differ in the last digits)."""
    kind = str(device).split(":")[0]
    return "" if kind == "cpu" else BenchConfig.digest_of({"device": kind})


def pretrain(config: BenchConfig, arch: str, task: PreparedTask | None, work: Path,
             progress: bool, log, device: str = "cpu") -> Path:
    """The checkpoint of ``arch`` pre-trained on ``task`` (None: the seeded initialisation),
    trained on ``device`` (the weights are initialised on the CPU, so every device starts from
    the same ones)."""
    import torch

    from ccfv.bench.train import ARCHITECTURES, save_checkpoint, set_seed, train

    cfg = config["pretrain"]
    source = task.name if task is not None else SCRATCH
    n_out = task.n_classes if task is not None else 2
    digest = config.digest("pretrain", "size", "channels", "max_cases", "split_seed")
    digest += _cases_digest(config, source)
    if task is not None:
        digest += _device_digest(device)
    path = work / "pretrain" / f"{model_name(arch, source)}-{digest}.pt"
    if path.is_file():
        return path
    set_seed(cfg["seed"])
    model = ARCHITECTURES[arch](config["channels"], n_out, config["size"])
    meta = {"arch": arch, "source": source, "out_channels": n_out, "pretrain": cfg}
    if task is not None:
        model.to(device)
        start = time.perf_counter()
        info = train(model, task.images, task.labels, steps=cfg["steps"],
                     batch_size=cfg["batch_size"], lr=cfg["lr"], seed=cfg["seed"],
                     progress=f"pre-train {arch} on {source}" if progress else None)
        meta.update(info)
        log(f"pre-trained {arch} on {source}: loss {info['loss_first']:.3f} -> "
            f"{info['loss_last']:.3f} in {time.perf_counter() - start:.0f} s")
    with torch.no_grad():
        save_checkpoint(model, path, meta)
    return path


def finetune(config: BenchConfig, arch: str, checkpoint: Path, name: str,
             target: PreparedTask, seed: int, work: Path, progress: bool,
             device: str = "cpu") -> dict:
    """Fine-tune one bank model on the target's train split (on ``device``); Dice on its test
    split."""
    from ccfv.bank.checkpoint import load_torch_file
    from ccfv.bench.train import (ARCHITECTURES, dice_per_class, head_module, load_pretrained,
                                  set_seed, train)

    cfg = config["finetune"]
    # the seed is in the file name, not the digest: adding a seed keeps the runs already made
    digest = config.digest("pretrain", "size", "channels", "max_cases", "split_seed",
                           "test_fraction") + config.digest_of(
        {k: v for k, v in cfg.items() if k != "seeds"})
    if config["groups"].get(target.name):  # a split by patient is another split
        digest += config.digest_of(config["groups"][target.name])
    digest += _cases_digest(config, target.name) + _device_digest(device)
    path = work / "finetune" / target.name / f"{name}__{digest}__seed{seed}.json"
    if path.is_file():
        return json.loads(path.read_text())
    set_seed(seed)
    model = ARCHITECTURES[arch](config["channels"], target.n_classes, config["size"])
    state = load_torch_file(checkpoint, f"benchmark checkpoint {checkpoint}")["state_dict"]
    loaded = load_pretrained(model, state, head_module(arch))
    model.to(device)
    start = time.perf_counter()
    info = train(model, target.images[target.train], target.labels[target.train],
                 steps=cfg["steps"], batch_size=cfg["batch_size"], lr=cfg["lr"], seed=seed,
                 progress=f"fine-tune {name} on {target.name} (seed {seed})" if progress
                 else None)
    per_class = dice_per_class(model, target.images[target.test], target.labels[target.test],
                               n_classes=target.n_classes)
    finite = per_class[np.isfinite(per_class)]
    result = {"model": name, "target": target.name, "seed": seed,
              "dice": float(finite.mean()) if finite.size else None,
              "dice_per_class": {target.class_names.get(k + 1, str(k + 1)): (
                  float(v) if math.isfinite(v) else None) for k, v in enumerate(per_class)},
              "seconds": time.perf_counter() - start, "device": str(device),
              "loss_first": info["loss_first"],
              "loss_last": info["loss_last"], "loaded_tensors": loaded["loaded"],
              "reinitialised": loaded["reinitialised"]}
    _write_json(path, result)
    return result


def write_bank(config: BenchConfig, target: PreparedTask, bank: dict[str, tuple],
               work: Path) -> Path:
    """The bank YAML of one target: every model with its network, checkpoint, layers auto."""
    from ccfv.bank.checkpoint import load_torch_file
    from ccfv.bench.train import network_spec

    models = []
    for name, (arch, checkpoint) in bank.items():
        meta = load_torch_file(checkpoint, f"benchmark checkpoint {checkpoint}")["meta"]
        spec = network_spec(arch, config["channels"], meta["out_channels"], config["size"])
        models.append({"name": name, **spec, "checkpoint": str(Path(checkpoint).resolve()),
                       "layers": "auto",
                       "preprocessing": {"intensity": {"kind": "range", "a_min": 0,
                                                       "a_max": 255, "b_min": 0, "b_max": 1},
                                         "roi": config.spatial_size}})
    path = work / "scores" / target.name / "bank.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"models": models}, sort_keys=False))
    return path


#: The CC-FV variants whose per-class consistency the benchmark records (per model, class,
#: layer), to set class consistency against the fine-tuned Dice of each class.
CLASS_CONSISTENCY = {"ccfv": {"normalize_consistency": True}, "ccfv-paper": {}}


def class_consistency(features: dict, class_names: dict[int, str]) -> dict:
    """``{variant: {class name: [per-layer mean W2 between the cases' class Gaussians]}}``:
    the per-class consistency (lower = more consistent) of one model's features, for the
    default CC-FV (Gaussians on the unit sphere) and the paper's equations."""
    from ccfv.estimators.ccfv import ccfv_parts

    out = {}
    for name, options in CLASS_CONSISTENCY.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CCFVWarning)
            parts = ccfv_parts(features, "paper", **options)
        per_class: dict[str, list] = {}
        for layer in parts.layers:
            for k, value in layer.class_consistency.items():
                per_class.setdefault(class_names.get(k, str(k)), []).append(float(value))
        out[name] = per_class
    return out


def score_target(config: BenchConfig, target: PreparedTask, bank_file: Path, work: Path,
                 progress: bool, log, device: str = "cpu") -> tuple[dict, dict]:
    """Every method's score of every bank model on the target's train split, and each
    model's per-class consistency (:func:`class_consistency`)."""
    from ccfv.rank import rank

    cfg = config["scoring"]
    common = dict(cases=min(cfg["cases"], len(target.train)), seed=cfg["seed"], device=device,
                  counts=cfg["counts"], cache_dir=work / "features", bootstrap=0,
                  progress=progress, log=lambda *_: None)
    per_class = {}

    def record(model, features, _predictions):
        per_class[model] = class_consistency(features, target.class_names)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CCFVWarning)
        fixed = rank(bank_file, target.train_folder, methods=cfg["methods"], budget="fixed",
                     on_model=record, **common)
        scores = {m: dict(v) for m, v in fixed.scores.items()}
        failures = dict(fixed.failures)
        if cfg["proportional"]:
            prop = rank(bank_file, target.train_folder, methods=cfg["proportional"],
                        budget="proportional", **common)
            for model, values in prop.scores.items():
                for method, value in values.items():
                    scores[model][method + PROPORTIONAL] = value
            failures.update({m: e for m, e in prop.failures.items() if m not in failures})
    for model, error in failures.items():
        log(f"{target.name}: {model}: scoring FAILED: {error}")
    return scores, {"cases": fixed.details["cases"], "failures": failures,
                    "class_consistency": per_class}


def _pretrain_seconds(paths) -> float:
    """Training time recorded in the pre-trained checkpoints (0 for initialisations)."""
    from ccfv.bank.checkpoint import load_torch_file

    return float(sum(load_torch_file(p, f"benchmark checkpoint {p}")["meta"]
                     .get("seconds", 0.0) for p in set(paths)))


def run_bench(config: BenchConfig, work: str | Path, out: str | Path, *, progress: bool = True,
              log=print, device: str = "cpu") -> dict:
    """Run (or resume) the whole benchmark; write results to ``out``; return the summary.

    ``device`` (``cpu``, ``cuda``, ``cuda:1``) runs pre-training, fine-tuning and the feature
    passes there; runs on a GPU are cached apart from CPU runs."""
    from ccfv.bench.report import write_results

    if str(device).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: torch sees no CUDA GPU here; use --device cpu "
                            "(the default) or install a CUDA build of torch")

    work, out = Path(work), Path(out)
    start = time.time()
    tasks = {}
    for name, spec in config.task_specs.items():
        folder = spec.parent or name
        tasks[name] = prepare_task(spec.path, work, size=config["size"],
                                   channels=config["channels"], max_cases=config["max_cases"],
                                   test_fraction=config["test_fraction"],
                                   split_seed=config["split_seed"],
                                   group=config["groups"].get(folder),
                                   reserve=config["source_cases"].get(folder, 0),
                                   derived=spec.labels, name=name)
        t = tasks[name]
        if spec.parent:
            role = f"source only ({len(t.train)} cases set aside from {spec.parent})"
        elif len(t.test) == 0:
            role = f"source only ({len(t.train)} case(s), too few to split)"
        else:
            role = f"{len(t.train)} train / {len(t.test)} test cases"
            if t.reserved:
                role += f", {len(t.reserved)} set aside for derived source tasks"
        log(f"task {name}: {role}, {t.n_classes - 1} foreground class(es)")
    archs = config["architectures"]
    for name in config.targets:
        if len(tasks[name].test) == 0 or len(tasks[name].train) < 2:
            raise UserError(f"{config.source}: target {name} has {len(tasks[name].train)} "
                            f"train and {len(tasks[name].test)} test case(s); a target needs at "
                            "least 2 train and 1 test case: make it a source only (`targets`)")
    targets = config.targets
    checkpoints = {}
    for arch in archs:
        checkpoints[(arch, SCRATCH)] = pretrain(config, arch, None, work, progress, log,
                                                device)
        for name, task in tasks.items():
            if any(t != name for t in targets):
                checkpoints[(arch, name)] = pretrain(config, arch, task, work, progress, log,
                                                     device)
    summary = {"config": config.raw, "targets": {}}
    for target_name in targets:
        target = tasks[target_name]
        bank = {model_name(arch, src): (arch, checkpoints[(arch, src)])
                for arch in archs for src in [*(n for n in tasks if n != target_name), SCRATCH]}
        models = {}
        for name, (arch, checkpoint) in bank.items():
            runs = [finetune(config, arch, checkpoint, name, target, seed, work, progress,
                             device)
                    for seed in config["finetune"]["seeds"]]
            models[name] = {"dice": [r["dice"] for r in runs],
                            "dice_per_class": [r["dice_per_class"] for r in runs],
                            "finetune_seconds": [r["seconds"] for r in runs]}
            log(f"{target_name}: {name}: fine-tuned Dice "
                + ", ".join("n/a" if d is None else f"{d:.4f}" for d in models[name]["dice"]))
        bank_file = write_bank(config, target, bank, work)
        scores, info = score_target(config, target, bank_file, work, progress, log, device)
        for name in models:
            models[name]["scores"] = scores.get(name, {})
            models[name]["class_consistency"] = info["class_consistency"].get(name, {})
        summary["targets"][target_name] = {"models": models, "scored_cases": info["cases"],
                                           "classes": [target.class_names.get(k, str(k))
                                                       for k in range(1, target.n_classes)],
                                           "spatial_dims": len(config.spatial_size),
                                           "failures": info["failures"],
                                           "train": [target.case_ids[i] for i in target.train],
                                           "test": [target.case_ids[i] for i in target.test]}
        _write_json(work / "summary.partial.json", summary)
    summary["wall_seconds"] = time.time() - start
    summary["pretrain_seconds"] = _pretrain_seconds(checkpoints.values())
    write_results(summary, config, out)
    return summary
