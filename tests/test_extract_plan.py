"""Sampling plan: reproducible, without replacement, budgets, background, case independence."""

from __future__ import annotations

import numpy as np
import pytest

from ccfv.errors import UserError
from ccfv.extract import SamplingPlan, make_plan
from ccfv.extract import plan as plan_module


def _labels(seed=0, shape=(20, 18, 10)):
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, dtype=np.int64)
    lab[2:12, 3:15, 1:9] = 1  # 960 voxels
    lab[14:17, 2:6, 2:6] = 2  # 48 voxels: fewer than the counts
    lab[rng.random(shape) < 0.01] = 3  # a sprinkle of a third class
    return lab


def _cases():
    return [_labels(0), _labels(1, (16, 16, 8)), _labels(2, (24, 12, 6))], ["a", "b", "c"]


def _set(idx):
    return {tuple(r) for r in idx.tolist()}


def test_same_seed_same_voxels_different_seed_different():
    labels, ids = _cases()
    p1 = make_plan(labels, ids, layers=3, seed=7)
    p2 = make_plan(labels, ids, layers=3, seed=7)
    p3 = make_plan(labels, ids, layers=3, seed=8)
    for c1, c2, c3 in zip(p1.cases, p2.cases, p3.cases):
        for l in range(3):
            np.testing.assert_array_equal(c1.indices[l], c2.indices[l])
            np.testing.assert_array_equal(c1.classes[l], c2.classes[l])
            assert _set(c1.indices[l]) != _set(c3.indices[l])
    assert p1.fingerprint() == p2.fingerprint() != p3.fingerprint()


def test_without_replacement_right_class_and_fixed_counts():
    labels, ids = _cases()
    plan = make_plan(labels, ids, layers=3, counts=(100, 200, 400))
    for lab, case in zip(labels, plan.cases):
        sizes = np.bincount(lab.ravel())
        for l, count in enumerate((100, 200, 400)):
            idx, cls = case.indices[l], case.classes[l]
            assert idx.shape == (len(cls), 3) and idx.dtype == np.int64
            np.testing.assert_array_equal(lab[tuple(idx.T)], cls)  # voxel has its class
            assert len(_set(idx)) == len(idx)  # no voxel twice
            for k in range(len(sizes)):
                assert np.sum(cls == k) == min(sizes[k], count)  # 0 = background too
    # class 2 (48 voxels) is taken whole; background is sampled.
    assert np.sum(plan.cases[0].classes[2] == 0) == 400
    assert np.sum(plan.cases[0].classes[0] == 2) == 48


def test_layers_are_drawn_independently():
    labels, ids = _cases()
    case = make_plan(labels, ids, layers=3, counts=50).cases[0]
    fg = [_set(case.indices[l][case.classes[l] == 1]) for l in range(3)]
    assert fg[0] != fg[1] != fg[2]


@pytest.mark.parametrize(
    "layers, expected",
    [(1, [400]), (2, [200, 400]), (3, [100, 200, 400]), (5, [100, 200, 400, 400, 400])],
)
def test_counts_take_the_last_layers_or_repeat_the_last(layers, expected):
    lab = np.zeros((30, 30, 30), dtype=np.int64)
    lab[:10] = 1
    plan = make_plan([lab, lab], ["x", "y"], layers=layers, counts=(100, 200, 400))
    assert plan.settings["counts"] == expected
    assert [int(np.sum(c == 1)) for c in plan.cases[0].classes] == expected


def test_output_layer_voxels_do_not_depend_on_the_number_of_layers():
    labels, ids = _cases()
    p2 = make_plan(labels, ids, layers=2)
    p3 = make_plan(labels, ids, layers=3)
    for c2, c3 in zip(p2.cases, p3.cases):
        np.testing.assert_array_equal(c2.indices[-1], c3.indices[-1])
        np.testing.assert_array_equal(c2.indices[-2], c3.indices[-2])


def test_proportional_budget():
    labels, ids = _cases()
    plan = make_plan(
        labels,
        ids,
        layers=2,
        budget="proportional",
        fraction=(0.05, 0.5),
        min_per_class=4,
        max_per_class=300,
    )
    for lab, case in zip(labels, plan.cases):
        sizes = np.bincount(lab.ravel())
        for l, f in enumerate((0.05, 0.5)):
            for k, n_k in enumerate(sizes):
                want = min(n_k, int(np.clip(round(f * n_k), 4, 300)))
                assert np.sum(case.classes[l] == k) == want
            assert len(_set(case.indices[l])) == len(case.indices[l])


def test_a_case_does_not_change_when_other_cases_are_added_or_reordered():
    labels, ids = _cases()
    alone = make_plan(labels[:1], ids[:1], layers=3, seed=3).cases[0]
    more = make_plan([labels[2], labels[1], labels[0]], ["c", "b", "a"], layers=3, seed=3)
    for l in range(3):
        np.testing.assert_array_equal(alone.indices[l], more.cases[2].indices[l])


