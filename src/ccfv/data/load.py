"""Read a :class:`Case` into arrays, checking that image and label agree."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ccfv.data.case import Case, LoadedCase
from ccfv.data.io import is_picture, read_file
from ccfv.data.masks import to_class_ids
from ccfv.errors import CCFVWarning, UserError

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
        negative label values (with an example); label values absent from ``labels``; NaN or
        Inf intensities (:func:`check_intensities`).

    Warns
    -----
    CCFVWarning
        An image channel whose voxels all hold the same value.
    """
    parts = [read_file(path) for path in case.images]
    for path, (array, _) in zip(case.images, parts):
        check_intensities(array, path)
    first_path, (first, affine) = case.images[0], parts[0]
    for path, (array, other) in zip(case.images[1:], parts[1:]):
        _check_same_grid(
            first_path,
            first.shape[1:],
            affine,
            path,
            array.shape[1:],
            other,
            f"channel files of case {case.case_id!r}",
        )
    image = np.concatenate([array.astype(np.float32, copy=False) for array, _ in parts], axis=0)
    raw_label, label_affine = read_file(case.label, label=True)
    _check_same_grid(
        first_path,
        image.shape[1:],
        affine,
        case.label,
        raw_label.shape,
        label_affine,
        f"image and label of case {case.case_id!r}",
    )
    label = to_class_ids(raw_label, case.label, labels, picture=is_picture(case.label))
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, : label.ndim], axis=0))
    return LoadedCase(case.case_id, image, label, affine, spacing)


def check_intensities(array: np.ndarray, path: str | Path) -> None:
    """Refuse NaN / Inf intensities, warn about a constant channel; ``array`` is ``(C, ...)``.

    Raises
    ------
    UserError
        Non-finite voxels: how many NaN and Inf, of how many, the first one's channel and
        voxel, and the fix.
    """
    if array.dtype.kind in "fc":
        finite = np.isfinite(array)
        if not finite.all():
            n_nan = int(np.isnan(array).sum())
            n_inf = int(array.size - finite.sum()) - n_nan
            first = np.unravel_index(int(np.flatnonzero(~finite)[0]), array.shape)
            where = f"channel {int(first[0])}, voxel {tuple(int(i) for i in first[1:])}"
            raise UserError(
                f"{path}: {n_nan} NaN and {n_inf} Inf voxel value(s) of {array.size} (the first "
                f"at {where}); a network cannot read non-finite intensities. Replace them in "
                "the file (e.g. numpy.nan_to_num, or the background intensity)"
            )
    if not array.size:
        return
    flat = array.reshape(array.shape[0], -1)
    constant = np.flatnonzero(flat.min(axis=1) == flat.max(axis=1))
    if len(constant):
        values = ", ".join(repr(flat[c, 0].item()) for c in constant[:4])
        which = (
            "the image holds"
            if len(constant) == array.shape[0] == 1
            else f"channel(s) {constant.tolist()} of {array.shape[0]} hold"
        )
        warnings.warn(
            f"{path}: {which} one value ({values}) in all {flat.shape[1]} voxels, a constant "
            "image: "
            "no signal to read (z-score normalisation leaves zeros); check that this is the "
            "intended file",
            CCFVWarning,
            stacklevel=3,
        )


def _check_same_grid(path_a, shape_a, affine_a, path_b, shape_b, affine_b, what: str) -> None:
    if tuple(shape_a) != tuple(shape_b):
        raise UserError(
            f"{path_b}: spatial shape {tuple(shape_b)} differs from {tuple(shape_a)} of "
            f"{path_a} ({what}); resample or crop them onto the same voxel grid"
        )
    gap = float(np.abs(affine_a - affine_b).max())
    if gap > AFFINE_TOLERANCE_MM:
        with np.printoptions(precision=4, suppress=True):
            raise UserError(
                f"{path_b}: affine differs from that of {path_a} by up to {gap:.4g} mm "
                f"(tolerance {AFFINE_TOLERANCE_MM} mm; {what}):\n{affine_b}\nvs\n{affine_a}\n"
                "put both on the same voxel grid (same origin, spacing and direction)"
            )
