"""Networks, training, evaluation and checkpoints of the transfer benchmark (``ccfv bench``).

The benchmark pre-trains small MONAI 2D or 3D networks on source tasks, fine-tunes each of them
on a target task and measures the test Dice; these are the building blocks::

    set_seed(0)
    model = ARCHITECTURES["unet"](in_channels, n_classes, size)        # seeded initialisation
    train(model, images, labels, steps=600, batch_size=8, lr=1e-3, seed=0)
    save_checkpoint(model, "unet-src.pt", {"arch": "unet", ...})       # read by ccfv rank

    set_seed(1)
    target = ARCHITECTURES["unet"](in_channels, n_target_classes, size)
    load_pretrained(target, load_checkpoint("unet-src.pt")[0], head_module("unet"))
    train(target, target_images, target_labels, steps=..., batch_size=8, lr=1e-3, seed=1)
    dice = dice_per_class(target, test_images, test_labels, n_classes=n_target_classes)

The pieces live in :mod:`ccfv.bench.networks` (architectures), :mod:`ccfv.bench.training`
(the benchmark's batches and augmentation, trained by the package's one loop,
:func:`ccfv.training.fit`, which ``ccfv select`` uses too), :mod:`ccfv.bench.dice` (test Dice) and
:mod:`ccfv.bench.checkpoints` (checkpoint I/O); this module gathers them under one name.

Data: images are ``uint8`` arrays ``(N, C, *spatial)`` (2 or 3 spatial axes), divided by 255
into ``float32`` in [0, 1] before they enter a network (a bank entry that ranks these
checkpoints must scale its input the same way); labels are ``int64`` arrays ``(N, *spatial)``
of class ids ``0 .. K-1``, 0 the background.

A network is described by :func:`network_spec` in the form of a bank entry
(``{"network": "monai.networks.nets.UNet", "args": {...}}``) and every network of the benchmark
is built from that description (:func:`build_network`, with the importer ``ccfv rank`` uses), so
a bank file written from the spec gives exactly the network that was trained.
"""

from __future__ import annotations

from ccfv.bench.checkpoints import _names, _plain, load_checkpoint, load_pretrained, save_checkpoint
from ccfv.bench.dice import (
    dice_per_case,
    dice_per_case_sliding,
    dice_per_class,
    mean_dice,
    predict_sliding,
)
from ccfv.bench.networks import (
    _HEADS,
    _SIZE_MULTIPLE,
    ARCHITECTURES,
    build_network,
    head_module,
    network_spec,
)
from ccfv.bench.training import (
    _check_data,
    _device_of,
    _to_input,
    augment_batch,
    set_seed,
    train,
    train_patches,
)

__all__ = [
    "ARCHITECTURES",
    "augment_batch",
    "build_network",
    "dice_per_case",
    "dice_per_case_sliding",
    "dice_per_class",
    "head_module",
    "mean_dice",
    "load_checkpoint",
    "load_pretrained",
    "network_spec",
    "predict_sliding",
    "save_checkpoint",
    "set_seed",
    "train",
    "train_patches",
]

# private helpers some callers (and tests) reach through this module
_PRIVATE = (_HEADS, _SIZE_MULTIPLE, _check_data, _device_of, _names, _plain, _to_input)
