"""N-LEEP, PARC and SFDA: against slow references, on constructed features, and bad input."""

import math

import numpy as np
import pytest
import scipy.linalg
from scipy.stats import spearmanr
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture
from sklearn.preprocessing import StandardScaler

from ccfv.errors import UserError
from ccfv.estimators.leep import leep_score
from ccfv.estimators.nleep import nleep_score
from ccfv.estimators.parc import _stratified_subsample, parc_score
from ccfv.estimators.sfda import sfda_score

SCORES = {"nleep": nleep_score, "parc": parc_score, "sfda": sfda_score}


def make_features(
    rng, n_cases=3, d=8, per_class=(12, 8, 10), separation=1.0, scale=1.0, class_ids=None
):
    """Gaussian classes around random class centres, ``separation`` apart on average."""
    class_ids = list(range(len(per_class))) if class_ids is None else list(class_ids)
    centres = rng.normal(size=(len(per_class), d)) * separation
    cases = []
    for _ in range(n_cases):
        X = np.concatenate([centres[k] + rng.normal(size=(m, d)) for k, m in enumerate(per_class)])
        y = np.concatenate([np.full(m, class_ids[k]) for k, m in enumerate(per_class)])
        order = rng.permutation(len(y))
        cases.append((scale * X[order], y[order]))
    return {"layer0": cases}


def pooled(features, layer="layer0"):
    return (
        np.concatenate([X for X, _ in features[layer]]),
        np.concatenate([y for _, y in features[layer]]),
    )


def split_like(features, P, layer="layer0"):
    sizes = np.cumsum([len(y) for _, y in features[layer]])[:-1]
    return np.split(P, sizes)


# --- N-LEEP ------------------------------------------------------------------------------------


def test_nleep_is_leep_of_the_gmm_posteriors(rng):
    """PCA to 80 % of the variance, a 5-per-class GMM, its posteriors fed to LEEP."""
    features = make_features(rng, d=10)
    X, y = pooled(features)
    reduced = PCA(n_components=0.8, svd_solver="full").fit_transform(X)
    gmm = GaussianMixture(n_components=5 * 3, random_state=7).fit(reduced)
    expected = leep_score(features, split_like(features, gmm.predict_proba(reduced)))
    assert nleep_score(features, seed=7) == pytest.approx(expected, rel=1e-10)
    assert nleep_score(features, seed=7) == nleep_score(features, seed=7)  # deterministic


@pytest.mark.parametrize(
    "d, per_class, relu",
    [(10, (12, 8, 10), False), (6, (300, 200, 250), True), (24, (150, 90, 120), True)],
)
def test_nleep_fast_em_matches_scikit_learns_mixture(rng, d, per_class, relu):
    """The batched EM gives scikit-learn's GaussianMixture posteriors: the same score to 1e-10
    relative, under one BLAS thread or the process's setting."""
    from ccfv.estimators.nleep import _em_posteriors

    features = make_features(rng, d=d, per_class=per_class)
    if relu:  # skewed, clipped features, as after a ReLU: the EM needs more iterations
        features = {
            "layer0": [
                (np.maximum(X, 0.3) + 0.01 * rng.normal(size=X.shape), y)
                for X, y in features["layer0"]
            ]
        }
    X, y = pooled(features)
    reduced = PCA(n_components=0.8, svd_solver="full").fit_transform(X)
    gmm = GaussianMixture(n_components=15, random_state=3).fit(reduced)
    np.testing.assert_allclose(
        _em_posteriors(reduced, 15, 3), gmm.predict_proba(reduced), rtol=0, atol=1e-9
    )
    reference = nleep_score(features, seed=3, mixture="sklearn", threads=None)
    for threads in (1, None):
        assert nleep_score(features, seed=3, threads=threads) == pytest.approx(reference, rel=1e-10)
    with pytest.raises(UserError, match="mixture="):
        nleep_score(features, mixture="em")
    with pytest.raises(UserError, match="threads="):
        nleep_score(features, threads=0)


def test_nleep_options_reach_the_pca_and_the_mixture(rng):
    features = make_features(rng, d=10)
    X, y = pooled(features)
    reduced = PCA(n_components=0.5, svd_solver="full").fit_transform(X)
    gmm = GaussianMixture(n_components=2 * 3, random_state=0).fit(reduced)
    expected = leep_score(features, split_like(features, gmm.predict_proba(reduced)))
    value = nleep_score(features, variance=0.5, components_per_class=2)
    assert value == pytest.approx(expected, rel=1e-10)


