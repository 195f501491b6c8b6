"""benchmarks/diagnose_ccfv.py on synthetic features: its effective rank and anisotropy against
their definitions, the perturbations that must leave CC-FV unchanged, and its tables."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from diagnose_ccfv import (  # noqa: E402
    architecture_split,
    diagnose,
    effective_rank,
    markdown,
    perturbed,
)


def _features(seed, d=6):
    rng = np.random.default_rng(seed)
    out = {}
    for l, dim in enumerate((d, d + 2)):
        cases = []
        for _ in range(4):
            y = np.repeat([0, 1], 20)
            X = 1.0 + rng.normal(size=(40, dim)) * np.linspace(0.3, 2, dim) + y[:, None]
            cases.append((X, y))
        out[f"l{l}"] = cases
    return out


def test_effective_rank_against_its_definition():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(5000, 4)) * np.array([4.0, 2.0, 1.0, 1.0])
    lam = np.linalg.eigvalsh(np.cov(X.T))[::-1]
    p = lam / lam.sum()
    er, top = effective_rank(X)
    assert er == pytest.approx(math.exp(-np.sum(p * np.log(p))), rel=1e-10)
    assert top == pytest.approx(p[0], rel=1e-10)
    iso = rng.normal(size=(20000, 5))
    assert effective_rank(iso)[0] == pytest.approx(5.0, rel=0.01)


def test_diagnosis_of_two_models():
    features = {"unet__a": _features(0), "segresnet__b": _features(1)}
    report = diagnose(features, {})
    for r in report.values():
        moved = r["perturbations"]
        for name in ("random rotation", "channels duplicated"):  # the default is invariant
            assert abs(moved[name]["score"]) < 1e-9
        assert moved["centred on the pooled mean"]["score"] != pytest.approx(0, abs=1e-6)
        assert len(r["layers"]) == 2 and r["layers"][0]["dim"] == 6
    split = architecture_split(report)
    assert set(split["ccfv"]) == {"segresnet > unet"}
    assert split["ccfv"]["segresnet > unet"][1] == 1
    text = markdown(report, "synthetic")
    assert "| unet__a |" in text and "Architecture split" in text


def test_perturbations_are_seeded():
    f = _features(2)
    a, b = perturbed(f, "isotropic noise 0.5 sd"), perturbed(f, "isotropic noise 0.5 sd")
    np.testing.assert_array_equal(a["l0"][0][0], b["l0"][0][0])
