"""The registry of bank kinds: every place that depends on an entry's kind goes through here.

A kind is a :class:`~ccfv.bank.kinds.base.ModelKind` in its own module; registering it is one
line below. Registration order matters twice: kinds that own their entry (``owns_entry``) are
tried in it when an entry has several kind keys, and ``ccfv bank init`` asks the kinds in it
whether a folder or a file is theirs.

* ``network`` (:mod:`.network`): a class by dotted path, called with ``args``;
* ``factory`` (:mod:`.factory`): a function ``pkg.module:function``, called with ``args``;
* ``torchscript`` (:mod:`.torchscript`): a TorchScript file, hooked through what it returns;
* ``nnunet`` (:mod:`.nnunet`): an nnU-Net v2 trained-model folder (one fold);
* ``bundle`` (:mod:`.bundle`): a MONAI bundle folder.

How to add one: ``docs/how-to/add-a-bank-kind.md``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ccfv.bank.entry import BankEntry, declare_kind_key
from ccfv.bank.kinds.base import Candidate, ModelKind, Skipped
from ccfv.bank.kinds.bundle import Bundle
from ccfv.bank.kinds.factory import Factory
from ccfv.bank.kinds.network import MonaiNetwork
from ccfv.bank.kinds.nnunet import NnUNet
from ccfv.bank.kinds.torchscript import TorchScript
from ccfv.bank.validate import COMMON_KEYS, ParseContext, check_keys
from ccfv.errors import UserError

__all__ = [
    "KINDS",
    "Candidate",
    "ModelKind",
    "Skipped",
    "builder_keys",
    "entry_files",
    "entry_keys",
    "kind_of",
    "parse_entry",
    "raw_kind",
    "register",
    "registered",
    "scan_file",
    "scan_folder",
]

#: key -> kind, in registration order.
KINDS: dict[str, ModelKind] = {}


def register(kind: ModelKind) -> ModelKind:
    """Add a kind; its ``key`` becomes a bank-entry key and ``BankEntry.<key>`` an attribute."""
    if kind.key in KINDS:
        raise ValueError(f"a bank kind with the key {kind.key!r} is registered already")
    if kind.key == "name" or kind.key in COMMON_KEYS:
        raise ValueError(f"{kind.key!r} is a key of every bank entry, not a kind key")
    KINDS[kind.key] = kind
    declare_kind_key(kind.key)
    return kind


register(MonaiNetwork())
register(Factory())
register(TorchScript())
register(NnUNet())
register(Bundle())


@contextmanager
def registered(kind: ModelKind) -> Iterator[ModelKind]:
    """Register ``kind`` for the ``with`` block only (for tests and experiments)."""
    register(kind)
    try:
        yield kind
    finally:
        del KINDS[kind.key]


def kind_of(entry: BankEntry) -> ModelKind:
    """The registered kind of a parsed entry."""
    try:
        return KINDS[entry.kind]
    except KeyError:
        raise UserError(
            f"model '{entry.name}': no bank kind '{entry.kind}' is registered "
            f"(known: {', '.join(KINDS)})"
        ) from None


def builder_keys() -> tuple[str, ...]:
    """Keys of the kinds that build an entry from the common keys (``owns_entry`` False)."""
    return tuple(key for key, kind in KINDS.items() if not kind.owns_entry)


def entry_keys() -> tuple[str, ...]:
    """Every key an entry may have: ``name``, the builder keys, the common keys, the keys of
    the kinds that own their entry."""
    owners = tuple(key for key, kind in KINDS.items() if kind.owns_entry)
    return ("name", *builder_keys(), *COMMON_KEYS, *owners)


def parse_entry(raw: Mapping[str, Any], ctx: ParseContext) -> BankEntry:
    """Validate one entry (a mapping whose ``name`` is checked) with the kind its keys name.

    A kind that owns its entry is taken when its key is set (first in registration order);
    otherwise the entry's keys must be known and name exactly one builder kind.
    """
    for kind in KINDS.values():
        if kind.owns_entry and raw.get(kind.key) is not None:
            return kind.parse(raw, ctx)
    check_keys(raw, ctx.entry_keys, ctx.where)
    builders = [kind for kind in KINDS.values() if not kind.owns_entry]
    given = [kind for kind in builders if raw.get(kind.key) is not None]
    if len(given) != 1:
        what = "none" if not given else " and ".join(kind.key for kind in given)
        choices = [f"'{kind.key}' ({kind.key_hint})" for kind in builders]
        listed = ", ".join(choices[:-1]) + " or " + choices[-1] if len(choices) > 1 else choices[0]
        raise UserError(f"{ctx.where}: give exactly one of {listed}; got {what}")
    return given[0].parse(raw, ctx)


def raw_kind(raw: Any) -> str:
    """The kind key an unparsed entry sets (owners first), ``"?"`` when none."""
    if isinstance(raw, Mapping):
        ordered = sorted(KINDS.values(), key=lambda kind: not kind.owns_entry)
        for kind in ordered:
            if raw.get(kind.key) is not None:
                return kind.key
    return "?"


def entry_files(entry: BankEntry) -> list[tuple[str, str]]:
    """``[(what, absolute path)]`` of the files and folders the entry reads: its checkpoint,
    then those of its kind (``"checkpoint of model 'x'"``, ...)."""
    found: list[tuple[str, Path]] = []
    if entry.checkpoint is not None:
        found.append(("checkpoint", Path(entry.checkpoint)))
    found += kind_of(entry).files(entry)
    return [(f"{what} of model '{entry.name}'", str(path.resolve())) for what, path in found]


def scan_folder(folder: Path, base: Path) -> list[Candidate | Skipped] | None:
    """What the first kind that recognises ``folder`` finds in it, None if none does."""
    for kind in KINDS.values():
        found = kind.scan_folder(folder, base)
        if found is not None:
            return found
    return None


def scan_file(path: Path, base: Path) -> Candidate | Skipped | None:
    """What the first kind that reads files like ``path`` makes of it, None if none does."""
    for kind in KINDS.values():
        found = kind.scan_file(path, base)
        if found is not None:
            return found
    return None
