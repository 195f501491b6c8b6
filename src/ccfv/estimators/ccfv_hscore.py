"""Class consistency with discriminability instead of feature variety (``ccfv-hscore``).

Per layer l, with C_l the class consistency of the default CC-FV (mean pairwise W2 between the
cases' class Gaussians, features on the unit sphere) computed on the features centred on the
layer's pooled mean (``centre=true``, the default, for the reason given in
:mod:`ccfv.estimators.ccfv_null`; ``centre=false``: as the default CC-FV) and H_l the H-score
of the layer's pooled samples (``tr(cov(f)^+ cov(E[f|y]))``, background a class, K classes
present, in [0, K-1]; :mod:`ccfv.estimators.hscore`)::

    T = mean_l [ log( H_l / (K - 1) ) - log C_l ]       (= mean_l log(H_l / ((K - 1) C_l)))

``discriminability="reg-hscore"`` uses the shrinkage H-score instead.

Why, in general: CC-FV divides a label-aware term (class consistency across cases) by a
label-free one (feature variety, an energy of all the samples on the sphere). A label-free term
measures the network's features, not their fit to the target, and what it rewards (spread over
the sphere) grows with the effective rank of a layer, a property of the architecture. The H-score
is the label-aware counterpart of "variety": how far apart the class means lie in the features'
own whitened coordinates, i.e. the discriminability a linear head can use. Both factors are
dimensionless (the H-score is invariant to any invertible linear map of the features, C_l to
rescaling and orthogonal maps), so their ratio needs no weight and is defined for one model on
its own: no bank-level normalisation, no rank average. Dividing H by its maximum K-1 keeps each
summand <= -log C_l and does not change any ranking within a target.

Plain H-score: with no more samples than channels it is K-1 whatever the features, and the
score reduces to its consistency term alone; the benchmark's sampling plans (12 cases,
hundreds of samples per class) have many more samples than channels. Re-scoring a subset of
cases (the bootstrap) reuses the consistency tables (centred on all the cases) and recomputes
H on that subset (:func:`ccfv_hscore_tables`). Invariant to rescaling, channel permutations,
orthogonal maps, zero-padding (``reg-hscore``: not to zero-padding) and, centred, translations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ccfv.errors import UserError
from ccfv.estimators._threads import one_blas_thread
from ccfv.estimators.ccfv import CCFVTables, ccfv_tables
from ccfv.estimators.ccfv_pca import centred
from ccfv.estimators.featureset import CaseIndices, FeatureSet, validate_feature_set
from ccfv.estimators.hscore import hscore, regularized_hscore

DISCRIMINABILITY = {"hscore": hscore, "reg-hscore": regularized_hscore}


@dataclass
class CCFVHScoreTables:
    """The consistency tables and the features, for ``score(cases)``."""

    consistency: CCFVTables
    data: dict
    discriminability: str

    def layer_terms(self, cases: CaseIndices | None = None) -> dict[str, float]:
        """``{layer: log(H / (K - 1)) - log C}`` over ``cases`` (default all)."""
        n = len(next(iter(self.data.values())))
        idx = list(range(n)) if cases is None else sorted({int(c) for c in cases})
        sub = {layer: [pairs[i] for i in idx] for layer, pairs in self.data.items()}
        func = DISCRIMINABILITY[self.discriminability]
        terms = {}
        for layer in sub:
            k = np.unique(np.concatenate([y for _, y in sub[layer]])).size
            h = func(sub, layer=layer)  # raises for fewer than 2 classes
            if not h > 0:
                raise UserError(
                    f"ccfv-hscore: layer {layer!r}: the {self.discriminability} is {h!r}: the "
                    "class means coincide in the features (or they are constant), so log H is "
                    "undefined: check the layer"
                )
            terms[layer] = math.log(h / (k - 1))
        for part in self.consistency.parts(idx).layers:
            terms[part.layer] += part.term  # consistency_only: log(1 / C)
        return terms

    def score(self, cases: CaseIndices | None = None) -> float:
        """The ``ccfv-hscore`` score over ``cases`` (default all)."""
        return float(np.mean(list(self.layer_terms(cases).values())))


@one_blas_thread
def ccfv_hscore_tables(
    features: FeatureSet,
    *,
    discriminability: str = "hscore",
    centre: bool = True,
    distance: str = "wasserstein",
    layers: Sequence[str] | None = None,
    ridge: float = 1e-3,
    workers: int | None = None,
) -> CCFVHScoreTables:
    """The default CC-FV's consistency tables beside the features (see the module)."""
    if discriminability not in DISCRIMINABILITY:
        raise UserError(
            f"ccfv-hscore: discriminability={discriminability!r}: use one of "
            f"{', '.join(DISCRIMINABILITY)}"
        )
    data = validate_feature_set(features, layers=layers)
    for layer in data:  # the class check first: a clear message
        DISCRIMINABILITY[discriminability](data, layer=layer)
    tables = ccfv_tables(
        centred(data) if centre else data,
        "paper",
        distance=distance,
        ridge=ridge,
        consistency_only=True,
        normalize_consistency=True,
        workers=workers,
    )
    return CCFVHScoreTables(tables, data, discriminability)


def ccfv_hscore_score(
    features: FeatureSet,
    *,
    discriminability: str = "hscore",
    centre: bool = True,
    distance: str = "wasserstein",
    layers: Sequence[str] | None = None,
    ridge: float = 1e-3,
    workers: int | None = None,
) -> float:
    """``ccfv-hscore``: ``mean_l log(H_l / ((K - 1) C_l))``, H-score over class consistency
    (larger = better).

    Parameters
    ----------
    features : feature set ``{layer: [(X, y) per case]}``.
    discriminability : ``"hscore"`` or ``"reg-hscore"`` (shrinkage H-score).
    centre : compute C_l on the features centred on each layer's pooled mean.
    distance, layers, ridge, workers : as :func:`ccfv.ccfv_parts`.
    """
    return ccfv_hscore_tables(
        features,
        discriminability=discriminability,
        centre=centre,
        distance=distance,
        layers=layers,
        ridge=ridge,
        workers=workers,
    ).score()
