"""ccfv select's arithmetic (halving plan, budgets, split) and the shared training pieces
(the loop's resume, mixed precision, head re-initialisation), on small CPU sizes."""

import numpy as np
import pytest
import torch
from monai.networks.nets import SegResNet, UNet

from ccfv.errors import UserError
from ccfv.select.plan import (
    group_keys,
    halving_plan,
    parse_budget,
    survivors,
    train_val_split,
)
from ccfv.training import PatchSampler, TrainCase, TrainState, fit, replace_head, set_seed
from ccfv.training.validate import case_dice


@pytest.mark.parametrize(
    "k, budget, counts, base, ends, total",
    [
        # hand-computed: weight = sum(counts[r] * 2**r), base = budget // weight
        (3, 700, (3, 2), 100, (100, 300), 3 * 100 + 2 * 200),  # weight 7
        (5, 1000, (5, 3, 2), 52, (52, 156, 364), 5 * 52 + 3 * 104 + 2 * 208),  # weight 19
        (4, 16, (4, 2), 2, (2, 6), 4 * 2 + 2 * 4),  # weight 8
        (2, 9, (2,), 4, (4,), 8),  # weight 2
        (1, 10, (1,), 10, (10,), 10),
        (8, 1000, (8, 4, 2), 41, (41, 123, 287), 8 * 41 + 4 * 82 + 2 * 164),  # weight 24
    ],
)
def test_halving_plan_by_hand(k, budget, counts, base, ends, total):
    plan = halving_plan(k, budget)
    assert plan.counts == counts and plan.base == base
    assert plan.ends == ends and plan.starts == (0, *ends[:-1])
    assert plan.schedule_steps == ends[-1]
    assert plan.total_steps == total <= budget


def test_halving_plan_refuses_too_small_a_budget():
    with pytest.raises(UserError, match="needs at least 7 steps"):
        halving_plan(3, 6)
    with pytest.raises(UserError, match="--top 0"):
        halving_plan(0, 100)


def test_survivors_by_dice_then_rank_order():
    order = ["a", "b", "c", "d"]
    assert survivors({"a": 0.5, "b": 0.7, "c": 0.5, "d": None}, order, 2) == ["b", "a"]
    assert survivors({"a": 0.5, "b": 0.7, "c": 0.5, "d": None}, order, 3) == ["b", "a", "c"]
    assert survivors({"a": None, "b": None}, order, 1) == []


@pytest.mark.parametrize(
    "text, steps, seconds",
    [
        ("1500", 1500, None),
        ("40steps", 40, None),
        ("90s", None, 90.0),
        ("20m", None, 1200.0),
        ("1h30m", None, 5400.0),
        ("0.5h", None, 1800.0),
    ],
)
def test_parse_budget(text, steps, seconds):
    budget = parse_budget(text)
    assert (budget.steps, budget.seconds) == (steps, seconds)


@pytest.mark.parametrize("text", ["0", "abc", "", "10x", "-5", "m"])
def test_parse_budget_refuses(text):
    with pytest.raises(UserError, match="--budget"):
        parse_budget(text)


def test_split_keeps_patients_apart():
    ids = [
        f"patient{p:03d}_frame{f:02d}_slice{s:02d}"
        for p in range(1, 6)
        for f in (1, 12)
        for s in (1, 2)
    ]
    keys, how = group_keys(ids, None)
    assert how.startswith("patients") and len(set(keys)) == 5
    train, val = train_val_split(ids, keys, 0.2, seed=3)
    assert sorted(train + val) == sorted(ids) and len(val) == 4  # one patient of 5
    assert not {i[:10] for i in train} & {i[:10] for i in val}
    assert train_val_split(ids, keys, 0.2, seed=3) == (train, val)
    plain = ["chaos_001", "chaos_002", "chaos_003"]
    assert group_keys(plain, None) == (plain, "one patient per case")
    assert group_keys(plain, r"^(chaos)_")[0] == ["chaos"] * 3
    with pytest.raises(UserError, match="at least 2"):
        train_val_split(plain, ["chaos"] * 3, 0.2, 0)
    with pytest.raises(UserError, match="does not match"):
        group_keys(plain, r"^(patient\d+)")
    with pytest.raises(UserError, match="no group"):
        group_keys(plain, r"chaos")


