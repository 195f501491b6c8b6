"""Class ids from label files: the ``labels`` table of a dataset.json and the mask-value rule.

The mask-value rule (:func:`to_class_ids`):

1. Label values must be whole numbers (within 1e-3; floats such as ``1.0`` are rounded) and
   not negative.
2. With known ``labels`` (class id -> name): values that are all known ids are kept as they are.
   Otherwise, for a 2D picture mask only, the values are read as 8-bit grey levels of the
   ``n = len(labels)`` classes, level ``k`` = ``k * 255 / (n - 1)`` (closer than 1; e.g.
   ``{0, 255}`` for 2 classes, ``{0, 128, 255}`` for 3), and level ``k`` becomes the ``k``-th
   smallest id.
   Anything else is an error that lists the unknown values and the known ids.
3. Without ``labels``: NIfTI / ITK maps are kept as they are. A picture mask whose largest
   value is 255 is read as grey levels when they fit evenly spaced levels (``n`` inferred from
   the smallest gap between the values, at most 32 levels), value ``v`` becoming
   ``round(v * (n - 1) / 255)``; else kept as it is.

Every remap is announced with a :class:`ccfv.errors.CCFVWarning`. Under rule 3 ``n`` comes from
one mask alone, so a mask missing the brightest class of a multi-level set is read wrongly: give
the dataset's ``labels`` (a plain folder gets them from all of its masks, see
:func:`infer_labels`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from ccfv.errors import CCFVWarning, UserError

MAX_GREY_LEVELS = 32


def parse_labels(raw: object, source: str | Path) -> dict[int, str]:
    """Turn a dataset.json ``labels`` table into ``{class id: name}``.

    Accepts the Decathlon form ``{"0": "background", "1": "liver"}`` and the nnU-Net v2 form
    ``{"background": 0, "liver": 1}``.

    Raises
    ------
    UserError
        Not a mapping, region labels (lists of ids, nnU-Net region-based training), ids that are
        not non-negative integers, or an id given twice.
    """
    if not isinstance(raw, Mapping) or not raw:
        raise UserError(f"{source}: 'labels' must be a non-empty mapping such as "
                        f'{{"0": "background", "1": "liver"}}, got {raw!r}')
    regions = {k: v for k, v in raw.items() if isinstance(v, (list, tuple))}
    if regions:
        name, ids = next(iter(regions.items()))
        raise UserError(
            f"{source}: region labels are not supported ({name!r}: {ids!r} is a region, a union "
            "of classes, from nnU-Net region-based training); give one integer id per class")
    if all(_as_int(k) is not None for k in raw):
        pairs = [(_as_int(k), str(v)) for k, v in raw.items()]
    else:
        pairs = [(_as_int(v), str(k)) for k, v in raw.items()]
    bad = [name for i, name in pairs if i is None or i < 0]
    if bad:
        raise UserError(f"{source}: labels {bad} have no non-negative integer class id; use "
                        f'{{"0": "background", "1": "name", ...}} or {{"name": id, ...}}')
    out: dict[int, str] = {}
    for i, name in pairs:
        if i in out:
            raise UserError(f"{source}: class id {i} is given twice ({out[i]!r} and {name!r}); "
                            "give each class its own id")
        out[i] = name
    return dict(sorted(out.items()))


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def grey_levels(values: Iterable[int]) -> int | None:
    """Number of evenly spaced 8-bit grey levels ``values`` were drawn from, or None.

    ``values`` look like grey levels when the largest is 255 and each lies closer than 1 to a level
    ``k * 255 / (n - 1)`` with ``n = round(255 / smallest gap) + 1 <= 32`` (0 counted).
    """
    vals = sorted(set(int(v) for v in values) | {0})
    if vals[-1] != 255:
        return None
    n = int(round(255 / float(np.diff(vals).min()))) + 1
    if n > MAX_GREY_LEVELS or not _fits(vals, n):
        return None
    return n


def _fits(values: Iterable[int], n: int) -> bool:
    step = 255 / (n - 1)
    return all(v <= 255 and abs(v - round(v / step) * step) < 1 for v in values)


def infer_labels(values: Iterable[int]) -> dict[int, str]:
    """Labels table for masks holding ``values`` (all masks of a dataset together).

    Grey levels (see :func:`grey_levels`) give ids ``0..n-1``; other values are taken as ids.
    Names are ``"background"`` for 0 and ``"class_<id>"`` otherwise.
    """
    vals = sorted(set(int(v) for v in values))
    n = grey_levels(vals)
    ids = range(n) if n is not None else vals
    return {i: "background" if i == 0 else f"class_{i}" for i in ids}


def to_class_ids(array: np.ndarray, path: str | Path, labels: Mapping[int, str] | None = None,
                 picture: bool = False) -> np.ndarray:
    """Return a label map as int64 class ids, following the module's mask-value rule.

    Parameters
    ----------
    array : numpy.ndarray
        Label values as read from ``path``.
    path : str or Path
        The label file (named in messages).
    labels : mapping of int to str, optional
        Known class ids of the dataset; None or empty when unknown.
    picture : bool
        The file is a 2D picture (PNG, ...), whose values may be grey levels.

    Raises
    ------
    UserError
        Non-integer or negative values (with an example), or values that are neither known ids
        nor grey levels of the known classes (listing both).
    """
    path = Path(path)
    if array.dtype.kind not in "biu":
        if array.dtype.kind != "f":
            raise UserError(f"{path}: label values of type {array.dtype} are not class ids; "
                            "save the label map with an integer type")
        rounded = np.rint(array)
        bad = ~(np.abs(array - rounded) <= 1e-3)  # NaN counts as bad
        if bad.any():
            idx = np.unravel_index(int(np.flatnonzero(bad)[0]), array.shape)
            raise UserError(
                f"{path}: label values must be integer class ids, found {float(array[idx])} at "
                f"voxel {tuple(int(i) for i in idx)}; save the label map with integer values "
                "(not interpolated or resampled with a linear filter)")
        array = rounded
    out = array.astype(np.int64)
    values = [int(v) for v in np.unique(out)]
    if values and values[0] < 0:
        raise UserError(f"{path}: negative label value {values[0]}; class ids are 0 "
                        "(background), 1, 2, ...")
    ids = sorted(int(i) for i in labels) if labels else []
    if ids:
        if set(values) <= set(ids):
            return out
        n = len(ids)
        if picture and n >= 2 and max(values) > ids[-1] and _fits(values, n):
            return _remap(out, values, n, np.asarray(ids), path)
        unknown = sorted(set(values) - set(ids))
        raise UserError(
            f"{path}: label values {unknown} are not among the dataset's class ids {ids} "
            f"(labels: {dict(labels)}); fix the label map or add the classes to dataset.json "
            "'labels'")
    if picture:
        n = grey_levels(values)
        if n is not None and max(values) > n - 1:
            return _remap(out, values, n, np.arange(n), path)
    return out


def _remap(out: np.ndarray, values: list[int], n: int, ids: np.ndarray, path: Path) -> np.ndarray:
    step = 255 / (n - 1)
    lut = np.zeros(256, dtype=np.int64)
    new = [int(ids[int(round(v / step))]) for v in values]
    lut[values] = new
    warnings.warn(
        f"masks in {path.parent}: values {values} read as 8-bit grey levels of {n} classes and "
        f"mapped to class ids {new} (level k = k*255/{n - 1} -> k-th class id)",
        CCFVWarning, stacklevel=3)
    return lut[out]
