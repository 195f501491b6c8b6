"""The candidate estimators of issue 16 (``ccfv-pca``, ``ccfv-null``, ``ccfv-hscore``) against
slow references written here from their docstrings, and the properties the diagnosis
(``benchmarks/diagnose_ccfv.py``) states for any features.

The slow references use ``tests/slow_reference.py`` (per-pair ``scipy.linalg.sqrtm`` W2), a
full SVD for the principal directions and ``np.linalg.pinv`` for the H-score.
"""

import math
import warnings
import zlib

import numpy as np
import pytest
from slow_reference import paper_score, w2_paper

import ccfv
from ccfv.estimators.ccfv import ccfv_parts
from ccfv.estimators.ccfv_hscore import ccfv_hscore_score, ccfv_hscore_tables
from ccfv.estimators.ccfv_null import ccfv_null_score, ccfv_null_tables
from ccfv.estimators.ccfv_pca import ccfv_pca_score, ccfv_pca_tables, principal_features
from ccfv.estimators.registry import get_estimator

N_CASES = 4
DIMS = (9, 6)
PER_CLASS = 14


def _features(seed=0, shift=1.5, offset=3.0):
    """Background + 2 classes, a per-case shift, a large common offset (ReLU-like)."""
    rng = np.random.default_rng(seed)
    out = {}
    for l, d in enumerate(DIMS):
        means = rng.normal(size=(3, d)) * shift
        scales = rng.uniform(0.5, 2.0, size=d)  # anisotropic
        cases = []
        for _ in range(N_CASES):
            y = np.repeat(np.arange(3), PER_CLASS)
            rng.shuffle(y)
            X = offset + means[y] + rng.normal(size=(y.size, d)) * scales
            X += 0.3 * rng.normal(size=d)
            cases.append((X, y))
        out[f"layer{l}"] = cases
    return out


def _unit(X):
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def _quiet(func, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ccfv.CCFVWarning)
        return func(*args, **kwargs)


def _slow_default_ccfv(features):
    """The default ccfv: class Gaussians and variety on the unit sphere."""
    return paper_score({l: [(_unit(X), y) for X, y in cases] for l, cases in features.items()})


def _slow_centre(cases):
    mu = np.concatenate([X for X, _ in cases]).mean(axis=0)
    return [(X - mu, y) for X, y in cases]


def _slow_consistency(cases, centre=True):
    """C = sum_k mean_{i != j} W2(F_i^k, F_j^k) on the unit sphere (of the features centred
    on their pooled mean with ``centre``)."""
    if centre:
        cases = _slow_centre(cases)
    total = 0.0
    for k in sorted({int(v) for _, y in cases for v in y} - {0}):
        members = [_unit(X[y == k]) for X, y in cases if np.sum(y == k) >= 2]
        dists = [
            w2_paper(members[i], members[j])
            for i in range(len(members))
            for j in range(len(members))
            if i != j
        ]
        total += np.mean(dists)
    return total


# --- ccfv-pca -------------------------------------------------------------------------------


def _slow_pca(features, k, whiten=False):
    out = {}
    for layer, cases in features.items():
        P = np.concatenate([X for X, _ in cases])
        mu = P.mean(axis=0)
        _, s, Vt = np.linalg.svd(P - mu, full_matrices=False)
        V = Vt[:k].T
        if whiten:
            V = V / (s[:k] / np.sqrt(len(P) - 1))
        out[layer] = [((X - mu) @ V, y) for X, y in cases]
    return out


@pytest.mark.parametrize("whiten", [False, True])
@pytest.mark.parametrize("k", [3, 5])
def test_pca_against_slow_reference(k, whiten):
    f = _features()
    expected = _slow_default_ccfv(_slow_pca(f, k, whiten))
    assert _quiet(ccfv_pca_score, f, components=k, whiten=whiten) == pytest.approx(
        expected, rel=1e-7
    )
    assert _quiet(
        get_estimator(f"ccfv-pca[components={k}; whiten={str(whiten).lower()}]"), f
    ) == pytest.approx(expected, rel=1e-7)


def test_pca_projected_covariance():
    f = _features()
    Z = principal_features(f, 4, whiten=True)
    P = np.concatenate([X for X, _ in Z["layer0"]])
    np.testing.assert_allclose(P.mean(axis=0), 0, atol=1e-10)
    np.testing.assert_allclose(np.cov(P.T), np.eye(4), atol=1e-10)


