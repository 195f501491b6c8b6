"""The benchmark's networks: small MONAI 2D/3D networks described as bank entries.

:func:`network_spec` gives a network in the form of a bank entry (``{"network": dotted class
path, "args": {...}}``) and :func:`build_network` builds it with the importer ``ccfv rank``
uses, so a bank file written from the spec gives exactly the network that was trained.
:data:`ARCHITECTURES` maps a name to ``build(in_channels, out_channels, size)``;
:func:`head_module` names the final convolution block that fine-tuning re-initialises.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ccfv.bank.build import resolve_callable
from ccfv.bench.sizes import spatial_size
from ccfv.errors import UserError

__all__ = ["ARCHITECTURES", "build_network", "head_module", "network_spec"]

_UNET = "monai.networks.nets.UNet"
_UNETR = "monai.networks.nets.UNETR"
_SEGRESNET = "monai.networks.nets.SegResNet"
_DYNUNET = "monai.networks.nets.DynUNet"

#: Side length each architecture needs the image size to be a multiple of (UNet, SegResNet,
#: DynUNet: 3 stride-2 levels; UNETR: patches of 16).
_SIZE_MULTIPLE = {"unet": 8, "unetr": 16, "segresnet": 8, "dynunet": 8}

#: The module re-initialised before fine-tuning: the final convolution block, whose input is
#: the last of ``ccfv.bank.auto_layers``. UNet built by :func:`network_spec` is
#: ``Sequential(down block, SkipConnection(...), top up block)``: ``model.2`` is the top up block
#: (transposed convolution + residual unit) that outputs the logits; UNETR's is ``out``;
#: SegResNet's is the convolution of ``conv_final`` (after its norm and activation, which keep
#: their pre-trained weights); DynUNet's is ``output_block``.
_HEADS = {"unet": "model.2", "unetr": "out", "segresnet": "conv_final.2", "dynunet": "output_block"}


def _unetr_projection_arg() -> str:
    """Name of UNETR's patch-embedding argument: ``proj_type`` (MONAI >= 1.3) or ``pos_embed``."""
    from monai.networks.nets import UNETR

    params = inspect.signature(UNETR.__init__).parameters
    return "proj_type" if "proj_type" in params else "pos_embed"


def _spatial_size(arch: str, size: int | Sequence[int]) -> list[int]:
    """``size`` as one int per spatial axis: an int is a square 2D image, a list 2D or 3D."""
    sizes = spatial_size(size)
    if len(sizes) not in (2, 3):
        raise UserError(
            f"architecture '{arch}': size {list(sizes)} must be one int (square 2D images) or "
            "2 or 3 values (2D or 3D)"
        )
    multiple = _SIZE_MULTIPLE[arch]
    if any(s < multiple or s % multiple for s in sizes):
        raise UserError(
            f"architecture '{arch}' needs an image size that is a multiple of {multiple} on every "
            f"axis, got {sizes}; resize the benchmark images"
        )
    return sizes


def network_spec(
    arch: str, in_channels: int, out_channels: int, size: int | Sequence[int]
) -> dict[str, Any]:
    """The bank-entry description of a benchmark network.

    Parameters
    ----------
    arch : str
        A key of :data:`ARCHITECTURES`: ``"unet"``, ``"unetr"`` (2D or 3D), ``"segresnet"``,
        ``"dynunet"``.
    in_channels, out_channels : int
        Image channels; classes including the background.
    size : int or sequence of int
        Input size: one int for square 2D images, else one value per spatial axis (2 or 3:
        the network is 2D or 3D). Each value must be a multiple of the architecture's
        downsampling (8; UNETR 16). Only UNETR's arguments depend on the values.

    Returns
    -------
    dict
        ``{"network": dotted class path, "args": keyword arguments}`` with plain Python values
        (lists, not tuples), ready to be written into a bank YAML entry.

    Raises
    ------
    UserError
        Unknown architecture, or a size the architecture cannot take.
    """
    if arch not in _HEADS:
        raise UserError(f"unknown benchmark architecture '{arch}'; known: {', '.join(_HEADS)}")
    in_channels, out_channels = int(in_channels), int(out_channels)
    if in_channels < 1 or out_channels < 2:
        raise UserError(
            f"architecture '{arch}' needs in_channels >= 1 and out_channels >= 2 (background and "
            f"at least one class), got {in_channels} and {out_channels}"
        )
    sizes = _spatial_size(arch, size)
    dims = len(sizes)
    io = {"spatial_dims": dims, "in_channels": in_channels, "out_channels": out_channels}
    if arch == "unet":
        return {
            "network": _UNET,
            "args": {**io, "channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1},
        }
    if arch == "segresnet":
        return {
            "network": _SEGRESNET,
            "args": {**io, "init_filters": 8, "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1]},
        }
    if arch == "dynunet":
        return {
            "network": _DYNUNET,
            "args": {
                **io,
                "kernel_size": [3, 3, 3, 3],
                "strides": [1, 2, 2, 2],
                "upsample_kernel_size": [2, 2, 2],
                "filters": [8, 16, 32, 64],
                "norm_name": "instance",
            },
        }
    return {
        "network": _UNETR,
        "args": {
            **io,
            "img_size": sizes[0] if dims == 2 and sizes[0] == sizes[1] else sizes,
            "feature_size": 8,
            "hidden_size": 96,
            "mlp_dim": 192,
            "num_heads": 4,
            _unetr_projection_arg(): "conv",
            "norm_name": "instance",
            "dropout_rate": 0.0,
        },
    }


def build_network(spec: Mapping[str, Any]) -> torch.nn.Module:
    """Import ``spec["network"]`` by dotted path and call it with ``spec["args"]``.

    The import goes through :func:`ccfv.bank.build.resolve_callable`, the importer of
    ``ccfv rank``. Weights are drawn from torch's global random state: seed it first
    (:func:`set_seed`) for a reproducible initialisation.
    """
    cls = resolve_callable(spec["network"], entry="bench")
    return cls(**dict(spec["args"]))


def _builder(arch: str) -> Callable[..., torch.nn.Module]:
    def build(in_channels: int, out_channels: int, size: int | Sequence[int]) -> torch.nn.Module:
        return build_network(network_spec(arch, in_channels, out_channels, size))

    build.__name__ = f"build_{arch}"
    build.__doc__ = (
        f"A fresh '{arch}' network: ``build_network(network_spec('{arch}', in_channels, "
        "out_channels, size))``."
    )
    return build


#: Benchmark architectures: name -> ``build(in_channels, out_channels, size) -> Module``.
ARCHITECTURES: dict[str, Callable[..., torch.nn.Module]] = {arch: _builder(arch) for arch in _HEADS}


def head_module(arch: str) -> str:
    """Module name of the architecture's final convolution block (re-initialised for fine-tuning).

    ``"model.2"`` for UNet, ``"out"`` for UNETR, ``"conv_final.2"`` for SegResNet,
    ``"output_block"`` for DynUNet; the input of this module is the last layer of
    :func:`ccfv.bank.auto_layers` (``"<head>:input"``) and its output is the network's output.
    """
    if arch not in _HEADS:
        raise UserError(f"unknown benchmark architecture '{arch}'; known: {', '.join(_HEADS)}")
    return _HEADS[arch]