def test_draw_matches_the_documented_rank_rule_and_chunking(monkeypatch):
    lab = _labels(4, (23, 17, 9))
    plan = make_plan([lab], ["case"], layers=2, counts=(30, 60), seed=5)
    words = plan_module._case_words("case")
    for l in range(2):
        expected = []
        for k in np.unique(lab):
            pos = np.flatnonzero(lab.ravel() == k)
            rng = np.random.default_rng([5, *words, 1 - l, int(k)])
            ranks = np.sort(rng.choice(pos.size, size=min(pos.size, (30, 60)[l]), replace=False))
            expected.append(pos[ranks])
        expected = np.stack(np.unravel_index(np.concatenate(expected), lab.shape), axis=1)
        np.testing.assert_array_equal(plan.cases[0].indices[l], expected)
    monkeypatch.setattr(plan_module, "_CHUNK", 7)  # many chunks: same voxels
    chunked = make_plan([lab], ["case"], layers=2, counts=(30, 60), seed=5)
    for l in range(2):
        np.testing.assert_array_equal(chunked.cases[0].indices[l], plan.cases[0].indices[l])
    assert chunked.fingerprint() == plan.fingerprint()


def test_2d_and_label_dtypes():
    lab = np.zeros((40, 30), dtype=np.uint8)
    lab[5:20, 5:20] = 1
    plan = make_plan(
        [lab, lab.astype(np.float32), lab.astype(bool)], ["a", "b", "c"], layers=1, counts=50
    )
    assert plan.cases[0].indices[0].shape == (100, 2)
    # the same labels in another dtype hash alike; the id changes the draw
    assert len({c.label_sha256 for c in plan.cases}) == 1
    assert _set(plan.cases[0].indices[0]) != _set(plan.cases[1].indices[0])


def test_fingerprint_tracks_labels_and_settings():
    labels, ids = _cases()
    base = make_plan(labels, ids, layers=3).fingerprint()
    changed = [l.copy() for l in labels]
    changed[1][0, 0, 0] = 2
    assert make_plan(changed, ids, layers=3).fingerprint() != base
    assert make_plan(labels, ids, layers=3, counts=(100, 200, 300)).fingerprint() != base
    assert make_plan(labels, ["a", "b", "d"], layers=3).fingerprint() != base
    assert make_plan(labels, ids, layers=3, budget="proportional").fingerprint() != base


def test_round_trips(tmp_path):
    labels, ids = _cases()
    plan = make_plan(labels, ids, layers=3, seed=2)
    for other in (
        SamplingPlan.from_dict(plan.to_dict()),
        (plan.save(tmp_path / "plan.npz"), SamplingPlan.load(tmp_path / "plan.npz"))[1],
    ):
        assert other.fingerprint() == plan.fingerprint()
        assert other.case_ids == ids and other.layers == 3
        for a, b in zip(plan.cases, other.cases):
            assert a.shape == b.shape
            for l in range(3):
                np.testing.assert_array_equal(a.indices[l], b.indices[l])
                np.testing.assert_array_equal(a.classes[l], b.classes[l])


def test_points_per_layer_name():
    labels, ids = _cases()
    case = make_plan(labels, ids, layers=2).cases[0]
    pts = case.points(["deep", "out"])
    assert pts["out"].dtype == np.float64
    np.testing.assert_array_equal(pts["out"], case.indices[1])
    shifted = case.points(["deep", "out"], to_image=lambda p: p * 0.5)
    np.testing.assert_array_equal(shifted["deep"], case.indices[0] * 0.5)
    with pytest.raises(UserError, match="layer"):
        case.points(["only_one"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(case_ids=["a", "a"]), "duplicate"),
        (dict(case_ids=["a"]), "case ids"),
        (dict(budget="median"), "budget"),
        (dict(counts=(0, 5)), "counts"),
        (dict(budget="proportional", fraction=1.5), "fraction"),
        (dict(layers=0), "layers"),
        (dict(seed=-1), "seed"),
    ],
)
def test_bad_options(kwargs, match):
    lab = np.zeros((5, 5), dtype=int)
    args = dict(labels=[lab, lab], case_ids=["a", "b"], layers=2)
    args.update(kwargs)
    with pytest.raises(UserError, match=match):
        make_plan(**args)


@pytest.mark.parametrize(
    "label, match",
    [
        (np.full((4, 4), -1), "negative"),
        (np.full((4, 4), 0.5), "non-integer"),
        (np.zeros((4,), dtype=int), "2D or 3D"),
    ],
)
def test_bad_label_maps(label, match):
    with pytest.raises(UserError, match=match):
        make_plan([label], ["a"], layers=1)
