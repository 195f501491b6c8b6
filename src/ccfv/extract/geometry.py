"""What each model's preprocessing does to the grid of a target case (``ccfv bank check --data``).

For one case of the target data and every bank entry, :func:`check_geometry` runs the entry's
preprocessing (its own keys, a bundle's transforms or nnU-Net's preprocessing; no model is
loaded) and reports the input and preprocessed shapes and voxel sizes, the share of the planned
voxels (the sampling plan ``rank`` uses, with the default budget) that land inside the
preprocessed image, and warnings:

- an axis whose voxel size the preprocessing changes more than :data:`SPACING_RATIO` times;
  when the same target voxel sizes in another axis order would fit (``spacing: [1.5, 1.5,
  8.0]`` after ``orientation: RAS`` on a stack whose 8 mm slice axis became the first axis:
  1.5 mm across 8 mm slices, 8 mm in-plane), the warning says it is almost always a spacing
  written for another orientation;
- planned voxels outside the preprocessed image: ``rank`` drops them for that model and counts
  them in ``scores.json`` (``details.dropped``).

Axes are matched through the affines: a preprocessed axis is compared with the input axis whose
world direction is closest to it, so a reorientation does not count as a change of spacing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ccfv.errors import UserError

__all__ = [
    "SPACING_RATIO",
    "GeometryRow",
    "check_bank_geometry",
    "check_geometry",
    "format_geometry_table",
    "spacing_warnings",
]

#: A preprocessing that changes an axis's voxel size by more than this factor gets a warning.
SPACING_RATIO = 3.0


@dataclass
class GeometryRow:
    """What one entry's preprocessing does to one case; see the module docstring."""

    name: str
    case_id: str = ""
    input_shape: tuple[int, ...] = ()
    input_spacing: tuple[float, ...] = ()
    output_shape: tuple[int, ...] = ()
    output_spacing: tuple[float, ...] = ()
    planned: int = 0
    inside: int = 0
    warnings: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def share_inside(self) -> float | None:
        return self.inside / self.planned if self.planned else None


def _spacing(affine: np.ndarray, ndim: int) -> np.ndarray:
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:ndim, :ndim], axis=0)


def spacing_warnings(
    in_affine: np.ndarray, out_affine: np.ndarray, ndim: int, ratio: float = SPACING_RATIO
) -> list[str]:
    """Warnings for preprocessed axes whose voxel size differs more than ``ratio`` times from
    that of the input axis pointing the same way (matched by direction cosines). When the
    target voxel sizes, given in another axis order, would change no axis more than ``ratio``
    times, the warning says the spacing was likely written for another orientation."""
    from itertools import permutations

    a_in = np.asarray(in_affine, dtype=np.float64)[:ndim, :ndim]
    a_out = np.asarray(out_affine, dtype=np.float64)[:ndim, :ndim]
    s_in, s_out = _spacing(a_in, ndim), _spacing(a_out, ndim)
    d_in, d_out = a_in / s_in, a_out / s_out
    match = [int(np.argmax(np.abs(d_out[:, a] @ d_in))) for a in range(ndim)]
    matched = s_in[match]

    def worst(order):
        change = s_out[list(order)] / matched
        return float(np.max(np.maximum(change, 1.0 / change)))

    reordered = min(permutations(range(ndim)), key=worst)
    other_order = worst(reordered) <= ratio
    out = []
    for a in range(ndim):
        change = s_out[a] / matched[a]
        if change > ratio or change < 1.0 / ratio:
            hint = (
                "almost always a spacing written for another orientation: give `spacing` "
                "in the order of the axes after `orientation` (here "
                f"{[round(float(s_out[i]), 3) for i in reordered]})"
                if other_order
                else "check that this resampling is intended (it changes the voxel count and "
                "what a window of `roi` covers)"
            )
            out.append(
                f"axis {a} of the preprocessed image has {s_out[a]:.3g} mm voxels along input "
                f"axis {match[a]} of {matched[a]:.3g} mm ({max(change, 1 / change):.1f}x "
                f"{'finer' if change < 1 else 'coarser'}): {hint}"
            )
    return out


