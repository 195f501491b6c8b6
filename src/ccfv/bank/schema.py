"""The model bank file: its schema, validated once where it enters.

A bank is a YAML file (or the same structure already parsed) with one key, ``models``, a list
of entries::

    models:
      - name: unet_spleen
        network: monai.networks.nets.UNet      # or factory: pkg.module:function
                                               # or torchscript: file.pt
        args: {spatial_dims: 3, in_channels: 1, out_channels: 2,
               channels: [16, 32, 64], strides: [2, 2]}
        checkpoint: ckpts/unet_spleen.pt       # or {path: ckpts/x.pt, key: network_weights}
        seed: 0                                # initialisation seed when there is no checkpoint
        layers: auto                           # or ["decoder3:input", "decoder2", ...]
        preprocessing:
          orientation: RAS
          spacing: [1.5, 1.5, 2.0]
          intensity: {kind: ct, clip: [-175, 250]}
          roi: [96, 96, 96]
          overlap: 0.25
          sw_batch_size: 2

Everything a user can get wrong raises :class:`ccfv.errors.UserError` with the file, the entry,
the bad value and the fix. Relative paths are resolved against the folder of the YAML file (or
the ``base_dir`` given to :func:`parse_bank`). After validation the entries are frozen
dataclasses that the inner functions trust.

Intensity kinds (``preprocessing.intensity``):

==============  ===========================================  =====================================
kind            keys                                         what it does
==============  ===========================================  =====================================
``none``        --                                           nothing
``ct``          ``clip: [lo, hi]``, ``mean``, ``std``        clip to [lo, hi], then z-score with
                                                             ``mean``/``std`` if given, else with
                                                             the clipped image's own statistics
``zscore``      ``nonzero`` (bool, default false)            per-case, per-channel z-score
``percentile``  ``lower`` (0.5), ``upper`` (99.5),           scale the [lower, upper] percentile
                ``b_min`` (0), ``b_max`` (1), ``clip``       range to [b_min, b_max]
``range``       ``a_min``, ``a_max``, ``b_min`` (0),         scale [a_min, a_max] to
                ``b_max`` (1), ``clip`` (false)              [b_min, b_max]
==============  ===========================================  =====================================
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ccfv.errors import UserError

__all__ = [
    "BankEntry",
    "Intensity",
    "LayerSpec",
    "Preprocessing",
    "load_bank",
    "parse_bank",
    "parse_layer",
]

ENTRY_KEYS = (
    "name",
    "network",
    "factory",
    "torchscript",
    "args",
    "checkpoint",
    "seed",
    "layers",
    "preprocessing",
    "bundle",
    "nnunet",
)
SOURCE_KEYS = ("network", "factory", "torchscript")
CHECKPOINT_KEYS = ("path", "key")
PREPROCESSING_KEYS = (
    "orientation",
    "spacing",
    "intensity",
    "roi",
    "overlap",
    "sw_batch_size",
    "in_channels",
)
#: Keys allowed for each intensity kind (besides ``kind``).
INTENSITY_KEYS: dict[str, tuple[str, ...]] = {
    "none": (),
    "ct": ("clip", "mean", "std"),
    "zscore": ("nonzero",),
    "percentile": ("lower", "upper", "b_min", "b_max", "clip"),
    "range": ("a_min", "a_max", "b_min", "b_max", "clip"),
}
_AXIS_LETTERS = ({"L", "R"}, {"A", "P"}, {"S", "I"})


@dataclass(frozen=True)
class LayerSpec:
    """One hooked layer: a module name from ``model.named_modules()`` and which side to read.

    Parameters
    ----------
    name : str
        Dotted module name, e.g. ``"decoder3"`` or ``"model.1.submodule.2"``.
    io : {"output", "input"}
        ``"output"`` stores what the module returns, ``"input"`` the first positional argument
        it was called with (``input[0]`` of a forward hook).
    """

    name: str
    io: Literal["output", "input"] = "output"

    @property
    def key(self) -> str:
        """``"name:io"``, the key of this layer in feature stores and feature sets."""
        return f"{self.name}:{self.io}"

    def __str__(self) -> str:
        return self.key


@dataclass(frozen=True)
class Intensity:
    """Intensity normalisation; see the module docstring for the kinds and their keys."""

    kind: Literal["none", "ct", "zscore", "percentile", "range"] = "none"
    clip: tuple[float, float] | bool | None = None
    mean: float | None = None
    std: float | None = None
    nonzero: bool = False
    lower: float | None = None
    upper: float | None = None
    a_min: float | None = None
    a_max: float | None = None
    b_min: float | None = None
    b_max: float | None = None


@dataclass(frozen=True)
class Preprocessing:
    """How a target image is prepared for one model.

    Parameters
    ----------
    orientation : str or None
        Axis codes (``"RAS"``, ``"LPS"``, two letters for 2D) in MONAI's/nibabel's RAS+ world
        convention; None keeps the image's orientation.
    spacing : tuple of float or None
        Target voxel size per spatial axis (world units, mm); None keeps the spacing.
    intensity : Intensity
        Intensity normalisation.
    roi : tuple of int or None
        Sliding-window size; None means the whole image in one window.
    overlap : float
        Sliding-window overlap in [0, 1).
    sw_batch_size : int
        Windows per forward pass.
    in_channels : int or None
        Channels the network expects (from ``args.in_channels`` unless given here).
    """

    orientation: str | None = None
    spacing: tuple[float, ...] | None = None
    intensity: Intensity = field(default_factory=Intensity)
    roi: tuple[int, ...] | None = None
    overlap: float = 0.25
    sw_batch_size: int = 2
    in_channels: int | None = None


@dataclass(frozen=True)
class BankEntry:
    """One validated model of the bank.

    Exactly one of ``network`` (a class by dotted path), ``factory`` (``pkg.module:function``)
    or ``torchscript`` (a file) is set. ``layers`` is ``"auto"`` or a tuple of
    :class:`LayerSpec`. ``checkpoint`` and ``torchscript`` are absolute paths. ``source`` names
    the bank file (or ``"<bank dict>"``) for messages.
    """

    name: str
    network: str | None = None
    factory: str | None = None
    torchscript: Path | None = None
    args: dict[str, Any] = field(default_factory=dict, hash=False)
    checkpoint: Path | None = None
    checkpoint_key: str | None = None
    seed: int = 0
    layers: Literal["auto"] | tuple[LayerSpec, ...] = "auto"
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    source: str = field(default="<bank dict>", compare=False)
    #: A MONAI bundle folder (``bundle:`` entries, see :mod:`ccfv.bank.bundle`), absolute.
    bundle: Path | None = None
    #: An nnU-Net v2 trained-model folder (``nnunet:`` entries, see :mod:`ccfv.bank.nnunet`);
    #: ``args`` then holds its ``configuration`` and ``fold``.
    nnunet: Path | None = None

    @property
    def kind(self) -> Literal["network", "factory", "torchscript", "bundle", "nnunet"]:
        """Which of ``network`` / ``factory`` / ``torchscript`` / ``bundle`` builds the model."""
        if self.bundle is not None:
            return "bundle"
        if self.nnunet is not None:
            return "nnunet"
        if self.network is not None:
            return "network"
        if self.factory is not None:
            return "factory"
        return "torchscript"

    @property
    def target(self) -> str:
        """The dotted path, factory reference or TorchScript file, as text."""
        return str(self.network or self.factory or self.torchscript or self.bundle or self.nnunet)

    @property
    def spatial_dims(self) -> int | None:
        """2 or 3 when ``args`` or the preprocessing says so, else None."""
        for key in ("spatial_dims", "dimensions"):
            if isinstance(self.args.get(key), int):
                return int(self.args[key])
        pre = self.preprocessing
        for value in (pre.roi, pre.spacing, pre.orientation):
            if value is not None:
                return len(value)
        return None


# ------------------------------------------------------------------------------------------------
# entry points


def load_bank(path: str | Path) -> list[BankEntry]:
    """Read and validate a bank YAML file.

    Parameters
    ----------
    path : str or Path
        The bank file; relative paths inside it are resolved against its folder.

    Returns
    -------
    list of BankEntry
        In file order.

    Raises
    ------
    UserError
        The file is missing, is not YAML, or any entry is invalid.
    """
    path, data = read_bank_file(path)
    return parse_bank(data, path.resolve().parent, source=str(path))


def read_bank_file(path: str | Path) -> tuple[Path, Any]:
    """``(path, parsed YAML)`` of a bank file; a UserError when it is missing or not YAML."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"bank file {path} does not exist; give the path of a YAML model bank")
    try:
        return path, yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"bank file {path} is not valid YAML: {exc}") from None


