import re
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURES = SHARED / "fixtures" / "ccfv_reference"


def feature_set_from_npz(path):
    """A fixture scenario (arrays ``layer{l}_case{c}_class{k}``) as a feature set."""
    arrays = np.load(path)
    index = {}
    for key in arrays.files:
        match = re.fullmatch(r"layer(\d+)_case(\d+)_class(\d+)", key)
        layer, case, klass = map(int, match.groups())
        index.setdefault(layer, {}).setdefault(case, []).append((klass, arrays[key]))
    features = {}
    for layer in sorted(index):
        cases = []
        for case in sorted(index[layer]):
            blocks = sorted(index[layer][case], key=lambda kv: kv[0])
            X = np.concatenate([block for _, block in blocks])
            y = np.concatenate([np.full(len(block), k) for k, block in blocks])
            cases.append((X, y))
        features[f"layer{layer}"] = cases
    return features


def random_feature_set(
    rng, n_cases=4, dims=(8,), samples=(12,), classes=1, shift=1.0, unequal=False
):
    """Class-conditional Gaussian features: class k has mean k * shift, per-case jitter."""
    features = {}
    for l, (d, n) in enumerate(zip(dims, samples)):
        cases = []
        for _ in range(n_cases):
            Xs, ys = [], []
            for k in range(classes + 1):
                m = n + (int(rng.integers(0, n)) if unequal else 0)
                Xs.append(
                    rng.normal(size=(m, d)) * rng.uniform(0.5, 1.5)
                    + k * shift
                    + 0.3 * rng.normal(size=d)
                )
                ys.append(np.full(m, k))
            cases.append((np.concatenate(Xs), np.concatenate(ys)))
        features[f"layer{l}"] = cases
    return features


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


#: Prepended to code run in a subprocess: torchvision and timm behave as if not installed,
#: as on the machines we support (PyPI's torchvision does not import beside the pinned CPU
#: torch), whether or not an optional extra (nnunetv2 -> timm -> torchvision) installed them.
NO_TORCHVISION = """
import importlib.abc, sys
class _NoTorchvision(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torchvision", "timm"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _NoTorchvision())
"""
