"""Validation Dice of a segmentation network by MONAI's sliding-window inference, measured on
each case's own label grid."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ccfv.training.patches import prediction_on_grid

__all__ = ["ValCase", "case_dice", "validation_dice"]


@dataclass
class ValCase:
    """A validation case: the preprocessed ``image`` ``(C, *spatial')`` on the model's grid of
    affine ``grid_affine``, and the original ``label`` on its own grid (``label_affine``)."""

    case_id: str
    image: np.ndarray
    grid_affine: np.ndarray
    label: np.ndarray
    label_affine: np.ndarray


def case_dice(prediction: np.ndarray, label: np.ndarray, n_classes: int) -> float | None:
    """Mean Dice over the foreground classes ``1 .. n_classes - 1`` present in the label or the
    prediction (a class absent from both is left out); None when no class is present."""
    values = []
    for k in range(1, int(n_classes)):
        p, t = prediction == k, label == k
        total = int(p.sum()) + int(t.sum())
        if total:
            values.append(2.0 * float(np.logical_and(p, t).sum()) / total)
    return float(np.mean(values)) if values else None


def _logits(out) -> torch.Tensor:
    return out[0] if isinstance(out, (list, tuple)) else out


def validation_dice(
    model: torch.nn.Module,
    cases: Sequence[ValCase],
    roi: Sequence[int],
    n_classes: int,
    overlap: float = 0.25,
    sw_batch_size: int = 1,
    amp: bool = False,
) -> float:
    """Mean over ``cases`` of :func:`case_dice`, the network run by
    ``monai.inferers.sliding_window_inference`` with windows ``roi`` on each preprocessed image,
    its argmax moved back onto the label's grid. Cases with no class present count 1.0 (an
    empty label predicted empty). The model is left in eval mode."""
    from monai.inferers import sliding_window_inference

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    model.eval()
    values = []
    with torch.no_grad():
        for case in cases:
            x = torch.as_tensor(case.image, dtype=torch.float32)[None].to(device)
            with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
                logits = sliding_window_inference(
                    x, list(roi), sw_batch_size, lambda w: _logits(model(w)), overlap=overlap
                )
            pred = torch.as_tensor(logits).argmax(dim=1)[0].cpu().numpy()
            back = prediction_on_grid(pred, case.grid_affine, case.label.shape, case.label_affine)
            value = case_dice(back, case.label, n_classes)
            values.append(1.0 if value is None else value)
    return float(np.mean(values))
