"""``ccfv select`` as a method of the benchmark (issue 18, item 4): the replay of its successive
halving on the fine-tuning runs' validation curves, the regret / hit rate / compute of its pick
and of the baselines, the config key, and ``--schedule-steps`` (what the replay runs live)."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import SHARED

import ccfv
from ccfv.bench.selection import (
    EVERYTHING,
    HINDSIGHT,
    SELECT,
    TRAINING_FREE,
    curve_value,
    fit_plan,
    pick_regret,
    replay_halving,
    selection_headline,
    target_selection,
)
from ccfv.errors import UserError
from ccfv.select.plan import Plan, halving_plan, with_schedule

DATA = SHARED / "data"
ROOT = Path(__file__).resolve().parents[1]


def _curve(points: dict[int, float], steps: int = 1000, every: int = 50, fill: float = 0.3):
    """A validation curve on the runs' grid: ``points`` where given, ``fill`` elsewhere."""
    return [[s, points.get(s, fill)] for s in range(every, steps + 1, every)]


# ------------------------------------------------------------------------------------------------
# the plan and the replay


@pytest.mark.parametrize(
    "k, budget, steps, base, ends, total, note",
    [
        # halving_plan: base = budget // sum(counts[r] * 2**r); then down to the 50-step grid
        (3, 1000, 1000, 100, (100, 300), 700, "rounded down from 142 to 100"),  # weight 7
        (5, 1000, 1000, 50, (50, 150, 350), 950, "rounded down from 52 to 50"),  # weight 19
        (5, 2000, 1000, 100, (100, 300, 700), 1900, "rounded down from 105 to 100"),
        (2, 1000, 1000, 500, (500,), 1000, None),  # one rung of 2 candidates
        (2, 2000, 1000, 1000, (1000,), 2000, None),
        (1, 2000, 1000, 1000, (1000,), 1000, "capped at 1000"),  # K = 1: one full fine-tune
        (3, 4000, 2000, 550, (550, 1650), 3 * 550 + 2 * 1100, "from 571 to 550"),
    ],
)
def test_fit_plan_by_hand(k, budget, steps, base, ends, total, note):
    plan, notes = fit_plan(k, budget, steps, 50)
    assert plan.base == base and plan.ends == ends
    assert plan.total_steps == total <= budget
    assert plan.schedule_steps == steps  # the runs' own schedule
    assert (note is None and notes == []) or (note is not None and note in " ".join(notes))
    # the plan used is what a live select makes of its total steps (and --schedule-steps)
    assert halving_plan(k, plan.total_steps).base == base


def test_fit_plan_refuses_a_budget_below_the_grid():
    with pytest.raises(UserError, match=r"budget of 500 steps for K = 5 .*at least 950 steps"):
        fit_plan(5, 500, 500, 50)
    with pytest.raises(UserError, match="finetune.eval_every 0"):
        fit_plan(2, 1000, 1000, 0)


def test_curve_value_reads_the_point_at_the_step():
    curve = [[50, 0.4], [100, 0.5], [150, None]]
    assert curve_value(curve, 100) == 0.5
    assert curve_value(curve, 150) is None and curve_value(curve, 75) is None
    assert curve_value(None, 50) is None


def test_halving_fixes_a_wrong_training_free_top1():
    """Ranking a > b > c; K = 3, base 100, ends 100 and 300. By hand: rung 1 keeps the two best
    at step 100, b (0.65) and a (0.60), c (0.50) stops after 100 steps; rung 2 at step 300:
    b 0.80 > a 0.70, so b, although the ranking put a first."""
    plan, _ = fit_plan(3, 1000, 1000, 50)
    curves = {
        "a": _curve({100: 0.60, 300: 0.70}),
        "b": _curve({100: 0.65, 300: 0.80}),
        "c": _curve({100: 0.50, 300: 0.95}),  # late bloomer: eliminated before it shows
    }
    r = replay_halving(["a", "b", "c"], curves, plan, 1000, 50)
    assert r.rungs == ({"a": 0.60, "b": 0.65, "c": 0.50}, {"b": 0.80, "a": 0.70})
    assert r.pick == "b"
    assert r.steps == {"a": 300, "b": 300, "c": 100}
    assert r.total_steps == plan.total_steps == 3 * 100 + 2 * 200


