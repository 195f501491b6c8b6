"""Class consistency standardised against a label-permutation null (``ccfv-null``).

Per layer l, with C_l the class consistency of the default CC-FV (mean pairwise W2 between the
cases' class Gaussians, features on the unit sphere), computed on the features centred on the
layer's mean pooled over all cases (``centre=true``, the default; ``centre=false``: as the
default CC-FV, whose unit sphere is centred on the origin), and C_l^(b) the same quantity after
the labels of every case were permuted among that case's samples (permutation b = 1..B, seeded
by ``seed``, the layer's name and the case's labels, so the order of the cases does not
matter)::

    statistic="log_ratio" (default):  T = mean_l log( mean_b C_l^(b) / C_l )
    statistic="z":                    T = mean_l ( mean_b C_l^(b) - C_l ) / sd_b C_l^(b)

Why, in general: C_l is in the units of the layer's own geometry. A network whose features
vary little from case to case (smooth, low effective rank, or crowded into one cone of the
sphere) has a small C_l for every class, labels or not, and CC-FV rewards that whatever the
target. Permuting the labels within each case keeps everything about the features (their
spread, their rank, their case-to-case shifts, the number of samples per class and case) and
destroys only the link between a voxel's features and its class; C_l^(b) is what this network's
features give on this target when the classes mean nothing. The ratio asks how much more
consistent the real classes are than that: a dimensionless number, 0 when the features carry
no class information the other cases share. CC-FV's feature-variety term does not read the
labels (it is the same under every permutation), so it cancels from a standardised score and
is not part of this one.

Centring: the unit sphere of the default CC-FV is centred on the origin, and a ReLU or
normalisation output lies in one orthant, so where the features sit relative to the origin
(a property of the architecture's last operations, not of the target) changes C_l;
``benchmarks/diagnose_ccfv.py`` measured the default score moving by -0.36 to +0.65 when the
same features were centred (12 PH2 cases: down for all 8 UNets and the DynUNet, up for 5 of
the 6 SegResNets of the benchmark's bank). Centred, the score is also
invariant to adding a common vector to every feature.

Cost: ``permutations + 1`` times the consistency term of CC-FV (B class-Gaussian fits and
W2 pairs per class and layer; the variety term is not computed). Re-scoring a subset of cases
(the bootstrap) reuses the permuted tables (:func:`ccfv_null_tables`) and the centre of all
the cases. Invariant to rescaling, channel permutations, orthogonal maps, zero-padding and
(centred) translations (the permutations depend on the seed, the layer names and the labels
only).
"""

from __future__ import annotations

import math
import numbers
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ccfv.errors import UserError, collect_ccfv_warnings
from ccfv.estimators._threads import one_blas_thread
from ccfv.estimators.ccfv import CCFVTables, ccfv_tables
from ccfv.estimators.ccfv_pca import centred
from ccfv.estimators.featureset import CaseIndices, FeatureSet, validate_feature_set

STATISTICS = ("log_ratio", "z")


@dataclass
class CCFVNullTables:
    """The observed and the permuted consistency tables; ``score(cases)`` sums them up."""

    observed: CCFVTables
    null: list[CCFVTables]
    statistic: str

    def layer_terms(self, cases: CaseIndices | None = None) -> dict[str, float]:
        """``{layer: term}`` over ``cases`` (default all)."""
        observed = self.observed.parts(cases).layers
        with collect_ccfv_warnings():  # the same skips as the observed
            null = np.array([[p.consistency for p in t.parts(cases).layers] for t in self.null])
        terms = {}
        for l, part in enumerate(observed):
            c_obs = float(part.consistency or 0.0)  # consistency_only: never None
            values = null[:, l].astype(np.float64)
            if self.statistic == "log_ratio":
                mean = float(values.mean())
                if not (c_obs > 0 and mean > 0):
                    raise UserError(
                        f"ccfv-null: layer {part.layer!r}: class consistency {c_obs!r} (null "
                        f"mean {mean!r}); a consistency of 0 means identical class Gaussians in "
                        "every case: check that the features vary"
                    )
                terms[part.layer] = math.log(mean / c_obs)
            else:
                sd = float(values.std(ddof=1))
                if not sd > 0:
                    raise UserError(
                        f"ccfv-null: layer {part.layer!r}: the permuted consistencies do not "
                        "vary (sd 0), so z is undefined: use statistic=log_ratio or more "
                        "permutations"
                    )
                terms[part.layer] = (float(values.mean()) - c_obs) / sd
        return terms

    def score(self, cases: CaseIndices | None = None) -> float:
        """The ``ccfv-null`` score over ``cases`` (default all)."""
        return float(np.mean(list(self.layer_terms(cases).values())))


