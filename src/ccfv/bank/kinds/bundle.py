"""MONAI bundle entries: ``bundle: path/to/bundle_dir`` in the bank file.

A bundle folder holds ``configs/inference.json`` (or ``.yaml``/``.yml``), usually
``configs/metadata.json``, and the weights ``models/model.pt`` (a state dict, or
``{"model": state_dict}`` as MONAI's ``CheckpointLoader`` accepts). It is read with
:class:`monai.bundle.ConfigParser` with ``bundle_root`` set to the folder:

* network: ``network_def`` is instantiated and ``models/model.pt`` loaded with
  ``load_state_dict(strict=True)``; weights that do not fit are refused. A bundle with only
  ``models/model.ts`` (TorchScript) is refused: TorchScript runs no Python hooks, so its
  layers cannot be read.
* preprocessing: the bundle's own ``preprocessing`` (a ``Compose``) is instantiated and its
  transforms applied in order to ``{key: MetaTensor(image, affine=affine)}``, where ``key`` is
  the first key of its ``LoadImaged`` (``"image"`` if it has none), **except** ``LoadImaged``,
  ``LoadImage``, ``EnsureChannelFirstd`` and ``EnsureChannelFirst``: ccfv has already read the
  file into a channel-first array with its RAS+ affine, which is what those two give (MONAI's
  NIfTI reader is nibabel, as ccfv's). Everything else (``Orientationd``, ``Spacingd``,
  ``ScaleIntensityRanged``, ``CropForegroundd``, ``EnsureTyped``, ...) runs as the bundle says.
  The affine returned is the MetaTensor's ``.affine`` after the transforms, so planned voxels
  are mapped into the preprocessed grid through world coordinates; the label is never
  resampled.
* window: ``roi_size``, ``overlap`` and ``sw_batch_size`` of the bundle's ``inferer`` (when it
  is a ``SlidingWindowInferer``) become the entry's window settings; the bank entry's own
  ``preprocessing: {roi, overlap, sw_batch_size}`` overrides them.
* layers: ``layers: auto`` works when ``network_def`` is one of the MONAI classes ``auto``
  knows (:data:`ccfv.bank.AUTO_ARCHITECTURES`); otherwise the error lists the network's
  modules and output shapes (what ``ccfv layers`` prints) to pick from.

Bank entry keys for a bundle: ``name``, ``bundle``, ``layers`` and optionally
``preprocessing`` with only ``roi``, ``overlap``, ``sw_batch_size``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from ccfv.bank.checkpoint import LoadReport, load_torch_file
from ccfv.bank.entry import BankEntry, LayerSpec, Preprocessing
from ccfv.bank.hashing import file_sha256
from ccfv.bank.hooks import auto_layers, list_layers
from ccfv.bank.kinds.base import Candidate, ModelKind, Skipped, clean_name, relative_path
from ccfv.bank.transforms import PreprocessFn, as_meta_tensor, window_summary
from ccfv.bank.validate import (
    ParseContext,
    check_keys,
    parse_layers,
    parse_preprocessing,
    resolve_folder,
    string,
)
from ccfv.errors import UserError, first_line

__all__ = [
    "BUNDLE_ENTRY_KEYS",
    "Bundle",
    "SKIPPED_TRANSFORMS",
    "bundle_auto_layers",
    "bundle_files",
    "bundle_parser",
    "inference_config",
    "load_bundle_model",
    "make_bundle_preprocess",
    "parse_bundle_entry",
]

BUNDLE_ENTRY_KEYS = ("name", "bundle", "layers", "preprocessing")
BUNDLE_PREPROCESSING_KEYS = ("roi", "overlap", "sw_batch_size")
#: Transforms of the bundle's ``preprocessing`` that ccfv skips (the image is already loaded,
#: channel first, with its affine).
SKIPPED_TRANSFORMS = ("LoadImaged", "LoadImage", "EnsureChannelFirstd", "EnsureChannelFirst")
_CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")


# ------------------------------------------------------------------------------------------------
# files and parser


def inference_config(folder: Path) -> Path | None:
    """``configs/inference.json`` (or ``.yaml``/``.yml``) of a bundle folder, None if absent."""
    for name in _CONFIG_NAMES:
        path = folder / "configs" / name
        if path.is_file():
            return path
    return None


def bundle_files(folder: Path) -> list[Path]:
    """The files whose content defines the bundle's features: configs and weights."""
    configs = folder / "configs"
    files = sorted(p for p in configs.rglob("*") if p.is_file()) if configs.is_dir() else []
    weights = folder / "models" / "model.pt"
    return [*files, weights] if weights.is_file() else files


