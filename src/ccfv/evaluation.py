"""Does a transferability score predict fine-tuning? Rank statistics against fine-tuned Dice.

Given, for a bank of models, one score per method (``scores.csv`` from ``ccfv rank``) and the
Dice each model reached after fine-tuning on the target (the ground truth, ``model,dice``), this
module measures how well each method's score predicts the fine-tuned Dice:

- ``weighted_tau``: weighted Kendall's tau, the main measure of LogME's protocol (You et al.,
  ICML 2021) and of the CC-FV paper (Yang et al., MICCAI 2023): :func:`scipy.stats.weightedtau`
  with its default parameters (additive hyperbolic weigher, averaged over both rankings);
- ``kendall_tau``, ``spearman``, ``pearson``: the unweighted rank correlations and Pearson's r
  (the CC-FV paper reports Pearson next to the weighted tau);
- ``top1_relative`` and ``regret``: what choosing the model ranked first by the score costs,
  relative to and in the units of the fine-tuned Dice.

Convention: for every method a larger score means a better model to fine-tune, and a larger
Dice is better. Every function here is pure (numbers in, numbers out) except the readers,
:func:`write_evaluation_csv` and :func:`plot_scores_vs_truth`, which touch files. Undefined
values (a correlation with a constant input, say) are ``None``, never a silent NaN.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ccfv.errors import CCFVWarning, UserError
from ccfv.files import atomic_write

#: The columns of ``evaluation.csv``, in order (``n_models`` follows them).
COLUMNS = ("method", "weighted_tau", "kendall_tau", "spearman", "pearson", "top1_relative",
           "regret")
#: Correlation columns: undefined (None) when the score or the truth is constant.
CORRELATIONS = ("weighted_tau", "kendall_tau", "spearman", "pearson")
#: Fewest models a method must have (finite score and a fine-tuned Dice) to be evaluated.
MIN_MODELS = 3


# --------------------------------------------------------------------------------------------
# statistics on two paired vectors
# --------------------------------------------------------------------------------------------

def _pair(scores: Sequence[float], truth: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(scores, dtype=float).ravel()
    y = np.asarray(truth, dtype=float).ravel()
    if x.shape != y.shape:
        raise UserError(f"scores and truth have different lengths ({x.size} and {y.size}): "
                        "give one score and one fine-tuned Dice per model, in the same order")
    if x.size < 2:
        raise UserError(f"{x.size} model(s): a correlation needs at least 2 models")
    bad = ~(np.isfinite(x) & np.isfinite(y))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise UserError(f"entry {i} is not a finite number (score {x[i]!r}, truth {y[i]!r}): "
                        "leave models without a finite score or Dice out")
    return x, y


def _constant(v: np.ndarray) -> bool:
    return bool(np.all(v == v[0]))


def _statistic(result) -> float | None:
    value = float(result.statistic if hasattr(result, "statistic") else result[0])
    return value if math.isfinite(value) else None


def weighted_tau(scores: Sequence[float], truth: Sequence[float]) -> float | None:
    r"""Weighted Kendall's tau between a score and the fine-tuned Dice (Vigna's :math:`\tau_h`).

    This is :func:`scipy.stats.weightedtau` called with its defaults, ``rank=True,
    weigher=None, additive=True``, exactly as the evaluation scripts of LogME's protocol call
    it (``weightedtau(score, finetune_acc)``). Its definition (Vigna, "A weighted correlation
    index for rankings with ties", WWW 2015): for an importance rank :math:`\rho` (0 = most
    important element) every pair :math:`i<j` gets the *additive hyperbolic* weight

    .. math:: w_{ij} = \frac{1}{\rho(i)+1} + \frac{1}{\rho(j)+1},

    and

    .. math:: \tau_\rho(x, y) = \frac{\sum_{i<j} w_{ij}\,\mathrm{sgn}(x_i-x_j)\,
              \mathrm{sgn}(y_i-y_j)}{\sqrt{\sum_{i<j,\,x_i\ne x_j} w_{ij}}\;
              \sqrt{\sum_{i<j,\,y_i\ne y_j} w_{ij}}}.

    ``rank=True`` does not fix one importance rank: it returns the mean of :math:`\tau_\rho`
    for :math:`\rho` = the decreasing order of ``scores`` (ties broken by ``truth``) and
    :math:`\rho` = the decreasing order of ``truth`` (ties broken by ``scores``), so the value
    is symmetric in its two arguments and disagreements among the *best* models (largest
    score or largest Dice) weigh most. (``rank=None`` would use the first ranking only;
    ``rank=False`` the input order.) Without ties and without weights it is Kendall's tau.

    Returns a value in [-1, 1] (1: the score orders the models exactly as the Dice does), or
    ``None`` when it is undefined (all scores, or all Dice values, are equal).
    """
    from scipy.stats import weightedtau

    x, y = _pair(scores, truth)
    if _constant(x) or _constant(y):
        return None
    return _statistic(weightedtau(x, y))


def kendall_tau(scores: Sequence[float], truth: Sequence[float]) -> float | None:
    r"""Kendall's :math:`\tau_b` (:func:`scipy.stats.kendalltau`; Kendall, Biometrika 1938).

    :math:`\tau_b = (P - Q) / \sqrt{(P + Q + T_x)(P + Q + T_y)}` with P concordant and Q
    discordant pairs, :math:`T_x` (:math:`T_y`) pairs tied only in the score (only in the
    Dice). ``None`` when undefined (a constant input).
    """
    from scipy.stats import kendalltau

    x, y = _pair(scores, truth)
    if _constant(x) or _constant(y):
        return None
    return _statistic(kendalltau(x, y))


def spearman(scores: Sequence[float], truth: Sequence[float]) -> float | None:
    r"""Spearman's :math:`\rho` (:func:`scipy.stats.spearmanr`): Pearson's r of the ranks
    (ties get their average rank). ``None`` when undefined (a constant input)."""
    from scipy.stats import spearmanr

    x, y = _pair(scores, truth)
    if _constant(x) or _constant(y):
        return None
    return _statistic(spearmanr(x, y))


def pearson(scores: Sequence[float], truth: Sequence[float]) -> float | None:
    r"""Pearson's r (:func:`scipy.stats.pearsonr`):
    :math:`\sum (x_i-\bar x)(y_i-\bar y) / \sqrt{\sum (x_i-\bar x)^2 \sum (y_i-\bar y)^2}`.

    Linear, so it depends on the scale of the score (the CC-FV paper reports it next to the
    weighted tau). ``None`` when undefined (a constant input).
    """
    from scipy.stats import pearsonr

    x, y = _pair(scores, truth)
    if _constant(x) or _constant(y):
        return None
    return _statistic(pearsonr(x, y))


def _first_pick(x: np.ndarray, y: np.ndarray) -> int:
    """Index of the model the score picks: the largest score; among models tied for the
    largest score, the one with the lowest Dice (pessimistic)."""
    tied = np.flatnonzero(x == x.max())
    return int(tied[np.argmin(y[tied])])


def top1_relative(scores: Sequence[float], truth: Sequence[float]) -> float | None:
    r"""Dice of the model ranked first by the score, relative to the best Dice:
    :math:`P_{\arg\max_i T_i} / \max_i P_i` (1 = the score picks the best model; "Rel@1" in
    SFDA, Shao et al., ECCV 2022).

    Ties for first place are resolved pessimistically: among the models sharing the largest
    score, the one with the lowest Dice counts as picked (a score that cannot separate them
    does not get the benefit of the doubt; a constant score picks the worst model).
    ``None`` when the best Dice is not positive (the ratio means nothing).
    """
    x, y = _pair(scores, truth)
    best = float(y.max())
    if best <= 0:
        return None
    return float(y[_first_pick(x, y)]) / best


def regret(scores: Sequence[float], truth: Sequence[float]) -> float:
    r"""Dice lost by fine-tuning the model ranked first by the score instead of the best one:
    :math:`\max_i P_i - P_{\arg\max_i T_i}` (0 = no loss), in the units of the truth file.

    Ties for first place: the pessimistic rule of :func:`top1_relative`.
    """
    x, y = _pair(scores, truth)
    return float(y.max() - y[_first_pick(x, y)])


# --------------------------------------------------------------------------------------------
# one row per method
# --------------------------------------------------------------------------------------------

class Evaluation(list):
    """The rows of :func:`evaluate` (a list of dicts, one per method) plus ``warnings``:
    messages about models that could not be paired between the two files."""

    def __init__(self, rows=(), warnings: list[str] | None = None):
        super().__init__(rows)
        self.warnings = list(warnings or [])


def _methods_of(scores: Mapping[str, Mapping[str, float | None]]) -> list[str]:
    methods: list[str] = []
    for per_method in scores.values():
        for method in per_method:
            if method not in methods:
                methods.append(method)
    return methods


def _finite(value) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _names(models) -> str:
    models = list(models)
    shown = ", ".join(models[:10])
    return shown + (f" and {len(models) - 10} more" if len(models) > 10 else "")


def evaluate(scores: Mapping[str, Mapping[str, float | None]], truth: Mapping[str, float], *,
             methods: Sequence[str] | None = None, scores_name: str = "the scores",
             truth_name: str = "the truth") -> Evaluation:
    """Evaluate every method's score against the fine-tuned Dice.

    ``scores``: model -> method -> score (``None`` or a non-finite value where the model
    failed), as :func:`read_scores_csv` returns it and ``ccfv rank`` produces it.
    ``truth``: model -> fine-tuned Dice, as :func:`read_truth_csv` returns it.
    ``methods``: which methods, in which order (default: all, in order of appearance).
    ``scores_name``/``truth_name``: how messages name the two inputs (e.g. their file paths).

    For each method, only models with a finite score *and* a Dice are used; the best Dice of
    ``top1_relative``/``regret`` is the best among those models. Returns an :class:`Evaluation`:
    one dict per method with the keys ``method, weighted_tau, kendall_tau, spearman, pearson,
    top1_relative, regret, n_models`` (values ``None`` where undefined), ``models`` (the models
    used) and ``notes`` (why a model was left out, why a value is undefined); its ``warnings``
    name the models present in only one of the two inputs.

    Raises :class:`~ccfv.errors.UserError` when a method has fewer than 3 usable models or a
    requested method is not in the scores.
    """
    all_methods = _methods_of(scores)
    if methods is None:
        methods = all_methods
    else:
        unknown = [m for m in methods if m not in all_methods]
        if unknown:
            raise UserError(f"{scores_name} has no column {', '.join(map(repr, unknown))}: "
                            f"its methods are {', '.join(all_methods) or '(none)'}")
    if not methods:
        raise UserError(f"{scores_name} holds no method column: it needs a `model` column "
                        "followed by one column per method (as `ccfv rank` writes scores.csv)")

    only_scores = [m for m in scores if m not in truth]
    only_truth = [m for m in truth if m not in scores]
    messages = []
    if only_scores:
        messages.append(f"{len(only_scores)} model(s) of {scores_name} have no fine-tuned Dice "
                        f"in {truth_name} and are left out: {_names(only_scores)}")
    if only_truth:
        messages.append(f"{len(only_truth)} model(s) of {truth_name} are not in {scores_name} "
                        f"and are left out: {_names(only_truth)}")
    for message in messages:
        warnings.warn(message, CCFVWarning, stacklevel=2)

    rows = Evaluation(warnings=messages)
    common = [m for m in scores if m in truth]
    for method in methods:
        notes = []
        models, x, y = [], [], []
        failed = []
        for model in common:
            value = _finite(scores[model].get(method))
            if value is None:
                failed.append(model)
            else:
                models.append(model)
                x.append(value)
                y.append(float(truth[model]))
        if failed:
            notes.append(f"left out (no finite score): {_names(failed)}")
        if len(models) < MIN_MODELS:
            detail = []
            if failed:
                detail.append(f"{len(failed)} model(s) have no finite score ({_names(failed)})")
            if only_scores:
                detail.append(f"{_names(only_scores)} not in {truth_name}")
            if only_truth:
                detail.append(f"{_names(only_truth)} of {truth_name} not in {scores_name}")
            raise UserError(
                f"method {method!r}: only {len(models)} model(s) have both a finite score in "
                f"{scores_name} and a fine-tuned Dice in {truth_name}"
                + (f" ({'; '.join(detail)})" if detail else "")
                + f"; at least {MIN_MODELS} are needed. Fix: check that the model names match "
                  "in the two files, rescore or fine-tune the missing models, or leave this "
                  "method out (--methods)")
        xa, ya = np.array(x), np.array(y)
        row = {"method": method,
               "weighted_tau": weighted_tau(xa, ya), "kendall_tau": kendall_tau(xa, ya),
               "spearman": spearman(xa, ya), "pearson": pearson(xa, ya),
               "top1_relative": top1_relative(xa, ya), "regret": regret(xa, ya),
               "n_models": len(models), "models": models, "notes": notes}
        if _constant(xa):
            notes.append(f"the score is the same for all {len(models)} models: correlations "
                         "are undefined (left empty) and the pick counts as the worst model")
        elif _constant(ya):
            notes.append(f"the fine-tuned Dice is the same for all {len(models)} models: "
                         "correlations are undefined (left empty)")
        else:
            undefined = [c for c in CORRELATIONS if row[c] is None]
            if undefined:
                notes.append(f"undefined (left empty): {', '.join(undefined)}")
            tied = int(np.sum(xa == xa.max()))
            if tied > 1:
                notes.append(f"{tied} models share the top score: the pick counts as the one "
                             "with the lowest Dice")
        if row["top1_relative"] is None:
            notes.append("top1_relative is undefined: the best fine-tuned Dice is not positive")
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------

def _read_rows(path: str | Path, what: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} file {path} does not exist" if not path.exists()
                        else f"{what} file {path} is not a file")
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
        raise UserError(f"{path}, line {line}: {column} of model {model!r} is {text!r}, not a "
                        "number") from None


def _new_model(model: str, seen: dict[str, int], path, line: int) -> None:
    """Record ``model`` as read on ``line``; an empty or repeated model name is an error."""
    if not model:
        raise UserError(f"{path}, line {line}: empty model name")
    if model in seen:
        raise UserError(f"{path}, line {line}: model {model!r} appears twice (also on line "
                        f"{seen[model]}); keep one line per model")
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
        raise UserError(f"{path}, line 1: the first column is {header[0]!r}, expected 'model' "
                        "followed by one column per method (as `ccfv rank` writes scores.csv)")
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
            raise UserError(f"{path}, line {line}: {len(cells)} cells, the header has "
                            f"{len(header)} ({', '.join(header)})")
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
        raise UserError(f"{path}, line 1: no {' and no '.join(map(repr, missing))} column "
                        f"(header: {', '.join(header) or '(empty)'}); the fine-tuned truth "
                        "needs the columns model,dice")
    i_model, i_dice = lower.index("model"), lower.index("dice")
    truth: dict[str, float] = {}
    seen: dict[str, int] = {}
    for line, cells in rows:
        if len(cells) <= max(i_model, i_dice):
            raise UserError(f"{path}, line {line}: {len(cells)} cells, expected the columns "
                            f"{', '.join(header)}")
        model, text = cells[i_model], cells[i_dice]
        _new_model(model, seen, path, line)
        if text == "":
            raise UserError(f"{path}, line {line}: model {model!r} has no dice value; give its "
                            "fine-tuned Dice or remove the line")
        dice = _number(text, path, line, "dice", model)
        if not math.isfinite(dice):
            raise UserError(f"{path}, line {line}: dice of model {model!r} is {text!r}, not a "
                            "finite number")
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
        writer.writerow([row["method"], *(_fmt_csv(row[c]) for c in COLUMNS[1:]),
                         _fmt_csv(row["n_models"])])
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


def plot_scores_vs_truth(scores: Mapping[str, Mapping[str, float | None]],
                         truth: Mapping[str, float], path: str | Path, *,
                         rows: Sequence[Mapping] | None = None,
                         methods: Sequence[str] | None = None) -> Path:
    """Draw the CC-FV paper's Fig. 2 for each method and write it as a PNG (atomically).

    One panel per method: the standardised score (z-score over the models used,
    :math:`(T_i - \\bar T)/\\mathrm{sd}(T)`, 0 for all when the score is constant) on the x axis
    against the fine-tuned Dice on the y axis, one labelled marker per model, and the method's
    weighted tau and Pearson r in the panel title. ``rows`` are :func:`evaluate`'s rows for
    the same inputs (computed when not given).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if rows is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CCFVWarning)
            rows = evaluate(scores, truth, methods=methods)
    n = len(rows)
    ncols = min(3, max(1, n))
    nrows = math.ceil(n / ncols) if n else 1
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.9 * nrows), squeeze=False)

    def stat(value):
        return "n/a" if value is None else f"{value:.3f}"

    for ax, row in zip(axes.flat, rows):
        models = row["models"]
        x = np.array([float(scores[m][row["method"]]) for m in models])
        y = np.array([float(truth[m]) for m in models])
        sd = x.std()
        z = (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)
        pick = models[_first_pick(x, y)]
        best = models[int(np.argmax(y))]
        colours = ["tab:red" if m == pick else "tab:blue" for m in models]
        ax.scatter(z, y, c=colours, s=36, zorder=3)
        for zi, yi, m in zip(z, y, models):
            ax.annotate(m, (zi, yi), xytext=(4, 3), textcoords="offset points", fontsize=7,
                        annotation_clip=False)
        if sd > 0:
            slope, intercept = np.polyfit(z, y, 1)
            grid = np.linspace(z.min(), z.max(), 2)
            ax.plot(grid, slope * grid + intercept, color="grey", lw=1, ls="--", zorder=2)
        ax.set_title(f"{row['method']}\nweighted tau = {stat(row['weighted_tau'])}, "
                     f"Pearson r = {stat(row['pearson'])}", fontsize=9)
        ax.set_xlabel("standardised score (z over the models)\n"
                      f"picked: {pick}" + ("" if pick == best else f" (best: {best})"),
                      fontsize=8)
        ax.set_ylabel("fine-tuned Dice", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.margins(x=0.25, y=0.1)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("Score vs fine-tuned Dice (red: the model each score ranks first)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    try:
        atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=110))
    finally:
        plt.close(fig)
    return path
