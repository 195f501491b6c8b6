"""End to end: bank file + real or generated volumes -> `ccfv rank` -> scores and report."""

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from conftest import SHARED
from monai.networks.nets import UNet

from ccfv.cli import main
from ccfv.rank import rank

DATA = SHARED / "data"
UNET3D = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [8, 16, 32],
    "strides": [2, 2],
}


def write_bank(path, models):
    path.write_text(yaml.safe_dump({"models": models}, sort_keys=False))
    return path


def unet_entry(name, args=UNET3D, roi=(48, 48, 16), **extra):
    return {
        "name": name,
        "network": "monai.networks.nets.UNet",
        "args": args,
        "layers": "auto",
        "preprocessing": {"intensity": {"kind": "zscore"}, "roi": list(roi)},
        **extra,
    }


@pytest.fixture
def generated_data(tmp_path):
    """Four small 3D cases in Decathlon layout with two foreground classes (balls)."""
    root = tmp_path / "target"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in (40, 36, 20)], indexing="ij"), -1)
    training = []
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    for c in range(4):
        label = np.zeros((40, 36, 20), np.uint8)
        for k, centre in ((1, (12, 12, 10)), (2, (27, 22, 9))):
            centre = np.array(centre) + rng.integers(-2, 3, 3)
            label[np.linalg.norm(grid - centre, axis=-1) < 6] = k
        image = 100.0 * label + rng.normal(0, 20, label.shape)
        nib.save(nib.Nifti1Image(image.astype(np.float32), affine), root / f"imagesTr/c{c}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / f"labelsTr/c{c}.nii.gz")
        training.append({"image": f"./imagesTr/c{c}.nii.gz", "label": f"./labelsTr/c{c}.nii.gz"})
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "name": "balls",
                "labels": {"0": "background", "1": "a", "2": "b"},
                "tensorImageSize": "3D",
                "training": training,
            }
        )
    )
    return root


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(7)
    model = UNet(**UNET3D)
    path = tmp_path / "unet.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


def test_generated_volumes_rank_and_cache(tmp_path, generated_data, checkpoint):
    bank = write_bank(
        tmp_path / "bank.yaml",
        [
            unet_entry("pretrained", checkpoint=str(checkpoint), roi=(32, 32, 16)),
            unet_entry("random0", seed=0, roi=(32, 32, 16)),
            unet_entry(
                "random1",
                seed=1,
                roi=(32, 32, 16),
                preprocessing={
                    "spacing": [3.0, 3.0, 3.0],
                    "intensity": {"kind": "zscore"},
                    "roi": [16, 16, 16],
                },
            ),
        ],
    )
    first = rank(
        bank,
        generated_data,
        methods=["ccfv", "ccfv-official"],
        cache_dir=tmp_path / "cache",
        progress=False,
        log=lambda *_: None,
    )
    assert set(first.scores) == {"pretrained", "random0", "random1"}
    assert not first.failures
    for scores in first.scores.values():
        assert all(np.isfinite(v) for v in scores.values())
    # a different seed of initialisation is a different model
    assert first.scores["random0"]["ccfv"] != first.scores["random1"]["ccfv"]
    # cached: same numbers, no model run
    again = rank(
        bank,
        generated_data,
        methods=["ccfv", "ccfv-official"],
        cache_dir=tmp_path / "cache",
        progress=False,
        log=lambda *_: None,
    )
    assert again.scores == first.scores
    # recomputed from scratch with the same seed: the same numbers
    fresh = rank(
        bank,
        generated_data,
        methods=["ccfv", "ccfv-official"],
        cache_dir=tmp_path / "cache2",
        progress=False,
        log=lambda *_: None,
    )
    for model in first.scores:
        for method, value in first.scores[model].items():
            assert fresh.scores[model][method] == pytest.approx(value, rel=1e-6)
    # another sampling seed samples other voxels
    other = rank(
        bank,
        generated_data,
        methods=["ccfv"],
        seed=1,
        cache_dir=tmp_path / "cache",
        progress=False,
        log=lambda *_: None,
    )
    assert other.scores["random0"]["ccfv"] != first.scores["random0"]["ccfv"]


def test_failed_model_does_not_lose_the_others(tmp_path, generated_data):
    wrong = tmp_path / "wrong.pt"
    torch.save({"state_dict": {"conv.weight": torch.zeros(3, 3)}}, wrong)
    bank = write_bank(
        tmp_path / "bank.yaml",
        [
            unet_entry("good", roi=(32, 32, 16)),
            unet_entry("bad", checkpoint=str(wrong), roi=(32, 32, 16)),
        ],
    )
    result = rank(
        bank, generated_data, cache_dir=tmp_path / "cache", progress=False, log=lambda *_: None
    )
    assert np.isfinite(result.scores["good"]["ccfv"])
    assert result.scores["bad"]["ccfv"] is None
    assert "wrong.pt" in result.failures["bad"]