def bundle_parser(folder: Path, where: str = "bundle"):
    """A :class:`monai.bundle.ConfigParser` of the bundle's inference config and metadata."""
    from monai.bundle import ConfigParser

    config = inference_config(folder)
    if config is None:
        raise UserError(
            f"{where}: bundle {folder} has no configs/inference.json (or .yaml); a MONAI bundle "
            "needs its inference config there (network_def, preprocessing, inferer)"
        )
    parser = ConfigParser()
    try:
        meta = folder / "configs" / "metadata.json"
        if meta.is_file():
            parser.read_meta(str(meta))
        parser.read_config(str(config))
    except Exception as exc:  # malformed JSON / YAML
        raise UserError(
            f"{where}: cannot read {config} ({type(exc).__name__}: {first_line(exc)}); fix the "
            "bundle's config file"
        ) from None
    parser["bundle_root"] = str(folder)
    return parser


# ------------------------------------------------------------------------------------------------
# bank entry


def parse_bundle_entry(raw: Mapping[str, Any], ctx: ParseContext) -> BankEntry:
    """Validate a ``bundle:`` bank entry and return its :class:`BankEntry`."""
    where, base = ctx.where, ctx.base
    check_keys(raw, ctx.entry_keys, where)
    extra = [k for k in raw if k not in BUNDLE_ENTRY_KEYS]
    if extra:
        raise UserError(
            f"{where}: '{extra[0]}' is not used with 'bundle' (the bundle's configs give the "
            f"network, weights and preprocessing); allowed keys: {', '.join(BUNDLE_ENTRY_KEYS)}"
        )
    text = string(
        str(raw["bundle"]) if isinstance(raw["bundle"], Path) else raw["bundle"],
        f"{where}: 'bundle'",
    )
    folder = resolve_folder(text, base)
    if not folder.is_dir():
        raise UserError(
            f"{where}: bundle folder {folder} does not exist (relative paths are read from "
            f"{base}); give the folder holding configs/ and models/"
        )
    config = inference_config(folder)
    if config is None:
        raise UserError(
            f"{where}: bundle {folder} has no configs/inference.json (or .yaml); a MONAI bundle "
            "needs its inference config there (network_def, preprocessing, inferer)"
        )
    weights = folder / "models" / "model.pt"
    if not weights.is_file():
        if (folder / "models" / "model.ts").is_file():
            raise UserError(
                f"{where}: bundle {folder} has only models/model.ts (TorchScript), whose layers "
                "cannot be hooked (TorchScript runs no Python hooks); add the state dict as "
                "models/model.pt (the bundle's 'model.pt', e.g. from the model zoo download)"
            )
        raise UserError(
            f"{where}: bundle {folder} has no weights models/model.pt; put the network's state "
            "dict there"
        )
    parser = bundle_parser(folder, where)
    for key in ("network_def", "preprocessing"):
        if key not in parser:
            what = (
                'the network (e.g. {"_target_": "UNet", ...})'
                if key == "network_def"
                else "the image transforms (a Compose starting with LoadImaged)"
            )
            raise UserError(
                f"{where}: {config} has no '{key}'; add '{key}' with {what} to the bundle's "
                "inference config"
            )

    user = raw.get("preprocessing") or {}
    if not isinstance(user, Mapping):
        raise UserError(f"{where}: 'preprocessing' must be a mapping, got {user!r}")
    check_keys(
        user,
        BUNDLE_PREPROCESSING_KEYS,
        f"{where}: 'preprocessing' (a bundle brings its own transforms)",
    )
    window = _inferer_window(parser, config, where)
    window.update({k: v for k, v in user.items() if v is not None})
    args: dict[str, Any] = {}
    net_cfg = parser.get("network_def")
    if isinstance(net_cfg, Mapping):
        args = {k: v for k, v in net_cfg.items() if not str(k).startswith("_")}
    checked = parse_preprocessing(window, {}, where)
    in_channels = args.get("in_channels")
    pre = Preprocessing(
        roi=checked.roi,
        overlap=checked.overlap,
        sw_batch_size=checked.sw_batch_size,
        in_channels=in_channels if isinstance(in_channels, int) else None,
    )
    return BankEntry(
        name=ctx.name,
        kind="bundle",
        location=folder,
        layers=parse_layers(raw.get("layers", "auto"), where),
        preprocessing=pre,
        source=ctx.source,
    )


def _inferer_window(parser, config: Path, where: str) -> dict[str, Any]:
    """``roi``/``overlap``/``sw_batch_size`` of the bundle's SlidingWindowInferer, if any."""
    if "inferer" not in parser:
        return {}
    try:
        inferer = parser.get_parsed_content("inferer")
    except Exception as exc:
        raise UserError(
            f"{where}: the 'inferer' of {config} cannot be built ({type(exc).__name__}: "
            f"{first_line(exc)}); fix it or give preprocessing.roi in the bank entry"
        ) from None
    from monai.inferers import SlidingWindowInferer

    if not isinstance(inferer, SlidingWindowInferer):
        return {}
    out: dict[str, Any] = {
        "overlap": float(inferer.overlap),  # type: ignore[arg-type]
        "sw_batch_size": int(inferer.sw_batch_size),
    }
    roi = inferer.roi_size
    roi = [int(roi)] * 3 if isinstance(roi, (int, np.integer)) else [int(r) for r in roi]
    if all(r > 0 for r in roi):
        out["roi"] = roi
    return out


