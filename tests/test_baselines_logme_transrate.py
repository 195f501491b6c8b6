"""LogME and TransRate against slow textbook references, known orderings and degenerate input."""

import math
import warnings

import numpy as np
import pytest
from scipy.stats import ortho_group

from ccfv.errors import CCFVWarning, UserError
from ccfv.estimators import logme as logme_module
from ccfv.estimators.logme import _class_evidence, logme_score
from ccfv.estimators.transrate import transrate_score


def as_features(X, y, n_cases=3, layer="last"):
    """Split pooled samples into cases of a one-layer feature set (pooling restores them)."""
    parts = np.array_split(np.arange(len(y)), n_cases)
    return {
        "first": [(np.ones((len(p), 2)), y[p]) for p in parts],
        layer: [(X[p], y[p]) for p in parts],
    }


def blobs(rng, n_per_class, d, shift, n_classes=3, offset=1.0):
    """Gaussian classes: class k has mean offset + shift * e_k (not centred: LogME has no bias)."""
    Xs, ys = [], []
    for k in range(n_classes):
        mean = np.full(d, offset)
        mean[k % d] += shift
        Xs.append(rng.normal(size=(n_per_class, d)) + mean)
        ys.append(np.full(n_per_class, k))
    return np.concatenate(Xs), np.concatenate(ys)


# --------------------------------------------------------------------------------------------
# LogME
# --------------------------------------------------------------------------------------------


def naive_logme(F, y, max_iter=100, tol=1e-3):
    """Algorithm 1 of You et al. written out with D x D matrices, one class at a time."""
    n, D = F.shape
    FtF = F.T @ F
    lam = np.linalg.eigvalsh(FtF)
    values = []
    for k in np.unique(y):
        target = (y == k).astype(float)
        alpha, beta = 1.0, 1.0
        for _ in range(max_iter):
            A = alpha * np.eye(D) + beta * FtF
            m = beta * np.linalg.inv(A) @ F.T @ target
            gamma = sum(beta * l / (alpha + beta * l) for l in lam)
            new_alpha = gamma / (m @ m)
            new_beta = (n - gamma) / np.sum((target - F @ m) ** 2)
            converged = abs(new_alpha / new_beta - alpha / beta) <= tol * alpha / beta
            alpha, beta = new_alpha, new_beta
            if converged:
                break
        A = alpha * np.eye(D) + beta * FtF
        m = beta * np.linalg.inv(A) @ F.T @ target
        evidence = (
            D / 2 * math.log(alpha)
            + n / 2 * math.log(beta)
            - beta / 2 * np.sum((target - F @ m) ** 2)
            - alpha / 2 * (m @ m)
            - 0.5 * math.log(np.linalg.det(A))
            - n / 2 * math.log(2 * math.pi)
        )
        values.append(evidence / n)
    return float(np.mean(values))


def marginal_likelihood(F, target, alpha, beta):
    """log N(target; 0, I/beta + F F^T/alpha): the evidence, with n x n matrices."""
    n = len(target)
    C = np.eye(n) / beta + F @ F.T / alpha
    return float(
        -0.5
        * (
            n * math.log(2 * math.pi)
            + math.log(np.linalg.det(C))
            + target @ np.linalg.solve(C, target)
        )
    )


def svd_parts(F, target):
    U, s, _ = np.linalg.svd(F, full_matrices=False)
    x = U.T @ target
    r2 = 0.0 if len(s) == len(target) else float(np.sum((target - U @ x) ** 2))
    return s**2, x, r2


def test_logme_matches_naive_fixed_point(rng):
    X, y = blobs(rng, 60, 8, shift=1.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CCFVWarning)  # every class converges here
        value = logme_score(as_features(X, y))
    assert value == pytest.approx(naive_logme(X, y), rel=1e-8)


def test_logme_fewer_samples_than_dims_matches_naive(rng):
    X, y = blobs(rng, 10, 45, shift=2.0)  # n = 30 < D = 45
    with warnings.catch_warnings():
        warnings.simplefilter("error", CCFVWarning)
        value = logme_score(as_features(X, y), max_iter=5000)
    assert np.isfinite(value)
    assert value == pytest.approx(naive_logme(X, y, max_iter=5000), rel=1e-8)


