"""The benchmark's reliability statistics (ccfv.reliability) against slow reference
implementations written here (loops, scipy called directly), and the issue's v1 reliability
table recomputed from the committed benchmarks/results/summary.json."""

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import ccfv
from ccfv.reliability import (
    TargetRuns,
    across_targets,
    best_group,
    estimator_statistics,
    headline,
    noise_ceiling,
    paired_difference,
    rate_interval,
    replicate_truth,
    seed_dice_from_cases,
    seed_noise,
    split_half,
    target_report,
)

SUMMARY = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "summary.json"


# ------------------------------------------------------------------------------------------------
# slow references


def ref_stats(a, b):
    return {
        "weighted_tau": stats.weightedtau(a, b)[0],
        "kendall_tau": stats.kendalltau(a, b)[0],
        "spearman": stats.spearmanr(a, b)[0],
        "pearson": stats.pearsonr(a, b)[0],
    }


def ref_split_half(x):
    """Every split of the seeds into halves, found by brute force over permutations."""
    s = x.shape[1]
    splits = set()
    for perm in itertools.permutations(range(s)):
        a, b = tuple(sorted(perm[: s // 2])), tuple(sorted(perm[s // 2 :]))
        splits.add(frozenset([a, b]) if len(a) == len(b) else (a, b))
    values = {k: [] for k in ("weighted_tau", "kendall_tau", "spearman", "pearson")}
    for split in splits:
        a, b = sorted(split, key=len) if isinstance(split, frozenset) else split
        for k, v in ref_stats(x[:, list(a)].mean(1), x[:, list(b)].mean(1)).items():
            values[k].append(v)
    return len(splits), {k: float(np.mean(v)) for k, v in values.items()}


def ref_seed_dice(cases, counts=None):
    """Per seed: per class the (count-weighted) mean over the cases containing it, then the
    mean over the classes that occur -- plain loops."""
    s, n, k = cases.shape
    counts = np.ones(n) if counts is None else counts
    out = []
    for si in range(s):
        class_means = []
        for ki in range(k):
            num = den = 0.0
            for ni in range(n):
                v = cases[si, ni, ki]
                if not math.isnan(v):
                    num += counts[ni] * v
                    den += counts[ni]
            if den > 0:
                class_means.append(num / den)
        out.append(sum(class_means) / len(class_means) if class_means else math.nan)
    return np.array(out)


def _runs(seed=0, n_models=6, n_seeds=4, n_cases=9, n_classes=2, spread=0.05):
    rng = np.random.default_rng(seed)
    level = np.linspace(0.5, 0.8, n_models)
    cases = {}
    for i in range(n_models):
        x = np.clip(level[i] + spread * rng.standard_normal((n_seeds, n_cases, n_classes)), 0, 1)
        x[:, rng.integers(0, n_cases), 0] = np.nan  # a case without class 1
        cases[f"m{i}"] = x
    dice = {m: [float(v) for v in seed_dice_from_cases(x)] for m, x in cases.items()}
    return TargetRuns(dice, cases)


# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_seeds", [4, 5, 6])
def test_split_half_every_balanced_split(n_seeds):
    rng = np.random.default_rng(n_seeds)
    x = np.linspace(0, 1, 7)[:, None] + 0.2 * rng.standard_normal((7, n_seeds))
    got = split_half(x)
    n_splits, want = ref_split_half(x)
    assert got["method"] == "split_half" and got["n_splits"] == n_splits
    assert n_splits == math.comb(n_seeds, n_seeds // 2) // (2 if n_seeds % 2 == 0 else 1)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-12), k


def test_split_half_few_seeds_is_one_vs_rest():
    rng = np.random.default_rng(1)
    x = np.linspace(0, 1, 6)[:, None] + 0.3 * rng.standard_normal((6, 3))
    got = split_half(x)
    assert got["method"] == "one_vs_rest" and got["n_splits"] == 3
    want = np.mean([stats.spearmanr(x[:, j], np.delete(x, j, 1).mean(1))[0] for j in range(3)])
    assert got["spearman"] == pytest.approx(want, abs=1e-12)
    assert split_half(x[:, :1])["spearman"] is None
    with pytest.raises(ccfv.UserError, match="finite"):
        split_half(np.array([[0.1, np.nan], [0.2, 0.3], [0.3, 0.1]]))


def test_v1_reliability_table_from_the_committed_summary():
    """The issue's table (one seed against the mean of the others; 3 seeds, CHAOS 2),
    recomputed: every figure within the issue's rounding (2 decimals, 3 for sd and gap)."""
    issue = {  # target: (weighted tau, Spearman, lowest, highest Dice, seed sd, median gap)
        "drive_retinal_vessels": (-0.11, -0.10, 0.12, 0.23, 0.077, 0.008),
        "chase_retinal_vessels": (0.21, 0.05, 0.12, 0.27, 0.080, 0.011),
        "isbi_em_membranes": (0.54, 0.82, 0.45, 0.53, 0.016, 0.003),
        "ph2_skin_lesions": (0.23, 0.38, 0.81, 0.88, 0.018, 0.002),
        "hc18_fetal_head": (0.53, 0.80, 0.70, 0.82, 0.013, 0.004),
        "acdc_cine_mri2d": (0.02, 0.00, 0.13, 0.30, 0.085, 0.012),
        "sunnybrook_lv_cinemri2d": (0.48, 0.57, 0.30, 0.53, 0.064, 0.015),
        "chaos_t2spir_abdomen3d": (0.61, 0.71, 0.20, 0.49, 0.057, 0.010),
    }
    summary = json.loads(SUMMARY.read_text())
    for target, (wtau, rho, lo, hi, sd, gap) in issue.items():
        runs = TargetRuns.from_models(summary["targets"][target]["models"])
        x = np.array([runs.dice[m] for m in runs.usable()], dtype=float)
        rel, noise = split_half(x), seed_noise(x)
        assert rel["method"] == "one_vs_rest"
        # 0.0051: the issue rounds CHASE's 0.0447 to 0.05 (via 0.045) and HC18's 0.7949 to 0.80
        assert rel["weighted_tau"] == pytest.approx(wtau, abs=0.0051), target
        assert rel["spearman"] == pytest.approx(rho, abs=0.0054), target
        assert noise["dice_range"] == pytest.approx([lo, hi], abs=0.0051), target
        assert noise["mean_seed_sd"] == pytest.approx(sd, abs=0.00051), target
        assert noise["median_gap"] == pytest.approx(gap, abs=0.00051), target


def test_seed_dice_from_cases_against_loops():
    runs = _runs(n_classes=3)
    rng = np.random.default_rng(3)
    for x in runs.cases.values():
        assert seed_dice_from_cases(x) == pytest.approx(ref_seed_dice(x), abs=1e-12)
        w = rng.multinomial(x.shape[1], np.full(x.shape[1], 1 / x.shape[1]), size=4)
        got = seed_dice_from_cases(x, w)
        for b in range(4):
            assert got[b] == pytest.approx(ref_seed_dice(x, w[b]), abs=1e-12)
    # the benchmark's own mean Dice (ccfv.bench.train.mean_dice) is the same number
    from ccfv.bench.train import mean_dice

    x = runs.cases["m0"]
    assert seed_dice_from_cases(x)[1] == pytest.approx(mean_dice(x[1]), abs=1e-12)


def test_replicate_truth_against_a_loop_with_the_same_draws():
    runs = _runs()
    models = runs.usable()
    got = replicate_truth(runs, models, n_boot=30, seed=5)
    rng = np.random.default_rng(5)
    n = runs.cases[models[0]].shape[1]
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=30)
    for i, m in enumerate(models):
        x = runs.cases[m]
        pick = rng.integers(0, x.shape[0], size=(30, x.shape[0]))
        for b in range(30):
            # the resampled cases written out one by one, then the resampled seeds
            idx = [c for c in range(n) for _ in range(weights[b, c])]
            per_seed = ref_seed_dice(x[:, idx, :])
            assert got[b, i] == pytest.approx(np.mean(per_seed[pick[b]]), abs=1e-12)
    # seeds only (no per-case Dice): the mean of resampled seeds
    plain = TargetRuns(runs.dice)
    reps = replicate_truth(plain, models, n_boot=4000, seed=0)
    assert reps.mean(axis=0) == pytest.approx([np.mean(runs.dice[m]) for m in models], abs=0.01)


def test_noise_ceiling_limits():
    means = np.linspace(0.5, 0.9, 8)
    exact = noise_ceiling(means, np.zeros(8), n_seeds=4, n_boot=50)
    for k in ("weighted_tau", "kendall_tau", "spearman", "pearson"):
        assert exact[k]["mean"] == pytest.approx(1.0)
    assert exact["regret"]["mean"] == 0
    # the reference: the same normal draws, the statistic by scipy
    rng = np.random.default_rng(2)
    sds = np.full(8, 0.05)
    sims = means + sds / 2 * rng.standard_normal((200, 8))
    want = np.mean([stats.spearmanr(means, s)[0] for s in sims])
    got = noise_ceiling(means, sds, n_seeds=4, n_boot=200, seed=2)
    assert got["spearman"]["mean"] == pytest.approx(want, abs=1e-12)
    lo, hi = got["spearman"]["interval"]
    assert lo <= got["spearman"]["mean"] <= hi <= 1
    noisy = noise_ceiling(means, np.full(8, 5.0), n_seeds=4, n_boot=400)
    assert abs(noisy["spearman"]["mean"]) < 0.2  # noise swamps the gaps
    with pytest.raises(ccfv.UserError, match=">= 3 models"):
        noise_ceiling([0.1, 0.2], [0.0, 0.0], 2)


def test_best_group_and_estimator_statistics():
    rng = np.random.default_rng(0)
    dice = {
        "a": list(0.90 + 0.01 * rng.standard_normal(4)),
        "b": list(0.899 + 0.01 * rng.standard_normal(4)),
        "c": list(0.60 + 0.01 * rng.standard_normal(4)),
        "d": list(0.50 + 0.01 * rng.standard_normal(4)),
    }
    runs = TargetRuns(dice)
    group = best_group(runs, n_boot=2000)
    means = {m: np.mean(v) for m, v in dice.items()}
    assert group["best"] == max(means, key=means.get)
    assert set(group["group"]) == {"a", "b"}
    assert group["differences"]["c"]["interval"][0] > 0.25
    perfect = estimator_statistics(means, runs, n_boot=500)
    assert perfect["weighted_tau"]["value"] == pytest.approx(1.0)
    assert perfect["regret"]["value"] == 0 and perfect["best_group_hit"]
    assert perfect["top3_recall"]
    lo, hi = perfect["spearman"]["interval"]
    assert 0 < lo <= hi <= 1
    reverse = estimator_statistics({m: -v for m, v in means.items()}, runs, n_boot=500)
    assert reverse["weighted_tau"]["value"] == pytest.approx(-1.0)
    # its three highest: d, c and the lower of a and b -- which is in the best group
    low_of_ab = min("ab", key=means.get)
    assert low_of_ab in group["group"]
    assert not reverse["best_group_hit"] and reverse["top3_recall"]
    assert reverse["top1"] == "d"
    assert estimator_statistics({"a": 1.0, "b": None}, runs)["n_models"] == 1
    # five models, a and b last: neither the top-1 nor the top 3 reach the best group
    runs5 = TargetRuns({**dice, "e": list(0.55 + 0.01 * rng.standard_normal(4))})
    miss = estimator_statistics(
        {"c": 3.0, "d": 2.0, "e": 1.0, "a": 0.0, "b": -1.0}, runs5, n_boot=100
    )
    assert not miss["best_group_hit"] and not miss["top3_recall"]


def test_paired_difference_and_across_targets():
    runs = _runs(n_models=8)
    truth = {m: np.mean(v) for m, v in runs.dice.items()}
    noisy = {m: v + 0.05 * i * (-1) ** i for i, (m, v) in enumerate(truth.items())}
    same = paired_difference(truth, truth, runs, n_boot=200)
    assert same["difference"] == 0 and same["interval"] == [0.0, 0.0]
    diff = paired_difference(truth, noisy, runs, "spearman", n_boot=300)
    want = (
        stats.spearmanr(list(truth.values()), list(truth.values()))[0]
        - stats.spearmanr(list(noisy.values()), list(truth.values()))[0]
    )
    assert diff["difference"] == pytest.approx(want)
    assert diff["interval"][0] <= diff["difference"] <= diff["interval"][1]
    with pytest.raises(ccfv.UserError, match="unknown statistic"):
        paired_difference(truth, noisy, runs, "taus")
    d = [0.1, 0.2, -0.05, 0.3, 0.15]
    got = across_targets(d)
    assert got["positive"] == 4 and got["negative"] == 1
    # sign test by hand: P(X <= 1 or X >= 4), X ~ Binomial(5, 1/2)
    assert got["sign_test_p"] == pytest.approx((1 + 5 + 5 + 1) / 32)
    # exact sign-flip permutation test by hand: 32 flips, |mean| >= observed
    obs = abs(np.mean(d))
    flips = [abs(np.mean(np.array(s) * d)) for s in itertools.product([1, -1], repeat=5)]
    assert got["permutation_p"] == pytest.approx(np.mean(np.array(flips) >= obs - 1e-12))
    assert across_targets([None, 0.0])["sign_test_p"] is None


def test_rate_interval_wilson_by_hand():
    got = rate_interval([True, True, False, True])
    n, k, z = 4, 3, stats.norm.ppf(0.975)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert got["rate"] == 0.75
    assert got["interval"] == pytest.approx([centre - half, centre + half], abs=1e-9)
    assert rate_interval([])["rate"] is None


def test_target_report_and_headline():
    good, bad = _runs(spread=0.01), _runs(seed=1, spread=0.6)
    scores = {
        m: {"oracle": float(np.mean(v)), "anti": -float(np.mean(v))} for m, v in good.dice.items()
    }
    reports = {
        "good": target_report(good, scores, n_boot=300),
        "bad": target_report(bad, scores, n_boot=300),
    }
    r = reports["good"]
    assert r["n_seeds"] == 4 and r["n_test_cases"] == 9
    assert r["reliability"]["method"] == "split_half" and r["reliability"]["spearman"] > 0.8
    assert r["noise_ceiling"]["spearman"]["mean"] > 0.8
    assert r["estimators"]["oracle"]["weighted_tau"]["value"] == pytest.approx(1.0)
    head = headline(reports)
    assert reports["bad"]["reliability"]["spearman"] < 0.8
    assert head["reliable"] == ["good"] and list(head["too_noisy"]) == ["bad"]
    assert head["estimators"]["oracle"]["weighted_tau"] == pytest.approx(1.0)
    assert head["estimators"]["oracle"]["best_group_hit"]["rate"] == 1.0
    assert head["estimators"]["anti"]["top3_recall"]["rate"] == 0.0
    assert head["estimators"]["oracle"]["n_targets"] == 1


def test_from_models_reads_per_case_dice():
    models = {
        "a": {
            "dice": [0.5, 0.6],
            "dice_per_case": [{"x": [0.5], "y": [None]}, {"x": [0.6], "y": [None]}],
        },
        "b": {
            "dice": [0.4, 0.3],
            "dice_per_case": [{"y": [None], "x": [0.4]}, {"x": [0.3], "y": [None]}],
        },
    }
    runs = TargetRuns.from_models(models)
    assert runs.cases["b"].shape == (2, 2, 1)
    assert runs.cases["b"][0, 0, 0] == 0.4  # cases in one order (sorted ids) for every model
    assert np.isnan(runs.cases["a"][1, 1, 0])
    del models["b"]["dice_per_case"]
    assert TargetRuns.from_models(models).cases == {}
