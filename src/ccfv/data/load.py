"""Read a :class:`Case` into arrays, checking that image and label agree."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ccfv.data.case import Case, LoadedCase
from ccfv.data.io import is_picture, read_file
from ccfv.data.masks import to_class_ids
from ccfv.errors import UserError

AFFINE_TOLERANCE_MM = 1e-3


def load_case(case: Case, labels: Mapping[int, str] | None = None) -> LoadedCase:
    """Read a case's image channels and label map into arrays.

    Parameters
    ----------
    case : Case
        The case to read (from :func:`ccfv.data.find_cases`).
    labels : mapping of int to str, optional
        The dataset's class ids -> names (``Dataset.labels``). Label values outside them are
        an error; picture masks holding grey levels (e.g. 0/255) are mapped onto them. Without
        it, values are taken as class ids (picture masks whose values are evenly spaced grey
        levels up to 255 are still mapped, e.g. {0, 255} -> {0, 1}); see
        :mod:`ccfv.data.masks` for the whole rule.

    Returns
    -------
    LoadedCase
        ``image`` float32 ``(C, *spatial)`` (channel files stacked in order; a 4D channels-last
        NIfTI becomes channels first), ``label`` int64 ``spatial``, ``affine`` 4x4 float64
        voxel index -> world mm (RAS+; identity on ``(row, col, 0, 1)`` for 2D pictures),
        ``spacing`` per spatial axis.

    Raises
    ------
    UserError
        A missing or unreadable file; channel files, or image and label, whose spatial shapes
        differ or whose affines differ by more than 1e-3 mm (both are given); non-integer or
        negative label values (with an example); label values absent from ``labels``.
    """
    parts = [read_file(path) for path in case.images]
    first_path, (first, affine) = case.images[0], parts[0]
    for path, (array, other) in zip(case.images[1:], parts[1:]):
        _check_same_grid(first_path, first.shape[1:], affine, path, array.shape[1:], other,
                         f"channel files of case {case.case_id!r}")
    image = np.concatenate([array.astype(np.float32, copy=False) for array, _ in parts], axis=0)
    raw_label, label_affine = read_file(case.label, label=True)
    _check_same_grid(first_path, image.shape[1:], affine, case.label, raw_label.shape,
                     label_affine, f"image and label of case {case.case_id!r}")
    label = to_class_ids(raw_label, case.label, labels, picture=is_picture(case.label))
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, : label.ndim], axis=0))
    return LoadedCase(case.case_id, image, label, affine, spacing)


def _check_same_grid(path_a, shape_a, affine_a, path_b, shape_b, affine_b, what: str) -> None:
    if tuple(shape_a) != tuple(shape_b):
        raise UserError(
            f"{path_b}: spatial shape {tuple(shape_b)} differs from {tuple(shape_a)} of "
            f"{path_a} ({what}); resample or crop them onto the same voxel grid")
    gap = float(np.abs(affine_a - affine_b).max())
    if gap > AFFINE_TOLERANCE_MM:
        with np.printoptions(precision=4, suppress=True):
            raise UserError(
                f"{path_b}: affine differs from that of {path_a} by up to {gap:.4g} mm "
                f"(tolerance {AFFINE_TOLERANCE_MM} mm; {what}):\n{affine_b}\nvs\n{affine_a}\n"
                "put both on the same voxel grid (same origin, spacing and direction)")
