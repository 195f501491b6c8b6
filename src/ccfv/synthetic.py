"""Synthetic feature sets with a known order of quality, for the estimator-only demo and tests.

Each simulated "model" describes the same target cases (class-conditional Gaussian voxel
features per layer). Two knobs set how good a starting point it is: ``drift``, how far a
class's feature cluster moves from one case to the next (class inconsistency), and
``collapse``, how much of the feature space its features span (1 = all of it, near 0 = a few
directions: little variety). A model with small drift and little collapse should rank first.
"""

from __future__ import annotations

import numpy as np

#: name -> (drift, collapse) of the simulated bank, best first
BANK = {
    "consistent_rich": (0.2, 0.0),
    "consistent_collapsed": (0.2, 0.8),
    "drifting_rich": (1.0, 0.0),
    "drifting_collapsed": (1.0, 0.8),
    "random_init": (2.5, 0.95),
}


def simulated_features(drift: float, collapse: float, n_cases: int = 12, classes: int = 2,
                       dims=(64, 32, 16), samples=(100, 200, 400), seed: int = 0):
    """Feature set ``{layer: [(X, y) per case]}`` of one simulated model (see module doc)."""
    rng = np.random.default_rng(seed)
    features = {}
    for layer, (d, n) in enumerate(zip(dims, samples)):
        centres = rng.normal(size=(classes + 1, d)) * 2.0
        keep = max(1, int(round(d * (1.0 - collapse))))
        scale = np.r_[np.ones(keep), np.full(d - keep, 0.05)]
        cases = []
        for _ in range(n_cases):
            Xs, ys = [], []
            for k in range(classes + 1):
                centre = centres[k] + drift * rng.normal(size=d)
                Xs.append(centre + rng.normal(size=(n, d)) * scale)
                ys.append(np.full(n, k))
            cases.append((np.concatenate(Xs), np.concatenate(ys)))
        features[f"decoder{layer}"] = cases
    return features