def parse_bank(
    data: Any, base_dir: str | Path, *, source: str = "<bank dict>"
) -> list[BankEntry]:
    """Validate a bank already parsed into Python objects.

    Parameters
    ----------
    data : mapping
        ``{"models": [entry, ...]}`` as in the YAML file.
    base_dir : str or Path
        Folder against which relative ``checkpoint`` / ``torchscript`` paths are resolved.
    source : str
        Name used in error messages (the file the data came from).

    Returns
    -------
    list of BankEntry

    Raises
    ------
    UserError
        On the first invalid value, naming the entry, the value and the fix.
    """
    base = Path(base_dir).expanduser().resolve()
    if not isinstance(data, Mapping):
        raise UserError(
            f"{source}: a bank must be a mapping with the key 'models' (a list of models), "
            f"got {type(data).__name__}"
        )
    _check_keys(data, ("models",), f"{source}: top level")
    models = data.get("models")
    if not isinstance(models, list) or not models:
        raise UserError(f"{source}: 'models' must be a non-empty list of model entries")
    entries: list[BankEntry] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(models):
        entry = _parse_entry(raw, index, base, source)
        if entry.name in seen:
            raise UserError(
                f"{source}: model name '{entry.name}' is used twice (entries "
                f"{seen[entry.name] + 1} and {index + 1}); every model needs its own name"
            )
        seen[entry.name] = index
        entries.append(entry)
    return entries