def check_geometry(
    entries: Sequence, data: str | Path, case: str | None = None, seed: int = 0
) -> list[GeometryRow]:
    """One :class:`GeometryRow` per entry for one case of ``data``.

    Parameters
    ----------
    entries : parsed bank entries (:func:`ccfv.bank.load_bank`).
    data : target dataset folder (any layout ``rank`` reads).
    case : case id to use; default: the first case of the dataset.
    seed : seed of the sampling plan (as ``rank --seed``).

    Raises
    ------
    UserError
        ``data`` cannot be read, or has no case ``case``.
    """
    from ccfv.bank.preprocess import entry_preprocess
    from ccfv.data import find_cases, load_case
    from ccfv.extract.plan import grid_mapping, make_plan

    dataset = find_cases(data)
    chosen = dataset.cases[0] if dataset.cases else None
    if case is not None:
        chosen = next((c for c in dataset.cases if c.case_id == case), None)
        if chosen is None:
            raise UserError(
                f"{data}: no case {case!r} (cases: "
                f"{', '.join(c.case_id for c in dataset.cases[:5])}, ...); give one "
                "of them to --case"
            )
    if chosen is None:
        raise UserError(f"{data}: no labelled cases found")
    loaded = load_case(chosen, dataset.labels)
    ndim = loaded.label.ndim
    plan = make_plan([loaded.label], [loaded.case_id], layers=3, seed=seed).cases[0]
    rows = []
    for entry in entries:
        row = GeometryRow(
            name=entry.name,
            case_id=loaded.case_id,
            input_shape=tuple(loaded.label.shape),
            input_spacing=tuple(float(s) for s in _spacing(loaded.affine, ndim)),
        )
        rows.append(row)
        try:
            image, affine = entry_preprocess(entry, ndim)(loaded.image, loaded.affine)
            row.output_shape = tuple(int(n) for n in image.shape[1:])
            row.output_spacing = tuple(float(s) for s in _spacing(affine, ndim))
            _, keep = plan.points_inside(
                ["l0", "l1", "l2"],
                grid_mapping(loaded.affine, affine),
                row.output_shape,
                model=entry.name,
                case_file=str(chosen.images[0]),
            )
        except UserError as error:
            row.error = str(error)
            continue
        except Exception as exc:  # the check reports, it never stops at one entry
            row.error = f"preprocessing failed ({type(exc).__name__}: {exc})"
            continue
        row.planned = int(sum(k.size for k in keep))
        row.inside = int(sum(k.sum() for k in keep))
        row.warnings = spacing_warnings(loaded.affine, affine, ndim)
        if row.inside < row.planned:
            row.warnings.append(
                f"{row.planned - row.inside} of {row.planned} planned voxels lie outside the "
                "preprocessed image (cropped): `rank` drops them for this model and counts "
                "them in scores.json"
            )
    return rows


def check_bank_geometry(
    bank: str | Path, data: str | Path, case: str | None = None, seed: int = 0
) -> list[GeometryRow]:
    """:func:`check_geometry` for the entries of a bank file that parse (the others are the
    failed rows of ``ccfv bank check``'s first table)."""
    from collections.abc import Mapping

    from ccfv.bank.schema import parse_bank, read_bank_file

    path, raw = read_bank_file(bank)
    models = raw.get("models") if isinstance(raw, Mapping) else None
    entries = []
    for item in models if isinstance(models, list) else []:
        try:
            entries += parse_bank({"models": [item]}, path.resolve().parent, source=str(path))
        except UserError:
            continue
    return check_geometry(entries, data, case=case, seed=seed)


def format_geometry_table(rows: Sequence[GeometryRow]) -> str:
    """A Markdown table of the rows, then one line per warning or error."""

    def grid(shape, spacing):
        if not shape:
            return "-"
        return "x".join(map(str, shape)) + " @ " + "x".join(f"{s:.3g}" for s in spacing) + " mm"

    header = [
        "name",
        "case",
        "input shape @ spacing",
        "preprocessed shape @ spacing",
        "planned voxels inside",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes = []
    for row in rows:
        share = row.share_inside
        inside = "-" if share is None else f"{row.inside}/{row.planned} ({100 * share:.1f}%)"
        cells = [
            row.name,
            row.case_id,
            grid(row.input_shape, row.input_spacing),
            grid(row.output_shape, row.output_spacing),
            inside,
        ]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
        if row.error:
            notes.append(f"error: {row.name}: {row.error}")
        notes += [f"warning: {row.name}: {w}" for w in row.warnings]
    return "\n".join(lines + ([""] + notes if notes else []))