@pytest.mark.skipif(not (DATA / "spinalcord_mri_3d").exists(), reason="../shared/data absent")
def test_cli_rank_real_mri(tmp_path, capsys):
    bank = write_bank(
        tmp_path / "bank.yaml",
        [
            unet_entry("unet_a", seed=0, roi=(64, 64, 16)),
            unet_entry(
                "unet_b",
                seed=3,
                roi=(64, 64, 16),
                preprocessing={
                    "orientation": "RAS",
                    "spacing": [1.5, 1.5, 1.5],
                    "intensity": {"kind": "percentile", "lower": 1, "upper": 99},
                    "roi": [48, 48, 16],
                },
            ),
        ],
    )
    out = tmp_path / "out"
    rc = main(
        [
            "rank",
            "--bank",
            str(bank),
            "--data",
            str(DATA / "spinalcord_mri_3d"),
            "--methods",
            "ccfv,ccfv-official",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert [r["model"] for r in rows] and set(rows[0]) == {"model", "ccfv", "ccfv-official"}
    assert all(np.isfinite(float(r["ccfv"])) for r in rows)
    saved = json.loads((out / "scores.json").read_text())
    assert saved["ranking"] == [r["model"] for r in rows]
    assert (out / "scores.png").stat().st_size > 1000
    assert "unet_a" in (out / "report.md").read_text()
    assert "rank" in capsys.readouterr().out


@pytest.mark.skipif(not (DATA / "drive_retinal_vessels").exists(), reason="../shared/data absent")
def test_rank_real_2d_rgb(tmp_path):
    args = {
        "spatial_dims": 2,
        "in_channels": 3,
        "out_channels": 2,
        "channels": [8, 16, 32],
        "strides": [2, 2],
    }
    bank = write_bank(
        tmp_path / "bank.yaml",
        [
            {
                "name": "unet2d",
                "network": "monai.networks.nets.UNet",
                "args": args,
                "seed": 0,
                "preprocessing": {
                    "spacing": [4.0, 4.0],
                    "intensity": {
                        "kind": "range",
                        "a_min": 0,
                        "a_max": 255,
                        "b_min": 0,
                        "b_max": 1,
                    },
                    "roi": [96, 96],
                },
            },
            {
                "name": "basicunet2d",
                "network": "monai.networks.nets.BasicUNet",
                "args": {
                    "spatial_dims": 2,
                    "in_channels": 3,
                    "out_channels": 2,
                    "features": [8, 8, 16, 16, 32, 8],
                },
                "seed": 0,
                "preprocessing": {
                    "spacing": [4.0, 4.0],
                    "intensity": {"kind": "zscore"},
                    "roi": [96, 96],
                },
            },
        ],
    )
    result = rank(
        bank,
        DATA / "drive_retinal_vessels",
        methods=["ccfv"],
        cases=3,
        seed=0,
        cache_dir=tmp_path / "cache",
        progress=False,
        log=lambda *_: None,
    )
    assert not result.failures
    assert len(result.details["cases"]) == 3
    assert all(np.isfinite(s["ccfv"]) for s in result.scores.values())


def test_cli_errors_are_messages(tmp_path, capsys, generated_data):
    rc = main(["rank", "--bank", str(tmp_path / "missing.yaml"), "--data", str(generated_data)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "missing.yaml" in err and "Traceback" not in err
    bank = write_bank(tmp_path / "bank.yaml", [unet_entry("m", roi=(32, 32, 16))])
    rc = main(["rank", "--bank", str(bank), "--data", str(generated_data), "--methods", "nope"])
    assert rc == 2 and "unknown method 'nope'" in capsys.readouterr().err


def test_cli_layers(tmp_path, capsys):
    bank = write_bank(tmp_path / "bank.yaml", [unet_entry("m", roi=(32, 32, 16))])
    assert main(["layers", "--bank", str(bank)]) == 0
    out = capsys.readouterr().out
    assert "model.1.submodule" in out and "layers used" in out


def test_source_predictions_ride_along(tmp_path, generated_data, checkpoint):
    """The model's own softmax is cached at the last layer's voxels and read by LEEP/NCE."""
    from ccfv.bank import LayerSpec
    from ccfv.extract import FeatureCache, LayerTap
    from ccfv.passes import PREDICTIONS, output_probabilities, split_predictions

    model = UNet(**UNET3D).eval()
    x = torch.randn(1, 1, 32, 32, 16)
    with torch.no_grad(), LayerTap(model, {"out": LayerSpec("", "output")}) as tap:
        torch.testing.assert_close(tap(x)["out"], model(x))  # the root module's output
    logits = np.random.default_rng(0).normal(size=(5, 3)) * 10
    np.testing.assert_allclose(
        output_probabilities(logits), torch.softmax(torch.as_tensor(logits), 1).numpy(), rtol=1e-12
    )
    sig = output_probabilities(np.array([[0.0], [2.0]]))
    np.testing.assert_allclose(sig[:, 1], 1 / (1 + np.exp([0.0, -2.0])))
    np.testing.assert_allclose(sig.sum(1), 1.0)

    bank = write_bank(
        tmp_path / "bank.yaml",
        [unet_entry("pretrained", checkpoint=str(checkpoint), roi=(32, 32, 16))],
    )
    result = rank(
        bank,
        generated_data,
        methods=["leep", "nce", "ccfv"],
        bootstrap=0,
        cache_dir=tmp_path / "cache",
        progress=False,
        log=lambda *_: None,
    )
    assert not result.failures and result.bootstrap is None
    scores = result.scores["pretrained"]
    assert scores["leep"] < 0 and scores["nce"] <= 0  # log-likelihoods of 3 target classes
    assert scores["leep"] >= -np.log(3) - 1e-9 and scores["nce"] >= -np.log(3) - 1e-9
    cache = FeatureCache(tmp_path / "cache")
    (key,) = [p.stem for p in (tmp_path / "cache").glob("*.npz")]
    features, predictions = split_predictions(cache.get(key))
    assert PREDICTIONS not in features and len(predictions) == 4
    last = list(features)[-1]
    for P, (X, _) in zip(predictions, features[last]):
        assert P.shape == (X.shape[0], 2)  # at the last layer's voxels, 2 source classes
        np.testing.assert_allclose(P.sum(1), 1.0, atol=1e-6)
    assert np.all(cache.get(key)[PREDICTIONS][0][1] == features[last][0][1])


@pytest.mark.skipif(not (DATA / "spinalcord_mri_3d").exists(), reason="../shared/data absent")
def test_every_method_and_the_bootstrap_on_real_mri(tmp_path, capsys):
    """All registered estimators from one feature pass, bootstrap in the output, then
    `ccfv evaluate` on the written scores.csv (the Dice here are made up for the mechanics)."""
    from ccfv.estimators.registry import ESTIMATORS

    bank = write_bank(
        tmp_path / "bank.yaml",
        [unet_entry(f"unet_{s}", seed=s, roi=(64, 64, 16)) for s in range(3)],
    )
    out = tmp_path / "out"
    methods = ",".join(ESTIMATORS)
    rc = main(
        [
            "rank",
            "--bank",
            str(bank),
            "--data",
            str(DATA / "spinalcord_mri_3d"),
            "--methods",
            methods,
            "--cases",
            "3",
            "--bootstrap",
            "20",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "95% interval" in printed and "P(first)" in printed and "stays first in" in printed
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert list(rows[0]) == ["model", *ESTIMATORS]
    for row in rows:
        assert all(np.isfinite(float(row[m])) for m in ESTIMATORS), row
    boot = json.loads((out / "scores.json").read_text())["details"]["bootstrap"]
    assert boot["method"] == "ccfv" and boot["n_boot"] == 20
    # the ranking method's full score comes from the tables the draws use: bit for bit the
    # score of a run without the bootstrap
    plain = rank(
        bank,
        DATA / "spinalcord_mri_3d",
        methods=["ccfv", "ccfv-paper", "logme"],
        cases=3,
        bootstrap=0,
        cache_dir=tmp_path / "cache",
        progress=False,
        log=lambda *_: None,
    )
    for row in rows:
        for m in ("ccfv", "ccfv-paper", "logme"):
            assert float(row[m]) == pytest.approx(plain.scores[row["model"]][m], rel=1e-12)
    booted = rank(
        bank,
        DATA / "spinalcord_mri_3d",
        methods=["ccfv", "logme"],
        cases=3,
        bootstrap=3,
        cache_dir=tmp_path / "cache",
        progress=False,
        log=lambda *_: None,
    )
    for model, scores in booted.scores.items():
        assert scores == {m: plain.scores[model][m] for m in ("ccfv", "logme")}
    assert sum(m["p_first"] for m in boot["models"].values()) == pytest.approx(1.0)
    truth = tmp_path / "finetuned.csv"
    truth.write_text("model,dice\nunet_0,0.71\nunet_1,0.65\nunet_2,0.80\n")
    assert (
        main(
            [
                "evaluate",
                "--scores",
                str(out / "scores.csv"),
                "--truth",
                str(truth),
                "--out",
                str(tmp_path / "eval"),
            ]
        )
        == 0
    )
    evaluated = list(csv.DictReader(open(tmp_path / "eval" / "evaluation.csv")))
    assert [r["method"] for r in evaluated] == list(ESTIMATORS)
    assert (tmp_path / "eval" / "evaluation.png").stat().st_size > 1000