def parse_layer(text: str, where: str = "layers") -> LayerSpec:
    """Parse ``"name"``, ``"name:output"`` or ``"name:input"`` into a :class:`LayerSpec`."""
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"{where}: a layer must be a non-empty module name, got {text!r}")
    name, sep, io = text.strip().rpartition(":")
    if not sep:
        name, io = io, "output"
    name, io = name.strip(), io.strip()
    if io not in ("output", "input"):
        raise UserError(
            f"{where}: layer {text!r} ends in ':{io}'; write 'name', 'name:output' or 'name:input'"
        )
    if not name:
        raise UserError(f"{where}: layer {text!r} has no module name before ':{io}'")
    return LayerSpec(name=name, io=io)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# one entry


def _parse_entry(raw: Any, index: int, base: Path, source: str) -> BankEntry:
    if not isinstance(raw, Mapping):
        raise UserError(
            f"{source}: model entry {index + 1} must be a mapping with 'name', 'network' (or "
            f"'factory'/'torchscript'), ..., got {raw!r}"
        )
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise UserError(
            f"{source}: model entry {index + 1} has no 'name' (got {name!r}); give every model a "
            "unique name"
        )
    name = name.strip()
    where = f"{source}: model '{name}'"
    if raw.get("nnunet") is not None:  # an nnU-Net v2 trained-model folder: its own parser
        from ccfv.bank.nnunet import parse_nnunet_entry

        return parse_nnunet_entry(raw, name, base, source, where)
    _check_keys(raw, ENTRY_KEYS, where)
    if raw.get("bundle") is not None:  # a MONAI bundle folder: its own parser
        from ccfv.bank.bundle import parse_bundle_entry

        return parse_bundle_entry(raw, name, base, source, where)

    given = [k for k in SOURCE_KEYS if raw.get(k) is not None]
    if len(given) != 1:
        what = "none" if not given else " and ".join(given)
        raise UserError(
            f"{where}: give exactly one of 'network' (a class, e.g. monai.networks.nets.UNet), "
            f"'factory' (pkg.module:function) or 'torchscript' (a .pt file); got {what}"
        )
    network = factory = None
    torchscript = None
    if "network" in given:
        network = _string(raw["network"], f"{where}: 'network'")
        if any(not part.isidentifier() for part in network.replace(":", ".").split(".")):
            raise UserError(
                f"{where}: 'network' {network!r} is not a dotted class path such as "
                "monai.networks.nets.UNet"
            )
    elif "factory" in given:
        factory = _string(raw["factory"], f"{where}: 'factory'")
        module, sep, func = factory.partition(":")
        if (
            not sep
            or not func.isidentifier()
            or any(not p.isidentifier() for p in module.split("."))
        ):
            raise UserError(
                f"{where}: 'factory' {factory!r} must be 'pkg.module:function' (module path, a "
                "colon, the function name)"
            )
    else:
        torchscript = _existing_file(raw["torchscript"], base, f"{where}: 'torchscript'")

    args = raw.get("args")
    if args is None:
        args = {}
    if not isinstance(args, Mapping) or any(not isinstance(k, str) for k in args):
        raise UserError(f"{where}: 'args' must be a mapping of keyword arguments, got {args!r}")
    if torchscript is not None and args:
        raise UserError(
            f"{where}: 'args' is not used for a 'torchscript' model (it is already built); "
            "remove it"
        )
    args = dict(args)

    checkpoint, checkpoint_key = _parse_checkpoint(raw.get("checkpoint"), base, where)

    seed = raw.get("seed", 0)
    if seed is None:
        seed = 0
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UserError(f"{where}: 'seed' must be a non-negative integer, got {seed!r}")

    layers = _parse_layers(raw.get("layers", "auto"), where)
    preprocessing = _parse_preprocessing(raw.get("preprocessing"), args, where)

    entry = BankEntry(
        name=name,
        network=network,
        factory=factory,
        torchscript=torchscript,
        args=args,
        checkpoint=checkpoint,
        checkpoint_key=checkpoint_key,
        seed=seed,
        layers=layers,
        preprocessing=preprocessing,
        source=source,
    )
    _check_dims(entry, where)
    return entry


