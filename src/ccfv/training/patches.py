"""Training patches from preprocessed volumes: labels moved onto a model's grid, MONAI's
``RandCropByPosNegLabeld`` (foreground oversampling) and random flips, seeded per step.

A batch depends only on ``(seed, step)``: a run continued from a saved step draws exactly the
patches an uninterrupted run would have drawn, with no sampler state to save.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

__all__ = ["PatchSampler", "TrainCase", "label_on_grid", "prediction_on_grid"]


@dataclass
class TrainCase:
    """One case on a model's grid: ``image`` float32 ``(C, *spatial)`` (preprocessed),
    ``label`` int64 ``spatial`` (the label moved onto the same grid)."""

    case_id: str
    image: np.ndarray
    label: np.ndarray


def _grid_matrix(from_affine: np.ndarray, to_affine: np.ndarray, ndim: int):
    """``(matrix, offset)`` mapping a voxel index of the ``from`` grid to one of the ``to``
    grid (``inv(to) @ from``), on the first ``ndim`` axes."""
    m = np.linalg.inv(np.asarray(to_affine, dtype=np.float64)) @ np.asarray(
        from_affine, dtype=np.float64
    )
    return m[:ndim, :ndim], m[:ndim, 3]


def label_on_grid(
    label: np.ndarray, label_affine: np.ndarray, shape: Sequence[int], grid_affine: np.ndarray
) -> np.ndarray:
    """The label map resampled (nearest neighbour) onto the grid of ``shape`` whose affine is
    ``grid_affine`` (a preprocessed image's); voxels outside the label's grid are 0."""
    ndim = label.ndim
    matrix, offset = _grid_matrix(grid_affine, label_affine, ndim)
    return ndimage.affine_transform(
        np.asarray(label, dtype=np.int64),
        matrix,
        offset=offset,
        output_shape=tuple(int(s) for s in shape),
        order=0,
        mode="constant",
        cval=0,
    )


def prediction_on_grid(
    prediction: np.ndarray, grid_affine: np.ndarray, shape: Sequence[int], label_affine: np.ndarray
) -> np.ndarray:
    """A class map on a model's grid moved back (nearest neighbour) onto the label's grid of
    ``shape``; label voxels outside the model's grid are background."""
    ndim = prediction.ndim
    matrix, offset = _grid_matrix(label_affine, grid_affine, ndim)
    return ndimage.affine_transform(
        np.asarray(prediction, dtype=np.int64),
        matrix,
        offset=offset,
        output_shape=tuple(int(s) for s in shape),
        order=0,
        mode="constant",
        cval=0,
    )


class PatchSampler:
    """``sampler(step) -> (inputs, target)``: ``batch_size`` patches of size ``roi`` from one
    training case drawn with ``(seed, step)``, on ``device``.

    The transforms are MONAI's: ``SpatialPadd`` (cases smaller than ``roi``),
    ``RandCropByPosNegLabeld`` (``pos`` : ``neg`` patches centred on foreground : background)
    and ``RandFlipd`` along every spatial axis (probability 0.5 each)."""

    def __init__(
        self,
        cases: Sequence[TrainCase],
        roi: Sequence[int],
        batch_size: int,
        seed: int,
        device: str | torch.device = "cpu",
        pos: float = 2.0,
        neg: float = 1.0,
    ):
        from monai.transforms import Compose, RandCropByPosNegLabeld, RandFlipd, SpatialPadd

        if not cases:
            raise ValueError("no training cases")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.cases = list(cases)
        self.roi = [int(r) for r in roi]
        self.batch_size, self.seed, self.device = int(batch_size), int(seed), torch.device(device)
        keys = ["image", "label"]
        ndim = len(self.roi)
        self.transform = Compose(
            [
                SpatialPadd(keys, spatial_size=self.roi),
                RandCropByPosNegLabeld(
                    keys,
                    label_key="label",
                    spatial_size=self.roi,
                    pos=pos,
                    neg=neg,
                    num_samples=self.batch_size,
                    allow_smaller=False,
                ),
                *[RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in range(ndim)],
            ]
        )
        self._tensors = [
            (
                torch.as_tensor(c.image, dtype=torch.float32),
                torch.as_tensor(c.label[None], dtype=torch.int64),
            )
            for c in self.cases
        ]

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(step)])
        index = int(rng.integers(len(self.cases)))
        self.transform.set_random_state(seed=int(rng.integers(2**31)))
        image, label = self._tensors[index]
        samples = self.transform({"image": image, "label": label})
        inputs = torch.stack(
            [torch.as_tensor(s["image"]).as_subclass(torch.Tensor) for s in samples]
        ).float()
        target = torch.stack(
            [torch.as_tensor(s["label"]).as_subclass(torch.Tensor) for s in samples]
        ).long()
        return inputs.to(self.device), target.to(self.device)
