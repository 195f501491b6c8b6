"""Test Dice of a benchmark network: per class over a split (MONAI's DiceMetric), per image
and class, and the benchmark's mean Dice of a split."""

from __future__ import annotations

import numpy as np
import torch

from ccfv.bench.training import _check_data, _device_of, _to_input

__all__ = ["dice_per_case", "dice_per_class", "mean_dice"]


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

    _check_data(images, labels, n_classes)
    metric = DiceMetric(
        include_background=False, reduction="mean_batch", get_not_nans=True, ignore_empty=True
    )
    device = _device_of(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, images.shape[0], batch_size):
                x = _to_input(images[start : start + batch_size], device)
                y = torch.from_numpy(np.asarray(labels[start : start + batch_size], dtype=np.int64))
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
    _check_data(images, labels, n_classes)
    device = _device_of(model)
    was_training = model.training
    model.eval()
    out = np.full((images.shape[0], n_classes - 1), np.nan)
    try:
        with torch.no_grad():
            for start in range(0, images.shape[0], batch_size):
                logits = model(_to_input(images[start : start + batch_size], device))
                if logits.shape[1] != n_classes:
                    raise ValueError(
                        f"the network outputs {logits.shape[1]} channels, n_classes is {n_classes}"
                    )
                pred = logits.argmax(dim=1).cpu().numpy()
                for j, (p, g) in enumerate(zip(pred, labels[start : start + batch_size])):
                    for k in range(1, n_classes):
                        gk = g == k
                        n_g = int(gk.sum())
                        if n_g:
                            pk = p == k
                            out[start + j, k - 1] = (
                                2.0 * int((pk & gk).sum()) / (int(pk.sum()) + n_g)
                            )
    finally:
        model.train(was_training)
    return out


def mean_dice(per_case: np.ndarray) -> float | None:
    """Mean over the foreground classes of each class's mean over the images that contain it
    (the benchmark's Dice of a split, from :func:`dice_per_case`); None when no class occurs."""
    with np.errstate(all="ignore"):
        counts = np.isfinite(per_case).sum(axis=0)
        per_class = np.where(
            counts > 0, np.nansum(per_case, axis=0) / np.maximum(counts, 1), np.nan
        )
    finite = per_class[np.isfinite(per_class)]
    return float(finite.mean()) if finite.size else None