def test_case_dice_against_hand_values():
    label = np.array([[0, 1, 1], [2, 2, 0]])
    pred = np.array([[0, 1, 0], [2, 2, 2]])
    # class 1: 2*1/(1+2) = 2/3; class 2: 2*2/(3+2) = 4/5; class 3 absent from both
    assert case_dice(pred, label, 4) == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert case_dice(np.zeros((2, 2), int), np.zeros((2, 2), int), 3) is None


def _tiny_cases(n=2, shape=(24, 24), seed=0):
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        label = np.zeros(shape, dtype=np.int64)
        label[4 + i : 14 + i, 6:16] = 1
        image = (label + 0.3 * rng.normal(size=shape)).astype(np.float32)[None]
        cases.append(TrainCase(f"c{i}", image, label))
    return cases


def _tiny_net():
    torch.manual_seed(0)
    return UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,))


def test_fit_resumed_from_a_saved_state_equals_one_run():
    set_seed(0)
    sampler = PatchSampler(_tiny_cases(), roi=(16, 16), batch_size=2, seed=5)
    whole = _tiny_net()
    fit(whole, sampler, steps=8, lr=1e-2, seed=1, schedule="poly")
    saved = []
    first = _tiny_net()
    fit(
        first,
        sampler,
        steps=8,
        lr=1e-2,
        seed=1,
        schedule="poly",
        stop=4,
        save=lambda s: saved.append(s.to_dict()),
        save_every=2,
    )
    assert [s["step"] for s in saved] == [2, 4]
    second = _tiny_net()  # a fresh process would rebuild the network, then load the state
    info = fit(
        second,
        sampler,
        steps=8,
        lr=1e-2,
        seed=1,
        schedule="poly",
        start=TrainState.from_dict(saved[-1]),
    )
    assert info["steps"] == 8
    for (k, a), b in zip(whole.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), k
    # and a different seed of the sampler gives other weights (the check can fail)
    other = _tiny_net()
    fit(other, PatchSampler(_tiny_cases(), (16, 16), 2, seed=6), steps=8, lr=1e-2, seed=1)
    assert not all(
        torch.equal(a, b) for a, b in zip(whole.state_dict().values(), other.state_dict().values())
    )


def test_patches_oversample_foreground_and_keep_labels_aligned():
    cases = _tiny_cases(1, shape=(40, 40))
    sampler = PatchSampler(cases, roi=(8, 8), batch_size=3, seed=0)
    fg = 0
    for step in range(20):
        x, y = sampler(step)
        assert x.shape == (3, 1, 8, 8) and y.shape == (3, 1, 8, 8) and y.dtype == torch.int64
        # the image is label + noise: the label is where the image is bright
        assert ((x[:, 0] > 0.5) == (y[:, 0] == 1)).float().mean() > 0.85
        fg += int((y.flatten(1).amax(1) > 0).sum())
        x2, y2 = sampler(step)
        assert torch.equal(x, x2) and torch.equal(y, y2)  # a step's batch is its own
    # 2:1 positive crops; a negative crop may touch the 10x10 square too
    assert fg >= 0.6 * 60


def test_fit_mixed_precision_path_on_cpu():
    sampler = PatchSampler(_tiny_cases(), roi=(16, 16), batch_size=2, seed=5)
    model = _tiny_net()
    before = [p.detach().clone() for p in model.parameters()]
    info = fit(model, sampler, steps=3, lr=1e-2, seed=1, amp=True)
    assert np.isfinite(info["loss_last"]) and info["steps"] == 3
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize(
    "make",
    [
        lambda: UNet(3, 1, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1),
        lambda: UNet(3, 1, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=0),
        lambda: UNet(3, 1, 2, channels=(4, 8), strides=(2,), num_res_units=2, norm="batch"),
        lambda: SegResNet(
            spatial_dims=3,
            in_channels=1,
            out_channels=2,
            init_filters=8,
            blocks_down=(1, 1),
            blocks_up=(1,),
        ),
    ],
)
def test_replace_head_gives_the_target_classes(make):
    torch.manual_seed(0)
    model = make()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        before = {k: v.clone() for k, v in model.state_dict().items()}
    names = replace_head(model, 5, 1, (16, 16, 16), seed=0)
    assert names
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (1, 5, 16, 16, 16)
    after = model.state_dict()
    kept = [
        k
        for k in before
        if k in after and before[k].shape == after[k].shape and torch.equal(before[k], after[k])
    ]
    assert len(kept) >= len(before) - 6 * len(names)  # the body keeps its weights
    assert replace_head(model, 5, 1, (16, 16, 16), seed=0) == []  # already 5: kept
