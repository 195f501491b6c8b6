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
Dice is better. Undefined values (a correlation with a constant input, say) are ``None``, never a
silent NaN.

The package keeps the three jobs apart (as scikit-learn keeps plots apart from metrics):
:mod:`ccfv.evaluation.metrics` (the statistics and :func:`evaluate`, no I/O, numpy/scipy only),
:mod:`ccfv.evaluation.io` (the CSV readers, :func:`write_evaluation_csv`, :func:`format_table`)
and :mod:`ccfv.evaluation.plots` (:func:`plot_scores_vs_truth`, matplotlib). Every public name
is re-exported here, so ``from ccfv.evaluation import evaluate`` works.
"""

from ccfv.evaluation.io import format_table, read_scores_csv, read_truth_csv, write_evaluation_csv
from ccfv.evaluation.metrics import (
    COLUMNS,
    CORRELATIONS,
    MIN_MODELS,
    Evaluation,
    evaluate,
    kendall_tau,
    pearson,
    regret,
    spearman,
    top1_relative,
    weighted_tau,
)
from ccfv.evaluation.plots import plot_scores_vs_truth

__all__ = [
    "COLUMNS",
    "CORRELATIONS",
    "MIN_MODELS",
    "Evaluation",
    "evaluate",
    "format_table",
    "kendall_tau",
    "pearson",
    "plot_scores_vs_truth",
    "read_scores_csv",
    "read_truth_csv",
    "regret",
    "spearman",
    "top1_relative",
    "weighted_tau",
    "write_evaluation_csv",
]
