"""Time ccfv_score against the slow scipy-sqrtm reference; print the figures and their ratio.

Usage: python benchmarks/bench_estimator.py [--quick]

1. N=20 cases, one layer, dim 256, 100 samples per class, background + 2 foreground classes:
   the fast estimator vs the reference of tests/slow_reference.py (per-pair scipy ``sqrtm``
   of S_i^1/2 S_j S_i^1/2; its variety term vectorised with pdist so that only the W2 path is
   compared), values compared to 1e-6 relative. Target: >= 30x.
2. N=200 cases, 3 layers (dims 256/128/64, samples 100/200/400 per class, background + 1
   foreground class): the fast estimator alone. Target: < 120 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy.spatial.distance import pdist

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import slow_reference  # noqa: E402

from ccfv import ccfv_score  # noqa: E402


def make_features(rng, n_cases, dims, samples, classes):
    features = {}
    for layer, (d, n) in enumerate(zip(dims, samples)):
        cases = []
        for _ in range(n_cases):
            X = np.concatenate([rng.normal(size=(n, d)) * rng.uniform(0.5, 1.5) + 0.5 * k
                                for k in range(classes + 1)])
            cases.append((X, np.repeat(np.arange(classes + 1), n)))
        features[f"layer{layer}"] = cases
    return features


def vectorised_energy(V, s=1.0, normalize=True):
    if normalize:
        V = V / np.linalg.norm(V, axis=1, keepdims=True)
    return float(np.mean(pdist(V) ** (-s)))


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N=50 instead of 200 in part 2")
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    features = make_features(rng, 20, [256], [100], 2)
    fast, t_fast = timed(lambda: ccfv_score(features))
    ref, t_ref = timed(lambda: slow_reference.paper_score(features, energy=vectorised_energy))
    rel = abs(fast - ref) / abs(ref)
    print("1) N=20, dim 256, 100 samples/class, 2 foreground classes + background")
    print(f"   ccfv_score      {t_fast:8.2f} s   value {fast:.12f}")
    print(f"   sqrtm reference {t_ref:8.2f} s   value {ref:.12f}")
    print(f"   speed-up {t_ref / t_fast:6.1f}x (target >= 30x)   relative difference {rel:.1e} "
          f"(target <= 1e-6)")

    n_cases = 50 if args.quick else 200
    features = make_features(rng, n_cases, [256, 128, 64], [100, 200, 400], 1)
    fast, t_fast = timed(lambda: ccfv_score(features))
    print(f"2) N={n_cases}, 3 layers (dims 256/128/64, samples 100/200/400 per class)")
    print(f"   ccfv_score      {t_fast:8.2f} s   value {fast:.12f} (target < 120 s at N=200)")


if __name__ == "__main__":
    main()