def test_a_tie_is_broken_by_the_ranking_order():
    plan, _ = fit_plan(2, 1000, 1000, 50)  # one rung: both to step 500, the better is picked
    curves = {"a": _curve({500: 0.7}), "b": _curve({500: 0.7})}
    assert replay_halving(["a", "b"], curves, plan, 1000, 50).pick == "a"
    assert replay_halving(["b", "a"], curves, plan, 1000, 50).pick == "b"
    curves["b"] = _curve({500: 0.7 + 1e-9})
    assert replay_halving(["a", "b"], curves, plan, 1000, 50).pick == "b"


def test_a_failed_or_missing_run_is_never_kept():
    plan, _ = fit_plan(3, 1000, 1000, 50)
    curves = {
        "a": None,  # no run: fails at once, trains no step
        "b": _curve({100: 0.5, 300: 0.6}),
        "c": _curve({100: 0.4, 300: 0.7}),
    }
    r = replay_halving(["a", "b", "c"], curves, plan, 1000, 50)
    assert r.rungs[0] == {"a": None, "b": 0.5, "c": 0.4}
    assert r.pick == "c" and r.steps == {"a": 0, "b": 300, "c": 300}
    # a curve without the point at a rung end (a run stopped early): failed at that rung
    curves = {"a": _curve({100: 0.9}, steps=200), "b": _curve({300: 0.6}), "c": _curve({})}
    r = replay_halving(["a", "b", "c"], curves, plan, 1000, 50)
    assert r.rungs[1] == {"a": None, "b": 0.6} and r.pick == "b"
    everyone_failed = replay_halving(["a", "b", "c"], dict.fromkeys("abc"), plan, 1000, 50)
    assert everyone_failed.pick is None and everyone_failed.total_steps == 0


def test_replay_refuses_rung_ends_off_the_grid_or_past_the_runs():
    with pytest.raises(UserError, match=r"rung ends \[142, 426\] do not fit.*validation every 50"):
        replay_halving(["a", "b", "c"], {}, halving_plan(3, 1000), 1000, 50)
    with pytest.raises(UserError, match=r"rung ends \[1000, 3000\] do not fit"):
        replay_halving(["a", "b", "c"], {}, Plan((3, 2), 1000), 1000, 50)
    with pytest.raises(UserError, match="2 candidate"):
        replay_halving(["a", "b"], {}, Plan((3, 2), 100), 1000, 50)


# ------------------------------------------------------------------------------------------------
# regret, hit rate, compute


def test_pick_regret_against_a_slow_reference():
    rng = np.random.default_rng(3)
    truth = np.array([0.6, 0.7, 0.9, 0.5])
    reps = truth + 0.05 * rng.standard_normal((300, 4))
    picks = [0, 2, 2, 1]
    got = pick_regret(picks, truth, reps, seed=4)
    assert got["value"] == pytest.approx(np.mean([0.3, 0.0, 0.0, 0.2]), abs=1e-15)
    assert got["per_seed"] == pytest.approx([0.3, 0.0, 0.0, 0.2], abs=1e-15)
    # reference: the same draws, one replicate and one seed at a time
    draw = np.random.default_rng([4, 18]).integers(0, 4, size=(300, 4))
    boot = []
    for b in range(300):
        total = 0.0
        for j in range(4):
            total += max(reps[b]) - reps[b][picks[draw[b, j]]]
        boot.append(total / 4)
    lo, hi = np.quantile(boot, [0.025, 0.975])
    assert got["interval"] == pytest.approx([lo, hi], abs=1e-12)


