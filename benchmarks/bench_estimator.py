"""Time every estimator; where a faster path replaced a slower one, time both in the same run.

Usage: python benchmarks/bench_estimator.py [--quick] [--sqrtm] [--only NAME ...]

Every line gives the wall time and the CPU time (``time.process_time``: all threads of this
process, the W2 worker threads and BLAS/OpenMP threads included, plus the CPU time of any
child process) and their ratio, the cores used on average. On a machine that other jobs load,
the wall time grows with the load and the CPU time stays close to the algorithm's cost (BLAS
threads that spin while waiting for a core are the exception, which part 1 shows); so give
CPU times and the ratios measured in one run, not absolute wall times.

1. Every registered estimator and every bracketed variant that ``benchmarks/transfer2d-v2.yaml``
   scores (``scoring.methods``), one call each, on 24,000 samples x 32 channels: 20 cases x 3
   classes (background + 2) x 400 samples, features the ReLU of a rank-8 class-dependent latent
   plus noise (skewed and anisotropic, as network features are), with 5-class softmax "source
   predictions" for LEEP and NCE, each timed as the faster of two calls. Target: <= 2 s per
   call. Beside each, the same call with the estimators' BLAS left on the process's thread
   setting (``ccfv.estimators._threads.BLAS_THREADS = None``, the earlier behaviour of every
   estimator but N-LEEP and CC-FV). In the same run, the slower path each faster one replaced,
   with the ratio and the relative difference of the values: N-LEEP through scikit-learn's
   ``GaussianMixture`` under the process's BLAS threads (``nleep[mixture=sklearn;
   threads=null]``, the earlier code), PARC with the earlier two-sort rank sum.
2. CC-FV's W2 pairs on 60 cases of 40-100 samples (so factors of unequal rank) in 256
   dimensions: grouped by rank (now) against the earlier zero-padded path
   (``tests/slow_reference.py``), serial, one BLAS thread.
3. ``ccfv`` (the package default) on N=200 cases, 3 layers (dims 256/128/64, samples
   100/200/400 per class, background + 1 foreground class), the W2 pairs shared over the
   usable cores (the default) and serially (``workers=1``). Target: < 30 s wall on 2 cores.
4. With ``--sqrtm``: N=20 cases, one layer, dim 256, 100 samples per class, background + 2
   foreground classes: ``ccfv-paper`` against the reference of tests/slow_reference.py
   (per-pair scipy ``sqrtm``, its variety term vectorised with pdist so that only the W2 path
   is compared), values compared to 1e-6 relative. Several minutes.

``--quick``: N=50 instead of 200 in part 3. ``--only``: part 1 for the named methods only
(exact names, brackets included), parts 2-4 skipped. The BLAS thread count of the process
comes from the environment (``OPENBLAS_NUM_THREADS``); it is printed first.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import yaml
from scipy.spatial.distance import pdist
from threadpoolctl import threadpool_info

from ccfv import ccfv_score
from ccfv.errors import CCFVWarning
from ccfv.estimators import _threads
from ccfv.estimators._labelled import labelled_samples
from ccfv.estimators.ccfv import _unit_rows
from ccfv.estimators.gaussian import default_workers, fit_gaussian, w2_squared_pairs
from ccfv.estimators.parc import MAX_SAMPLES, _parc, _reduce, _stratified_subsample
from ccfv.estimators.registry import ESTIMATORS, get_estimator


def make_features(rng, n_cases, dims, samples, classes):
    """CC-FV's synthetic set: per layer, Gaussian classes 0.5 apart, a random scale per case."""
    features = {}
    for layer, (d, n) in enumerate(zip(dims, samples)):
        cases = []
        for _ in range(n_cases):
            X = np.concatenate(
                [
                    rng.normal(size=(n, d)) * rng.uniform(0.5, 1.5) + 0.5 * k
                    for k in range(classes + 1)
                ]
            )
            cases.append((X, np.repeat(np.arange(classes + 1), n)))
        features[f"layer{layer}"] = cases
    return features


