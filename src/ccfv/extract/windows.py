"""Sliding-window layout and the assignment of sample points to windows.

The windows are exactly those of MONAI's :func:`monai.inferers.sliding_window_inference`
(same padding, same scan interval, same order), built with MONAI's own helpers.

Geometry conventions
--------------------
- A point is a continuous voxel coordinate ``(p_0, ..., p_{n-1})`` in the image's index space,
  in the axis order of the array (no x/y/z flip): voxel ``i`` has its centre at ``i`` and covers
  ``[i - 0.5, i + 0.5]``. A point lies in the image when ``-0.5 <= p_a <= n_a - 0.5`` on every
  axis ``a``, up to :data:`POINT_TOL` voxels of round-off (such points are clamped to the
  image's extent; :func:`inside_image` is the one rule for "inside").
- An image smaller than the window on some axis is padded on that axis by
  ``pad_before = (roi - n) // 2`` and ``roi - n - pad_before`` after (MONAI's layout, constant 0
  by default); padded coordinates are ``p + pad_before``.
- A window of size ``R`` starting at ``s`` covers ``[s - 0.5, s + R - 0.5]``. Its distance to a
  point is ``min_a min(p_a - s_a + 0.5, s_a + R_a - 0.5 - p_a)``; each point is read from the
  window where that distance is largest (the point is "most central"). Windows form a grid, so
  the best window is the best start on every axis separately; ties go to the lower start.
- The window-local coordinate of a point is ``q = p + pad_before - s``, in ``[-0.5, R - 0.5]``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from monai.inferers.utils import _get_scan_interval, dense_patch_slices
from monai.utils import fall_back_tuple

from ccfv.errors import CCFVWarning, UserError

__all__ = ["POINT_TOL", "WindowLayout", "clamp_to_image", "inside_image", "window_layout"]

#: How far (in voxels) a point may lie beyond an image's extent ``[-0.5, n - 0.5]`` and still
#: count as inside (float32 affines and spacings move a border voxel by ~1e-5 voxel).
POINT_TOL = 1e-3


def inside_image(points: np.ndarray, shape, tol: float = POINT_TOL) -> np.ndarray:
    """Boolean ``(P,)``: which points ``(P, ndim)`` lie within ``[-0.5 - tol, n - 0.5 + tol]``
    on every axis of an image of spatial ``shape`` (NaN/Inf never do)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, len(shape))
    hi = np.asarray(shape, dtype=np.float64) - 0.5 + tol
    with np.errstate(invalid="ignore"):
        return np.all((pts >= -0.5 - tol) & (pts <= hi), axis=1)


def clamp_to_image(points: np.ndarray, shape) -> np.ndarray:
    """``points`` (float64) clamped to ``[-0.5, n - 0.5]`` per axis (for points that are
    inside up to :data:`POINT_TOL`)."""
    pts = np.asarray(points, dtype=np.float64)
    return np.clip(pts, -0.5, np.asarray(shape, dtype=np.float64) - 0.5)


#: A window at least this many times the image's size (voxel count) gives a warning.
PADDING_WARNING = 8