def test_pca_with_every_component_is_ccfv_of_the_centred_features():
    """All components kept: an orthogonal map of the centred features, which the default
    CC-FV ignores; so ccfv-pca is then the default CC-FV after centring."""
    f = _features()
    centred = {}
    for layer, cases in f.items():
        mu = np.concatenate([X for X, _ in cases]).mean(axis=0)
        centred[layer] = [(X - mu, y) for X, y in cases]
    expected = _quiet(get_estimator("ccfv"), centred)
    assert _quiet(ccfv_pca_score, f, components=50) == pytest.approx(expected, rel=1e-9)


def test_pca_subset_uses_the_directions_of_all_cases():
    f = _features()
    tables = _quiet(ccfv_pca_tables, f, components=4)
    projected = _slow_pca(f, 4)
    subset = {l: [cases[i] for i in (0, 2, 3)] for l, cases in projected.items()}
    assert _quiet(tables.score, [0, 2, 3]) == pytest.approx(_slow_default_ccfv(subset), rel=1e-7)


def test_pca_warns_when_a_layer_has_fewer_directions():
    with pytest.warns(ccfv.CCFVWarning, match="fewer than components=7"):
        principal_features(_features(), 7)  # layer1 has 6 channels


def test_pca_bad_components():
    with pytest.raises(ccfv.UserError, match="components"):
        ccfv_pca_score(_features(), components=0)
    with pytest.raises(ccfv.UserError, match="not an option of ccfv-pca"):
        get_estimator("ccfv-pca[k=3]")


# --- ccfv-null ------------------------------------------------------------------------------


def _slow_null(features, permutations, seed, statistic, centre=True):
    terms = []
    for layer, cases in features.items():
        if centre:
            cases = _slow_centre(cases)
        rngs = [
            np.random.default_rng(
                [
                    seed,
                    zlib.crc32(layer.encode()),
                    zlib.crc32(np.ascontiguousarray(y.astype(np.int64)).tobytes()),
                ]
            )
            for _, y in cases
        ]
        null = []
        for _ in range(permutations):
            null.append(
                _slow_consistency(
                    [(X, rng.permutation(y)) for (X, y), rng in zip(cases, rngs)], False
                )
            )
        observed = _slow_consistency(cases, False)
        if statistic == "log_ratio":
            terms.append(math.log(np.mean(null) / observed))
        else:
            terms.append((np.mean(null) - observed) / np.std(null, ddof=1))
    return float(np.mean(terms))


@pytest.mark.parametrize("centre", [True, False])
@pytest.mark.parametrize("statistic", ["log_ratio", "z"])
def test_null_against_slow_reference(statistic, centre):
    f = _features()
    expected = _slow_null(f, 3, 7, statistic, centre)
    assert _quiet(
        ccfv_null_score, f, permutations=3, seed=7, statistic=statistic, centre=centre
    ) == pytest.approx(expected, rel=1e-7)


def test_null_subset_and_seed():
    f = _features()
    tables = _quiet(ccfv_null_tables, f, permutations=3, seed=1)
    # a subset is scored with the features centred on the mean of all cases, as fitted once
    subset = {l: [_slow_centre(cases)[i] for i in (1, 2, 3)] for l, cases in f.items()}
    assert _quiet(tables.score, [1, 2, 3]) == pytest.approx(
        _slow_null(subset, 3, 1, "log_ratio", centre=False), rel=1e-7
    )
    assert _quiet(ccfv_null_score, f, permutations=3, seed=1) != _quiet(
        ccfv_null_score, f, permutations=3, seed=2
    )


def test_null_near_zero_when_labels_carry_nothing():
    """Labels drawn independently of the features: observed and permuted consistency are the
    same kind of quantity, so the log ratio is near 0 (here within 0.1), while the separable
    features of the same shape score above 0.3."""
    f = _features(shift=0.0)
    assert abs(_quiet(ccfv_null_score, f, permutations=10)) < 0.1
    assert _quiet(ccfv_null_score, _features(shift=3.0), permutations=10) > 0.3


def test_null_bad_options():
    with pytest.raises(ccfv.UserError, match="permutations"):
        ccfv_null_score(_features(), permutations=1, statistic="z")
    with pytest.raises(ccfv.UserError, match="statistic"):
        ccfv_null_score(_features(), statistic="t")
    with pytest.raises(ccfv.UserError, match="seed"):
        ccfv_null_score(_features(), seed=-1)


