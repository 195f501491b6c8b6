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

import inspect
import math
import os
import random
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ccfv.bank.build import resolve_callable
from ccfv.bench.config import spatial_size
from ccfv.errors import UserError

__all__ = [
    "ARCHITECTURES",
    "augment_batch",
    "build_network",
    "dice_per_case",
    "dice_per_class",
    "head_module",
    "mean_dice",
    "load_checkpoint",
    "load_pretrained",
    "network_spec",
    "save_checkpoint",
    "set_seed",
    "train",
]

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
_HEADS = {"unet": "model.2", "unetr": "out", "segresnet": "conv_final.2",
          "dynunet": "output_block"}


# ------------------------------------------------------------------------------------------------
# architectures


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
        raise UserError(
            f"unknown benchmark architecture '{arch}'; known: {', '.join(_HEADS)}"
        )
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
        return {"network": _UNET, "args": {**io, "channels": [16, 32, 64, 128],
                                           "strides": [2, 2, 2], "num_res_units": 1}}
    if arch == "segresnet":
        return {"network": _SEGRESNET, "args": {**io, "init_filters": 8,
                                                "blocks_down": [1, 2, 2, 4],
                                                "blocks_up": [1, 1, 1]}}
    if arch == "dynunet":
        return {"network": _DYNUNET, "args": {**io, "kernel_size": [3, 3, 3, 3],
                                              "strides": [1, 2, 2, 2],
                                              "upsample_kernel_size": [2, 2, 2],
                                              "filters": [8, 16, 32, 64],
                                              "norm_name": "instance"}}
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
ARCHITECTURES: dict[str, Callable[..., torch.nn.Module]] = {
    arch: _builder(arch) for arch in _HEADS
}


def head_module(arch: str) -> str:
    """Module name of the architecture's final convolution block (re-initialised for fine-tuning).

    ``"model.2"`` for UNet, ``"out"`` for UNETR, ``"conv_final.2"`` for SegResNet,
    ``"output_block"`` for DynUNet; the input of this module is the last layer of
    :func:`ccfv.bank.auto_layers` (``"<head>:input"``) and its output is the network's output.
    """
    if arch not in _HEADS:
        raise UserError(f"unknown benchmark architecture '{arch}'; known: {', '.join(_HEADS)}")
    return _HEADS[arch]


# ------------------------------------------------------------------------------------------------
# seeding and training


