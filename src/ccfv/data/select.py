"""Pick N target cases reproducibly."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from numbers import Integral

import numpy as np

from ccfv.data.case import Case, Dataset
from ccfv.errors import CCFVWarning, UserError


def select_cases(cases: Iterable[Case] | Dataset, n: int, seed: int = 0) -> list[Case]:
    """Pick ``n`` cases at random, the same ones for the same seed.

    The cases are sorted by ``case_id`` (then dataset name) first, so the choice does not depend
    on file-system order; then ``numpy.random.default_rng(seed).permutation`` orders them and
    the first ``n`` are chosen. A smaller ``n`` therefore chooses a subset of a larger one with
    the same seed. The chosen cases are returned sorted by ``case_id`` (then dataset name), so
    the same set of cases is always the same list: picking all of them gives the dataset's
    own order, and scores, plans and the feature cache do not depend on the pick order.

    Parameters
    ----------
    cases : iterable of Case, or Dataset
        The cases to pick from.
    n : int
        How many to pick (at least 1). More than available returns all of them, with a warning.
    seed : int
        Seed of the permutation.

    Returns
    -------
    list of Case

    Raises
    ------
    UserError
        ``n`` not an integer >= 1, or no case to pick from.
    """
    cases = list(cases.cases if isinstance(cases, Dataset) else cases)
    if isinstance(n, bool) or not isinstance(n, Integral) or n < 1:
        raise UserError(f"number of cases n={n!r}: give an integer >= 1")
    if not cases:
        raise UserError("no case to select from; check the dataset folder")
    ordered = sorted(cases, key=lambda case: (case.case_id, case.dataset))
    if n > len(ordered):
        warnings.warn(
            f"asked for {n} cases but only {len(ordered)} exist; using all of them",
            CCFVWarning,
            stacklevel=2,
        )
        n = len(ordered)
    order = np.random.default_rng(seed).permutation(len(ordered))
    return [ordered[i] for i in sorted(order[: int(n)])]