def test_nleep_ranks_separated_classes_first(rng):
    values = [nleep_score(make_features(rng, separation=s)) for s in (4.0, 1.0, 0.0)]
    assert values[0] > values[1] > values[2]
    assert max(values) <= 0


@pytest.mark.parametrize("per_class,d", [((4, 4, 4), 50), ((20, 2, 15), 8), ((20, 1, 15), 8)])
def test_nleep_small_classes_and_n_below_d_are_finite(rng, per_class, d):
    value = nleep_score(make_features(rng, n_cases=2, d=d, per_class=per_class))
    assert np.isfinite(value) and value <= 0


def test_nleep_collinear_and_constant_features(rng):
    features = make_features(rng, d=4)
    doubled = {"layer0": [(np.hstack([X, X, 2 * X[:, :1]]), y) for X, y in features["layer0"]]}
    assert np.isfinite(nleep_score(doubled))
    flat = {"layer0": [(np.ones_like(X), y) for X, y in features["layer0"]]}
    with pytest.raises(UserError, match="constant"):
        nleep_score(flat)
    with pytest.raises(UserError, match="variance=1.5"):
        nleep_score(features, variance=1.5)
    with pytest.raises(UserError, match="components_per_class=0"):
        nleep_score(features, components_per_class=0)


# --- PARC --------------------------------------------------------------------------------------


def parc_reference(X, y, pca_dim=32):
    """The authors' pipeline (PCA, StandardScaler, 1 - corrcoef, spearman x 100), pair by pair.

    scikit-learn's exact PCA; every pair's correlation from np.corrcoef of the two rows. Both
    RDMs are rounded to 12 decimals (as parc_score does), so that values equal in exact
    arithmetic tie: np.corrcoef returns 0 or 2e-16 for identical one-hot rows, and Spearman
    would rank that round-off as a real difference.
    """
    if pca_dim is not None:
        X = PCA(n_components=min(pca_dim, *X.shape), svd_solver="full").fit_transform(X)
    F = StandardScaler().fit_transform(X)
    onehot = np.eye(int(y.max()) + 1)[y]
    features_rdm, labels_rdm = [], []
    for i in range(len(y)):
        for j in range(i + 1, len(y)):
            features_rdm.append(round(1 - np.corrcoef(F[i], F[j])[0, 1], 12))
            labels_rdm.append(round(1 - np.corrcoef(onehot[i], onehot[j])[0, 1], 12))
    return 100 * spearmanr(features_rdm, labels_rdm)[0]


@pytest.mark.parametrize("pca_dim", [32, 5, None])
def test_parc_matches_reference(rng, pca_dim):
    features = make_features(rng, n_cases=2, d=12, per_class=(15, 6, 9), separation=0.7)
    X, y = pooled(features)
    expected = parc_reference(X, y, pca_dim)
    assert parc_score(features, pca_dim=pca_dim) == pytest.approx(expected, rel=1e-8)


@pytest.mark.parametrize("pca_dim", [4, None])
def test_parc_matches_reference_with_ties_and_class_ids(rng, pca_dim):
    """Duplicated samples (flat background) give tied dissimilarities; any class ids."""
    features = make_features(rng, n_cases=2, d=6, per_class=(8, 5), class_ids=(0, 7))
    X, y = pooled(features)
    X = np.vstack([X, X[:6], X[:1], X[:1]])
    y = np.concatenate([y, y[:6], y[:1], y[:1]])
    expected = parc_reference(X, np.unique(y, return_inverse=True)[1], pca_dim)
    assert parc_score({"l": [(X, y)]}, pca_dim=pca_dim) == pytest.approx(expected, rel=1e-8)


def test_parc_one_sort_equals_the_two_sort_ranks(rng):
    """The one-sort rank sum (default) and the earlier two sorts + binary searches give the
    same PARC exactly, ties (duplicated samples) included."""
    from ccfv.estimators.parc import _parc, _reduce

    features = make_features(rng, n_cases=3, d=10, per_class=(40, 25, 30), separation=0.8)
    X, y = pooled(features)
    X = np.vstack([X, X[:20], X[:3]])
    labels = np.unique(np.concatenate([y, y[:20], y[:3]]), return_inverse=True)[1]
    for pca_dim in (5, None):
        F = _reduce(X, pca_dim)
        assert _parc(F, labels) == _parc(F, labels, ranks="two-sorts")