# ------------------------------------------------------------------------------------------------
# network


def load_bundle_model(entry):
    """Instantiate ``network_def`` and load ``models/model.pt`` strictly; eval mode, CPU."""
    folder = Path(entry.location)
    where = f"model '{entry.name}' in {entry.source}"
    parser = bundle_parser(folder, where)
    config = inference_config(folder)
    if config is None:  # bundle_parser has refused a folder without one already
        raise UserError(f"{where}: {folder} has no configs/inference.json; it is not a bundle")
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = parser.get_parsed_content("network_def")
    except Exception as exc:
        raise UserError(
            f"{where}: network_def of {config} cannot be built ({type(exc).__name__}: "
            f"{first_line(exc)}); fix it in the bundle's config"
        ) from None
    if not isinstance(model, torch.nn.Module):
        raise UserError(
            f"{where}: network_def of {config} gives a {type(model).__name__}, not "
            "a torch.nn.Module; fix it in the bundle's config"
        )
    weights = folder / "models" / "model.pt"
    state = load_torch_file(weights, f"{where}: weights {weights}")
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]  # {"model": state_dict}, as MONAI's CheckpointLoader accepts
    if not isinstance(state, Mapping):
        raise UserError(
            f"{where}: {weights} holds a {type(state).__name__}, not a state dict; "
            "save it with torch.save(network.state_dict(), path)"
        )
    result = _load_strict(model, state)
    if result:
        raise UserError(
            f"{where}: the weights {weights} do not fit the bundle's network_def ({result}); "
            f"use the model.pt trained with this {config.name}, or fix network_def"
        )
    model.eval()
    keys = tuple(state)
    n = sum(1 for _ in model.parameters())
    report = LoadReport(
        entry=entry.name,
        initialisation="checkpoint",
        checkpoint=weights,
        n_params=n,
        n_params_matched=n,
        matched=keys,
    )
    return model, report


def _load_strict(model, state: Mapping[str, Any]) -> str:
    """Load ``state`` with strict=True; '' on success, else what did not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        k
        for k in own
        if k in state
        and hasattr(state[k], "shape")
        and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape mismatched", shapes),
        ):
            if keys:
                parts.append(f"{len(keys)} {label}, e.g. {keys[0]}")
        return "; ".join(parts)
    try:
        model.load_state_dict(dict(state), strict=True)
    except Exception as exc:
        return first_line(exc)
    return ""


# ------------------------------------------------------------------------------------------------
# preprocessing


def make_bundle_preprocess(entry, ndim: int):
    """``f(image, affine) -> (image', affine')`` running the bundle's own ``preprocessing``.

    See the module docstring for which transforms run. Same contract as
    :func:`ccfv.bank.preprocess.make_preprocess`.
    """
    folder = Path(entry.location)
    where = f"model '{entry.name}' in {entry.source}"
    parser = bundle_parser(folder, where)
    config = inference_config(folder)
    try:
        compose = parser.get_parsed_content("preprocessing")
    except Exception as exc:
        raise UserError(
            f"{where}: the 'preprocessing' of {config} cannot be built ({type(exc).__name__}: "
            f"{first_line(exc)}); fix it in the bundle's config"
        ) from None
    transforms = list(compose.transforms) if isinstance(compose, Compose) else [compose]
    key = "image"
    kept = []
    for t in transforms:
        if type(t).__name__ in SKIPPED_TRANSFORMS:
            if type(t).__name__ == "LoadImaged" and getattr(t, "keys", None):
                key = t.keys[0]
            continue
        kept.append(t)
    pipeline = Compose(kept)

    def preprocess(image: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = as_meta_tensor(image, affine, ndim)
        affine = np.asarray(x.affine, dtype=np.float64)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*channel-first.*")
                out = pipeline({key: x})
        except Exception as exc:
            raise UserError(
                f"{where}: the bundle's preprocessing ({config}) failed on the image "
                f"({type(exc).__name__}: {first_line(exc)}); ccfv applies it without "
                f"{'/'.join(SKIPPED_TRANSFORMS)}, to the key '{key}'"
            ) from None
        if isinstance(out, list) or not isinstance(out, Mapping) or key not in out:
            raise UserError(
                f"{where}: the bundle's preprocessing ({config}) must return one dict with "
                f"'{key}'; remove sampling transforms (e.g. Rand*Crop) from it"
            )
        y = out[key]
        out_affine = (
            np.asarray(y.affine, dtype=np.float64).reshape(4, 4)
            if isinstance(y, MetaTensor)
            else affine
        )
        arr = y.as_tensor() if isinstance(y, MetaTensor) else torch.as_tensor(np.asarray(y))
        return np.ascontiguousarray(arr.detach().cpu().numpy().astype(np.float32)), out_affine

    return preprocess


# ------------------------------------------------------------------------------------------------
# layers


def bundle_auto_layers(model, entry) -> list:
    """``layers: auto`` for a bundle; an unknown network gets the ``ccfv layers`` listing."""
    try:
        return auto_layers(model, entry=entry.name)
    except UserError as error:
        pre = entry.preprocessing
        roi = pre.roi or (96, 96, 96)
        try:
            infos = list_layers(model, [1, pre.in_channels or 1, *roi])
            listing = "; ".join(
                f"{i.name} {list(i.output_shape) if i.output_shape else '-'}" for i in infos
            )
        except Exception as exc:  # the dummy forward failed
            listing = f"(could not list: {first_line(exc)})"
        raise UserError(
            f"{error}. Bundle {entry.location} network modules and output shapes (ccfv layers): "
            f"{listing}"
        ) from None


def bundle_fingerprint(entry) -> dict[str, Any]:
    """Content hashes of the bundle's configs and weights (for :mod:`ccfv.bank.fingerprint`)."""
    folder = Path(entry.location)
    return {str(p.relative_to(folder)): file_sha256(p) for p in bundle_files(folder)}


