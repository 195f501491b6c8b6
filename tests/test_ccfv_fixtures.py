"""CC-FV against the exact reference values in ../shared/fixtures/ccfv_reference."""

import json

import pytest
from conftest import FIXTURES, feature_set_from_npz

import ccfv

if not (FIXTURES / "expected.json").exists():
    pytest.skip(f"reference fixtures not found at {FIXTURES}", allow_module_level=True)

EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
# per variant: the names of (variety, consistency) in expected.json
PART_NAMES = {"paper": ("F_v", "C_cons"), "official": ("variety", "w_total")}


@pytest.mark.parametrize("variant", ["paper", "official"])
@pytest.mark.parametrize("scenario", sorted(EXPECTED))
def test_fixture_score_and_parts(scenario, variant):
    features = feature_set_from_npz(FIXTURES / f"{scenario}.npz")
    expected = EXPECTED[scenario][variant]
    result = ccfv.ccfv_parts(features, variant=variant)
    assert result.score == pytest.approx(expected["score"], rel=1e-8)
    assert ccfv.ccfv_score(features, variant=variant) == pytest.approx(expected["score"], rel=1e-8)
    variety_name, consistency_name = PART_NAMES[variant]
    assert len(result.layers) == len(expected["per_layer"])
    for got, want in zip(result.layers, expected["per_layer"]):
        assert got.variety == pytest.approx(want[variety_name], rel=1e-8)
        assert got.consistency == pytest.approx(want[consistency_name], rel=1e-8)
    assert result.warnings == []


def test_fixture_shapes_match_description():
    for scenario, info in EXPECTED.items():
        features = feature_set_from_npz(FIXTURES / f"{scenario}.npz")
        assert [cases[0][0].shape[1] for cases in features.values()] == info["layer_dims"]
        assert all(len(cases) == info["cases"] for cases in features.values())