def test_parc_subsamples_above_the_cap(rng):
    features = make_features(rng, n_cases=1, d=6, per_class=(140, 40, 4), separation=0.5)
    X, y = pooled(features)
    keep = _stratified_subsample(np.unique(y, return_inverse=True)[1], 60, seed=3)
    assert len(keep) == 60 and len(np.unique(keep)) == 60
    counts = np.bincount(y[keep])
    assert counts.tolist() == [45, 13, 2]  # shares 45.65, 13.04, 1.30 -> >= 2
    assert len(_stratified_subsample(np.unique(y, return_inverse=True)[1], 60, seed=4)) == 60
    expected = parc_reference(X[keep], y[keep], 32)
    value = parc_score(features, max_samples=60, seed=3)
    assert value == pytest.approx(expected, rel=1e-8)
    assert value == parc_score(features, max_samples=60, seed=3)
    assert value != parc_score(features, max_samples=60, seed=4)
    assert parc_score(features, max_samples=None) == parc_score(features, max_samples=len(y))


@pytest.mark.parametrize(
    "counts,size,expected",
    [
        ((50, 50, 50), 20, [7, 7, 6]),  # 6.67 each: the largest remainders get the rest
        ((100, 1, 1, 50), 20, [12, 1, 1, 6]),  # the singletons are kept, the largest class trimmed
        ((30, 3), 10, [8, 2]),  # 9.09 / 0.91 -> at least 2 of the small class
    ],
)
def test_stratified_subsample_counts(counts, size, expected):
    labels = np.repeat(np.arange(len(counts)), counts)[::-1].copy()
    keep = _stratified_subsample(labels, size, seed=0)
    assert np.all(np.diff(keep) > 0) and len(keep) == size
    assert np.bincount(labels[keep], minlength=len(counts)).tolist() == expected


def test_parc_default_cap_on_a_realistic_feature_set(rng):
    """20 cases x 3 classes x 100 voxels = 6000 samples: scored on 3000, finitely."""
    features = make_features(rng, n_cases=20, d=16, per_class=(100, 100, 100))
    value = parc_score(features)
    assert np.isfinite(value) and -100 <= value <= 100


def test_parc_ranks_separated_classes_first(rng):
    values = [parc_score(make_features(rng, separation=s)) for s in (3.0, 1.0, 0.0)]
    assert values[0] > values[1] > values[2]
    assert abs(values[2]) < 5  # chance level ~ 0


def test_parc_ignores_duplicated_channels(rng):
    """Collinear channels: PCA scores are unchanged, so is PARC; n < d is fine too."""
    features = make_features(rng, n_cases=2, d=30, per_class=(5, 4, 6))
    doubled = {"layer0": [(np.hstack([X, X]), y) for X, y in features["layer0"]]}
    assert parc_score(doubled) == pytest.approx(parc_score(features), rel=1e-8)
    assert np.isfinite(parc_score(features, pca_dim=None))


def test_parc_degenerate_input(rng):
    features = make_features(rng, d=5)
    rank_one = {"layer0": [(X[:, :1] * np.arange(1, 6), y) for X, y in features["layer0"]]}
    with pytest.raises(UserError, match="rank < 2"):
        parc_score(rank_one)
    one_class = make_features(rng, per_class=(10,))
    with pytest.raises(UserError, match="single class"):
        parc_score(one_class)
    singletons = {"layer0": [(rng.normal(size=(3, 4)), np.array([0, 1, 2]))]}
    with pytest.raises(UserError, match="no two samples share a class"):
        parc_score(singletons)
    with pytest.raises(UserError, match="pca_dim=1"):
        parc_score(features, pca_dim=1)
    with pytest.raises(UserError, match="max_samples=5"):
        parc_score(features, max_samples=5)
    two_in_a_class = make_features(rng, per_class=(12, 2, 9))
    assert np.isfinite(parc_score(two_in_a_class))


# --- SFDA --------------------------------------------------------------------------------------