def _parse_checkpoint(value: Any, base: Path, where: str) -> tuple[Path | None, str | None]:
    if value is None:
        return None, None
    key = None
    if isinstance(value, Mapping):
        _check_keys(value, CHECKPOINT_KEYS, f"{where}: 'checkpoint'")
        if value.get("path") is None:
            raise UserError(f"{where}: 'checkpoint' mapping needs 'path' (the checkpoint file)")
        key = value.get("key")
        if key is not None:
            key = _string(key, f"{where}: 'checkpoint.key'")
        value = value["path"]
    path = _existing_file(value, base, f"{where}: 'checkpoint'")
    return path, key


def _parse_layers(value: Any, where: str) -> Literal["auto"] | tuple[LayerSpec, ...]:
    if value is None or value == "auto":
        return "auto"
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise UserError(
            f"{where}: 'layers' must be 'auto' or a non-empty list of module names (run "
            f"`ccfv layers` to see them), got {value!r}"
        )
    specs = tuple(parse_layer(v, f"{where}: 'layers'") for v in value)
    keys = [s.key for s in specs]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise UserError(f"{where}: 'layers' lists {', '.join(dupes)} more than once")
    return specs


def _parse_preprocessing(value: Any, args: Mapping[str, Any], where: str) -> Preprocessing:
    if value is None:
        value = {}
    where = f"{where}: 'preprocessing'"
    if not isinstance(value, Mapping):
        raise UserError(f"{where} must be a mapping, got {value!r}")
    _check_keys(value, PREPROCESSING_KEYS, where)

    orientation = value.get("orientation")
    if orientation is not None:
        orientation = _orientation(orientation, f"{where}.orientation")

    spacing = value.get("spacing")
    if spacing is not None:
        spacing = tuple(_numbers(spacing, f"{where}.spacing", positive=True, lengths=(2, 3)))

    roi = value.get("roi")
    if roi is not None:
        roi = tuple(_ints(roi, f"{where}.roi", lengths=(2, 3)))

    overlap = value.get("overlap", 0.25)
    if (
        isinstance(overlap, bool)
        or not isinstance(overlap, (int, float))
        or not 0 <= overlap < 1
    ):
        raise UserError(f"{where}.overlap must be a number in [0, 1), got {overlap!r}")

    sw = value.get("sw_batch_size", 2)
    if isinstance(sw, bool) or not isinstance(sw, int) or sw < 1:
        raise UserError(f"{where}.sw_batch_size must be a positive integer, got {sw!r}")

    in_channels = value.get("in_channels", args.get("in_channels"))
    if in_channels is not None and (
        isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1
    ):
        raise UserError(f"{where}.in_channels must be a positive integer, got {in_channels!r}")
    if (
        "in_channels" in value
        and isinstance(args.get("in_channels"), int)
        and value["in_channels"] != args["in_channels"]
    ):
        raise UserError(
            f"{where}.in_channels is {value['in_channels']} but args.in_channels is "
            f"{args['in_channels']}; remove one of them"
        )

    return Preprocessing(
        orientation=orientation,
        spacing=spacing,
        intensity=_parse_intensity(value.get("intensity"), where),
        roi=roi,
        overlap=float(overlap),
        sw_batch_size=int(sw),
        in_channels=in_channels,
    )


