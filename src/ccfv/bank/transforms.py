"""A model's preprocessing as one function of (image, affine), with the geometry kept right.

The returned affine is the voxel-to-world map of the *returned* grid: the caller maps a voxel
of the label grid to the preprocessed grid by ``inv(affine_out) @ affine_label @ index``, so a
resampling without the matching affine would silently misplace every sampled voxel.

Conventions
-----------
* ``image`` is channel-first, ``(C, *spatial)``; ``affine`` is 4 x 4, voxel index -> world
  (mm), in MONAI's / nibabel's RAS+ world frame (orientation codes are read in that frame:
  ``"RAS"`` = first axis towards Right, ...). A reader that gets LPS affines (SimpleITK / ITK)
  must flip the first two world axes before calling.
* 2D images (``ndim=2``): the 4 x 4 affine acts on ``(row, col, 0, 1)``; only its top-left
  2 x 2 block and the first two entries of its last column describe the grid, the third world
  axis is carried through unchanged. ``spacing`` then has 2 values and ``orientation`` 2
  letters (e.g. ``"RA"``); a 3-letter orientation is refused for 2D images.
* Steps, in order: orientation, spacing (bilinear, border padding, MONAI ``Spacing``), then
  intensity on the resampled image.
* Float32 affines: NIfTI headers store the affine in float32, so the direction cosines of an
  oblique scan are orthonormal only to ~1e-7. MONAI's ``Spacing`` then finds no input corner
  that is the lowest on every output axis (it tests with an absolute tolerance of 1e-8) and
  centres the output grid instead, which shifts it by about half an input voxel: on
  1.25 x 1.25 x 8 mm slices resampled to 1.5 mm the first two planes of the slice axis fall
  outside the new grid. :func:`as_meta_tensor` (the input of every ccfv pipeline, a bundle's
  transforms included) therefore re-orthonormalises direction cosines that are orthonormal to
  within :data:`ORTHONORMAL_TOL` (nearest orthonormal matrix, same voxel sizes): the world
  positions move by < 1e-4 mm and ``Spacing``'s grid covers the input's first and last voxel
  centres again. Sheared affines are left as they are.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    NormalizeIntensity,
    Orientation,
    ScaleIntensityRange,
    ScaleIntensityRangePercentiles,
    Spacing,
)

from ccfv.bank.entry import Intensity, Preprocessing
from ccfv.errors import UserError

__all__ = [
    "ORTHONORMAL_TOL",
    "RAS_LABELS",
    "PreprocessFn",
    "as_meta_tensor",
    "describe_keys",
    "make_preprocess",
    "orthonormal_affine",
    "summarize_keys",
    "window_summary",
]

#: Orientation labels: (start, end) of each world axis, RAS+ as in nibabel.
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))

#: Largest ``|D^T D - I|`` entry of the unit direction cosines ``D`` that counts as float32
#: round-off of an orthonormal matrix (float32 resolution is 6e-8; a shear is far larger).
ORTHONORMAL_TOL = 1e-5

PreprocessFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def make_preprocess(pre: Preprocessing, ndim: int) -> PreprocessFn:
    """Build the preprocessing function of a model for ``ndim``-D images.

    Parameters
    ----------
    pre : Preprocessing
        From the bank entry.
    ndim : {2, 3}
        Spatial dimensions of the images.

    Returns
    -------
    callable
        ``f(image, affine) -> (image', affine')``: image ``(C, *spatial)`` float32 and its 4 x 4
        voxel-to-world affine in, the preprocessed float32 image ``(C, *spatial')`` and the
        affine of its grid (float64) out. The input arrays are not modified.

    Raises
    ------
    UserError
        ``spacing``/``orientation`` lengths do not fit ``ndim``.
    """
    if ndim not in (2, 3):
        raise UserError(f"images must be 2D or 3D, got {ndim} spatial dimensions")
    if pre.spacing is not None and len(pre.spacing) != ndim:
        raise UserError(
            f"preprocessing.spacing {list(pre.spacing)} has {len(pre.spacing)} values but the "
            f"images are {ndim}D; give {ndim} values"
        )
    if pre.orientation is not None and len(pre.orientation) != ndim:
        raise UserError(
            f"preprocessing.orientation '{pre.orientation}' has {len(pre.orientation)} letters but "
            f"the images are {ndim}D; "
            + ("use two letters (e.g. 'RA') or remove it" if ndim == 2 else "use three, e.g. 'RAS'")
        )
    orient = (
        Orientation(axcodes=pre.orientation, labels=RAS_LABELS)
        if pre.orientation is not None
        else None
    )
    spacing = (
        Spacing(pixdim=pre.spacing, mode="bilinear", padding_mode="border")
        if pre.spacing is not None
        else None
    )
    intensity = _intensity_transforms(pre.intensity)

    def preprocess(image: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = as_meta_tensor(image, affine, ndim)
        with warnings.catch_warnings():
            # MONAI warns that a 2D image "may not be channel-first": it is, by contract.
            warnings.filterwarnings("ignore", message=".*channel-first.*")
            if orient is not None:
                x = orient(x)  # type: ignore[assignment]
            if spacing is not None:
                x = spacing(x)  # type: ignore[assignment]
        for t in intensity:
            x = t(x)
        out_affine = np.asarray(x.affine, dtype=np.float64).reshape(4, 4)
        out = np.ascontiguousarray(np.asarray(x.as_tensor(), dtype=np.float32))
        return out, out_affine

    return preprocess


def orthonormal_affine(affine: np.ndarray, ndim: int = 3) -> np.ndarray:
    """``affine`` with the direction cosines of its ``ndim`` spatial columns replaced by the
    nearest orthonormal matrix, when they are orthonormal up to :data:`ORTHONORMAL_TOL`
    (float32 round-off of a NIfTI header); voxel sizes, origin and anything else unchanged.

    Parameters
    ----------
    affine : 4 x 4 voxel-to-world matrix (2D grids: its top-left 2 x 2 block describes them).
    ndim : spatial dimensions of the grid, 2 or 3.

    Returns
    -------
    np.ndarray, float64 4 x 4: a new array (the input is not modified). A sheared or
    degenerate affine comes back unchanged (as float64).
    """
    out = np.array(affine, dtype=np.float64)
    block = out[:ndim, :ndim]
    sizes = np.linalg.norm(block, axis=0)
    if not np.all(np.isfinite(block)) or np.any(sizes <= 0):
        return out
    directions = block / sizes
    if np.max(np.abs(directions.T @ directions - np.eye(ndim))) > ORTHONORMAL_TOL:
        return out
    u, _, vt = np.linalg.svd(directions)
    out[:ndim, :ndim] = (u @ vt) * sizes
    return out


def as_meta_tensor(image: np.ndarray, affine: np.ndarray, ndim: int) -> MetaTensor:
    """A channel-first ``(C, *spatial)`` image and its 4 x 4 voxel-to-world affine as a MONAI
    MetaTensor (float32, copies), the input of every preprocessing pipeline of ccfv.

    The affine goes through :func:`orthonormal_affine` (see the module docstring: MONAI's
    ``Spacing`` misplaces its grid on float32-rounded oblique affines)."""
    image = np.asarray(image, dtype=np.float32)
    affine = np.asarray(affine, dtype=np.float64)
    if image.ndim != ndim + 1:
        raise ValueError(
            f"expected a channel-first {ndim}D image of shape (C, *spatial), got {image.shape}"
        )
    if affine.shape != (4, 4):
        raise ValueError(f"expected a 4 x 4 affine, got shape {affine.shape}")
    affine = orthonormal_affine(affine, ndim)
    return MetaTensor(torch.from_numpy(image.copy()), affine=torch.from_numpy(affine.copy()))


def _intensity_transforms(it: Intensity) -> list[Callable]:
    """MONAI array transforms for one :class:`Intensity`, applied in order."""
    if it.kind == "none":
        return []
    if it.kind == "ct":
        lo, hi = it.clip  # type: ignore[misc]
        clip = _Clip(lo, hi)
        if it.mean is not None:
            norm = NormalizeIntensity(subtrahend=it.mean, divisor=it.std)  # type: ignore[arg-type]
            return [clip, norm]
        return [clip, NormalizeIntensity(channel_wise=True)]
    if it.kind == "zscore":
        return [NormalizeIntensity(nonzero=it.nonzero, channel_wise=True)]
    if it.kind == "percentile":
        return [
            ScaleIntensityRangePercentiles(
                lower=it.lower,  # type: ignore[arg-type]
                upper=it.upper,  # type: ignore[arg-type]
                b_min=it.b_min,
                b_max=it.b_max,
                clip=bool(it.clip),
                channel_wise=True,
            )
        ]
    if it.kind == "range":
        return [
            ScaleIntensityRange(
                a_min=it.a_min,  # type: ignore[arg-type]
                a_max=it.a_max,  # type: ignore[arg-type]
                b_min=it.b_min,
                b_max=it.b_max,
                clip=bool(it.clip),
            )
        ]
    raise AssertionError(f"unknown intensity kind {it.kind}")


class _Clip:
    """Clip intensities to [lo, hi] (keeps the MetaTensor and its affine)."""

    def __init__(self, lo: float, hi: float):
        self.lo, self.hi = float(lo), float(hi)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, self.lo, self.hi)


def describe_keys(pre: Preprocessing) -> str:
    """One line naming what an entry's ``preprocessing`` keys do to an image, for messages."""
    parts = []
    if pre.orientation is not None:
        parts.append(f"orientation: {pre.orientation}")
    if pre.spacing is not None:
        parts.append(f"spacing: {[float(s) for s in pre.spacing]}")
    if pre.intensity.kind != "none":
        parts.append(f"intensity: {pre.intensity.kind}")
    if pre.roi is not None:
        parts.append(f"roi: {list(pre.roi)}")
    return "preprocessing {" + ", ".join(parts) + "}" if parts else "no preprocessing"


def window_summary(pre: Preprocessing) -> str:
    """``roi 96x96x96, overlap 0.25`` (``roi ?`` when unknown), for ``ccfv bank check``."""
    roi = f"roi {'x'.join(map(str, pre.roi))}" if pre.roi else "roi ?"
    return f"{roi}, overlap {pre.overlap:g}"


def summarize_keys(pre: Preprocessing) -> str:
    """One line for ``ccfv bank check``: orientation, spacing, intensity and window."""
    parts = []
    if pre.orientation:
        parts.append(pre.orientation)
    if pre.spacing:
        parts.append("spacing " + "x".join(f"{v:g}" for v in pre.spacing))
    it = pre.intensity
    if it.kind != "none":
        detail = ""
        if it.kind == "ct" and isinstance(it.clip, tuple):
            detail = f" [{it.clip[0]:g}, {it.clip[1]:g}]"
        elif it.kind == "range":
            detail = f" [{it.a_min:g}, {it.a_max:g}]"
        parts.append(f"intensity {it.kind}{detail}")
    parts.append(window_summary(pre))
    return ", ".join(parts)