def _entry(n_seeds=4, scoring_seconds=10.0):
    """Four models, ranked m0 > m1 > m2 > m3 by ccfv; m2 is clearly the best (test Dice 0.9
    against 0.5-0.7, seed noise 0.002), and shows it on validation only after 100 steps."""
    rng = np.random.default_rng(0)
    levels = {"m0": 0.6, "m1": 0.7, "m2": 0.9, "m3": 0.5}
    at = {  # validation Dice at steps 100, 300, 500; the run's best validation Dice
        "m0": ({100: 0.50, 300: 0.60, 500: 0.62}, 0.64),
        "m1": ({100: 0.40, 300: 0.55, 500: 0.58}, 0.60),
        "m2": ({100: 0.45, 300: 0.80, 500: 0.85}, 0.88),
        "m3": ({100: 0.30, 300: 0.35, 500: 0.40}, 0.45),
    }
    models = {}
    for i, (name, level) in enumerate(levels.items()):
        points, best = at[name]
        models[name] = {
            "dice": [float(level + 0.002 * rng.standard_normal()) for _ in range(n_seeds)],
            "validation_curve": [_curve(points, fill=0.2) for _ in range(n_seeds)],
            "validation_dice": [best] * n_seeds,
            "finetune_seconds": [100.0 * (i + 1)] * n_seeds,
            "scores": {"ccfv": 4.0 - i, "other": levels[name]},
        }
    return {"models": models, "finetune_steps": 1000, "scoring_seconds": scoring_seconds}


def _rows(result):
    return {
        (r["method"], r.get("top"), r.get("multiple")): r for r in result["rows"]
    }  # one row per kind


def test_target_selection_by_hand():
    result = target_selection(
        _entry(),
        top=[1, 2, 3, 5],
        budgets=[1, 2],
        eval_every=50,
        n_seeds=4,
        methods=["ccfv", "other"],
        n_boot=200,
    )
    assert result["best_group"] == ["m2"]
    rows = _rows(result)
    truth = result["truth"]
    # K = 3, B = 1000: rungs 3 x 100 (m0 0.50, m2 0.45 go on), 2 x 200 (m2 0.80 > m0 0.60)
    k3 = rows[(SELECT, 3, 1)]
    assert k3["picks"] == ["m2"] * 4 and k3["plan"]["rung_ends"] == [100, 300]
    assert k3["regret"]["value"] == pytest.approx(0.0) and k3["regret"]["interval"] == [0, 0]
    assert k3["best_group_hit"]["rate"] == 1.0 and k3["best_group_hit"]["n"] == 4
    c = k3["compute"]
    assert c["steps"] == 700 and c["fraction_steps"] == pytest.approx(700 / 4000)
    # seconds per step: m0 0.1, m1 0.2, m2 0.3; m0 and m2 trained 300 steps, m1 100
    assert c["seconds"] == pytest.approx(0.1 * 300 + 0.2 * 100 + 0.3 * 300)
    assert c["fraction_seconds"] == pytest.approx((140 + 10) / 1000) and c["scoring_included"]
    # K = 2, B = 1000: m0 and m1 to step 500, m0 (0.62) picked: the best is not a candidate
    k2 = rows[(SELECT, 2, 1)]
    assert k2["picks"] == ["m0"] * 4 and k2["plan"]["rung_ends"] == [500]
    assert k2["regret"]["value"] == pytest.approx(truth["m2"] - truth["m0"])
    assert k2["best_group_hit"]["rate"] == 0.0
    assert k2["compute"]["fraction_steps"] == pytest.approx(1000 / 4000)
    # K = 1: the training-free top-1, fine-tuned; capped at one full fine-tune for B = 2x
    assert rows[(SELECT, 1, 2)]["plan"]["total_steps"] == 1000
    assert rows[(SELECT, 1, 2)]["picks"] == ["m0"] * 4
    # K = 5 > 4 models: not run, said so
    assert any(m["top"] == 5 and "exceeds the 4 ranked" in m["reason"] for m in result["not_run"])
    free = rows[(TRAINING_FREE, None, None)]
    assert free["picks"] == ["m0"] * 4 and free["estimator"] == "ccfv"
    assert free["regret"]["value"] == pytest.approx(truth["m2"] - truth["m0"])
    assert free["compute"]["fraction_steps"] == 0.0
    # the same pick on every seed is one trial, not four
    assert free["hit_trials"] == [False] and free["best_group_hit"]["n"] == 1
    assert free["compute"]["fraction_seconds"] == pytest.approx(10 / 1000)
    hind = rows[(HINDSIGHT, None, None)]  # "other" scores = the levels: weighted tau 1
    assert hind["estimator"] == "other" and hind["weighted_tau"] == pytest.approx(1.0)
    assert hind["picks"] == ["m2"] * 4 and hind["best_group_hit"]["n"] == 1
    every = rows[(EVERYTHING, None, None)]
    assert every["picks"] == ["m2"] * 4 and every["compute"]["fraction_steps"] == 1.0
    assert every["compute"]["seconds"] == pytest.approx(1000.0)
    head = selection_headline({"t": result}, ["t"])
    assert head["rows"]["select K=3 B=1x"]["best_group_hit"]["rate"] == 1.0
    assert head["rows"]["select K=3 B=1x"]["best_group_hit"]["n"] == 4
    assert head["rows"][TRAINING_FREE]["best_group_hit"]["n"] == 1
    assert head["rows"][TRAINING_FREE]["regret"] == pytest.approx(free["regret"]["value"])
    assert selection_headline({"t": result}, [])["rows"] == {}


