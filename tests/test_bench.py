"""The transfer benchmark: config, prepared tasks and split, statistics, and `ccfv bench --quick`
end to end on the real 2D tasks of ../shared/data (resumed from its cache on a second run)."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import SHARED

import ccfv
from ccfv.bench.config import load_config
from ccfv.bench.per_class import class_points, class_statistics
from ccfv.bench.report import STATS, average, combine_results, seed_spread, target_statistics
from ccfv.bench.tasks import prepare_task
from ccfv.cli import main
from ccfv.data import find_cases

DATA = SHARED / "data"
CONFIG = Path(__file__).resolve().parents[1] / "benchmarks" / "transfer2d.yaml"
CONFIG3D = CONFIG.with_name("chaos3d.yaml")
needs_data = pytest.mark.skipif(
    not (DATA / "drive_retinal_vessels").exists(), reason="../shared/data absent"
)


def _config(tmp_path, **changes):
    raw = {
        "data_root": str(DATA),
        "tasks": ["drive_retinal_vessels", "isbi_em_membranes"],
        **changes,
    }
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@needs_data
def test_config_defaults_quick_and_errors(tmp_path):
    config = load_config(CONFIG)
    assert config.targets == list(config.task_paths) and len(config.targets) == 7
    assert config["finetune"]["seeds"] == [0, 1, 2]
    assert "ccfv-paper[distance=kl]" in config["scoring"]["methods"]
    quick = load_config(CONFIG, quick=True)
    assert quick["size"] == 32 and quick["pretrain"]["steps"] == 12
    assert quick["pretrain"]["batch_size"] == config["pretrain"]["batch_size"]  # merged
    assert quick["name"] == "transfer2d-quick" and len(quick.targets) == 3
    with pytest.raises(ccfv.UserError, match=r"bench\.yaml: unknown key 'sise'"):
        load_config(_config(tmp_path, sise=32))
    with pytest.raises(ccfv.UserError, match=r"scoring: unknown key 'metods'"):
        load_config(_config(tmp_path, scoring={"metods": []}))
    with pytest.raises(ccfv.UserError, match="nowhere.*dataset.json not found"):
        load_config(_config(tmp_path, tasks=["drive_retinal_vessels", "nowhere"]))
    with pytest.raises(ccfv.UserError, match="unknown architecture 'resnet'"):
        load_config(_config(tmp_path, architectures=["resnet"]))
    with pytest.raises(ccfv.UserError, match="unknown method 'lgome'"):
        load_config(_config(tmp_path, scoring={"methods": ["lgome"]}))
    with pytest.raises(ccfv.UserError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


@needs_data
def test_prepared_task_and_its_split(tmp_path):
    kwargs = dict(size=32, channels=3, max_cases=9, test_fraction=0.3, split_seed=0)
    task = prepare_task(DATA / "isbi_em_membranes", tmp_path, **kwargs)  # grey -> 3 channels
    assert task.images.shape == (9, 3, 32, 32) and task.images.dtype == np.uint8
    assert np.array_equal(task.images[:, 0], task.images[:, 2])
    assert task.labels.shape == (9, 32, 32) and set(np.unique(task.labels)) == {0, 1}
    assert len(task.test) == 3 and len(task.train) == 6
    assert not set(task.train) & set(task.test)
    assert task.images.min() < 50 and task.images.max() > 200  # percentiles -> 0..255, resized
    split = json.loads((task.train_folder.parent / "split.json").read_text())
    assert split["test"] == [task.case_ids[i] for i in task.test]
    train = find_cases(task.train_folder)  # what ccfv rank scores: the train split only
    assert sorted(c.case_id for c in train.cases) == sorted(split["train"])
    again = prepare_task(DATA / "isbi_em_membranes", tmp_path, **kwargs)  # from the cache
    assert np.array_equal(again.images, task.images) and np.array_equal(again.test, task.test)
    other = prepare_task(DATA / "isbi_em_membranes", tmp_path, **{**kwargs, "split_seed": 1})
    assert not np.array_equal(other.test, task.test) or other.case_ids != task.case_ids


def test_statistics_by_hand():
    models = {
        "a": {"dice": [0.9, 0.8], "scores": {"m": 3.0, "bad": 1.0}},
        "b": {"dice": [0.5, 0.7], "scores": {"m": 2.0, "bad": 2.0}},
        "c": {"dice": [0.1, None], "scores": {"m": 1.0, "bad": 3.0}},
    }
    stats = target_statistics(models)
    assert stats["m"]["kendall_tau"] == pytest.approx(1.0)
    assert stats["bad"]["kendall_tau"] == pytest.approx(-1.0)
    assert stats["m"]["regret"] == 0.0 and stats["bad"]["regret"] == pytest.approx(0.85 - 0.1)
    spread = seed_spread(models)
    assert spread["mean_seed_sd"] == pytest.approx(
        np.mean([np.std([0.9, 0.8], ddof=1), np.std([0.5, 0.7], ddof=1)])
    )
    assert spread["median_gap"] == pytest.approx(np.median([0.6 - 0.1, 0.85 - 0.6]))
    avg = average({"t1": stats, "t2": {"m": {**stats["m"], "kendall_tau": 0.0}}})
    assert avg["m"]["kendall_tau"] == pytest.approx(0.5) and avg["bad"]["n_targets"] == 1


def test_per_class_statistics_by_hand():
    # model -> class -> per-layer consistency; lower consistency, higher Dice for class "a"
    cons = {
        "m1": {"a": [1.0, 1.0], "b": [4.0, 4.0]},
        "m2": {"a": [2.0, 2.0], "b": [2.0, 2.0]},
        "m3": {"a": [4.0, 4.0], "b": [1.0, 1.0]},
    }
    dice = {"m1": {"a": 0.9, "b": 0.2}, "m2": {"a": 0.6, "b": 0.5}, "m3": {"a": 0.3, "b": 0.4}}
    target = {
        "models": {
            m: {
                "class_consistency": {"v": cons[m]},
                "dice_per_class": [dice[m], {**dice[m], "b": None}],
            }
            for m in cons
        }
    }
    points = class_points(target, "v")
    assert points["a"]["m2"] == pytest.approx((-np.log(2.0), 0.6))
    assert points["b"]["m1"] == pytest.approx((-np.log(4.0), 0.2))  # the None seed is skipped
    stats = class_statistics(target, ["v"])["v"]
    assert stats["across_models"]["a"]["spearman"] == pytest.approx(1.0)
    assert stats["across_models"]["b"]["spearman"] == pytest.approx(0.5)  # ranks (1,3,2)
    # within a model: m1 ("a" more consistent, higher Dice) and m3 ("b" more consistent,
    # higher Dice) agree; m2's classes tie in consistency -> undefined, left out
    across = stats["across_classes"]
    assert across["n_models"] == 2 and across["mean_spearman"] == pytest.approx(1.0)
    assert across["share_positive"] == pytest.approx(1.0)
    target["models"]["m3"]["dice_per_class"] = [{"a": 0.3, "b": 0.1}]  # now m3 disagrees
    across = class_statistics(target, ["v"])["v"]["across_classes"]
    assert across["mean_spearman"] == pytest.approx(0.0) and across["share_positive"] == 0.5


def _fake_run(folder, name, targets, multi):
    stats = {t: {"m": {**{s: None for s in STATS}, "weighted_tau": w}} for t, w in targets.items()}
    avg = average(stats)
    summary = {
        "config": {"name": name},
        "commit": "c",
        "wall_seconds": 1.0,
        "targets": {t: {"models": {"a": {"finetune_seconds": [2.0]}}} for t in targets},
        "statistics": {
            "per_target": stats,
            "average": avg,
            "multiclass_targets": multi,
            "average_multiclass": average({t: stats[t] for t in multi}),
            "within_architecture": {"average": avg, "per_target": stats},
        },
    }
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_combine_results_by_hand(tmp_path):
    two = _fake_run(tmp_path / "2d", "t2d", {"x": 0.2, "y": 0.4, "z": 0.9}, ["y", "z"])
    three = _fake_run(tmp_path / "3d", "t3d", {"w": -0.5}, ["w"])
    merged = combine_results([two, three], tmp_path / "all")
    assert set(merged["targets"]) == {"x", "y", "z", "w"}
    assert merged["targets"]["w"]["track"] == "t3d"
    assert merged["tracks"]["t2d"]["finetune_seconds"] == 6.0
    headline = merged["statistics"]["headline"]["m"]
    assert list(headline.values()) == pytest.approx([0.5, 0.65, -0.5, 0.25, 0.25])
    assert merged["statistics"]["average_all"]["m"]["n_targets"] == 4
    assert "multi-class average (y, z)" in list(headline)[1]
    assert json.loads((tmp_path / "all" / "summary.json").read_text()) == merged
    headline_md = (tmp_path / "all" / "headline.md").read_text()
    assert "| `m` | 0.500 | 0.650 | -0.500 | 0.250 | 0.250 |" in headline_md
    assert "interim" not in merged and "Interim" not in headline_md
    # a track of some of its config's targets (--targets) makes the merge interim too, so the
    # default rule (benchmarks/apply_default_rule.py) does not decide on it
    summary = json.loads((three / "summary.json").read_text())
    summary["interim"] = {"targets": ["w"], "of": ["w", "v"]}
    (three / "summary.json").write_text(json.dumps(summary))
    partial = combine_results([two, three], tmp_path / "partial")
    assert partial["interim"] == {"targets": ["x", "y", "z", "w"], "of": ["x", "y", "z", "w", "v"]}
    assert partial["tracks"]["t3d"]["interim"] == summary["interim"]
    assert "**Interim report**: 4 of" in (tmp_path / "partial" / "headline.md").read_text()
    with pytest.raises(ccfv.UserError, match="given twice"):
        combine_results([two, two], tmp_path / "again")
    with pytest.raises(ccfv.UserError, match="does not exist"):
        combine_results([tmp_path / "nothing"], tmp_path / "again")


@needs_data
def test_bench_quick_end_to_end_and_resume(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative --work and --out, as a user types them
    work, out = Path("work"), Path("out")
    args = [
        "bench",
        "--config",
        str(CONFIG),
        "--quick",
        "--work",
        "work",
        "--out",
        "out",
        "--quiet",
    ]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    config = load_config(CONFIG, quick=True)
    methods = config["scoring"]["methods"] + [
        f"{m}@proportional" for m in config["scoring"]["proportional"]
    ]
    assert list(summary["targets"]) == config.targets
    for target, t in summary["targets"].items():
        assert len(t["models"]) == 6  # 2 architectures x (2 other tasks + scratch)
        assert not set(t["scored_cases"]) & set(t["test"])  # estimators never see test cases
        for name, m in t["models"].items():
            assert target not in name
            assert len(m["dice"]) == 2 and all(0 <= d <= 1 for d in m["dice"])
            assert list(m["scores"]) == methods
            assert all(np.isfinite(v) for v in m["scores"].values()), (target, name)
        assert (out / f"fig2_{target}.png").stat().st_size > 1000
    within = summary["statistics"]["within_architecture"]["average"]
    assert set(within) == set(methods)
    avg = summary["statistics"]["average"]
    assert set(avg) == set(methods) and all(-1 <= avg[m]["weighted_tau"] <= 1 for m in methods)
    tables = (out / "tables.md").read_text()
    for heading in (
        "Weighted Kendall tau",
        "Pearson",
        "Spearman",
        "Top-1 regret",
        "ablations",
        "seed sd",
        "Within one architecture",
    ):
        assert heading in tables
    finetuned = sorted((work / "finetune").rglob("*.json"))
    stamps = [p.stat().st_mtime_ns for p in finetuned]
    assert len(finetuned) == 3 * 6 * 2
    (out / "summary.json").unlink()
    assert main(args) == 0  # resumed: nothing trained again, the same numbers
    assert [p.stat().st_mtime_ns for p in finetuned] == stamps
    resumed = json.loads((out / "summary.json").read_text())
    assert resumed["targets"] == summary["targets"]


@pytest.mark.skipif(not (DATA / "acdc_cine_mri2d").exists(), reason="../shared/data absent")
def test_split_by_patient(tmp_path):
    pattern = r"^(patient\d+)_"
    task = prepare_task(
        DATA / "acdc_cine_mri2d",
        tmp_path,
        size=32,
        channels=3,
        max_cases=40,
        test_fraction=0.3,
        split_seed=0,
        group=pattern,
    )
    patient = [c.split("_")[0] for c in task.case_ids]
    train = {patient[i] for i in task.train}
    test = {patient[i] for i in task.test}
    assert train and test and not train & test  # no patient on both sides
    assert len(task.train) + len(task.test) == 40
    assert set(np.unique(task.labels)) == {0, 1, 2, 3} and task.n_classes == 4
    split = json.loads((task.train_folder.parent / "split.json").read_text())
    assert split["group"] == pattern
    with pytest.raises(ccfv.UserError, match="does not match the group pattern"):
        prepare_task(
            DATA / "acdc_cine_mri2d",
            tmp_path,
            size=32,
            channels=3,
            max_cases=8,
            test_fraction=0.3,
            split_seed=0,
            group=r"^(case\d+)_",
        )


@needs_data
def test_config_groups_are_checked(tmp_path):
    with pytest.raises(ccfv.UserError, match="groups names task 'acdc'"):
        load_config(_config(tmp_path, groups={"acdc": r"^(p\d+)"}))
    with pytest.raises(ccfv.UserError, match="capturing group"):
        load_config(_config(tmp_path, groups={"drive_retinal_vessels": r"^p\d+"}))
    config = load_config(_config(tmp_path, groups={"drive_retinal_vessels": r"^(DRIVE)_"}))
    assert config["groups"] == {"drive_retinal_vessels": r"^(DRIVE)_"}


needs_chaos = pytest.mark.skipif(
    not (DATA / "chaos_t2spir_abdomen3d").exists(), reason="../shared/data absent"
)


@needs_chaos
def test_3d_task_split_three_ways_and_derived_source_tasks(tmp_path):
    chaos = DATA / "chaos_t2spir_abdomen3d"
    kwargs = dict(
        size=[16, 16, 8], channels=1, max_cases=10, test_fraction=0.4, split_seed=0, reserve=4
    )
    target = prepare_task(chaos, tmp_path, **kwargs)
    assert target.images.shape == (6, 1, 16, 16, 8) and target.labels.shape == (6, 16, 16, 8)
    assert set(np.unique(target.labels)) == {0, 1, 2, 3, 4} and target.n_classes == 5
    liver = prepare_task(chaos, tmp_path, **kwargs, derived={"liver": [1]}, name="liver")
    kidneys = prepare_task(chaos, tmp_path, **kwargs, derived={"kidneys": [2, 3]}, name="kidneys")
    sources = set(target.reserved)
    train = {target.case_ids[i] for i in target.train}
    test = {target.case_ids[i] for i in target.test}
    # sources / target-train / target-test: 4 / 4 / 2 subjects, disjoint
    assert len(sources) == 4 and len(train) == 4 and len(test) == 2
    assert not (sources & train or sources & test or train & test)
    assert set(liver.case_ids) == set(kidneys.case_ids) == sources
    assert len(liver.train) == 4 and len(liver.test) == 0  # a source: pre-trained on all
    assert liver.class_names == {0: "background", 1: "liver"} and liver.n_classes == 2
    assert set(np.unique(liver.labels)) == {0, 1} and set(np.unique(kidneys.labels)) == {0, 1}
    # the remapped labels are the folder's labels, resized the same way
    full = prepare_task(chaos, tmp_path, **{**kwargs, "reserve": 0, "test_fraction": 0.2})
    for case, label in zip(liver.case_ids, liver.labels):
        original = full.labels[full.case_ids.index(case)]
        assert np.array_equal(label, (original == 1).astype(label.dtype))
        other = kidneys.labels[kidneys.case_ids.index(case)]
        assert np.array_equal(other, np.isin(original, [2, 3]).astype(other.dtype))
    split = json.loads((target.train_folder.parent / "split.json").read_text())
    assert sorted(split["sources"]) == sorted(sources) and sorted(split["test"]) == sorted(test)
    written = find_cases(target.train_folder)  # NIfTI, what ccfv rank scores
    assert written.ndim == 3 and sorted(c.case_id for c in written.cases) == sorted(train)
    with pytest.raises(ccfv.UserError, match="sets no cases aside"):
        prepare_task(chaos, tmp_path, **{**kwargs, "reserve": 0}, derived={"liver": [1]})
    with pytest.raises(ccfv.UserError, match="leaves 2 of its 10 cases"):
        prepare_task(chaos, tmp_path, **{**kwargs, "reserve": 8})
    with pytest.raises(ccfv.UserError, match="is 3D but the benchmark size 16 is 2D"):
        prepare_task(chaos, tmp_path, **{**kwargs, "size": 16, "reserve": 0})


@needs_chaos
def test_config_derived_tasks_are_checked(tmp_path):
    config = load_config(CONFIG3D)
    assert config.targets == ["chaos_t2spir_abdomen3d"] and config.spatial_size == [48, 48, 24]
    specs = config.task_specs
    assert specs["chaos_liver"].parent == "chaos_t2spir_abdomen3d"
    assert specs["chaos_kidneys"].labels == {"kidneys": [2, 3]}
    assert specs["chaos_liver"].path == specs["chaos_t2spir_abdomen3d"].path
    derived = {"name": "liver", "from": "chaos_t2spir_abdomen3d", "labels": {"liver": [1]}}
    base = dict(tasks=["chaos_t2spir_abdomen3d", derived], size=[16, 16, 8], channels=1)
    with pytest.raises(ccfv.UserError, match="sets no cases aside"):
        load_config(_config(tmp_path, **base))
    ok = dict(base, source_cases={"chaos_t2spir_abdomen3d": 4})
    assert load_config(_config(tmp_path, **ok)).targets == ["chaos_t2spir_abdomen3d"]
    with pytest.raises(ccfv.UserError, match="derived source tasks"):
        load_config(_config(tmp_path, **ok, targets=["liver"]))
    with pytest.raises(ccfv.UserError, match="a derived task is"):
        load_config(
            _config(
                tmp_path, **dict(ok, tasks=["chaos_t2spir_abdomen3d", {"name": "x", "from": "y"}])
            )
        )
    with pytest.raises(ccfv.UserError, match="labels.liver"):
        load_config(
            _config(
                tmp_path,
                **dict(
                    ok, tasks=["chaos_t2spir_abdomen3d", {**derived, "labels": {"liver": ["one"]}}]
                ),
            )
        )
    with pytest.raises(ccfv.UserError, match="size"):
        load_config(_config(tmp_path, **dict(ok, size=[16, 16, 8, 2])))
    with pytest.raises(ccfv.UserError, match="source_cases names task 'nowhere'"):
        load_config(_config(tmp_path, **dict(ok, source_cases={"nowhere": 2})))


@needs_chaos
def test_bench_quick_3d_end_to_end(tmp_path):
    args = [
        "bench",
        "--config",
        str(CONFIG3D),
        "--quick",
        "--work",
        str(tmp_path / "work"),
        "--out",
        str(tmp_path / "out"),
        "--quiet",
    ]
    assert main(args) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    config = load_config(CONFIG3D, quick=True)
    ((target, t),) = summary["targets"].items()
    assert target == "chaos_t2spir_abdomen3d"
    # 3 architectures x (spleen CT, liver and kidneys of the set-aside subjects, scratch)
    assert len(t["models"]) == 12
    assert {n.split("__")[0] for n in t["models"]} == {"unet", "segresnet", "dynunet"}
    assert not set(t["scored_cases"]) & set(t["test"])
    methods = config["scoring"]["methods"] + ["ccfv@proportional"]
    for m in t["models"].values():
        assert len(m["dice"]) == 2 and all(0 <= d <= 1 for d in m["dice"])
        assert set(m["dice_per_class"][0]) == {"liver", "right kidney", "left kidney", "spleen"}
        assert list(m["scores"]) == methods and all(np.isfinite(list(m["scores"].values())))
    split = json.loads(
        next((tmp_path / "work" / "tasks").glob("chaos_t2spir_abdomen3d-*/split.json")).read_text()
    )
    sources = set(split["sources"])
    assert len(sources) == 3 and not sources & set(t["train"] + t["test"])
    # per-class consistency recorded for every model, class and layer; analysed and plotted
    assert t["classes"] == ["liver", "right kidney", "left kidney", "spleen"]
    for m in t["models"].values():
        for variant in ("ccfv", "ccfv-paper"):
            assert set(m["class_consistency"][variant]) <= set(t["classes"])
            assert all(len(v) == 3 for v in m["class_consistency"][variant].values())
    stats = summary["statistics"]
    assert stats["multiclass_targets"] == [target]
    assert stats["average_multiclass"]["ccfv"] == stats["average"]["ccfv"]
    assert set(stats["per_class"][target]["ccfv"]["across_models"]) <= set(t["classes"])
    assert (tmp_path / "out" / f"classes_{target}.png").stat().st_size > 1000
    assert "Per-class consistency" in (tmp_path / "out" / "tables.md").read_text()
    assert main(["bench", "--combine", str(tmp_path / "out"), "--out", str(tmp_path / "all")]) == 0
    merged = json.loads((tmp_path / "all" / "summary.json").read_text())
    assert merged["targets"][target]["track"] == "chaos3d-quick"


@needs_chaos
@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a CUDA GPU is present")
def test_bench_device_cuda_without_gpu_is_a_message(tmp_path, capsys):
    rc = main(
        [
            "bench",
            "--config",
            str(CONFIG3D),
            "--quick",
            "--device",
            "cuda",
            "--work",
            str(tmp_path / "work"),
            "--out",
            str(tmp_path / "out"),
            "--quiet",
        ]
    )
    assert rc == 2 and "--device cuda: torch sees no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "work" / "finetune").exists()  # nothing trained


def test_bench_needs_a_config_or_combine(capsys):
    assert main(["bench"]) == 2
    assert "ccfv bench needs --config FILE" in capsys.readouterr().err
