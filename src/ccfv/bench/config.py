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
    source_cases: {}                      # {task: N}: N cases (groups) set aside for the
                                          # source tasks derived from it (3D example below)
    native: {}                            # {task: {patch: 64}}: targets fine-tuned on native-
                                          # resolution patches, predicted by sliding windows
    architectures: [unet, unetr]          # see ccfv.bench.train.ARCHITECTURES
    pretrain: {steps: 600, batch_size: 8, lr: 0.001, seed: 0}
    finetune: {steps: 150, batch_size: 8, lr: 0.001, seeds: [0, 1]}
    scoring:
      cases: 12                           # target-train cases the estimators see
      seed: 0
      counts: [100, 200, 400]
      methods: [ccfv, ccfv-official, logme, transrate, leep, gbc]
      proportional: [ccfv, ccfv-official] # also scored with the proportional budget
    select: {top: [1, 2, 3, 5],           # ccfv select replayed on the fine-tuning runs: K,
             budgets: [1, 2]}             # and budgets in multiples of the fine-tuning steps
    quick: {...}                          # overrides for --quick (same keys)

Any folder in Decathlon layout (``dataset.json`` + images/labels) can be a task: ``tasks``
entries are folder names under ``data_root`` or paths. A 3D benchmark
(``benchmarks/chaos3d.yaml``) gives ``size`` as ``[x, y, z]`` and may derive source tasks from
subjects of its target that it sets aside (sources / target-train / target-test)::

    tasks:
      - chaos_t2spir_abdomen3d                                  # the target
      - spleen_ct_crop_3d                                       # another real volume
      - {name: chaos_liver, from: chaos_t2spir_abdomen3d, labels: {liver: [1]}}
    targets: [chaos_t2spir_abdomen3d]
    source_cases: {chaos_t2spir_abdomen3d: 6}   # 6 subjects for the derived tasks only

A derived task reads only the set-aside cases, with its classes remapped (``labels``: class
name -> label ids of the folder); it is a source, never a target. Every key has a default
(below), so a config names only what it changes. Unknown keys are an error that names them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass, replace
from numbers import Integral
from pathlib import Path

import yaml

from ccfv.bench.sizes import spatial_size
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
    "source_cases": {},
    "train_cases": None,
    # per-target fine-tuning budget {task: steps}, overriding finetune.steps for those targets
    "finetune_steps": {},
    # per-target fine-tuning seeds {task: [seeds]}, overriding finetune.seeds for those targets
    "finetune_seeds": {},
    # targets fine-tuned on native-resolution patches {task: {patch, overlap, group}} (NATIVE)
    "native": {},
    "architectures": ["unet", "unetr"],
    "pretrain": {
        "steps": 600,
        "batch_size": 8,
        "lr": 1e-3,
        "seed": 0,
        "schedule": "constant",
        "val_fraction": 0.0,
        "eval_every": 0,
    },
    "finetune": {
        "steps": 150,
        "batch_size": 8,
        "lr": 1e-3,
        "seeds": [0, 1],
        "schedule": "constant",
        "val_fraction": 0.0,
        "eval_every": 0,
    },
    "convergence": {
        "budgets": [250, 500, 1000, 2000],
        "eval_every": 50,
        "seed": 0,
        "architectures": None,
    },
    "scoring": {
        "cases": 12,
        "seed": 0,
        "counts": [100, 200, 400],
        "methods": [
            "ccfv",
            "ccfv-official",
            "logme",
            "transrate",
            "leep",
            "gbc",
            "hscore",
            "reg-hscore",
            "nleep",
            "nce",
            "parc",
            "sfda",
        ],
        "proportional": ["ccfv", "ccfv-official"],
    },
    # bootstrap replicates of the ground truth behind every interval of the reliability section
    "statistics": {"bootstrap": 1000},
    # ccfv select replayed on the fine-tuning runs (ccfv.bench.selection): K candidates, and
    # total budgets as multiples of the target's fine-tuning steps; read by the report only,
    # in no cache digest
    "select": {"top": [1, 2, 3, 5], "budgets": [1, 2]},
    "quick": {
        "size": 32,
        "max_cases": 10,
        "test_fraction": 0.4,
        "pretrain": {"steps": 12},
        "finetune": {"steps": 6},
        "scoring": {"cases": 4, "counts": [10, 20, 40]},
        "statistics": {"bootstrap": 100},
    },
}