# --- ccfv-hscore ----------------------------------------------------------------------------


def _slow_hscore(X, y):
    mu = X.mean(axis=0)
    S = (X - mu).T @ (X - mu) / len(X)
    B = sum(
        np.sum(y == k) / len(X) * np.outer(X[y == k].mean(axis=0) - mu, X[y == k].mean(axis=0) - mu)
        for k in np.unique(y)
    )
    return float(np.trace(np.linalg.pinv(S) @ B))


@pytest.mark.parametrize("centre", [True, False])
def test_hscore_combination_against_slow_reference(centre):
    f = _features()
    terms = []
    for cases in f.values():
        X = np.concatenate([X for X, _ in cases])
        y = np.concatenate([y for _, y in cases])
        K = np.unique(y).size
        terms.append(
            math.log(_slow_hscore(X, y) / (K - 1)) - math.log(_slow_consistency(cases, centre))
        )
    expected = float(np.mean(terms))
    assert _quiet(ccfv_hscore_score, f, centre=centre) == pytest.approx(expected, rel=1e-7)
    name = "ccfv-hscore" if centre else "ccfv-hscore[centre=false]"
    assert _quiet(get_estimator(name), f) == pytest.approx(expected, rel=1e-7)


def test_hscore_combination_subset():
    f = _features()
    tables = _quiet(ccfv_hscore_tables, f, discriminability="reg-hscore")
    # centred once on the mean of all cases (the H-score does not depend on the centre)
    subset = {l: [_slow_centre(cases)[i] for i in (0, 1, 3)] for l, cases in f.items()}
    assert _quiet(tables.score, [3, 0, 1]) == pytest.approx(
        _quiet(ccfv_hscore_score, subset, discriminability="reg-hscore", centre=False), rel=1e-10
    )


def test_hscore_combination_bad_option():
    with pytest.raises(ccfv.UserError, match="discriminability"):
        ccfv_hscore_score(_features(), discriminability="logme")


# --- properties the diagnosis states for any features ---------------------------------------


def _shrink(features, a):
    out = {}
    for layer, cases in features.items():
        new = []
        for X, y in cases:
            Z = X.copy()
            for k in np.unique(y):
                m = X[y == k].mean(axis=0)
                Z[y == k] = m + a * (X[y == k] - m)
            new.append((Z, y))
        out[layer] = new
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shrinking_within_class_spread_lowers_paper_consistency(seed):
    """Pulling every sample towards its class mean within its case by a factor a (what
    interpolating a map from a coarser grid does to neighbouring voxels of one class) scales
    every class covariance by a^2 and keeps the means, so each pair's
    W2^2 = |mu_i - mu_j|^2 + a^2 (W2^2 - |mu_i - mu_j|^2): the paper's C_cons falls, for any
    features. A coarse hooked layer is judged more consistent for a reason unrelated to the
    target."""
    f = _features(seed)
    c = [_quiet(ccfv_parts, _shrink(f, a)).layers[0].consistency for a in (1.0, 0.5, 0.0)]
    assert c[0] > c[1] > c[2]
    # a = 0: every class is a point per case, W2 = the distance of the class means
    cases = f["layer0"]
    expected = 0.0
    for k in (1, 2):
        means = [X[y == k].mean(axis=0) for X, y in cases]
        expected += np.mean(
            [
                np.linalg.norm(means[i] - means[j])
                for i in range(N_CASES)
                for j in range(N_CASES)
                if i != j
            ]
        )
    assert c[2] == pytest.approx(expected, rel=1e-9)


def test_default_ccfv_depends_on_the_origin_and_the_candidates_do_not():
    """Adding one vector to every feature (a bias before a ReLU, a normalisation's shift)
    changes the default CC-FV, whose unit sphere is centred on the origin, and leaves the
    candidates, which centre each layer on its pooled target mean, unchanged."""
    f = _features()
    moved = {l: [(X + 5.0, y) for X, y in cases] for l, cases in f.items()}
    for name in ("ccfv", "ccfv-null[centre=false]", "ccfv-hscore[centre=false]"):
        assert _quiet(get_estimator(name), moved) != pytest.approx(
            _quiet(get_estimator(name), f), rel=1e-3
        )
    for name in ("ccfv-pca", "ccfv-pca[whiten=true]", "ccfv-null", "ccfv-hscore"):
        assert _quiet(get_estimator(name), moved) == pytest.approx(
            _quiet(get_estimator(name), f), rel=1e-8
        )
