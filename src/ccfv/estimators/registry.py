"""Every transferability estimator under the name used by the API, the CLI and the CSV columns.

An estimator is a function ``(features, **options) -> float`` on a feature set
(``{layer: [(X, y) per case]}``), larger = more transferable. Those that also read the source
model's own predictions at the sampled voxels take them as ``predictions=[P per case]``
(``P``: ``(n_samples, n_source_classes)`` softmax, rows aligned with the feature set's last
layer). Adding one is one file in this package and one line in :data:`ESTIMATORS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from ccfv.errors import UserError
from ccfv.estimators.ccfv import ccfv_score, ccfv_tables
from ccfv.estimators.gbc import gbc_score
from ccfv.estimators.hscore import hscore, regularized_hscore
from ccfv.estimators.leep import leep_score
from ccfv.estimators.logme import logme_score
from ccfv.estimators.nce import nce_score
from ccfv.estimators.nleep import nleep_score
from ccfv.estimators.parc import parc_score
from ccfv.estimators.sfda import sfda_score
from ccfv.estimators.transrate import transrate_score


@dataclass(frozen=True)
class Estimator:
    """A registered estimator.

    ``func`` is the estimator; ``needs_predictions`` says it reads the source predictions;
    ``tables``, where an estimator is a mean of per-case and per-case-pair quantities (CC-FV),
    computes those once, ``tables(features, **options).score(case_indices) -> float``, so that
    :meth:`prepare` re-scores subsets of cases (the bootstrap) without redoing that work.
    """

    func: Callable[..., float]
    needs_predictions: bool = False
    tables: Callable[..., object] | None = None

    def __call__(self, features, predictions=None, **options) -> float:
        if self.needs_predictions:
            return self.func(features, predictions, **options)
        return self.func(features, **options)

    def prepare(self, features, predictions=None, **options) -> Callable[[Sequence[int]], float]:
        """``scorer(case_indices) -> float``: the score on a subset of the cases."""
        if self.tables is not None:
            return self.tables(features, **options).score

        def scorer(cases: Sequence[int]) -> float:
            sub = {layer: [pairs[i] for i in cases] for layer, pairs in features.items()}
            preds = None if predictions is None else [predictions[i] for i in cases]
            return self(sub, preds, **options)

        return scorer


ESTIMATORS: dict[str, Estimator] = {
    "ccfv": Estimator(partial(ccfv_score, variant="paper"),
                      tables=partial(ccfv_tables, variant="paper")),
    "ccfv-official": Estimator(partial(ccfv_score, variant="official"),
                               tables=partial(ccfv_tables, variant="official")),
    "logme": Estimator(logme_score),
    "transrate": Estimator(transrate_score),
    "leep": Estimator(leep_score, needs_predictions=True),
    "gbc": Estimator(gbc_score),
    "hscore": Estimator(hscore),
    "reg-hscore": Estimator(regularized_hscore),
    "nleep": Estimator(nleep_score),
    "nce": Estimator(nce_score, needs_predictions=True),
    "parc": Estimator(parc_score),
    "sfda": Estimator(sfda_score),
}


def get_estimator(name: str) -> Estimator:
    """The estimator registered as ``name``; a clear error lists the known names."""
    try:
        return ESTIMATORS[name]
    except KeyError:
        raise UserError(f"unknown method {name!r}: known methods are "
                        f"{', '.join(ESTIMATORS)}") from None
