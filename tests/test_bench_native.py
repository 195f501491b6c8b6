"""Native-resolution targets of the transfer benchmark (issue 13, the ``native`` config key):
the config's checks, the cache digests the committed v2 runs carry, the native grid kept by the
preparation, MONAI's patch crops, the sliding-window test Dice against a slow reference, and a
tiny end-to-end benchmark with one native target."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import SHARED
from PIL import Image

import ccfv
from ccfv.bench.config import load_config
from ccfv.bench.run import (
    SCRATCH,
    convergence_config,
    finetune_path,
    model_name,
    pretrain_path,
    run_bench,
)

DATA = SHARED / "data"
ROOT = Path(__file__).resolve().parents[1]
V2 = ROOT / "benchmarks" / "transfer2d-v2.yaml"
RESULTS = ROOT / "benchmarks" / "results" / "v2" / "transfer2d-v2"
needs_data = pytest.mark.skipif(
    not (DATA / "drive_retinal_vessels").exists(), reason="../shared/data absent"
)


class _Named:
    """A prepared task where only its name matters (the cache names)."""

    def __init__(self, name):
        self.name = name


def _config(tmp_path, **changes):
    raw = {
        "data_root": str(DATA),
        "tasks": ["drive_retinal_vessels", "chase_retinal_vessels", "hc18_fetal_head"],
        "architectures": ["unet"],
        **changes,
    }
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@needs_data
def test_native_config_is_checked(tmp_path):
    bad = [
        ({"nowhere": {}}, "native names 'nowhere', which is not a task folder"),
        ({"hc18_fetal_head": {"size": 64}}, r"native.hc18_fetal_head: \{'size': 64\}"),
        ({"hc18_fetal_head": 64}, "native.hc18_fetal_head: 64; give a mapping"),
        ({"hc18_fetal_head": {"patch": 60}}, "need a multiple of 8 on every axis"),
        ({"hc18_fetal_head": {"patch": [64, 64, 64]}}, "give one int or 2 ints"),
        ({"hc18_fetal_head": {"patch": True}}, "give one int or 2 ints"),
        ({"hc18_fetal_head": {"overlap": 1.0}}, r"overlap 1.0: give .* in \[0, 1\)"),
        ({"hc18_fetal_head": {"group": "CHASE"}}, "not a regular expression with a capturing"),
    ]
    for native, message in bad:
        with pytest.raises(ccfv.UserError, match=message):
            load_config(_config(tmp_path, native=native))
    with pytest.raises(ccfv.UserError, match="native .*: give a mapping"):
        load_config(_config(tmp_path, native=["hc18_fetal_head"]))
    # subjects set aside for derived sources would land in the native target's test split
    with pytest.raises(ccfv.UserError, match="native.hc18_fetal_head: source_cases sets 3"):
        load_config(
            _config(tmp_path, native={"hc18_fetal_head": {}}, source_cases={"hc18_fetal_head": 3})
        )
    with pytest.raises(ccfv.UserError, match="UNETR's position embedding is built for size 64"):
        load_config(
            _config(tmp_path, architectures=["unetr"], native={"hc18_fetal_head": {"patch": 32}})
        )
    config = load_config(
        _config(
            tmp_path,
            targets=["chase_retinal_vessels", "hc18_fetal_head"],
            groups={"chase_retinal_vessels": "^(CHASE)"},
            native={
                "chase_retinal_vessels": {"patch": [32, 48], "group": "^(CHASE_\\d+)[LR]$"},
                "drive_retinal_vessels": None,  # not a target: a source at size
                "hc18_fetal_head": {},
            },
        )
    )
    assert config.native("chase_retinal_vessels") == {
        "patch": [32, 48],
        "overlap": 0.25,
        "group": "^(CHASE_\\d+)[LR]$",
    }
    assert config.native("hc18_fetal_head") == {"patch": [64, 64], "overlap": 0.25, "group": None}
    assert config.native("drive_retinal_vessels") is None
    # a native target's own split uses its native group; the task's groups stays the source's
    assert config.split_group("chase_retinal_vessels") == "^(CHASE_\\d+)[LR]$"
    assert config.split_group("drive_retinal_vessels") is None
    assert config["groups"]["chase_retinal_vessels"] == "^(CHASE)"


@needs_data
def test_committed_v2_sources_and_convergence_keep_their_names():
    """The native key and the three native targets leave the cache names of the committed v2
    pre-training (sources.json) and convergence study (convergence/, whose names carry no
    checkpoint fingerprint) as they were; the native targets' own runs carry their native
    settings."""
    config = load_config(V2)
    names = list(config.task_specs)
    assert config.targets[:4] == [
        "hc18_fetal_head",
        "ph2_skin_lesions",
        "acdc_cine_mri2d",
        "sunnybrook_lv_cinemri2d",
    ]
    sources = json.loads((RESULTS / "sources.json").read_text())
    expected = {
        pretrain_path(config, arch, _Named(task), Path(".")).stem
        for arch in config["architectures"]
        for task in names
    }
    assert set(sources) == expected and len(expected) == 21
    study = convergence_config(config)
    for target in config.targets[:4]:
        source = next(n for n in names if n != target)
        expected = {
            finetune_path(
                study,
                model_name("unet", s),
                _Named(target),
                0,
                Path("."),
                steps=budget,
                folder="convergence",
            ).name
            for s in (SCRATCH, source)
            for budget in config["convergence"]["budgets"]
        }
        committed = {p.name for p in (RESULTS / "convergence" / target).glob("*.json")}
        assert len(expected) == 8 and expected <= committed
    # a native target's runs: its digest holds the native settings
    plain = json.loads(json.dumps(config.raw))
    plain["native"] = {}
    without = type(config)(raw=plain, source=config.source)
    fp = "0123456789ab"
    for target in config.targets[4:]:
        assert config.native(target) is not None
        for a in config["architectures"]:
            name = model_name(a, SCRATCH)
            assert finetune_path(
                config, name, _Named(target), 0, Path("."), checkpoint=fp
            ) != finetune_path(without, name, _Named(target), 0, Path("."), checkpoint=fp)


def test_committed_v2_runs_keep_their_names():
    """Every committed v2 fine-tuning run that records its starting checkpoint
    (``"checkpoint"``) has the cache name that the config and that checkpoint give: the
    committed checkpoint of its model (``checkpoints/``) has that fingerprint, and the name
    recomputed from it is the file's. Runs made before runs recorded their checkpoint (moved
    to ``legacy-runs/``) are not tied to any weights and are not checked."""
    from ccfv.bench.checkpoints import checkpoint_fingerprint

    config = load_config(V2)
    names = list(config.task_specs)
    folder = RESULTS / "checkpoints"
    checked = 0
    for target in config.targets:
        for path in sorted((RESULTS / "runs" / target).glob("*.json")):
            run = json.loads(path.read_text())
            if "checkpoint" not in run:
                continue
            arch, source = run["model"].split("__", 1)
            assert source == SCRATCH or (source in names and source != target), path
            task = None if source == SCRATCH else _Named(source)
            checkpoint = folder / pretrain_path(config, arch, task, Path(".")).name
            assert checkpoint.is_file(), (
                f"{path.name}: its checkpoint {checkpoint} is not committed"
            )
            assert checkpoint_fingerprint(checkpoint) == run["checkpoint"], path.name
            expected = finetune_path(
                config,
                run["model"],
                _Named(target),
                run["seed"],
                Path("."),
                checkpoint=run["checkpoint"],
            )
            assert path.name == expected.name
            checked += 1
    if not checked:
        pytest.skip(
            f"no committed run under {RESULTS / 'runs'} records its checkpoint yet (the runs "
            "made before the fingerprint are legacy): nothing to check"
        )


@needs_data
def test_native_preparation_keeps_each_case_on_its_own_grid(tmp_path):
    from ccfv.bench.tasks import prepare_native_task

    kwargs = dict(ndim=2, channels=3, max_cases=6, test_fraction=0.3, split_seed=0)
    task = prepare_native_task(
        DATA / "chase_retinal_vessels",
        tmp_path,
        group="^(CHASE_\\d+)[LR]$",
        train_cases=2,
        **kwargs,
    )
    assert len(task.case_ids) == 6 and task.n_classes == 2
    train_children = {task.case_ids[i][:8] for i in task.train}
    test_children = {task.case_ids[i][:8] for i in task.test}
    assert len(train_children) == 2 and not train_children & test_children  # split by child
    for image, label, case in zip(task.images, task.labels, task.case_ids):
        raw_label = np.asarray(
            Image.open(DATA / "chase_retinal_vessels" / "labelsTr" / f"{case}.png")
        )
        raw = np.asarray(Image.open(DATA / "chase_retinal_vessels" / "imagesTr" / f"{case}.png"))
        assert label.shape == raw_label.shape == (492, 512) and image.shape == (3, 492, 512)
        np.testing.assert_array_equal(label, raw_label)
        assert image.dtype == np.uint8 and label.dtype == np.int64
        # the intensity mapping of the 64-px tasks: 0.5 / 99.5 percentiles -> 0 / 255
        chw = np.moveaxis(raw, -1, 0).astype(np.float64)
        lo, hi = np.percentile(chw, [0.5, 99.5])
        expect = np.round(np.clip((chw - lo) / (hi - lo) * 255.0, 0, 255))
        assert np.abs(image.astype(np.float64) - expect).max() <= 1
    # the train folder ccfv rank scores: the train cases at native size
    written = json.loads((task.train_folder / "dataset.json").read_text())
    assert len(written["training"]) == len(task.train)
    first = np.asarray(Image.open(task.train_folder / written["training"][0]["label"]))
    assert first.shape == (492, 512)
    # cached: read back the same
    again = prepare_native_task(
        DATA / "chase_retinal_vessels",
        tmp_path,
        group="^(CHASE_\\d+)[LR]$",
        train_cases=2,
        **kwargs,
    )
    assert again.case_ids == task.case_ids and np.array_equal(again.test, task.test)
    assert all(np.array_equal(a, b) for a, b in zip(again.images, task.images))
    grey = prepare_native_task(DATA / "isbi_em_membranes", tmp_path, train_cases=3, **kwargs)
    assert grey.images[0].shape == (3, 512, 512)
    np.testing.assert_array_equal(grey.images[0][0], grey.images[0][2])  # grey repeated


def test_patch_crops_are_sub_images_centred_on_the_asked_class():
    from ccfv.bench.training import PatchCropper

    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (3, 40, 50), dtype=np.uint8)
    label = np.zeros((40, 50), dtype=np.int64)
    label[10:13, 20:34] = 1
    small = rng.integers(0, 256, (3, 10, 12), dtype=np.uint8)  # smaller than the patch
    small_label = np.ones((10, 12), dtype=np.int64)
    for pos, neg, centre in ((1.0, 0.0, 1), (0.0, 1.0, 0)):
        crop = PatchCropper([image, small], [label, small_label], [16, 16], pos=pos, neg=neg)
        for seed in range(6):
            x, y = crop(0, seed)
            again = crop(0, seed)
            assert np.array_equal(x, again[0]) and np.array_equal(y, again[1])
            spots = [
                (r, c)
                for r in range(40 - 15)
                for c in range(50 - 15)
                if np.array_equal(image[:, r : r + 16, c : c + 16], x)
            ]
            assert len(spots) == 1
            r, c = spots[0]
            np.testing.assert_array_equal(label[r : r + 16, c : c + 16], y)
            assert y[8, 8] == centre  # MONAI centres the patch on a pixel of the drawn class
    x, y = PatchCropper([small], [small_label], [16, 16])(0, 0)
    assert x.shape == (3, 16, 16) and y.shape == (16, 16)
    np.testing.assert_array_equal(x[:, 3:13, 2:14], small)  # zero padding, (16 - 10) // 2 before
    assert y.sum() == 120 and x[:, :3].max() == 0


def _reference_prediction(model, image, roi, overlap):
    """MONAI's sliding windows by hand: pad to the window (half before), windows every
    ``int(roi * (1 - overlap))`` pixels, the last one ending at the edge, each window run alone,
    logits summed and divided by the number of windows covering the pixel, argmax."""
    x = torch.as_tensor(image, dtype=torch.float32)[None] / 255.0
    shape = x.shape[2:]
    pads = [max(r - n, 0) for r, n in zip(roi, shape)]
    x = torch.nn.functional.pad(
        x, (pads[1] // 2, pads[1] - pads[1] // 2, pads[0] // 2, pads[0] - pads[0] // 2)
    )
    padded = x.shape[2:]
    starts = []
    for n, r in zip(padded, roi):
        step = r if r == n else max(int(r * (1 - overlap)), 1)
        k = next(d for d in range(n) if d * step + r >= n)
        starts.append([min(d * step, n - r) for d in range(k + 1)])
    total = torch.zeros(1, 2, *padded, dtype=torch.float64)
    count = torch.zeros(*padded, dtype=torch.float64)
    model.eval()
    with torch.no_grad():
        for a in starts[0]:
            for b in starts[1]:
                out = model(x[:, :, a : a + roi[0], b : b + roi[1]])
                total[:, :, a : a + roi[0], b : b + roi[1]] += out.double()
                count[a : a + roi[0], b : b + roi[1]] += 1
    logits = (total / count)[
        0, :, pads[0] // 2 : pads[0] // 2 + shape[0], pads[1] // 2 : pads[1] // 2 + shape[1]
    ]
    return logits.argmax(dim=0).numpy()


def test_sliding_window_dice_equals_a_slow_reference():
    from ccfv.bench.dice import dice_per_case_sliding, predict_sliding
    from ccfv.bench.train import ARCHITECTURES, set_seed

    set_seed(0)
    model = ARCHITECTURES["unet"](3, 2, 32)
    rng = np.random.default_rng(1)
    images, labels = [], []
    for shape in ((45, 70), (20, 50), (32, 32)):
        base = rng.normal(size=shape)
        images.append(
            np.clip(
                np.stack([base * 60 + 128 + rng.normal(size=shape) * 5 for _ in range(3)]), 0, 255
            ).astype(np.uint8)
        )
        labels.append((base > 0.3).astype(np.int64))
    roi, overlap = [32, 32], 0.25
    dice = dice_per_case_sliding(model, images, labels, n_classes=2, roi=roi, overlap=overlap)
    assert dice.shape == (3, 1)
    for i, (image, label) in enumerate(zip(images, labels)):
        ref = _reference_prediction(model, image, roi, overlap)
        got = predict_sliding(model, image, roi=roi, overlap=overlap, sw_batch_size=4)
        np.testing.assert_array_equal(got, ref)
        p, g = ref == 1, label == 1
        assert dice[i, 0] == pytest.approx(2 * (p & g).sum() / (p.sum() + g.sum()), abs=1e-12)


def test_sliding_window_dice_of_a_known_network():
    """A 1x1 convolution thresholds channel 0 at 0.5: the prediction, and so the Dice, is known
    whatever the windows; class 2 absent from a label is NaN, as in dice_per_case."""
    from ccfv.bench.dice import dice_per_case_sliding

    net = torch.nn.Conv2d(3, 3, 1)
    with torch.no_grad():
        net.weight.zero_()
        net.bias.copy_(torch.tensor([0.0, -0.5, -0.7]))
        net.weight[1, 0] = 1.0  # class 1 where channel 0 > 0.5 (and class 2 never wins)
    image = np.zeros((3, 37, 29), dtype=np.uint8)
    image[0, 5:15, 3:20] = 255  # 170 pixels predicted class 1
    label = np.zeros((37, 29), dtype=np.int64)
    label[10:25, 3:20] = 1  # 255 pixels, 85 of them predicted
    out = dice_per_case_sliding(net, [image], [label], n_classes=3, roi=[16, 16], overlap=0.5)
    assert out[0, 0] == pytest.approx(2 * 85 / (170 + 255), abs=1e-12)
    assert math.isnan(out[0, 1])
    with pytest.raises(ValueError, match="outputs 3 channels, n_classes is 2"):
        dice_per_case_sliding(net, [image], [label], n_classes=2, roi=[16, 16], overlap=0.5)


def _crop_task(src: Path, dest: Path, n: int, box: tuple[int, int, int, int]) -> Path:
    """A small Decathlon folder of ``n`` real cases of ``src``, each cropped to ``box``."""
    meta = json.loads((src / "dataset.json").read_text())
    (dest / "imagesTr").mkdir(parents=True)
    (dest / "labelsTr").mkdir()
    training = []
    for entry in meta["training"][:n]:
        for key, folder in (("image", "imagesTr"), ("label", "labelsTr")):
            Image.open(src / entry[key]).crop(box).save(dest / folder / Path(entry[key]).name)
        training.append(entry)
    (dest / "dataset.json").write_text(json.dumps({**meta, "numTraining": n, "training": training}))
    return dest


@needs_data
def test_tiny_benchmark_with_a_native_target(tmp_path):
    from ccfv.bench.tasks import prepare_task

    # box (left, upper, right, lower): 80 x 72 px of the vessels around the optic disc
    _crop_task(DATA / "drive_retinal_vessels", tmp_path / "data" / "drive", 6, (380, 240, 460, 312))
    _crop_task(DATA / "isbi_em_membranes", tmp_path / "data" / "isbi", 6, (0, 0, 64, 64))
    path = tmp_path / "bench.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "native-tiny",
                "data_root": "data",
                "tasks": ["drive", "isbi"],
                "targets": ["drive"],
                "native": {"drive": {"patch": 32}},
                "size": 16,
                "train_cases": {"drive": 4},
                "architectures": ["unet"],
                "pretrain": {"steps": 3},
                "finetune": {
                    "steps": 4,
                    "seeds": [0, 1],
                    "val_fraction": 0.25,
                    "eval_every": 2,
                    "schedule": "poly",
                },
                "scoring": {
                    "cases": 3,
                    "counts": [10, 20, 40],
                    "methods": ["ccfv", "logme"],
                    "proportional": [],
                },
                "statistics": {"bootstrap": 20},
            }
        )
    )
    config = load_config(path)
    work, out = tmp_path / "work", tmp_path / "out"
    lines = []
    summary = run_bench(config, work, out, progress=False, log=lines.append)
    target = summary["targets"]["drive"]
    assert target["native"] == {"patch": [32, 32], "overlap": 0.25, "shapes": ["72x80"]}
    assert len(target["train"]) == 4 and len(target["test"]) == 2
    assert set(target["models"]) == {"unet__isbi", "unet__scratch"}
    for m in target["models"].values():
        assert len(m["dice"]) == 2 and len(m["validation_dice"]) == 2
        assert all(0 <= d <= 1 for d in m["dice"])
        assert [sorted(s) for s in m["dice_per_case"]] == [sorted(target["test"])] * 2
        per_case = np.array([[v[0] for v in s.values()] for s in m["dice_per_case"]], float)
        np.testing.assert_allclose(per_case.mean(axis=1), m["dice"], rtol=1e-12)
        assert {"ccfv", "logme"} <= set(m["scores"]) and all(
            math.isfinite(v) for v in m["scores"].values()
        )
    from ccfv.bench.checkpoints import checkpoint_fingerprint

    def run_path(model, seed):
        arch, source = model.split("__")
        task = None if source == SCRATCH else _Named(source)
        fp = checkpoint_fingerprint(pretrain_path(config, arch, task, work))
        return finetune_path(config, model, _Named("drive"), seed, work, checkpoint=fp)

    run = json.loads(run_path("unet__scratch", 0).read_text())
    assert run["checkpoint"] == checkpoint_fingerprint(pretrain_path(config, "unet", None, work))
    assert run["native"] == {"patch": [32, 32], "overlap": 0.25} and run["steps"] == 4
    assert [s for s, _ in run["validation"]["curve"]] == [2, 4]
    # the estimators see the native train images through windows of the patch size
    bank = yaml.safe_load((work / "scores" / "drive" / "bank.yaml").read_text())
    assert {m["preprocessing"]["roi"][0] for m in bank["models"]} == {32}
    assert all(m["preprocessing"]["overlap"] == 0.25 for m in bank["models"])
    folder = next((work / "tasks").glob("drive-native-*/train"))
    assert np.asarray(Image.open(next((folder / "labelsTr").glob("*.png")))).shape == (72, 80)
    # the source version of the target (pre-training) is the task at size, split as a source
    # (no train_cases): preparing that again finds the file the benchmark wrote
    prepared = sorted(p.name for p in (work / "tasks").glob("drive-*.npz"))
    assert len(prepared) == 2 and sum("native" in p for p in prepared) == 1
    source = prepare_task(
        tmp_path / "data" / "drive",
        work,
        size=16,
        channels=3,
        max_cases=config["max_cases"],
        test_fraction=config["test_fraction"],
        split_seed=0,
    )
    assert source.images.shape == (6, 3, 16, 16)
    assert sorted(p.name for p in (work / "tasks").glob("drive-*.npz")) == prepared
    assert any(line.startswith("task drive: 6 cases at size 16 (as a source)") for line in lines)
    assert any("drive (native target): 4 train / 2 test cases" in line for line in lines)
    # the same runs again: read from the cache, not trained again
    stamp = run_path("unet__isbi", 1).stat().st_mtime_ns
    again = run_bench(config, work, tmp_path / "out2", progress=False, log=lambda *_: None)
    assert (
        again["targets"]["drive"]["models"]["unet__isbi"]["dice"]
        == target["models"]["unet__isbi"]["dice"]
    )
    assert run_path("unet__isbi", 1).stat().st_mtime_ns == stamp
