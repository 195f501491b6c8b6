"""Every transferability estimator under the name used by the API, the CLI and the CSV columns.

An estimator is a function ``(features, **options) -> float`` on a feature set
(``{layer: [(X, y) per case]}``), larger = more transferable. Those that also read the source
model's own predictions at the sampled voxels take them as ``predictions=[P per case]``
(``P``: ``(n_samples, n_source_classes)`` softmax, rows aligned with the feature set's last
layer). Adding one is one file in this package and one line in :data:`ESTIMATORS`.

``ccfv`` is the package's default CC-FV (:data:`DEFAULT_CCFV`), ``ccfv-paper`` the paper's
equations exactly (Yang et al. 2023, as ``docs/explanation/method.md`` pins them down),
``ccfv-official`` the released code's formulas.

A method name may carry options in brackets, ``name[key=value; key=value]`` (values read as
YAML: ``true``, ``2``, ``kl``), e.g. ``ccfv[distance=kl]``, ``ccfv[consistency_only=true]``,
``ccfv[layers=last]`` (``last``: the layer nearest the output only, the paper's single-scale
ablation), ``gbc[covariance=spherical]``. The full string is the method's name in tables and
CSV columns, so ablations are run, cached and evaluated like any other method.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Protocol

import yaml

from ccfv.errors import UserError
from ccfv.estimators.ccfv import ccfv_score, ccfv_tables
from ccfv.estimators.ccfv_hscore import ccfv_hscore_score, ccfv_hscore_tables
from ccfv.estimators.ccfv_null import ccfv_null_score, ccfv_null_tables
from ccfv.estimators.ccfv_pca import ccfv_pca_score, ccfv_pca_tables
from ccfv.estimators.featureset import CaseIndices
from ccfv.estimators.gbc import gbc_score
from ccfv.estimators.hscore import hscore, regularized_hscore
from ccfv.estimators.leep import leep_score
from ccfv.estimators.logme import logme_score
from ccfv.estimators.nce import nce_score
from ccfv.estimators.nleep import nleep_score
from ccfv.estimators.parc import parc_score
from ccfv.estimators.sfda import sfda_score
from ccfv.estimators.transrate import transrate_score


class CaseTables(Protocol):
    """What an estimator's ``tables`` returns: scores any subset of the cases."""

    def score(self, cases: CaseIndices) -> float: ...


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
    tables: Callable[..., CaseTables] | None = None
    #: Options fixed by the method name (``ccfv[distance=kl]``), passed on every call.
    options: dict = field(default_factory=dict)

    def _options(self, features, options: dict) -> dict:
        merged = {**self.options, **options}
        if merged.get("layers") == "last":
            merged["layers"] = [list(features)[-1]]
        return merged

    def __call__(self, features, predictions=None, **options) -> float:
        options = self._options(features, options)
        if self.needs_predictions:
            return self.func(features, predictions, **options)
        return self.func(features, **options)

    def prepare(self, features, predictions=None, **options) -> Callable[[CaseIndices], float]:
        """``scorer(case_indices) -> float``: the score on a subset of the cases."""
        if self.tables is not None:
            return self.tables(features, **self._options(features, options)).score
        return subset_scorer(lambda sub, preds: self(sub, preds, **options), features, predictions)


def subset_scorer(score: Callable, features, predictions=None) -> Callable[[CaseIndices], float]:
    """``scorer(case_indices)``: ``score(features, predictions)`` re-run on those cases only
    (the generic way to score a subset; estimators with tables do it without re-running)."""

    def scorer(cases: CaseIndices) -> float:
        sub = {layer: [pairs[i] for i in cases] for layer, pairs in features.items()}
        preds = None if predictions is None else [predictions[i] for i in cases]
        return score(sub, preds)

    return scorer


#: The package's default CC-FV (``ccfv``): the paper's formulas with the class Gaussians fitted
#: on the unit sphere (``normalize_consistency``), so that rescaling a layer's features, which
#: a network can do without changing its function, does not change the score. The benchmark
#: (README, "Which CC-FV") measured it above the paper's exact equations (``ccfv-paper``) on 6
#: of 8 targets.
DEFAULT_CCFV: dict[str, Any] = {"variant": "paper", "normalize_consistency": True}

#: The estimator that ranks when none is named (``ccfv rank``, ``ccfv select``, ``RankSettings``);
#: changed only by the rule of docs/explanation/choosing-the-default.md.
DEFAULT_METHOD = "ccfv"

ESTIMATORS: dict[str, Estimator] = {
    "ccfv": Estimator(
        partial(ccfv_score, **DEFAULT_CCFV), tables=partial(ccfv_tables, **DEFAULT_CCFV)
    ),
    "ccfv-paper": Estimator(
        partial(ccfv_score, variant="paper"), tables=partial(ccfv_tables, variant="paper")
    ),
    "ccfv-official": Estimator(
        partial(ccfv_score, variant="official"), tables=partial(ccfv_tables, variant="official")
    ),
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
    # candidates for the default (issue 16, docs/explanation/choosing-the-default.md)
    "ccfv-pca": Estimator(ccfv_pca_score, tables=ccfv_pca_tables),
    "ccfv-null": Estimator(ccfv_null_score, tables=ccfv_null_tables),
    "ccfv-hscore": Estimator(ccfv_hscore_score, tables=ccfv_hscore_tables),
}


_METHOD = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*(?:\[(.*)\])?\s*$")


def get_estimator(name: str) -> Estimator:
    """The estimator registered as ``name`` (options in brackets allowed, see the module
    docstring); a clear error lists the known names or the options the estimator takes."""
    match = _METHOD.match(name) if isinstance(name, str) else None
    base = match.group(1) if match else name
    if base not in ESTIMATORS:
        raise UserError(
            f"unknown method {name!r}: known methods are "
            f"{', '.join(ESTIMATORS)} (options as in ccfv[distance=kl])"
        )
    estimator = ESTIMATORS[base]
    if match is None or not match.group(2):
        return estimator
    signature = inspect.signature(estimator.func)
    if estimator.tables is not None and any(
        p.kind == p.VAR_KEYWORD for p in signature.parameters.values()
    ):
        signature = inspect.signature(estimator.tables)  # CC-FV: the options are named there
    accepted = [
        p
        for p in signature.parameters.values()
        if p.kind == p.KEYWORD_ONLY
        or (p.default is not p.empty and p.kind == p.POSITIONAL_OR_KEYWORD)
    ]
    known = {p.name for p in accepted} - {"variant"}
    options = {}
    for item in filter(None, (part.strip() for part in match.group(2).split(";"))):
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or key not in known:
            raise UserError(
                f"method {name!r}: {item!r} is not an option of {base}; write "
                f"{base}[key=value; ...] with keys among {', '.join(sorted(known))}"
            )
        options[key] = yaml.safe_load(text.strip())
    return replace(estimator, options=options)


def split_methods(text: str) -> list[str]:
    """``"ccfv,logme,ccfv[distance=kl; s=2]"`` -> the method names (commas inside brackets
    do not split)."""
    names, depth, current = [], 0, ""
    for char in text:
        depth += (char == "[") - (char == "]")
        if char == "," and depth == 0:
            names.append(current.strip())
            current = ""
        else:
            current += char
    names.append(current.strip())
    return [n for n in names if n]
