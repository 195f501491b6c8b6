"""Test Dice of a benchmark network: per class over a split (MONAI's DiceMetric), per image
and class (whole images of the benchmark's size, or whole native-resolution images predicted
by sliding windows), and the benchmark's mean Dice of a split."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ccfv.bench.training import _check_data, _device_of, _to_input

__all__ = [
    "dice_per_case",
    "dice_per_case_sliding",
    "dice_per_class",
    "mean_dice",
    "predict_sliding",
]


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
                    out[start + j] = _dice_row(p, g, n_classes)
    finally:
        model.train(was_training)
    return out


def _dice_row(prediction: np.ndarray, label: np.ndarray, n_classes: int) -> np.ndarray:
    """``2 |P & G| / (|P| + |G|)`` of each foreground class of one image (float64), NaN where
    the class is absent from the label."""
    row = np.full(n_classes - 1, np.nan)
    for k in range(1, n_classes):
        gk = label == k
        n_g = int(gk.sum())
        if n_g:
            pk = prediction == k
            row[k - 1] = 2.0 * int((pk & gk).sum()) / (int(pk.sum()) + n_g)
    return row


def predict_sliding(
    model: torch.nn.Module,
    image: np.ndarray,
    *,
    roi: Sequence[int],
    overlap: float,
    sw_batch_size: int = 16,
    n_classes: int | None = None,
) -> np.ndarray:
    """The class map (argmax, int64 ``(*spatial)``) of one whole uint8 image ``(C, *spatial)``
    of any size, by MONAI's ``sliding_window_inference``: windows of ``roi`` overlapping by
    ``overlap`` (the last window of an axis ends at the image's edge), the logits of
    overlapping windows averaged with equal weights (``mode="constant"``), an image smaller
    than ``roi`` padded with zeros and cropped back. The model runs in eval mode without
    gradients (its mode is restored). Windows are how a network fine-tuned on patches sees
    an image; the prediction is on the image's own grid, so its Dice needs no resampling.
    ``n_classes``: refuse a network whose output has another number of channels."""
    from monai.inferers import sliding_window_inference

    device = _device_of(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = sliding_window_inference(
                _to_input(image[None], device),
                [int(r) for r in roi],
                int(sw_batch_size),
                model,
                overlap=float(overlap),
                mode="constant",
            )
    finally:
        model.train(was_training)
    logits = torch.as_tensor(logits)
    if n_classes is not None and logits.shape[1] != n_classes:
        raise ValueError(
            f"the network outputs {logits.shape[1]} channels, n_classes is {n_classes}"
        )
    return logits.argmax(dim=1)[0].cpu().numpy().astype(np.int64)


def dice_per_case_sliding(
    model: torch.nn.Module,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    n_classes: int,
    roi: Sequence[int],
    overlap: float,
    sw_batch_size: int = 16,
) -> np.ndarray:
    """:func:`dice_per_case` of whole images of any size predicted by sliding windows
    (:func:`predict_sliding`): ``(N, n_classes - 1)`` float64, entry ``[i, k - 1]`` the Dice of
    class k on image i on its label's own grid, NaN where class k is absent from that label.
    ``images[i]`` uint8 ``(C, *spatial_i)``, ``labels[i]`` int64 ``spatial_i``."""
    if len(images) != len(labels) or not len(images):
        raise ValueError(f"need as many images as labels, at least 1: {len(images)}, {len(labels)}")
    out = np.full((len(images), n_classes - 1), np.nan)
    for i, (image, label) in enumerate(zip(images, labels)):
        if image.shape[1:] != label.shape:
            raise ValueError(f"image {i} {image.shape} and its label {label.shape} do not match")
        if int(label.max()) >= n_classes or int(label.min()) < 0:
            raise ValueError(f"label {i} holds class ids outside 0..{n_classes - 1}")
        pred = predict_sliding(
            model,
            image,
            roi=roi,
            overlap=overlap,
            sw_batch_size=sw_batch_size,
            n_classes=n_classes,
        )
        out[i] = _dice_row(pred, label, n_classes)
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