def test_scoring_time_unknown_and_no_ranking():
    result = target_selection(
        _entry(scoring_seconds=None), top=[3], budgets=[1], eval_every=50, n_seeds=4, n_boot=50
    )
    rows = _rows(result)
    assert rows[(TRAINING_FREE, None, None)]["compute"]["fraction_seconds"] is None
    k3 = rows[(SELECT, 3, 1)]["compute"]
    assert k3["fraction_seconds"] == pytest.approx(140 / 1000) and not k3["scoring_included"]
    entry = _entry()
    for m in entry["models"].values():
        m["scores"] = {}
    bare = target_selection(entry, top=[3], budgets=[1], eval_every=50, n_seeds=4, n_boot=50)
    assert "no model has a finite `ccfv` score" in bare["no_ranking"]
    assert [r["method"] for r in bare["rows"]] == [EVERYTHING]


def test_a_model_without_scores_and_candidates_without_values():
    """A model with no ``scores`` at all is left out of the rankings (no KeyError in the
    hindsight baseline); candidates whose curves hold no finite value at the rung ends all
    fail: the (K, B) is listed as not run, with its budget multiple."""
    entry = _entry()
    del entry["models"]["m3"]["scores"]
    result = target_selection(
        entry, top=[3], budgets=[1], eval_every=50, n_seeds=4, methods=["other"], n_boot=50
    )
    hind = _rows(result)[(HINDSIGHT, None, None)]
    assert hind["estimator"] == "other" and hind["picks"] == ["m2"] * 4
    for m in entry["models"].values():
        m["validation_curve"] = [[[s, float("nan")] for s, _ in c] for c in m["validation_curve"]]
    result = target_selection(entry, top=[3], budgets=[1], eval_every=50, n_seeds=4, n_boot=50)
    assert result["not_run"] == [
        {"top": 3, "budget": 1000, "multiple": 1, "reason": "every candidate failed"}
    ]


def test_a_target_with_a_missing_run_is_skipped():
    entry = _entry()
    entry["models"]["m1"]["validation_curve"][2] = None
    entry["models"]["m3"]["dice"] = entry["models"]["m3"]["dice"][:3]
    result = target_selection(entry, top=[3], budgets=[1], eval_every=50, n_seeds=4)
    assert set(result) == {"skipped"}
    assert "m1 (seed 2)" in result["skipped"] and "m3 (seed 3)" in result["skipped"]
    for m in entry["models"].values():
        del m["validation_curve"]
    result = target_selection(entry, top=[3], budgets=[1], eval_every=50, n_seeds=4)
    assert "no validation curves" in result["skipped"]


