"""LEEP and NCE: against slow textbook references, on constructed predictions, and bad input."""

import math

import numpy as np
import pytest
from scipy.special import softmax

from ccfv.errors import FeatureSetError, UserError
from ccfv.estimators.leep import leep_score
from ccfv.estimators.nce import nce_score
from ccfv.estimators.registry import Estimator

SCORES = {"leep": leep_score, "nce": nce_score}


def make_features(rng, n_cases=3, d=6, class_ids=(0, 1, 2), per_class=(20, 9, 14)):
    """Random features with the given class ids and per-class counts in every case."""
    cases = []
    for _ in range(n_cases):
        y = np.concatenate([np.full(m, k) for k, m in zip(class_ids, per_class)])
        y = rng.permutation(y)
        cases.append((rng.normal(size=(len(y), d)), y))
    return {"layer0": cases}


def pooled_labels(features, layer="layer0"):
    return np.concatenate([y for _, y in features[layer]])


def split_like(features, P, layer="layer0"):
    """Pooled rows back into one array per case."""
    sizes = np.cumsum([len(y) for _, y in features[layer]])[:-1]
    return np.split(P, sizes)


def dirichlet_predictions(rng, features, n_source=5, layer="layer0"):
    return [rng.dirichlet(np.ones(n_source) * 0.7, size=len(y)) for _, y in features[layer]]


# --- slow references, straight from the papers' definitions --------------------------------


def leep_reference(theta, y):
    """LEEP (Nguyen et al. 2020, Eq. 1-2) with explicit loops over samples and classes."""
    n, n_source = theta.shape
    classes = sorted(set(int(v) for v in y))
    joint = {}
    for c in classes:
        for z in range(n_source):
            joint[c, z] = sum(theta[i, z] for i in range(n) if y[i] == c) / n
    marginal = [sum(joint[c, z] for c in classes) for z in range(n_source)]
    total = 0.0
    for i in range(n):
        expected = 0.0
        for z in range(n_source):
            if marginal[z] > 0:
                expected += joint[int(y[i]), z] / marginal[z] * theta[i, z]
        total += math.log(expected)
    return total / n


def nce_reference(z, y):
    """-H(Y|Z) = -sum_z P(z) H(Y | Z = z), counted pair by pair."""
    n = len(y)
    total = 0.0
    for source in sorted(set(int(v) for v in z)):
        members = [int(y[i]) for i in range(n) if z[i] == source]
        p_z = len(members) / n
        entropy = 0.0
        for target in set(members):
            p = members.count(target) / len(members)
            entropy -= p * math.log(p)
        total -= p_z * entropy
    return total


# --- (a) fast == slow reference -----------------------------------------------------------


def test_leep_matches_reference(rng):
    features = make_features(rng, class_ids=(0, 2, 5))  # non-contiguous class ids
    predictions = dirichlet_predictions(rng, features, n_source=7)
    expected = leep_reference(np.concatenate(predictions), pooled_labels(features))
    assert leep_score(features, predictions) == pytest.approx(expected, rel=1e-10)


def test_leep_reference_with_an_unused_source_class(rng):
    """A source class no sample gives any mass (P(z) = 0) contributes nothing, finitely."""
    features = make_features(rng)
    y = pooled_labels(features)
    z = rng.integers(0, 3, size=len(y))
    theta = np.eye(4)[z]  # column 3 is all zeros
    theta = 0.9 * theta + 0.1 * np.eye(4)[(z + 1) % 3]
    predictions = split_like(features, theta)
    value = leep_score(features, predictions)
    assert np.isfinite(value)
    assert value == pytest.approx(leep_reference(theta, y), rel=1e-10)


def test_nce_matches_reference(rng):
    features = make_features(rng, class_ids=(0, 3, 4))
    predictions = dirichlet_predictions(rng, features, n_source=6)
    z = np.argmax(np.concatenate(predictions), axis=1)
    expected = nce_reference(z, pooled_labels(features))
    assert nce_score(features, predictions) == pytest.approx(expected, rel=1e-10)


# --- (b) known values and known orders ------------------------------------------------------


def class_entropy(y):
    _, counts = np.unique(y, return_counts=True)
    p = counts / counts.sum()
    return float(-np.sum(p * np.log(p)))


def test_perfect_predictions_score_zero(rng):
    features = make_features(rng)
    y = pooled_labels(features)
    theta = np.eye(3)[y]  # source class = target class
    predictions = split_like(features, theta)
    assert leep_score(features, predictions) == pytest.approx(0.0, abs=1e-12)
    assert nce_score(features, predictions) == pytest.approx(0.0, abs=1e-12)