#: Mapping-valued keys whose own keys are the user's (task names, profiles), not ours.
FREE_FORM = (
    "quick",
    "groups",
    "source_cases",
    "train_cases",
    "finetune_steps",
    "finetune_seeds",
    "native",
)

#: The options of a ``native`` target and their defaults (``patch`` None: the config's ``size``).
NATIVE = {"patch": None, "overlap": 0.25, "group": None}

#: Keys added by protocol v2 with the value that reproduces v1: left out of the cache digests
#: while they keep it, so that v1 caches keep their names.
V2_DEFAULTS = {
    "pretrain": {"schedule": "constant", "val_fraction": 0.0, "eval_every": 0},
    "finetune": {"schedule": "constant", "val_fraction": 0.0, "eval_every": 0},
}


def digest_view(key: str, value):
    """``value`` of config ``key`` without the v2 keys that hold their v1 value."""
    defaults = V2_DEFAULTS.get(key)
    if not defaults or not isinstance(value, dict):
        return value
    return {k: v for k, v in value.items() if not (k in defaults and v == defaults[k])}


def _merge(base: dict, override: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if key not in base:
            raise UserError(f"{where}: unknown key {key!r}; known keys: {', '.join(base)}")
        if isinstance(base[key], dict) and key not in FREE_FORM:
            if not isinstance(value, dict):
                raise UserError(f"{where}: {key!r} must be a mapping, got {value!r}")
            out[key] = _merge(base[key], value, f"{where}.{key}")
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass(frozen=True)
class TaskSpec:
    """One task of the config: a Decathlon folder, or a task derived from one's set-aside cases."""

    name: str
    path: Path
    parent: str | None = None  # derived: the task whose cases it reads
    labels: dict[str, list[int]] | None = None  # derived: class name -> the folder's label ids


@dataclass(frozen=True)
class BenchConfig:
    """A resolved benchmark config (``raw`` holds every key; see the module docstring)."""

    raw: dict
    source: str
    #: set by :meth:`only_targets`: every target of the config file, of which this runs some
    targets_of_config: tuple[str, ...] | None = None

    def __getitem__(self, key):
        return self.raw[key]

    def only_targets(self, names: list[str]) -> BenchConfig:
        """The same config restricted to some of its targets (``ccfv bench --targets``). The
        targets enter no cache digest, so the subset shares every cached stage with the full
        run; its summary says it is interim (``summary["interim"]``). A name may hold several
        targets separated by commas (``--targets a,b`` as ``--targets a b``)."""
        full = self.targets
        names = [n for name in names for n in name.split(",") if n]
        unknown = [t for t in names if t not in full]
        if unknown:
            raise UserError(
                f"--targets {' '.join(unknown)}: not a target of {self.source}; give some of "
                f"{', '.join(full)}"
            )
        raw = {**self.raw, "targets": list(dict.fromkeys(names))}
        return replace(self, raw=raw, targets_of_config=tuple(full))

    @property
    def task_specs(self) -> dict[str, TaskSpec]:
        """Every task by name, in config order (derived tasks point to their folder)."""
        root = Path(self.raw["data_root"])

        def folder(entry: str) -> Path:
            path = Path(entry)
            return path if path.is_absolute() or path.exists() else root / entry

        plain = {folder(e).name: folder(e) for e in self.raw["tasks"] if not isinstance(e, dict)}
        out = {}
        for entry in self.raw["tasks"]:
            if isinstance(entry, dict):
                parent = str(entry["from"])
                path = plain[parent] if parent in plain else folder(parent)
                out[str(entry["name"])] = TaskSpec(
                    str(entry["name"]),
                    path,
                    path.name,
                    {
                        str(k): [int(i) for i in (v if isinstance(v, list) else [v])]
                        for k, v in entry["labels"].items()
                    },
                )
            else:
                path = folder(entry)
                out[path.name] = TaskSpec(path.name, path)
        return out

    @property
    def task_paths(self) -> dict[str, Path]:
        """Every task's Decathlon folder by task name (a derived task: its parent's folder)."""
        return {name: spec.path for name, spec in self.task_specs.items()}

    @property
    def spatial_size(self) -> list[int]:
        """``size`` as one value per spatial axis (:func:`spatial_size`)."""
        return spatial_size(self.raw["size"])

    @property
    def targets(self) -> list[str]:
        specs = self.task_specs
        names = list(specs)
        targets = self.raw["targets"]
        if targets == "all":
            return [n for n in names if specs[n].parent is None]
        derived = [t for t in targets if t in specs and specs[t].parent is not None]
        if derived:
            raise UserError(
                f"{self.source}: targets {derived} are derived source tasks; a "
                "target is a task folder of its own"
            )
        unknown = [t for t in targets if t not in names]
        if unknown:
            raise UserError(f"{self.source}: targets {unknown} are not among the tasks {names}")
        return list(targets)

    def digest(self, *keys: str) -> str:
        """A short hash of the config values under ``keys`` (what a cached stage depends on)."""
        return self.digest_of({k: digest_view(k, self.raw[k]) for k in keys})

    def train_cases(self, task: str) -> int | None:
        """Target-train cases (groups) of ``task`` under ``train_cases`` (an int for every
        task, or a mapping task -> int); None: the ``test_fraction`` split."""
        value = self.raw["train_cases"]
        if isinstance(value, dict):
            return value.get(task)
        return value

    def finetune_steps(self, task: str) -> int | None:
        """The fine-tuning budget of target ``task`` under ``finetune_steps`` ({task: steps});
        None: ``finetune.steps``."""
        return self.raw["finetune_steps"].get(task)

    def finetune_seeds(self, task: str) -> list[int]:
        """The fine-tuning seeds of target ``task``: its list under ``finetune_seeds``
        ({task: [seeds]}), else ``finetune.seeds``. The seed is in a run's file name, not in
        its digest, so a target given more seeds keeps the runs of the seeds it had."""
        own = (self.raw.get("finetune_seeds") or {}).get(task)
        return list(self.raw["finetune"]["seeds"] if own is None else own)

    def native(self, task: str) -> dict | None:
        """The native-resolution settings of target ``task`` under ``native``, resolved:
        ``{"patch": [per spatial axis], "overlap": float, "group": regex or None}``; None:
        ``task`` is prepared at ``size``. Only targets are native: a task that is not a target
        is a source at ``size`` whatever ``native`` says (see :meth:`split_group` for the
        pattern its split uses)."""
        raw = self.raw["native"]
        if task not in raw or task not in self.targets:
            return None
        options = {**NATIVE, **(raw[task] or {})}
        patch = options["patch"] if options["patch"] is not None else self.raw["size"]
        return {
            "patch": spatial_size(patch),
            "overlap": float(options["overlap"]),
            "group": options["group"],
        }

    def split_group(self, task: str) -> str | None:
        """The group (patient) pattern of target ``task``'s own split: a native target's
        ``group``, else ``groups[task]``."""
        native = self.native(task)
        if native is not None and native["group"] is not None:
            return native["group"]
        return self.raw["groups"].get(task)

    @staticmethod
    def digest_of(value) -> str:
        """A short hash of any JSON-able value."""
        text = json.dumps(value, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


def _check_tasks(config: dict, path: Path) -> None:
    """``size`` and the ``tasks`` entries: folder names, or {name, from, labels} mappings."""
    size = config["size"]
    ok = (isinstance(size, int) and not isinstance(size, bool) and size > 0) or (
        isinstance(size, list)
        and len(size) in (2, 3)
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    )
    if not ok:
        raise UserError(
            f"{path}: size {size!r}: give one int (square 2D images), [x, y] or [x, y, z]"
        )
    names = []
    for entry in config["tasks"]:
        if isinstance(entry, dict):
            keys = set(entry)
            if (
                keys != {"name", "from", "labels"}
                or not isinstance(entry["labels"], dict)
                or not entry["labels"]
            ):
                raise UserError(
                    f"{path}: task entry {entry!r}: a derived task is "
                    "{name: ..., from: <task folder>, labels: {class: [ids]}}"
                )
            for cls, ids in entry["labels"].items():
                ids = ids if isinstance(ids, list) else [ids]
                if not ids or not all(isinstance(i, int) and i > 0 for i in ids):
                    raise UserError(
                        f"{path}: task {entry['name']!r}: labels.{cls}: {ids!r}; "
                        "give the folder's label ids (integers >= 1)"
                    )
            names.append(str(entry["name"]))
        elif isinstance(entry, str):
            names.append(Path(entry).name)
        else:
            raise UserError(
                f"{path}: task entry {entry!r}: give a folder name or a derived task mapping"
            )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(
            f"{path}: task names {repeated} appear more than once; each task needs its own name"
        )


def _check_select(select: dict, path: Path) -> None:
    """``select.top``: candidate counts K >= 1; ``select.budgets``: total budgets as multiples
    (> 0) of the target's fine-tuning steps."""
    top, budgets = select["top"], select["budgets"]
    if (
        not isinstance(top, list)
        or not top
        or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in top)
    ):
        raise UserError(
            f"{path}: select.top {top!r}: give a list of candidate counts K >= 1, e.g. [1, 2, 3, 5]"
        )
    if (
        not isinstance(budgets, list)
        or not budgets
        or not all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) and b > 0
            for b in budgets
        )
    ):
        raise UserError(
            f"{path}: select.budgets {budgets!r}: give a list of total budgets as multiples "
            "(> 0) of the target's fine-tuning steps, e.g. [1, 2] (one and two full fine-tunes)"
        )


