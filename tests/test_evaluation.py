"""Evaluation of scores against fine-tuned Dice: statistics, readers, `ccfv evaluate`."""

import csv
import itertools

import numpy as np
import pytest

from ccfv.cli import main
from ccfv.errors import CCFVWarning, UserError
from ccfv.evaluation import (
    COLUMNS,
    evaluate,
    kendall_tau,
    pearson,
    read_scores_csv,
    read_truth_csv,
    regret,
    spearman,
    top1_relative,
    weighted_tau,
)


def slow_weighted_tau(x, y):
    """Vigna's additive hyperbolic weighted tau, written out pair by pair, for inputs without
    ties: the mean of tau_rho over rho = decreasing rank by x and rho = decreasing rank by y,
    where pair (i, j) weighs 1/(rho_i + 1) + 1/(rho_j + 1)."""
    n = len(x)
    assert len(set(x)) == n and len(set(y)) == n, "the slow version assumes no ties"

    def tau_rho(key):
        rho = [sum(key[j] > key[i] for j in range(n)) for i in range(n)]  # 0 = largest
        num = den = 0.0
        for i, j in itertools.combinations(range(n), 2):
            w = 1.0 / (rho[i] + 1) + 1.0 / (rho[j] + 1)
            num += w * np.sign(x[i] - x[j]) * np.sign(y[i] - y[j])
            den += w
        return num / den

    return 0.5 * (tau_rho(x) + tau_rho(y))


def write_csv(path, rows):
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


# ------------------------------------------------------------------------------ statistics


def test_perfect_and_reversed_rankings():
    dice = [0.60, 0.70, 0.75, 0.80, 0.90]
    score = [-3.0, -1.0, 0.5, 2.0, 7.0]  # same order, not linear
    for f in (weighted_tau, kendall_tau, spearman):
        assert f(score, dice) == pytest.approx(1.0)
        assert f([-s for s in score], dice) == pytest.approx(-1.0)
    assert 0.9 < pearson(score, dice) < 1.0  # monotone but not linear
    assert pearson([2 * d + 1 for d in dice], dice) == pytest.approx(1.0)
    assert top1_relative(score, dice) == 1.0 and regret(score, dice) == 0.0


def test_weighted_tau_hand_computed_three_models():
    # scores rank a > b > c, Dice ranks a > c > b: the pair (b, c) is swapped.
    # Under either ranking rho the pair weights are 1+1/2, 1+1/3 (concordant) and 1/2+1/3
    # (discordant): tau = (3/2 + 4/3 - 5/6) / (3/2 + 4/3 + 5/6) = 2 / (11/3) = 6/11.
    assert weighted_tau([3.0, 2.0, 1.0], [0.9, 0.7, 0.8]) == pytest.approx(6 / 11, abs=1e-12)
    assert kendall_tau([3.0, 2.0, 1.0], [0.9, 0.7, 0.8]) == pytest.approx(1 / 3, abs=1e-12)
    # the same swap at the top costs more than at the bottom
    assert weighted_tau([3.0, 2.0, 1.0], [0.8, 0.9, 0.7]) < 6 / 11


def test_weighted_tau_matches_slow_reference():
    rng = np.random.default_rng(3)
    for n in (3, 4, 5, 7, 9):
        for _ in range(20):
            x = list(rng.permutation(n) + rng.uniform(0, 0.1))
            y = list(rng.permutation(n) * 0.05 + 0.4)
            assert weighted_tau(x, y) == pytest.approx(slow_weighted_tau(x, y), abs=1e-12)
    # an example where the two importance rankings give different taus: the value is their
    # mean (scipy's rank=True), neither one alone (rank=None would use the score's ranking only)
    x, y = [5.0, 4.0, 3.0, 2.0, 1.0], [0.3, 0.9, 0.5, 0.8, 0.1]
    from scipy.stats import weightedtau

    assert weightedtau(x, y, rank=None).statistic != pytest.approx(weighted_tau(x, y))
    assert weighted_tau(x, y) == pytest.approx(slow_weighted_tau(x, y), abs=1e-12)
    assert weighted_tau(x, y) == pytest.approx(weighted_tau(y, x), abs=1e-12)


