"""The exact speed-ups of issue 16, item 5, against the code paths they replaced.

* CC-FV's W2 pairs grouped by factor rank (:func:`ccfv.estimators.gaussian.w2_squared_pairs`)
  against the earlier zero-padded path, kept in ``tests/slow_reference.py``, and against the
  per-pair ``sqrtm`` formula; threaded against serial; the serial switch for small sets.
* The BLAS thread limits (:mod:`ccfv.estimators._threads`): that they hold inside every
  registered estimator, that they are restored afterwards, and that no value depends on them.
"""

import sys
import types
import warnings
from functools import partial

import numpy as np
import pytest
import slow_reference as slow
from threadpoolctl import threadpool_info, threadpool_limits

import ccfv
from ccfv.estimators import _threads, gaussian
from ccfv.estimators.gaussian import fit_gaussian, w2_squared_pairs
from ccfv.estimators.registry import ESTIMATORS


def _samples(rng, counts, d):
    """One sample matrix per count: Gaussian, a random scale and offset each."""
    return [
        rng.normal(size=(n, d)) * rng.uniform(0.5, 1.5) + 0.3 * rng.normal(size=d) for n in counts
    ]


# (sample counts per case, dim): ranks min(n - 1, d) equal, mixed, mixed around d, with a
# rank-0 factor (2 equal samples) and a rank-1 one
SETS = {
    "equal ranks, n < d": ([8] * 7, 12),
    "equal ranks, n > d": ([30] * 6, 7),
    "mixed ranks, n < d": ([2, 3, 5, 8, 8, 13, 4, 11], 16),
    "mixed ranks around d": ([5, 40, 7, 40, 12, 9, 60], 10),
}