def sfda_reference(X, y, log=True):
    """The released algorithm, literally: scatter matrices class by class, the generalised
    eigenproblem of (S_b, S_w), scores in the Fisher space, ConfMix sample by sample."""
    X = X.copy()
    classes = sorted(set(int(v) for v in y))
    index = {c: k for k, c in enumerate(classes)}
    t = np.array([index[int(v)] for v in y])
    n, d = X.shape
    C = len(classes)

    def shrink(S, lam):
        return (1 - lam) * S + lam * np.trace(S) / d * np.eye(d)

    def fit_predict(X, lam=None):
        priors = np.array([np.mean(t == k) for k in range(C)])
        means = np.array([X[t == k].mean(axis=0) for k in range(C)])
        Sw = sum(priors[k] * np.atleast_2d(np.cov(X[t == k].T, bias=True)) for k in range(C))
        if lam is None:
            lam = max(math.exp(-5 * scipy.linalg.eigh(Sw, eigvals_only=True).max()), 1e-10)
        St = np.cov(X.T, bias=True)
        Sb = shrink(St, lam) - shrink(Sw, lam)
        evals, V = scipy.linalg.eigh(Sb, shrink(Sw, lam))
        V = V[:, np.argsort(evals)[::-1]]
        Z, M = X @ V, means @ V  # the Fisher space
        scores = np.array(
            [
                [Z[i] @ M[k] - 0.5 * M[k] @ M[k] + math.log(priors[k]) for k in range(C)]
                for i in range(n)
            ]
        )
        P = np.exp(scores - scores.max(axis=1, keepdims=True))
        return P / P.sum(axis=1, keepdims=True), means, lam

    P, means, lam = fit_predict(X)
    soft = np.exp(P) / np.exp(P).sum(axis=1, keepdims=True)
    for i in range(n):
        k = t[i]
        others = sum(means[j] for j in range(C) if j != k) / (C - 1)
        X[i] = soft[i, k] * X[i] + (1 - soft[i, k]) * others
    P, _, _ = fit_predict(X, lam)
    p_true = np.array([P[i, t[i]] for i in range(n)])
    return float(np.mean(np.log(p_true)) if log else np.mean(p_true))


@pytest.mark.parametrize("scale", [0.2, 1.0, 3.0])  # lambda ~ 0.77, 1e-3, the 1e-10 floor
@pytest.mark.parametrize("log", [True, False])
def test_sfda_matches_reference(rng, scale, log):
    features = make_features(
        rng,
        n_cases=2,
        d=7,
        per_class=(25, 12, 18),
        separation=0.6,
        scale=scale,
        class_ids=(0, 2, 3),
    )
    X, y = pooled(features)
    expected = sfda_reference(X, y, log=log)
    assert sfda_score(features, log=log) == pytest.approx(expected, rel=1e-8)


def test_sfda_ranks_separated_classes_first(rng):
    values = [sfda_score(make_features(rng, separation=s)) for s in (3.0, 1.0, 0.0)]
    assert values[0] > values[1] > values[2]
    assert max(values) <= 0
    plain = [sfda_score(make_features(rng, separation=s), log=False) for s in (3.0, 0.0)]
    assert plain[0] > plain[1] and 0 <= plain[1] <= plain[0] <= 1


@pytest.mark.parametrize("per_class,d", [((4, 4, 4), 50), ((20, 2, 15), 8), ((20, 1, 15), 8)])
def test_sfda_small_classes_and_n_below_d_are_finite(rng, per_class, d):
    features = make_features(rng, n_cases=2, d=d, per_class=per_class)
    value = sfda_score(features)
    assert np.isfinite(value) and value <= 0
    X, y = pooled(features)
    assert value == pytest.approx(sfda_reference(X, y), rel=1e-6)


def test_sfda_collinear_and_constant_features(rng):
    features = make_features(rng, d=4, scale=5.0)  # lambda at its floor
    collinear = {
        "layer0": [(np.hstack([X, X, X[:, :1] - X[:, 1:2]]), y) for X, y in features["layer0"]]
    }
    assert np.isfinite(sfda_score(collinear))
    flat = {"layer0": [(np.ones_like(X), y) for X, y in features["layer0"]]}
    with pytest.raises(UserError, match="zero within-class scatter"):
        sfda_score(flat)
    with pytest.raises(UserError, match="single class"):
        sfda_score(make_features(rng, per_class=(9,)))


# --- common ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCORES))
def test_default_layer_is_the_last_and_order_is_irrelevant(rng, name):
    score = SCORES[name]
    early = make_features(rng, d=3, separation=3.0)["layer0"]
    late = make_features(rng, d=6)["layer0"]
    features = {"early": early, "late": late}
    value = score(features)
    assert value == score({"late": late}) == score(features, layer="late")
    assert score(features, layer="early") != value
    if name != "nleep":  # the GMM's k-means init sees
        shuffled = {"late": [(X[::-1], y[::-1]) for X, y in late[::-1]]}  # the sample order
        assert score(shuffled) == pytest.approx(value, rel=1e-9)