def test_other_correlations_hand_values():
    x, y = [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0]
    assert kendall_tau(x, y) == pytest.approx(4 / 6)  # 5 concordant, 1 discordant
    assert spearman(x, y) == pytest.approx(1 - 6 * 2 / (4 * 15))  # sum d^2 = 2 -> 0.8
    assert pearson(x, y) == pytest.approx(0.8)  # ranks are the values here


def test_top1_and_regret_hand_example():
    score = [0.9, 0.5, 0.1, 0.3]
    dice = [0.80, 0.85, 0.70, 0.60]  # the score picks model 0; model 1 is best
    assert top1_relative(score, dice) == pytest.approx(0.80 / 0.85)
    assert regret(score, dice) == pytest.approx(0.05)


def test_ties_for_first_place_are_pessimistic():
    assert regret([1.0, 1.0, 0.2], [0.80, 0.85, 0.90]) == pytest.approx(0.10)
    assert regret([1.0, 1.0, 0.2], [0.85, 0.80, 0.70]) == pytest.approx(0.05)
    assert top1_relative([1.0, 1.0, 0.2], [0.85, 0.80, 0.70]) == pytest.approx(0.80 / 0.85)
    # a constant score cannot choose: it counts as picking the worst model
    assert regret([0.0, 0.0, 0.0], [0.5, 0.9, 0.7]) == pytest.approx(0.4)


def test_constant_inputs_are_undefined_not_nan():
    for f in (weighted_tau, kendall_tau, spearman, pearson):
        assert f([1.0, 1.0, 1.0], [0.5, 0.6, 0.7]) is None
        assert f([1.0, 2.0, 3.0], [0.5, 0.5, 0.5]) is None
    assert top1_relative([1.0, 2.0, 3.0], [0.0, 0.0, 0.0]) is None


