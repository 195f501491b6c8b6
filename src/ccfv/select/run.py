"""``ccfv select``: rank the bank training-free, then verify the top candidates by short
fine-tunes with successive halving, and hand over the winner.

Stages, one function each: :func:`check_inputs` (everything a user can get wrong, before any
model runs), :func:`rank` of :mod:`ccfv.rank` (the same ranking and feature cache as
``ccfv rank``), :func:`prepare_candidate` (the entry's own preprocessing, labels moved onto its
grid, head re-initialised), :func:`train_rung` (the package's one training loop,
:func:`ccfv.training.fit`, resumable from a saved state) and :func:`select` (the halving).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ccfv.errors import UserError, first_line
from ccfv.estimators.registry import DEFAULT_METHOD
from ccfv.select.plan import (
    Budget,
    Plan,
    group_keys,
    halving_plan,
    parse_budget,
    survivors,
    train_val_split,
    with_schedule,
)

__all__ = ["SelectSettings", "check_inputs", "select"]

#: Bumped when a change of the training makes cached candidate runs invalid.
TRAINING_VERSION = 1


@dataclass
class SelectSettings:
    """The options of ``ccfv select`` (see its ``--help``)."""

    top: int = 3
    budget: str = "1500"
    device: str = "cpu"
    cases: int | None = None
    seed: int = 0
    val_fraction: float = 0.2
    group: str | None = None
    lr: float = 1e-3
    batch_size: int = 2
    save_every: int = 50
    #: Length of the learning-rate schedule (None: the last rung's end). With the length of a
    #: full fine-tune, every candidate runs that fine-tune's schedule and stops at its rung
    #: ends: the schedule of the runs ``ccfv bench`` replays select on.
    schedule_steps: int | None = None
    cache_dir: str | Path = ".ccfv_cache"
    progress: bool = True


@dataclass
class Prepared:
    """A candidate ready to train: its network (head replaced), patches and validation."""

    model: Any
    sampler: Any
    val_cases: list
    roi: list[int]
    overlap: float
    sw_batch_size: int
    head: list[str]
    out_channels: int


@dataclass
class Target:
    """The target data, split: loaded cases by id, train and validation ids, classes."""

    data: Path
    dataset: Any
    loaded: dict[str, Any]
    train: list[str]
    val: list[str]
    grouping: str
    n_classes: int
    fingerprint: str
    classes: dict[int, str] = field(default_factory=dict)


def check_inputs(
    bank: str | Path, data: str | Path, settings: SelectSettings, out: str | Path
) -> tuple[Budget, Target]:
    """Every option, the output and cache folders, the bank file and the target's split,
    checked before any model runs. Returns the budget and the split target."""
    from ccfv.backends import check_torch_device
    from ccfv.bank import load_bank
    from ccfv.data import load_case
    from ccfv.data.fingerprint import data_fingerprint
    from ccfv.passes import target_cases
    from ccfv.rank import check_cases, check_folder

    s = settings
    if isinstance(s.top, bool) or not isinstance(s.top, int) or s.top < 1:
        raise UserError(f"--top {s.top}: give a number of candidates >= 1")
    budget = parse_budget(s.budget)
    if not s.lr > 0 or not math.isfinite(s.lr):
        raise UserError(f"--lr {s.lr}: give a learning rate > 0")
    if s.batch_size < 1:
        raise UserError(f"--batch-size {s.batch_size}: give 1 or more patches per step")
    if s.save_every < 1:
        raise UserError(f"--save-every {s.save_every}: give 1 or more steps")
    if s.schedule_steps is not None and (
        isinstance(s.schedule_steps, bool)
        or not isinstance(s.schedule_steps, int)
        or s.schedule_steps < 1
    ):
        raise UserError(
            f"--schedule-steps {s.schedule_steps}: give a number of steps >= 1 (at least the "
            "last rung's end), or leave it out"
        )
    check_cases(s.cases)
    check_torch_device(s.device)
    check_folder(out, "--out")
    check_folder(s.cache_dir, "--cache-dir")
    entries = load_bank(bank)
    if budget.steps is not None:
        with_schedule(halving_plan(min(s.top, len(entries)), budget.steps), s.schedule_steps)
    dataset, chosen = target_cases(data, s.cases, s.seed)
    ids = [c.case_id for c in chosen]
    keys, grouping = group_keys(ids, s.group)
    train, val = train_val_split(ids, keys, s.val_fraction, s.seed)
    loaded = {c.case_id: load_case(c, dataset.labels) for c in chosen}
    present = {int(k) for case in loaded.values() for k in np.unique(case.label)}
    if not present - {0}:
        raise UserError(
            f"{data}: the selected {len(loaded)} case(s) hold no foreground label; "
            "choose other cases (--cases, --seed) or check the label files"
        )
    if not {int(k) for c in train for k in np.unique(loaded[c].label)} - {0}:
        raise UserError(
            f"{data}: the training split ({', '.join(train)}) holds no foreground "
            "label; use another --seed or --val-fraction"
        )
    n_classes = max([*dataset.labels, *present]) + 1
    fp = data_fingerprint(chosen, dataset.labels)
    table = dataset.class_table(present)
    return budget, Target(
        Path(data), dataset, loaded, train, val, grouping, n_classes, fp, table["classes"]
    )


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def prepare_candidate(entry, target: Target, settings: SelectSettings, seed: int) -> Prepared:
    """Load the entry, run its own preprocessing on every case (as ``ccfv rank``), move the
    training labels onto its grid and re-initialise its head for the target's classes."""
    from ccfv.bank import load_model
    from ccfv.bank.preprocess import entry_preprocess  # the entry's own (bundle, nnU-Net, yaml)
    from ccfv.passes import check_dimensionality
    from ccfv.training import PatchSampler, TrainCase, label_on_grid, replace_head
    from ccfv.training.validate import ValCase

    model, _ = load_model(entry)
    first = target.loaded[target.train[0]]
    check_dimensionality(entry, model, first)
    ndim = first.label.ndim
    preprocess = entry_preprocess(entry, ndim)
    pre = entry.preprocessing
    train_cases, val_cases = [], []
    for case_id in target.train + target.val:
        case = target.loaded[case_id]
        image, affine = preprocess(case.image, case.affine)
        image = np.ascontiguousarray(image, dtype=np.float32)
        if case_id in target.val:
            val_cases.append(ValCase(case_id, image, affine, case.label, case.affine))
        else:
            label = label_on_grid(case.label, case.affine, image.shape[1:], affine)
            train_cases.append(TrainCase(case_id, image, label))
    roi = (
        [int(r) for r in pre.roi]
        if pre.roi
        else [min(int(s), 96) // 16 * 16 or int(s) for s in train_cases[0].image.shape[1:]]
    )
    channels = int(train_cases[0].image.shape[0])
    for p in model.parameters():
        p.requires_grad_(True)
    try:
        head = replace_head(model, target.n_classes, channels, roi, seed)
    except ValueError as exc:
        raise UserError(
            f"model '{entry.name}': its output head cannot be re-initialised for "
            f"the target's {target.n_classes} classes ({exc}); give a network "
            f"with {target.n_classes} output channels"
        ) from None
    model = model.to(settings.device)
    for p in model.parameters():
        p.requires_grad_(True)
    sampler = PatchSampler(train_cases, roi, settings.batch_size, seed, settings.device)
    return Prepared(
        model,
        sampler,
        val_cases,
        roi,
        float(pre.overlap),
        int(pre.sw_batch_size),
        head,
        target.n_classes,
    )


def candidate_key(entry, target: Target, settings: SelectSettings, plan: Plan) -> str:
    """Cache key of one candidate's run: the model, the split data, the training settings,
    the plan's schedule length and the device type (the weights differ across devices)."""
    import torch

    from ccfv.bank import fingerprint

    kind = torch.device(settings.device).type
    return _digest(
        {
            "model": fingerprint(entry),
            "data": target.fingerprint,
            "train": target.train,
            "val": target.val,
            "classes": target.n_classes,
            "lr": settings.lr,
            "batch": settings.batch_size,
            "seed": settings.seed,
            "schedule": "poly",
            "schedule_steps": plan.schedule_steps,
            "eval_every": plan.base,
            "device": kind,
            "amp": kind == "cuda",
            "version": TRAINING_VERSION,
        }
    )[:16]


class CandidateRun:
    """One candidate's cached, resumable run in ``folder``: ``state.pt`` (the latest
    :class:`~ccfv.training.TrainState`, written every ``save_every`` steps and at every rung's
    end) and ``record.json`` (validation Dice at each rung's end, seconds, head)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.state_path = folder / "state.pt"
        self.record_path = folder / "record.json"
        folder.mkdir(parents=True, exist_ok=True)
        self.record: dict[str, Any] = (
            json.loads(self.record_path.read_text())
            if self.record_path.is_file()
            else {"rungs": {}, "train_seconds": 0.0, "val_seconds": 0.0}
        )

    def write_record(self) -> None:
        from ccfv.files import atomic_write

        atomic_write(self.record_path, json.dumps(self.record, indent=2))

    def save_state(self, state) -> None:
        import torch

        from ccfv.files import atomic_write

        atomic_write(self.state_path, lambda fh: torch.save(state.to_dict(), fh))

    def load_state(self):
        from ccfv.bank.checkpoint import load_torch_file
        from ccfv.training import TrainState

        if not self.state_path.is_file():
            return None
        return TrainState.from_dict(
            load_torch_file(self.state_path, f"saved select state {self.state_path}")
        )


def train_rung(
    name: str,
    run: CandidateRun,
    prepared: Prepared,
    plan: Plan,
    rung: int,
    settings: SelectSettings,
    log: Callable[[str], None],
) -> float:
    """Train a candidate through rung ``rung`` (from its saved state where there is one) and
    return its validation Dice at the rung's end."""
    from ccfv.training import fit, validation_dice

    done = run.record["rungs"].get(str(rung))
    if done is not None:
        return float(done)
    start = run.load_state()
    end = plan.ends[rung]
    if start is not None and start.step >= end:
        raise UserError(
            f"{run.state_path} is at step {start.step}, past the end of rung "
            f"{rung + 1} ({end}) with no record of it: delete {run.folder}"
        )
    if start is not None and start.step > plan.starts[rung]:
        log(
            f"{name}: resuming rung {rung + 1} at step {start.step} of {end} "
            f"(saved state {run.state_path})"
        )
    amp = str(settings.device).startswith("cuda")
    val_seconds = [0.0]

    def validate(model) -> float:
        began = time.perf_counter()
        value = validation_dice(
            model,
            prepared.val_cases,
            prepared.roi,
            prepared.out_channels,
            overlap=prepared.overlap,
            sw_batch_size=prepared.sw_batch_size,
            amp=amp,
        )
        val_seconds[0] += time.perf_counter() - began
        return value

    began = time.perf_counter()
    info = fit(
        prepared.model,
        prepared.sampler,
        steps=plan.schedule_steps,
        lr=settings.lr,
        seed=settings.seed,
        schedule="poly",
        validate=validate,
        eval_every=plan.base,
        keep_best=False,
        max_label=prepared.out_channels - 1,
        amp=amp,
        start=start,
        stop=end,
        save=run.save_state,
        save_every=settings.save_every,
        progress=f"{name} rung {rung + 1}/{plan.rungs}" if settings.progress else None,
    )
    took = time.perf_counter() - began
    value = float(info["curve"][-1][1])
    run.record["rungs"][str(rung)] = value
    run.record["curve"] = info["curve"]
    run.record["val_seconds"] += val_seconds[0]
    run.record["train_seconds"] += took - val_seconds[0]
    run.record["steps"] = end
    run.record["head"] = prepared.head
    run.write_record()
    log(
        f"{name}: rung {rung + 1}/{plan.rungs}, step {end}: validation Dice {value:.4f} "
        f"({took:.1f} s)"
    )
    return value


def _failure(error: BaseException) -> str:
    if isinstance(error, UserError):
        return str(error)
    return (
        f"{type(error).__name__}: {first_line(error)} (an unexpected error: please report "
        f"it with its traceback)"
    )


def _calibrate(prepared: Prepared, settings: SelectSettings, n: int = 3) -> float:
    """Seconds per training step of a candidate: ``n`` steps timed on a copy after one warm-up
    (the candidate's own weights are not touched)."""
    from ccfv.training import fit

    model = copy.deepcopy(prepared.model)
    fit(model, prepared.sampler, steps=1, lr=settings.lr, seed=settings.seed)
    began = time.perf_counter()
    fit(model, prepared.sampler, steps=n, lr=settings.lr, seed=settings.seed)
    return (time.perf_counter() - began) / n


def _time_budget_steps(
    budget: Budget,
    names: list[str],
    entries,
    prepared,
    target: Target,
    settings: SelectSettings,
    log: Callable[[str], None],
) -> int:
    """A time budget as training steps: 80 % of it (20 % for validation) at the mean measured
    seconds per step of the candidates; measured once and kept under ``cache_dir/select``,
    so that a resumed run makes the same plan."""
    import torch

    from ccfv.bank import fingerprint
    from ccfv.files import atomic_write

    key = _digest(
        {
            "models": [fingerprint(entries[n]) for n in names],
            "data": target.fingerprint,
            "train": target.train,
            "val": target.val,
            "budget": budget.seconds,
            "batch": settings.batch_size,
            "device": torch.device(settings.device).type,
        }
    )
    path = Path(settings.cache_dir) / "select" / f"time-budget-{key[:16]}.json"
    if path.is_file():
        saved = json.loads(path.read_text())
    else:
        per = {n: _calibrate(prepared[n], settings) for n in names}
        per_step = float(np.mean(list(per.values())))
        saved = {
            "seconds_per_step": per,
            "steps": max(1, int(0.8 * float(budget.seconds or 0) / per_step)),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(saved, indent=2))
    log(
        f"budget {budget}: {saved['steps']} training steps at the measured seconds per step "
        f"{ {n: round(v, 4) for n, v in saved['seconds_per_step'].items()} } ({path})"
    )
    return int(saved["steps"])


@dataclass
class Selection:
    """What a selection produced, filled in as it goes (the ranking, then each candidate's
    preparation and rungs, then the winner); :meth:`to_dict` is ``selection.json``."""

    bank: str | Path
    data: str | Path
    settings: SelectSettings
    budget: Budget
    target: Target
    ranked: Any
    order: list[str]
    rank_seconds: float
    candidates: list[str] = field(default_factory=list)
    prepared: dict[str, Prepared] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    tracebacks: dict[str, str] = field(default_factory=dict)
    plan: Plan | None = None
    runs: dict[str, CandidateRun] = field(default_factory=dict)
    rung_values: list[dict[str, float | None]] = field(default_factory=list)
    winner: str | None = None

    def fail(self, name: str, error: BaseException) -> str:
        """Record candidate ``name``'s failure (its message and traceback); the message."""
        self.failures[name] = _failure(error)
        self.tracebacks[name] = "".join(traceback.format_exception(error))
        return self.failures[name]

    def to_dict(self) -> dict[str, Any]:
        """``selection.json``: the winner, every candidate, the plan, split and compute."""
        if self.plan is None or self.winner is None:
            raise RuntimeError("the selection has no plan or winner yet")
        settings, target, ranked, plan = self.settings, self.target, self.ranked, self.plan
        per: dict[str, Any] = {}
        for name in self.candidates:
            run = self.runs.get(name)
            rec = run.record if run is not None else {}
            per[name] = {
                "rank": self.order.index(name) + 1,
                DEFAULT_METHOD: ranked.scores[name][DEFAULT_METHOD],
                "rungs": [values.get(name) for values in self.rung_values],
                "curve": rec.get("curve", []),
                "steps": rec.get("steps", 0),
                "train_seconds": rec.get("train_seconds", 0.0),
                "val_seconds": rec.get("val_seconds", 0.0),
                "head_reinitialised": (self.prepared[name].head if name in self.prepared else None),
                "failure": self.failures.get(name),
            }
        trained = [p for p in per.values() if p["steps"]]
        steps_used = sum(p["steps"] for p in trained)
        seconds_used = sum(p["train_seconds"] + p["val_seconds"] for p in trained)
        per_step = seconds_used / max(1, steps_used)
        n_models = len(self.order)
        steps_each = plan.ends[-1]  # the winner's steps
        all_steps = n_models * steps_each
        winner = per[self.winner]
        return {
            "bank": str(self.bank),
            "data": str(self.data),
            "winner": {
                "model": self.winner,
                "val_dice": winner["rungs"][-1] if winner["rungs"] else None,
                "steps": winner["steps"],
            },
            "ranking": {m: ranked.scores[m][DEFAULT_METHOD] for m in self.order},
            "rank_failures": dict(ranked.failures),
            "candidates": per,
            "plan": {**plan.to_dict(), "budget": str(self.budget), "top": settings.top},
            "split": {
                "grouping": target.grouping,
                "train": target.train,
                "val": target.val,
                "val_fraction": settings.val_fraction,
                "seed": settings.seed,
            },
            "classes": {str(k): v for k, v in target.classes.items()},
            "n_classes": target.n_classes,
            "settings": {
                "lr": settings.lr,
                "batch_size": settings.batch_size,
                "schedule": "poly",
                "loss": "DiceCE",
                "optimiser": "Adam",
                "device": settings.device,
                "amp": str(settings.device).startswith("cuda"),
                "seed": settings.seed,
                "save_every": settings.save_every,
            },
            "compute": {
                "ranking_seconds": self.rank_seconds,
                "training_steps": steps_used,
                "training_seconds": seconds_used,
                "all_models_same_budget": {
                    "models": n_models,
                    "steps_each": steps_each,
                    "steps": all_steps,
                    "seconds_estimate": per_step * all_steps,
                    "note": "every ranked model fine-tuned for the winner's steps, at the mean "
                    "measured seconds per step (training and validation) of the "
                    "candidates",
                },
                "fraction_of_all": steps_used / all_steps if all_steps else None,
            },
        }


def select(
    bank: str | Path,
    data: str | Path,
    settings: SelectSettings,
    out: str | Path,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run ``ccfv select`` and return what ``selection.json`` holds (written with
    ``report.md``, the curve plot and the winner's weights into ``out``). Progress lines go to
    ``log``, by default the ``ccfv.select.run`` logger (the CLI prints it on stdout)."""
    if log is None:
        log = logging.getLogger(__name__).info
    from ccfv.bank import load_bank
    from ccfv.rank import rank

    budget, target = check_inputs(bank, data, settings, out)
    out = Path(out)
    log(
        f"target split ({target.grouping}): {len(target.train)} training case(s) "
        f"{target.train}, {len(target.val)} validation case(s) {target.val}"
    )
    began = time.perf_counter()
    ranked = rank(
        bank,
        data,
        methods=(DEFAULT_METHOD,),
        cases=settings.cases,
        seed=settings.seed,
        device=settings.device,
        cache_dir=settings.cache_dir,
        bootstrap=0,
        progress=settings.progress,
        log=log,
    )
    rank_seconds = time.perf_counter() - began
    entries = {e.name: e for e in load_bank(bank)}
    order = [
        m
        for m in ranked.ranking()
        if m not in ranked.failures and ranked.scores[m].get(DEFAULT_METHOD) is not None
    ]
    if not order:
        raise UserError(f"no model of {bank} could be ranked: {ranked.failures}")
    sel = Selection(bank, data, settings, budget, target, ranked, order, rank_seconds)
    sel.candidates = order[: settings.top]
    for name in sel.candidates:  # load every candidate once before training any
        try:
            sel.prepared[name] = prepare_candidate(entries[name], target, settings, settings.seed)
        except Exception as error:  # noqa: BLE001 - one candidate's failure is that candidate's
            log(f"{name}: FAILED: {sel.fail(name, error)}")
    alive = [c for c in sel.candidates if c in sel.prepared]
    if not alive:
        raise UserError(f"every candidate failed: {sel.failures}")
    total = budget.steps
    if total is None:
        total = _time_budget_steps(budget, alive, entries, sel.prepared, target, settings, log)
    plan = with_schedule(halving_plan(len(sel.candidates), total), settings.schedule_steps)
    sel.plan = plan
    log(
        f"successive halving over {len(sel.candidates)} candidate(s) {sel.candidates}: rungs "
        f"of {list(plan.counts)} candidates ending at steps {list(plan.ends)} "
        f"({plan.total_steps} steps in all)"
        + (
            f", learning-rate schedule over {plan.schedule_steps} steps"
            if settings.schedule_steps is not None
            else ""
        )
    )
    root = Path(settings.cache_dir) / "select"
    sel.runs = {
        name: CandidateRun(root / f"{name}-{candidate_key(entries[name], target, settings, plan)}")
        for name in alive
    }
    for rung in range(plan.rungs):
        values: dict[str, float | None] = {}
        for name in alive:
            try:
                values[name] = train_rung(
                    name, sel.runs[name], sel.prepared[name], plan, rung, settings, log
                )
            except KeyboardInterrupt:
                raise
            except Exception as error:  # noqa: BLE001 - one candidate's failure is its own
                values[name] = None
                log(f"{name}: FAILED in rung {rung + 1}: {sel.fail(name, error)}")
        sel.rung_values.append(values)
        keep = plan.counts[rung + 1] if rung + 1 < plan.rungs else 1
        alive = survivors(values, sel.candidates, keep)
        if not alive:
            raise UserError(f"every candidate failed: {sel.failures}")
    winner = sel.winner = alive[0]
    result = sel.to_dict()
    from ccfv.select.report import write_outputs

    write_outputs(result, out, sel.runs[winner], entries[winner], sel.prepared[winner], target)
    if sel.tracebacks:
        from ccfv.files import atomic_write

        atomic_write(
            out / "failures.log", "".join(f"=== {k}\n{v}\n" for k, v in sel.tracebacks.items())
        )
    log(
        f"winner: {winner} (validation Dice {result['winner']['val_dice']:.4f} after "
        f"{result['winner']['steps']} steps); weights in {out / 'winner'}"
    )
    return result
