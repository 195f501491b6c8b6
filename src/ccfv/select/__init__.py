"""``ccfv select``: training-free ranking, then short fine-tunes of the top candidates with
successive halving, and the winner's weights handed over.

:mod:`ccfv.select.plan` holds the arithmetic (budget, halving plan, split; no I/O),
:mod:`ccfv.select.run` the orchestration, :mod:`ccfv.select.report` and
:mod:`ccfv.select.plot` what is written, :mod:`ccfv.select.cli` the subcommand.
"""

from ccfv.select.plan import Budget, Plan, halving_plan, parse_budget, survivors, train_val_split
from ccfv.select.run import SelectSettings, check_inputs, select

__all__ = [
    "Budget",
    "Plan",
    "SelectSettings",
    "check_inputs",
    "halving_plan",
    "parse_budget",
    "select",
    "survivors",
    "train_val_split",
]