def test_logme_evidence_is_the_marginal_likelihood_at_a_stationary_point(rng):
    X, y = blobs(rng, 25, 6, shift=1.0)
    target = (y == 1).astype(float)
    sigma, x, r2 = svd_parts(X, target)
    ev = _class_evidence(sigma, x, r2, target.sum(), len(target), max_iter=10_000, tol=1e-13)
    assert ev.status == "converged"
    assert ev.evidence == pytest.approx(marginal_likelihood(X, target, ev.alpha, ev.beta), rel=1e-9)
    # the fixed point maximises the evidence: no neighbour on a grid does better
    for da in (-0.05, 0.0, 0.05):
        for db in (-0.05, 0.0, 0.05):
            neighbour = marginal_likelihood(
                X, target, ev.alpha * math.exp(da), ev.beta * math.exp(db)
            )
            assert neighbour <= ev.evidence + 1e-9


def test_logme_ranks_separated_above_overlapping(rng):
    separated = logme_score(as_features(*blobs(rng, 50, 6, shift=5.0)))
    overlapping = logme_score(as_features(*blobs(rng, 50, 6, shift=0.2)))
    assert separated > overlapping + 0.1


def test_logme_invariant_to_rotation_and_zero_channels(rng):
    X, y = blobs(rng, 40, 5, shift=1.0)
    base = logme_score(as_features(X, y))
    Q = ortho_group.rvs(5, random_state=1)
    assert logme_score(as_features(X @ Q, y)) == pytest.approx(base, rel=1e-10)
    padded = np.hstack([X, np.zeros((len(y), 3))])  # dead ReLU channels
    assert logme_score(as_features(padded, y)) == pytest.approx(base, rel=1e-10)


def test_logme_maximised_evidence_is_scale_invariant(rng):
    # c F w with w ~ N(0, 1/alpha) is F w' with w' ~ N(0, c^2/alpha): same family of evidences
    X, y = blobs(rng, 40, 5, shift=1.0)
    exact = {"max_iter": 100_000, "tol": 1e-12}
    base = logme_score(as_features(X, y), **exact)
    for c in (1e-3, 1e3):
        assert logme_score(as_features(c * X, y), **exact) == pytest.approx(base, rel=1e-9)


def test_logme_collinear_and_tiny_classes_are_finite(rng):
    X, y = blobs(rng, 30, 4, shift=1.0)
    collinear = np.hstack([X, X[:, :2], 2 * X[:, :1] - X[:, 1:2]])
    y = y.copy()
    y[:2] = 7  # a class with two samples
    value = logme_score(as_features(collinear, y))
    assert np.isfinite(value)
    assert value == pytest.approx(naive_logme(collinear, y), rel=1e-6)


def test_logme_single_class_raises(rng):
    X = rng.normal(size=(30, 4))
    with pytest.raises(UserError, match="single class"):
        logme_score(as_features(X, np.zeros(30, dtype=int)))


def test_logme_zero_features_raise():
    y = np.repeat([0, 1], 10)
    with pytest.raises(UserError, match="every feature"):
        logme_score(as_features(np.zeros((20, 3)), y))


def test_logme_labels_copied_into_features_raise(rng):
    y = np.repeat([0, 1, 2], 15)
    onehot = (y[:, None] == np.arange(3)).astype(float)
    X = np.hstack([onehot, onehot[:, :1] + onehot[:, 1:2]])  # rank 3 < n, labels in the span
    with pytest.raises(UserError, match="exact linear function"):
        logme_score(as_features(X, y))


def test_logme_class_orthogonal_to_features_is_the_weight_free_limit():
    # class 1 = rows (1, 0) and (-1, 0): F^T y = 0, no weight helps this class
    F = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.5, 2.0], [0.0, -1.0], [-2.0, 3.0]])
    target = np.array([1.0, 1.0, 0, 0, 0, 0])
    sigma, x, r2 = svd_parts(F, target)
    ev = _class_evidence(sigma, x, r2, 2.0, 6, max_iter=100, tol=1e-3)
    n = 6
    expected = n / 2 * (math.log(n / 2.0) - 1 - math.log(2 * math.pi))
    assert ev.evidence == pytest.approx(expected, rel=1e-9)
    assert np.isfinite(logme_score(as_features(F, target.astype(int), n_cases=2)))


