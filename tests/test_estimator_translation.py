"""A fifth invariance found by ``benchmarks/diagnose_ccfv.py``: translating the features.

Adding one vector to every sampled feature of a layer (the same for every case) is what a
bias before the hooked layer, or a normalisation's shift, does; a ReLU output sits in one
orthant, far from the origin. The default ``ccfv`` puts the features on the unit sphere
centred on the ORIGIN, so such a shift changes its score (on 12 PH2 cases, centring the
benchmark bank's features moved it by -0.36 to +0.65, down for every UNet, up for most
SegResNets), while every estimator that centres the features first keeps its value.

``TRANSLATION_INVARIANT`` says which keep it (to ``rel=1e-6``); every other estimator must
change by more, so the table (also in ``docs/reference/estimators.md``) is checked both ways.
The features are moderately separable so that no score saturates at its bound.
"""

import warnings

import numpy as np
import pytest

import ccfv
from ccfv.estimators.registry import ESTIMATORS

NAMES = list(ESTIMATORS)


def _feature_set(seed=0, shift=1.0, n_cases=5, dims=(12, 8), per_class=30, classes=3):
    rng = np.random.default_rng(seed)
    features = {}
    for l, d in enumerate(dims):
        means = rng.normal(size=(classes, d))
        cases = []
        for _ in range(n_cases):
            y = np.repeat(np.arange(classes), per_class)
            X = rng.normal(size=(len(y), d)) * rng.uniform(0.7, 1.3) + shift * means[y]
            X += 0.2 * rng.normal(size=d)
            cases.append((X, y))
        features[f"layer{l}"] = cases
    return features


def _predictions(features, seed=1):
    rng = np.random.default_rng(seed)
    cases = list(features.values())[-1]
    W = rng.normal(size=(cases[0][0].shape[1], 4))
    out = []
    for X, _ in cases:
        logits = X @ W
        P = np.exp(logits - logits.max(axis=1, keepdims=True))
        out.append(P / P.sum(axis=1, keepdims=True))
    return out


def _score(name, features, predictions):
    estimator = ESTIMATORS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ccfv.CCFVWarning)
        return estimator(features, predictions if estimator.needs_predictions else None)


#: Estimators whose value does not change when every layer's features are translated.
#: ccfv-official: its variety reads differences of case means and its W2 (in feature units)
#: differences of class means; logme fits no bias and centres nothing.
TRANSLATION_INVARIANT = frozenset(NAMES) - {"ccfv", "ccfv-paper", "logme"}


@pytest.fixture(scope="module")
def data():
    f = _feature_set()
    return f, _predictions(f)


@pytest.mark.parametrize("name", NAMES)
def test_translation(name, data):
    features, predictions = data
    rng = np.random.default_rng(7)
    moved = {
        layer: [(X + shift, y) for X, y in cases]
        for layer, cases, shift in (
            (layer, cases, 3.0 * rng.normal(size=cases[0][0].shape[1]))
            for layer, cases in features.items()
        )
    }
    before, after = _score(name, features, predictions), _score(name, moved, predictions)
    assert abs(before) > 1e-6, f"{name} saturates on the test's features: {before!r}"
    same = after == pytest.approx(before, rel=1e-6, abs=1e-9)
    expected = name in TRANSLATION_INVARIANT
    assert same == expected, (
        f"{name} under translation: {after!r} vs {before!r}; expected "
        f"{'the same value' if expected else 'a change'}"
    )
