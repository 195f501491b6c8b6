"""Invariances a user relies on, missing classes, and clear errors on bad feature sets."""

import warnings

import numpy as np
import pytest
import slow_reference as slow
from conftest import random_feature_set
from scipy.stats import ortho_group

import ccfv

VARIANTS = ["paper", "official"]


@pytest.fixture
def features(rng):
    return random_feature_set(rng, 5, (12, 6), (9, 20), 2, unequal=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_case_permutation(features, variant, rng):
    order = rng.permutation(5)
    permuted = {layer: [cases[i] for i in order] for layer, cases in features.items()}
    assert ccfv.ccfv_score(permuted, variant) == pytest.approx(
        ccfv.ccfv_score(features, variant), rel=1e-10
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_sample_permutation(features, variant, rng):
    shuffled = {}
    for layer, cases in features.items():
        shuffled[layer] = []
        for X, y in cases:
            order = rng.permutation(len(y))
            shuffled[layer].append((X[order], y[order]))
    assert ccfv.ccfv_score(shuffled, variant) == pytest.approx(
        ccfv.ccfv_score(features, variant), rel=1e-10
    )


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("distance", ["wasserstein", "kl", "bhattacharyya"])
def test_rotation(features, variant, distance):
    rotated = {}
    for l, (layer, cases) in enumerate(features.items()):
        Q = ortho_group.rvs(cases[0][0].shape[1], random_state=l)
        rotated[layer] = [(X @ Q, y) for X, y in cases]
    assert ccfv.ccfv_score(rotated, variant, distance=distance) == pytest.approx(
        ccfv.ccfv_score(features, variant, distance=distance), rel=1e-9
    )


def test_scale_dependence_and_normalize_consistency(features):
    """Paper variant: C_cons is in feature units (x3 -> score - log 3), the variety is on the
    unit sphere; with normalize_consistency the score ignores the scale of a layer and equals
    the score of features put on the unit sphere beforehand."""
    scaled = {layer: [(3.0 * X, y) for X, y in cases] for layer, cases in features.items()}
    assert ccfv.ccfv_score(scaled) == pytest.approx(
        ccfv.ccfv_score(features) - np.log(3.0), rel=1e-9
    )
    invariant = ccfv.ccfv_score(features, normalize_consistency=True)
    assert ccfv.ccfv_score(scaled, normalize_consistency=True) == pytest.approx(invariant, rel=1e-9)
    unit = {
        layer: [(X / np.linalg.norm(X, axis=1, keepdims=True), y) for X, y in cases]
        for layer, cases in features.items()
    }
    assert ccfv.ccfv_score(unit) == pytest.approx(invariant, rel=1e-10)
    assert invariant != pytest.approx(ccfv.ccfv_score(features), rel=1e-3)
    parts = ccfv.ccfv_parts(features, normalize_consistency=True)
    assert parts.options["normalize_consistency"] is True
    tables = ccfv.ccfv_tables(features, normalize_consistency=True)  # subsets stay exact
    subset = {layer: [cases[i] for i in (0, 2, 3)] for layer, cases in features.items()}
    assert tables.score([0, 2, 3]) == pytest.approx(
        ccfv.ccfv_score(subset, normalize_consistency=True), rel=1e-12
    )


def test_consistent_classes_score_higher(rng):
    """Same features, but one bank's class clusters drift between cases: it must score lower."""
    base = random_feature_set(rng, 6, (8,), (30,), 1, shift=3.0)
    drifted = {
        "layer0": [
            (X + (y[:, None] > 0) * 2.0 * rng.normal(size=X.shape[1]), y) for X, y in base["layer0"]
        ]
    }
    assert ccfv.ccfv_score(base) > ccfv.ccfv_score(drifted)
    assert ccfv.ccfv_score(base, "official") > ccfv.ccfv_score(drifted, "official")


def _drop_class(features, case, klass, keep=0):
    out = {}
    for layer, cases in features.items():
        out[layer] = list(cases)
        X, y = cases[case]
        mask = y != klass
        mask[np.flatnonzero(~mask)[:keep]] = True
        out[layer][case] = (X[mask], y[mask])
    return out


@pytest.mark.parametrize("keep", [0, 1])
def test_absent_class_pairs_are_skipped_not_zero(features, keep):
    thin = _drop_class(features, case=2, klass=1, keep=keep)
    with pytest.warns(ccfv.CCFVWarning, match="class 1 has"):
        result = ccfv.ccfv_parts(thin)
    assert result.layers[0].class_pairs == {1: 6, 2: 10}  # 4 cases left for class 1
    assert any("case 2" in w for w in result.warnings)
    # the reference skips the same cases: the value is the mean over the remaining pairs
    assert result.score == pytest.approx(slow.paper_score(thin), rel=1e-7)
    official = ccfv.ccfv_parts(thin, "official")
    assert np.isfinite(official.score)


def test_class_in_one_case_contributes_nothing(features):
    thin = features
    for case in range(1, 5):
        thin = _drop_class(thin, case=case, klass=2)
    with pytest.warns(ccfv.CCFVWarning, match="contributes nothing"):
        result = ccfv.ccfv_parts(thin)
    assert set(result.layers[0].class_pairs) == {1}
    only_one = {layer: [(X[y != 2], y[y != 2]) for X, y in cases] for layer, cases in thin.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # the variety term still sees class 2
        assert result.score != pytest.approx(ccfv.ccfv_score(only_one))
        assert result.layers[0].consistency == pytest.approx(
            ccfv.ccfv_parts(only_one).layers[0].consistency
        )


def test_no_usable_class_is_a_clear_error(features):
    for case in range(1, 5):
        for klass in (1, 2):
            features = _drop_class(features, case=case, klass=klass)
    with pytest.warns(ccfv.CCFVWarning), pytest.raises(ccfv.UserError, match="class consistency"):
        ccfv.ccfv_score(features)


def test_identical_features_never_nan(rng):
    X = rng.normal(size=(10, 4))
    y = np.array([0] * 5 + [1] * 5)
    same = {"l": [(X, y), (X.copy(), y), (X.copy(), y)]}
    with pytest.raises(ccfv.UserError, match="consistency of 0"):
        ccfv.ccfv_score(same)
    result = ccfv.ccfv_parts(same, variety_only=True)
    assert np.isfinite(result.score)


def test_coincident_samples_are_reported(rng):
    X = rng.normal(size=(10, 4))
    X[1] = X[0]
    y = np.array([0] * 5 + [1] * 5)
    data = {"l": [(X, y), (X + 0.1, y), (X - 0.2, y)]}
    with pytest.warns(ccfv.CCFVWarning, match="coincide"):
        value = ccfv.ccfv_score(data)
    assert np.isfinite(value)


BAD = {
    "empty": ({}, "empty"),
    "one case": ({"l": [(np.ones((3, 2)), np.array([0, 1, 1]))]}, "at least 2"),
    "ragged": ({"l": [(np.ones((3, 2)), np.zeros(3)), (np.ones((3, 5)), np.zeros(3))]}, "dim 5"),
    "length": (
        {"l": [(np.ones((3, 2)), np.zeros(4)), (np.ones((3, 2)), np.zeros(3))]},
        "3 feature rows",
    ),
    "nan": (
        {"l": [(np.array([[np.nan, 1.0], [0, 1]]), np.zeros(2)), (np.ones((2, 2)), np.zeros(2))]},
        "non-finite",
    ),
    "inf": (
        {"l": [(np.ones((2, 2)), np.zeros(2)), (np.array([[np.inf, 1.0], [0, 1]]), np.zeros(2))]},
        "case 1",
    ),
    "float labels": (
        {"l": [(np.ones((2, 2)), np.array([0.5, 1])), (np.ones((2, 2)), np.zeros(2))]},
        "integer class ids",
    ),
    "negative labels": (
        {"l": [(np.ones((2, 2)), np.array([-1, 1])), (np.ones((2, 2)), np.zeros(2))]},
        "negative",
    ),
    "1d features": ({"l": [(np.ones(2), np.zeros(2)), (np.ones(2), np.zeros(2))]}, "n_samples"),
    "cases differ between layers": (
        {"a": [(np.ones((2, 2)), np.zeros(2))] * 3, "b": [(np.ones((2, 2)), np.zeros(2))] * 2},
        "same cases",
    ),
    "not pairs": ({"l": [np.ones((2, 2)), np.ones((2, 2))]}, "X has shape"),
    "not a pair": ({"l": [np.ones(3), np.ones(3)]}, "pair"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_feature_sets(name):
    features, message = BAD[name]
    with pytest.raises(ccfv.FeatureSetError, match=message):
        ccfv.ccfv_score(features)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"variant": "camera-ready"}, "variant"),
        ({"distance": "cosine"}, "distance"),
        ({"consistency_only": True, "variety_only": True}, "exclude"),
        ({"s": -1}, "s >= 0"),
        ({"ridge": 0}, "ridge"),
        ({"eps": -1.0}, "eps"),
    ],
)
def test_bad_options(features, options, message):
    with pytest.raises(ccfv.UserError, match=message):
        ccfv.ccfv_score(features, **options)


@pytest.mark.parametrize("variant", VARIANTS)
def test_w2_threads_change_nothing(rng, variant, monkeypatch):
    """The pairwise W2 work shared over threads gives the serial values exactly."""
    from ccfv.estimators import gaussian

    monkeypatch.setattr(gaussian, "_MIN_PARALLEL_WORK", 0)  # a set this small runs serially
    features = random_feature_set(rng, 9, (12, 30), (9, 20), 2, unequal=True)
    serial = ccfv.ccfv_parts(features, variant, workers=1)
    for workers in (2, 3):
        parts = ccfv.ccfv_parts(features, variant, workers=workers)
        assert parts.score == serial.score
        assert [p.class_consistency for p in parts.layers] == [
            p.class_consistency for p in serial.layers
        ]
    assert "workers" not in serial.options
    with pytest.raises(ccfv.UserError, match="workers"):
        ccfv.ccfv_score(features, variant, workers=0)