def _check_finetune_seeds(value, targets: list[str], path: Path) -> None:
    """``finetune_seeds: {task: [seeds]}``: targets of the config, each a non-empty list of
    distinct integers >= 0."""
    example = "finetune_seeds: {acdc_cine_mri2d: [0, 1, 2, 3, 4, 5, 6, 7]}"
    if not isinstance(value, dict):
        raise UserError(
            f"{path}: finetune_seeds {value!r}: give a mapping {{task: [seeds]}}, e.g. {example}"
        )
    for task, seeds in value.items():
        if task not in targets:
            raise UserError(
                f"{path}: finetune_seeds names task {task!r}, which is not among the "
                f"targets {targets}: give seeds to one of them"
            )
        if (
            not isinstance(seeds, list)
            or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
            or len(set(seeds)) != len(seeds)
        ):
            raise UserError(
                f"{path}: finetune_seeds ({task}): {seeds!r}; give a non-empty list of "
                f"distinct seeds (integers >= 0), e.g. {example}"
            )


def _check_native(config: dict, resolved: BenchConfig, path: Path) -> None:
    """``native: {task: {patch, overlap, group}}``: plain tasks of the config; ``patch`` one
    int per spatial axis (or one for all), a multiple of every architecture's downsampling
    and, with UNETR (whose position embedding is built for ``size``), equal to ``size``;
    ``overlap`` in [0, 1); ``group`` a regular expression with a capturing group; no
    ``source_cases`` for the task (a native target's split sets no subjects aside)."""
    import re

    from ccfv.bench.networks import _SIZE_MULTIPLE

    native = config["native"]
    example = "native: {drive_retinal_vessels: {patch: 64}}"
    if not isinstance(native, dict):
        raise UserError(
            f"{path}: native {native!r}: give a mapping {{task: options}}, e.g. {example}"
        )
    dims = len(resolved.spatial_size)
    for task, options in native.items():
        spec = resolved.task_specs.get(task)
        if spec is None or spec.parent is not None:
            raise UserError(
                f"{path}: native names {task!r}, which is not a task folder among the tasks "
                f"{[n for n, s in resolved.task_specs.items() if s.parent is None]}"
            )
        if config["source_cases"].get(task):
            # a native target's split (prepare_native_task) sets nothing aside, so its test
            # cases would include the subjects its derived sources were pre-trained on
            raise UserError(
                f"{path}: native.{task}: source_cases sets {config['source_cases'][task]} of "
                f"its cases aside for derived source tasks, which a native target's split does "
                "not do (its test split would hold the derived sources' subjects): leave "
                f"{task} out of native or out of source_cases"
            )
        options = {} if options is None else options
        if not isinstance(options, dict) or set(options) - set(NATIVE):
            raise UserError(
                f"{path}: native.{task}: {options!r}; give a mapping of "
                f"{', '.join(NATIVE)} (or {{}} for the defaults), e.g. {example}"
            )
        patch = options.get("patch")
        if patch is not None:
            values = patch if isinstance(patch, list) else [patch] * dims
            if len(values) != dims or not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values
            ):
                raise UserError(
                    f"{path}: native.{task}.patch {patch!r}: give one int or {dims} ints "
                    "(the patch side per spatial axis, in pixels of the native grid)"
                )
            multiple = max(_SIZE_MULTIPLE[a] for a in config["architectures"])
            if any(v % multiple for v in values):
                raise UserError(
                    f"{path}: native.{task}.patch {patch!r}: the architectures "
                    f"{config['architectures']} need a multiple of {multiple} on every axis"
                )
            if "unetr" in config["architectures"] and values != resolved.spatial_size:
                raise UserError(
                    f"{path}: native.{task}.patch {patch!r}: UNETR's position embedding is "
                    f"built for size {config['size']!r}: give patch: {config['size']!r}"
                )
        overlap = options.get("overlap", NATIVE["overlap"])
        if (
            isinstance(overlap, bool)
            or not isinstance(overlap, (int, float))
            or not (0 <= overlap < 1)
        ):
            raise UserError(
                f"{path}: native.{task}.overlap {overlap!r}: give the sliding windows' "
                "overlap as a fraction in [0, 1), e.g. 0.25"
            )
        group = options.get("group")
        if group is not None:
            try:
                if re.compile(group).groups < 1:
                    raise re.error("no capturing group")
            except (re.error, TypeError) as error:
                raise UserError(
                    f"{path}: native.{task}.group: {group!r} is not a regular expression "
                    f"with a capturing group for the patient id ({error})"
                ) from None


