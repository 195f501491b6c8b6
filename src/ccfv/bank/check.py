"""Check a bank (``ccfv bank check``): load every entry and run one dummy window through it.

:func:`check_bank` reads a bank file and :func:`check_entries` loads every entry of it, giving
one :class:`CheckRow` per entry; :func:`format_check_table` prints them. A bank is written from
folders by :mod:`ccfv.bank.init` (``ccfv bank init``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ccfv.bank.build import load_model
from ccfv.bank.entry import BankEntry
from ccfv.bank.hooks import hooked
from ccfv.bank.kinds import kind_of, raw_kind
from ccfv.bank.layers import resolve_layers
from ccfv.bank.schema import parse_bank, read_bank_file
from ccfv.errors import UserError, first_line

__all__ = [
    "CheckRow",
    "check_bank",
    "check_entries",
    "format_check_table",
    "preprocessing_summary",
]


@dataclass
class CheckRow:
    """What ``ccfv bank check`` found for one entry."""

    name: str
    source_format: str = "?"
    n_params: int | None = None
    layers: list[tuple[str, tuple[int, ...] | None]] = field(default_factory=list)
    preprocessing: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def check_bank(path: str | Path) -> list[CheckRow]:
    """Check every entry of a bank file; an invalid entry is a failed row, not an exception.

    Raises
    ------
    UserError
        The file is missing, not YAML, or has no ``models`` list.
    """
    path, data = read_bank_file(path)
    models = data.get("models") if isinstance(data, Mapping) else None
    if not isinstance(models, list) or not models:
        raise UserError(
            f"{path}: a bank must be a mapping with 'models', a non-empty list of model entries"
        )
    base = path.resolve().parent
    rows: list[CheckRow] = []
    seen: set[str] = set()
    for index, raw in enumerate(models):
        name = raw.get("name") if isinstance(raw, Mapping) else None
        name = str(name) if name else f"<entry {index + 1}>"
        try:
            (entry,) = parse_bank({"models": [raw]}, base, source=str(path))
        except UserError as error:
            rows.append(CheckRow(name=name, source_format=raw_kind(raw), error=str(error)))
            continue
        if entry.name in seen:
            rows.append(
                CheckRow(
                    name=name,
                    source_format=entry.kind,
                    error=(
                        f"model name '{entry.name}' is used twice; every model needs its own name"
                    ),
                )
            )
            continue
        seen.add(entry.name)
        rows.extend(check_entries([entry]))
    return rows


def check_entries(entries: Sequence[BankEntry]) -> list[CheckRow]:
    """Load each entry and run one zero window ``(1, in_channels, *roi)`` through it."""
    rows = []
    for entry in entries:
        row = CheckRow(name=entry.name, source_format=entry.kind)
        rows.append(row)
        try:
            row.preprocessing = preprocessing_summary(entry)
        except Exception as exc:  # a summary must never hide the real check
            row.preprocessing = f"? ({first_line(exc, printable=True)})"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model, _ = load_model(entry)
            row.n_params = sum(p.numel() for p in model.parameters())
            layers = resolve_layers(model, entry)
        except UserError as error:
            row.error = str(error)
            continue
        except Exception as exc:
            row.error = (
                f"cannot be loaded ({type(exc).__name__}: {first_line(exc, printable=True)})"
            )
            continue
        pre = entry.preprocessing
        if pre.roi is None:
            row.layers = [(s.key, None) for s in layers]
            row.error = (
                f"model '{entry.name}': the window size is unknown (no "
                "preprocessing.roi"
                + kind_of(entry).window_note(entry)
                + "); add preprocessing: {roi: [96, 96, 96]} (the patch size it was "
                "trained with) to its entry"
            )
            continue
        shape = (1, pre.in_channels or 1, *pre.roi)
        try:
            with hooked(model, layers) as feats, torch.no_grad():
                model(torch.zeros(shape))
                row.layers = [
                    (s.key, tuple(feats[s.key].shape) if s.key in feats else None) for s in layers
                ]
        except UserError as error:
            row.error = str(error)
            continue
        except Exception as exc:
            row.error = (
                f"a zero window of shape {shape} does not run through it "
                f"({type(exc).__name__}: {first_line(exc, printable=True)}); "
                "check roi and "
                "in_channels in its preprocessing"
            )
            continue
        missing = [k for k, s in row.layers if s is None]
        if missing:
            row.error = (
                f"layer(s) {', '.join(missing)} gave no tensor in a forward; choose "
                "other layers (ccfv layers lists them)"
            )
    return rows


def preprocessing_summary(entry: BankEntry) -> str:
    """One line: what the entry's preprocessing does and its window (from its kind)."""
    return kind_of(entry).summary(entry)


def format_check_table(rows: Sequence[CheckRow]) -> str:
    """A Markdown table of the check rows."""
    header = ["name", "format", "parameters", "layers (output shape)", "preprocessing", "status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        layers = (
            "; ".join(f"{k} {'x'.join(map(str, s)) if s else '?'}" for k, s in row.layers) or "-"
        )
        params = f"{row.n_params:,}" if row.n_params is not None else "-"
        status = "ok" if row.ok else "error: " + str(row.error).replace("\n", " ")
        cells = [row.name, row.source_format, params, layers, row.preprocessing or "-", status]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)
