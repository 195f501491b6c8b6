"""The pre-registered rule of docs/explanation/choosing-the-default.md
(``benchmarks/apply_default_rule.py``) on synthetic benchmark summaries whose answer is known."""

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from apply_default_rule import (  # noqa: E402
    BASELINES,
    CANDIDATES,
    apply_rule,
    markdown,
    pick_best_baseline,
    pick_default,
    within_architecture_tau,
)

from ccfv.errors import UserError  # noqa: E402

ARCHS = ("unet", "segresnet")


def _summary(rng, n_targets=2, seed_sd=0.002, good=(), bad=()):
    """Targets of 10 models (2 architectures x 5 sources), 4 seeds; every method scores with
    noise, the ``good`` ones exactly by the mean Dice, the ``bad`` ones by its negative."""
    targets = {}
    for t in range(n_targets):
        truth = {f"{a}__s{i}": 0.5 + 0.03 * rng.normal() for a in ARCHS for i in range(5)}
        models = {}
        for name, mu in truth.items():
            scores = {m: mu + 0.05 * rng.normal() for m in [*CANDIDATES, *BASELINES]}
            scores.update({m: mu for m in good})
            scores.update({m: -mu for m in bad})
            models[name] = {
                "dice": [mu + seed_sd * rng.normal() for _ in range(4)],
                "scores": scores,
            }
        targets[f"t{t}"] = {"models": models}
    return {"targets": targets}


def test_a_perfect_candidate_becomes_the_default():
    rng = np.random.default_rng(0)
    result = apply_rule(_summary(rng, good=["ccfv-pca"]), n_boot=50)
    assert result["reliable"] == ["t0", "t1"]
    assert result["default"] == "ccfv-pca"
    assert result["candidates"]["ccfv-pca"]["qualifies"]
    assert "ccfv-pca" in markdown(result)


def test_the_default_stays_when_a_baseline_is_better():
    rng = np.random.default_rng(1)
    result = apply_rule(_summary(rng, good=["nleep"], bad=CANDIDATES), n_boot=50)
    assert result["best_baseline"] == "nleep"
    assert result["qualified"] == []
    assert result["default"] == "ccfv"


def test_no_reliable_target_keeps_the_default():
    rng = np.random.default_rng(2)
    result = apply_rule(_summary(rng, seed_sd=0.5, good=["ccfv-null"]), n_boot=50)
    assert result["reliable"] == []
    assert result["default"] == "ccfv"


def test_within_architecture_tau_against_scipy():
    rng = np.random.default_rng(3)
    truth = {f"{a}__s{i}": rng.normal() for a in ARCHS for i in range(6)}
    scores = {m: v + rng.normal() for m, v in truth.items()}
    expected = np.mean(
        [
            stats.weightedtau(
                [scores[m] for m in truth if m.startswith(a)],
                [truth[m] for m in truth if m.startswith(a)],
            )[0]
            for a in ARCHS
        ]
    )
    assert within_architecture_tau(scores, truth) == pytest.approx(expected, rel=1e-12)


def test_an_interim_summary_reports_but_does_not_decide():
    """A partial run (``ccfv bench --targets``) gets the rule's figures, not a new default."""
    rng = np.random.default_rng(0)
    summary = _summary(rng, good=["ccfv-pca"])
    summary["interim"] = {"targets": ["t0", "t1"], "of": ["t0", "t1", "t2"]}
    result = apply_rule(summary, n_boot=50)
    assert result["default"] == "ccfv"
    assert result["interim"]["rule_would_pick"] == "ccfv-pca"
    assert result["decision"].startswith("interim, not applied")
    assert "only the complete run changes the default" in markdown(result)


def test_best_baseline_ties_go_to_within_architecture_tau():
    figures = {
        "nleep": {"weighted_tau": 0.500, "within_architecture_tau": 0.0},
        "logme": {"weighted_tau": 0.495, "within_architecture_tau": -0.1},  # tied, lower within
        "gbc": {"weighted_tau": 0.492, "within_architecture_tau": 0.3},  # tied, higher within
        "leep": {"weighted_tau": 0.480, "within_architecture_tau": 0.9},  # 0.02 below: not tied
        "hscore": {"weighted_tau": None, "within_architecture_tau": None},
    }
    assert pick_best_baseline(figures, BASELINES) == "gbc"
    # a within-architecture tau of exactly 0 is a value and beats a negative one
    del figures["gbc"]
    assert pick_best_baseline(figures, BASELINES) == "nleep"
    # alone, by mean weighted tau
    assert pick_best_baseline({"leep": figures["leep"]}, BASELINES) == "leep"


def test_the_default_among_qualified_candidates():
    figures = {
        "ccfv": {"weighted_tau": 0.500, "within_architecture_tau": 0.20},
        "ccfv-null": {"weighted_tau": 0.495, "within_architecture_tau": 0.20},  # tied, equal
        "ccfv-pca": {"weighted_tau": 0.492, "within_architecture_tau": 0.10},  # tied, lower
        "ccfv-hscore": {"weighted_tau": 0.470, "within_architecture_tau": 0.90},  # not tied
    }
    # the incumbent, tied, stays: no tied candidate is strictly higher within architectures
    assert pick_default(figures, list(figures)) == "ccfv"
    # a tied candidate strictly higher within architectures displaces it
    figures["ccfv-pca"]["within_architecture_tau"] = 0.25
    assert pick_default(figures, list(figures)) == "ccfv-pca"
    # without the incumbent, ties go to within-architecture tau, then the name
    figures["ccfv-pca"]["within_architecture_tau"] = 0.20
    assert pick_default(figures, ["ccfv-pca", "ccfv-null"]) == "ccfv-null"
    # a missing within tau loses to 0.0, and the highest weighted tau wins outside a tie
    figures["ccfv-null"]["within_architecture_tau"] = None
    figures["ccfv-pca"]["within_architecture_tau"] = 0.0
    assert pick_default(figures, ["ccfv-pca", "ccfv-null"]) == "ccfv-pca"
    assert pick_default(figures, ["ccfv-hscore", "ccfv-pca"]) == "ccfv-pca"
    with pytest.raises(UserError, match="no qualified candidate"):
        pick_default(figures, [])


def test_a_tied_incumbent_stays_against_an_equal_within_tau(monkeypatch):
    # every candidate's name begins with "ccfv", so with the real incumbent the name order
    # alone would keep it; an incumbent that sorts later shows the exception at work
    import apply_default_rule

    monkeypatch.setattr(apply_default_rule, "INCUMBENT", "ccfv-pca")
    figures = {
        "ccfv-pca": {"weighted_tau": 0.500, "within_architecture_tau": 0.20},
        "ccfv": {"weighted_tau": 0.495, "within_architecture_tau": 0.20},
    }
    assert pick_default(figures, list(figures)) == "ccfv-pca"
    figures["ccfv"]["within_architecture_tau"] = 0.21
    assert pick_default(figures, list(figures)) == "ccfv"


def test_best_baseline_needs_one_with_a_weighted_tau():
    with pytest.raises(UserError, match="no baseline has a weighted tau"):
        pick_best_baseline({"nleep": {"weighted_tau": None}}, BASELINES)
