"""nnU-Net v2 entries: ``nnunet: path/to/DatasetXXX_Name/Trainer__Plans__Configuration``.

A trained-model folder of nnU-Net v2 holds ``plans.json``, ``dataset.json`` and one folder per
fold (``fold_0``, ..., ``fold_all``) with ``checkpoint_final.pth`` / ``checkpoint_best.pth``.
Bank entry keys: ``name``, ``nnunet`` (the folder), ``fold`` (default 0, or ``all``),
``checkpoint`` (file name in the fold folder, default ``checkpoint_final.pth``),
``configuration`` (default: the part of the folder name after the last ``__``), ``layers``
and ``preprocessing`` with only ``roi``, ``overlap``, ``sw_batch_size``.

Everything is done with nnU-Net's own code (``pip install ccfv[nnunet]``):

* network: ``get_network_from_plans`` with the configuration's architecture class and keyword
  arguments, deep supervision off, the input channels of ``determine_num_input_channels``
  and the outputs of the label manager; the checkpoint's ``network_weights`` are loaded
  strictly. nnU-Net's trainer-class lookup is *not* used (it imports every trainer, some of
  which need timm / torchvision).
* preprocessing: the configuration's preprocessor (``DefaultPreprocessor.run_case_npy``):
  ``transpose_forward``, crop to the non-zero region, the normalisation scheme of each
  channel (``CTNormalization`` with the plans' foreground intensity properties,
  ``ZScoreNormalization`` with ``use_mask_for_norm``, ...), resampling to the configuration's
  spacing with its resampling function. ccfv's image (voxel order of the file, RAS+ affine)
  is first put in the voxel order of the plans' ``image_reader_writer`` (SimpleITK and
  nibabel readers reverse the axes; the natural-image reader keeps rows, columns), and the
  result keeps nnU-Net's axis order, the one its network was trained on. The
  affine of the preprocessed grid is composed from these steps (axis permutations, the crop
  offset, and the resampling ``in = (out + 0.5) * old / new - 0.5`` of nnU-Net's
  resampling), so planned voxels are mapped into it through world coordinates; the label is
  never resampled. Where nnU-Net cropped a zero border away, the preprocessed image is padded
  back with zeros (the value nnU-Net pads windows with) so that every planned voxel has
  features; inside the crop it is exactly ``run_case``'s output.
* window: the configuration's ``patch_size``, overlap 0.5 (nnU-Net's ``tile_step_size``).
* ``layers: auto``: the decoder stages ``decoder.stages.*`` and the input of the last
  segmentation head ``decoder.seg_layers.N:input``, deepest first, at most 3.

2D images need a ``2d`` configuration and 3D images a 3D one (``3d_fullres``, ``3d_lowres``);
cascade configurations (which also read the previous stage's segmentation) are refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ccfv.bank.checkpoint import LoadReport, load_torch_file
from ccfv.bank.entry import BankEntry, LayerSpec, Preprocessing
from ccfv.bank.hashing import file_sha256
from ccfv.bank.kinds.base import Candidate, ModelKind, Skipped, clean_name, relative_path
from ccfv.bank.transforms import PreprocessFn, window_summary
from ccfv.bank.validate import (
    ParseContext,
    check_keys,
    parse_layers,
    parse_preprocessing,
    resolve_folder,
)
from ccfv.errors import UserError

__all__ = [
    "NNUNET_ENTRY_KEYS",
    "NnUNet",
    "load_nnunet_model",
    "make_nnunet_preprocess",
    "nnunet_auto_layers",
    "nnunet_fingerprint",
    "parse_nnunet_entry",
]

NNUNET_ENTRY_KEYS = (
    "name",
    "nnunet",
    "fold",
    "checkpoint",
    "configuration",
    "layers",
    "preprocessing",
)
NNUNET_PREPROCESSING_KEYS = ("roi", "overlap", "sw_batch_size")
#: Readers whose arrays are the file's voxel order reversed (SimpleITK's (z, y, x)).
_REVERSING_READERS = ("SimpleITKIO", "NibabelIO", "SimpleITKIOWithReorient")
#: Readers that keep the voxel order (2D pictures: rows, columns).
_KEEPING_READERS = ("NaturalImage2DIO",)


def _require_nnunet(what: str) -> None:
    try:
        import nnunetv2  # noqa: F401
    except ImportError:
        raise UserError(
            f"{what} is an nnU-Net v2 model, but nnunetv2 is not installed; install it with "
            "`pip install ccfv[nnunet]` (or `pip install nnunetv2`)"
        ) from None


# ------------------------------------------------------------------------------------------------
# bank entry


def parse_nnunet_entry(raw: Mapping[str, Any], ctx: ParseContext) -> BankEntry:
    """Validate an ``nnunet:`` bank entry into a :class:`~ccfv.bank.entry.BankEntry`.

    The folder, its ``plans.json`` / ``dataset.json``, the fold folder, the checkpoint file and
    the configuration are checked here (JSON only; nnunetv2 is imported when the model is
    built).
    """
    where, base = ctx.where, ctx.base
    check_keys(raw, NNUNET_ENTRY_KEYS, f"{where} (an nnunet entry)")
    text = raw["nnunet"]
    if not isinstance(text, (str, Path)) or not str(text).strip():
        raise UserError(
            f"{where}: 'nnunet' must be the path of an nnU-Net v2 trained-model "
            f"folder, got {text!r}"
        )
    folder = resolve_folder(text, base)
    if not folder.is_dir():
        raise UserError(
            f"{where}: nnU-Net folder {folder} does not exist (relative paths are "
            f"read from {base}); give the trained-model folder, e.g. "
            "nnUNet_results/Dataset001_X/nnUNetTrainer__nnUNetPlans__3d_fullres"
        )
    plans = _read_json(folder / "plans.json", where, "plans")
    dataset = _read_json(folder / "dataset.json", where, "dataset")

    configuration = raw.get("configuration")
    if configuration is None:
        configuration = folder.name.rsplit("__", 1)[-1]
    if not isinstance(configuration, str) or not configuration.strip():
        raise UserError(
            f"{where}: 'configuration' must be a configuration name of "
            f"{folder / 'plans.json'}, got {configuration!r}"
        )
    configuration = configuration.strip()
    configs = plans.get("configurations")
    if not isinstance(configs, Mapping) or configuration not in configs:
        have = ", ".join(configs) if isinstance(configs, Mapping) else "none"
        raise UserError(
            f"{where}: {folder / 'plans.json'} has no configuration "
            f"'{configuration}' (it has: {have}); set 'configuration' to one of them "
            "or point 'nnunet' at the folder trained with it"
        )

    fold = raw.get("fold", 0)
    if fold is None:
        fold = 0
    if isinstance(fold, bool) or not (isinstance(fold, int) and fold >= 0 or fold == "all"):
        raise UserError(f"{where}: 'fold' must be a fold number (0, 1, ...) or 'all', got {fold!r}")
    fold_dir = folder / f"fold_{fold}"
    if not fold_dir.is_dir():
        folds = sorted(p.name for p in folder.glob("fold_*") if p.is_dir())
        raise UserError(
            f"{where}: fold folder {fold_dir} does not exist (found: "
            f"{', '.join(folds) or 'no fold_* folder'}); set 'fold' to a trained fold"
        )
    ckpt = raw.get("checkpoint", "checkpoint_final.pth")
    if not isinstance(ckpt, str) or not ckpt.strip():
        raise UserError(
            f"{where}: 'checkpoint' must be a file name in {fold_dir} such as "
            f"checkpoint_final.pth, got {ckpt!r}"
        )
    checkpoint = (fold_dir / ckpt.strip()).resolve()
    if not checkpoint.is_file():
        found = sorted(p.name for p in fold_dir.glob("*.pth"))
        raise UserError(
            f"{where}: checkpoint {checkpoint} does not exist (found: "
            f"{', '.join(found) or 'no .pth file'}); set 'checkpoint' to one of them"
        )

    cfg = _configuration(plans, configuration)
    patch = cfg.get("patch_size")
    if not isinstance(patch, list) or len(patch) not in (2, 3):
        raise UserError(
            f"{where}: configuration '{configuration}' of {folder / 'plans.json'} "
            f"has no 2- or 3-value patch_size (got {patch!r})"
        )
    pre = raw.get("preprocessing") or {}
    if not isinstance(pre, Mapping):
        raise UserError(f"{where}: 'preprocessing' must be a mapping, got {pre!r}")
    check_keys(
        pre,
        NNUNET_PREPROCESSING_KEYS,
        f"{where}: 'preprocessing' (nnU-Net preprocessing comes from plans.json)",
    )
    given = parse_preprocessing(dict(pre), {}, where)
    channels = dataset.get("channel_names", dataset.get("modality", {}))
    preprocessing = Preprocessing(
        roi=given.roi if given.roi is not None else tuple(int(v) for v in patch),
        overlap=given.overlap if "overlap" in pre else 0.5,
        sw_batch_size=given.sw_batch_size,
        in_channels=len(channels) if isinstance(channels, Mapping) and channels else None,
    )
    roi = preprocessing.roi
    assert roi is not None
    if len(roi) != len(patch):
        raise UserError(
            f"{where}: preprocessing.roi {list(roi)} must have "
            f"{len(patch)} values like the configuration's patch_size {patch}"
        )
    return BankEntry(
        name=ctx.name,
        kind="nnunet",
        location=folder,
        args={"configuration": configuration, "fold": fold},
        checkpoint=checkpoint,
        checkpoint_key="network_weights",
        layers=parse_layers(raw.get("layers", "auto"), where),
        preprocessing=preprocessing,
        source=ctx.source,
    )


def _read_json(path: Path, where: str, what: str) -> dict:
    if not path.is_file():
        raise UserError(
            f"{where}: {path} does not exist; 'nnunet' must point at an nnU-Net v2 "
            f"trained-model folder (it holds plans.json, dataset.json, fold_*)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(
            f"{where}: {path} is not valid JSON ({exc}); restore the {what} file nnU-Net wrote"
        ) from None
    if not isinstance(data, dict):
        raise UserError(f"{where}: {path} must hold a JSON object; restore the {what} file")
    return data


def _configuration(plans: Mapping, name: str) -> dict:
    """A configuration with ``inherits_from`` resolved (as nnU-Net's PlansManager does)."""
    cfg = dict(plans["configurations"][name])
    seen = {name}
    while "inherits_from" in cfg:
        parent = cfg.pop("inherits_from")
        if parent in seen or parent not in plans["configurations"]:
            break
        seen.add(parent)
        cfg = {**plans["configurations"][parent], **cfg}
    return cfg


def _paths(entry) -> tuple[Path, Path]:
    return Path(entry.location) / "plans.json", Path(entry.location) / "dataset.json"


def nnunet_fingerprint(entry) -> dict:
    """What changes an nnU-Net entry's features besides the checkpoint (for the cache key)."""
    plans, dataset = _paths(entry)
    try:
        from importlib.metadata import version

        nnunet_version = version("nnunetv2")
    except Exception:  # not installed: building will say so
        nnunet_version = None
    return {
        "plans": file_sha256(plans),
        "dataset": file_sha256(dataset),
        "nnunetv2": nnunet_version,
    }


# ------------------------------------------------------------------------------------------------
# network


def _managers(entry):
    _require_nnunet(f"model '{entry.name}' ({entry.location})")
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_path, dataset_path = _paths(entry)
    plans = json.loads(plans_path.read_text(encoding="utf-8"))
    dataset = json.loads(dataset_path.read_text(encoding="utf-8"))
    pm = PlansManager(plans)
    cm = pm.get_configuration(entry.args["configuration"])
    if cm.previous_stage_name is not None:
        raise UserError(
            f"model '{entry.name}': configuration '{entry.args['configuration']}' of "
            f"{plans_path} is a cascade stage (it also reads the segmentation of "
            f"'{cm.previous_stage_name}'); ccfv cannot rank it, use the folder of a "
            "non-cascade configuration (3d_fullres, 3d_lowres, 2d)"
        )
    return pm, cm, dataset


def build_nnunet_network(entry):
    """nnU-Net's network for the entry (random weights, deep supervision off), and the
    managers: ``(network, plans_manager, configuration_manager, dataset_json)``."""
    pm, cm, dataset = _managers(entry)
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    try:
        network = get_network_from_plans(
            cm.network_arch_class_name,
            cm.network_arch_init_kwargs,
            cm.network_arch_init_kwargs_req_import,
            determine_num_input_channels(pm, cm, dataset),
            pm.get_label_manager(dataset).num_segmentation_heads,
            allow_init=True,
            deep_supervision=False,
        )
    except (ImportError, TypeError, KeyError, ValueError, AssertionError) as exc:
        raise UserError(
            f"model '{entry.name}': nnU-Net cannot build the network of configuration "
            f"'{entry.args['configuration']}' from {_paths(entry)[0]} ({type(exc).__name__}: "
            f"{exc}); the plans need an installed architecture class (a custom one must be "
            "importable) and its arguments"
        ) from None
    return network, pm, cm, dataset


def load_nnunet_model(entry):
    """Build the entry's network and load the checkpoint's ``network_weights`` strictly.

    Returns ``(model, LoadReport)`` like :func:`ccfv.bank.build.load_model`.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(entry.seed)
        network, *_ = build_nnunet_network(entry)
    obj = load_torch_file(
        entry.checkpoint, f"checkpoint {entry.checkpoint} of model '{entry.name}'"
    )
    if not isinstance(obj, Mapping) or not isinstance(obj.get("network_weights"), Mapping):
        keys = ", ".join(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__
        raise UserError(
            f"model '{entry.name}': checkpoint {entry.checkpoint} has no 'network_weights' "
            f"(found: {keys}); point 'checkpoint' at a checkpoint written by nnU-Net's trainer"
        )
    state = dict(obj["network_weights"])
    if any(k.startswith("_orig_mod.") for k in state):  # saved from a torch.compile'd network
        state = {k.removeprefix("_orig_mod."): v for k, v in state.items()}
    own = network.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        (k, tuple(state[k].shape), tuple(own[k].shape))
        for k in set(own) & set(state)
        if tuple(getattr(state[k], "shape", ())) != tuple(own[k].shape)
    )
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            k, a, b = shapes[0]
            parts.append(f"{len(shapes)} of another shape (e.g. {k}: checkpoint {a}, plans {b})")
        raise UserError(
            f"model '{entry.name}': checkpoint {entry.checkpoint} does not fit the network of "
            f"configuration '{entry.args['configuration']}' in {_paths(entry)[0]}: "
            f"{'; '.join(parts)}; use the checkpoint trained with these plans (same folder)"
        )
    network.load_state_dict(state, strict=True)
    network.eval()
    n = sum(1 for _ in network.parameters())
    report = LoadReport(
        entry=entry.name,
        initialisation="checkpoint",
        checkpoint=entry.checkpoint,
        key="network_weights",
        seed=entry.seed,
        n_params=n,
        n_params_matched=n,
        matched=tuple(state),
    )
    return network, report


def nnunet_auto_layers(model, entry):
    """``decoder.stages`` outputs and the last ``decoder.seg_layers`` input, deepest first."""
    mods = dict(model.named_modules())
    n = sum(1 for k in mods if k.startswith("decoder.stages.") and k.count(".") == 2)
    heads = sum(1 for k in mods if k.startswith("decoder.seg_layers.") and k.count(".") == 2)
    if n == 0 or heads == 0:
        raise UserError(
            f"model '{entry.name}': 'layers: auto' knows nnU-Net networks with decoder.stages "
            f"and decoder.seg_layers (PlainConvUNet, ResidualEncoderUNet), not "
            f"{type(model).__name__}; run `ccfv layers` and name 2-3 decoder layers in 'layers'"
        )
    specs = [LayerSpec(f"decoder.stages.{i}", "output") for i in range(n - 1)]
    specs.append(LayerSpec(f"decoder.seg_layers.{heads - 1}", "input"))
    return specs[-3:]


# ------------------------------------------------------------------------------------------------
# preprocessing


def make_nnunet_preprocess(entry, ndim: int):
    """``f(image, affine) -> (image', affine')`` doing nnU-Net's preprocessing of the entry's
    configuration (see the module docstring); ``image`` is ccfv's ``(C, *spatial)`` array."""
    pm, cm, dataset = _managers(entry)
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    config = entry.args["configuration"]
    plans_path = _paths(entry)[0]
    model_dims = len(cm.patch_size)
    if model_dims != ndim:
        raise UserError(
            f"model '{entry.name}': configuration '{config}' of {plans_path} is {model_dims}D but "
            f"the images are {ndim}D; use a {'2d' if ndim == 2 else '3d_fullres'} configuration "
            "(ccfv does not run a 2d configuration slice by slice on 3D images yet)"
        )
    reader = str(pm.plans.get("image_reader_writer", "SimpleITKIO"))
    if reader in _REVERSING_READERS:
        reverse = True
    elif reader in _KEEPING_READERS:
        reverse = False
    else:
        raise UserError(
            f"model '{entry.name}': {plans_path} reads images with {reader}, whose voxel order "
            f"ccfv does not know (it knows {', '.join(_REVERSING_READERS + _KEEPING_READERS)})"
        )
    transpose = [int(t) for t in pm.transpose_forward]
    if ndim == 2 and transpose[0] != 0:
        raise UserError(
            f"model '{entry.name}': {plans_path} has transpose_forward {transpose}, which moves "
            "the slice axis of 2D images; ccfv supports 2D plans that keep it first"
        )
    preprocessor = DefaultPreprocessor(verbose=False)
    if cm.preprocessor_name != "DefaultPreprocessor":
        preprocessor = cm.preprocessor_class(verbose=False)

    def preprocess(image: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        image = np.asarray(image, dtype=np.float32)
        affine = np.asarray(affine, dtype=np.float64)
        if image.ndim != ndim + 1:
            raise ValueError(f"expected a channel-first {ndim}D image, got {image.shape}")
        spatial = ndim
        # ccfv index -> reader index: reversed or kept; 2D gets a leading singleton axis
        order = list(range(spatial))[::-1] if reverse else list(range(spatial))
        data = image.transpose(0, *[o + 1 for o in order])
        sizes = np.linalg.norm(affine[:spatial, :spatial], axis=0)
        spacing = [float(sizes[o]) for o in order]
        if ndim == 2:
            data = data[:, None]
            spacing = [max(spacing) * 999.0, *spacing]
        properties = {"spacing": spacing}
        out, _, props = preprocessor.run_case_npy(data, None, properties, pm, cm, dataset)
        bbox = np.array(props["bbox_used_for_cropping"], dtype=np.float64)
        lo, hi = bbox[:, 0], bbox[:, 1]
        full = np.array(props["shape_before_cropping"], dtype=np.float64)
        old = np.array(props["shape_after_cropping_and_before_resampling"], dtype=np.float64)
        new = np.array(out.shape[1:], dtype=np.float64)
        scale = old / new
        # nnU-Net crops to the non-zero region; ccfv reads features at every planned voxel, so
        # the cropped-away border comes back as zeros (what nnU-Net pads windows with)
        before = np.where(lo > 0, np.ceil(lo / scale) + 1, 0).astype(int)
        after = np.where(hi < full, np.ceil((full - hi) / scale) + 1, 0).astype(int)
        if before.any() or after.any():
            out = np.pad(out, [(0, 0), *zip(before, after)])
        lo = lo - before * scale
        # output index o -> transposed index t = lo + (o + 0.5) * scale - 0.5
        # reader index n[transpose[d]] = t[d]; ccfv index i[order[k]] = n[k] (minus the 2D slot)
        d3 = len(transpose)
        reader_from_t = np.zeros((d3, d3))
        for d, td in enumerate(transpose):
            reader_from_t[td, d] = 1.0
        lin = reader_from_t @ np.diag(scale)
        off = reader_from_t @ (lo + 0.5 * scale - 0.5)
        if ndim == 2:  # drop the singleton slice axis (first in reader and output order)
            lin, off = lin[1:, 1:], off[1:]
            out = out[:, 0]
        ccfv_from_reader = np.zeros((spatial, spatial))
        for k, o in enumerate(order):
            ccfv_from_reader[o, k] = 1.0
        index_map = np.eye(4)
        index_map[:spatial, :spatial] = ccfv_from_reader @ lin
        index_map[:spatial, 3] = ccfv_from_reader @ off
        out_affine = affine @ index_map
        return np.ascontiguousarray(out, dtype=np.float32), out_affine

    return preprocess


# ------------------------------------------------------------------------------------------------
# the kind

_CHECKPOINT_ORDER = ("checkpoint_final.pth", "checkpoint_best.pth", "checkpoint_latest.pth")


class NnUNet(ModelKind):
    """An nnU-Net v2 trained-model folder: its plans, one fold's checkpoint, its preprocessing."""

    key = "nnunet"
    key_hint = "an nnU-Net v2 trained-model folder"
    owns_entry = True

    def parse(self, raw: Mapping[str, Any], ctx: ParseContext) -> BankEntry:
        return parse_nnunet_entry(raw, ctx)

    def files(self, entry: BankEntry) -> list[tuple[str, Path]]:
        return [("nnU-Net result folder", Path(entry.location))]

    def load(self, entry: BankEntry) -> tuple[torch.nn.Module, LoadReport]:
        return load_nnunet_model(entry)

    def fingerprint(self, entry: BankEntry) -> dict[str, Any]:
        return {"nnunet": nnunet_fingerprint(entry)}

    def auto_layers(self, model: torch.nn.Module, entry: BankEntry) -> list[LayerSpec]:
        return nnunet_auto_layers(model, entry)

    def preprocess(self, entry: BankEntry, ndim: int) -> PreprocessFn:
        return make_nnunet_preprocess(entry, ndim)

    def trainer_checkpoint(
        self, entry: BankEntry, state: Mapping[str, Any], classes: Mapping[str, str]
    ) -> tuple[str, dict[str, Any]] | None:
        """The dict nnU-Net's ``nnUNetTrainer.save_checkpoint`` writes, built from the entry's
        own checkpoint (its ``init_args``, with the target's labels in ``dataset_json``)."""
        if entry.checkpoint is None:  # parse_nnunet_entry always sets it
            return None
        original = load_torch_file(
            entry.checkpoint, f"checkpoint {entry.checkpoint} of model '{entry.name}'"
        )
        init = dict(original.get("init_args") or {})
        dataset = dict(init.get("dataset_json") or {})
        dataset["labels"] = {name: int(k) for k, name in classes.items()}
        init["dataset_json"] = dataset
        return "checkpoint_final.pth", {
            "network_weights": dict(state),
            "optimizer_state": None,
            "grad_scaler_state": None,
            "logging": {},
            "_best_ema": None,
            "current_epoch": 0,
            "init_args": init,
            "trainer_name": original.get("trainer_name", "nnUNetTrainer"),
            "inference_allowed_mirroring_axes": original.get("inference_allowed_mirroring_axes"),
        }

    def describe_preprocessing(self, entry: BankEntry) -> str:
        config = (entry.args or {}).get("configuration", "?")
        return f"nnU-Net's preprocessing of configuration '{config}'"

    def summary(self, entry: BankEntry) -> str:
        plans = json.loads(_paths(entry)[0].read_text(encoding="utf-8"))
        cfg = _configuration(plans, entry.args["configuration"])
        spacing = "x".join(f"{v:g}" for v in cfg.get("spacing", []))
        schemes = ", ".join(cfg.get("normalization_schemes", []))
        return (
            f"nnU-Net {entry.args['configuration']}: {schemes or '?'}, spacing "
            f"{spacing or '?'}; {window_summary(entry.preprocessing)}"
        )

    def scan_folder(self, folder: Path, base: Path) -> list[Candidate | Skipped] | None:
        if not ((folder / "plans.json").is_file() and (folder / "dataset.json").is_file()):
            return None
        out: list[Candidate | Skipped] = []
        folds = sorted((p for p in folder.glob("fold_*") if p.is_dir()), key=_fold_key)
        for fold_dir in folds:
            fold_text = fold_dir.name[len("fold_") :]
            if not (fold_text.isdigit() or fold_text == "all"):
                continue
            ckpt = next((n for n in _CHECKPOINT_ORDER if (fold_dir / n).is_file()), None)
            if ckpt is None:
                others = sorted(p.name for p in fold_dir.glob("*.pth"))
                ckpt = others[0] if others else None
            if ckpt is None:
                out.append(
                    Skipped(
                        fold_dir,
                        "nnU-Net fold folder without a checkpoint "
                        "(checkpoint_final.pth); finish or copy the "
                        "training",
                    )
                )
                continue
            fold: int | str = int(fold_text) if fold_text.isdigit() else "all"
            trainer, plans, config = _folder_parts(folder.name)
            name_parts = [folder.parent.name]
            if trainer and trainer != "nnUNetTrainer":
                name_parts.append(trainer)
            if plans and plans != "nnUNetPlans":
                name_parts.append(plans)
            name_parts += [config or folder.name, f"fold{fold}"]
            raw: dict[str, Any] = {
                "name": clean_name("_".join(name_parts)),
                "nnunet": relative_path(folder, base),
                "fold": fold,
            }
            if ckpt != "checkpoint_final.pth":
                raw["checkpoint"] = ckpt
            out.append(
                Candidate(
                    raw=raw,
                    source_format="nnunet",
                    path=fold_dir,
                    comment=f"nnU-Net v2 results folder: {folder} (fold {fold}, {ckpt})",
                )
            )
        if not folds:
            out.append(
                Skipped(
                    folder,
                    "has plans.json and dataset.json but no fold_* folder "
                    "with a checkpoint; point the scan at a trained-model "
                    "folder of nnUNet_results",
                )
            )
        return out


def _folder_parts(name: str) -> tuple[str, str, str]:
    """``(trainer, plans, configuration)`` of ``Trainer__Plans__Configuration``."""
    parts = name.split("__")
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    return "", "", ""


def _fold_key(path: Path) -> tuple[int, int | str]:
    text = path.name[len("fold_") :]
    return (0, int(text)) if text.isdigit() else (1, text)