def load_config(path: str | Path, quick: bool = False) -> BenchConfig:
    """Read a benchmark config, fill the defaults, apply the ``quick`` overrides if asked."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"benchmark config {path} does not exist: pass a YAML file such as "
            "benchmarks/transfer2d.yaml"
        )
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
    boot = config["statistics"]["bootstrap"]
    if isinstance(boot, bool) or not isinstance(boot, Integral) or boot < 10:
        raise UserError(
            f"{path}: statistics.bootstrap: {boot!r} must be an integer >= 10 (the "
            "bootstrap replicates behind every interval; 1000 for a full run)"
        )
    root = Path(config["data_root"])
    config["data_root"] = str(root if root.is_absolute() else (path.parent / root).resolve())
    if len(config["tasks"]) < 2:
        raise UserError(f"{path}: name at least 2 tasks (leave-one-task-out needs sources)")
    _check_tasks(config, path)
    resolved = BenchConfig(raw=config, source=str(path))
    for name, task_dir in resolved.task_paths.items():
        if not (task_dir / "dataset.json").is_file():
            raise UserError(
                f"{path}: task {name!r}: {task_dir / 'dataset.json'} not found; tasks "
                "are Decathlon folders (dataset.json, imagesTr, labelsTr) under "
                f"data_root ({root})"
            )
    from ccfv.bench.networks import ARCHITECTURES
    from ccfv.estimators.registry import get_estimator

    for arch in config["architectures"]:
        if arch not in ARCHITECTURES:
            raise UserError(
                f"{path}: unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}"
            )
    for method in config["scoring"]["methods"] + config["scoring"]["proportional"]:
        get_estimator(method)
    import re

    for task, pattern in config["groups"].items():
        if task not in resolved.task_paths:
            raise UserError(
                f"{path}: groups names task {task!r}, which is not among the "
                f"tasks {list(resolved.task_paths)}"
            )
        try:
            if re.compile(pattern).groups < 1:
                raise re.error("no capturing group")
        except (re.error, TypeError) as error:
            raise UserError(
                f"{path}: groups.{task}: {pattern!r} is not a regular expression "
                f"with a capturing group for the patient id ({error})"
            ) from None
    for task, count in config["source_cases"].items():
        if task not in resolved.task_specs:
            raise UserError(
                f"{path}: source_cases names task {task!r}, which is not among the "
                f"tasks {list(resolved.task_specs)}"
            )
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise UserError(f"{path}: source_cases.{task}: {count!r}; give a number of cases >= 1")
    for spec in resolved.task_specs.values():
        if spec.parent is not None and not config["source_cases"].get(spec.parent):
            raise UserError(
                f"{path}: task {spec.name!r} is derived from {spec.parent!r}, which "
                f"sets no cases aside: add source_cases: {{{spec.parent}: N}}"
            )
    value = config["train_cases"]
    for task, count in (
        value.items()
        if isinstance(value, dict)
        else ([] if value is None else [("every task", value)])
    ):
        if task != "every task" and task not in resolved.task_specs:
            raise UserError(
                f"{path}: train_cases names task {task!r}, which is not among the "
                f"tasks {list(resolved.task_specs)}"
            )
        if isinstance(count, bool) or not isinstance(count, int) or count < 2:
            raise UserError(
                f"{path}: train_cases ({task}): {count!r}; give a number of "
                "target-train cases (groups) >= 2"
            )
    if not isinstance(config["finetune_steps"], dict):
        raise UserError(
            f"{path}: finetune_steps {config['finetune_steps']!r}: give a mapping "
            "{task: steps}, e.g. finetune_steps: {acdc_cine_mri2d: 2000}"
        )
    for task, steps in config["finetune_steps"].items():
        if task not in resolved.task_specs:
            raise UserError(
                f"{path}: finetune_steps names task {task!r}, which is not among "
                f"the tasks {list(resolved.task_specs)}"
            )
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise UserError(
                f"{path}: finetune_steps ({task}): {steps!r}; give a number of "
                "fine-tuning steps >= 1"
            )
    for stage in ("pretrain", "finetune"):
        cfg = config[stage]
        if cfg["schedule"] not in ("constant", "poly"):
            raise UserError(f"{path}: {stage}.schedule {cfg['schedule']!r}: give constant or poly")
        if not (isinstance(cfg["val_fraction"], (int, float)) and 0 <= cfg["val_fraction"] < 1):
            raise UserError(
                f"{path}: {stage}.val_fraction {cfg['val_fraction']!r}: give a fraction in [0, 1)"
            )
        if (
            isinstance(cfg["eval_every"], bool)
            or not isinstance(cfg["eval_every"], int)
            or cfg["eval_every"] < 0
        ):
            raise UserError(
                f"{path}: {stage}.eval_every {cfg['eval_every']!r}: give a number of steps >= 0"
            )
    budgets = config["convergence"]["budgets"]
    if not budgets or not all(isinstance(b, int) and b >= 1 for b in budgets):
        raise UserError(f"{path}: convergence.budgets {budgets!r}: give step counts >= 1")
    for arch in config["convergence"]["architectures"] or []:
        if arch not in config["architectures"]:
            raise UserError(
                f"{path}: convergence.architectures: {arch!r} is not among the "
                f"benchmark's architectures {config['architectures']}"
            )
    _check_select(config["select"], path)
    _check_native(config, resolved, path)
    if len(config["finetune"]["seeds"]) < 1:
        raise UserError(f"{path}: finetune.seeds is empty: give at least one seed")
    _check_finetune_seeds(config["finetune_seeds"], resolved.targets, path)
    return resolved
