"""GBC, H-score and shrinkage H-score: slow textbook references, orderings, degenerate input."""

import math

import numpy as np
import pytest

from ccfv.errors import UserError
from ccfv.estimators.gbc import VARIANCE_FLOOR, gbc_score
from ccfv.estimators.hscore import _ledoit_wolf_shrinkage, hscore, regularized_hscore


def as_features(X, y, n_cases=3):
    parts = np.array_split(np.arange(len(y)), n_cases)
    return {
        "early": [(np.ones((len(p), 2)), y[p]) for p in parts],
        "last": [(X[p], y[p]) for p in parts],
    }


def blobs(rng, n_per_class, d, shift, n_classes=3, mixing=None):
    """Gaussian classes, class k's mean shifted by ``shift`` along axis k; optional mixing."""
    Xs, ys = [], []
    for k in range(n_classes):
        mean = np.zeros(d)
        mean[k % d] = shift
        Xs.append(rng.normal(size=(n_per_class, d)) + mean)
        ys.append(np.full(n_per_class, k))
    X = np.concatenate(Xs)
    return (X if mixing is None else X @ mixing), np.concatenate(ys)


# --------------------------------------------------------------------------------------------
# GBC
# --------------------------------------------------------------------------------------------


def naive_gbc(X, y, covariance="diagonal"):
    """Ordered pairs, full d x d covariance matrices, det and inv: the paper's Eq. as written."""
    n, d = X.shape
    pooled = X.var(axis=0)
    classes = np.unique(y)
    gauss = {}
    for k in classes:
        rows = X[y == k]
        mu = rows.mean(axis=0)
        v = np.array(
            [max(np.mean((rows[:, j] - mu[j]) ** 2), VARIANCE_FLOOR * pooled[j]) for j in range(d)]
        )
        if covariance == "spherical":
            v = np.full(d, v.mean())
        gauss[k] = (mu, np.diag(v))
    total = 0.0
    for i in classes:
        for j in classes:
            if i == j:
                continue
            (mi, Si), (mj, Sj) = gauss[i], gauss[j]
            S = (Si + Sj) / 2
            diff = mi - mj
            dets = np.linalg.det(Si) * np.linalg.det(Sj)
            db = diff @ np.linalg.inv(S) @ diff / 8 + 0.5 * math.log(
                np.linalg.det(S) / math.sqrt(dets)
            )
            total += math.exp(-db)
    return -total


def naive_pca(X, dim):
    Xc = X - X.mean(axis=0)
    w, V = np.linalg.eigh(np.cov(Xc, rowvar=False))
    return Xc @ V[:, np.argsort(w)[::-1][:dim]]


@pytest.mark.parametrize("covariance", ["diagonal", "spherical"])
def test_gbc_matches_naive(rng, covariance):
    mixing = rng.normal(size=(7, 7))
    X, y = blobs(rng, 30, 7, shift=1.5, mixing=mixing)
    y = y.copy()
    y[:1] = 5  # a class with 1 sample: floored
    value = gbc_score(as_features(X, y), covariance=covariance, pca_dim=None)
    assert value == pytest.approx(naive_gbc(X, y, covariance), rel=1e-8)
    reduced = gbc_score(as_features(X, y), covariance=covariance, pca_dim=3)
    assert reduced == pytest.approx(naive_gbc(naive_pca(X, 3), y, covariance), rel=1e-8)


def test_gbc_default_reduces_to_64_components(rng):
    X, y = blobs(rng, 40, 80, shift=1.0)
    assert gbc_score(as_features(X, y)) == pytest.approx(naive_gbc(naive_pca(X, 64), y), rel=1e-8)
    small, ys = blobs(rng, 40, 10, shift=1.0)  # 10 <= 64 channels: left as they are
    assert gbc_score(as_features(small, ys)) == pytest.approx(naive_gbc(small, ys), rel=1e-8)