def test_a_budget_that_does_not_fit_is_reported_not_run():
    result = target_selection(
        {**_entry(), "finetune_steps": 500},
        top=[3],
        budgets=[0.2],
        eval_every=50,
        n_seeds=4,
        n_boot=50,
    )
    (miss,) = result["not_run"]
    assert miss["budget"] == 100 and "at least 350 steps" in miss["reason"]


def test_section_and_plot(tmp_path):
    from ccfv.bench.selection import selection_statistics
    from ccfv.bench.selection_report import plot_selection, selection_section

    summary = {"targets": {"t": _entry(), "u": {"models": {}, "finetune_steps": 10}}}
    stats = selection_statistics(
        summary,
        {"top": [1, 3], "budgets": [1]},
        eval_every=50,
        n_seeds=4,
        reliable=["t"],
        methods=["ccfv", "other"],
        n_boot=50,
    )
    md = "\n".join(selection_section(stats))
    assert "### Across the reliable targets (t)" in md
    assert "| select | 3 | 1000 | 3×100 → 2×200 (700 of 1000 steps)" in md
    assert "Skipped: no validation curves" in md
    assert plot_selection(stats, tmp_path / "p.png").stat().st_size > 5000


# ------------------------------------------------------------------------------------------------
# the config key


def _config(tmp_path, **changes):
    raw = {"data_root": str(DATA), "tasks": ["drive_retinal_vessels", "hc18_fetal_head"], **changes}
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


needs_data = pytest.mark.skipif(
    not (DATA / "hc18_fetal_head").exists(), reason="../shared/data absent"
)


@needs_data
@pytest.mark.parametrize(
    "select, message",
    [
        ({"top": [0, 2]}, r"select.top \[0, 2\]: give a list of candidate counts K >= 1"),
        ({"top": 3}, r"select.top 3: give a list"),
        ({"top": [True]}, r"select.top \[True\]"),
        ({"budgets": []}, r"select.budgets \[\]: give a list of total budgets as multiples"),
        ({"budgets": [1, -2]}, r"select.budgets \[1, -2\]"),
        ({"budgets": ["1000"]}, r"select.budgets \['1000'\]"),
        ({"steps": 5}, r"select: unknown key 'steps'; known keys: top, budgets"),
    ],
)
def test_select_key_is_checked(tmp_path, select, message):
    from ccfv.bench.config import load_config

    with pytest.raises(ccfv.UserError, match=message):
        load_config(_config(tmp_path, select=select))


@needs_data
def test_select_key_enters_no_cache_digest(tmp_path):
    from ccfv.bench.config import load_config
    from ccfv.bench.run import _scores_path, finetune_path, pretrain_path

    class Named:
        name = "hc18_fetal_head"

    plain = load_config(_config(tmp_path))
    assert plain["select"] == {"top": [1, 2, 3, 5], "budgets": [1, 2]}
    (tmp_path / "b").mkdir()
    other = load_config(_config(tmp_path / "b", select={"top": [2], "budgets": [0.5, 3]}))
    assert other["select"] == {"top": [2], "budgets": [0.5, 3]}
    t = Named()
    fp = {"checkpoint": "0123456789ab"}
    assert finetune_path(plain, "m", t, 1, tmp_path, **fp) == finetune_path(
        other, "m", t, 1, tmp_path, **fp
    )
    bank = {"m": "0123456789ab"}
    assert _scores_path(plain, t, tmp_path, "cpu", bank) == _scores_path(
        other, t, tmp_path, "cpu", bank
    )
    assert pretrain_path(plain, "unet", t, tmp_path) == pretrain_path(other, "unet", t, tmp_path)
    for name in ("transfer2d-v2", "chaos3d-v2"):
        config = load_config(ROOT / "benchmarks" / f"{name}.yaml")
        assert config["select"] == {"top": [1, 2, 3, 5], "budgets": [1, 2]}


# ------------------------------------------------------------------------------------------------
# --schedule-steps: what the replay runs, live


