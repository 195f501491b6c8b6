"""Build a bank from folders (``ccfv bank init``).

:func:`scan_folders` walks folders for models ccfv can read without being told their
architecture:

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
import re
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ccfv.errors import UserError, first_line, printable_text

__all__ = [
    "Candidate",
    "Skipped",
    "scan_folders",
    "write_bank",
]

_BUNDLE_CONFIGS = ("inference.json", "inference.yaml", "inference.yml")
_CHECKPOINT_ORDER = ("checkpoint_final.pth", "checkpoint_best.pth", "checkpoint_latest.pth")
_IGNORED_DIRS = ("__pycache__", "node_modules")
_DEFAULT_ROI = {3: (96, 96, 96), 2: (256, 256)}


@dataclass
class Candidate:
    """A model found by the scan: its bank entry (as written) and where it came from."""

    raw: dict[str, Any]
    source_format: str
    path: Path
    comment: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass
class Skipped:
    """A file or folder the scan did not turn into an entry, and why."""

    path: Path
    reason: str


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
        dirnames[:] = sorted(d for d in dirnames
                             if not d.startswith(".") and d not in _IGNORED_DIRS)
        if "plans.json" in filenames and "dataset.json" in filenames:
            _nnunet_folder(here, base, found, skipped)
            dirnames[:] = []
            continue
        if _is_bundle(here):
            _bundle_folder(here, base, found, skipped)
            dirnames[:] = []
            continue
        for name in sorted(filenames):
            _scan_file(here / name, base, found, skipped)


def _scan_file(path: Path, base: Path, found: list, skipped: list) -> None:
    suffix = path.suffix.lower()
    if suffix == ".ts":
        found.append(_torchscript_candidate(path, base))
    elif suffix in (".pt", ".pth"):
        kind, reason = _probe_torch_file(path)
        if kind == "torchscript":
            found.append(_torchscript_candidate(path, base))
        else:
            skipped.append(Skipped(path, reason))


def _is_bundle(folder: Path) -> bool:
    configs = folder / "configs"
    models = folder / "models"
    has_config = any((configs / n).is_file() for n in _BUNDLE_CONFIGS)
    has_weights = (models / "model.pt").is_file() or (models / "model.ts").is_file()
    return has_config or (configs.is_dir() and has_weights)


def _bundle_folder(folder: Path, base: Path, found: list, skipped: list) -> None:
    models = folder / "models"
    if not (models / "model.pt").is_file():
        if (models / "model.ts").is_file():
            skipped.append(Skipped(folder, (
                "MONAI bundle with only models/model.ts (TorchScript): its layers cannot be "
                "hooked (TorchScript runs no Python hooks); add the state dict as "
                "models/model.pt (the bundle's model.pt from the model zoo)")))
        else:
            skipped.append(Skipped(folder, "MONAI bundle without weights models/model.pt; put "
                                           "the network's state dict there"))
        return
    config = next((n for n in _BUNDLE_CONFIGS if (folder / "configs" / n).is_file()), "?")
    found.append(Candidate(
        raw={"name": _clean(folder.name), "bundle": _rel(folder, base)},
        source_format="bundle", path=folder,
        comment=f"MONAI bundle: {folder} (configs/{config} + models/model.pt)"))


def _nnunet_folder(folder: Path, base: Path, found: list, skipped: list) -> None:
    folds = sorted((p for p in folder.glob("fold_*") if p.is_dir()), key=_fold_key)
    any_fold = False
    for fold_dir in folds:
        fold_text = fold_dir.name[len("fold_"):]
        if not (fold_text.isdigit() or fold_text == "all"):
            continue
        ckpt = next((n for n in _CHECKPOINT_ORDER if (fold_dir / n).is_file()), None)
        if ckpt is None:
            others = sorted(p.name for p in fold_dir.glob("*.pth"))
            ckpt = others[0] if others else None
        if ckpt is None:
            skipped.append(Skipped(fold_dir, "nnU-Net fold folder without a checkpoint "
                                             "(checkpoint_final.pth); finish or copy the training"))
            continue
        any_fold = True
        fold: int | str = int(fold_text) if fold_text.isdigit() else "all"
        trainer, plans, config = _nnunet_parts(folder.name)
        name_parts = [folder.parent.name]
        if trainer and trainer != "nnUNetTrainer":
            name_parts.append(trainer)
        if plans and plans != "nnUNetPlans":
            name_parts.append(plans)
        name_parts += [config or folder.name, f"fold{fold}"]
        raw: dict[str, Any] = {"name": _clean("_".join(name_parts)),
                               "nnunet": _rel(folder, base), "fold": fold}
        if ckpt != "checkpoint_final.pth":
            raw["checkpoint"] = ckpt
        found.append(Candidate(
            raw=raw, source_format="nnunet", path=fold_dir,
            comment=f"nnU-Net v2 results folder: {folder} (fold {fold}, {ckpt})"))
    if not any_fold and not folds:
        skipped.append(Skipped(folder, "has plans.json and dataset.json but no fold_* folder "
                                       "with a checkpoint; point the scan at a trained-model "
                                       "folder of nnUNet_results"))


def _nnunet_parts(name: str) -> tuple[str, str, str]:
    parts = name.split("__")
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    return "", "", ""


def _fold_key(path: Path) -> tuple[int, int | str]:
    text = path.name[len("fold_"):]
    return (0, int(text)) if text.isdigit() else (1, text)


def _torchscript_candidate(path: Path, base: Path) -> Candidate:
    return Candidate(raw={"name": _clean(path.stem), "torchscript": _rel(path, base)},
                     source_format="torchscript", path=path,
                     comment=f"TorchScript file: {path}")


def _probe_torch_file(path: Path) -> tuple[str, str]:
    """``("torchscript", "")`` for a TorchScript archive, else ``("skip", reason)``.

    Never unpickles arbitrary objects: ``torch.load(weights_only=True)`` only.
    """
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError):
            names = []
        if any("/code/" in n or n.endswith("/constants.pkl") for n in names):
            return "torchscript", ""
    from ccfv.bank.checkpoint import load_torch_file

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = load_torch_file(path, "this file")
    except UserError as exc:
        return "skip", f"{exc}; or write a 'network'/'args'/'checkpoint' entry by hand"
    if _holds_state_dict(obj):
        return "skip", (
            "a state dict: it does not say its architecture. Write its entry by hand: "
            "{name: ..., network: monai.networks.nets.UNet (its class), args: {...the "
            f"constructor arguments...}}, checkpoint: {path}}}")
    return "skip", (f"holds a {type(obj).__name__}, not a model ccfv can build; save a "
                    "TorchScript file or a state dict with a 'network'/'args' entry")


def _holds_state_dict(obj: Any) -> bool:
    import torch

    if not isinstance(obj, Mapping) or not obj:
        return False
    if any(isinstance(v, torch.Tensor) for v in obj.values()):
        return True
    return any(isinstance(v, Mapping) and any(isinstance(t, torch.Tensor) for t in v.values())
               for v in obj.values())


def _try_load(cand: Candidate, base: Path, out: Path) -> str | None:
    """None when the candidate validates and loads (its entry completed), else the reason."""
    from ccfv.bank.build import TorchScriptModel, load_model
    from ccfv.bank.layers import list_layers
    from ccfv.bank.schema import parse_bank

    try:
        (entry,) = parse_bank({"models": [cand.raw]}, base, source=str(out))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, _ = load_model(entry)
    except UserError as error:
        return str(error)
    except Exception as exc:  # a file that looks like a model but is not one
        return f"cannot be loaded ({type(exc).__name__}: {first_line(exc, printable=True)})"
    if isinstance(model, TorchScriptModel):  # no hooks: read what forward returns
        cand.raw["layers"] = ["outputs.0"]
        guess = _guess_input(model)
        if guess is None:
            cand.notes.append("input size unknown: set preprocessing.roi (the training patch "
                              "size) and in_channels")
            return None
        channels, dims = guess
        roi = _DEFAULT_ROI[dims]
        try:
            infos = list_layers(model, [1, channels, *roi])
        except Exception as exc:
            cand.notes.append(f"a {list(roi)} window did not run "
                              f"({first_line(exc, printable=True)[:100]}); "
                              "set preprocessing.roi (the training patch size)")
            return None
        cand.raw["layers"] = [i.name for i in infos if i.output_shape is not None] or ["outputs.0"]
        cand.raw["preprocessing"] = {"roi": list(roi), "in_channels": channels}
        cand.notes.append("TorchScript runs no hooks: layers are what its forward returns "
                          "(outputs.N); roi guessed, set the training patch size")
    return None


def _guess_input(model) -> tuple[int, int] | None:
    """(in_channels, spatial dims) from the first convolution weight of a scripted model."""
    for p in model.scripted.parameters():
        if p.ndim in (4, 5):
            return int(p.shape[1]), p.ndim - 2
    return None


def _unique(name: str, taken: set[str]) -> str:
    out, i = name, 2
    while out in taken:
        out, i = f"{name}_{i}", i + 1
    taken.add(out)
    return out


def _clean(text: str) -> str:
    text = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")
    return text or "model"


def _rel(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


# ------------------------------------------------------------------------------------------------
# writing


def write_bank(
    out: str | Path, loaded: Sequence[Candidate], skipped: Sequence[Skipped],
    folders: Sequence[str | Path], *, force: bool = False,
) -> Path:
    """Write the commented bank YAML file (``force`` overwrites an existing one)."""
    out = Path(out).expanduser()
    if out.exists() and not force:
        raise UserError(f"{out} exists; give another --out or --force to overwrite it")
    if not loaded:
        raise UserError("found no model that loads in " + ", ".join(map(str, folders))
                        + "; nothing written (see the skipped list)")
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# ccfv model bank written by `ccfv bank init` on {now}",
        "# scanned: " + ", ".join(str(Path(f).expanduser().resolve()) for f in folders),
        f"# {len(loaded)} model(s) loaded, {len(skipped)} skipped (listed at the end).",
        "# Relative paths are read from this file's folder. Check it: ccfv bank check "
        f"{out.name}",
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
            lines.append(f"#   {printable_text(str(item.path))}: "
                         + printable_text(item.reason.replace("\n", " ")))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def _flow(value: Any) -> str:
    """``value`` as one line of YAML (flow style)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000)
    return text.split("\n...")[0].strip()
