"""The sampling plan: which voxels of which target case are read out, per layer and class.

The plan depends only on the label maps, the sample budget and the seed, never on a model, so
every model of a bank is scored on exactly the same voxels (and its features can be cached
under the plan's :meth:`SamplingPlan.fingerprint`), except the planned voxels that a model's
preprocessing crops away: :meth:`CasePlan.points_inside` drops them for that model and
:func:`dropped_voxels` counts them per case and class.

Rules (docs/explanation/method.md, "Features")
----------------------------------------------
For every case and every class ``k`` present in its label map (``0`` = background included,
``1..C`` foreground), and independently for every layer ``l``, ``m`` voxels of class ``k`` are
drawn at random WITHOUT replacement, where

- ``budget="fixed"`` (the released code): ``m = min(n_k, counts[l])``;
- ``budget="proportional"`` (the paper): ``m = min(n_k, clip(round(fraction[l] * n_k),
  min_per_class, max_per_class))``,

and ``n_k`` is the number of voxels of class ``k`` in the case. ``counts`` / ``fraction`` are
ordered from the layer nearest the bottleneck to the layer nearest the output; a plan with
fewer layers takes the LAST ``layers`` entries, a plan with more repeats the last entry.

Reproducibility: the draw of (case, layer, class) uses its own generator,
``np.random.default_rng([seed, *words(sha256(case_id)), layers - 1 - l, k])``: it does not
depend on the other cases, their order, or on how many layers sit below layer ``l`` (the layer
is keyed by its distance from the output). Within a class the drawn voxels are the ranks
``rng.choice(n_k, m, replace=False)`` (sorted) of the class's voxels enumerated in C (raster)
order, i.e. ``np.flatnonzero(label == k)[ranks]``; the implementation finds them chunk by chunk
so that no index array of the size of the volume is ever built.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ccfv.errors import UserError

__all__ = [
    "CasePlan",
    "SamplingPlan",
    "make_plan",
    "label_hash",
    "dropped_voxels",
    "grid_mapping",
    "PLAN_FORMAT",
]

#: Bumped whenever the sampling algorithm changes, so that cached features are recomputed.
PLAN_FORMAT = "ccfv-plan-1"

#: Default fixed budget per case, class and layer (released code), bottleneck -> output.
DEFAULT_COUNTS = (100, 200, 400)
#: Default proportional budget (our choice: the 1:2:4 ratio of the fixed counts).
DEFAULT_FRACTION = (0.001, 0.002, 0.004)

_CHUNK = 1 << 22  # voxels per chunk when scanning a label map


@dataclass(frozen=True)
class CasePlan:
    """The sampled voxels of one case.

    Attributes
    ----------
    case_id : str
    shape : tuple of int
        Spatial shape of the case's label grid (2D or 3D).
    indices : list of np.ndarray
        One per layer (bottleneck -> output), int64, shape ``(P_l, ndim)``: voxel indices into
        the label grid, grouped by class (ascending), raster order within a class.
    classes : list of np.ndarray
        One per layer, int64, shape ``(P_l,)``: the class id of each sampled voxel.
    """

    case_id: str
    shape: tuple[int, ...]
    indices: list[np.ndarray]
    classes: list[np.ndarray]
    label_sha256: str = ""

    def points(
        self, layer_names: Sequence[str], to_image: Callable[[np.ndarray], np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """Sampled positions per layer name, as :func:`ccfv.extract.extract_at_points` takes them.

        Parameters
        ----------
        layer_names : one name per plan layer, bottleneck -> output.
        to_image : optional map from label-grid voxel indices ``(P, ndim)`` to continuous voxel
            coordinates ``(P, ndim)`` in the (preprocessed) image grid, e.g. when the model's
            preprocessing resamples the image. Default: the identity (same grid).

        Returns
        -------
        dict ``layer_name -> float64 array (P_l, ndim)``.
        """
        if len(layer_names) != len(self.indices):
            raise UserError(
                f"case {self.case_id!r}: the sampling plan has {len(self.indices)} layer(s) but "
                f"{len(layer_names)} layer name(s) were given ({list(layer_names)}): make the "
                "plan with layers equal to the number of hooked layers"
            )
        out = {}
        for name, idx in zip(layer_names, self.indices):
            pts = idx.astype(np.float64)
            if to_image is not None:
                pts = np.asarray(to_image(pts), dtype=np.float64)
            out[name] = pts
        return out

    def points_inside(
        self,
        layer_names: Sequence[str],
        to_image: Callable[[np.ndarray], np.ndarray] | None,
        image_shape: Sequence[int],
        *,
        model: str = "",
        case_file: str = "",
        preprocessing: str = "",
    ) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
        """Like :meth:`points`, keeping only the points that lie in the preprocessed image.

        A planned voxel whose mapped position lies within the image's extent
        ``[-0.5, n - 0.5]`` on every axis (up to :data:`ccfv.extract.windows.POINT_TOL`, then
        clamped to it) is kept and read by interpolation with border handling; one outside
        (the preprocessing cropped it away) is dropped. Dropped voxels are not lost silently:
        :func:`dropped_voxels` counts them from the classes of the kept rows.

        Parameters
        ----------
        layer_names, to_image : as for :meth:`points`.
        image_shape : spatial shape of the preprocessed image.
        model, case_file, preprocessing : named in the error message.

        Returns
        -------
        points : dict ``layer_name -> float64 (P'_l, ndim)``, the kept points.
        keep : list (one per layer) of bool ``(P_l,)`` masks over the planned points.

        Raises
        ------
        UserError
            When the case has planned voxels but none lands in the image: the image and the
            planned voxels do not describe the same anatomy (wrong affine, wrong spacing or
            orientation for this data, a crop far too small), not a border effect.
        """
        from ccfv.extract.windows import clamp_to_image, inside_image

        shape = tuple(int(n) for n in image_shape)
        mapped = self.points(layer_names, to_image)
        points, keep = {}, []
        for name in layer_names:
            pts = mapped[name]
            if pts.shape[1] != len(shape):
                raise UserError(
                    f"model {model or '?'}: case {self.case_id!r} ({case_file or 'no file'}): "
                    f"the planned voxels are {pts.shape[1]}D but the preprocessed image has "
                    f"spatial shape {shape}; the preprocessing ({preprocessing or 'none'}) must "
                    "keep the number of spatial axes"
                )
            inside = inside_image(pts, shape)
            points[name] = clamp_to_image(pts[inside], shape)
            keep.append(inside)
        planned = sum(int(k.size) for k in keep)
        if planned and not any(k.any() for k in keep):
            name = layer_names[-1]
            example = np.round(mapped[name][0], 1).tolist()
            raise UserError(
                f"model {model or '?'}: case {self.case_id!r} ({case_file or 'no file'}): none of "
                f"its {planned} planned voxels lies inside the image after the preprocessing "
                f"({preprocessing or 'none'}), preprocessed shape {list(shape)}, e.g. label "
                f"voxel {self.indices[-1][0].tolist()} lands at {example}: check that the "
                "case's image and label share one affine, and that the preprocessing is written "
                "for this data (`ccfv bank check BANK --data DIR` shows where the voxels land); "
                "fix or remove the entry's preprocessing"
            )
        return points, keep


def dropped_voxels(plan: SamplingPlan, features: dict, layer_names: Sequence[str]) -> dict:
    """Planned voxels that a model's feature set lacks (dropped outside its preprocessed image).

    Parameters
    ----------
    plan : the sampling plan the features were extracted with.
    features : ``{layer: [(X, y) per case]}`` in the plan's case order, as
        :func:`ccfv.passes.extract_model` returns (other keys are ignored).
    layer_names : the plan's layers in ``features``, bottleneck -> output.

    Returns
    -------
    dict with ``planned`` and ``dropped`` (totals over layers, cases and classes), ``rate``
    (``dropped / planned``, 0.0 for an empty plan) and ``per_case``:
    ``{case_id: {class_id (str): dropped}}`` listing only the (case, class) pairs with drops.

    Raises
    ------
    ValueError
        When a feature set holds more voxels of some class than were planned (it was not
        extracted with this plan).
    """
    layers = list(layer_names)
    if len(layers) != plan.layers:
        raise ValueError(f"{len(layers)} layer names for a plan of {plan.layers} layers")
    planned_total = dropped_total = 0
    per_case: dict[str, dict[str, int]] = {}
    for c, case in enumerate(plan.cases):
        for l, name in enumerate(layers):
            planned = np.bincount(case.classes[l].astype(np.intp, copy=False))
            y = np.asarray(features[name][c][1], dtype=np.intp)
            got = np.bincount(y, minlength=planned.size) if y.size else np.zeros_like(planned)
            if got.size > planned.size or np.any(got[: planned.size] > planned):
                raise ValueError(
                    f"case {case.case_id!r}, layer {name!r}: the features hold more "
                    "voxels of a class than the plan has; not this plan's features"
                )
            lost = planned - got[: planned.size]
            planned_total += int(planned.sum())
            dropped_total += int(lost.sum())
            for k in np.flatnonzero(lost):
                entry = per_case.setdefault(case.case_id, {})
                entry[str(int(k))] = entry.get(str(int(k)), 0) + int(lost[k])
    return {
        "planned": planned_total,
        "dropped": dropped_total,
        "rate": dropped_total / planned_total if planned_total else 0.0,
        "per_case": per_case,
    }


@dataclass(frozen=True)
class SamplingPlan:
    """Planned voxels for every case of a target dataset; see the module docstring.

    Attributes
    ----------
    cases : list of CasePlan, in the order of the dataset.
    settings : dict
        ``layers, budget, counts, fraction, min_per_class, max_per_class, seed`` (JSON-able).
    """

    cases: list[CasePlan]
    settings: dict = field(default_factory=dict)

    @property
    def layers(self) -> int:
        """Number of layers ``D``."""
        return int(self.settings["layers"])

    @property
    def case_ids(self) -> list[str]:
        return [c.case_id for c in self.cases]

    def fingerprint(self) -> str:
        """sha256 (hex) of the plan format, its settings and every case's id, shape and labels.

        Two plans with the same fingerprint sample the same voxels; use it as the plan part of
        a feature-cache key.
        """
        payload = {
            "format": PLAN_FORMAT,
            "settings": self.settings,
            "cases": [[c.case_id, list(c.shape), c.label_sha256] for c in self.cases],
        }
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    # --- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict:
        """A JSON-able dict (lists of ints); inverse of :meth:`from_dict`."""
        return {
            "format": PLAN_FORMAT,
            "settings": self.settings,
            "cases": [
                {
                    "case_id": c.case_id,
                    "shape": list(c.shape),
                    "label_sha256": c.label_sha256,
                    "indices": [i.tolist() for i in c.indices],
                    "classes": [k.tolist() for k in c.classes],
                }
                for c in self.cases
            ],
        }

    @classmethod
    def from_dict(cls, d: dict) -> SamplingPlan:
        """Rebuild a plan written by :meth:`to_dict`."""
        if d.get("format") != PLAN_FORMAT:
            raise UserError(
                f"sampling plan format {d.get('format')!r} is not {PLAN_FORMAT!r}: "
                "re-create the plan with this version of ccfv"
            )
        cases = []
        for c in d["cases"]:
            ndim = len(c["shape"])
            cases.append(
                CasePlan(
                    case_id=c["case_id"],
                    shape=tuple(int(s) for s in c["shape"]),
                    indices=[np.asarray(i, dtype=np.int64).reshape(-1, ndim) for i in c["indices"]],
                    classes=[np.asarray(k, dtype=np.int64).reshape(-1) for k in c["classes"]],
                    label_sha256=c.get("label_sha256", ""),
                )
            )
        return cls(cases=cases, settings=dict(d["settings"]))

    def save(self, path: str | Path) -> None:
        """Write the plan to an ``.npz`` (arrays + a JSON header); see :meth:`load`."""
        header = {
            "format": PLAN_FORMAT,
            "settings": self.settings,
            "cases": [[c.case_id, list(c.shape), c.label_sha256] for c in self.cases],
        }
        # Any: mypy would match a **dict of arrays against savez_compressed's allow_pickle: bool
        arrays: dict[str, Any] = {"header": np.array(json.dumps(header))}
        for i, c in enumerate(self.cases):
            for l, (idx, cls_) in enumerate(zip(c.indices, c.classes)):
                arrays[f"case{i}_layer{l}_indices"] = idx
                arrays[f"case{i}_layer{l}_classes"] = cls_
        with open(path, "wb") as fh:
            np.savez_compressed(fh, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> SamplingPlan:
        """Read a plan written by :meth:`save`."""
        try:
            with np.load(path, allow_pickle=False) as z:
                header = json.loads(str(z["header"]))
                if header.get("format") != PLAN_FORMAT:
                    raise UserError(
                        f"sampling plan {str(path)!r} has format {header.get('format')!r}, not "
                        f"{PLAN_FORMAT!r}: re-create the plan with this version of ccfv"
                    )
                layers = int(header["settings"]["layers"])
                cases = []
                for i, (cid, shape, sha) in enumerate(header["cases"]):
                    cases.append(
                        CasePlan(
                            case_id=cid,
                            shape=tuple(shape),
                            label_sha256=sha,
                            indices=[
                                z[f"case{i}_layer{l}_indices"].astype(np.int64)
                                for l in range(layers)
                            ],
                            classes=[
                                z[f"case{i}_layer{l}_classes"].astype(np.int64)
                                for l in range(layers)
                            ],
                        )
                    )
        except (OSError, ValueError, KeyError) as exc:
            if isinstance(exc, UserError):
                raise
            raise UserError(
                f"cannot read sampling plan {str(path)!r} ({exc}): re-create it with make_plan"
            ) from exc
        return cls(cases=cases, settings=header["settings"])


def grid_mapping(label_affine: np.ndarray, image_affine: np.ndarray):
    """Map label-grid voxel indices (P, ndim) to continuous voxel coordinates of another grid.

    Both affines are 4x4 voxel -> world maps (2D grids act on (row, col, 0, 1)).
    """
    to_image = np.linalg.solve(image_affine, label_affine)
    if np.allclose(to_image, np.eye(4)):
        return None

    def apply(indices: np.ndarray) -> np.ndarray:
        ndim = indices.shape[1]
        homogeneous = np.zeros((indices.shape[0], 4))
        homogeneous[:, :ndim] = indices
        homogeneous[:, 3] = 1.0
        return (homogeneous @ to_image.T)[:, :ndim]

    return apply


# --- construction ------------------------------------------------------------------------


def _per_layer(values, layers: int, what: str) -> list:
    """Bottleneck->output list of ``layers`` values: the last ``layers``, or the last repeated."""
    if np.isscalar(values):
        return [values] * layers
    values = list(values)
    if not values:
        raise UserError(f"`{what}` is empty: give one value per layer, e.g. (100, 200, 400)")
    if layers <= len(values):
        return values[len(values) - layers :]
    return values + [values[-1]] * (layers - len(values))


def _as_label_map(label, case_id: str) -> np.ndarray:
    arr = np.asarray(label)
    if arr.ndim not in (2, 3):
        raise UserError(
            f"case {case_id!r}: label map has shape {arr.shape}; expected a 2D or 3D map of "
            "class ids (squeeze any channel axis first)"
        )
    if arr.size == 0:
        raise UserError(f"case {case_id!r}: label map is empty (shape {arr.shape})")
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    elif arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise UserError(
                f"case {case_id!r}: label map (dtype {arr.dtype}) holds non-integer values: "
                "labels must be class ids; resample label maps with nearest-neighbour"
            )
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iu":
        raise UserError(f"case {case_id!r}: label map has dtype {arr.dtype}; expected integers")
    if arr.dtype.kind == "i" and arr.min() < 0:
        raise UserError(
            f"case {case_id!r}: label map holds negative value {int(arr.min())}; "
            "class ids must be 0 (background) or positive"
        )
    return np.ascontiguousarray(arr)


def label_hash(label: np.ndarray) -> str:
    """sha256 (hex) of a label map's shape and values (dtype-independent: values as int64)."""
    arr = np.ascontiguousarray(label)
    h = hashlib.sha256(repr(tuple(arr.shape)).encode())
    flat = arr.reshape(-1)
    for start in range(0, flat.size, _CHUNK):
        h.update(flat[start : start + _CHUNK].astype("<i8").tobytes())
    return h.hexdigest()


def _class_counts(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-chunk class counts ``(n_chunks, K)`` and the class ids present in the map."""
    kmax = int(flat.max())
    if kmax > 1_000_000:
        raise UserError(
            f"label map holds class id {kmax}; class ids must be small integers "
            "0..C (relabel the classes)"
        )
    rows = [
        np.bincount(flat[s : s + _CHUNK].astype(np.intp, copy=False), minlength=kmax + 1)
        for s in range(0, flat.size, _CHUNK)
    ]
    per_chunk = np.stack(rows).astype(np.int64)
    return per_chunk, np.flatnonzero(per_chunk.sum(axis=0) > 0)


def _flat_positions(
    flat: np.ndarray, per_chunk_k: np.ndarray, k: int, ranks: np.ndarray
) -> np.ndarray:
    """``np.flatnonzero(flat == k)[ranks]`` for sorted ``ranks``, one chunk at a time."""
    ends = np.cumsum(per_chunk_k)
    chunk_of = np.searchsorted(ends, ranks, side="right")
    out = np.empty(ranks.size, dtype=np.int64)
    for c in np.unique(chunk_of):
        sel = chunk_of == c
        start = int(c) * _CHUNK
        local = np.flatnonzero(flat[start : start + _CHUNK] == k)
        offset = ends[c] - per_chunk_k[c]
        out[sel] = start + local[ranks[sel] - offset]
    return out


def _case_words(case_id: str) -> list[int]:
    digest = hashlib.sha256(case_id.encode("utf-8")).digest()
    return [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]


def make_plan(
    labels: Sequence[np.ndarray],
    case_ids: Sequence[str],
    layers: int,
    budget: str = "fixed",
    counts: int | Sequence[int] = DEFAULT_COUNTS,
    fraction: float | Sequence[float] = DEFAULT_FRACTION,
    min_per_class: int = 2,
    max_per_class: int = 2000,
    seed: int = 0,
) -> SamplingPlan:
    """Plan the voxels to sample from every case, per layer and class.

    Parameters
    ----------
    labels : list of np.ndarray
        One label map of class ids per case, 2D ``(H, W)`` or 3D ``(D, H, W)``, integer (or
        integral float / bool) values ``>= 0``; 0 is background.
    case_ids : list of str
        One unique id per case; it (not the case's position) seeds the case's draws.
    layers : int
        Number of hooked layers ``D`` (>= 1).
    budget : {"fixed", "proportional"}
        ``"fixed"``: ``counts[l]`` voxels per case, class and layer (released code);
        ``"proportional"``: ``round(fraction[l] * n_k)`` clipped to
        ``[min_per_class, max_per_class]`` (paper). Never more than the class holds.
    counts : int or sequence of int
        Fixed budget, bottleneck -> output; the last ``layers`` are used, or the last repeated.
    fraction : float or sequence of float
        Proportional budget in ``(0, 1]``, same ordering rule as ``counts``.
    min_per_class, max_per_class : int
        Clip of the proportional budget.
    seed : int
        Non-negative integer seed.

    Returns
    -------
    SamplingPlan

    Raises
    ------
    UserError
        Mismatched ``labels``/``case_ids``, duplicate ids, bad label maps, bad budget options.
    """
    labels = list(labels)
    case_ids = [str(c) for c in case_ids]
    if len(labels) != len(case_ids):
        raise UserError(
            f"{len(labels)} label maps but {len(case_ids)} case ids: give one id per label map"
        )
    dupes = sorted({c for c in case_ids if case_ids.count(c) > 1})
    if dupes:
        raise UserError(f"duplicate case ids {dupes}: every case needs a unique id")
    if not isinstance(layers, (int, np.integer)) or layers < 1:
        raise UserError(f"layers={layers!r}: give the number of hooked layers, an integer >= 1")
    layers = int(layers)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"seed={seed!r}: give a non-negative integer")
    if budget == "fixed":
        counts_per_layer = [int(c) for c in _per_layer(counts, layers, "counts")]
        if any(c < 1 for c in counts_per_layer):
            raise UserError(f"counts={counts!r}: every count must be an integer >= 1")
        settings: dict[str, Any] = {"budget": "fixed", "counts": counts_per_layer}
    elif budget == "proportional":
        fractions = [float(f) for f in _per_layer(fraction, layers, "fraction")]
        if any(not (0.0 < f <= 1.0) for f in fractions):
            raise UserError(f"fraction={fraction!r}: every fraction must lie in (0, 1]")
        if not (1 <= int(min_per_class) <= int(max_per_class)):
            raise UserError(
                f"min_per_class={min_per_class}, max_per_class={max_per_class}: "
                "need 1 <= min_per_class <= max_per_class"
            )
        settings = {
            "budget": "proportional",
            "fraction": fractions,
            "min_per_class": int(min_per_class),
            "max_per_class": int(max_per_class),
        }
    else:
        raise UserError(
            f"budget={budget!r}: choose 'fixed' (released code: counts per class) "
            "or 'proportional' (paper: a fraction of each class's voxels)"
        )
    settings = {"layers": layers, **settings, "seed": int(seed)}

    cases = []
    for case_id, label in zip(case_ids, labels):
        arr = _as_label_map(label, case_id)
        flat = arr.reshape(-1)
        per_chunk, present = _class_counts(flat)
        words = _case_words(case_id)
        idx_layers, cls_layers = [], []
        for l in range(layers):
            flat_pos, cls = [], []
            for k in present:
                n_k = int(per_chunk[:, k].sum())
                if budget == "fixed":
                    m = counts_per_layer[l]
                else:
                    m = int(
                        np.clip(
                            round(fractions[l] * n_k),
                            settings["min_per_class"],
                            settings["max_per_class"],
                        )
                    )
                m = min(m, n_k)
                rng = np.random.default_rng([int(seed), *words, layers - 1 - l, int(k)])
                ranks = np.sort(rng.choice(n_k, size=m, replace=False))
                flat_pos.append(_flat_positions(flat, per_chunk[:, k], int(k), ranks))
                cls.append(np.full(m, k, dtype=np.int64))
            positions = np.concatenate(flat_pos) if flat_pos else np.empty(0, np.int64)
            idx_layers.append(
                np.stack(np.unravel_index(positions, arr.shape), axis=1)
                .astype(np.int64)
                .reshape(-1, arr.ndim)
            )
            cls_layers.append(np.concatenate(cls) if cls else np.empty(0, np.int64))
        cases.append(
            CasePlan(
                case_id=case_id,
                shape=tuple(int(s) for s in arr.shape),
                indices=idx_layers,
                classes=cls_layers,
                label_sha256=label_hash(arr),
            )
        )
    return SamplingPlan(cases=cases, settings=settings)
