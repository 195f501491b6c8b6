"""Build a bank from folders (``ccfv bank init``).

:func:`scan_folders` walks folders for models ccfv can read without being told their
architecture. Each bank kind recognises its own folders and files
(:meth:`ccfv.bank.kinds.ModelKind.scan_folder` / ``scan_file``, asked in registration order);
today:

* nnU-Net v2 trained-model folders (``plans.json`` + ``dataset.json`` + ``fold_*/*.pth``): one
  ``nnunet:`` entry per fold;
* MONAI bundles (``configs/inference.json|yaml`` + ``models/model.pt``): one ``bundle:`` entry;
  a bundle with only ``models/model.ts`` is skipped (TorchScript runs no hooks);
* TorchScript files (``*.ts``, and ``*.pt``/``*.pth`` that are TorchScript archives): one
  ``torchscript:`` entry, whose layers are what its forward returns (``outputs.N``);
* other ``*.pt``/``*.pth`` files are skipped: a state dict does not say its architecture (write
  a ``network``/``args`` entry by hand), and anything else would need unpickling arbitrary
  Python objects, which ccfv never does (``torch.load(weights_only=True)`` only).

Every candidate is validated and loaded (:func:`ccfv.bank.load_model`); only those that load
are written (:func:`write_bank`, a commented YAML file), the others are returned as skipped with
the reason. ``ccfv bank check`` is :mod:`ccfv.bank.check`.
"""

from __future__ import annotations

import datetime
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ccfv.bank.build import load_model
from ccfv.bank.kinds import Candidate, Skipped, kind_of, scan_file, scan_folder
from ccfv.bank.schema import parse_bank
from ccfv.errors import UserError, first_line, printable_text

__all__ = [
    "Candidate",
    "Skipped",
    "scan_folders",
    "write_bank",
]

_IGNORED_DIRS = ("__pycache__", "node_modules")


# ------------------------------------------------------------------------------------------------
# scanning


def scan_folders(
    folders: Sequence[str | Path], out: str | Path
) -> tuple[list[Candidate], list[Skipped]]:
    """Find the models under ``folders`` and keep those that load.

    Parameters
    ----------
    folders : sequence of path
        Folders (or single model files) to scan recursively.
    out : path
        The bank file to be written; entry paths are written relative to its folder when they
        lie under it, absolute otherwise.

    Returns
    -------
    loaded : list of Candidate
        Entries that validate and load, in scan order, with unique names.
    skipped : list of Skipped
        Everything else that looked like a model, with the reason.
    """
    base = Path(out).expanduser().resolve().parent
    found: list[Candidate] = []
    skipped: list[Skipped] = []
    for folder in folders:
        path = Path(folder).expanduser()
        if not path.exists():
            raise UserError(f"ccfv bank init: {path} does not exist; give folders to scan")
        path = path.resolve()
        if path.is_file():
            _scan_file(path, base, found, skipped)
        else:
            _scan_dir(path, base, found, skipped)

    names: set[str] = set()
    for cand in found:
        cand.raw["name"] = _unique(cand.raw["name"], names)
    loaded = []
    for cand in found:
        reason = _try_load(cand, base, Path(out))
        if reason is None:
            loaded.append(cand)
        else:
            skipped.append(Skipped(cand.path, reason))
            names.discard(cand.raw["name"])
    return loaded, skipped


def _scan_dir(root: Path, base: Path, found: list, skipped: list) -> None:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and d not in _IGNORED_DIRS
        )
        items = scan_folder(here, base)
        if items is not None:  # a model folder of some kind: not descended into
            _sort(items, found, skipped)
            dirnames[:] = []
            continue
        for name in sorted(filenames):
            _scan_file(here / name, base, found, skipped)


def _scan_file(path: Path, base: Path, found: list, skipped: list) -> None:
    item = scan_file(path, base)
    if item is not None:
        _sort([item], found, skipped)


def _sort(items: Sequence[Candidate | Skipped], found: list, skipped: list) -> None:
    for item in items:
        (found if isinstance(item, Candidate) else skipped).append(item)


def _try_load(cand: Candidate, base: Path, out: Path) -> str | None:
    """None when the candidate validates and loads (its entry completed), else the reason."""
    try:
        (entry,) = parse_bank({"models": [cand.raw]}, base, source=str(out))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, _ = load_model(entry)
    except UserError as error:
        return str(error)
    except Exception as exc:  # a file that looks like a model but is not one
        return f"cannot be loaded ({type(exc).__name__}: {first_line(exc, printable=True)})"
    kind_of(entry).complete_candidate(cand, model)
    return None


def _unique(name: str, taken: set[str]) -> str:
    out, i = name, 2
    while out in taken:
        out, i = f"{name}_{i}", i + 1
    taken.add(out)
    return out


# ------------------------------------------------------------------------------------------------
# writing


def write_bank(
    out: str | Path,
    loaded: Sequence[Candidate],
    skipped: Sequence[Skipped],
    folders: Sequence[str | Path],
    *,
    force: bool = False,
) -> Path:
    """Write the commented bank YAML file (``force`` overwrites an existing one)."""
    out = Path(out).expanduser()
    if out.exists() and not force:
        raise UserError(f"{out} exists; give another --out or --force to overwrite it")
    if not loaded:
        raise UserError(
            "found no model that loads in "
            + ", ".join(map(str, folders))
            + "; nothing written (see the skipped list)"
        )
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# ccfv model bank written by `ccfv bank init` on {now}",
        "# scanned: " + ", ".join(str(Path(f).expanduser().resolve()) for f in folders),
        f"# {len(loaded)} model(s) loaded, {len(skipped)} skipped (listed at the end).",
        f"# Relative paths are read from this file's folder. Check it: ccfv bank check {out.name}",
        "models:",
    ]
    for cand in loaded:
        lines.append(f"  # {printable_text(cand.comment)}")
        for note in cand.notes:
            lines.append(f"  # note: {printable_text(note)}")
        body = []
        for key, value in cand.raw.items():
            if isinstance(value, Mapping):
                body.append(f"{key}:")
                body += [f"  {k}: {_flow(v)}" for k, v in value.items()]
            else:
                body.append(f"{key}: {_flow(value)}")
        lines += [("  - " if i == 0 else "    ") + line for i, line in enumerate(body)]
    if skipped:
        lines.append("")
        lines.append("# skipped:")
        for item in skipped:
            lines.append(
                f"#   {printable_text(str(item.path))}: "
                + printable_text(item.reason.replace("\n", " "))
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def _flow(value: Any) -> str:
    """``value`` as one line of YAML (flow style)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000)
    return text.split("\n...")[0].strip()