def test_logme_drift_to_the_weight_free_limit_is_cut_short(monkeypatch):
    noise = np.random.default_rng(0)  # features unrelated to the labels
    features = {"last": [(noise.normal(size=(50, 8)), noise.integers(0, 3, 50)) for _ in range(3)]}
    with warnings.catch_warnings():
        warnings.simplefilter("error", CCFVWarning)
        quick = logme_score(features)
    monkeypatch.setattr(logme_module, "_T_ASYMPTOTIC", math.inf)  # plain updates only
    with pytest.warns(CCFVWarning, match="did not converge"):
        logme_score(features)  # they drift for ~1000 iterations
    assert quick == pytest.approx(logme_score(features, max_iter=100_000), rel=1e-12)


def test_logme_nonconvergence_warns_and_stays_finite(rng):
    X, y = blobs(rng, 10, 45, shift=2.0)
    with pytest.warns(CCFVWarning, match="did not converge"):
        value = logme_score(as_features(X, y), max_iter=3)
    assert np.isfinite(value)
    assert value == pytest.approx(naive_logme(X, y, max_iter=3), rel=1e-8)


@pytest.mark.parametrize("options", [{"max_iter": 0}, {"tol": 0.0}, {"tol": float("nan")}])
def test_logme_bad_options(rng, options):
    X, y = blobs(rng, 5, 3, shift=1.0)
    with pytest.raises(UserError):
        logme_score(as_features(X, y), **options)


def test_logme_uses_the_last_layer_by_default(rng):
    X, y = blobs(rng, 20, 4, shift=1.0)
    features = as_features(X, y)
    assert logme_score(features) == logme_score(features, layer="last")
    assert logme_score(features) != logme_score(features, layer="first")


# --------------------------------------------------------------------------------------------
# TransRate
# --------------------------------------------------------------------------------------------


def naive_coding_rate(Z, eps):
    n, d = Z.shape
    return 0.5 * math.log(np.linalg.det(np.eye(d) + Z.T @ Z / (n * eps)))


def naive_transrate(X, y, eps=1e-4):
    Z = X - X.mean(axis=0)
    class_rates = [naive_coding_rate(Z[y == k], eps) for k in np.unique(y)]
    return naive_coding_rate(Z, eps) - sum(class_rates) / len(class_rates)


@pytest.mark.parametrize("shape", [(50, 6), (8, 30)])  # n > d and n < d
def test_transrate_matches_naive(rng, shape):
    n_per_class, d = shape
    X, y = blobs(rng, n_per_class, d, shift=1.0)
    X *= 0.05  # keep det() of the reference finite
    assert transrate_score(as_features(X, y)) == pytest.approx(naive_transrate(X, y), rel=1e-8)
    assert transrate_score(as_features(X, y), eps=0.3) == pytest.approx(
        naive_transrate(X, y, eps=0.3), rel=1e-8
    )


def test_transrate_ranks_separated_above_overlapping(rng):
    separated = transrate_score(as_features(*blobs(rng, 50, 6, shift=5.0)))
    overlapping = transrate_score(as_features(*blobs(rng, 50, 6, shift=0.2)))
    assert separated > overlapping + 0.5


def test_transrate_invariant_to_rotation_and_translation(rng):
    X, y = blobs(rng, 30, 5, shift=1.0)
    base = transrate_score(as_features(X, y))
    Q = ortho_group.rvs(5, random_state=2)
    moved = X @ Q + rng.normal(size=5) * 10
    assert transrate_score(as_features(moved, y)) == pytest.approx(base, rel=1e-9)


def test_transrate_collinear_and_tiny_classes(rng):
    X, y = blobs(rng, 20, 4, shift=1.0)
    X = np.hstack([X, X[:, :1] + X[:, 1:2], np.full((len(y), 1), 3.0)])
    y = y.copy()
    y[:2] = 9  # a class with two samples
    value = transrate_score(as_features(X, y))
    assert np.isfinite(value)
    assert value == pytest.approx(naive_transrate(X, y), rel=1e-8)


def test_transrate_constant_features_score_zero():
    y = np.repeat([0, 1], 10)
    assert transrate_score(as_features(np.full((20, 3), 2.5), y)) == 0.0


def test_transrate_single_class_and_bad_eps_raise(rng):
    X = rng.normal(size=(30, 4))
    with pytest.raises(UserError, match="single class"):
        transrate_score(as_features(X, np.ones(30, dtype=int)))
    with pytest.raises(UserError, match="eps"):
        transrate_score(as_features(X, np.repeat([0, 1], 15)), eps=0.0)
