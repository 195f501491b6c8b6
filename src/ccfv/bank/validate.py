"""Validators of bank-file values, shared by the schema and every bank kind.

Each raises :class:`ccfv.errors.UserError` naming where the value is (``where``: the bank file
and entry), the bad value and the fix. A kind's parser (:mod:`ccfv.bank.kinds`) gets a
:class:`ParseContext` and builds its :class:`~ccfv.bank.entry.BankEntry` with these.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ccfv.bank.entry import BankEntry, Intensity, LayerSpec, Preprocessing
from ccfv.errors import UserError

__all__ = [
    "CHECKPOINT_KEYS",
    "COMMON_KEYS",
    "INTENSITY_KEYS",
    "PREPROCESSING_KEYS",
    "ParseContext",
    "check_dims",
    "check_keys",
    "existing_file",
    "ints",
    "number",
    "numbers",
    "orientation_codes",
    "parse_args",
    "parse_checkpoint",
    "parse_intensity",
    "parse_layer",
    "parse_layers",
    "parse_preprocessing",
    "parse_seed",
    "resolve_folder",
    "string",
]

#: Keys every entry may have besides its kind key (and besides what a kind adds or refuses).
COMMON_KEYS = ("args", "checkpoint", "seed", "layers", "preprocessing")
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
class ParseContext:
    """Where an entry being parsed comes from, for its kind's parser.

    Attributes
    ----------
    name : str
        The entry's name (already checked: non-empty, stripped).
    base : Path
        Folder against which relative paths are resolved (the bank file's).
    source : str
        The bank file (or ``"<bank dict>"``), for messages and ``BankEntry.source``.
    where : str
        ``"<source>: model '<name>'"``, the start of every message about this entry.
    entry_keys : tuple of str
        Every key an entry of a registered kind may have (``name``, the kind keys and
        :data:`COMMON_KEYS`), for the "unknown key" message.
    """

    name: str
    base: Path
    source: str
    where: str
    entry_keys: tuple[str, ...]


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


def parse_checkpoint(value: Any, base: Path, where: str) -> tuple[Path | None, str | None]:
    if value is None:
        return None, None
    key = None
    if isinstance(value, Mapping):
        check_keys(value, CHECKPOINT_KEYS, f"{where}: 'checkpoint'")
        if value.get("path") is None:
            raise UserError(f"{where}: 'checkpoint' mapping needs 'path' (the checkpoint file)")
        key = value.get("key")
        if key is not None:
            key = string(key, f"{where}: 'checkpoint.key'")
        value = value["path"]
    path = existing_file(value, base, f"{where}: 'checkpoint'")
    return path, key


def parse_layers(value: Any, where: str) -> Literal["auto"] | tuple[LayerSpec, ...]:
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


def parse_preprocessing(value: Any, args: Mapping[str, Any], where: str) -> Preprocessing:
    if value is None:
        value = {}
    where = f"{where}: 'preprocessing'"
    if not isinstance(value, Mapping):
        raise UserError(f"{where} must be a mapping, got {value!r}")
    check_keys(value, PREPROCESSING_KEYS, where)

    orientation = value.get("orientation")
    if orientation is not None:
        orientation = orientation_codes(orientation, f"{where}.orientation")

    spacing = value.get("spacing")
    if spacing is not None:
        spacing = tuple(numbers(spacing, f"{where}.spacing", positive=True, lengths=(2, 3)))

    roi = value.get("roi")
    if roi is not None:
        roi = tuple(ints(roi, f"{where}.roi", lengths=(2, 3)))

    overlap = value.get("overlap", 0.25)
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not 0 <= overlap < 1:
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
        intensity=parse_intensity(value.get("intensity"), where),
        roi=roi,
        overlap=float(overlap),
        sw_batch_size=int(sw),
        in_channels=in_channels,
    )


def parse_intensity(value: Any, where: str) -> Intensity:
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
        raise UserError(f"{where}.kind is {kind!r}{hint} Choose one of {', '.join(INTENSITY_KEYS)}")
    check_keys(value, ("kind", *INTENSITY_KEYS[kind]), f"{where} (kind {kind})")
    w = f"{where} (kind {kind})"
    if kind == "none":
        return Intensity(kind="none")
    if kind == "ct":
        if value.get("clip") is None:
            raise UserError(f"{w} needs 'clip: [lo, hi]', the CT window in HU, e.g. [-175, 250]")
        lo, hi = numbers(value["clip"], f"{w}.clip", lengths=(2,))
        if not lo < hi:
            raise UserError(f"{w}.clip must be [lo, hi] with lo < hi, got {[lo, hi]}")
        mean, std = value.get("mean"), value.get("std")
        if (mean is None) != (std is None):
            raise UserError(
                f"{w}: give both 'mean' and 'std' (the source dataset's statistics) or neither "
                "(then each clipped image is z-scored with its own statistics)"
            )
        if mean is not None:
            mean = number(mean, f"{w}.mean")
            std = number(std, f"{w}.std")
            if std <= 0:
                raise UserError(f"{w}.std must be positive, got {std}")
        return Intensity(kind="ct", clip=(lo, hi), mean=mean, std=std)
    if kind == "zscore":
        nonzero = value.get("nonzero", False)
        if not isinstance(nonzero, bool):
            raise UserError(f"{w}.nonzero must be true or false, got {nonzero!r}")
        return Intensity(kind="zscore", nonzero=nonzero)
    b_min = number(value.get("b_min", 0.0), f"{w}.b_min")
    b_max = number(value.get("b_max", 1.0), f"{w}.b_max")
    clip = value.get("clip", False)
    if not isinstance(clip, bool):
        raise UserError(f"{w}.clip must be true or false, got {clip!r}")
    if kind == "percentile":
        lower = number(value.get("lower", 0.5), f"{w}.lower")
        upper = number(value.get("upper", 99.5), f"{w}.upper")
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
    a_min = number(value["a_min"], f"{w}.a_min")
    a_max = number(value["a_max"], f"{w}.a_max")
    if a_min == a_max:
        raise UserError(f"{w}: a_min and a_max must differ, both are {a_min}")
    return Intensity(kind="range", a_min=a_min, a_max=a_max, b_min=b_min, b_max=b_max, clip=clip)


def check_dims(entry: BankEntry, where: str) -> None:
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


def check_keys(mapping: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    for key in mapping:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), list(allowed), n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else "."
            raise UserError(
                f"{where}: unknown key '{key}'{hint} Allowed keys: {', '.join(allowed)}"
            )


def string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where} must be a non-empty string, got {value!r}")
    return value.strip()


def existing_file(value: Any, base: Path, where: str) -> Path:
    text = string(value if not isinstance(value, Path) else str(value), where)
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


def number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{where} must be a finite number, got {value!r}")
    return float(value)


def numbers(
    value: Any, where: str, *, positive: bool = False, lengths: Sequence[int] = (2, 3)
) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) not in lengths:
        n = " or ".join(map(str, lengths))
        raise UserError(f"{where} must be a list of {n} numbers, got {value!r}")
    out = [number(v, where) for v in value]
    if positive and any(v <= 0 for v in out):
        raise UserError(f"{where} must be positive numbers, got {value!r}")
    return out


def ints(value: Any, where: str, *, lengths: Sequence[int]) -> list[int]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) not in lengths
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value)
    ):
        n = " or ".join(map(str, lengths))
        raise UserError(f"{where} must be a list of {n} positive integers, got {value!r}")
    return [int(v) for v in value]


def orientation_codes(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise UserError(f"{where} must be axis codes such as 'RAS', got {value!r}")
    codes = value.strip().upper()
    ok = (
        len(codes) in (2, 3)
        and all(sum(c in letters for c in codes) <= 1 for letters in _AXIS_LETTERS)
        and all(any(c in letters for letters in _AXIS_LETTERS) for c in codes)
    )
    if not ok:
        raise UserError(
            f"{where} {value!r} is not a valid orientation: use one letter of L/R, A/P, S/I per "
            "axis, each axis once (e.g. 'RAS', 'LPS'; two letters for 2D)"
        )
    return codes


def parse_args(value: Any, where: str) -> dict[str, Any]:
    """``args``: a mapping of keyword arguments (None: ``{}``)."""
    if value is None:
        value = {}
    if not isinstance(value, Mapping) or any(not isinstance(k, str) for k in value):
        raise UserError(f"{where}: 'args' must be a mapping of keyword arguments, got {value!r}")
    return dict(value)


def parse_seed(value: Any, where: str) -> int:
    """``seed``: a non-negative integer (None: 0)."""
    if value is None:
        value = 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UserError(f"{where}: 'seed' must be a non-negative integer, got {value!r}")
    return value


def resolve_folder(value: Any, base: Path) -> Path:
    """``value`` (text or path) as an absolute folder path, relative ones read from ``base``."""
    folder = Path(str(value).strip()).expanduser()
    return (folder if folder.is_absolute() else base / folder).resolve()