def _parse_intensity(value: Any, where: str) -> Intensity:
    where = f"{where}.intensity"
    if value is None:
        return Intensity()
    if isinstance(value, str):
        value = {"kind": value}
    if not isinstance(value, Mapping):
        raise UserError(f"{where} must be a mapping such as {{kind: zscore}}, got {value!r}")
    kind = value.get("kind")
    if kind not in INTENSITY_KEYS:
        close = difflib.get_close_matches(str(kind), list(INTENSITY_KEYS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise UserError(
            f"{where}.kind is {kind!r}{hint} Choose one of {', '.join(INTENSITY_KEYS)}"
        )
    _check_keys(value, ("kind", *INTENSITY_KEYS[kind]), f"{where} (kind {kind})")
    w = f"{where} (kind {kind})"
    if kind == "none":
        return Intensity(kind="none")
    if kind == "ct":
        if value.get("clip") is None:
            raise UserError(f"{w} needs 'clip: [lo, hi]', the CT window in HU, e.g. [-175, 250]")
        lo, hi = _numbers(value["clip"], f"{w}.clip", lengths=(2,))
        if not lo < hi:
            raise UserError(f"{w}.clip must be [lo, hi] with lo < hi, got {[lo, hi]}")
        mean, std = value.get("mean"), value.get("std")
        if (mean is None) != (std is None):
            raise UserError(
                f"{w}: give both 'mean' and 'std' (the source dataset's statistics) or neither "
                "(then each clipped image is z-scored with its own statistics)"
            )
        if mean is not None:
            mean = _number(mean, f"{w}.mean")
            std = _number(std, f"{w}.std")
            if std <= 0:
                raise UserError(f"{w}.std must be positive, got {std}")
        return Intensity(kind="ct", clip=(lo, hi), mean=mean, std=std)
    if kind == "zscore":
        nonzero = value.get("nonzero", False)
        if not isinstance(nonzero, bool):
            raise UserError(f"{w}.nonzero must be true or false, got {nonzero!r}")
        return Intensity(kind="zscore", nonzero=nonzero)
    b_min = _number(value.get("b_min", 0.0), f"{w}.b_min")
    b_max = _number(value.get("b_max", 1.0), f"{w}.b_max")
    clip = value.get("clip", False)
    if not isinstance(clip, bool):
        raise UserError(f"{w}.clip must be true or false, got {clip!r}")
    if kind == "percentile":
        lower = _number(value.get("lower", 0.5), f"{w}.lower")
        upper = _number(value.get("upper", 99.5), f"{w}.upper")
        if not 0 <= lower < upper <= 100:
            raise UserError(
                f"{w}: need 0 <= lower < upper <= 100 (percentiles), got lower={lower}, "
                f"upper={upper}"
            )
        return Intensity(
            kind="percentile", lower=lower, upper=upper, b_min=b_min, b_max=b_max, clip=clip
        )
    for key in ("a_min", "a_max"):
        if value.get(key) is None:
            raise UserError(f"{w} needs '{key}' (the input range [a_min, a_max] to rescale)")
    a_min = _number(value["a_min"], f"{w}.a_min")
    a_max = _number(value["a_max"], f"{w}.a_max")
    if a_min == a_max:
        raise UserError(f"{w}: a_min and a_max must differ, both are {a_min}")
    return Intensity(kind="range", a_min=a_min, a_max=a_max, b_min=b_min, b_max=b_max, clip=clip)


def _check_dims(entry: BankEntry, where: str) -> None:
    """Spatial lengths given in several places must agree."""
    pre = entry.preprocessing
    found = {}
    for key in ("spatial_dims", "dimensions"):
        if isinstance(entry.args.get(key), int):
            found[f"args.{key}"] = entry.args[key]
    for key in ("roi", "spacing", "orientation"):
        value = getattr(pre, key)
        if value is not None:
            found[f"preprocessing.{key}"] = len(value)
    if len(set(found.values())) > 1:
        listed = ", ".join(f"{k} -> {v}D" for k, v in found.items())
        raise UserError(
            f"{where}: the number of spatial dimensions disagrees ({listed}); make them match"
        )


# ------------------------------------------------------------------------------------------------
# small validators


def _check_keys(mapping: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    for key in mapping:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), list(allowed), n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else "."
            raise UserError(
                f"{where}: unknown key '{key}'{hint} Allowed keys: {', '.join(allowed)}"
            )


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where} must be a non-empty string, got {value!r}")
    return value.strip()


def _existing_file(value: Any, base: Path, where: str) -> Path:
    text = _string(value if not isinstance(value, Path) else str(value), where)
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = base / path
    path = path.resolve()
    if not path.is_file():
        raise UserError(
            f"{where}: file {path} does not exist (relative paths are read from {base}); fix "
            "the path"
        )
    return path


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{where} must be a finite number, got {value!r}")
    return float(value)


def _numbers(
    value: Any, where: str, *, positive: bool = False, lengths: Sequence[int] = (2, 3)
) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) not in lengths:
        n = " or ".join(map(str, lengths))
        raise UserError(f"{where} must be a list of {n} numbers, got {value!r}")
    out = [_number(v, where) for v in value]
    if positive and any(v <= 0 for v in out):
        raise UserError(f"{where} must be positive numbers, got {value!r}")
    return out


def _ints(value: Any, where: str, *, lengths: Sequence[int]) -> list[int]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) not in lengths
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value)
    ):
        n = " or ".join(map(str, lengths))
        raise UserError(f"{where} must be a list of {n} positive integers, got {value!r}")
    return [int(v) for v in value]


def _orientation(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise UserError(f"{where} must be axis codes such as 'RAS', got {value!r}")
    codes = value.strip().upper()
    ok = len(codes) in (2, 3) and all(
        sum(c in letters for c in codes) <= 1 for letters in _AXIS_LETTERS
    ) and all(any(c in letters for letters in _AXIS_LETTERS) for c in codes)
    if not ok:
        raise UserError(
            f"{where} {value!r} is not a valid orientation: use one letter of L/R, A/P, S/I per "
            "axis, each axis once (e.g. 'RAS', 'LPS'; two letters for 2D)"
        )
    return codes