def test_statistics_reject_bad_vectors():
    with pytest.raises(UserError, match="different lengths"):
        weighted_tau([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(UserError, match="finite"):
        pearson([1.0, float("nan"), 3.0], [1.0, 2.0, 3.0])


# ------------------------------------------------------------------------------ evaluate

SCORES = {
    "a": {"good": 4.0, "bad": 1.0, "flat": 2.0, "gappy": 10.0},
    "b": {"good": 3.0, "bad": 2.0, "flat": 2.0, "gappy": None},
    "c": {"good": 2.0, "bad": 3.0, "flat": 2.0, "gappy": 5.0},
    "d": {"good": 1.0, "bad": 4.0, "flat": 2.0, "gappy": float("nan")},
    "e": {"good": 0.0, "bad": 5.0, "flat": 2.0, "gappy": 1.0},
}
TRUTH = {"a": 0.90, "b": 0.85, "c": 0.80, "d": 0.70, "e": 0.60}


def test_evaluate_rows():
    rows = evaluate(SCORES, TRUTH)
    assert [r["method"] for r in rows] == ["good", "bad", "flat", "gappy"]
    good, bad, flat, gappy = rows
    assert good["weighted_tau"] == pytest.approx(1.0) and good["kendall_tau"] == pytest.approx(1)
    assert good["top1_relative"] == 1.0 and good["regret"] == 0.0 and good["n_models"] == 5
    assert bad["spearman"] == pytest.approx(-1.0)
    assert bad["top1_relative"] == pytest.approx(0.60 / 0.90)
    assert bad["regret"] == pytest.approx(0.30)
    assert all(flat[c] is None for c in ("weighted_tau", "kendall_tau", "spearman", "pearson"))
    assert flat["regret"] == pytest.approx(0.30) and any("same for all" in n for n in flat["notes"])
    assert gappy["n_models"] == 3 and gappy["models"] == ["a", "c", "e"]
    assert gappy["weighted_tau"] == pytest.approx(1.0)
    assert any("b, d" in n for n in gappy["notes"])
    assert rows.warnings == []


def test_evaluate_reports_models_missing_on_one_side():
    truth = dict(TRUTH, z=0.99)
    del truth["e"]
    with pytest.warns(CCFVWarning):
        rows = evaluate(SCORES, truth, methods=["good"])
    assert rows[0]["n_models"] == 4 and rows[0]["top1_relative"] == 1.0
    assert any("e" in w and "no fine-tuned Dice" in w for w in rows.warnings)
    assert any("z" in w and "not in" in w for w in rows.warnings)


def test_evaluate_too_few_models_names_method_and_files():
    truth = {"a": 0.9, "b": 0.8, "x": 0.7, "y": 0.6}
    with pytest.warns(CCFVWarning), pytest.raises(UserError) as info:
        evaluate(SCORES, truth, scores_name="run/scores.csv", truth_name="ft.csv")
    message = str(info.value)
    assert "'good'" in message and "run/scores.csv" in message and "ft.csv" in message
    assert "x, y" in message and "at least 3" in message
    with pytest.warns(CCFVWarning), pytest.raises(UserError, match="'gappy'.*b, d"):
        evaluate(SCORES, {m: TRUTH[m] for m in "abcd"}, methods=["gappy"])
    with pytest.raises(UserError, match="no column 'nope'"):
        evaluate(SCORES, TRUTH, methods=["nope"])


# ------------------------------------------------------------------------------ readers


def test_readers(tmp_path):
    scores = write_csv(
        tmp_path / "scores.csv",
        [["model", "ccfv", "logme"], ["m1", "0.5", ""], ["m2", "-1e3", "nan"], ["m3", "2", "3"]],
    )
    assert read_scores_csv(scores) == {
        "m1": {"ccfv": 0.5, "logme": None},
        "m2": {"ccfv": -1000.0, "logme": None},
        "m3": {"ccfv": 2.0, "logme": 3.0},
    }
    truth = write_csv(
        tmp_path / "ft.csv",
        [["dice_std", "Model", "dice"], ["0.1", "m1", "0.8"], [], ["0.2", "m2", " 0.75 "]],
    )
    assert read_truth_csv(truth) == {"m1": 0.8, "m2": 0.75}


@pytest.mark.parametrize(
    "rows, pattern",
    [
        ([["model", "score"], ["m1", "0.8"]], r"no 'dice' column"),
        ([["name", "dice"], ["m1", "0.8"]], r"no 'model' column"),
        (
            [["model", "dice"], ["m1", "0.8"], ["m2", "high"]],
            r"line 3: dice of model 'm2' is 'high'",
        ),
        (
            [["model", "dice"], ["m1", "0.8"], ["m1", "0.7"]],
            r"line 3: model 'm1' appears twice .*line 2",
        ),
        ([["model", "dice"], ["m1", ""]], r"line 2: model 'm1' has no dice value"),
        ([["model", "dice"], ["m1", "inf"]], r"line 2: dice of model 'm1' is 'inf'"),
        ([["model", "dice"]], r"no model line"),
    ],
)
def test_truth_reader_errors_name_file_line_and_value(tmp_path, rows, pattern):
    path = write_csv(tmp_path / "finetuned.csv", rows)
    with pytest.raises(UserError, match=pattern) as info:
        read_truth_csv(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "rows, pattern",
    [
        ([["name", "ccfv"], ["m1", "0.8"]], r"line 1: the first column is 'name'"),
        ([["model"], ["m1"]], r"no method column"),
        ([["model", "ccfv", "ccfv"], ["m1", "1", "2"]], r"'ccfv' appears twice"),
        ([["model", "ccfv"], ["m1", "1"], ["m2", "1", "5"]], r"line 3: 3 cells, the header has 2"),
        ([["model", "ccfv"], ["m1", "1"], ["m2", "abc"]], r"line 3: ccfv of model 'm2' is 'abc'"),
        ([["model", "ccfv"], ["m1", "1"], ["m1", "2"]], r"line 3: model 'm1' appears twice"),
    ],
)
def test_scores_reader_errors_name_file_line_and_value(tmp_path, rows, pattern):
    path = write_csv(tmp_path / "scores.csv", rows)
    with pytest.raises(UserError, match=pattern) as info:
        read_scores_csv(path)
    assert str(path) in str(info.value)


def test_missing_files(tmp_path):
    with pytest.raises(UserError, match=r"truth file .*nothere\.csv does not exist"):
        read_truth_csv(tmp_path / "nothere.csv")
    with pytest.raises(UserError, match=r"scores file .*gone\.csv does not exist"):
        read_scores_csv(tmp_path / "gone.csv")


# ------------------------------------------------------------------------------ CLI


def test_cli_evaluate_end_to_end(tmp_path, capsys):
    scores = write_csv(
        tmp_path / "scores.csv",
        [
            ["model", "ccfv", "ccfv-official", "logme"],
            ["unet_a", "-1.5", "3.0", "10.0"],
            ["unet_b", "-2.0", "4.0", ""],
            ["segres_c", "-0.5", "1.0", "20.0"],
            ["scratch", "-4.0", "2.0", "5.0"],
            ["no_truth", "0.0", "0.0", "0.0"],
        ],
    )
    truth = write_csv(
        tmp_path / "finetuned.csv",
        [
            ["model", "dice", "dice_std"],
            ["segres_c", "0.88", "0.01"],
            ["unet_a", "0.84", "0.02"],
            ["unet_b", "0.80", "0.02"],
            ["scratch", "0.71", "0.03"],
            ["not_scored", "0.5", "0"],
        ],
    )
    out = tmp_path / "eval"
    assert (
        main(["evaluate", "--scores", str(scores), "--truth", str(truth), "--out", str(out)]) == 0
    )
    captured = capsys.readouterr()
    assert "weighted_tau" in captured.out and "ccfv-official" in captured.out
    assert "no_truth" in captured.err and "not_scored" in captured.err

    with open(out / "evaluation.csv", newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0] == [*COLUMNS, "n_models"]
    rows = {r[0]: r for r in table[1:]}
    assert list(rows) == ["ccfv", "ccfv-official", "logme"]
    # ccfv orders the four models exactly as their Dice: every rank statistic is 1
    ccfv = [float(v) for v in rows["ccfv"][1:7]]
    assert ccfv[:3] == pytest.approx([1.0, 1.0, 1.0]) and ccfv[4:] == pytest.approx([1.0, 0.0])
    assert ccfv[3] == pytest.approx(
        np.corrcoef([-1.5, -2.0, -0.5, -4.0], [0.84, 0.80, 0.88, 0.71])[0, 1]
    )
    assert rows["ccfv"][7] == "4"
    # ccfv-official picks unet_b (0.80 of a best 0.88); its taus against the slow reference
    official = rows["ccfv-official"]
    x, y = [3.0, 4.0, 1.0, 2.0], [0.84, 0.80, 0.88, 0.71]
    assert float(official[1]) == pytest.approx(slow_weighted_tau(x, y), abs=1e-12)
    assert float(official[5]) == pytest.approx(0.80 / 0.88)
    assert float(official[6]) == pytest.approx(0.08)
    # logme failed on unet_b: 3 models, all in Dice order
    assert rows["logme"][7] == "3" and float(rows["logme"][1]) == pytest.approx(1.0)

    png = (out / "evaluation.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert not list(out.glob("*.tmp"))


def test_cli_evaluate_constant_column_and_errors(tmp_path, capsys):
    scores = write_csv(
        tmp_path / "scores.csv", [["model", "flat"], ["a", "1"], ["b", "1"], ["c", "1"]]
    )
    truth = write_csv(
        tmp_path / "ft.csv", [["model", "dice"], ["a", "0.9"], ["b", "0.8"], ["c", "0.7"]]
    )
    out = tmp_path / "eval"
    assert (
        main(["evaluate", "--scores", str(scores), "--truth", str(truth), "--out", str(out)]) == 0
    )
    assert "same for all 3 models" in capsys.readouterr().out
    with open(out / "evaluation.csv", newline="") as handle:
        row = list(csv.reader(handle))[1]
    assert row[:5] == ["flat", "", "", "", ""]
    assert float(row[5]) == pytest.approx(0.7 / 0.9) and float(row[6]) == pytest.approx(0.2)

    bad_truth = write_csv(tmp_path / "bad.csv", [["model", "dice"], ["a", "0.9"], ["b", "x"]])
    assert (
        main(["evaluate", "--scores", str(scores), "--truth", str(bad_truth), "--out", str(out)])
        == 2
    )
    err = capsys.readouterr().err
    assert "ccfv evaluate: error:" in err and str(bad_truth) in err and "'x'" in err
    assert "Traceback" not in err

    unknown = write_csv(
        tmp_path / "other.csv", [["model", "dice"], ["p", "0.9"], ["q", "0.8"], ["r", "0.7"]]
    )
    assert (
        main(["evaluate", "--scores", str(scores), "--truth", str(unknown), "--out", str(out)]) == 2
    )
    err = capsys.readouterr().err
    assert str(unknown) in err and str(scores) in err and "'flat'" in err