def test_with_schedule():
    plan = halving_plan(3, 700)
    assert with_schedule(plan, None) is plan
    longer = with_schedule(plan, 1000)
    assert longer.schedule_steps == 1000 and longer.ends == plan.ends
    assert longer.to_dict()["schedule_steps"] == 1000 and plan.to_dict()["schedule_steps"] == 300
    with pytest.raises(UserError, match=r"--schedule-steps 299: .*ends at step 300"):
        with_schedule(plan, 299)


def test_rungs_on_a_full_schedule_equal_one_run_read_at_the_rung_ends(tmp_path):
    """``train_rung`` on a plan with ``--schedule-steps`` = a full fine-tune's length gives at
    each rung end the validation Dice that one uninterrupted fine-tune of that length has at
    that step: the point the benchmark's replay reads from its curve."""
    import torch
    from monai.networks.nets import UNet

    from ccfv.select.run import CandidateRun, Prepared, SelectSettings, train_rung
    from ccfv.training import PatchSampler, TrainCase, fit, set_seed, validation_dice
    from ccfv.training.validate import ValCase

    rng = np.random.default_rng(0)

    def case(i):
        label = np.zeros((24, 24), dtype=np.int64)
        label[4 + i : 14 + i, 6:16] = 1
        image = (label + 0.3 * rng.standard_normal(label.shape)).astype(np.float32)[None]
        return image, label

    train = [TrainCase(f"c{i}", *case(i)) for i in range(3)]
    image, label = case(5)
    val = [ValCase("v", image, np.eye(4), label, np.eye(4))]

    def net():
        torch.manual_seed(0)
        return UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,))

    set_seed(0)
    settings = SelectSettings(lr=1e-2, seed=1, save_every=100, progress=False)
    plan = with_schedule(halving_plan(3, 14), 10)  # rungs end at steps 2 and 6; schedule 10
    prepared = Prepared(
        net(), PatchSampler(train, (16, 16), 2, seed=5), val, [16, 16], 0.25, 1, [], 2
    )
    run = CandidateRun(tmp_path / "run")
    values = [train_rung("m", run, prepared, plan, r, settings, lambda *_: None) for r in (0, 1)]

    def validate(model):
        return validation_dice(model, val, [16, 16], 2)

    whole = fit(
        net(),
        PatchSampler(train, (16, 16), 2, seed=5),
        steps=10,
        lr=1e-2,
        seed=1,
        schedule="poly",
        validate=validate,
        eval_every=2,
        keep_best=False,
    )
    at = {int(step): value for step, value in whole["curve"]}
    assert values == [at[2], at[6]]
    assert json.loads(run.record_path.read_text())["rungs"] == {"0": at[2], "1": at[6]}
    # the weights at the last rung's end are those of the full-length run stopped there ...
    stopped = net()
    fit(
        stopped,
        PatchSampler(train, (16, 16), 2, seed=5),
        steps=10,
        lr=1e-2,
        seed=1,
        schedule="poly",
        stop=6,
    )
    state = run.load_state()
    assert state.step == 6
    for k, v in stopped.state_dict().items():
        assert torch.equal(state.model[k], v), k
    # ... and not those of the default schedule, which ends at the last rung (6 steps)
    short = net()
    fit(short, PatchSampler(train, (16, 16), 2, seed=5), steps=6, lr=1e-2, seed=1, schedule="poly")
    assert not all(torch.equal(state.model[k], v) for k, v in short.state_dict().items())


def test_write_png_is_atomic_and_closes_the_figure(tmp_path):
    """The plots' one way to save (ccfv.files.write_png): a PNG at the path, the figure closed;
    a failing save leaves no file (not even its temporary) and still closes the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ccfv.files import write_png

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = write_png(fig, tmp_path / "a.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)
    fig, _ = plt.subplots()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    fig.savefig = broken  # type: ignore[method-assign]
    with pytest.raises(OSError, match="disk full"):
        write_png(fig, tmp_path / "b.png")
    assert not plt.fignum_exists(fig.number)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]
