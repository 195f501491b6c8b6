"""Time every estimator; where a faster path replaced a slower one, time both in the same run.

Usage: python benchmarks/bench_estimator.py [--quick] [--sqrtm]

1. Every registered estimator, one call each, on 24,000 samples x 32 channels: 20 cases x 3
   classes (background + 2) x 400 samples, features the ReLU of a rank-8 class-dependent latent
   plus noise (skewed and anisotropic, as network features are), with 5-class softmax "source
   predictions" for LEEP and NCE, each timed as the faster of two calls. Target: <= 2 s per
   call. In the same run, the slower path each faster one replaced, with the ratio and the
   relative difference of the values: N-LEEP through scikit-learn's ``GaussianMixture``
   under the process's BLAS threads (``nleep[mixture=sklearn; threads=null]``, the earlier
   code), PARC with the earlier two-sort rank sum.
2. ``ccfv`` (the package default) on N=200 cases, 3 layers (dims 256/128/64, samples
   100/200/400 per class, background + 1 foreground class), the W2 pairs shared over the
   usable cores (the default) and serially (``workers=1``). Target: < 30 s.
3. With ``--sqrtm``: N=20 cases, one layer, dim 256, 100 samples per class, background + 2
   foreground classes: ``ccfv-paper`` against the reference of tests/slow_reference.py
   (per-pair scipy ``sqrtm``, its variety term vectorised with pdist so that only the W2 path
   is compared), values compared to 1e-6 relative. Several minutes.

The BLAS thread count comes from the environment (``OPENBLAS_NUM_THREADS``); it is printed
first. On a shared machine give ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
from scipy.spatial.distance import pdist
from threadpoolctl import threadpool_info

from ccfv import ccfv_score
from ccfv.estimators._labelled import labelled_samples
from ccfv.estimators.gaussian import default_workers
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


def timed(fn, repeats=1):
    """The value and the fastest of ``repeats`` wall times (the first call of a process also
    pays for fresh memory pages and imports, which a later one does not)."""
    return timed_cpu(fn, repeats)[:2]


def timed_cpu(fn, repeats=1):
    """``timed`` plus the CPU time (all threads) of the fastest call: on a shared machine the
    CPU time is the steadier figure, the wall time shows what threads gained."""
    best, cpu = math.inf, math.nan
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        value = fn()
        wall = time.perf_counter() - start
        if wall < best:
            best, cpu = wall, time.process_time() - start_cpu
    return value, best, cpu


def compare(label, fast, t_fast, slow, t_slow):
    rel = abs(fast - slow) / max(abs(slow), np.finfo(float).tiny)
    print(f"   {label:40s} {t_slow:7.2f} s   value {slow:.12g}")
    print(f"   {'':40s} -> {t_slow / t_fast:5.2f}x faster now, values differ by {rel:.1e} relative")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N=50 instead of 200 in part 2")
    parser.add_argument(
        "--sqrtm",
        action="store_true",
        help="also part 3, the comparison with the sqrtm reference (minutes)",
    )
    args = parser.parse_args()
    blas = sorted({(i.get("internal_api"), i.get("num_threads")) for i in threadpool_info()})
    print(
        f"BLAS/OpenMP threads {blas}; CC-FV W2 workers by default {default_workers()}; "
        f"load average {os.getloadavg()[0]:.1f}"
    )

    features, predictions = baseline_features()
    n = sum(len(y) for _, y in features["layer"])
    d = features["layer"][0][0].shape[1]
    print(f"1) every estimator, one call on {n} samples x {d} channels, 3 classes (target <= 2 s)")
    times = {}
    for name, estimator in ESTIMATORS.items():
        value, seconds = timed(
            lambda e=estimator: e(features, predictions if e.needs_predictions else None), 2
        )
        times[name] = (value, seconds)
        print(f"   {name:40s} {seconds:7.2f} s   value {value:.12g}")
        if name == "nleep":
            slow_name = "nleep[mixture=sklearn; threads=null]"
            slow, t_slow = timed(partial(get_estimator(slow_name), features), 2)
            compare(slow_name + " (before)", value, seconds, slow, t_slow)
        if name == "parc":
            slow, t_slow = timed(lambda: parc_two_sorts(features), 2)
            compare("parc, two-sort ranks (before)", value, seconds, slow, t_slow)
    worst = max(times, key=lambda k: times[k][1])
    print(f"   slowest: {worst} {times[worst][1]:.2f} s (target <= 2 s)")

    rng = np.random.default_rng(0)
    n_cases = 50 if args.quick else 200
    features = make_features(rng, n_cases, [256, 128, 64], [100, 200, 400], 1)
    print(
        f"2) ccfv, N={n_cases}, 3 layers (dims 256/128/64, samples 100/200/400 per class) "
        "(target < 30 s at N=200)"
    )
    score = get_estimator("ccfv")
    fast, t_fast, cpu_fast = timed_cpu(lambda: score(features))
    print(
        f"   {f'ccfv (W2 pairs on {default_workers()} threads)':40s} {t_fast:7.2f} s   "
        f"value {fast:.12f}   CPU {cpu_fast:.2f} s"
    )
    slow, t_slow, cpu_slow = timed_cpu(lambda: score(features, workers=1))
    compare("ccfv[workers=1] (serial, before)", fast, t_fast, slow, t_slow)
    print(
        f"   {'':40s}    CPU time serial {cpu_slow:.2f} s, {cpu_slow / t_slow:.2f} of a core "
        "on average (1.00 = a core to itself)"
    )

    if args.sqrtm:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        import slow_reference

        features = make_features(np.random.default_rng(0), 20, [256], [100], 2)
        fast, t_fast = timed(lambda: ccfv_score(features))
        ref, t_ref = timed(lambda: slow_reference.paper_score(features, energy=vectorised_energy))
        print("3) N=20, dim 256, 100 samples/class, 2 foreground classes + background")
        print(f"   ccfv_score      {t_fast:8.2f} s   value {fast:.12f}")
        compare("sqrtm reference (target >= 30x, <= 1e-6)", fast, t_fast, ref, t_ref)


if __name__ == "__main__":
    main()
