"""The arithmetic of ``ccfv select``: budgets, the successive-halving plan, the train /
validation split. Plain values in and out, no I/O, no torch."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from ccfv.errors import UserError

__all__ = [
    "DEFAULT_GROUP",
    "Budget",
    "Plan",
    "group_keys",
    "halving_plan",
    "parse_budget",
    "survivors",
    "train_val_split",
    "with_schedule",
]

#: Case ids like ``patient001_frame01_slice03`` belong to patient ``patient001``: when every
#: case id matches, cases are grouped by the first group of this pattern.
DEFAULT_GROUP = r"^(.+?)[_-](?:frame|slice)\d+"

_TIME = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$")


@dataclass(frozen=True)
class Budget:
    """A total training budget over all candidates: ``steps`` optimiser steps, or ``seconds``
    of training (converted to steps once, from a measured time per step)."""

    steps: int | None = None
    seconds: float | None = None

    def __str__(self) -> str:
        return f"{self.steps} steps" if self.steps is not None else f"{self.seconds:g} s"


def parse_budget(text: str) -> Budget:
    """``"1500"`` / ``"1500steps"`` -> 1500 steps; ``"90s"``, ``"20m"``, ``"1h30m"`` -> seconds."""
    raw = str(text).strip().lower().replace(" ", "")
    number = raw.removesuffix("steps").removesuffix("step")
    if number.isdigit():
        if int(number) < 1:
            raise UserError(
                f"--budget {text}: give a number of steps >= 1 (e.g. 1500) or a "
                "time (e.g. 20m, 1h30m)"
            )
        return Budget(steps=int(number))
    match = _TIME.match(raw)
    if raw and match and any(match.groups()):
        h, m, s = (float(g) if g else 0.0 for g in match.groups())
        seconds = 3600 * h + 60 * m + s
        if seconds > 0:
            return Budget(seconds=seconds)
    raise UserError(
        f"--budget {text}: give a number of training steps over all candidates "
        "(e.g. 1500) or a time (e.g. 90s, 20m, 1h30m)"
    )


@dataclass(frozen=True)
class Plan:
    """Successive halving: rung ``r`` trains ``counts[r]`` candidates from global step
    ``starts[r]`` to ``ends[r]`` (``base * 2**r`` more steps each, twice the previous rung's);
    the better ``counts[r + 1]`` by validation Dice go on. ``schedule_steps`` is the length of
    the learning-rate schedule: ``schedule`` when given (``--schedule-steps``, at least the last
    rung's end: every candidate then stops at its rung ends on a schedule of that length, as a
    full fine-tune stopped early), else the last rung's end. ``total_steps`` is the steps of
    all rungs."""

    counts: tuple[int, ...]
    base: int
    schedule: int | None = None

    @property
    def rungs(self) -> int:
        return len(self.counts)

    @property
    def ends(self) -> tuple[int, ...]:
        return tuple(self.base * (2 ** (r + 1) - 1) for r in range(self.rungs))

    @property
    def starts(self) -> tuple[int, ...]:
        return (0, *self.ends[:-1])

    @property
    def schedule_steps(self) -> int:
        return self.ends[-1] if self.schedule is None else int(self.schedule)

    @property
    def total_steps(self) -> int:
        return sum(n * self.base * 2**r for r, n in enumerate(self.counts))

    def to_dict(self) -> dict:
        return {
            "counts": list(self.counts),
            "base_steps": self.base,
            "rung_ends": list(self.ends),
            "schedule_steps": self.schedule_steps,
            "total_steps": self.total_steps,
        }


def halving_plan(k: int, total_steps: int) -> Plan:
    """The plan for ``k`` candidates within ``total_steps``: counts ``k, ceil(k/2), ...`` while
    more than one remains (a single candidate: one rung), the base budget the largest with
    ``sum(counts[r] * base * 2**r) <= total_steps``."""
    if k < 1:
        raise UserError(f"--top {k}: give a number of candidates >= 1")
    counts = [k]
    while counts[-1] > 2:
        counts.append(math.ceil(counts[-1] / 2))
    weight = sum(n * 2**r for r, n in enumerate(counts))
    base = int(total_steps) // weight
    if base < 1:
        raise UserError(
            f"--budget {total_steps} steps is too small for {k} candidate(s): "
            f"successive halving over rungs of {counts} candidates needs at least "
            f"{weight} steps; raise --budget or lower --top"
        )
    return Plan(counts=tuple(counts), base=base)


def with_schedule(plan: Plan, steps: int | None) -> Plan:
    """``plan`` with its learning-rate schedule over ``steps`` (None: the last rung's end).
    A schedule shorter than the last rung would end before the training does: refused."""
    if steps is None:
        return plan
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < plan.ends[-1]:
        raise UserError(
            f"--schedule-steps {steps}: the schedule must cover the last rung, which ends at "
            f"step {plan.ends[-1]} (rungs of {list(plan.counts)} candidates ending at "
            f"{list(plan.ends)}); give at least {plan.ends[-1]}, or leave it out (default: "
            "the last rung's end)"
        )
    return replace(plan, schedule=int(steps))


def survivors(values: dict[str, float | None], order: Sequence[str], n: int) -> list[str]:
    """The ``n`` best candidates by validation Dice (``None``: failed, never kept), ties broken
    by ``order`` (the training-free ranking); returned in that order of merit."""
    alive = [c for c in order if values.get(c) is not None]
    alive.sort(key=lambda c: -float(values[c]))  # type: ignore[arg-type]  # stable: rank order
    return alive[:n]


def group_keys(case_ids: Sequence[str], pattern: str | None) -> tuple[list[str], str]:
    """The patient of every case and how it was found: the first group of ``pattern``
    (every id must match), else :data:`DEFAULT_GROUP` when every id matches it, else the case
    id itself."""
    if pattern is not None:
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise UserError(f"--group {pattern!r} is not a regular expression ({exc})") from None
        if regex.groups < 1:
            raise UserError(
                f"--group {pattern!r} has no group: put the patient id in "
                "parentheses, e.g. '^(patient\\d+)'"
            )
        keys = []
        for case in case_ids:
            match = regex.search(case)
            if match is None:
                raise UserError(
                    f"--group {pattern!r} does not match case id {case!r}: give a "
                    "pattern every case id matches"
                )
            keys.append(match.group(1))
        return keys, f"patients by --group {pattern}"
    matches = [re.match(DEFAULT_GROUP, c) for c in case_ids]
    if case_ids and all(matches):
        return [m.group(1) for m in matches if m], f"patients by {DEFAULT_GROUP}"
    return list(case_ids), "one patient per case"


def train_val_split(
    case_ids: Sequence[str], keys: Sequence[str], val_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """``(train ids, validation ids)``: ``round(val_fraction * G)`` of the G patients (at least
    1, at most G - 1), drawn with ``seed``, are validation; no patient on both sides."""
    if not 0 < val_fraction < 1:
        raise UserError(f"--val-fraction {val_fraction}: give a fraction between 0 and 1")
    groups = sorted(set(keys))
    if len(groups) < 2:
        raise UserError(
            f"the target holds {len(groups)} patient(s) ({len(case_ids)} case(s)): "
            "select needs at least 2, one to train on and one to validate on"
        )
    n_val = min(len(groups) - 1, max(1, round(val_fraction * len(groups))))
    order = np.random.default_rng([int(seed), 18]).permutation(len(groups))
    val_groups = {groups[i] for i in order[:n_val]}
    train = [c for c, g in zip(case_ids, keys) if g not in val_groups]
    val = [c for c, g in zip(case_ids, keys) if g in val_groups]
    return train, val
