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
the dataset's ``labels``. A plain folder of picture masks always has them: its class table is
decided once for the whole folder by :func:`picture_class_table` (binary 0/1 and 0/255 masks
-> classes 0, 1; class ids 0..15; evenly spaced grey levels; interpolated or anti-aliased
values, and masks encoding classes in different ways, are errors naming the file).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
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
        raise UserError(
            f"{source}: 'labels' must be a non-empty mapping such as "
            f'{{"0": "background", "1": "liver"}}, got {raw!r}'
        )
    regions = {k: v for k, v in raw.items() if isinstance(v, (list, tuple))}
    if regions:
        name, ids = next(iter(regions.items()))
        raise UserError(
            f"{source}: region labels are not supported ({name!r}: {ids!r} is a region, a union "
            "of classes, from nnU-Net region-based training); give one integer id per class"
        )
    if all(_as_int(k) is not None for k in raw):
        pairs = [(_as_int(k), str(v)) for k, v in raw.items()]
    else:
        pairs = [(_as_int(v), str(k)) for k, v in raw.items()]
    bad = [name for i, name in pairs if i is None or i < 0]
    if bad:
        raise UserError(
            f"{source}: labels {bad} have no non-negative integer class id; use "
            f'{{"0": "background", "1": "name", ...}} or {{"name": id, ...}}'
        )
    checked = [(i, name) for i, name in pairs if i is not None]  # all of them: none is bad
    out: dict[int, str] = {}
    for i, name in checked:
        if i in out:
            raise UserError(
                f"{source}: class id {i} is given twice ({out[i]!r} and {name!r}); "
                "give each class its own id"
            )
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
    Names are ``"background"`` for 0 and ``"class_<id>"`` otherwise. Checks nothing: a plain
    folder's picture masks go through :func:`picture_class_table`, which does.
    """
    vals = sorted(set(int(v) for v in values))
    n = grey_levels(vals)
    ids = range(n) if n is not None else vals
    return _names(ids)


def _names(ids: Iterable[int]) -> dict[int, str]:
    return {int(i): "background" if int(i) == 0 else f"class_{int(i)}" for i in ids}


#: Picture masks of a plain folder hold at most this many classes (background included).
MAX_PICTURE_CLASSES = 16
_FIX = (
    "save the masks with nearest-neighbour resampling and no smoothing or anti-aliasing, "
    "one value per class (0/1 or 0/255 for a binary mask, 0, 1, 2, ... or evenly spaced "
    "grey levels for several classes), or give a dataset.json with 'labels'"
)


def _show(values: Sequence[int], most: int = 12) -> str:
    values = list(values)
    if len(values) <= most:
        return "{" + ", ".join(map(str, values)) + "}"
    head = ", ".join(map(str, values[: most - 2]))
    return "{" + f"{head}, ..., {values[-2]}, {values[-1]}" + f"}} ({len(values)} values)"


def picture_class_table(values_by_file: Mapping[Path, Iterable[int]]) -> tuple[dict[int, str], str]:
    """The class table of a plain folder's picture masks, decided for the whole dataset.

    Each mask is one of:

    - **binary**: values within ``{0, 1}`` or within ``{0, 255}`` (1 and 255 are the class);
    - **class ids**: values within ``0 .. MAX_PICTURE_CLASSES - 1``, some of them >= 2;
    - **grey levels**: the largest value above ``MAX_PICTURE_CLASSES - 1``; the masks of this
      kind together must hold evenly spaced 8-bit levels ``k * 255 / (n - 1)`` (within 1) of at
      most ``MAX_PICTURE_CLASSES`` classes, with 255 among them.

    Then, for the dataset: all masks binary -> classes ``{0, 1}`` (0/1 and 0/255 masks may be
    mixed); class-id masks (with 0/1 masks) -> the ids found; grey-level masks (with 0/255
    masks, read as levels too) -> ids ``0 .. n-1``. Anything else is an error naming the file,
    its values and the fix: values that are none of these (interpolated or anti-aliased edges
    give many values), more than ``MAX_PICTURE_CLASSES`` classes, or masks of different kinds
    (class ids beside grey levels, 0/255 masks beside class-id masks, 0/1 beside grey levels).

    Returns
    -------
    labels : dict of int to str
        ``{id: name}`` (``"background"``, ``"class_<id>"``); :func:`to_class_ids` maps each
        mask onto it.
    rule : str
        One line saying how the values were read, for reports.
    """
    top = MAX_PICTURE_CLASSES - 1
    kinds: dict[str, list[tuple[Path, list[int]]]] = {"01": [], "0255": [], "ids": [], "grey": []}
    for path, raw in values_by_file.items():
        vals = sorted(set(int(v) for v in raw))
        if set(vals) <= {0, 1} and 1 in vals or set(vals) <= {0}:
            kinds["01"].append((Path(path), vals))
        elif set(vals) <= {0, 255}:
            kinds["0255"].append((Path(path), vals))
        elif vals[-1] <= top:
            kinds["ids"].append((Path(path), vals))
        else:
            if grey_levels(vals) is None and not (vals[-1] < 255 and _fits_some_levels(vals)):
                raise UserError(
                    f"{path}: a mask with values {_show(vals)}: not class ids (0..{top}), "
                    "not a binary mask (0/1 or 0/255) and not evenly spaced grey levels "
                    f"(0..255, at most {MAX_PICTURE_CLASSES} classes); such values usually come "
                    f"from interpolation or anti-aliasing and would become false classes; {_FIX}"
                )
            kinds["grey"].append((Path(path), vals))
    counts = {k: len(v) for k, v in kinds.items()}
    if kinds["ids"] and kinds["grey"]:
        _mixed(kinds["ids"][0], "class ids", kinds["grey"][0], "grey levels")
    if kinds["ids"] and kinds["0255"]:
        _mixed(kinds["ids"][0], "class ids", kinds["0255"][0], "a 0/255 binary mask")
    if kinds["grey"] and kinds["01"] and any(1 in v for _, v in kinds["01"]):
        first = next(item for item in kinds["01"] if 1 in item[1])
        _mixed(kinds["grey"][0], "grey levels", first, "a 0/1 binary mask")
    if kinds["grey"]:
        members = kinds["grey"] + kinds["0255"]
        if not any(255 in vals for _, vals in members):
            path, vals = kinds["grey"][0]
            raise UserError(
                f"{path}: mask values {_show(vals)} look like grey levels, but no mask of "
                f"{Path(path).parent} holds 255, so the number of classes is unknown; {_FIX}"
            )
        union: set[int] = {255}
        for path, vals in members:
            union.update(vals)
            if grey_levels(union) is None:
                raise UserError(
                    f"{path}: mask values {_show(vals)} do not fit evenly spaced grey levels "
                    f"together with those of the masks before it ({_show(sorted(union))}, at "
                    f"most {MAX_PICTURE_CLASSES} classes); {_FIX}"
                )
        n = grey_levels(union)
        assert n is not None
        if n > MAX_PICTURE_CLASSES:
            raise UserError(
                f"{members[0][0]}: the masks hold grey levels of {n} classes, more "
                f"than {MAX_PICTURE_CLASSES}; {_FIX}"
            )
        return _names(range(n)), (
            f"picture masks read as 8-bit grey levels of {n} classes (level k*255/{n - 1} -> "
            f"class k; {_masks(counts['grey'] + counts['0255'])})"
        )
    if kinds["ids"]:
        ids = sorted({v for _, vals in kinds["ids"] + kinds["01"] for v in vals} | {0})
        return _names(ids), (
            f"picture mask values taken as class ids {ids} ({_masks(counts['ids'] + counts['01'])})"
        )
    parts = [
        f"{_masks(counts['01'])} 0/1" if counts["01"] else "",
        f"{_masks(counts['0255'])} 0/255" if counts["0255"] else "",
    ]
    return _names([0, 1]), (
        "binary picture masks: 0 -> background, 1 and 255 -> class 1 ("
        + ", ".join(p for p in parts if p)
        + ")"
    )


def _masks(n: int) -> str:
    return f"{n} mask" + ("" if n == 1 else "s")


def _fits_some_levels(vals: list[int]) -> bool:
    """Values that could be grey levels once the brightest level (255) is seen elsewhere."""
    return any(_fits(vals, n) for n in range(3, MAX_PICTURE_CLASSES + 1))


def _mixed(a: tuple[Path, list[int]], what_a: str, b: tuple[Path, list[int]], what_b: str):
    raise UserError(
        f"{b[0]}: mask values {_show(b[1])} ({what_b}) while {a[0]} holds {_show(a[1])} "
        f"({what_a}): the masks of one folder must encode classes the same way, or the same "
        f"value would mean different classes; {_FIX}"
    )


def to_class_ids(
    array: np.ndarray,
    path: str | Path,
    labels: Mapping[int, str] | None = None,
    picture: bool = False,
) -> np.ndarray:
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
            raise UserError(
                f"{path}: label values of type {array.dtype} are not class ids; "
                "save the label map with an integer type"
            )
        rounded = np.rint(array)
        bad = ~(np.abs(array - rounded) <= 1e-3)  # NaN counts as bad
        if bad.any():
            idx = np.unravel_index(int(np.flatnonzero(bad)[0]), array.shape)
            raise UserError(
                f"{path}: label values must be integer class ids, found {float(array[idx])} at "
                f"voxel {tuple(int(i) for i in idx)}; save the label map with integer values "
                "(not interpolated or resampled with a linear filter)"
            )
        array = rounded
    out = array.astype(np.int64)
    values = [int(v) for v in np.unique(out)]
    if values and values[0] < 0:
        raise UserError(
            f"{path}: negative label value {values[0]}; class ids are 0 (background), 1, 2, ..."
        )
    ids = sorted(int(i) for i in labels) if labels else []
    if labels and ids:
        if set(values) <= set(ids):
            return out
        n = len(ids)
        if picture and n >= 2 and max(values) > ids[-1] and _fits(values, n):
            return _remap(out, values, n, np.asarray(ids), path)
        unknown = sorted(set(values) - set(ids))
        raise UserError(
            f"{path}: label values {unknown} are not among the dataset's class ids {ids} "
            f"(labels: {dict(labels)}); fix the label map or add the classes to dataset.json "
            "'labels'"
        )
    if picture:
        levels = grey_levels(values)
        if levels is not None and max(values) > levels - 1:
            return _remap(out, values, levels, np.arange(levels), path)
    return out


def _remap(out: np.ndarray, values: list[int], n: int, ids: np.ndarray, path: Path) -> np.ndarray:
    step = 255 / (n - 1)
    lut = np.zeros(256, dtype=np.int64)
    new = [int(ids[int(round(v / step))]) for v in values]
    lut[values] = new
    warnings.warn(
        f"masks in {path.parent}: values {values} read as 8-bit grey levels of {n} classes and "
        f"mapped to class ids {new} (level k = k*255/{n - 1} -> k-th class id)",
        CCFVWarning,
        stacklevel=3,
    )
    return lut[out]