def set_seed(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator and torch; ask torch for determinism.

    Sets ``torch.use_deterministic_algorithms(True, warn_only=True)`` (process-wide: an operation
    without a deterministic implementation warns instead of failing) and turns cuDNN
    benchmarking off. On the CPU, the same seed, inputs and thread count give identical results.
    """
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def augment_batch(
    images: np.ndarray, labels: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random flips along every spatial axis and random 90-degree turns, per sample.

    Parameters
    ----------
    images : ndarray (B, C, *spatial), 2 or 3 spatial axes
    labels : ndarray (B, *spatial)
    rng : numpy Generator
        Draws, per sample, one flip per spatial axis, then the number of quarter turns in the
        plane of the first two spatial axes (turns by 0 or 180 degrees only when that plane is
        not square). In 2D that is 3 numbers: flip rows, flip columns, turns.

    Returns
    -------
    images, labels : contiguous copies, each sample transformed identically in both.
    """
    dims = labels.ndim - 1
    square = images.shape[2] == images.shape[3]
    out_images, out_labels = [], []
    for image, label in zip(images, labels):
        flips = rng.integers(0, 2, size=dims)
        turns = int(rng.integers(0, 4)) if square else 2 * int(rng.integers(0, 2))
        for axis, flip in enumerate(flips):
            if flip:
                image, label = np.flip(image, axis + 1), np.flip(label, axis)
        if turns:
            image, label = np.rot90(image, turns, axes=(1, 2)), np.rot90(label, turns, axes=(0, 1))
        out_images.append(image)
        out_labels.append(label)
    return np.ascontiguousarray(np.stack(out_images)), np.ascontiguousarray(np.stack(out_labels))


def _check_data(images: np.ndarray, labels: np.ndarray) -> None:
    if images.ndim not in (4, 5) or labels.ndim != images.ndim - 1:
        raise ValueError(
            f"images must be (N, C, *spatial) and labels (N, *spatial) with 2 or 3 spatial "
            f"axes, got {images.shape} and {labels.shape}"
        )
    if images.shape[0] != labels.shape[0] or images.shape[2:] != labels.shape[1:]:
        raise ValueError(f"images {images.shape} and labels {labels.shape} do not match")
    if images.shape[0] == 0:
        raise ValueError("no images")


def _to_input(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (B, C, *spatial) -> float32 in [0, 1] on ``device``."""
    return torch.from_numpy(np.asarray(images, dtype=np.float32) / np.float32(255.0)).to(device)


def _device_of(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def train(
    model: torch.nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    augment: bool = True,
    progress: str | None = None,
    schedule: str = "constant",
    validate: Callable[[torch.nn.Module], float] | None = None,
    eval_every: int = 0,
) -> dict[str, Any]:
    """Train ``model`` in place with Adam and MONAI's ``DiceCELoss``.

    Parameters
    ----------
    model : torch.nn.Module
        Outputs logits ``(B, K, *spatial)``; trained on the device its parameters are on.
    images : ndarray uint8 (N, C, *spatial)
    labels : ndarray int64 (N, *spatial)
        Class ids ``0 .. K-1``.
    steps, batch_size : int
        Optimiser steps; each draws ``batch_size`` samples with replacement from the N.
    lr : float
        Adam's learning rate.
    seed : int
        Seeds the batch draws and the augmentation (two independent numpy streams, so the
        batches are the same with and without augmentation) and torch's random state during
        training (restored afterwards).
    augment : bool
        Random flips on both axes and random 90-degree rotations (:func:`augment_batch`).
    progress : str, optional
        Show a tqdm bar with this description.
    schedule : ``"constant"`` or ``"poly"``
        Learning rate: constant, or nnU-Net's polynomial decay ``lr * (1 - step / steps) ** 0.9``.
    validate : callable, optional
        ``validate(model) -> float`` (larger is better, e.g. the validation Dice), called every
        ``eval_every`` steps and after the last; the model ends with the weights of the best
        call (checkpoint selection; the first best on ties).
    eval_every : int
        Steps between validations (needs ``validate``; 0: only after the last step).

    Returns
    -------
    dict
        ``loss_first`` (loss of the first step), ``loss_last`` (mean loss of the last 10 % of the
        steps, at least one), ``seconds`` (wall time), ``steps``; with ``validate`` also
        ``curve`` (``[[step, value], ...]``), ``best_step`` and ``best_value``.

    Raises
    ------
    ValueError
        Bad shapes or arguments, or a label id the network has no output channel for.
    FloatingPointError
        The loss became NaN or infinite.

    Notes
    -----
    The model is in train mode during and in eval mode after training. The same initial
    weights, data and seed give identical weights (CPU; see :func:`set_seed`).
    """
    from monai.losses import DiceCELoss

    _check_data(images, labels)
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(f"need steps >= 1, batch_size >= 1, lr > 0; got {steps}, "
                         f"{batch_size}, {lr}")
    if schedule not in ("constant", "poly"):
        raise ValueError(f"schedule must be 'constant' or 'poly', got {schedule!r}")
    if eval_every < 0:
        raise ValueError(f"eval_every must be >= 0, got {eval_every}")
    device = _device_of(model)
    batch_seq, augment_seq = np.random.SeedSequence(int(seed)).spawn(2)
    batch_rng, augment_rng = np.random.default_rng(batch_seq), np.random.default_rng(augment_seq)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    max_label = int(labels.max())
    n_last = max(1, math.ceil(0.1 * steps))
    losses: list[float] = []
    curve: list[list[float]] = []
    best: tuple[float, int, dict] | None = None

    def check(step: int) -> None:
        nonlocal best
        value = float(validate(model))
        model.train()
        curve.append([step, value])
        if best is None or value > best[0]:
            best = (value, step, {k: v.detach().clone() for k, v in model.state_dict().items()})

    bar = tqdm(total=steps, desc=progress, leave=False) if isinstance(progress, str) else None
    start = time.perf_counter()
    model.train()
    try:
        with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
            torch.manual_seed(int(seed))
            for step in range(steps):
                if schedule == "poly":
                    for group in optimiser.param_groups:
                        group["lr"] = lr * (1.0 - step / steps) ** 0.9
                index = batch_rng.integers(0, images.shape[0], size=batch_size)
                x, y = images[index], labels[index]
                if augment:
                    x, y = augment_batch(x, y, augment_rng)
                inputs = _to_input(x, device)
                target = torch.from_numpy(np.asarray(y, dtype=np.int64)).unsqueeze(1).to(device)
                logits = model(inputs)
                if step == 0 and max_label >= logits.shape[1]:
                    raise ValueError(
                        f"labels contain class id {max_label} but the network has only "
                        f"{logits.shape[1]} output channels"
                    )
                loss = loss_fn(logits, target)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise FloatingPointError(
                        f"training loss is {value} at step {step + 1} of {steps} (lr {lr}); "
                        "lower the learning rate"
                    )
                losses.append(value)
                if bar is not None:
                    bar.update(1)
                    if step % 10 == 0 or step == steps - 1:
                        bar.set_postfix(loss=f"{value:.4f}")
                if validate is not None and (
                        step == steps - 1 or (eval_every and (step + 1) % eval_every == 0)):
                    check(step + 1)
    finally:
        model.eval()
        if bar is not None:
            bar.close()
    out: dict[str, Any] = {
        "loss_first": losses[0],
        "loss_last": float(np.mean(losses[-n_last:])),
        "seconds": time.perf_counter() - start,
        "steps": steps,
    }
    if best is not None:
        model.load_state_dict(best[2])
        out.update(curve=curve, best_value=best[0], best_step=best[1])
    return out


# ------------------------------------------------------------------------------------------------
# evaluation


def dice_per_class(
    model: torch.nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    n_classes: int,
    batch_size: int = 16,
) -> np.ndarray:
    """Test Dice of each foreground class: argmax prediction vs label, averaged over images.

    Parameters
    ----------
    model : torch.nn.Module
        Outputs ``n_classes`` logits per pixel; run in eval mode without gradients (its mode is
        restored afterwards).
    images : ndarray uint8 (N, C, *spatial)
    labels : ndarray int64 (N, *spatial)
    n_classes : int
        Classes including the background (0).
    batch_size : int
        Images per forward.

    Returns
    -------
    ndarray float64 (n_classes - 1,)
        Entry ``k - 1`` is the Dice of class ``k``: MONAI ``DiceMetric(include_background=False,
        reduction="mean_batch", ignore_empty=True)`` over the whole split, i.e. the mean over
        the images whose label contains class k of ``2 |P & G| / (|P| + |G|)``. An image
        without class k in its label does not count for class k (whatever is predicted there),
        so it cannot turn the mean into NaN. NaN only when class k is absent from the label of
        every image (MONAI would report 0 there; that is not a measured Dice).
    """
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot

    _check_data(images, labels)
    if n_classes < 2:
        raise ValueError(f"n_classes counts the background and must be >= 2, got {n_classes}")
    if int(labels.max()) >= n_classes or int(labels.min()) < 0:
        raise ValueError(
            f"labels hold class ids {int(labels.min())}..{int(labels.max())}, outside "
            f"0..{n_classes - 1}"
        )
    metric = DiceMetric(
        include_background=False, reduction="mean_batch", get_not_nans=True, ignore_empty=True
    )
    device = _device_of(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, images.shape[0], batch_size):
                x = _to_input(images[start:start + batch_size], device)
                y = torch.from_numpy(np.asarray(labels[start:start + batch_size], dtype=np.int64))
                logits = model(x)
                if logits.shape[1] != n_classes:
                    raise ValueError(
                        f"the network outputs {logits.shape[1]} channels, n_classes is {n_classes}"
                    )
                pred = logits.argmax(dim=1, keepdim=True).cpu()
                metric(
                    one_hot(pred, n_classes, dim=1),
                    one_hot(y.unsqueeze(1), n_classes, dim=1),
                )
    finally:
        model.train(was_training)
    dice, not_nans = metric.aggregate()
    out = dice.double().numpy().copy()
    out[not_nans.numpy() == 0] = np.nan
    return out


def dice_per_case(
    model: torch.nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    n_classes: int,
    batch_size: int = 16,
) -> np.ndarray:
    """Dice of each image and foreground class: ``(N, n_classes - 1)`` float64.

    Entry ``[i, k - 1]`` is ``2 |P & G| / (|P| + |G|)`` of class k on image i (argmax
    prediction P, label G), NaN where class k is absent from image i's label (whatever is
    predicted there): the per-image values that :func:`dice_per_class` averages (its entry k
    is the NaN-ignoring mean of this column). The model runs in eval mode without gradients
    (its mode is restored).
    """
    _check_data(images, labels)
    if n_classes < 2:
        raise ValueError(f"n_classes counts the background and must be >= 2, got {n_classes}")
    if int(labels.max()) >= n_classes or int(labels.min()) < 0:
        raise ValueError(
            f"labels hold class ids {int(labels.min())}..{int(labels.max())}, outside "
            f"0..{n_classes - 1}"
        )
    device = _device_of(model)
    was_training = model.training
    model.eval()
    out = np.full((images.shape[0], n_classes - 1), np.nan)
    try:
        with torch.no_grad():
            for start in range(0, images.shape[0], batch_size):
                logits = model(_to_input(images[start:start + batch_size], device))
                if logits.shape[1] != n_classes:
                    raise ValueError(
                        f"the network outputs {logits.shape[1]} channels, n_classes is {n_classes}"
                    )
                pred = logits.argmax(dim=1).cpu().numpy()
                for j, (p, g) in enumerate(zip(pred, labels[start:start + batch_size])):
                    for k in range(1, n_classes):
                        gk = g == k
                        n_g = int(gk.sum())
                        if n_g:
                            pk = p == k
                            out[start + j, k - 1] = 2.0 * int((pk & gk).sum()) / (
                                int(pk.sum()) + n_g)
    finally:
        model.train(was_training)
    return out


def mean_dice(per_case: np.ndarray) -> float | None:
    """Mean over the foreground classes of each class's mean over the images that contain it
    (the benchmark's Dice of a split, from :func:`dice_per_case`); None when no class occurs."""
    with np.errstate(all="ignore"):
        counts = np.isfinite(per_case).sum(axis=0)
        per_class = np.where(counts > 0, np.nansum(per_case, axis=0) / np.maximum(counts, 1),
                             np.nan)
    finite = per_class[np.isfinite(per_class)]
    return float(finite.mean()) if finite.size else None


# ------------------------------------------------------------------------------------------------
# checkpoints


def load_pretrained(
    model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], head: str
) -> dict[str, Any]:
    """Load a pre-trained checkpoint into ``model`` except its head, which keeps its weights.

    Parameters
    ----------
    model : torch.nn.Module
        Freshly built (and seeded) target network; modified in place.
    state_dict : mapping of str to Tensor
        The pre-trained weights (see :func:`load_checkpoint`).
    head : str
        Module name of the head (:func:`head_module`): keys starting with ``head + "."`` are not
        loaded, whatever their shape (the source task may have another number of classes).

    Returns
    -------
    dict
        ``{"loaded": number of tensors loaded, "reinitialised": the model's head keys}``.

    Raises
    ------
    UserError
        ``head`` is not a module with weights of ``model``, or, outside the head, the checkpoint
        lacks a key of the model, has a key the model lacks, or has a tensor of another shape:
        a checkpoint of another architecture. The message names the keys; nothing is loaded.
    """
    prefix = head + "."
    own = model.state_dict()
    head_keys = [k for k in own if k.startswith(prefix)]
    if not head_keys:
        raise UserError(
            f"head '{head}' is not a module with weights of this {type(model).__name__}"
        )
    missing, mismatched, to_load = [], [], {}
    for key, tensor in own.items():
        if key.startswith(prefix):
            continue
        if key not in state_dict:
            missing.append(key)
            continue
        theirs = state_dict[key]
        if not isinstance(theirs, torch.Tensor) or theirs.shape != tensor.shape:
            shape = list(theirs.shape) if isinstance(theirs, torch.Tensor) else type(theirs)
            mismatched.append(f"{key} (checkpoint {shape} vs model {list(tensor.shape)})")
            continue
        to_load[key] = theirs
    unexpected = [k for k in state_dict if k not in own and not k.startswith(prefix)]
    if missing or mismatched or unexpected:
        parts = []
        if missing:
            parts.append(f"missing in the checkpoint: {_names(missing)}")
        if mismatched:
            parts.append(f"shape mismatch: {_names(mismatched)}")
        if unexpected:
            parts.append(f"not in the model: {_names(unexpected)}")
        raise UserError(
            f"the checkpoint does not fit this {type(model).__name__} outside its head "
            f"'{head}' ({'; '.join(parts)}); was it trained with another architecture?"
        )
    model.load_state_dict(to_load, strict=False)
    return {"loaded": len(to_load), "reinitialised": head_keys}


def _names(keys: list[str], shown: int = 5) -> str:
    more = len(keys) - shown
    return ", ".join(keys[:shown]) + (f" and {more} more" if more > 0 else "")


def _plain(value: Any, where: str = "meta") -> Any:
    """``value`` as str/int/float/bool/None, lists and str-keyed dicts (safe to unpickle)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(
        f"{where} is a {type(value).__name__}; checkpoint meta holds only plain values "
        "(str, numbers, bool, None, lists, dicts)"
    )


def save_checkpoint(model: torch.nn.Module, path: str | Path, meta: Mapping[str, Any]) -> Path:
    """Write ``{"state_dict": model weights (CPU), "meta": meta}`` atomically.

    The file is written to a temporary file in the same folder (created if needed) and moved
    into place with ``os.replace``, so an interrupted run never leaves a truncated checkpoint.
    ``meta`` is stored as plain values (tuples become lists, numpy scalars numbers, paths text)
    so that the file loads with ``torch.load(..., weights_only=True)``: ``ccfv rank`` reads it
    as a bank checkpoint (its state dict under the default key ``state_dict``).

    Returns the path written.
    """
    path = Path(path)
    plain_meta = _plain(dict(meta))
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save({"state_dict": state, "meta": plain_meta}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by :func:`save_checkpoint`: ``(state_dict, meta)`` on the CPU."""
    obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(obj, Mapping) or "state_dict" not in obj:
        raise UserError(f"{path} is not a benchmark checkpoint (no 'state_dict')")
    return dict(obj["state_dict"]), dict(obj.get("meta", {}))
