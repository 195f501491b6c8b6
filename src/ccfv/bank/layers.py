"""The layers of a bank entry's model that are read (:func:`resolve_layers`).

``layers: auto`` asks the entry's kind (:mod:`ccfv.bank.kinds`): the decoder pyramid of a
known MONAI architecture (:func:`ccfv.bank.hooks.auto_layers`, table there), nnU-Net's decoder
stages, or a bundle network's listing when it is unknown. Named layers are checked against the
model. The hooks that read the layers, ``auto_layers`` and ``list_layers`` are
:mod:`ccfv.bank.hooks`, re-exported here.
"""

from __future__ import annotations

import torch

from ccfv.bank.entry import BankEntry, LayerSpec
from ccfv.bank.hooks import (
    AUTO_ARCHITECTURES,
    LayerInfo,
    auto_layers,
    check_layers,
    hooked,
    list_layers,
    register_hooks,
)
from ccfv.bank.kinds import kind_of

__all__ = [
    "AUTO_ARCHITECTURES",
    "LayerInfo",
    "auto_layers",
    "hooked",
    "list_layers",
    "register_hooks",
    "resolve_layers",
]


def resolve_layers(model: torch.nn.Module, entry: BankEntry) -> list[LayerSpec]:
    """The entry's layers, checked against the model.

    Parameters
    ----------
    model : torch.nn.Module
        Built from ``entry`` (:func:`ccfv.bank.build_model`).
    entry : BankEntry

    Returns
    -------
    list of LayerSpec

    Raises
    ------
    UserError
        A named layer does not exist (close names are listed), cannot be hooked (inside a
        TorchScript module), or ``auto`` does not know the architecture.
    """
    if entry.layers == "auto":
        return kind_of(entry).auto_layers(model, entry)
    check_layers(model, entry.layers, entry.name, entry.source)
    return list(entry.layers)
