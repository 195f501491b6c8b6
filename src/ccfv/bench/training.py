"""Seeding and the training loop of the benchmark (Adam, MONAI's DiceCELoss, flips and turns,
an optional polynomial learning-rate decay and checkpoint selection on a validation score).

Images are ``uint8`` arrays ``(N, C, *spatial)`` divided by 255 into ``float32`` before they
enter a network; labels ``int64`` arrays ``(N, *spatial)`` of class ids, 0 the background.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

__all__ = ["augment_batch", "set_seed", "train"]

def set_seed(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator and torch; ask torch for determinism.

    Sets ``torch.use_deterministic_algorithms(True, warn_only=True)`` (process-wide: an operation
    without a deterministic implementation warns instead of failing) and turns cuDNN
    benchmarking off. On the CPU, the same seed, inputs and thread count give identical results.
    """
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the global state MONAI's random transforms draw
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


def _check_data(images: np.ndarray, labels: np.ndarray, n_classes: int | None = None) -> None:
    """Shapes of a split's images and labels; with ``n_classes``, its labels' class ids too."""
    if images.ndim not in (4, 5) or labels.ndim != images.ndim - 1:
        raise ValueError(
            f"images must be (N, C, *spatial) and labels (N, *spatial) with 2 or 3 spatial "
            f"axes, got {images.shape} and {labels.shape}"
        )
    if images.shape[0] != labels.shape[0] or images.shape[2:] != labels.shape[1:]:
        raise ValueError(f"images {images.shape} and labels {labels.shape} do not match")
    if images.shape[0] == 0:
        raise ValueError("no images")
    if n_classes is None:
        return
    if n_classes < 2:
        raise ValueError(f"n_classes counts the background and must be >= 2, got {n_classes}")
    if int(labels.max()) >= n_classes or int(labels.min()) < 0:
        raise ValueError(
            f"labels hold class ids {int(labels.min())}..{int(labels.max())}, outside "
            f"0..{n_classes - 1}"
        )


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
