"""``benchmarks/score_stability.py``: the agreement of two pre-trained realisations' scores, on
synthetic summaries whose answer is known, against a slow reference."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from score_stability import main, stability  # noqa: E402


def _summary(scores: dict[str, np.ndarray], dice: np.ndarray) -> dict:
    models = {
        f"m{i}": {
            "dice": [float(d), float(d) + 0.01],
            "scores": {m: float(s[i]) for m, s in scores.items()},
        }
        for i, d in enumerate(dice)
    }
    return {"targets": {"t": {"models": models}}}


def test_same_scores_agree_reversed_disagree_and_wtau_is_scipys():
    rng = np.random.default_rng(0)
    dice = rng.uniform(0.5, 0.9, 12)
    a = rng.normal(size=12)
    old = _summary({"same": a, "flip": a, "noisy": a}, dice)
    new = _summary({"same": 3 * a + 1, "flip": -a, "noisy": a + rng.normal(size=12)}, dice)
    out = stability(old, new)["t"]
    assert out["same"]["spearman"] == pytest.approx(1.0)
    assert out["flip"]["spearman"] == pytest.approx(-1.0)
    assert -1 < out["noisy"]["spearman"] < 1
    truth = dice + 0.005  # mean over the two seeds
    assert out["noisy"]["wtau_old"] == pytest.approx(stats.weightedtau(truth, a)[0])
    assert out["flip"]["wtau_new"] == pytest.approx(stats.weightedtau(truth, -a)[0])
    assert out["same"]["n"] == 12


def test_non_finite_scores_are_left_out_and_bad_files_get_one_line(tmp_path, capsys):
    dice = np.linspace(0.5, 0.8, 6)
    a = np.arange(6.0)
    b = a.copy()
    b[2] = np.nan
    old, new = _summary({"x": a}, dice), _summary({"x": b}, dice)
    assert stability(old, new)["t"]["x"]["n"] == 5
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new).replace("NaN", "null"))
    main([str(tmp_path / "old.json"), str(tmp_path / "new.json")])
    assert "| `x` | 1.000 |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no such file"):
        main([str(tmp_path / "missing.json"), str(tmp_path / "new.json")])
