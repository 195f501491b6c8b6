"""The demo's model bank: small MONAI 3D networks pre-trained on template source tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monai.networks.nets import SegResNet, UNet

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"

#: architecture name -> (network class, constructor arguments)
ARCHITECTURES = {
    "unet": (
        UNet,
        dict(
            spatial_dims=3,
            in_channels=1,
            out_channels=2,
            channels=[16, 32, 64],
            strides=[2, 2],
            num_res_units=1,
        ),
    ),
    "segresnet": (
        SegResNet,
        dict(
            spatial_dims=3,
            in_channels=1,
            out_channels=2,
            init_filters=8,
            blocks_down=[1, 2, 2],
            blocks_up=[1, 1],
        ),
    ),
}
#: (architecture, source task) pairs that have a trained checkpoint
SOURCES = [
    ("unet", "brain_mask"),
    ("unet", "white_matter"),
    ("unet", "intensity_bands"),
    ("segresnet", "brain_mask"),
    ("segresnet", "white_matter"),
]

PREPROCESSING = {
    "intensity": {"kind": "zscore"},
    "roi": [48, 48, 40],
    "overlap": 0.25,
    "sw_batch_size": 2,
}


def bank_dict() -> dict:
    """The demo bank in the YAML schema of ``ccfv rank --bank`` (checkpoint paths absolute)."""
    models: list[dict[str, Any]] = []
    for arch, task in SOURCES:
        network, args = ARCHITECTURES[arch]
        models.append(
            {
                "name": f"{arch}_{task}",
                "network": f"monai.networks.nets.{network.__name__}",
                "args": args,
                "checkpoint": str(CHECKPOINTS / f"{arch}_{task}.pt"),
                "layers": "auto",
                "preprocessing": PREPROCESSING,
            }
        )
    for arch, (network, args) in ARCHITECTURES.items():
        models.append(
            {
                "name": f"{arch}_no_pretrain",
                "network": f"monai.networks.nets.{network.__name__}",
                "args": args,
                "seed": 0,
                "layers": "auto",
                "preprocessing": PREPROCESSING,
            }
        )
    return {"models": models}
