"""The files of ``ccfv evaluate``: read scores.csv and the truth, write evaluation.csv.

Readers raise :class:`~ccfv.errors.UserError` naming the file, the line and the fix; the writer is
atomic (:func:`ccfv.files.atomic_write`). :func:`format_table` is the plain-text table the command
prints.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ccfv.errors import UserError
from ccfv.evaluation.metrics import COLUMNS
from ccfv.files import atomic_write


def _read_rows(path: str | Path, what: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"{what} file {path} does not exist"
            if not path.exists()
            else f"{what} file {path} is not a file"
        )
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header, rows = None, []
            for cells in reader:
                if not any(c.strip() for c in cells):
                    continue
                cells = [c.strip() for c in cells]
                if header is None:
                    header = cells
                else:
                    rows.append((reader.line_num, cells))
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not a UTF-8 text CSV file ({error})") from None
    except csv.Error as error:
        raise UserError(f"{path}: not a readable CSV file ({error})") from None
    if header is None:
        raise UserError(f"{path} is empty: expected a header line and one line per model")
    return header, rows


def _number(text: str, path, line: int, column: str, model: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UserError(
            f"{path}, line {line}: {column} of model {model!r} is {text!r}, not a number"
        ) from None


def _new_model(model: str, seen: dict[str, int], path, line: int) -> None:
    """Record ``model`` as read on ``line``; an empty or repeated model name is an error."""
    if not model:
        raise UserError(f"{path}, line {line}: empty model name")
    if model in seen:
        raise UserError(
            f"{path}, line {line}: model {model!r} appears twice (also on line "
            f"{seen[model]}); keep one line per model"
        )
    seen[model] = line


def read_scores_csv(path: str | Path) -> dict[str, dict[str, float | None]]:
    """Read a ``scores.csv`` as ``ccfv rank`` writes it: a ``model`` column, then one column
    per method. Returns model -> method -> score, in file order; an empty cell (the model
    failed) or a non-finite value is ``None``.

    Raises :class:`~ccfv.errors.UserError` naming the file, the line and the value for: a
    missing file, a first column that is not ``model``, no method column, a duplicate column
    or model, a line with the wrong number of cells, text that is not a number.
    """
    header, rows = _read_rows(path, "scores")
    if header[0].lower() != "model":
        raise UserError(
            f"{path}, line 1: the first column is {header[0]!r}, expected 'model' "
            "followed by one column per method (as `ccfv rank` writes scores.csv)"
        )
    methods = header[1:]
    if not methods:
        raise UserError(f"{path}, line 1: no method column after 'model'")
    for i, method in enumerate(methods):
        if not method:
            raise UserError(f"{path}, line 1: column {i + 2} has no name")
        if method in methods[:i]:
            raise UserError(f"{path}, line 1: column {method!r} appears twice")
    scores: dict[str, dict[str, float | None]] = {}
    seen: dict[str, int] = {}
    for line, cells in rows:
        if len(cells) != len(header):
            raise UserError(
                f"{path}, line {line}: {len(cells)} cells, the header has "
                f"{len(header)} ({', '.join(header)})"
            )
        model = cells[0]
        _new_model(model, seen, path, line)
        values = {}
        for method, text in zip(methods, cells[1:]):
            value = None if text == "" else _number(text, path, line, method, model)
            values[method] = value if value is not None and math.isfinite(value) else None
        scores[model] = values
    if not scores:
        raise UserError(f"{path} has a header but no model line")
    return scores


def read_truth_csv(path: str | Path) -> dict[str, float]:
    """Read the fine-tuned ground truth: columns ``model`` and ``dice`` (any order; other
    columns such as ``dice_std`` are allowed and ignored). Returns model -> Dice, in file order.

    Raises :class:`~ccfv.errors.UserError` naming the file, the line and the value for: a
    missing file, a missing ``model`` or ``dice`` column, an empty or non-numeric or
    non-finite Dice, a duplicate model, a line with too few cells.
    """
    header, rows = _read_rows(path, "truth")
    lower = [h.lower() for h in header]
    missing = [c for c in ("model", "dice") if c not in lower]
    if missing:
        raise UserError(
            f"{path}, line 1: no {' and no '.join(map(repr, missing))} column "
            f"(header: {', '.join(header) or '(empty)'}); the fine-tuned truth "
            "needs the columns model,dice"
        )
    i_model, i_dice = lower.index("model"), lower.index("dice")
    truth: dict[str, float] = {}
    seen: dict[str, int] = {}
    for line, cells in rows:
        if len(cells) <= max(i_model, i_dice):
            raise UserError(
                f"{path}, line {line}: {len(cells)} cells, expected the columns {', '.join(header)}"
            )
        model, text = cells[i_model], cells[i_dice]
        _new_model(model, seen, path, line)
        if text == "":
            raise UserError(
                f"{path}, line {line}: model {model!r} has no dice value; give its "
                "fine-tuned Dice or remove the line"
            )
        dice = _number(text, path, line, "dice", model)
        if not math.isfinite(dice):
            raise UserError(
                f"{path}, line {line}: dice of model {model!r} is {text!r}, not a finite number"
            )
        truth[model] = dice
    if not truth:
        raise UserError(f"{path} has a header but no model line")
    return truth


def _fmt_csv(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return repr(float(value))


def write_evaluation_csv(rows: Sequence[Mapping], path: str | Path) -> Path:
    """Write ``evaluation.csv``: the columns :data:`COLUMNS` then ``n_models``, one line per
    method, undefined values as empty cells. Atomic (:func:`ccfv.files.atomic_write`)."""
    path = Path(path)
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow([*COLUMNS, "n_models"])
    for row in rows:
        writer.writerow(
            [row["method"], *(_fmt_csv(row[c]) for c in COLUMNS[1:]), _fmt_csv(row["n_models"])]
        )
    return atomic_write(path, text.getvalue())


def format_table(rows: Sequence[Mapping]) -> str:
    """A plain-text table of the rows (one line per method; ``-`` where undefined)."""
    heads = ("weighted_tau", "kendall_tau", "spearman", "pearson", "top1_rel", "regret", "n")
    keys = (*COLUMNS[1:], "n_models")
    width = max(6, *(len(str(r["method"])) for r in rows)) if rows else 6

    def cell(value):
        if value is None:
            return "-"
        return str(value) if isinstance(value, (int, np.integer)) else f"{value:.3f}"

    lines = [f"{'method':<{width}}" + "".join(f"{h:>14}" for h in heads)]
    lines.append("-" * len(lines[0]))
    for row in rows:
        lines.append(f"{row['method']:<{width}}" + "".join(f"{cell(row[k]):>14}" for k in keys))
    return "\n".join(lines)
