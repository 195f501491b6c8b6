"""CC-FV against the slow sqrtm reference of tests/slow_reference.py on random data."""

import numpy as np
import pytest
import slow_reference as slow
from conftest import random_feature_set

import ccfv

# (n_cases, dims, samples per class, foreground classes, unequal sample counts)
SHAPES = {
    "n<d": (4, (20,), (8,), 1, False),
    "n>d": (5, (6,), (30,), 1, False),
    "unequal": (4, (10,), (12,), 2, True),
    "three_classes_two_layers": (3, (9, 5), (14, 20), 3, False),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_paper_matches_slow_reference(shape, rng):
    n_cases, dims, samples, classes, unequal = SHAPES[shape]
    features = random_feature_set(rng, n_cases, dims, samples, classes, unequal=unequal)
    want, want_parts = slow.paper_score(features, parts=True)
    got = ccfv.ccfv_parts(features, variant="paper")
    # sqrtm of singular covariances (n < d) is only good to ~1e-8
    assert got.score == pytest.approx(want, rel=1e-7)
    for layer, (f_v, c_cons) in zip(got.layers, want_parts):
        assert layer.variety == pytest.approx(f_v, rel=1e-10)
        assert layer.consistency == pytest.approx(c_cons, rel=1e-7)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_official_matches_released_formulas(shape, rng):
    n_cases, dims, samples, classes, unequal = SHAPES[shape]
    features = random_feature_set(rng, n_cases, dims, samples, classes, unequal=unequal)
    want, want_parts = slow.official_score(features, parts=True)
    got = ccfv.ccfv_parts(features, variant="official")
    assert got.score == pytest.approx(want, rel=1e-7)
    for layer, (variety, w) in zip(got.layers, want_parts):
        assert layer.variety == pytest.approx(variety, rel=1e-10)
        assert layer.consistency == pytest.approx(w, rel=1e-7)


@pytest.mark.parametrize("distance", ["kl", "bhattacharyya"])
def test_gaussian_divergences_match_reference(distance, rng):
    features = random_feature_set(rng, 4, (6,), (25,), 2)
    reference = {"kl": slow.kl_sym, "bhattacharyya": slow.bhattacharyya}[distance]
    want = slow.paper_score(features, distance=lambda a, b: reference(a, b, 1e-3))
    got = ccfv.ccfv_score(features, distance=distance, ridge=1e-3)
    assert got == pytest.approx(want, rel=1e-9)


def test_divergences_finite_when_rank_deficient(rng):
    features = random_feature_set(rng, 3, (30,), (5,), 1)
    for distance in ("kl", "bhattacharyya"):
        value = ccfv.ccfv_score(features, distance=distance)
        assert np.isfinite(value)


@pytest.mark.parametrize("s", [0.5, 2.0])
def test_energy_exponent(s, rng):
    features = random_feature_set(rng, 3, (5,), (10,), 1)
    assert ccfv.ccfv_score(features, s=s) == pytest.approx(
        slow.paper_score(features, s=s), rel=1e-9
    )


def test_log_energy_s0(rng):
    # spread points far apart on the sphere so that mean log(1/dist) stays positive
    features = random_feature_set(rng, 3, (3,), (4,), 1, shift=0.0)
    energies = [slow.energy(X, s=0) for X, _ in features["layer0"]]
    if min(energies) > 0:
        assert ccfv.ccfv_score(features, s=0) == pytest.approx(
            slow.paper_score(features, s=0), rel=1e-9
        )
    else:
        with pytest.raises(ccfv.UserError, match="s = 0"):
            ccfv.ccfv_score(features, s=0)


def test_without_normalisation(rng):
    features = random_feature_set(rng, 3, (5,), (10,), 1)
    assert ccfv.ccfv_score(features, normalize=False) == pytest.approx(
        slow.paper_score(features, normalize=False), rel=1e-9
    )


def test_ablations_are_the_single_terms(rng):
    features = random_feature_set(rng, 4, (7, 5), (10, 12), 2)
    full = ccfv.ccfv_parts(features)
    cons = ccfv.ccfv_parts(features, consistency_only=True)
    var = ccfv.ccfv_parts(features, variety_only=True)
    assert cons.score == pytest.approx(np.mean([-np.log(p.consistency) for p in full.layers]))
    assert var.score == pytest.approx(np.mean([np.log(p.variety) for p in full.layers]))
    assert full.score == pytest.approx(cons.score + var.score)
    assert cons.layers[0].variety is None and var.layers[0].consistency is None


def test_layer_subset(rng):
    features = random_feature_set(rng, 3, (6, 4), (10, 10), 1)
    only = ccfv.ccfv_parts(features, layers=["layer1"])
    assert [p.layer for p in only.layers] == ["layer1"]
    assert only.score == pytest.approx(ccfv.ccfv_parts({"layer1": features["layer1"]}).score)
    with pytest.raises(ccfv.UserError, match="layer9"):
        ccfv.ccfv_score(features, layers=["layer9"])