def test_uninformative_predictions_score_minus_label_entropy(rng):
    """Predictions that ignore the input: P(y|z) = P(y), so LEEP = NCE = -H(Y)."""
    features = make_features(rng)
    y = pooled_labels(features)
    theta = np.tile([0.5, 0.3, 0.2], (len(y), 1))
    predictions = split_like(features, theta)
    assert leep_score(features, predictions) == pytest.approx(-class_entropy(y), rel=1e-10)
    assert nce_score(features, predictions) == pytest.approx(-class_entropy(y), rel=1e-10)


@pytest.mark.parametrize("name", ["leep", "nce"])
def test_informative_predictions_rank_above_noisy_ones(rng, name):
    features = make_features(rng, n_cases=4)
    y = pooled_labels(features)
    noise = rng.normal(size=(len(y), 4))
    onehot = np.eye(4)[y]
    values = [
        SCORES[name](features, split_like(features, softmax(s * onehot + noise, axis=1)))
        for s in (6.0, 2.0, 0.0)
    ]
    assert values[0] > values[1] > values[2]
    assert max(values) <= 0


def test_default_layer_is_the_last(rng):
    """Labels (and the rows the predictions align with) come from the last layer."""
    first = make_features(rng, per_class=(5, 5, 5))["layer0"]
    last = make_features(rng, d=3)["layer0"]
    features = {"early": first, "late": last}
    predictions = dirichlet_predictions(rng, {"late": last}, layer="late")
    for score in SCORES.values():
        assert score(features, predictions) == score({"late": last}, predictions)
        assert score(features, predictions, layer="late") == score(features, predictions)
        with pytest.raises(FeatureSetError, match="predictions, case 0"):
            score(features, predictions, layer="early")  # 15 rows, not 43


def test_registered_with_predictions(rng):
    """The registry's Estimator passes predictions positionally, options as keywords."""
    features = make_features(rng)
    predictions = dirichlet_predictions(rng, features)
    for score in SCORES.values():
        estimator = Estimator(score, needs_predictions=True)
        assert estimator(features, predictions, layer="layer0") == score(features, predictions)


def test_case_order_does_not_matter(rng):
    features = make_features(rng, n_cases=4)
    predictions = dirichlet_predictions(rng, features)
    order = [2, 0, 3, 1]
    permuted = {"layer0": [features["layer0"][i] for i in order]}
    for score in SCORES.values():
        assert score(permuted, [predictions[i] for i in order]) == pytest.approx(
            score(features, predictions), rel=1e-12
        )


# --- (c) delicate input and errors -----------------------------------------------------------


@pytest.mark.parametrize("name", ["leep", "nce"])
def test_tiny_class_and_few_samples_stay_finite(rng, name):
    features = make_features(rng, n_cases=2, d=40, per_class=(3, 2, 1))  # n < d, tiny classes
    predictions = dirichlet_predictions(rng, features, n_source=9)
    value = SCORES[name](features, predictions)
    assert np.isfinite(value) and value <= 0


def test_nce_ties_go_to_the_first_source_class(rng):
    features = make_features(rng)
    y = pooled_labels(features)
    theta = np.full((len(y), 2), 0.5)  # every row a tie
    assert nce_score(features, split_like(features, theta)) == pytest.approx(
        -class_entropy(y), rel=1e-12
    )


@pytest.mark.parametrize("name", ["leep", "nce"])
def test_single_class_is_a_user_error(rng, name):
    features = make_features(rng, class_ids=(1,), per_class=(10,))
    predictions = dirichlet_predictions(rng, features)
    with pytest.raises(UserError, match="single class"):
        SCORES[name](features, predictions)


@pytest.mark.parametrize("name", ["leep", "nce"])
def test_bad_predictions_are_feature_set_errors(rng, name):
    score = SCORES[name]
    features = make_features(rng)
    good = dirichlet_predictions(rng, features)
    with pytest.raises(FeatureSetError, match="needs the source model's predictions"):
        score(features, None)
    with pytest.raises(FeatureSetError, match="expected \\(43, n_source_classes\\)"):
        score(features, [good[0][:-1]] + good[1:])  # one row short
    with pytest.raises(FeatureSetError, match="apply a softmax"):
        score(features, [np.log(P) for P in good])  # logits, not probabilities
    with pytest.raises(FeatureSetError, match="holds 3 cases"):
        score(features, good[:2])  # a case missing
    with pytest.raises(FeatureSetError, match="NaN or Inf"):
        score(features, [np.full_like(good[0], np.nan)] + good[1:])