@pytest.mark.parametrize("covariance", ["diagonal", "spherical"])
def test_gbc_ranks_separated_above_overlapping(rng, covariance):
    separated = gbc_score(as_features(*blobs(rng, 50, 5, shift=6.0)), covariance=covariance)
    overlapping = gbc_score(as_features(*blobs(rng, 50, 5, shift=0.2)), covariance=covariance)
    assert -6.0 <= overlapping < separated - 1.0
    assert separated <= 0.0


def test_gbc_diagonal_is_invariant_to_channel_scales(rng):
    X, y = blobs(rng, 40, 5, shift=1.0)
    base = gbc_score(as_features(X, y), pca_dim=None)
    scaled = X * np.array([1e-3, 1.0, 7.0, 1e4, 0.5]) + 3.0
    assert gbc_score(as_features(scaled, y), pca_dim=None) == pytest.approx(base, rel=1e-10)


def test_gbc_constant_channels_and_identical_classes(rng):
    X, y = blobs(rng, 30, 4, shift=1.0)
    base = gbc_score(as_features(X, y), pca_dim=None)
    padded = np.hstack([X, np.zeros((len(y), 2))])  # dead channels carry nothing
    assert gbc_score(as_features(padded, y), pca_dim=None) == pytest.approx(base, rel=1e-12)
    constant = np.full((len(y), 4), 1.5)  # every class the same point
    assert gbc_score(as_features(constant, y)) == pytest.approx(-6.0)


@pytest.mark.parametrize("covariance", ["diagonal", "spherical"])
def test_gbc_delicate_inputs_are_finite(rng, covariance):
    X, y = blobs(rng, 5, 40, shift=2.0)  # n = 15 < d = 40
    assert np.isfinite(gbc_score(as_features(X, y), covariance=covariance))
    assert np.isfinite(gbc_score(as_features(X, y), covariance=covariance, pca_dim=None))
    X, y = blobs(rng, 20, 4, shift=1.0)
    collinear = np.hstack([X, X[:, :1], X[:, :1] - 2 * X[:, 1:2]])
    y = y.copy()
    y[:2] = 8  # a class with two samples
    value = gbc_score(as_features(collinear, y), covariance=covariance, pca_dim=None)
    assert value == pytest.approx(naive_gbc(collinear, y, covariance), rel=1e-8)
    assert np.isfinite(gbc_score(as_features(collinear, y), covariance=covariance, pca_dim=5))


def test_gbc_errors(rng):
    X = rng.normal(size=(20, 3))
    with pytest.raises(UserError, match="single class"):
        gbc_score(as_features(X, np.zeros(20, dtype=int)))
    y = np.repeat([0, 1], 10)
    with pytest.raises(UserError, match="covariance"):
        gbc_score(as_features(X, y), covariance="full")
    for bad in (0, 2.5, True):
        with pytest.raises(UserError, match="pca_dim"):
            gbc_score(as_features(X, y), pca_dim=bad)


# --------------------------------------------------------------------------------------------
# H-score and shrinkage H-score
# --------------------------------------------------------------------------------------------


def class_mean_features(X, y):
    g = np.zeros_like(X)
    for k in np.unique(y):
        g[y == k] = X[y == k].mean(axis=0)
    return g


def naive_hscore(X, y):
    """Bao et al.: tr(pinv(cov f) cov g), np.cov for both (divisor n - 1)."""
    covf = np.cov(X, rowvar=False)
    covg = np.cov(class_mean_features(X, y), rowvar=False)
    return float(np.trace(np.linalg.pinv(covf, rcond=1e-10) @ covg))


def naive_regularized_hscore(X, y):
    """Ibrahim et al. with scikit-learn's Ledoit-Wolf estimate; cov g with divisor n."""
    LedoitWolf = pytest.importorskip("sklearn.covariance").LedoitWolf

    lw = LedoitWolf().fit(X)
    covg = np.cov(class_mean_features(X, y), rowvar=False, bias=True)
    a = lw.shrinkage_
    return float(np.trace(np.linalg.inv(lw.covariance_) @ ((1 - a) * covg)))


