"""Protocol v2 of the transfer benchmark (issue 13): the low-data split, the validation split
carved out of target-train, the lock-file claims that let two processes share a work folder,
and a small v2 run end to end on real tasks (convergence study, per-case Dice, source
validation Dice, reliability statistics, export and restore of the runs)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import SHARED

import ccfv
from ccfv.bench.config import BenchConfig, load_config
from ccfv.bench.run import _Claim, run_bench, run_convergence
from ccfv.bench.tasks import PreparedTask, _split, carve_validation

DATA = SHARED / "data"
ROOT = Path(__file__).resolve().parents[1]
needs_data = pytest.mark.skipif(
    not (DATA / "hc18_fetal_head").exists(), reason="../shared/data absent"
)
FP = "0123456789ab"  # a checkpoint fingerprint, where only the config's part of a name matters


def _config(tmp_path, **changes):
    raw = {"data_root": str(DATA), "tasks": ["drive_retinal_vessels", "hc18_fetal_head"], **changes}
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_split_with_train_cases_by_case_and_by_group():
    ids = [f"c{i:02d}" for i in range(20)]
    train, test = _split(ids, 0.3, 0, None, "t", train_cases=6)
    assert len(train) == 6 and len(test) == 14 and not set(train) & set(test)
    again = _split(ids, 0.3, 0, None, "t", train_cases=6)
    assert [list(a) for a in again] == [list(train), list(test)]
    grouped = [f"p{i // 4}_s{i % 4}" for i in range(20)]  # 5 patients of 4 slices
    train, test = _split(grouped, 0.3, 0, r"^(p\d+)_", "t", train_cases=2)
    patients = {grouped[i].split("_")[0] for i in train}
    assert len(patients) == 2 and len(train) == 8 and len(test) == 12
    assert not patients & {grouped[i].split("_")[0] for i in test}
    with pytest.raises(ccfv.UserError, match="train_cases 5 leaves no test group"):
        _split(grouped, 0.3, 0, r"^(p\d+)_", "t", train_cases=5)


def test_validation_is_carved_out_of_train_by_group():
    ids = [f"p{i // 3}_s{i % 3}" for i in range(24)]  # 8 patients of 3 slices
    task = PreparedTask(
        "t",
        np.zeros((24, 1, 8, 8), np.uint8),
        np.zeros((24, 8, 8), np.int64),
        ids,
        np.arange(18),
        np.arange(18, 24),
        {0: "bg", 1: "fg"},
        Path("."),
    )
    fit, val = carve_validation(task, 0.25, 0, r"^(p\d+)_")
    assert sorted([*fit, *val]) == list(range(18)) and not set(fit) & set(val)
    val_patients = {ids[i].split("_")[0] for i in val}
    assert len(val_patients) == 2 and len(val) == 6  # round(0.25 * 6 patients)
    assert not val_patients & {ids[i].split("_")[0] for i in fit}
    fit0, val0 = carve_validation(task, 0.0, 0)
    assert list(fit0) == list(range(18)) and val0.size == 0
    one = PreparedTask(
        "t",
        task.images,
        task.labels,
        ids,
        np.arange(3),
        np.arange(3, 6),
        task.class_names,
        Path("."),
    )
    with pytest.raises(ccfv.UserError, match="needs at least 2 train groups"):
        carve_validation(one, 0.25, 0, r"^(p\d+)_")


def test_claims_exclude_a_live_process_and_take_over_from_a_dead_one(tmp_path):
    out = tmp_path / "stage.json"
    first = _Claim(out)
    assert first.take()
    assert first.path.read_text() == str(os.getpid())
    first.release()
    assert not first.path.exists()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        first.path.write_text(str(live.pid))
        assert not _Claim(out).take()  # another live process holds it
    finally:
        live.kill()
        live.wait()
    claim = _Claim(out)
    assert claim.take()  # its process is gone: the stale lock is taken over
    claim.release()


@needs_data
def test_config_v2_keys_are_checked_and_v1_digests_are_kept(tmp_path):
    with pytest.raises(ccfv.UserError, match="train_cases names task 'nowhere'"):
        load_config(_config(tmp_path, train_cases={"nowhere": 4}))
    with pytest.raises(ccfv.UserError, match=r"train_cases \(hc18_fetal_head\): 1"):
        load_config(_config(tmp_path, train_cases={"hc18_fetal_head": 1}))
    with pytest.raises(ccfv.UserError, match="finetune.schedule 'cosine'"):
        load_config(_config(tmp_path, finetune={"schedule": "cosine"}))
    with pytest.raises(ccfv.UserError, match="pretrain.val_fraction 1"):
        load_config(_config(tmp_path, pretrain={"val_fraction": 1}))
    with pytest.raises(ccfv.UserError, match="convergence.architectures: 'dynunet'"):
        load_config(
            _config(tmp_path, architectures=["unet"], convergence={"architectures": ["dynunet"]})
        )
    # a v1 config: the new keys at their v1 values leave the cache digests as they were
    v1 = load_config(ROOT / "benchmarks" / "transfer2d.yaml")
    old = {
        k: v
        for k, v in v1["finetune"].items()
        if k not in ("schedule", "val_fraction", "eval_every")
    }
    assert v1.digest("finetune") == v1.digest_of({"finetune": old})
    v2 = load_config(ROOT / "benchmarks" / "transfer2d-v2.yaml")
    assert v2.train_cases("acdc_cine_mri2d") == 10 and v2.train_cases("drive_retinal_vessels") == 16
    assert v2["finetune"]["seeds"] == [0, 1, 2, 3] and len(v2["architectures"]) == 3


def test_finetune_steps_per_target_override_only_their_runs(tmp_path):
    from ccfv.bench.run import finetune_path

    with pytest.raises(ccfv.UserError, match="finetune_steps names task 'nowhere'"):
        load_config(_config(tmp_path, finetune_steps={"nowhere": 10}))
    with pytest.raises(ccfv.UserError, match=r"finetune_steps \(hc18_fetal_head\): 0"):
        load_config(_config(tmp_path, finetune_steps={"hc18_fetal_head": 0}))
    with pytest.raises(ccfv.UserError, match="finetune_steps 5: give a mapping"):
        load_config(_config(tmp_path, finetune_steps=5))

    class Named:
        def __init__(self, name):
            self.name = name

    plain = load_config(_config(tmp_path))
    (tmp_path / "b").mkdir()
    over = load_config(_config(tmp_path / "b", finetune_steps={"hc18_fetal_head": 40}))
    hc18, drive = Named("hc18_fetal_head"), Named("drive_retinal_vessels")
    assert over.finetune_steps("hc18_fetal_head") == 40
    assert over.finetune_steps("drive_retinal_vessels") is None
    # a target left out keeps its runs' names (cached runs stay valid); a listed one is the run
    # of that budget, as if steps were given explicitly
    for seed in (0, 3):
        assert (
            finetune_path(over, "m", drive, seed, tmp_path, checkpoint=FP).name
            == finetune_path(plain, "m", drive, seed, tmp_path, checkpoint=FP).name
        )
        assert (
            finetune_path(over, "m", hc18, seed, tmp_path, checkpoint=FP).name
            == finetune_path(plain, "m", hc18, seed, tmp_path, steps=40, checkpoint=FP).name
        )
        assert (
            finetune_path(over, "m", hc18, seed, tmp_path, checkpoint=FP).name
            != finetune_path(plain, "m", hc18, seed, tmp_path, checkpoint=FP).name
        )


def test_checkpoint_fingerprint_names_the_weights_in_the_cache_names(tmp_path):
    """The fingerprint hashes the weights, not the file: the same weights saved twice (other
    meta, other bytes) give one fingerprint, one changed weight another; a fine-tuning run's
    name and a target's scores path change with it, the convergence study's names do not."""
    import torch

    from ccfv.bench.checkpoints import checkpoint_fingerprint, fingerprint_once
    from ccfv.bench.run import _scores_path, finetune_path
    from ccfv.bench.train import save_checkpoint

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    a = save_checkpoint(net, tmp_path / "a.pt", {"seconds": 1.0})
    b = save_checkpoint(net, tmp_path / "b.pt", {"seconds": 2.0, "note": "saved again"})
    assert a.read_bytes() != b.read_bytes()
    fp = checkpoint_fingerprint(a)
    assert len(fp) == 12 and int(fp, 16) >= 0
    assert checkpoint_fingerprint(b) == fp
    with torch.no_grad():
        net[0].weight[0, 0, 0, 0] += 1e-6
    c = save_checkpoint(net, tmp_path / "c.pt", {"seconds": 1.0})
    changed = checkpoint_fingerprint(c)
    assert changed != fp
    with torch.no_grad():  # a buffer is weights too
        net[1].running_mean[0] += 1.0
    assert checkpoint_fingerprint(save_checkpoint(net, tmp_path / "d.pt", {})) != changed
    # once per process per file; a file replaced since is hashed again
    assert fingerprint_once(a) == fp
    os.replace(c, a)
    assert fingerprint_once(a) == changed

    class Named:
        name = "hc18_fetal_head"

    config = load_config(_config(tmp_path))
    t = Named()
    for seed in (0, 3):
        same = finetune_path(config, "m", t, seed, tmp_path, checkpoint=fp)
        assert same == finetune_path(config, "m", t, seed, tmp_path, checkpoint=fp)
        assert same != finetune_path(config, "m", t, seed, tmp_path, checkpoint=changed)
        assert same.parent == tmp_path / "finetune" / "hc18_fetal_head"
    with pytest.raises(ValueError, match="needs the fingerprint of its starting checkpoint"):
        finetune_path(config, "m", t, 0, tmp_path)
    # the convergence study's runs keep their names (they only set the budgets)
    study = [
        finetune_path(config, "m", t, 0, tmp_path, steps=8, folder="convergence", checkpoint=c)
        for c in (None, fp, changed)
    ]
    assert len(set(study)) == 1
    bank = {"m": fp, "n": fp}
    scores = _scores_path(config, t, tmp_path, "cpu", bank)
    assert scores == _scores_path(config, t, tmp_path, "cpu", dict(reversed(bank.items())))
    assert scores != _scores_path(config, t, tmp_path, "cpu", {"m": fp, "n": changed})


def test_finetune_seeds_per_target_are_checked_and_keep_every_cache_name(tmp_path):
    """``finetune_seeds: {task: [seeds]}`` gives a target its own seeds (the others keep
    ``finetune.seeds``); the seed is in a run's file name, not its digest, so every cache name
    of seeds 0-3 stays what it is without the key."""
    from ccfv.bench.run import finetune_path, finetune_settings

    bad = [
        (5, "finetune_seeds 5: give a mapping"),
        ({"nowhere": [0]}, "finetune_seeds names task 'nowhere', which is not among the targets"),
        ({"hc18_fetal_head": []}, r"finetune_seeds \(hc18_fetal_head\): \[\]; give a non-empty"),
        ({"hc18_fetal_head": [0, 1, 1]}, r"\(hc18_fetal_head\): \[0, 1, 1\]; .* distinct"),
        ({"hc18_fetal_head": [0, -1]}, r"\(hc18_fetal_head\): \[0, -1\]; .*integers >= 0"),
        ({"hc18_fetal_head": [0, True]}, r"\(hc18_fetal_head\): \[0, True\]"),
        ({"hc18_fetal_head": 4}, r"\(hc18_fetal_head\): 4; give a non-empty list"),
    ]
    for value, message in bad:
        with pytest.raises(ccfv.UserError, match=message):
            load_config(_config(tmp_path, finetune_seeds=value))
    # a task that is not a target has no fine-tuning runs to seed
    with pytest.raises(ccfv.UserError, match="names task 'drive_retinal_vessels', which is not"):
        load_config(
            _config(
                tmp_path, targets=["hc18_fetal_head"], finetune_seeds={"drive_retinal_vessels": [0]}
            )
        )

    class Named:
        def __init__(self, name):
            self.name = name

    plain = load_config(_config(tmp_path, finetune={"seeds": [0, 1, 2, 3]}))
    (tmp_path / "b").mkdir()
    eight = list(range(8))
    over = load_config(
        _config(
            tmp_path / "b",
            finetune={"seeds": [0, 1, 2, 3]},
            finetune_seeds={"hc18_fetal_head": eight},
        )
    )
    assert plain["finetune_seeds"] == {} and plain.finetune_seeds("hc18_fetal_head") == [0, 1, 2, 3]
    assert over.finetune_seeds("hc18_fetal_head") == eight
    assert over.finetune_seeds("drive_retinal_vessels") == [0, 1, 2, 3]
    assert finetune_settings(over, "hc18_fetal_head")["seeds"] == eight
    for target in ("hc18_fetal_head", "drive_retinal_vessels"):
        for seed in range(4):
            assert finetune_path(
                over, "m", Named(target), seed, tmp_path, checkpoint=FP
            ) == finetune_path(plain, "m", Named(target), seed, tmp_path, checkpoint=FP)
    # the committed v2 config: every target's seeds are finetune.seeds or its own
    v2 = load_config(ROOT / "benchmarks" / "transfer2d-v2.yaml")
    for target in v2.targets:
        seeds = v2.finetune_seeds(target)
        assert seeds == v2["finetune_seeds"].get(target, v2["finetune"]["seeds"])


def _seeded_summary(seeds_of: dict, rng):
    """A v2-style summary whose targets have the given number of seeds, with validation
    curves, seconds and scores (what the reliability section and the select replay read)."""
    summary: dict = {"config": {"name": "mixed"}, "targets": {}}
    for t, n in seeds_of.items():
        models = {}
        for i, arch in enumerate(["unet", "segresnet"]):
            for j, src in enumerate(["a", "b", "scratch"]):
                level = 0.5 + 0.1 * i + 0.03 * j
                cases = np.clip(level + 0.01 * rng.standard_normal((n, 10)), 0, 1)
                dice = [float(v) for v in cases.mean(axis=1)]
                models[f"{arch}__{src}"] = {
                    "dice": dice,
                    "dice_per_class": [{"fg": d} for d in dice],
                    "dice_per_case": [
                        {f"c{k}": [float(v)] for k, v in enumerate(row)} for row in cases
                    ],
                    "finetune_seconds": [1.0] * n,
                    "validation_dice": dice,
                    "validation_curve": [[[2, d - 0.01], [4, d]] for d in dice],
                    "scores": {"ccfv": level, "logme": -level + 0.01 * j},
                }
        summary["targets"][t] = {
            "models": models,
            "classes": ["fg"],
            "train": [],
            "test": [],
            "finetune_steps": 4,
            "scoring_seconds": 1.0,
        }
    return summary


def test_targets_with_8_and_4_seeds_in_one_report(tmp_path):
    """A target with seeds of its own (``finetune_seeds``) beside one on ``finetune.seeds``:
    the reliability section splits each on its own seeds (8 seeds: all 35 balanced splits),
    the select replay reads each target's seeds, and the header names both."""
    from ccfv.bench.report import write_results
    from ccfv.reliability import split_half

    summary = _seeded_summary({"p": 8, "q": 4}, np.random.default_rng(0))
    config = _Config(
        name="mixed",
        architectures=["unet", "segresnet"],
        finetune={"seeds": [0, 1, 2, 3], "eval_every": 2},
        finetune_seeds={"p": list(range(8))},
        scoring={"cases": 4},
        statistics={"bootstrap": 50},
        select={"top": [2], "budgets": [1]},
    )
    write_results(summary, config, tmp_path)
    rel = summary["statistics"]["reliability"]["per_target"]
    assert rel["p"]["n_seeds"] == 8 and rel["q"]["n_seeds"] == 4
    assert rel["p"]["reliability"]["n_splits"] == 35 and rel["q"]["reliability"]["n_splits"] == 3
    assert rel["p"]["reliability"]["spearman"] > 0.8
    sel = summary["select"]["per_target"]
    assert sel["p"]["seeds"] == 8 and sel["q"]["seeds"] == 4  # neither skipped nor cut to 4
    for t, n in (("p", 8), ("q", 4)):
        rows = {r["method"]: r for r in sel[t]["rows"]}
        assert len(rows["select"]["picks"]) == n and len(rows["fine-tune everything"]["picks"]) == n
    tables = (tmp_path / "tables.md").read_text()
    assert "mean over 4 seed(s) [0, 1, 2, 3] (p: 8 seed(s) [0, 1, 2, 3, 4, 5, 6, 7])." in tables
    assert "| p | 6 | 8 | 10 |" in tables and "| q | 6 | 4 | 10 |" in tables
    # split-half enumerates every balanced split (no cap, no sampling)
    assert split_half(np.random.default_rng(1).random((21, 8)))["n_splits"] == 35


