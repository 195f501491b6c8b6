"""Build a bank from folders (``ccfv bank init``) and check a bank (``ccfv bank check``).

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
the reason. :func:`check_entries` loads every entry of a bank and runs one dummy window through
it, giving one :class:`CheckRow` per entry.
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
    "CheckRow",
    "Skipped",
    "check_bank",
    "check_entries",
    "format_check_table",
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
            cand.notes.append(f"a {list(roi)} window did not run ({first_line(exc, printable=True)[:100]}); "
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
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
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


# ------------------------------------------------------------------------------------------------
# checking


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
    from ccfv.bank.schema import parse_bank, read_bank_file

    path, data = read_bank_file(path)
    models = data.get("models") if isinstance(data, Mapping) else None
    if not isinstance(models, list) or not models:
        raise UserError(f"{path}: a bank must be a mapping with 'models', a non-empty list of "
                        "model entries")
    base = path.resolve().parent
    rows: list[CheckRow] = []
    seen: set[str] = set()
    for index, raw in enumerate(models):
        name = raw.get("name") if isinstance(raw, Mapping) else None
        name = str(name) if name else f"<entry {index + 1}>"
        try:
            (entry,) = parse_bank({"models": [raw]}, base, source=str(path))
        except UserError as error:
            rows.append(CheckRow(name=name, source_format=_raw_format(raw), error=str(error)))
            continue
        if entry.name in seen:
            rows.append(CheckRow(name=name, source_format=entry.kind, error=(
                f"model name '{entry.name}' is used twice; every model needs its own name")))
            continue
        seen.add(entry.name)
        rows.extend(check_entries([entry]))
    return rows


def _raw_format(raw: Any) -> str:
    if isinstance(raw, Mapping):
        for key in ("bundle", "nnunet", "network", "factory", "torchscript"):
            if raw.get(key) is not None:
                return key
    return "?"


def check_entries(entries: Sequence) -> list[CheckRow]:
    """Load each entry and run one zero window ``(1, in_channels, *roi)`` through it."""
    import torch

    from ccfv.bank.build import load_model
    from ccfv.bank.layers import hooked, resolve_layers

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
            row.error = f"cannot be loaded ({type(exc).__name__}: {first_line(exc, printable=True)})"
            continue
        pre = entry.preprocessing
        if pre.roi is None:
            row.layers = [(s.key, None) for s in layers]
            row.error = (f"model '{entry.name}': the window size is unknown (no "
                         "preprocessing.roi" + (", and the bundle's inferer is no "
                                                "SlidingWindowInferer" if entry.bundle else "")
                         + "); add preprocessing: {roi: [96, 96, 96]} (the patch size it was "
                         "trained with) to its entry")
            continue
        shape = (1, pre.in_channels or 1, *pre.roi)
        try:
            with hooked(model, layers) as feats, torch.no_grad():
                model(torch.zeros(shape))
                row.layers = [(s.key, tuple(feats[s.key].shape) if s.key in feats else None)
                              for s in layers]
        except UserError as error:
            row.error = str(error)
            continue
        except Exception as exc:
            row.error = (f"a zero window of shape {shape} does not run through it "
                         f"({type(exc).__name__}: {first_line(exc, printable=True)}); check roi and "
                         "in_channels in its preprocessing")
            continue
        missing = [k for k, s in row.layers if s is None]
        if missing:
            row.error = (f"layer(s) {', '.join(missing)} gave no tensor in a forward; choose "
                         "other layers (ccfv layers lists them)")
    return rows


def preprocessing_summary(entry) -> str:
    """One line: what the entry's preprocessing does and its window."""
    pre = entry.preprocessing
    window = (f"roi {'x'.join(map(str, pre.roi))}" if pre.roi else "roi ?") + \
        f", overlap {pre.overlap:g}"
    if entry.kind == "bundle":
        from ccfv.bank.bundle import SKIPPED_TRANSFORMS, bundle_parser

        cfg = bundle_parser(entry.bundle, entry.name).get("preprocessing")
        steps = cfg.get("transforms", []) if isinstance(cfg, Mapping) else []
        names = [str(t.get("_target_", "?")).rsplit(".", 1)[-1] for t in steps
                 if isinstance(t, Mapping)]
        names = [n for n in names if n not in SKIPPED_TRANSFORMS]
        return f"bundle transforms: {', '.join(names) or 'none'}; {window}"
    if entry.kind == "nnunet":
        import json

        from ccfv.bank.nnunet import _configuration

        plans = json.loads((Path(entry.nnunet) / "plans.json").read_text(encoding="utf-8"))
        cfg = _configuration(plans, entry.args["configuration"])
        spacing = "x".join(f"{v:g}" for v in cfg.get("spacing", []))
        schemes = ", ".join(cfg.get("normalization_schemes", []))
        return (f"nnU-Net {entry.args['configuration']}: {schemes or '?'}, spacing "
                f"{spacing or '?'}; {window}")
    parts = []
    if pre.orientation:
        parts.append(pre.orientation)
    if pre.spacing:
        parts.append("spacing " + "x".join(f"{v:g}" for v in pre.spacing))
    it = pre.intensity
    if it.kind != "none":
        detail = ""
        if it.kind == "ct" and isinstance(it.clip, tuple):
            detail = f" [{it.clip[0]:g}, {it.clip[1]:g}]"
        elif it.kind == "range":
            detail = f" [{it.a_min:g}, {it.a_max:g}]"
        parts.append(f"intensity {it.kind}{detail}")
    parts.append(window)
    return ", ".join(parts)


def format_check_table(rows: Sequence[CheckRow]) -> str:
    """A Markdown table of the check rows."""
    header = ["name", "format", "parameters", "layers (output shape)", "preprocessing",
              "status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        layers = "; ".join(
            f"{k} {'x'.join(map(str, s)) if s else '?'}" for k, s in row.layers) or "-"
        params = f"{row.n_params:,}" if row.n_params is not None else "-"
        status = "ok" if row.ok else "error: " + str(row.error).replace("\n", " ")
        cells = [row.name, row.source_format, params, layers, row.preprocessing or "-", status]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)
