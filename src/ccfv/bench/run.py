"""The transfer benchmark, leave one task out: does the score pick the model that fine-tunes best?

Stages, each cached under ``work/`` and resumable (a killed run redoes at most the network
being trained or the model being scored):

1. **tasks** (:mod:`ccfv.bench.tasks`): one input format, a fixed written-down split.
2. **pre-training**: every architecture on every task (all its prepared cases; protocol v2:
   less a held-out share, ``pretrain.val_fraction``, whose Dice is the source model's own
   validation Dice), from a seeded initialisation; plus each architecture's seeded
   initialisation itself ("no pre-train"). ``work/pretrain/<arch>__<task>-<digest>.pt``.
3. **banks**: for target T, every architecture pre-trained on every OTHER task, plus every
   architecture from scratch (the paper's bank at CPU scale).
4. **fine-tuning** (the ground truth): every bank model on T's train split, all weights loaded
   except the final convolution block (re-initialised), nothing frozen, the same steps,
   optimiser, schedule and batch for all; v2: the checkpoint of best Dice on a validation
   split carved out of T's train split (``finetune.val_fraction``); Dice on T's test split
   (mean over foreground classes, per class and per test case); one run per seed.
   ``work/finetune/<target>/<model>__<digest>__seed<s>.json``, the digest ending with one of
   the fingerprint of the starting checkpoint's weights (recorded as ``"checkpoint"``):
   pre-training is not reproducible across machines, so a run is reused only with the
   weights it was fine-tuned from.
5. **scores**: ``ccfv rank`` on T's train split only (``scoring.cases`` of its cases, one
   sampling plan shared by all models), every method of ``scoring.methods`` (ablations are
   methods with options, ``ccfv[distance=kl]``), and ``scoring.proportional`` again with the
   proportional budget (columns ``<method>@proportional``). Features are cached in
   ``work/features``; the scores of a target in ``work/scores/<target>/scores-<digest>.json``
   (the digest covers the fingerprints of the bank's checkpoints).
6. **statistics** (:mod:`ccfv.evaluation`, :mod:`ccfv.reliability`): per target and averaged
   over targets, the reliability of the ground truth and intervals; written by
   :mod:`ccfv.bench.report`.

Several processes may share one ``work`` folder: each stage is claimed with a lock file first
(:class:`_Claim`), so two ``--threads 1`` processes split the work. :func:`run_convergence` is
the convergence study (``ccfv bench --convergence``) that chooses ``finetune.steps``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ccfv.bench.config import BenchConfig, digest_view
from ccfv.bench.per_class import CLASS_CONSISTENCY  # the variants class_consistency records
from ccfv.bench.tasks import NativeTask, PreparedTask, prepare_native_task, prepare_task
from ccfv.errors import UserError, collect_ccfv_warnings, first_line
from ccfv.files import atomic_write

#: The run's progress lines (the CLI prints them on stdout; ``log=`` sends them elsewhere).
_logger = logging.getLogger(__name__)

SCRATCH = "scratch"
PROPORTIONAL = "@proportional"


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(data, indent=1, default=float))


class _Claim:
    """A lock file beside a stage's output, so that several ``ccfv bench`` processes sharing one
    work folder split the stages instead of doing each twice. ``take()`` is True when this
    process may compute the stage (it created the lock, or the lock's process is gone)."""

    def __init__(self, output: Path):
        self.path = output.with_name(f".{output.name}.lock")
        self.held = False

    def take(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    pid = int(self.path.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and pid != os.getpid() and _alive(pid):
                    return False
                self.path.unlink(missing_ok=True)  # left by a process that died
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(str(os.getpid()))
            self.held = True
            return True
        return False

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run_claimed(jobs: list, done, compute, wait_seconds: float = 5.0) -> None:
    """Compute every job not ``done`` whose claim this process gets; wait for the jobs other
    processes hold (re-checking every ``wait_seconds``) until all are done. ``done(job)`` and
    ``compute(job)``; ``compute`` runs with the job's claim held."""
    pending = [j for j in jobs if not done(j)]
    while pending:
        progressed = False
        for job in list(pending):
            if done(job):
                pending.remove(job)
                continue
            claim = _Claim(job[0])
            if not claim.take():
                continue
            try:
                if not done(job):
                    compute(job)
            finally:
                claim.release()
            pending.remove(job)
            progressed = True
        if pending and not progressed:
            time.sleep(wait_seconds)


def fingerprint_once(checkpoint: str | Path) -> str:
    """The fingerprint of a checkpoint's weights, hashed once per process per file
    (:func:`ccfv.bench.checkpoints.fingerprint_once`; imported here lazily: torch)."""
    from ccfv.bench.checkpoints import fingerprint_once as once

    return once(checkpoint)


def model_name(arch: str, source: str) -> str:
    """Bank model name: ``<arch>__<source task>`` or ``<arch>__scratch``."""
    return f"{arch}__{source}"


def bank_jobs(archs: Iterable[str], tasks: Iterable[str], target: str) -> list[tuple[str, str]]:
    """The ``(architecture, source)`` pairs of ``target``'s bank (leave one task out): every
    architecture pre-trained on every task but the target, and from scratch."""
    sources = [*(n for n in tasks if n != target), SCRATCH]
    return [(arch, src) for arch in archs for src in sources]


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


def _native_digest(config: BenchConfig, task: str) -> str:
    """'' for a target prepared at ``size`` (the digests its runs always had), else a digest
    of its native settings (patch, overlap, group): a native target's runs are other runs."""
    native = config.native(task)
    return "" if native is None else config.digest_of({"native": native})


def _device_digest(device: str) -> str:
    """'' on the CPU (the digests runs always had), else a digest of the device type: runs
    on another device are other runs (their numbers differ in the last digits)."""
    kind = str(device).split(":")[0]
    return "" if kind == "cpu" else BenchConfig.digest_of({"device": kind})


def pretrain_path(
    config: BenchConfig, arch: str, task: PreparedTask | None, work: Path, device: str = "cpu"
) -> Path:
    """Where :func:`pretrain` caches ``arch`` pre-trained on ``task`` (None: initialisation)."""
    source = task.name if task is not None else SCRATCH
    digest = config.digest("pretrain", "size", "channels", "max_cases", "split_seed")
    digest += _cases_digest(config, source)
    if task is not None:
        digest += _device_digest(device)
    return work / "pretrain" / f"{model_name(arch, source)}-{digest}.pt"


def pretrain(
    config: BenchConfig,
    arch: str,
    task: PreparedTask | None,
    work: Path,
    progress: bool,
    log,
    device: str = "cpu",
) -> Path:
    """The checkpoint of ``arch`` pre-trained on ``task`` (None: the seeded initialisation),
    trained on ``device`` (the weights are initialised on the CPU, so every device starts from
    the same ones). With ``pretrain.val_fraction``, that fraction of the source's cases (by
    group) is held out: the checkpoint is the one of best validation Dice (checked every
    ``pretrain.eval_every`` steps and at the end) and its meta records ``source_val_dice``; a
    source of a single case (group) has nothing to hold out and is trained on it, without."""
    import torch

    from ccfv.bench.tasks import _group_keys, carve_validation
    from ccfv.bench.train import (
        ARCHITECTURES,
        dice_per_case,
        mean_dice,
        save_checkpoint,
        set_seed,
        train,
    )

    cfg = config["pretrain"]
    source = task.name if task is not None else SCRATCH
    n_out = task.n_classes if task is not None else 2
    path = pretrain_path(config, arch, task, work, device)
    if path.is_file():
        return path
    set_seed(cfg["seed"])
    model = ARCHITECTURES[arch](config["channels"], n_out, config["size"])
    meta = {"arch": arch, "source": source, "out_channels": n_out, "pretrain": cfg}
    if task is not None:
        model.to(device)
        start = time.perf_counter()
        every = np.arange(len(task.case_ids), dtype=np.int64)
        fit, val = every, np.zeros(0, dtype=np.int64)
        folder = config.task_specs[source].parent or source
        group = config["groups"].get(folder)
        if cfg["val_fraction"] > 0 and len(set(_group_keys(task.case_ids, group, source))) < 2:
            log(
                f"pre-training {arch} on {source}: {len(task.case_ids)} case(s), too few to "
                "hold any out: no source validation Dice"
            )
        elif cfg["val_fraction"] > 0:
            whole = PreparedTask(
                task.name,
                task.images,
                task.labels,
                task.case_ids,
                every,
                np.zeros(0, dtype=np.int64),
                task.class_names,
                task.train_folder,
            )
            fit, val = carve_validation(whole, cfg["val_fraction"], config["split_seed"], group)

        def validate(net):
            value = mean_dice(
                dice_per_case(net, task.images[val], task.labels[val], n_classes=n_out)
            )
            return 0.0 if value is None else value

        info = train(
            model,
            task.images[fit],
            task.labels[fit],
            steps=cfg["steps"],
            batch_size=cfg["batch_size"],
            lr=cfg["lr"],
            seed=cfg["seed"],
            schedule=cfg["schedule"],
            validate=validate if val.size else None,
            eval_every=cfg["eval_every"],
            progress=f"pre-train {arch} on {source}" if progress else None,
        )
        meta.update(info)
        if val.size:
            meta.update(
                source_val_dice=info["best_value"], source_val_cases=[task.case_ids[i] for i in val]
            )
        log(
            f"pre-trained {arch} on {source}: loss {info['loss_first']:.3f} -> "
            f"{info['loss_last']:.3f} in {time.perf_counter() - start:.0f} s"
            + (
                f", validation Dice {info['best_value']:.4f} (step {info['best_step']})"
                if val.size
                else ""
            )
        )
    with torch.no_grad():
        save_checkpoint(model, path, meta)
    return path


def failure_path(run: Path) -> Path:
    """Where a fine-tuning run that raised records its error (beside the run's cache file): the
    run counts as done, its model is left out of the target's ground truth, and deleting the
    file makes the next invocation try it again."""
    return run.with_name(f"{run.stem}.failed.json")


def finetune_settings(config: BenchConfig, target: str, steps: int | None = None) -> dict:
    """``finetune`` of the config for target ``target``: its ``steps`` from ``steps`` if given,
    else from the target's ``finetune_steps``, else ``finetune.steps``; its ``seeds`` the
    target's (``finetune_seeds``, else ``finetune.seeds``: in no cache digest)."""
    cfg = dict(config["finetune"])
    cfg["seeds"] = config.finetune_seeds(target)
    if steps is None:
        steps = config.finetune_steps(target)
    if steps is not None:
        cfg["steps"] = int(steps)
    return cfg


def finetune_path(
    config: BenchConfig,
    name: str,
    target: PreparedTask | NativeTask,
    seed: int,
    work: Path,
    device: str = "cpu",
    steps: int | None = None,
    folder: str = "finetune",
    checkpoint: str | None = None,
) -> Path:
    """Where :func:`finetune` caches one run (``steps`` overrides ``finetune.steps`` and the
    target's ``finetune_steps``).

    ``checkpoint``: the fingerprint of the run's starting checkpoint
    (:func:`ccfv.bench.checkpoints.checkpoint_fingerprint`), required for the benchmark's runs
    (``folder="finetune"``): a digest of it ends their digest, so that a run is reused only
    with the very weights it was fine-tuned from (pre-training is not reproducible across
    machines; the config alone does not name the weights). The convergence study's runs
    (``folder="convergence"``) keep their names without it (they only set the budgets, and
    re-running them costs an hour): their ``checkpoint`` is ignored."""
    if folder == "finetune" and not checkpoint:
        raise ValueError(
            "finetune_path: a fine-tuning run's cache name needs the fingerprint of its "
            "starting checkpoint (checkpoint=...)"
        )
    cfg = finetune_settings(config, target.name, steps)
    # the seed is in the file name, not the digest: adding a seed keeps the runs already made
    digest = config.digest(
        "pretrain", "size", "channels", "max_cases", "split_seed", "test_fraction"
    ) + config.digest_of(digest_view("finetune", {k: v for k, v in cfg.items() if k != "seeds"}))
    if config["groups"].get(target.name):  # a split by patient is another split
        digest += config.digest_of(config["groups"][target.name])
    if config.train_cases(target.name) is not None:
        digest += config.digest_of({"train_cases": config.train_cases(target.name)})
    digest += _cases_digest(config, target.name) + _native_digest(config, target.name)
    digest += _device_digest(device)
    if folder == "finetune":
        digest += config.digest_of({"checkpoint": checkpoint})
    return work / folder / target.name / f"{name}__{digest}__seed{seed}.json"


def finetune(
    config: BenchConfig,
    arch: str,
    checkpoint: Path,
    name: str,
    target: PreparedTask | NativeTask,
    seed: int,
    work: Path,
    progress: bool,
    device: str = "cpu",
    steps: int | None = None,
    folder: str = "finetune",
) -> dict:
    """Fine-tune one bank model on the target's train split (on ``device``); Dice on its test
    split, per class and per test case. With ``finetune.val_fraction``, a validation split
    carved out of target-train (by group, the same for every model and seed) selects the
    checkpoint (every ``finetune.eval_every`` steps and at the end); the test split never
    does. ``steps`` overrides ``finetune.steps`` (the convergence study, cached in
    ``folder``).

    A native target (:class:`NativeTask`, the config's ``native``) is trained on random
    patches of its native-resolution images (:func:`ccfv.bench.training.train_patches`:
    the same steps, batch, optimiser, schedule, seeds and augmentation), and its validation
    and test Dice come from sliding-window predictions of whole images on the label's own
    grid (:func:`ccfv.bench.dice.dice_per_case_sliding`, windows of the patch size, the
    native ``overlap``)."""
    from ccfv.bank.checkpoint import load_torch_file
    from ccfv.bench.tasks import carve_validation
    from ccfv.bench.train import (
        ARCHITECTURES,
        dice_per_case,
        dice_per_case_sliding,
        head_module,
        load_pretrained,
        mean_dice,
        set_seed,
        train,
        train_patches,
    )

    native = config.native(target.name)
    if (native is not None) != isinstance(target, NativeTask):
        raise ValueError(
            f"target {target.name}: the config says {'native' if native else 'size'}, the "
            f"prepared task is {type(target).__name__}"
        )
    cfg = finetune_settings(config, target.name, steps)
    fingerprint = fingerprint_once(checkpoint)
    path = finetune_path(config, name, target, seed, work, device, steps, folder, fingerprint)
    if path.is_file():
        return json.loads(path.read_text())
    fit, val = carve_validation(
        target, cfg["val_fraction"], config["split_seed"], config.split_group(target.name)
    )
    set_seed(seed)
    model = ARCHITECTURES[arch](config["channels"], target.n_classes, config["size"])
    state = load_torch_file(checkpoint, f"benchmark checkpoint {checkpoint}")["state_dict"]
    loaded = load_pretrained(model, state, head_module(arch))
    model.to(device)
    common = dict(
        steps=cfg["steps"],
        batch_size=cfg["batch_size"],
        lr=cfg["lr"],
        seed=seed,
        schedule=cfg["schedule"],
        eval_every=cfg["eval_every"],
        progress=f"fine-tune {name} on {target.name} (seed {seed})" if progress else None,
    )
    if isinstance(target, NativeTask) and native is not None:
        native_task = target

        def dice_of(net, index: np.ndarray) -> np.ndarray:
            return dice_per_case_sliding(
                net,
                [native_task.images[i] for i in index],
                [native_task.labels[i] for i in index],
                n_classes=native_task.n_classes,
                roi=native["patch"],
                overlap=native["overlap"],
            )

    else:
        plain = target

        def dice_of(net, index: np.ndarray) -> np.ndarray:
            return dice_per_case(
                net, plain.images[index], plain.labels[index], n_classes=plain.n_classes
            )

    def validate(net):
        value = mean_dice(dice_of(net, val))
        return 0.0 if value is None else value

    start = time.perf_counter()
    if isinstance(target, NativeTask) and native is not None:
        info = train_patches(
            model,
            [target.images[i] for i in fit],
            [target.labels[i] for i in fit],
            patch=native["patch"],
            validate=validate if val.size else None,
            **common,
        )
    else:
        info = train(
            model,
            target.images[fit],
            target.labels[fit],
            validate=validate if val.size else None,
            **common,
        )
    per_case = dice_of(model, target.test)
    with np.errstate(all="ignore"):
        counts = np.isfinite(per_case).sum(axis=0)
        per_class = np.where(
            counts > 0, np.nansum(per_case, axis=0) / np.maximum(counts, 1), np.nan
        )
    names = [target.class_names.get(k + 1, str(k + 1)) for k in range(per_case.shape[1])]
    result = {
        "model": name,
        "target": target.name,
        "seed": seed,
        "checkpoint": fingerprint,
        "dice": mean_dice(per_case),
        "dice_per_class": {
            c: (float(v) if math.isfinite(v) else None) for c, v in zip(names, per_class)
        },
        "dice_per_case": {
            target.case_ids[i]: [float(v) if math.isfinite(v) else None for v in row]
            for i, row in zip(target.test, per_case)
        },
        "seconds": time.perf_counter() - start,
        "device": str(device),
        "steps": cfg["steps"],
        "loss_first": info["loss_first"],
        "loss_last": info["loss_last"],
        "loaded_tensors": loaded["loaded"],
        "reinitialised": loaded["reinitialised"],
    }
    if isinstance(target, NativeTask) and native is not None:
        result["native"] = {"patch": native["patch"], "overlap": native["overlap"]}
    if val.size:
        result["validation"] = {
            "cases": [target.case_ids[i] for i in val],
            "curve": info["curve"],
            "best_step": info["best_step"],
            "best_dice": info["best_value"],
        }
    _write_json(path, result)
    return result


def write_bank(
    config: BenchConfig, target: PreparedTask | NativeTask, bank: dict[str, tuple], work: Path
) -> Path:
    """The bank YAML of one target: every model with its network, checkpoint, layers auto.
    Its ``roi`` is the benchmark's ``size`` (a prepared image is one window), or for a native
    target the patch size with the native ``overlap``: ``ccfv rank`` then extracts the
    features of each native-resolution train image by sliding windows, the windows the
    fine-tuned networks see."""
    from ccfv.bank.checkpoint import load_torch_file
    from ccfv.bench.train import network_spec

    native = config.native(target.name)
    window = (
        {"roi": config.spatial_size}
        if native is None
        else {"roi": native["patch"], "overlap": native["overlap"]}
    )
    models = []
    for name, (arch, checkpoint) in bank.items():
        meta = load_torch_file(checkpoint, f"benchmark checkpoint {checkpoint}")["meta"]
        spec = network_spec(arch, config["channels"], meta["out_channels"], config["size"])
        models.append(
            {
                "name": name,
                **spec,
                "checkpoint": str(Path(checkpoint).resolve()),
                "layers": "auto",
                "preprocessing": {
                    "intensity": {
                        "kind": "range",
                        "a_min": 0,
                        "a_max": 255,
                        "b_min": 0,
                        "b_max": 1,
                    },
                    **window,
                },
            }
        )
    path = work / "scores" / target.name / "bank.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"models": models}, sort_keys=False))
    return path


def class_consistency(features: dict, class_names: dict[int, str]) -> dict:
    """``{variant: {class name: [per-layer mean W2 between the cases' class Gaussians]}}``:
    the per-class consistency (lower = more consistent) of one model's features, for the
    default CC-FV (Gaussians on the unit sphere) and the paper's equations."""
    from ccfv.estimators.ccfv import ccfv_parts

    out = {}
    for name, options in CLASS_CONSISTENCY.items():
        with collect_ccfv_warnings():
            parts = ccfv_parts(features, "paper", **options)
        per_class: dict[str, list] = {}
        for layer in parts.layers:
            for k, value in layer.class_consistency.items():
                per_class.setdefault(class_names.get(k, str(k)), []).append(float(value))
        out[name] = per_class
    return out


def score_target(
    config: BenchConfig,
    target: PreparedTask | NativeTask,
    bank_file: Path,
    work: Path,
    progress: bool,
    log,
    device: str = "cpu",
) -> tuple[dict, dict]:
    """Every method's score of every bank model on the target's train split, and each
    model's per-class consistency (:func:`class_consistency`)."""
    from ccfv.rank import rank

    cfg = config["scoring"]
    common = dict(
        cases=min(cfg["cases"], len(target.train)),
        seed=cfg["seed"],
        device=device,
        counts=cfg["counts"],
        cache_dir=work / "features",
        bootstrap=0,
        progress=progress,
        log=lambda *_: None,
    )
    per_class = {}

    def record(model, features, _predictions):
        per_class[model] = class_consistency(features, target.class_names)

    began = time.perf_counter()
    with collect_ccfv_warnings():
        fixed = rank(
            bank_file,
            target.train_folder,
            methods=cfg["methods"],
            budget="fixed",
            on_model=record,
            **common,
        )
        seconds = time.perf_counter() - began  # every method of scoring.methods, one feature pass
        scores = {m: dict(v) for m, v in fixed.scores.items()}
        failures = dict(fixed.failures)
        if cfg["proportional"]:
            prop = rank(
                bank_file,
                target.train_folder,
                methods=cfg["proportional"],
                budget="proportional",
                **common,
            )
            for model, values in prop.scores.items():
                for method, value in values.items():
                    scores[model][method + PROPORTIONAL] = value
            failures.update({m: e for m, e in prop.failures.items() if m not in failures})
    for model, error in failures.items():
        log(f"{target.name}: {model}: scoring FAILED: {error}")
    return scores, {
        "seconds": seconds,
        "cases": fixed.details["cases"],
        "failures": failures,
        "class_consistency": per_class,
    }


def _pretrain_seconds(paths) -> float:
    """Training time recorded in the pre-trained checkpoints (0 for initialisations)."""
    from ccfv.bank.checkpoint import load_torch_file

    return float(
        sum(
            load_torch_file(p, f"benchmark checkpoint {p}")["meta"].get("seconds", 0.0)
            for p in set(paths)
        )
    )


def _prepare_all(
    config: BenchConfig, work: Path, log
) -> tuple[dict[str, PreparedTask], dict[str, PreparedTask | NativeTask]]:
    """Every task at ``size`` (what pre-training reads), and every target as it is fine-tuned
    and scored: the same prepared task, or for a native target (``native``) the task at its
    native resolution. A native target's task at ``size`` is prepared as a source (without
    ``train_cases``), exactly as when it was a source only, so its pre-training stays."""
    tasks = {}
    targets = set(config.targets)
    for name, spec in config.task_specs.items():
        folder = spec.parent or name
        as_target = name in targets and config.native(name) is None
        tasks[name] = prepare_task(
            spec.path,
            work,
            size=config["size"],
            channels=config["channels"],
            max_cases=config["max_cases"],
            test_fraction=config["test_fraction"],
            split_seed=config["split_seed"],
            group=config["groups"].get(folder),
            reserve=config["source_cases"].get(folder, 0),
            derived=spec.labels,
            name=name,
            train_cases=(config.train_cases(name) if as_target else None),
        )
        t = tasks[name]
        if spec.parent:
            role = f"source only ({len(t.train)} cases set aside from {spec.parent})"
        elif len(t.test) == 0:
            role = f"source only ({len(t.train)} case(s), too few to split)"
        elif not as_target and name in targets:
            role = f"{len(t.case_ids)} cases at size {config['size']} (as a source)"
        else:
            role = f"{len(t.train)} train / {len(t.test)} test cases"
            if t.reserved:
                role += f", {len(t.reserved)} set aside for derived source tasks"
        log(f"task {name}: {role}, {t.n_classes - 1} foreground class(es)")
    prepared: dict[str, PreparedTask | NativeTask] = {}
    for name in config.targets:
        native = config.native(name)
        if native is None:
            prepared[name] = tasks[name]
            continue
        target = prepare_native_task(
            config.task_specs[name].path,
            work,
            ndim=len(config.spatial_size),
            channels=config["channels"],
            max_cases=config["max_cases"],
            test_fraction=config["test_fraction"],
            split_seed=config["split_seed"],
            group=config.split_group(name),
            train_cases=config.train_cases(name),
        )
        prepared[name] = target
        shapes = target.shapes
        log(
            f"task {name} (native target): {len(target.train)} train / {len(target.test)} "
            f"test cases at native resolution ({', '.join(shapes[:3])}"
            f"{', ...' if len(shapes) > 3 else ''}), patches of "
            f"{'x'.join(map(str, native['patch']))}"
        )
    for name in config.targets:
        if len(prepared[name].test) == 0 or len(prepared[name].train) < 2:
            raise UserError(
                f"{config.source}: target {name} has {len(prepared[name].train)} "
                f"train and {len(prepared[name].test)} test case(s); a target needs at "
                "least 2 train and 1 test case: make it a source only (`targets`)"
            )
    return tasks, prepared


def _pretrain_all(config, tasks, jobs, work, progress, log, device) -> dict:
    """Every (arch, source) checkpoint of ``jobs``, shared with other processes by claims."""
    paths = {
        (arch, src): pretrain_path(
            config, arch, None if src == SCRATCH else tasks[src], work, device
        )
        for arch, src in jobs
    }
    _run_claimed(
        [(paths[j], j) for j in jobs],
        lambda job: job[0].is_file(),
        lambda job: pretrain(
            config,
            job[1][0],
            None if job[1][1] == SCRATCH else tasks[job[1][1]],
            work,
            progress,
            log,
            device,
        ),
    )
    return paths


def _scores_path(
    config: BenchConfig,
    target: PreparedTask | NativeTask,
    work: Path,
    device: str,
    fingerprints: dict[str, str],
) -> Path:
    """Where the scores of ``target`` are cached: digests of the config and of
    ``fingerprints``, ``{model: checkpoint fingerprint}`` of the target's bank (sorted), so
    that scores are never reused with other weights than the ones scored."""
    if not fingerprints:
        raise ValueError("_scores_path: give the checkpoint fingerprints of the target's bank")
    digest = config.digest(
        "pretrain",
        "size",
        "channels",
        "max_cases",
        "split_seed",
        "test_fraction",
        "scoring",
        "architectures",
        "groups",
    )
    digest += config.digest_of({"train_cases": config.train_cases(target.name)})
    digest += _cases_digest(config, target.name) + _native_digest(config, target.name)
    digest += _device_digest(device)
    digest += config.digest_of({"checkpoints": dict(sorted(fingerprints.items()))})
    return work / "scores" / target.name / f"scores-{digest}.json"


def run_bench(
    config: BenchConfig,
    work: str | Path,
    out: str | Path,
    *,
    progress: bool = True,
    log: Callable[[str], object] | None = None,
    device: str = "cpu",
) -> dict:
    """Run (or resume) the whole benchmark; write results to ``out``; return the summary.

    ``device`` (``cpu``, ``cuda``, ``cuda:1``) runs pre-training, fine-tuning and the feature
    passes there; runs on a GPU are cached apart from CPU runs. Several processes may share
    one ``work`` folder (e.g. two ``--threads 1`` processes on two cores): each stage is
    claimed by a lock file, so they split the pre-training, the fine-tuning runs of each target
    (target after target) and the scoring; each writes the results when all are done."""
    from ccfv.bench.report import write_results

    log = log or _logger.info
    _check_device(device)
    work, out = Path(work), Path(out)
    start = time.time()
    tasks, prepared = _prepare_all(config, work, log)
    archs = config["architectures"]
    targets = config.targets
    jobs = [(arch, SCRATCH) for arch in archs] + [
        (arch, name) for arch in archs for name in tasks if any(t != name for t in targets)
    ]
    checkpoints = _pretrain_all(config, tasks, jobs, work, progress, log, device)
    # each checkpoint's weights hashed once: the fine-tuning runs and scores are tied to them
    fingerprints = {job: fingerprint_once(path) for job, path in checkpoints.items()}

    def bank_fingerprints(target_name: str) -> dict[str, str]:
        """``{model: fingerprint}`` of the target's bank (its runs' and scores' cache names)."""
        return {model_name(*j): fingerprints[j] for j in bank_jobs(archs, tasks, target_name)}

    sources = {
        f"{arch}__{src}": {
            k: meta.get(k) for k in ("source_val_dice", "loss_last", "steps", "seconds")
        }
        for (arch, src), meta in ((j, _meta(checkpoints[j])) for j in jobs)
        if src != SCRATCH
    }
    summary: dict[str, Any] = {"config": config.raw, "targets": {}, "sources": sources}
    if config.targets_of_config is not None and list(config.targets_of_config) != targets:
        # a report of some targets while the others train (``--targets``): not the full run
        summary["interim"] = {"targets": targets, "of": list(config.targets_of_config)}
    for target_name in targets:
        target = prepared[target_name]
        bank = {
            model_name(*j): (j[0], checkpoints[j]) for j in bank_jobs(archs, tasks, target_name)
        }
        seeds = config.finetune_seeds(target_name)  # finetune_seeds, else finetune.seeds
        bank_fp = bank_fingerprints(target_name)

        def run_path(name, seed, target=target, bank_fp=bank_fp):
            return finetune_path(config, name, target, seed, work, device, checkpoint=bank_fp[name])

        runs_of = [(run_path(name, seed), (name, seed)) for name in bank for seed in seeds]

        def compute(job, target=target, bank=bank):
            name, seed = job[1]
            try:
                result = finetune(
                    config, bank[name][0], bank[name][1], name, target, seed, work, progress, device
                )
            except KeyboardInterrupt:
                raise
            except Exception as error:  # noqa: BLE001 - one failing run is that model's alone
                failed = failure_path(job[0])
                why = (
                    str(error)
                    if isinstance(error, UserError)
                    else f"{type(error).__name__}: {first_line(error)}"
                )
                _write_json(failed, {"model": name, "seed": seed, "error": why})
                log(
                    f"{target.name}: {name}: seed {seed}: FAILED: {why} (left out of the "
                    f"ground truth; delete {failed} to try it again)"
                )
                return
            log(
                f"{target.name}: {name}: seed {seed}: fine-tuned Dice "
                + ("n/a" if result["dice"] is None else f"{result['dice']:.4f}")
                + (
                    f" (validation {result['validation']['best_dice']:.4f} at step "
                    f"{result['validation']['best_step']})"
                    if "validation" in result
                    else ""
                )
            )

        _run_claimed(
            runs_of, lambda job: job[0].is_file() or failure_path(job[0]).is_file(), compute
        )
        models = {}
        failed_runs: dict[str, list[str]] = {}
        for name in bank:
            paths = [run_path(name, seed) for seed in seeds]
            errors = [
                f"seed {seed}: {json.loads(failure_path(path).read_text())['error']}"
                for seed, path in zip(seeds, paths)
                if not path.is_file()
            ]
            if errors:  # a model is in the ground truth only with every seed's run
                failed_runs[name] = errors
                continue
            runs = [json.loads(path.read_text()) for path in paths]
            models[name] = {
                "dice": [r["dice"] for r in runs],
                "dice_per_class": [r["dice_per_class"] for r in runs],
                "finetune_seconds": [r["seconds"] for r in runs],
            }
            if all("dice_per_case" in r for r in runs):
                models[name]["dice_per_case"] = [r["dice_per_case"] for r in runs]
            if all("validation" in r for r in runs):
                models[name]["validation_dice"] = [r["validation"]["best_dice"] for r in runs]
                # what the replay of select reads (ccfv.bench.selection)
                models[name]["validation_curve"] = [r["validation"]["curve"] for r in runs]
            log(
                f"{target_name}: {name}: fine-tuned Dice "
                + ", ".join("n/a" if d is None else f"{d:.4f}" for d in models[name]["dice"])
            )
        summary["targets"][target_name] = {
            "models": models,
            "classes": [target.class_names.get(k, str(k)) for k in range(1, target.n_classes)],
            "spatial_dims": len(config.spatial_size),
            "finetune_steps": finetune_settings(config, target_name)["steps"],
            "seeds": seeds,
            "train": [target.case_ids[i] for i in target.train],
            "test": [target.case_ids[i] for i in target.test],
        }
        if failed_runs:
            summary["targets"][target_name]["finetune_failures"] = failed_runs
        native = config.native(target_name)
        if native is not None and isinstance(target, NativeTask):
            summary["targets"][target_name]["native"] = {
                "patch": native["patch"],
                "overlap": native["overlap"],
                "shapes": target.shapes,
            }
        _write_json(work / "summary.partial.json", summary)

    # scoring, target after target; a target another process is scoring is read at the end
    def score(job):
        target = prepared[job[1]]
        bank = {
            model_name(*j): (j[0], checkpoints[j]) for j in bank_jobs(archs, tasks, target.name)
        }
        bank_file = write_bank(config, target, bank, work)
        scores, info = score_target(config, target, bank_file, work, progress, log, device)
        _write_json(job[0], {"scores": scores, "info": info})

    score_jobs = [
        (_scores_path(config, prepared[t], work, device, bank_fingerprints(t)), t) for t in targets
    ]
    _run_claimed(score_jobs, lambda job: job[0].is_file(), score)
    for path, target_name in score_jobs:
        cached = json.loads(path.read_text())
        scores, info = cached["scores"], cached["info"]
        entry = summary["targets"][target_name]
        for name, model in entry["models"].items():
            model["scores"] = scores.get(name, {})
            model["class_consistency"] = info["class_consistency"].get(name, {})
        entry.update(scored_cases=info["cases"], failures=info["failures"])
        entry["scoring_seconds"] = info.get("seconds")  # absent from scores cached before
        _write_json(work / "summary.partial.json", summary)
    summary["wall_seconds"] = time.time() - start
    summary["pretrain_seconds"] = _pretrain_seconds(checkpoints.values())
    write_results(summary, config, out)
    return summary


def _meta(path: Path) -> dict:
    from ccfv.bank.checkpoint import load_torch_file

    return load_torch_file(path, f"benchmark checkpoint {path}")["meta"]


def _check_device(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserError(
                f"--device {device}: torch sees no CUDA GPU here; use --device cpu "
                "(the default) or install a CUDA build of torch"
            )


def convergence_config(config: BenchConfig) -> BenchConfig:
    """The config of the convergence study's runs: ``config`` with ``finetune.eval_every``
    set to ``convergence.eval_every`` (their cache names follow from it, :func:`finetune_path`
    with the budget as ``steps`` and ``folder="convergence"``)."""
    base = dict(config.raw)
    base["finetune"] = {**config["finetune"], "eval_every": config["convergence"]["eval_every"]}
    return BenchConfig(raw=base, source=config.source)


def run_convergence(
    config: BenchConfig,
    work: str | Path,
    out: str | Path,
    *,
    progress: bool = True,
    log: Callable[[str], object] | None = None,
    device: str = "cpu",
) -> dict:
    """The convergence study that chooses ``finetune.steps``: per target, for each architecture
    of ``convergence.architectures`` (default: the first), the scratch model and the model
    pre-trained on the first other source task are fine-tuned with seed ``convergence.seed``
    for every budget of ``convergence.budgets`` (each a full run of its own, the learning-rate
    schedule spanning its budget), their validation Dice recorded every
    ``convergence.eval_every`` steps. Written: ``out/convergence.json`` (per target, model and
    budget: the curve, best and final validation Dice, test Dice; per target the
    :func:`budget_rule`, or ``{"not_applied": reason}`` when the budgets lack
    ``finetune.steps`` or twice it) and ``out/convergence_<target>.png``. Cached in
    ``work/convergence``; shares the pre-training cache and the claims of :func:`run_bench`."""
    log = log or _logger.info
    _check_device(device)
    work, out = Path(work), Path(out)
    tasks, prepared = _prepare_all(config, work, log)
    conv = config["convergence"]
    archs = conv["architectures"] or config["architectures"][:1]
    plan = {}
    for target_name in config.targets:
        source = next(n for n in tasks if n != target_name)
        plan[target_name] = [(arch, SCRATCH) for arch in archs] + [(a, source) for a in archs]
    jobs = list(dict.fromkeys(j for js in plan.values() for j in js))
    checkpoints = _pretrain_all(config, tasks, jobs, work, progress, log, device)
    study = {"budgets": conv["budgets"], "seed": conv["seed"], "targets": {}}
    study_config = convergence_config(config)
    for target_name, models in plan.items():
        target = prepared[target_name]
        runs = [
            (
                finetune_path(
                    study_config,
                    model_name(a, s),
                    target,
                    conv["seed"],
                    work,
                    device,
                    steps,
                    "convergence",
                ),
                (a, s, steps),
            )
            for a, s in models
            for steps in conv["budgets"]
        ]

        def compute(job, target=target):
            arch, src, steps = job[1]
            result = finetune(
                study_config,
                arch,
                checkpoints[(arch, src)],
                model_name(arch, src),
                target,
                conv["seed"],
                work,
                progress,
                device,
                steps=steps,
                folder="convergence",
            )
            log(
                f"convergence {target.name}: {model_name(arch, src)}: {steps} steps: test Dice "
                f"{result['dice']}"
            )

        _run_claimed(runs, lambda job: job[0].is_file(), compute)
        entry: dict[str, dict[str, Any]] = {}
        for path, (arch, src, steps) in runs:
            r = json.loads(path.read_text())
            v = r.get("validation", {})
            entry.setdefault(model_name(arch, src), {})[str(steps)] = {
                "curve": v.get("curve"),
                "best_validation_dice": v.get("best_dice"),
                "best_step": v.get("best_step"),
                "final_validation_dice": (v["curve"][-1][1] if v.get("curve") else None),
                "test_dice": r["dice"],
                "seconds": r["seconds"],
            }
        study["targets"][target_name] = entry
        try:
            rule = budget_rule(entry, int(config["finetune"]["steps"]), conv["budgets"])
        except UserError as error:  # budgets without finetune.steps and twice it: no rule
            study.setdefault("budget_rule", {})[target_name] = {"not_applied": str(error)}
            log(f"convergence {target_name}: budget rule not applied: {error}")
            continue
        study.setdefault("budget_rule", {})[target_name] = rule
        configured = finetune_settings(config, target_name)["steps"]
        log(
            f"convergence {target_name}: budget rule: {rule['steps']} steps ("
            + ", ".join(f"{m} {g:+.3f}" for m, g in rule["gains"].items())
            + f" test Dice from {rule['from']} to {rule['to']} steps)"
            + (
                ""
                if rule["steps"] == configured
                else f"; the config gives {configured}: set finetune_steps: "
                f"{{{target_name}: {rule['steps']}}} in {config.source}"
            )
        )
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "convergence.json", study)
    from ccfv.bench.report import plot_convergence

    for target_name, entry in study["targets"].items():
        plot_convergence(target_name, entry, out / f"convergence_{target_name}.png")
    return study


def budget_rule(
    entry: dict[str, dict[str, dict]], steps: int, budgets: list[int], threshold: float = 0.01
) -> dict:
    """The budget rule of the v2 config, written down before its fine-tuning runs: a target
    keeps ``steps`` (``finetune.steps``) when doubling the budget from ``steps`` to ``2 * steps``
    gains < ``threshold`` test Dice for every studied model; otherwise it gets the largest
    studied budget (and is reported "not converged" with the gains). ``entry``: one target of
    the convergence study (model -> budget -> ``{"test_dice": ...}``). Returns ``{"steps",
    "converged", "from", "to", "gains": {model: gain}}``."""
    larger = 2 * int(steps)
    if int(steps) not in budgets or larger not in budgets:
        raise UserError(
            f"convergence.budgets {budgets}: the budget rule compares finetune.steps ({steps}) "
            f"with twice it ({larger}); give budgets that include both"
        )
    gains = {}
    for model, runs in entry.items():
        low, high = runs[str(steps)]["test_dice"], runs[str(larger)]["test_dice"]
        gains[model] = None if low is None or high is None else float(high) - float(low)
    converged = all(g is not None and g < threshold for g in gains.values())
    chosen = int(steps) if converged else max(int(b) for b in budgets)
    return {
        "steps": chosen,
        "converged": converged,
        "from": int(steps),
        "to": larger,
        "gains": gains,
    }
