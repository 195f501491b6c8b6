"""Thread limits for the estimators' BLAS and OpenMP pools, cheap enough to set on every call.

Why one BLAS thread: the estimators' linear algebra is many small products and LAPACK calls
on matrices of a few hundred rows and columns at most (Gram matrices of d <= 512 channels,
the r x r products of CC-FV's W2 pairs, a mixture's EM steps). A BLAS thread pool gains little
there on a quiet machine and loses a lot on a busy one: OpenBLAS's threads spin while they
wait for a core. On this project's 2-core machine with two other processes running (load
average 4, 2026-12-02), the 24,000 x 32 calls of ``benchmarks/bench_estimator.py`` took, in
CPU time, on the process's 2 BLAS threads against one: ``hscore`` 0.78 s against 0.01 s,
``parc`` 0.64 s against 0.14 s, ``sfda`` 0.13 s against 0.03 s, ``ccfv-null`` 0.51 s against
0.33 s (N-LEEP's 10-30 s per call of issue 16 had the same cause). So every registered
estimator runs its BLAS on :data:`BLAS_THREADS` threads (default 1; the values do not depend
on it), and CC-FV spreads its W2 pairs over its own worker threads
(:func:`ccfv.estimators.gaussian.w2_squared_pairs`), each on one BLAS thread.

Why a cached controller: ``threadpoolctl.threadpool_limits`` finds the loaded libraries
afresh on every call (about 5 ms here: it reads every loaded shared object), which the label
permutations of ``ccfv-null`` paid 33 times per call. One ``ThreadpoolController`` is kept
instead and made again only when one of the libraries that bring their own thread pools
(:data:`WATCHED`) has been imported since, so a limit costs about 20 microseconds.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

import scipy.linalg  # noqa: F401  (loads SciPy's own OpenBLAS before the controller looks)
from threadpoolctl import ThreadpoolController

#: BLAS threads of every estimator call (``None``: leave the process's setting, e.g. for a very
#: wide layer on an otherwise idle machine). Read at each call.
BLAS_THREADS: int | None = 1
#: Modules that load a native thread pool (BLAS, OpenMP) when imported.
WATCHED = ("numpy", "scipy.linalg", "sklearn", "torch")

_cache: dict[tuple[bool, ...], ThreadpoolController] = {}

P = ParamSpec("P")
R = TypeVar("R")


def controller() -> ThreadpoolController:
    """The thread pools of the libraries loaded now (cached while :data:`WATCHED` is)."""
    key = tuple(name in sys.modules for name in WATCHED)
    found = _cache.get(key)
    if found is None:
        _cache.clear()
        found = _cache[key] = ThreadpoolController()
    return found


@contextmanager
def limited(limits: int | None, user_api: str | None = None) -> Iterator[None]:
    """At most ``limits`` threads in the pools of ``user_api`` (``"blas"``, ``"openmp"``;
    ``None``: every pool) while the block runs; ``limits=None`` changes nothing."""
    if limits is None:
        yield
        return
    with controller().limit(limits=limits, user_api=user_api):
        yield


def one_blas_thread(func: Callable[P, R]) -> Callable[P, R]:
    """Run ``func`` with the BLAS pools held to :data:`BLAS_THREADS` threads (see the module)."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with limited(BLAS_THREADS, "blas"):
            return func(*args, **kwargs)

    return wrapper