@dataclass(frozen=True)
class WindowLayout:
    """Windows over one image; see the module docstring for the geometry.

    Attributes
    ----------
    image_shape : spatial shape of the image, before padding.
    padded_shape : ``max(image_shape, roi_size)`` per axis.
    pad_before, pad_after : padding per axis.
    roi_size : window size per axis.
    starts : int array ``(W, ndim)``: start of every window in the padded grid, MONAI's order.
    axis_starts : per axis, the sorted distinct starts; ``starts`` is their Cartesian product
        in C order.
    """

    image_shape: tuple[int, ...]
    padded_shape: tuple[int, ...]
    pad_before: tuple[int, ...]
    pad_after: tuple[int, ...]
    roi_size: tuple[int, ...]
    starts: np.ndarray
    axis_starts: tuple[np.ndarray, ...]

    @property
    def ndim(self) -> int:
        return len(self.image_shape)

    def __len__(self) -> int:
        return int(self.starts.shape[0])

    def slices(self, window: int) -> tuple[slice, ...]:
        """Spatial slices of window ``window`` in the padded image."""
        return tuple(slice(int(s), int(s) + r) for s, r in zip(self.starts[window], self.roi_size))

    def check_points(self, points: np.ndarray, what: str = "points") -> np.ndarray:
        """Validate points ``(P, ndim)`` in image coordinates; return them as float64.

        Raises
        ------
        UserError
            Wrong shape, NaN/Inf, or a point outside ``[-0.5, n - 0.5]`` on some axis (beyond
            :data:`POINT_TOL`; points within it are clamped).
        """
        pts = np.asarray(points, dtype=np.float64)
        if pts.ndim == 1 and pts.size == 0:
            pts = pts.reshape(0, self.ndim)
        if pts.ndim != 2 or pts.shape[1] != self.ndim:
            raise UserError(
                f"{what}: expected an array of shape (P, {self.ndim}) of voxel coordinates for "
                f"a {self.ndim}D image, got shape {pts.shape}"
            )
        if not np.all(np.isfinite(pts)):
            raise UserError(f"{what}: holds NaN or Inf coordinates")
        bad = np.flatnonzero(~inside_image(pts, self.image_shape))
        if bad.size:
            i = int(bad[0])
            raise UserError(
                f"{what}: {bad.size} of {len(pts)} point(s) lie outside the image of shape "
                f"{self.image_shape}, e.g. point {i} at {np.round(pts[i], 3).tolist()} (valid: "
                "-0.5 <= p <= n - 0.5 per axis): give voxel coordinates in this image's grid, "
                "mapped through the affine of the image after its preprocessing, or drop the "
                "points outside first (ccfv.extract.inside_image)"
            )
        return clamp_to_image(pts, self.image_shape)

    def assign(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Most central window of each point and its window-local coordinates.

        Parameters
        ----------
        points : float array ``(P, ndim)``, image coordinates, already checked.

        Returns
        -------
        window : int64 array ``(P,)``, index into :attr:`starts`.
        local : float64 array ``(P, ndim)``, coordinates relative to the window's first voxel.
        """
        pts = np.asarray(points, dtype=np.float64) + np.asarray(self.pad_before, np.float64)
        per_axis = []
        for a in range(self.ndim):
            s = self.axis_starts[a].astype(np.float64)[None, :]
            p = pts[:, a : a + 1]
            dist = np.minimum(p - s + 0.5, s + self.roi_size[a] - 0.5 - p)
            per_axis.append(np.argmax(dist, axis=1))  # first maximum: lower start on ties
        grid_shape = tuple(len(s) for s in self.axis_starts)
        window = (
            np.ravel_multi_index(tuple(per_axis), grid_shape).astype(np.int64)
            if pts.shape[0]
            else np.empty(0, np.int64)
        )
        local = pts - self.starts[window].astype(np.float64)
        return window, local


def window_layout(
    image_shape: Sequence[int],
    roi_size: Sequence[int] | int,
    overlap: float | Sequence[float] = 0.25,
) -> WindowLayout:
    """The sliding windows MONAI's ``sliding_window_inference`` uses on an image.

    Parameters
    ----------
    image_shape : spatial shape of the image (2D or 3D).
    roi_size : window size; an int is used on every axis, a non-positive entry means the
        image size on that axis (MONAI's ``fall_back_tuple``).
    overlap : fraction of overlap between windows, in ``[0, 1)``, per axis or for all.

    Returns
    -------
    WindowLayout

    Warns
    -----
    CCFVWarning
        The window holds :data:`PADDING_WARNING` or more times the image's voxels.
    """
    image_shape = tuple(int(n) for n in image_shape)
    ndim = len(image_shape)
    if isinstance(roi_size, (int, np.integer)):
        roi_size = (int(roi_size),) * ndim
    roi_size = tuple(int(r) for r in roi_size)
    if len(roi_size) != ndim:
        raise UserError(
            f"roi_size={roi_size} has {len(roi_size)} entries but the image is "
            f"{ndim}D (spatial shape {image_shape}): give one size per axis"
        )
    roi = tuple(int(r) for r in fall_back_tuple(roi_size, image_shape))
    overlaps = (
        tuple(float(o) for o in overlap)
        if isinstance(overlap, Sequence)
        else (float(overlap),) * ndim
    )
    if len(overlaps) != ndim or any(not (0.0 <= o < 1.0) for o in overlaps):
        raise UserError(f"overlap={overlap!r}: give a fraction in [0, 1) (or one per axis)")
    if np.prod(roi, dtype=np.float64) >= PADDING_WARNING * np.prod(image_shape, dtype=np.float64):
        warnings.warn(
            f"the window (roi) {'x'.join(map(str, roi))} is "
            f"{np.prod(roi, dtype=np.float64) / np.prod(image_shape, dtype=np.float64):.0f} "
            f"times the size of the image {'x'.join(map(str, image_shape))} (after the model's "
            "preprocessing): the network sees mostly zero padding, so its features describe "
            "the padding more than the image; give the bank entry a roi near the image size, "
            "or check its preprocessing spacing",
            CCFVWarning,
            stacklevel=2,
        )
    padded = tuple(max(n, r) for n, r in zip(image_shape, roi))
    before = tuple((p - n) // 2 for n, p in zip(image_shape, padded))
    after = tuple(p - n - b for n, p, b in zip(image_shape, padded, before))
    interval = _get_scan_interval(padded, roi, ndim, overlaps)
    slices = dense_patch_slices(padded, roi, interval)
    starts = np.asarray([[s.start for s in sl] for sl in slices], dtype=np.int64)
    axis_starts = tuple(np.unique(starts[:, a]) for a in range(ndim))
    grid = np.stack(np.meshgrid(*axis_starts, indexing="ij"), axis=-1).reshape(-1, ndim)
    if grid.shape != starts.shape or not np.array_equal(grid, starts):  # pragma: no cover
        raise RuntimeError("MONAI's window order is not a C-order grid; update window_layout")
    return WindowLayout(
        image_shape=image_shape,
        padded_shape=padded,
        pad_before=before,
        pad_after=after,
        roi_size=roi,
        starts=starts,
        axis_starts=axis_starts,
    )