def baseline_features(
    seed=0, n_cases=20, per_class=400, d=32, classes=3, latent=8, source_classes=5
):
    """The 24,000 x 32 set of part 1 and its source predictions (see the module docstring)."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(latent, d)) / np.sqrt(latent)
    centres = rng.normal(size=(classes, latent)) * 1.5
    head = rng.normal(size=(d, source_classes))
    cases, predictions = [], []
    for _ in range(n_cases):
        y = np.repeat(np.arange(classes), per_class)
        Z = (
            centres[y]
            + rng.normal(size=latent) * 0.3
            + rng.normal(size=(y.size, latent)) * rng.uniform(0.5, 1.5, size=latent)
        )
        X = np.maximum(Z @ W, 0) + 0.05 * rng.normal(size=(y.size, d))
        logits = X @ head + rng.normal(size=(y.size, source_classes))
        P = np.exp(logits - logits.max(axis=1, keepdims=True))
        cases.append((X, y))
        predictions.append(P / P.sum(axis=1, keepdims=True))
    return {"layer": cases}, predictions


def parc_two_sorts(features, seed=0):
    """PARC with the earlier rank sum (two sorts + binary searches), default options."""
    data = labelled_samples(features, None, "parc")
    X, labels = data.X, data.labels
    if len(labels) > MAX_SAMPLES:
        keep = _stratified_subsample(labels, MAX_SAMPLES, seed)
        X, labels = X[keep], labels[keep]
    return 100.0 * _parc(_reduce(X, 32), labels, ranks="two-sorts")


def vectorised_energy(V, s=1.0, normalize=True):
    if normalize:
        V = V / np.linalg.norm(V, axis=1, keepdims=True)
    return float(np.mean(pdist(V) ** (-s)))


def cpu_seconds():
    """CPU time of this process (every thread) and of its finished child processes."""
    times = os.times()
    return time.process_time() + times.children_user + times.children_system


def timed(fn, repeats=1):
    """``(value, wall, cpu)`` of the fastest of ``repeats`` calls (the first call of a process
    also pays for fresh memory pages and imports, which a later one does not): the wall time,
    and the CPU time of that call (all threads; children included). On a shared machine the
    CPU time is the steadier figure, the wall time shows what threads gained."""
    best, cpu, value = math.inf, math.nan, None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), cpu_seconds()
        value = fn()
        wall = time.perf_counter() - start
        if wall < best:
            best, cpu = wall, cpu_seconds() - start_cpu
    return value, best, cpu


def line(label, wall, cpu, value=None, width=46):
    tail = "" if value is None else f"   value {value:.12g}"
    cores = cpu / wall if wall > 0 else math.nan
    return f"   {label:{width}s} {wall:7.2f} s wall {cpu:7.2f} s CPU ({cores:4.2f} cores){tail}"


def compare(label, fast, t_fast, slow, t_slow, cpu_slow, faster="faster now"):
    rel = abs(fast - slow) / max(abs(slow), np.finfo(float).tiny)
    print(line(label, t_slow, cpu_slow, slow))
    print(f"   {'':46s} -> {t_slow / t_fast:5.2f}x {faster}, values differ by {rel:.1e} relative")


def config_methods():
    """Every method the v2 benchmark scores (the registered names and bracketed variants)."""
    config = yaml.safe_load((Path(__file__).with_name("transfer2d-v2.yaml")).read_text())
    return list(config["scoring"]["methods"])


@contextmanager
def process_blas_threads():
    """The estimators' BLAS on the process's own thread setting (the earlier behaviour)."""
    saved = _threads.BLAS_THREADS
    _threads.BLAS_THREADS = None
    try:
        yield
    finally:
        _threads.BLAS_THREADS = saved


def part_estimators(only):
    features, predictions = baseline_features()
    n = sum(len(y) for _, y in features["layer"])
    d = features["layer"][0][0].shape[1]
    names = list(ESTIMATORS) + [m for m in config_methods() if m not in ESTIMATORS]
    if only:
        names = [m for m in names if m in only] + [m for m in only if m not in names]
    print(
        f"1) every estimator and variant, one call on {n} samples x {d} channels, 3 classes "
        "(target <= 2 s); beside it, its BLAS on the process's threads"
    )
    times = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CCFVWarning)
        for name in names:
            estimator = get_estimator(name)
            call = partial(
                estimator, features, predictions if estimator.needs_predictions else None
            )
            value, wall, cpu = timed(call, 2)
            times[name] = (value, wall, cpu)
            print(line(name, wall, cpu, value))
            if not name.startswith("nleep"):  # N-LEEP sets its own threads (threads=1)
                before, t_before, cpu_before = _timed_process_threads(call)
                rel = abs(before - value) / max(abs(value), np.finfo(float).tiny)
                print(
                    line("  its BLAS on the process's threads", t_before, cpu_before)
                    + f"   {t_before / wall:5.2f}x the wall, {cpu_before / cpu:5.2f}x the CPU"
                    + f" time, values differ by {rel:.1e}"
                )
            if name == "nleep":
                slow_name = "nleep[mixture=sklearn; threads=null]"
                slow, t_slow, cpu_slow = timed(partial(get_estimator(slow_name), features), 2)
                compare(slow_name + " (before)", value, wall, slow, t_slow, cpu_slow)
            if name == "parc":
                slow, t_slow, cpu_slow = timed(lambda: parc_two_sorts(features), 2)
                compare("parc, two-sort ranks (before)", value, wall, slow, t_slow, cpu_slow)
    worst = max(times, key=lambda k: times[k][1])
    worst_cpu = max(times, key=lambda k: times[k][2])
    print(
        f"   slowest: {worst} {times[worst][1]:.2f} s wall; most CPU: {worst_cpu} "
        f"{times[worst_cpu][2]:.2f} s (target <= 2 s)"
    )


def _timed_process_threads(call):
    with process_blas_threads():
        return timed(call, 2)


def part_w2_ranks():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import slow_reference

    rng = np.random.default_rng(0)
    counts = rng.integers(40, 101, 60)
    gaussians = [
        fit_gaussian(_unit_rows(rng.normal(size=(int(n), 256)) * rng.uniform(0.5, 1.5) + 0.5))
        for n in counts
    ]
    print(
        f"2) CC-FV's W2 pairs of {len(gaussians)} Gaussians of unequal rank (40-100 samples, "
        "256 dims), serial, one BLAS thread"
    )
    with _threads.limited(1, "blas"):
        fast, t_fast, cpu_fast = timed(lambda: w2_squared_pairs(gaussians, workers=1), 2)
        slow, t_slow, cpu_slow = timed(lambda: slow_reference.w2_squared_pairs_padded(gaussians))
    rel = np.max(np.abs(fast - slow) / np.abs(slow))
    print(line(f"grouped by rank ({fast.size} pairs)", t_fast, cpu_fast))
    print(line("zero-padded to the widest (before)", t_slow, cpu_slow))
    print(
        f"   {'':46s} -> {t_slow / t_fast:5.2f}x faster now ({cpu_slow / cpu_fast:5.2f}x in "
        f"CPU time), values differ by at most {rel:.1e} relative"
    )


def part_ccfv(n_cases):
    rng = np.random.default_rng(0)
    features = make_features(rng, n_cases, [256, 128, 64], [100, 200, 400], 1)
    print(
        f"3) ccfv, N={n_cases}, 3 layers (dims 256/128/64, samples 100/200/400 per class) "
        "(target < 30 s wall on 2 cores at N=200)"
    )
    score = get_estimator("ccfv")
    fast, t_fast, cpu_fast = timed(lambda: score(features))
    print(line(f"ccfv (W2 pairs on {default_workers()} threads)", t_fast, cpu_fast, fast))
    slow, t_slow, cpu_slow = timed(lambda: score(features, workers=1))
    compare("ccfv[workers=1] (serial)", fast, t_fast, slow, t_slow, cpu_slow, "faster threaded")


def part_sqrtm():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import slow_reference

    features = make_features(np.random.default_rng(0), 20, [256], [100], 2)
    fast, t_fast, cpu_fast = timed(lambda: ccfv_score(features))
    ref, t_ref, cpu_ref = timed(
        lambda: slow_reference.paper_score(features, energy=vectorised_energy)
    )
    print("4) N=20, dim 256, 100 samples/class, 2 foreground classes + background")
    print(line("ccfv_score", t_fast, cpu_fast, fast))
    compare("sqrtm reference (target >= 30x, <= 1e-6)", fast, t_fast, ref, t_ref, cpu_ref)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N=50 instead of 200 in part 3")
    parser.add_argument(
        "--sqrtm",
        action="store_true",
        help="also part 4, the comparison with the sqrtm reference (minutes)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        help="part 1 for these methods only (brackets included); parts 2-4 skipped",
    )
    args = parser.parse_args()
    blas = sorted({(i.get("internal_api"), i.get("num_threads")) for i in threadpool_info()})
    print(
        f"BLAS/OpenMP threads of the process {blas}; estimators' BLAS threads "
        f"{_threads.BLAS_THREADS}; CC-FV W2 workers by default {default_workers()}; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    part_estimators(args.only)
    if args.only:
        return
    part_w2_ranks()
    part_ccfv(50 if args.quick else 200)
    if args.sqrtm:
        part_sqrtm()


if __name__ == "__main__":
    main()
