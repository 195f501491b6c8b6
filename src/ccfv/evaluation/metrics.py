"""Rank statistics of transferability scores against fine-tuned Dice (no I/O).

Given, for a bank of models, one score per method and the Dice each model reached after
fine-tuning on the target, these functions measure how well each method's score predicts the
fine-tuned Dice:

- ``weighted_tau``: weighted Kendall's tau, the main measure of LogME's protocol (You et al.,
  ICML 2021) and of the CC-FV paper (Yang et al., MICCAI 2023): :func:`scipy.stats.weightedtau`
  with its default parameters (additive hyperbolic weigher, averaged over both rankings);
- ``kendall_tau``, ``spearman``, ``pearson``: the unweighted rank correlations and Pearson's r
  (the CC-FV paper reports Pearson next to the weighted tau);
- ``top1_relative`` and ``regret``: what choosing the model ranked first by the score costs,
  relative to and in the units of the fine-tuned Dice.

Convention: for every method a larger score means a better model to fine-tune, and a larger
Dice is better. Nothing here touches a file (numpy and scipy only); the readers and writers are in
:mod:`ccfv.evaluation.io`, the figure in :mod:`ccfv.evaluation.plots`. Undefined values (a
correlation with a constant input, say) are ``None``, never a silent NaN.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from ccfv.errors import CCFVWarning, UserError

#: The columns of ``evaluation.csv``, in order (``n_models`` follows them).
COLUMNS = (
    "method",
    "weighted_tau",
    "kendall_tau",
    "spearman",
    "pearson",
    "top1_relative",
    "regret",
)
#: Correlation columns: undefined (None) when the score or the truth is constant.
CORRELATIONS = ("weighted_tau", "kendall_tau", "spearman", "pearson")
#: Fewest models a method must have (finite score and a fine-tuned Dice) to be evaluated.
MIN_MODELS = 3


# --------------------------------------------------------------------------------------------
# statistics on two paired vectors
# --------------------------------------------------------------------------------------------


def _pair(scores: ArrayLike, truth: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(scores, dtype=float).ravel()
    y = np.asarray(truth, dtype=float).ravel()
    if x.shape != y.shape:
        raise UserError(
            f"scores and truth have different lengths ({x.size} and {y.size}): "
            "give one score and one fine-tuned Dice per model, in the same order"
        )
    if x.size < 2:
        raise UserError(f"{x.size} model(s): a correlation needs at least 2 models")
    bad = ~(np.isfinite(x) & np.isfinite(y))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise UserError(
            f"entry {i} is not a finite number (score {x[i]!r}, truth {y[i]!r}): "
            "leave models without a finite score or Dice out"
        )
    return x, y


def _constant(v: np.ndarray) -> bool:
    return bool(np.all(v == v[0]))


def _statistic(result) -> float | None:
    value = float(result.statistic if hasattr(result, "statistic") else result[0])
    return value if math.isfinite(value) else None


def weighted_tau(scores: ArrayLike, truth: ArrayLike) -> float | None:
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


def kendall_tau(scores: ArrayLike, truth: ArrayLike) -> float | None:
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


def spearman(scores: ArrayLike, truth: ArrayLike) -> float | None:
    r"""Spearman's :math:`\rho` (:func:`scipy.stats.spearmanr`): Pearson's r of the ranks
    (ties get their average rank). ``None`` when undefined (a constant input)."""
    from scipy.stats import spearmanr

    x, y = _pair(scores, truth)
    if _constant(x) or _constant(y):
        return None
    return _statistic(spearmanr(x, y))


def pearson(scores: ArrayLike, truth: ArrayLike) -> float | None:
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


def top1_relative(scores: ArrayLike, truth: ArrayLike) -> float | None:
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


def regret(scores: ArrayLike, truth: ArrayLike) -> float:
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


def evaluate(
    scores: Mapping[str, Mapping[str, float | None]],
    truth: Mapping[str, float],
    *,
    methods: Sequence[str] | None = None,
    scores_name: str = "the scores",
    truth_name: str = "the truth",
) -> Evaluation:
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
            raise UserError(
                f"{scores_name} has no column {', '.join(map(repr, unknown))}: "
                f"its methods are {', '.join(all_methods) or '(none)'}"
            )
    if not methods:
        raise UserError(
            f"{scores_name} holds no method column: it needs a `model` column "
            "followed by one column per method (as `ccfv rank` writes scores.csv)"
        )

    only_scores = [m for m in scores if m not in truth]
    only_truth = [m for m in truth if m not in scores]
    messages = []
    if only_scores:
        messages.append(
            f"{len(only_scores)} model(s) of {scores_name} have no fine-tuned Dice "
            f"in {truth_name} and are left out: {_names(only_scores)}"
        )
    if only_truth:
        messages.append(
            f"{len(only_truth)} model(s) of {truth_name} are not in {scores_name} "
            f"and are left out: {_names(only_truth)}"
        )
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
                "method out (--methods)"
            )
        xa, ya = np.array(x), np.array(y)
        row = {
            "method": method,
            "weighted_tau": weighted_tau(xa, ya),
            "kendall_tau": kendall_tau(xa, ya),
            "spearman": spearman(xa, ya),
            "pearson": pearson(xa, ya),
            "top1_relative": top1_relative(xa, ya),
            "regret": regret(xa, ya),
            "n_models": len(models),
            "models": models,
            "notes": notes,
        }
        if _constant(xa):
            notes.append(
                f"the score is the same for all {len(models)} models: correlations "
                "are undefined (left empty) and the pick counts as the worst model"
            )
        elif _constant(ya):
            notes.append(
                f"the fine-tuned Dice is the same for all {len(models)} models: "
                "correlations are undefined (left empty)"
            )
        else:
            undefined = [c for c in CORRELATIONS if row[c] is None]
            if undefined:
                notes.append(f"undefined (left empty): {', '.join(undefined)}")
            tied = int(np.sum(xa == xa.max()))
            if tied > 1:
                notes.append(
                    f"{tied} models share the top score: the pick counts as the one "
                    "with the lowest Dice"
                )
        if row["top1_relative"] is None:
            notes.append("top1_relative is undefined: the best fine-tuned Dice is not positive")
        rows.append(row)
    return rows
