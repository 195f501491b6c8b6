"""The validated form of a bank entry: frozen dataclasses that the inner functions trust.

Lowest module of :mod:`ccfv.bank`: it imports nothing of ccfv, so every other bank module
(the kinds included) can build on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = ["BankEntry", "Intensity", "LayerSpec", "Preprocessing", "declare_kind_key"]

#: YAML keys of the registered kinds (filled by :func:`ccfv.bank.kinds.register`), so that
#: ``entry.<kind key>`` reads the entry's location when it is of that kind and None otherwise.
_KIND_KEYS: set[str] = set()


def declare_kind_key(key: str) -> None:
    """Make ``entry.<key>`` an attribute of every entry (called when a kind is registered)."""
    _KIND_KEYS.add(key)


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

    ``kind`` names the registered kind (:mod:`ccfv.bank.kinds`) that builds the model, and
    ``location`` is what the entry's kind key gave: a dotted class path or factory reference
    (text), or the absolute path of a file or folder. ``entry.<kind key>`` (for instance
    ``entry.bundle``) is ``location`` for an entry of that kind and None for the others.
    ``layers`` is ``"auto"`` or a tuple of :class:`LayerSpec`. ``checkpoint`` is an absolute
    path. ``source`` names the bank file (or ``"<bank dict>"``) for messages.
    """

    name: str
    kind: str
    location: str | Path
    args: dict[str, Any] = field(default_factory=dict, hash=False)
    checkpoint: Path | None = None
    checkpoint_key: str | None = None
    seed: int = 0
    layers: Literal["auto"] | tuple[LayerSpec, ...] = "auto"
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    source: str = field(default="<bank dict>", compare=False)

    def __getattr__(self, name: str) -> Any:
        # only called for names that are not fields: ``entry.bundle``, ``entry.network``, ...
        if name.startswith("_") or name not in _KIND_KEYS:
            raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")
        return self.location if self.kind == name else None

    @property
    def target(self) -> str:
        """The dotted path, factory reference, file or folder, as text."""
        return str(self.location)

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