def test_hscore_matches_naive(rng):
    X, y = blobs(rng, 40, 6, shift=1.0, mixing=rng.normal(size=(6, 6)))
    assert hscore(as_features(X, y)) == pytest.approx(naive_hscore(X, y), rel=1e-8)


def test_regularized_hscore_matches_sklearn_ledoit_wolf(rng):
    pytest.importorskip("sklearn")
    from sklearn.covariance import ledoit_wolf_shrinkage

    for n_per_class, d in [(40, 6), (6, 25)]:  # n > d and n < d
        X, y = blobs(rng, n_per_class, d, shift=1.0, mixing=rng.normal(size=(d, d)))
        Xc = X - X.mean(axis=0)
        lam = np.linalg.svd(Xc, compute_uv=False) ** 2
        assert _ledoit_wolf_shrinkage(Xc, lam) == pytest.approx(ledoit_wolf_shrinkage(X), rel=1e-8)
        value = regularized_hscore(as_features(X, y))
        assert value == pytest.approx(naive_regularized_hscore(X, y), rel=1e-8)
        # TLlib's regularized_h_score divides cov g by n - 1 instead of n: n/(n-1) apart
        from sklearn.covariance import LedoitWolf

        lw = LedoitWolf().fit(X)
        covg = np.cov(class_mean_features(X, y), rowvar=False)
        tllib = np.trace(np.linalg.pinv(lw.covariance_, rcond=1e-15) @ ((1 - lw.shrinkage_) * covg))
        n = len(y)
        assert value * n / (n - 1) == pytest.approx(tllib, rel=1e-8)


@pytest.mark.parametrize("score", [hscore, regularized_hscore])
def test_hscores_rank_separated_above_overlapping(rng, score):
    separated = score(as_features(*blobs(rng, 50, 5, shift=5.0)))
    overlapping = score(as_features(*blobs(rng, 50, 5, shift=0.2)))
    assert separated > overlapping + 1.0
    assert 0.0 <= overlapping and separated <= 2.0 + 1e-12  # 0 <= H <= K - 1


def test_hscore_invariances_and_collinear_channels(rng):
    X, y = blobs(rng, 30, 5, shift=1.0)
    base = hscore(as_features(X, y))
    A = rng.normal(size=(5, 5))  # any invertible map
    assert hscore(as_features(X @ A + 4.0, y)) == pytest.approx(base, rel=1e-9)
    redundant = np.hstack([X, X[:, :2] @ rng.normal(size=(2, 3)), np.full((len(y), 1), 2.0)])
    assert hscore(as_features(redundant, y)) == pytest.approx(base, rel=1e-9)
    assert np.isfinite(regularized_hscore(as_features(redundant, y)))


def test_hscore_saturates_when_samples_are_fewer_than_dims(rng):
    X, y = blobs(rng, 6, 30, shift=0.0)  # pure noise, n = 18 <= d = 30
    assert hscore(as_features(X, y)) == pytest.approx(2.0, rel=1e-9)  # K - 1, whatever X
    shrunk = regularized_hscore(as_features(X, y))
    assert 0.0 < shrunk < 2.0
    assert shrunk == pytest.approx(naive_regularized_hscore(X, y), rel=1e-8)


def test_hscores_tiny_classes_and_constant_features(rng):
    X, y = blobs(rng, 20, 4, shift=1.0)
    y = y.copy()
    y[:2] = 6  # a class with two samples
    assert hscore(as_features(X, y)) == pytest.approx(naive_hscore(X, y), rel=1e-8)
    assert np.isfinite(regularized_hscore(as_features(X, y)))
    constant = np.full((len(y), 3), -1.0)
    assert hscore(as_features(constant, y)) == 0.0
    assert regularized_hscore(as_features(constant, y)) == 0.0


@pytest.mark.parametrize("score", [hscore, regularized_hscore])
def test_hscores_single_class_raises(rng, score):
    with pytest.raises(UserError, match="single class"):
        score(as_features(rng.normal(size=(20, 3)), np.full(20, 2)))