# ------------------------------------------------------------------------------------------------
# the kind


class Bundle(ModelKind):
    """A MONAI bundle folder: its network_def, models/model.pt and preprocessing transforms."""

    key = "bundle"
    key_hint = "a MONAI bundle folder"
    owns_entry = True

    def parse(self, raw: Mapping[str, Any], ctx: ParseContext) -> BankEntry:
        return parse_bundle_entry(raw, ctx)

    def files(self, entry: BankEntry) -> list[tuple[str, Path]]:
        return [("MONAI bundle folder", Path(entry.location))]

    def load(self, entry: BankEntry) -> tuple[torch.nn.Module, LoadReport]:
        return load_bundle_model(entry)

    def fingerprint(self, entry: BankEntry) -> dict[str, Any]:
        import monai

        return {"bundle": bundle_fingerprint(entry), "monai": monai.__version__}

    def auto_layers(self, model: torch.nn.Module, entry: BankEntry) -> list[LayerSpec]:
        return bundle_auto_layers(model, entry)

    def preprocess(self, entry: BankEntry, ndim: int) -> PreprocessFn:
        return make_bundle_preprocess(entry, ndim)

    def describe_preprocessing(self, entry: BankEntry) -> str:
        return f"the bundle's own preprocessing transforms ({entry.location})"

    def summary(self, entry: BankEntry) -> str:
        cfg = bundle_parser(Path(entry.location), entry.name).get("preprocessing")
        steps = cfg.get("transforms", []) if isinstance(cfg, Mapping) else []
        names = [
            str(t.get("_target_", "?")).rsplit(".", 1)[-1] for t in steps if isinstance(t, Mapping)
        ]
        names = [n for n in names if n not in SKIPPED_TRANSFORMS]
        return (
            f"bundle transforms: {', '.join(names) or 'none'}; "
            f"{window_summary(entry.preprocessing)}"
        )

    def window_note(self, entry: BankEntry) -> str:
        return ", and the bundle's inferer is no SlidingWindowInferer"

    def scan_folder(self, folder: Path, base: Path) -> list[Candidate | Skipped] | None:
        configs, models = folder / "configs", folder / "models"
        has_config = any((configs / n).is_file() for n in _CONFIG_NAMES)
        has_weights = (models / "model.pt").is_file() or (models / "model.ts").is_file()
        if not (has_config or (configs.is_dir() and has_weights)):
            return None
        if not (models / "model.pt").is_file():
            if (models / "model.ts").is_file():
                return [
                    Skipped(
                        folder,
                        (
                            "MONAI bundle with only models/model.ts (TorchScript): its layers "
                            "cannot be hooked (TorchScript runs no Python hooks); add the state "
                            "dict as "
                            "models/model.pt (the bundle's model.pt from the model zoo)"
                        ),
                    )
                ]
            return [
                Skipped(
                    folder,
                    "MONAI bundle without weights models/model.pt; put "
                    "the network's state dict there",
                )
            ]
        config = next((n for n in _CONFIG_NAMES if (configs / n).is_file()), "?")
        return [
            Candidate(
                raw={"name": clean_name(folder.name), "bundle": relative_path(folder, base)},
                source_format="bundle",
                path=folder,
                comment=f"MONAI bundle: {folder} (configs/{config} + models/model.pt)",
            )
        ]
