"""The benchmark's config file: tasks, architectures, sizes, budgets, seeds, methods.

A YAML file (``benchmarks/transfer2d.yaml`` is the one we run)::

    name: transfer2d
    data_root: ../../shared/data          # relative to this file; task folders inside
    tasks: [drive_retinal_vessels, chase_retinal_vessels, isbi_em_membranes,
            ph2_skin_lesions, hc18_fetal_head]
    targets: all                          # or a list: which tasks are targets (leave-one-out)
    size: 64                              # every image resized to size x size
    channels: 3                           # grey images repeated to 3 channels
    max_cases: 80                         # at most this many cases per task (seeded pick)
    test_fraction: 0.3                    # per task, a fixed seeded train/test split
    split_seed: 0
    groups:                               # split by patient, never by slice: a regular
      acdc_cine_mri2d: "^(patient\\d+)_"   # expression whose group 1 is the patient id
    architectures: [unet, unetr]          # see ccfv.bench.train.ARCHITECTURES
    pretrain: {steps: 600, batch_size: 8, lr: 0.001, seed: 0}
    finetune: {steps: 150, batch_size: 8, lr: 0.001, seeds: [0, 1]}
    scoring:
      cases: 12                           # target-train cases the estimators see
      seed: 0
      counts: [100, 200, 400]
      methods: [ccfv, ccfv-official, logme, transrate, leep, gbc]
      proportional: [ccfv, ccfv-official] # also scored with the proportional budget
    quick: {...}                          # overrides for --quick (same keys)

Any folder in Decathlon layout (``dataset.json`` + images/labels) can be a task: ``tasks``
entries are folder names under ``data_root`` or paths. Every key has a default (below), so a
config names only what it changes. Unknown keys are an error that names them.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from ccfv.errors import UserError

DEFAULTS: dict = {
    "name": "transfer2d",
    "data_root": ".",
    "tasks": [],
    "targets": "all",
    "size": 64,
    "channels": 3,
    "max_cases": 80,
    "test_fraction": 0.3,
    "split_seed": 0,
    "groups": {},
    "architectures": ["unet", "unetr"],
    "pretrain": {"steps": 600, "batch_size": 8, "lr": 1e-3, "seed": 0},
    "finetune": {"steps": 150, "batch_size": 8, "lr": 1e-3, "seeds": [0, 1]},
    "scoring": {
        "cases": 12, "seed": 0, "counts": [100, 200, 400],
        "methods": ["ccfv", "ccfv-official", "logme", "transrate", "leep", "gbc", "hscore",
                    "reg-hscore", "nleep", "nce", "parc", "sfda"],
        "proportional": ["ccfv", "ccfv-official"],
    },
    "quick": {
        "size": 32, "max_cases": 10, "test_fraction": 0.4,
        "pretrain": {"steps": 12}, "finetune": {"steps": 6},
        "scoring": {"cases": 4, "counts": [10, 20, 40]},
    },
}


#: Mapping-valued keys whose own keys are the user's (task names, profiles), not ours.
FREE_FORM = ("quick", "groups")


def _merge(base: dict, override: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if key not in base:
            raise UserError(f"{where}: unknown key {key!r}; known keys: "
                            f"{', '.join(base)}")
        if isinstance(base[key], dict) and key not in FREE_FORM:
            if not isinstance(value, dict):
                raise UserError(f"{where}: {key!r} must be a mapping, got {value!r}")
            out[key] = _merge(base[key], value, f"{where}.{key}")
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass(frozen=True)
class BenchConfig:
    """A resolved benchmark config (``raw`` holds every key; see the module docstring)."""

    raw: dict
    source: str

    def __getitem__(self, key):
        return self.raw[key]

    @property
    def task_paths(self) -> dict[str, Path]:
        root = Path(self.raw["data_root"])
        out = {}
        for entry in self.raw["tasks"]:
            path = Path(entry)
            path = path if path.is_absolute() or path.exists() else root / entry
            out[path.name] = path
        return out

    @property
    def targets(self) -> list[str]:
        names = list(self.task_paths)
        targets = self.raw["targets"]
        if targets == "all":
            return names
        unknown = [t for t in targets if t not in names]
        if unknown:
            raise UserError(f"{self.source}: targets {unknown} are not among the tasks {names}")
        return list(targets)

    def digest(self, *keys: str) -> str:
        """A short hash of the config values under ``keys`` (what a cached stage depends on)."""
        return self.digest_of({k: self.raw[k] for k in keys})

    @staticmethod
    def digest_of(value) -> str:
        """A short hash of any JSON-able value."""
        text = json.dumps(value, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


def load_config(path: str | Path, quick: bool = False) -> BenchConfig:
    """Read a benchmark config, fill the defaults, apply the ``quick`` overrides if asked."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"benchmark config {path} does not exist: pass a YAML file such as "
                        "benchmarks/transfer2d.yaml")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise UserError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of settings, got {type(raw).__name__}")
    config = _merge(DEFAULTS, raw, str(path))
    if quick:
        config = _merge(config, config.get("quick") or {}, f"{path}: quick")
        config["name"] = f"{config['name']}-quick"
    root = Path(config["data_root"])
    config["data_root"] = str(root if root.is_absolute() else (path.parent / root).resolve())
    if len(config["tasks"]) < 2:
        raise UserError(f"{path}: name at least 2 tasks (leave-one-task-out needs sources)")
    resolved = BenchConfig(raw=config, source=str(path))
    for name, task in resolved.task_paths.items():
        if not (task / "dataset.json").is_file():
            raise UserError(f"{path}: task {name!r}: {task / 'dataset.json'} not found; tasks "
                            "are Decathlon folders (dataset.json, imagesTr, labelsTr) under "
                            f"data_root ({root})")
    from ccfv.bench.train import ARCHITECTURES
    from ccfv.estimators.registry import get_estimator

    for arch in config["architectures"]:
        if arch not in ARCHITECTURES:
            raise UserError(f"{path}: unknown architecture {arch!r}; known: "
                            f"{', '.join(ARCHITECTURES)}")
    for method in config["scoring"]["methods"] + config["scoring"]["proportional"]:
        get_estimator(method)
    import re

    for task, pattern in config["groups"].items():
        if task not in resolved.task_paths:
            raise UserError(f"{path}: groups names task {task!r}, which is not among the "
                            f"tasks {list(resolved.task_paths)}")
        try:
            if re.compile(pattern).groups < 1:
                raise re.error("no capturing group")
        except (re.error, TypeError) as error:
            raise UserError(f"{path}: groups.{task}: {pattern!r} is not a regular expression "
                            f"with a capturing group for the patient id ({error})") from None
    if len(config["finetune"]["seeds"]) < 1:
        raise UserError(f"{path}: finetune.seeds is empty: give at least one seed")
    resolved.targets  # noqa: B018 -- validates the target names
    return resolved