@pytest.mark.parametrize("name", sorted(SETS))
def test_grouped_pairs_equal_padded_path(rng, name):
    counts, d = SETS[name]
    gaussians = [fit_gaussian(X) for X in _samples(rng, counts, d)]
    got = w2_squared_pairs(gaussians, workers=1)
    want = slow.w2_squared_pairs_padded(gaussians)
    scale = max(g.trace for g in gaussians)
    assert got.shape == want.shape == (len(counts) * (len(counts) - 1) // 2,)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12 * scale)


def test_grouped_pairs_handle_a_rank_zero_factor(rng):
    samples = _samples(rng, [6, 9, 4, 7], 5)
    samples.insert(2, np.tile(rng.normal(size=(1, 5)), (3, 1)))  # 3 equal samples: rank 0
    gaussians = [fit_gaussian(X) for X in samples]
    assert gaussians[2].factor.shape[1] == 0
    got = w2_squared_pairs(gaussians, workers=1)
    np.testing.assert_allclose(got, slow.w2_squared_pairs_padded(gaussians), rtol=1e-10)
    # a point mass against a Gaussian: W2^2 = |mu_i - mu_j|^2 + Tr S_j
    pairs = {(i, j): k for k, (i, j) in enumerate(zip(*np.triu_indices(5, 1)))}
    for j in (3, 4):
        g0, g1 = gaussians[2], gaussians[j]
        assert got[pairs[(2, j)]] == pytest.approx(
            np.sum((g0.mean - g1.mean) ** 2) + g1.trace, rel=1e-12
        )


@pytest.mark.parametrize("name", ["mixed ranks, n < d", "mixed ranks around d"])
def test_grouped_pairs_match_sqrtm_formula(rng, name):
    """W2 of every pair from the raw samples with scipy's sqrtm (the method's formula)."""
    counts, d = SETS[name]
    samples = _samples(rng, counts, d)
    got = np.sqrt(np.maximum(w2_squared_pairs([fit_gaussian(X) for X in samples]), 0.0))
    want = [
        slow.w2_paper(samples[i], samples[j])
        for i in range(len(samples))
        for j in range(i + 1, len(samples))
    ]
    # sqrtm of singular covariances (n < d) is only good to ~1e-8
    np.testing.assert_allclose(got, want, rtol=1e-6)


class _CountingPool(gaussian.ThreadPoolExecutor):
    started = 0

    def __init__(self, *args, **kwargs):
        type(self).started += 1
        super().__init__(*args, **kwargs)


def test_threads_give_the_serial_values_and_small_sets_stay_serial(rng, monkeypatch):
    gaussians = [fit_gaussian(X) for X in _samples(rng, [5, 40, 7, 40, 12, 9, 60, 33], 10)]
    monkeypatch.setattr(gaussian, "ThreadPoolExecutor", _CountingPool)
    serial = w2_squared_pairs(gaussians, workers=1)
    w2_squared_pairs(gaussians, workers=3)  # 28 pairs of <= 10 x 10 products: serial
    assert _CountingPool.started == 0
    monkeypatch.setattr(gaussian, "_MIN_PARALLEL_WORK", 0)
    threaded = w2_squared_pairs(gaussians, workers=3)
    assert _CountingPool.started == 1
    assert np.array_equal(threaded, serial)


def _blas_threads():
    return sorted({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"})


def test_limited_holds_and_restores_the_blas_threads():
    with threadpool_limits(limits=2, user_api="blas"):
        assert _blas_threads() == [2]
        with _threads.limited(1, "blas"):
            assert _blas_threads() == [1]
        assert _blas_threads() == [2]
        with _threads.limited(None, "blas"):
            assert _blas_threads() == [2]


def test_one_blas_thread_reads_its_setting_at_each_call(monkeypatch):
    seen = _threads.one_blas_thread(_blas_threads)
    with threadpool_limits(limits=2, user_api="blas"):
        assert seen() == [1]
        monkeypatch.setattr(_threads, "BLAS_THREADS", None)
        assert seen() == [2]


def test_controller_is_kept_until_a_watched_library_is_imported(monkeypatch):
    first = _threads.controller()
    assert _threads.controller() is first
    monkeypatch.setattr(_threads, "WATCHED", (*_threads.WATCHED, "fake_native_pool"))
    monkeypatch.setitem(sys.modules, "fake_native_pool", types.ModuleType("fake_native_pool"))
    assert _threads.controller() is not first


def _entry_point(name):
    """The function a registered estimator runs (its tables where it has them)."""
    estimator = ESTIMATORS[name]
    func = estimator.tables or estimator.func
    return func.func if isinstance(func, partial) else func


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_every_estimator_runs_on_one_blas_thread(name):
    func = _entry_point(name)
    if name == "nleep":  # its own option, all thread pools, default 1
        import inspect

        assert inspect.signature(func).parameters["threads"].default == 1
        return
    wrapper = _threads.one_blas_thread(len)
    assert func.__code__ is wrapper.__code__, f"{name}: not wrapped by one_blas_thread"


def test_an_estimator_sees_one_blas_thread_inside(monkeypatch):
    from ccfv.estimators import logme

    seen = []
    inner = logme.left_projections

    def recording(*args):
        seen.append(_blas_threads())
        return inner(*args)

    monkeypatch.setattr(logme, "left_projections", recording)
    features = {
        "layer": [
            (X, np.arange(len(X)) % 3) for X in _samples(np.random.default_rng(0), [30, 30], 6)
        ]
    }
    with threadpool_limits(limits=2, user_api="blas"):
        ccfv.logme_score(features)
        assert _blas_threads() == [2]
    assert seen == [[1]]


def test_values_do_not_depend_on_the_blas_threads(monkeypatch):
    rng = np.random.default_rng(3)
    features, predictions = {}, []
    for l, d in enumerate((20, 9)):
        cases = []
        for _ in range(4):
            y = np.repeat(np.arange(3), 40)
            cases.append((rng.normal(size=(y.size, d)) + 1.5 * y[:, None] * rng.normal(size=d), y))
        features[f"layer{l}"] = cases
    for X, _ in features["layer1"]:
        P = np.exp(X[:, :4])
        predictions.append(P / P.sum(axis=1, keepdims=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ccfv.CCFVWarning)
        one = {
            name: e(features, predictions if e.needs_predictions else None)
            for name, e in ESTIMATORS.items()
        }
        monkeypatch.setattr(_threads, "BLAS_THREADS", None)
        with threadpool_limits(limits=2, user_api="blas"):
            free = {
                name: e(features, predictions if e.needs_predictions else None)
                for name, e in ESTIMATORS.items()
            }
    for name in ESTIMATORS:
        assert free[name] == pytest.approx(one[name], rel=1e-9, abs=1e-12), name
