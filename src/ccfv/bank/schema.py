"""The model bank file: its schema, validated once where it enters.

A bank is a YAML file (or the same structure already parsed) with one key, ``models``, a list
of entries::

    models:
      - name: unet_spleen
        network: monai.networks.nets.UNet      # the kind key: see ccfv.bank.kinds
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

Each entry has one kind key (``network`` here) that names the registered kind building the
model (:mod:`ccfv.bank.kinds`: a class, a factory function, a TorchScript file, a MONAI
bundle folder, an nnU-Net v2 folder); the kind parses the entry's keys with the validators of
:mod:`ccfv.bank.validate`. Everything a user can get wrong raises
:class:`ccfv.errors.UserError` with the file, the entry, the bad value and the fix. Relative
paths are resolved against the folder of the YAML file (or the ``base_dir`` given to
:func:`parse_bank`). After validation the entries are frozen dataclasses
(:mod:`ccfv.bank.entry`) that the inner functions trust.

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

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ccfv.bank.entry import BankEntry, Intensity, LayerSpec, Preprocessing
from ccfv.bank.kinds import builder_keys, entry_keys, parse_entry
from ccfv.bank.validate import ParseContext, check_keys, parse_layer
from ccfv.errors import UserError

__all__ = [
    "BankEntry",
    "Intensity",
    "LayerSpec",
    "Preprocessing",
    "load_bank",
    "parse_bank",
    "parse_layer",
    "read_bank_file",
]


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


def parse_bank(data: Any, base_dir: str | Path, *, source: str = "<bank dict>") -> list[BankEntry]:
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
    check_keys(data, ("models",), f"{source}: top level")
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


# ------------------------------------------------------------------------------------------------
# one entry


def _parse_entry(raw: Any, index: int, base: Path, source: str) -> BankEntry:
    if not isinstance(raw, Mapping):
        first, *others = builder_keys()
        also = f" (or '{'/'.join(others)}')" if others else ""
        raise UserError(
            f"{source}: model entry {index + 1} must be a mapping with 'name', '{first}'{also}, "
            f"..., got {raw!r}"
        )
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise UserError(
            f"{source}: model entry {index + 1} has no 'name' (got {name!r}); give every model a "
            "unique name"
        )
    name = name.strip()
    ctx = ParseContext(
        name=name,
        base=base,
        source=source,
        where=f"{source}: model '{name}'",
        entry_keys=entry_keys(),
    )
    return parse_entry(raw, ctx)
