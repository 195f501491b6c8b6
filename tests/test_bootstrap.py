"""Bootstrap over target cases: draws, the CC-FV subset tables, intervals, P(top stays top)."""

import warnings

import numpy as np
import pytest
from conftest import random_feature_set

import ccfv
from ccfv.bootstrap import bootstrap_ranking, replicate_scores, resample_cases, summarize
from ccfv.estimators.ccfv import ccfv_tables
from ccfv.estimators.registry import get_estimator


def _subset(features, idx):
    return {layer: [cases[i] for i in idx] for layer, cases in features.items()}


def test_draws_are_seeded_distinct_and_large_enough():
    a, b = resample_cases(6, 50, seed=3), resample_cases(6, 50, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, resample_cases(6, 50, seed=4)))
    for idx in a:
        assert idx.size >= 2 and np.all(np.diff(idx) > 0) and idx.max() < 6
    mean_size = np.mean([idx.size for idx in resample_cases(40, 400, seed=0)])
    assert mean_size / 40 == pytest.approx(1 - (1 - 1 / 40) ** 40, abs=0.02)  # ~63% distinct
    with pytest.raises(ccfv.UserError, match="--bootstrap 0"):
        resample_cases(1, 10)


@pytest.mark.parametrize("variant", ["paper", "official"])
@pytest.mark.parametrize(
    "options",
    [{}, {"distance": "kl"}, {"consistency_only": True}, {"variety_only": True}, {"s": 2.0}],
)
def test_tables_score_subsets_exactly(rng, variant, options):
    features = random_feature_set(
        rng, n_cases=6, dims=(5, 9), samples=(7, 12), classes=2, unequal=True
    )
    tables = ccfv_tables(features, variant, **options)
    assert tables.score() == pytest.approx(ccfv.ccfv_score(features, variant, **options), rel=1e-12)
    for idx in ([0, 1], [1, 3, 5], [0, 2, 3, 4], list(range(6))):
        expected = ccfv.ccfv_score(_subset(features, idx), variant, **options)
        assert tables.score(idx) == pytest.approx(expected, rel=1e-12)


def test_tables_skip_a_case_that_lacks_a_class(rng):
    features = random_feature_set(rng, n_cases=5, dims=(6,), samples=(8,), classes=2)
    X, y = features["layer0"][2]
    keep = y != 2
    features["layer0"][2] = (X[keep], y[keep])
    with pytest.warns(ccfv.CCFVWarning, match="class 2 has 0 sample"):
        tables = ccfv_tables(features)
    for idx in ([0, 2, 4], [1, 2], [0, 1, 3]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ccfv.CCFVWarning)
            expected = ccfv.ccfv_parts(_subset(features, idx))
            got = tables.parts(idx)
        assert got.score == pytest.approx(expected.score, rel=1e-12)
        assert got.layers[0].class_pairs == expected.layers[0].class_pairs
    assert 2 not in tables.parts([1, 2]).layers[0].class_pairs  # class 2 in one case only


def test_fast_path_equals_rescoring_every_draw(rng):
    features = random_feature_set(rng, n_cases=7, dims=(6, 4), samples=(9, 11), classes=2)
    draws = resample_cases(7, 25, seed=1)
    for method in ("ccfv", "ccfv-official"):
        estimator = get_estimator(method)
        fast = replicate_scores(features, None, estimator, draws)

        def rescore(f, predictions=None, estimator=estimator):
            return estimator(f)

        slow = replicate_scores(features, None, rescore, draws)
        np.testing.assert_allclose(fast, slow, rtol=1e-12)
        assert np.all(np.isfinite(fast))


def test_summary_by_hand():
    replicates = {
        "a": np.array([3.0, 1.0, 2.0, np.nan]),
        "b": np.array([2.0, 2.0, 1.0, 5.0]),
        "c": np.array([0.0, 0.0, 0.0, 0.0]),
    }
    result = summarize("m", replicates, {"a": 2.5, "b": 2.0, "c": 0.0}, level=0.5)
    assert result.top == "a" and result.n_valid == 3  # draw 3 could not score "a"
    assert result.models["a"].p_first == pytest.approx(2 / 3)
    assert result.models["b"].p_first == pytest.approx(1 / 3)
    assert result.models["c"].p_first == 0.0
    assert result.p_top_stays == pytest.approx(2 / 3)
    assert result.models["a"].n_scored == 3
    assert (result.models["a"].low, result.models["a"].high) == pytest.approx(
        tuple(np.quantile([3.0, 1.0, 2.0], [0.25, 0.75]))
    )
    assert result.models["b"].std == pytest.approx(np.std([2, 2, 1, 5], ddof=1))
    assert result.to_dict()["models"]["c"]["low"] == 0.0


def test_clear_winner_stays_on_top(rng):
    good = random_feature_set(rng, n_cases=6, dims=(6,), samples=(15,), classes=1, shift=0.0)
    noisy = {
        layer: [(X + 3.0 * rng.normal(size=X.shape) * (1 + c), y) for c, (X, y) in enumerate(cases)]
        for layer, cases in good.items()
    }
    estimator = get_estimator("ccfv-paper")  # noise of growing scale: W2 in feature units
    full = {"good": estimator(good), "noisy": estimator(noisy)}
    assert full["good"] > full["noisy"]
    result = bootstrap_ranking(
        {"good": (good, None), "noisy": (noisy, None)}, estimator, "ccfv", full, n_boot=40, seed=0
    )
    assert result.top == "good" and result.p_top_stays == 1.0 and result.n_valid == 40
    assert result.models["good"].low <= full["good"] <= result.models["good"].high
    again = bootstrap_ranking(
        {"good": (good, None), "noisy": (noisy, None)}, estimator, "ccfv", full, n_boot=40, seed=0
    )
    np.testing.assert_array_equal(again.replicates["noisy"], result.replicates["noisy"])
