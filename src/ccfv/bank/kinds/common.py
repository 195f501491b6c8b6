"""What the builder kinds share (``owns_entry = False``: an entry with ``args``,
``checkpoint``, ``seed``, ``layers`` and ``preprocessing``): parsing those keys, building a
module from a class or a function, the seeded initialisation and the checkpoint.

Without a checkpoint the network keeps the random initialisation drawn after
``torch.manual_seed(entry.seed)``: the seeded "no pre-training" baseline, identical on every
run. The seed is set inside ``torch.random.fork_rng`` so the caller's random state is untouched.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ccfv.bank.callables import resolve_callable
from ccfv.bank.checkpoint import LoadReport, apply_state_dict, read_state_dict
from ccfv.bank.entry import BankEntry
from ccfv.bank.validate import (
    ParseContext,
    check_dims,
    parse_args,
    parse_checkpoint,
    parse_layers,
    parse_preprocessing,
    parse_seed,
)
from ccfv.errors import UserError, first_line

__all__ = [
    "apply_checkpoint",
    "construct_from_callable",
    "load_built",
    "parse_built_entry",
    "seeded",
    "seeded_random_report",
]

log = logging.getLogger(__name__)


def parse_built_entry(
    raw: Mapping[str, Any],
    ctx: ParseContext,
    kind: str,
    location: str | Path,
    *,
    takes_args: bool = True,
) -> BankEntry:
    """The entry of a builder kind whose key (``location``) is already validated: ``args``,
    ``checkpoint``, ``seed``, ``layers``, ``preprocessing``, and the spatial dimensions they
    give checked for agreement. ``takes_args=False`` refuses ``args`` (a module already
    built)."""
    where = ctx.where
    args = parse_args(raw.get("args"), where)
    if not takes_args and args:
        raise UserError(
            f"{where}: 'args' is not used for a '{kind}' model (it is already built); remove it"
        )
    checkpoint, checkpoint_key = parse_checkpoint(raw.get("checkpoint"), ctx.base, where)
    seed = parse_seed(raw.get("seed", 0), where)
    layers = parse_layers(raw.get("layers", "auto"), where)
    preprocessing = parse_preprocessing(raw.get("preprocessing"), args, where)
    entry = BankEntry(
        name=ctx.name,
        kind=kind,
        location=location,
        args=args,
        checkpoint=checkpoint,
        checkpoint_key=checkpoint_key,
        seed=seed,
        layers=layers,
        preprocessing=preprocessing,
        source=ctx.source,
    )
    check_dims(entry, where)
    return entry


def seeded(entry: BankEntry, construct: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """``construct()`` after ``torch.manual_seed(entry.seed)``, the caller's RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(entry.seed)
        return construct()


def apply_checkpoint(entry: BankEntry, target: torch.nn.Module) -> LoadReport:
    """Load the entry's checkpoint into ``target`` (refused when it does not fit)."""
    assert entry.checkpoint is not None
    state, key = read_state_dict(entry.checkpoint, entry.checkpoint_key, entry=entry.name)
    return apply_state_dict(
        target, state, entry=entry.name, checkpoint=entry.checkpoint, key=key, seed=entry.seed
    )


def seeded_random_report(entry: BankEntry, model: torch.nn.Module) -> LoadReport:
    """The report of a model without checkpoint (logged as a warning)."""
    report = LoadReport(
        entry=entry.name,
        initialisation="seeded-random",
        seed=entry.seed,
        n_params=sum(1 for _ in model.parameters()),
    )
    log.warning("%s", report.summary())
    return report


def load_built(entry: BankEntry, model: torch.nn.Module) -> tuple[torch.nn.Module, LoadReport]:
    """``model`` (built by :func:`seeded`) with the entry's checkpoint, or the seeded
    initialisation when it has none; eval mode."""
    if entry.checkpoint is not None:
        report = apply_checkpoint(entry, model)
    else:
        report = seeded_random_report(entry, model)
    model.eval()
    return model, report


def construct_from_callable(entry: BankEntry, reference: str) -> torch.nn.Module:
    """``reference(**entry.args)``: a class or function by import path, checked to give a
    ``torch.nn.Module`` whose optional dependencies are installed; ``entry.kind`` names it
    in messages."""
    what = entry.kind
    builder = resolve_callable(reference, entry=entry.name, what=what)
    if not callable(builder):
        raise UserError(f"model '{entry.name}': {what} '{reference}' is not callable")
    try:
        model = builder(**entry.args)
    except (TypeError, ValueError, AssertionError) as exc:
        raise UserError(
            f"model '{entry.name}': {what} '{reference}' rejected args {entry.args} "
            f"({type(exc).__name__}: {exc}); fix 'args' in {entry.source}"
        ) from None
    except ImportError as exc:  # e.g. MONAI's OptionalImportError for einops
        raise UserError(
            f"model '{entry.name}': {what} '{reference}' needs a package that is not installed "
            f"({first_line(exc)}); install it"
        ) from None
    if not isinstance(model, torch.nn.Module):
        raise UserError(
            f"model '{entry.name}': {what} '{reference}' returned a {type(model).__name__}, not a "
            "torch.nn.Module"
        )
    _check_optional_dependencies(model, entry)
    return model


#: MONAI modules that import einops lazily, failing only in ``forward``.
_NEEDS_EINOPS = (
    "monai.networks.nets.swin_unetr",
    "monai.networks.blocks.selfattention",
    "monai.networks.blocks.crossattention",
    "monai.networks.blocks.patchembedding",
)


def _check_optional_dependencies(model: torch.nn.Module, entry: BankEntry) -> None:
    """Fail now, not in the first forward, when a MONAI block needs einops and it is missing."""
    if not any(type(m).__module__ in _NEEDS_EINOPS for m in model.modules()):
        return
    try:
        importlib.import_module("einops")
    except ImportError:
        raise UserError(
            f"model '{entry.name}' ({entry.target}) needs the package einops, which is not "
            "installed; install it (pip install einops)"
        ) from None