def _permutations(data, seed: int, permutations: int) -> list[dict]:
    """``permutations`` copies of ``data`` with each case's labels permuted. Each case's
    permutations come from its own generator, seeded by ``seed``, the layer name and the
    case's labels, so that the value does not depend on the order of the cases."""
    copies: list[dict] = [{} for _ in range(permutations)]
    for layer, cases in data.items():
        for copy in copies:
            copy[layer] = []
        for X, y in cases:
            rng = np.random.default_rng(
                [seed, zlib.crc32(layer.encode()), zlib.crc32(np.ascontiguousarray(y).tobytes())]
            )
            for copy in copies:
                copy[layer].append((X, rng.permutation(y)))
    return copies


@one_blas_thread
def ccfv_null_tables(
    features: FeatureSet,
    *,
    permutations: int = 10,
    seed: int = 0,
    statistic: str = "log_ratio",
    centre: bool = True,
    distance: str = "wasserstein",
    layers: Sequence[str] | None = None,
    ridge: float = 1e-3,
    workers: int | None = None,
) -> CCFVNullTables:
    """The observed and ``permutations`` label-permuted consistency tables of the default
    CC-FV (class Gaussians on the unit sphere), labels permuted within each case, seeded."""
    if (
        isinstance(permutations, bool)
        or not isinstance(permutations, numbers.Integral)
        or permutations < 1
        or (statistic == "z" and permutations < 2)
    ):
        raise UserError(
            f"ccfv-null: permutations={permutations!r}: use an integer >= 1 "
            "(>= 2 with statistic=z; default 10)"
        )
    if statistic not in STATISTICS:
        raise UserError(f"ccfv-null: statistic={statistic!r}: use one of {STATISTICS}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise UserError(f"ccfv-null: seed={seed!r}: use an integer >= 0")
    data = validate_feature_set(features, layers=layers)
    if centre:
        data = centred(data)
    if not any(np.unique(y).size >= 2 for cases in data.values() for _, y in cases):
        raise UserError(
            "ccfv-null: no case holds samples of two classes (background "
            "included), so permuting the labels within a case changes nothing "
            "and the null is the observed class consistency: sample background "
            "and foreground voxels"
        )
    options = dict(
        distance=distance,
        ridge=ridge,
        consistency_only=True,
        normalize_consistency=True,
        workers=workers,
    )
    observed = ccfv_tables(data, "paper", **options)
    with collect_ccfv_warnings():
        null = [
            ccfv_tables(copy, "paper", **options)
            for copy in _permutations(data, int(seed), int(permutations))
        ]
    return CCFVNullTables(observed, null, statistic)


def ccfv_null_score(
    features: FeatureSet,
    *,
    permutations: int = 10,
    seed: int = 0,
    statistic: str = "log_ratio",
    centre: bool = True,
    distance: str = "wasserstein",
    layers: Sequence[str] | None = None,
    ridge: float = 1e-3,
    workers: int | None = None,
) -> float:
    """``ccfv-null``: class consistency against its value with the labels permuted within each
    case (larger = the classes are more consistent across cases than chance).

    Parameters
    ----------
    features : feature set ``{layer: [(X, y) per case]}``.
    permutations : B, label permutations (each costs one consistency term of CC-FV).
    seed : seeds the permutations.
    statistic : ``"log_ratio"`` (``log(mean null / observed)``) or ``"z"``
        (``(mean null - observed) / sd null``), per layer, averaged over layers.
    centre : centre each layer on its pooled mean first (see the module docstring).
    distance, layers, ridge, workers : as :func:`ccfv.ccfv_parts`.
    """
    return ccfv_null_tables(
        features,
        permutations=permutations,
        seed=seed,
        statistic=statistic,
        centre=centre,
        distance=distance,
        layers=layers,
        ridge=ridge,
        workers=workers,
    ).score()
