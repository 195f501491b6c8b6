"""``benchmarks/score_stability.py``: the agreement of two pre-trained realisations' scores, on
synthetic summaries whose answer is known, against a slow reference."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from score_stability import ground_truth_agreement, main, stability, verdict_agreement  # noqa: E402


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


def test_own_ground_truth_adds_its_agreement_and_tau():
    rng = np.random.default_rng(1)
    dice = rng.uniform(0.5, 0.9, 10)
    dice_new = dice + rng.normal(scale=0.05, size=10)
    a = rng.normal(size=10)
    old, new = _summary({"x": a}, dice), _summary({"x": a + 0.1}, dice_new)
    out = stability(old, new)["t"]["x"]
    assert out["wtau_new_own"] == pytest.approx(stats.weightedtau(dice_new + 0.005, a)[0])
    assert out["wtau_new"] == pytest.approx(stats.weightedtau(dice + 0.005, a)[0])
    truth = ground_truth_agreement(old, new)["t"]
    assert truth["own"] and truth["n"] == 10
    assert truth["spearman"] == pytest.approx(stats.spearmanr(dice, dice_new)[0])
    assert truth["wtau"] == pytest.approx(stats.weightedtau(dice + 0.005, dice_new + 0.005)[0])
    # the same Dice in both (a rescoring only): no own ground truth, no extra column
    assert not ground_truth_agreement(old, _summary({"x": a}, dice))["t"]["own"]


@pytest.mark.parametrize(
    "old, new, table",
    [
        (
            "interim-2026-12-02",
            "score-stability/rescored_summary.json",
            "score-stability/score_stability.md",
        ),
        ("interim-2026-12-02", "interim/summary.json", "interim/realisations.md"),
    ],
)
def test_the_committed_tables_are_what_the_script_prints(old, new, table, tmp_path, monkeypatch):
    """The committed comparisons of the two realisations are regenerated from their summaries."""
    root = Path(__file__).resolve().parents[1]
    base = "benchmarks/results/v2/transfer2d-v2"
    monkeypatch.chdir(root)
    out = tmp_path / "table.md"
    main([f"{base}/{old}/summary.json", f"{base}/{new}", "--out", str(out)])
    assert out.read_text() == (root / base / table).read_text(), (
        f"{base}/{table} is stale: run benchmarks/score_stability.py {base}/{old}/summary.json "
        f"{base}/{new} --out {base}/{table}"
    )


def test_the_verdicts_agreement_is_spearman_over_the_methods():
    rng = np.random.default_rng(2)
    dice = rng.uniform(0.5, 0.9, 10)
    dice_new = dice + rng.normal(scale=0.02, size=10)
    scores = {f"m{k}": dice * k + rng.normal(scale=0.1, size=10) for k in range(-2, 3)}
    old = _summary(scores, dice)
    new = _summary({m: s + rng.normal(scale=0.05, size=10) for m, s in scores.items()}, dice_new)
    result = stability(old, new)
    expected = stats.spearmanr(
        [r["wtau_old"] for r in result["t"].values()],
        [r["wtau_new_own"] for r in result["t"].values()],
    )[0]
    assert verdict_agreement(result)["t"] == {"spearman": pytest.approx(expected), "n": 5}
