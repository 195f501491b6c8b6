"""The benchmark's training: whole images drawn from in-memory arrays (:func:`train`), or
patches cropped from native-resolution images (:func:`train_patches`), flips and turns, fed to
the package's one training loop (:func:`ccfv.training.fit`: Adam, MONAI's DiceCELoss, an optional
polynomial learning-rate decay and checkpoint selection on a validation score).

Images are ``uint8`` arrays ``(N, C, *spatial)`` divided by 255 into ``float32`` before they
enter a network; labels ``int64`` arrays ``(N, *spatial)`` of class ids, 0 the background.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ccfv.training.loop import _device_of, fit, set_seed

__all__ = ["PatchCropper", "augment_batch", "set_seed", "train", "train_patches"]


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
    _check_data(images, labels)
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(
            f"need steps >= 1, batch_size >= 1, lr > 0; got {steps}, {batch_size}, {lr}"
        )
    batch_rng, augment_rng = _streams(seed)

    def draw() -> tuple[np.ndarray, np.ndarray]:
        index = batch_rng.integers(0, images.shape[0], size=batch_size)
        return images[index], labels[index]

    return _fit_draws(
        model,
        draw,
        augment_rng if augment else None,
        max_label=int(labels.max()),
        steps=steps,
        lr=lr,
        seed=seed,
        schedule=schedule,
        validate=validate,
        eval_every=eval_every,
        progress=progress,
    )


def _streams(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """The two independent numpy streams of a training run: the batch draws, the augmentation."""
    batch_seq, augment_seq = np.random.SeedSequence(int(seed)).spawn(2)
    return np.random.default_rng(batch_seq), np.random.default_rng(augment_seq)


def _fit_draws(
    model: torch.nn.Module,
    draw: Callable[[], tuple[np.ndarray, np.ndarray]],
    augment_rng: np.random.Generator | None,
    max_label: int,
    **fit_options: Any,
) -> dict[str, Any]:
    """:func:`ccfv.training.fit` on the batches ``draw()`` returns (uint8 images, int labels),
    augmented by :func:`augment_batch` with ``augment_rng`` (None: not augmented)."""
    device = _device_of(model)

    def batches(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = draw()
        if augment_rng is not None:
            x, y = augment_batch(x, y, augment_rng)
        inputs = _to_input(x, device)
        target = torch.from_numpy(np.asarray(y, dtype=np.int64)).unsqueeze(1).to(device)
        return inputs, target

    return fit(model, batches, max_label=max_label, **fit_options)


class PatchCropper:
    """Patches of size ``patch`` from whole images of any size, by MONAI's
    ``RandCropByPosNegLabeld``: a patch is centred on a foreground pixel (label > 0) with
    probability ``pos / (pos + neg)``, else on a background pixel, the centre shifted so that
    the patch lies inside the image (images smaller than ``patch`` are zero-padded first, label
    0). The foreground and background indices are computed once per image (MONAI's
    ``fg_indices_key``), not at every crop.

    ``cropper(index, seed) -> (image (C, *patch) uint8, label (*patch) int64)``: image
    ``index``, the crop drawn from MONAI's random state seeded with ``seed``."""

    def __init__(
        self,
        images: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        patch: Sequence[int],
        pos: float = 2.0,
        neg: float = 1.0,
    ):
        from monai.transforms import RandCropByPosNegLabeld

        if not len(images) or len(images) != len(labels):
            raise ValueError(
                f"need as many images as labels, at least 1: {len(images)}, {len(labels)}"
            )
        self.patch = [int(p) for p in patch]
        self.crop = RandCropByPosNegLabeld(
            ["image", "label"],
            label_key="label",
            spatial_size=self.patch,
            pos=pos,
            neg=neg,
            num_samples=1,
            fg_indices_key="fg",
            bg_indices_key="bg",
        )
        self.cases: list[dict[Any, Any]] = []
        for image, label in zip(images, labels):
            if image.shape[1:] != label.shape or len(self.patch) != label.ndim:
                raise ValueError(
                    f"image {image.shape}, label {label.shape} and patch {self.patch} do not match"
                )
            pad = [(0, 0)] + [
                ((max(p - n, 0)) // 2, max(p - n, 0) - max(p - n, 0) // 2)
                for n, p in zip(label.shape, self.patch)
            ]
            image = np.pad(image, pad)
            label = np.pad(np.asarray(label, dtype=np.int64), pad[1:])
            flat = label.ravel() > 0
            self.cases.append(
                {
                    "image": torch.from_numpy(np.ascontiguousarray(image)),
                    "label": torch.from_numpy(np.ascontiguousarray(label))[None],
                    "fg": np.flatnonzero(flat),
                    "bg": np.flatnonzero(~flat),
                }
            )

    def __len__(self) -> int:
        return len(self.cases)

    def __call__(self, index: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        self.crop.set_random_state(seed=int(seed))
        out = self.crop(self.cases[int(index)])[0]
        image = torch.as_tensor(out["image"]).as_subclass(torch.Tensor).numpy()
        label = torch.as_tensor(out["label"]).as_subclass(torch.Tensor).numpy()[0]
        return image, label


def train_patches(
    model: torch.nn.Module,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    patch: Sequence[int],
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    pos: float = 2.0,
    neg: float = 1.0,
    augment: bool = True,
    progress: str | None = None,
    schedule: str = "constant",
    validate: Callable[[torch.nn.Module], float] | None = None,
    eval_every: int = 0,
) -> dict[str, Any]:
    """:func:`train` on patches instead of whole images: the training of a target at its
    native resolution (the ``native`` key of the benchmark config).

    Each step draws ``batch_size`` images with replacement (as :func:`train` does), crops one
    patch of size ``patch`` from each (:class:`PatchCropper`: MONAI's ``RandCropByPosNegLabeld``,
    foreground-centred with probability ``pos / (pos + neg)``, 2/3 by default as in
    ``ccfv select``), then applies :func:`augment_batch` (random flips on every axis and
    quarter turns), and hands the batch to :func:`ccfv.training.fit` with the same optimiser,
    loss, schedule and checkpoint selection as :func:`train`.

    Parameters
    ----------
    images : sequence of uint8 arrays ``(C, *spatial_i)``, one per image, any sizes
    labels : sequence of int64 arrays ``spatial_i``, class ids ``0 .. K-1``
    patch : the patch size per spatial axis
    seed : seeds the image draws and the crops (one numpy stream) and the augmentation (a
        second, independent stream), and torch's random state during training

    The other parameters and the returned dict are those of :func:`train`.
    """
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(
            f"need steps >= 1, batch_size >= 1, lr > 0; got {steps}, {batch_size}, {lr}"
        )
    cropper = PatchCropper(images, labels, patch, pos=pos, neg=neg)
    batch_rng, augment_rng = _streams(seed)

    def draw() -> tuple[np.ndarray, np.ndarray]:
        pairs = [
            cropper(int(batch_rng.integers(0, len(cropper))), int(batch_rng.integers(2**31)))
            for _ in range(batch_size)
        ]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    return _fit_draws(
        model,
        draw,
        augment_rng if augment else None,
        max_label=int(max(int(np.max(label)) for label in labels)),
        steps=steps,
        lr=lr,
        seed=seed,
        schedule=schedule,
        validate=validate,
        eval_every=eval_every,
        progress=progress,
    )