@needs_data
def test_bench_v2_small_end_to_end_export_and_restore(tmp_path, monkeypatch):
    config = load_config(
        _config(
            tmp_path,
            tasks=["drive_retinal_vessels", "isbi_em_membranes", "hc18_fetal_head"],
            targets=["hc18_fetal_head"],
            size=32,
            max_cases=20,
            train_cases=8,
            architectures=["unet"],
            pretrain={"steps": 4, "val_fraction": 0.25, "eval_every": 2, "schedule": "poly"},
            finetune={
                "steps": 4,
                "seeds": [0, 1, 2, 3],
                "val_fraction": 0.25,
                "eval_every": 2,
                "schedule": "poly",
            },
            convergence={"budgets": [2, 4], "eval_every": 1},
            scoring={
                "cases": 4,
                "counts": [10, 20, 40],
                "methods": ["ccfv", "logme"],
                "proportional": [],
            },
        )
    )
    work, out = tmp_path / "work", tmp_path / "out"
    study = run_convergence(config, work, out / "convergence", progress=False, log=lambda *_: None)
    curves = study["targets"]["hc18_fetal_head"]
    assert set(curves) == {"unet__scratch", "unet__drive_retinal_vessels"}
    assert [c[0] for c in curves["unet__scratch"]["4"]["curve"]] == [1, 2, 3, 4]
    assert (out / "convergence" / "convergence_hc18_fetal_head.png").stat().st_size > 1000
    # budgets [2, 4] lack twice finetune.steps (8): the study is written, the rule not applied
    assert "include both" in study["budget_rule"]["hc18_fetal_head"]["not_applied"]
    summary = run_bench(config, work, out, progress=False, log=lambda *_: None)
    target = summary["targets"]["hc18_fetal_head"]
    assert len(target["train"]) == 8 and len(target["test"]) == 12
    for m in target["models"].values():
        assert len(m["dice"]) == 4 and len(m["dice_per_case"]) == 4
        assert sorted(m["dice_per_case"][0]) == sorted(target["test"])
        per_case = np.array(
            [[v[0] for v in seed.values()] for seed in m["dice_per_case"]], dtype=float
        )
        np.testing.assert_allclose(np.nanmean(per_case, axis=1), m["dice"], rtol=1e-12)
        assert len(m["validation_dice"]) == 4
    src = summary["sources"]["unet__drive_retinal_vessels"]
    assert 0 <= src["source_val_dice"] <= 1 and src["steps"] == 4
    rel = summary["statistics"]["reliability"]["per_target"]["hc18_fetal_head"]
    assert rel["reliability"]["method"] == "split_half" and rel["n_test_cases"] == 12
    assert rel["n_seeds"] == 4 and rel["best_group"]["group"]
    lo, hi = rel["estimators"]["ccfv"]["weighted_tau"]["interval"]
    assert -1 <= lo <= hi <= 1
    tables = (out / "tables.md").read_text()
    for heading in (
        "Reliability of the ground truth",
        "Headline: targets with split-half",
        "Paired: `ccfv` minus",
        "Source models: validation Dice",
        "`ccfv select` replayed on the fine-tuning runs",
    ):
        assert heading in tables
    _check_select_rows(summary, json.loads((out / "summary.json").read_text()), out)
    # export into the repository layout, restore into a fresh work folder, resume: the
    # fine-tuning runs are read back, not trained again
    dest = tmp_path / "exported"
    # a run made before runs recorded their checkpoint is not exported
    legacy = work / "finetune" / "hc18_fetal_head" / "unet__scratch__0123456789__seed0.json"
    legacy.write_text(json.dumps({"model": "unet__scratch", "dice": 0.5}))
    _export(config, str(work), dest)
    progress = json.loads((dest / "progress.json").read_text())
    assert progress["hc18_fetal_head"]["missing"] == []
    assert progress["hc18_fetal_head"]["done"] == 3 * 4
    assert len(list((dest / "runs" / "hc18_fetal_head").glob("*.json"))) == 12
    sources = json.loads((dest / "sources.json").read_text()).values()
    assert sorted(s["source"] for s in sources) == ["drive_retinal_vessels", "isbi_em_membranes"]
    assert all(0 <= s["source_val_dice"] <= 1 for s in sources)
    # the checkpoints the runs started from are exported, and every run names its own
    from ccfv.bench.checkpoints import checkpoint_fingerprint

    exported = {p.name: checkpoint_fingerprint(p) for p in (dest / "checkpoints").glob("*")}
    pretrained = sorted(p.name for p in (work / "pretrain").glob("*.pt"))
    assert sorted(exported) == pretrained and len(pretrained) == 3  # 2 sources and scratch
    assert any(name.startswith("unet__scratch-") for name in exported)
    for stem, entry in json.loads((dest / "sources.json").read_text()).items():
        assert entry["fingerprint"] == exported[stem + ".pt"]
    by_model = {name.split("-")[0]: fp for name, fp in exported.items()}
    runs = sorted((dest / "runs" / "hc18_fetal_head").glob("*.json"))
    assert legacy.name not in {p.name for p in runs}
    for path in runs:
        run = json.loads(path.read_text())
        assert run["checkpoint"] == by_model[run["model"]]
    # an export from a work folder without those checkpoints (pre-training not yet redone on a
    # fresh machine) keeps the exported source models
    before = (dest / "sources.json").read_text()
    _export(config, str(tmp_path / "empty"), dest)
    assert json.loads((dest / "sources.json").read_text()) == json.loads(before)
    fresh = tmp_path / "fresh"
    _export(config, str(fresh), dest, "--restore")
    restored = sorted((fresh / "finetune").rglob("*.json"))
    checkpoints = sorted((fresh / "pretrain").glob("*.pt"))
    assert [p.name for p in checkpoints] == pretrained
    stamps = [p.stat().st_mtime_ns for p in restored + checkpoints]
    assert len(restored) == 12

    def no_pretraining(*args, **kwargs):
        raise AssertionError("pre-trained again instead of reusing the restored checkpoints")

    monkeypatch.setattr("ccfv.bench.run.pretrain", no_pretraining)
    again = run_bench(config, fresh, tmp_path / "out2", progress=False, log=lambda *_: None)
    assert [p.stat().st_mtime_ns for p in restored + checkpoints] == stamps
    assert sorted((fresh / "finetune").rglob("*.json")) == restored  # no run trained again
    assert {n: m["dice"] for n, m in again["targets"]["hc18_fetal_head"]["models"].items()} == {
        n: m["dice"] for n, m in target["models"].items()
    }
    # a work folder holding other weights under a committed checkpoint's name: the restore
    # stops with one line naming both files and the fix, and copies nothing
    import torch

    from ccfv.bench.checkpoints import load_checkpoint

    clash = tmp_path / "clash"
    name = next(n for n in pretrained if n.startswith("unet__drive_retinal_vessels-"))
    state, meta = load_checkpoint(work / "pretrain" / name)
    state = {k: (v + 1 if v.is_floating_point() else v) for k, v in state.items()}
    (clash / "pretrain").mkdir(parents=True)
    torch.save({"state_dict": state, "meta": meta}, clash / "pretrain" / name)
    before_clash = (clash / "pretrain" / name).read_bytes()
    failed = _export(config, str(clash), dest, "--restore", check=False)
    assert failed.returncode == 2
    message = failed.stderr.strip()
    assert "\n" not in message
    assert str(clash / "pretrain" / name) in message and str(dest / "checkpoints" / name) in message
    assert "remove the work file, or restore into another --work" in message
    assert sorted(p.relative_to(clash) for p in clash.rglob("*")) == [
        Path("pretrain"),
        Path("pretrain") / name,
    ]
    assert (clash / "pretrain" / name).read_bytes() == before_clash
    # and its export would replace the committed checkpoint: refused too, nothing written
    committed = {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    failed = _export(config, str(clash), dest, check=False)
    assert failed.returncode == 2 and "pre-trained anew" in failed.stderr
    assert {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()} == committed


def _export(config, work, dest, *extra, check=True):
    """scripts/export_bench_results.py on ``config`` from ``work`` into ``dest`` (``extra``:
    e.g. ``"--restore"``), in a subprocess; its output captured as text."""
    script = ROOT / "scripts" / "export_bench_results.py"
    return subprocess.run(
        [
            sys.executable,
            str(script),
            "--config",
            str(config.source),
            "--work",
            str(work),
            "--dest",
            str(dest),
            *extra,
        ],
        check=check,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        capture_output=True,
        text=True,
    )


def _check_select_rows(summary, written, out):
    """The select rows of the small run (4 steps, validation every 2, 3 models, 4 seeds),
    re-derived from the summary's curves: K = 1 and 2 fit the budgets 4 and 8 steps; K = 3
    needs 7 x 2 steps, K = 5 more models than the bank."""
    from ccfv.bench.selection import EVERYTHING, SELECT, TRAINING_FREE, curve_value

    sel = summary["select"]["per_target"]["hc18_fetal_head"]
    assert written["select"]["per_target"]["hc18_fetal_head"]["rows"] == json.loads(
        json.dumps(sel["rows"])
    )
    models = summary["targets"]["hc18_fetal_head"]["models"]
    assert summary["targets"]["hc18_fetal_head"]["scoring_seconds"] > 0
    # the same replicates as the reliability section: the same best group
    rel = summary["statistics"]["reliability"]["per_target"]["hc18_fetal_head"]
    assert sel["best_group"] == rel["best_group"]["group"]
    rows = {(r["method"], r.get("top"), r.get("multiple")): r for r in sel["rows"]}
    assert [k[1:] for k in rows if k[0] == SELECT] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert sorted(m["top"] for m in sel["not_run"]) == [3, 3, 5]
    order = sorted(models, key=lambda m: -models[m]["scores"]["ccfv"])
    free = rows[(TRAINING_FREE, None, None)]
    assert free["picks"] == [order[0]] * 4
    assert rows[(SELECT, 1, 1)]["picks"] == free["picks"]
    assert rows[(SELECT, 1, 1)]["regret"]["value"] == free["regret"]["value"]
    for s in range(4):  # K = 2, B = 4 steps: one rung of 2 candidates to step 2
        a, b = (curve_value(models[m]["validation_curve"][s], 2) for m in order[:2])
        assert rows[(SELECT, 2, 1)]["picks"][s] == (order[0] if a >= b else order[1])
        best = max(models, key=lambda m: models[m]["validation_dice"][s])
        assert (
            models[rows[(EVERYTHING, None, None)]["picks"][s]]["validation_dice"][s]
            == (models[best]["validation_dice"][s])
        )
    assert rows[(SELECT, 2, 1)]["compute"]["fraction_steps"] == pytest.approx(2 * 2 / (3 * 4))
    assert rows[(SELECT, 2, 2)]["compute"]["fraction_steps"] == pytest.approx(2 * 4 / (3 * 4))
    truth = {m: np.mean(v["dice"]) for m, v in models.items()}
    for r in sel["rows"]:
        expected = np.mean([max(truth.values()) - truth[p] for p in r["picks"]])
        assert r["regret"]["value"] == pytest.approx(expected, abs=1e-12)
    assert (out / "select_regret_vs_compute.png").stat().st_size > 5000


def _Config(**keys) -> BenchConfig:
    """A config of only the keys write_results reads (no file, no defaults filled in)."""
    return BenchConfig(raw=keys, source="test config")


def _synthetic_track(out, name, targets, spread):
    """A v2-style summary (4 seeds, per-case Dice) written by write_results."""
    from ccfv.bench.report import write_results

    rng = np.random.default_rng(len(name))
    summary = {"config": {"name": name}, "targets": {}}
    for t in targets:
        models = {}
        for i, arch in enumerate(["unet", "segresnet"]):
            for j, src in enumerate(["a", "b", "scratch"]):
                level = 0.5 + 0.1 * i + 0.03 * j
                cases = np.clip(level + spread * rng.standard_normal((4, 10)), 0, 1)
                models[f"{arch}__{src}"] = {
                    "dice": [float(v) for v in cases.mean(axis=1)],
                    "dice_per_class": [{"fg": float(v)} for v in cases.mean(axis=1)],
                    "dice_per_case": [
                        {f"c{k}": [float(v)] for k, v in enumerate(row)} for row in cases
                    ],
                    "finetune_seconds": [1.0] * 4,
                    "scores": {"ccfv": level, "logme": -level + 0.01 * j},
                }
        summary["targets"][t] = {"models": models, "classes": ["fg"], "train": [], "test": []}
    config = _Config(
        name=name,
        architectures=["unet", "segresnet"],
        finetune={"seeds": [0, 1, 2, 3]},
        scoring={"cases": 4},
        statistics={"bootstrap": 200},
    )
    write_results(summary, config, out)
    return out


def test_reliability_in_the_report_and_across_tracks(tmp_path):
    from ccfv.bench.report import combine_results

    clean = _synthetic_track(tmp_path / "clean", "clean", ["p", "q"], 0.005)
    noisy = _synthetic_track(tmp_path / "noisy", "noisy", ["r"], 0.6)
    summary = json.loads((clean / "summary.json").read_text())
    rel = summary["statistics"]["reliability"]
    assert rel["headline"]["reliable"] == ["p", "q"]
    assert rel["per_target"]["p"]["estimators"]["ccfv"]["weighted_tau"]["value"] == pytest.approx(
        1.0
    )
    assert rel["headline"]["estimators"]["ccfv"]["best_group_hit"]["rate"] == 1.0
    assert rel["headline"]["estimators"]["logme"]["top3_recall"]["rate"] == 0.0
    versus = rel["paired"]["versus"]["logme"]
    assert versus["per_target"]["p"]["weighted_tau"]["difference"] == pytest.approx(2.0)
    assert versus["across_all"]["weighted_tau"]["positive"] == 2
    tables = (clean / "tables.md").read_text()
    assert "| `ccfv` | 2 | 1.000 | 1.000 |" in tables  # headline: 2 targets, wtau, Spearman
    assert (clean / "fig2_p.png").stat().st_size > 1000
    merged = combine_results([clean, noisy], tmp_path / "all")
    assert merged["default_method"] == ccfv.estimators.registry.DEFAULT_METHOD
    head = merged["statistics"]["reliability"]["headline"]
    assert head["reliable"] == ["p", "q"] and list(head["too_noisy"]) == ["r"]
    assert (
        "Ground truth too noisy (left out of the headline): r (split-half Spearman"
        in (tmp_path / "all" / "headline.md").read_text()
    )


def test_statistics_bootstrap_is_checked_and_quick_uses_fewer(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("statistics: {bootstrap: 5}\n")
    with pytest.raises(ccfv.UserError, match=r"statistics.bootstrap: 5 must be an integer >= 10"):
        load_config(bad)
    config = Path(__file__).resolve().parents[1] / "benchmarks" / "transfer2d-v2.yaml"
    assert load_config(config)["statistics"]["bootstrap"] == 1000
    assert load_config(config, quick=True)["statistics"]["bootstrap"] == 100


def _tiny_config(tmp_path, targets):
    """A benchmark of seconds: one UNet, 2 pre-training and fine-tuning steps, 2 seeds."""
    return _config(
        tmp_path,
        targets=targets,
        size=32,
        max_cases=12,
        train_cases=6,
        architectures=["unet"],
        pretrain={"steps": 2},
        finetune={"steps": 2, "seeds": [0, 1]},
        scoring={"cases": 3, "counts": [10, 20, 40], "methods": ["logme"], "proportional": []},
        statistics={"bootstrap": 20},
    )


@needs_data
def test_targets_option_reports_a_subset_from_the_shared_cache(tmp_path, capsys):
    """``--targets`` runs only some targets; a name outside the config is refused in one line."""
    from ccfv.cli import main

    path = _tiny_config(tmp_path, ["drive_retinal_vessels", "hc18_fetal_head"])
    assert main(["bench", "--config", str(path), "--targets", "isbi_em_membranes"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(
        "--targets isbi_em_membranes: not a target of "
        f"{path}; give some of drive_retinal_vessels, hc18_fetal_head"
    )
    work, out = tmp_path / "work", tmp_path / "out"
    args = ["bench", "--config", str(path), "--work", str(work), "--out", str(out), "--quiet"]
    assert main([*args, "--targets", "hc18_fetal_head"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["targets"]) == ["hc18_fetal_head"]
    # comma-separated names are the same targets
    assert load_config(path).only_targets(["hc18_fetal_head,drive_retinal_vessels"]).targets == [
        "hc18_fetal_head",
        "drive_retinal_vessels",
    ]
    assert summary["default_method"] == ccfv.estimators.registry.DEFAULT_METHOD
    assert summary["interim"] == {
        "targets": ["hc18_fetal_head"],
        "of": ["drive_retinal_vessels", "hc18_fetal_head"],
    }
    assert "**Interim report**: 1 of the config's 2 targets" in (out / "tables.md").read_text()
    runs = sorted(p.name for p in (work / "finetune").glob("*/*.json"))
    assert len(runs) == 4 and {p.parent.name for p in (work / "finetune").glob("*/*")} == {
        "hc18_fetal_head"
    }
    # the full run reuses the subset's fine-tuning runs (same digests) and adds the other target
    stamp = {p: p.stat().st_mtime_ns for p in (work / "finetune").glob("*/*.json")}
    assert main(args) == 0
    assert all(p.stat().st_mtime_ns == t for p, t in stamp.items())
    full = json.loads((out / "summary.json").read_text())
    assert list(full["targets"]) == ["drive_retinal_vessels", "hc18_fetal_head"]
    assert "interim" not in full


def test_budget_rule_of_the_convergence_study():
    """Doubling 1000 -> 2000 steps must gain < 0.01 test Dice for every studied model, else the
    largest budget; the committed study gives the config's finetune_steps."""
    from ccfv.bench.run import budget_rule
    from ccfv.errors import UserError

    def entry(*gains):
        return {
            f"m{i}": {"1000": {"test_dice": 0.5}, "2000": {"test_dice": 0.5 + g}, "250": {}}
            for i, g in enumerate(gains)
        }

    budgets = [250, 1000, 2000]
    kept = budget_rule(entry(0.009, -0.02), 1000, budgets)
    assert kept["steps"] == 1000 and kept["converged"]
    assert kept["gains"]["m0"] == pytest.approx(0.009)
    assert budget_rule(entry(0.009, 0.01), 1000, budgets)["steps"] == 2000
    with pytest.raises(UserError, match="include both"):
        budget_rule(entry(0.0), 1000, [250, 500, 1000])
    study = json.loads((ROOT / "benchmarks/results/v2/convergence/convergence.json").read_text())
    config = load_config(ROOT / "benchmarks" / "transfer2d-v2.yaml")
    for target, runs in study["targets"].items():
        rule = budget_rule(runs, config["finetune"]["steps"], study["budgets"])
        assert rule["steps"] == (config.finetune_steps(target) or config["finetune"]["steps"])


@needs_data
def test_a_failing_finetune_run_leaves_out_its_model_only(tmp_path, monkeypatch):
    """One run that raises is recorded and its model left out; the others go on; deleting the
    record retries it."""
    import ccfv.bench.run as bench_run

    path = _tiny_config(tmp_path, ["hc18_fetal_head"])
    config = load_config(path)
    real = bench_run.finetune

    def flaky(config, arch, checkpoint, name, target, seed, *args, **kwargs):
        if name == "unet__drive_retinal_vessels" and seed == 1:
            raise FloatingPointError("loss is nan at step 2")
        return real(config, arch, checkpoint, name, target, seed, *args, **kwargs)

    monkeypatch.setattr(bench_run, "finetune", flaky)
    work, out = tmp_path / "work", tmp_path / "out"
    summary = run_bench(config, work, out, progress=False, log=lambda *_: None)
    entry = summary["targets"]["hc18_fetal_head"]
    assert list(entry["models"]) == ["unet__scratch"]
    assert entry["finetune_failures"] == {
        "unet__drive_retinal_vessels": ["seed 1: FloatingPointError: loss is nan at step 2"]
    }
    assert (
        "**Left out of hc18_fetal_head**: `unet__drive_retinal_vessels`"
        in (out / "tables.md").read_text()
    )
    failed = list((work / "finetune").glob("*/*.failed.json"))
    assert len(failed) == 1
    monkeypatch.setattr(bench_run, "finetune", real)
    again = run_bench(config, work, out, progress=False, log=lambda *_: None)
    assert "finetune_failures" in again["targets"]["hc18_fetal_head"]  # recorded, not retried
    failed[0].unlink()
    third = run_bench(config, work, out, progress=False, log=lambda *_: None)
    assert set(third["targets"]["hc18_fetal_head"]["models"]) == {
        "unet__scratch",
        "unet__drive_retinal_vessels",
    }


@needs_data
def test_a_target_given_more_seeds_trains_only_the_new_ones(tmp_path):
    """``finetune_seeds: {hc18_fetal_head: [0, 1, 2]}`` on a finished run with ``finetune.seeds``
    [0, 1]: only seed 2 of HC18's models is trained, the runs of seeds 0-1 are read back
    (unchanged files); HC18's models have 3 seeds in summary.json, DRIVE's 2; the export counts
    the third seed as expected."""
    import importlib.util

    targets = ["drive_retinal_vessels", "hc18_fetal_head"]
    work = tmp_path / "work"
    first = run_bench(
        load_config(_tiny_config(tmp_path, targets)),
        work,
        tmp_path / "out",
        progress=False,
        log=lambda *_: None,
    )
    runs = sorted((work / "finetune").glob("*/*.json"))
    assert len(runs) == 2 * 2 * 2  # 2 targets x 2 models x 2 seeds
    stamps = {p: p.stat().st_mtime_ns for p in runs}
    (tmp_path / "more").mkdir()
    path = _tiny_config(tmp_path / "more", targets)
    raw = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**raw, "finetune_seeds": {"hc18_fetal_head": [0, 1, 2]}}))
    config = load_config(path)
    out = tmp_path / "out2"
    run_bench(config, work, out, progress=False, log=lambda *_: None)
    assert {p: p.stat().st_mtime_ns for p in runs} == stamps  # seeds 0-1: not trained again
    added = sorted(set((work / "finetune").glob("*/*.json")) - set(runs))
    assert [p.parent.name for p in added] == ["hc18_fetal_head"] * 2
    assert all(p.name.endswith("__seed2.json") for p in added)
    written = json.loads((out / "summary.json").read_text())
    for name, want in (("hc18_fetal_head", 3), ("drive_retinal_vessels", 2)):
        entry = written["targets"][name]
        assert entry["seeds"] == list(range(want))
        assert {len(m["dice"]) for m in entry["models"].values()} == {want}
        for model, m in entry["models"].items():  # seeds 0-1: the first run's Dice
            assert m["dice"][:2] == first["targets"][name]["models"][model]["dice"]
    assert (
        "mean over 2 seed(s) [0, 1] (hc18_fetal_head: 3 seed(s) [0, 1, 2])"
        in (out / "tables.md").read_text()
    )
    spec = importlib.util.spec_from_file_location(
        "export_bench_results", ROOT / "scripts" / "export_bench_results.py"
    )
    export = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export)
    expected = export.expected_runs(config, [work / "pretrain"])
    assert {t: len(p) for t, p in expected.items()} == {
        "drive_retinal_vessels": 4,
        "hc18_fetal_head": 6,
    }
    assert all((work / r.path).is_file() for runs in expected.values() for r in runs)
    # without the checkpoints (a fresh machine still pre-training) the runs are expected, their
    # names unknown yet: missing as not pre-trained yet, not a crash
    unknown = export.expected_runs(config, [tmp_path / "nowhere"])
    assert {t: len(p) for t, p in unknown.items()} == {t: len(p) for t, p in expected.items()}
    assert {(r.path, r.why) for runs in unknown.values() for r in runs} == {
        (None, "not pre-trained yet")
    }


@pytest.mark.skipif(not (DATA / "chaos_t2spir_abdomen3d").exists(), reason="../shared/data absent")
def test_the_committed_3d_quick_profile_runs_a_small_convergence_study(tmp_path):
    # the quick profile's own budgets: a study of seconds whose rule applies to its 3 steps
    config = load_config(ROOT / "benchmarks" / "chaos3d-v2.yaml", quick=True)
    assert config["convergence"]["budgets"] == [3, 6]
    study = run_convergence(
        config, tmp_path / "work", tmp_path / "out", progress=False, log=lambda *_: None
    )
    rule = study["budget_rule"]["chaos_t2spir_abdomen3d"]
    assert (rule["steps"], rule["from"], rule["to"]) == (3, 3, 6)
    assert set(rule["gains"]) == {"unet__scratch", "unet__spleen_ct_crop_3d"}
    assert rule["converged"] == all(g < 0.01 for g in rule["gains"].values())
