"""``ccfv bank init`` (scan folders into a bank file) and ``ccfv bank check``."""

import pytest
import torch
import yaml
from monai.networks.nets import UNet
from test_bank_bundle import NET, make_bundle

from ccfv.bank import load_bank
from ccfv.cli import main

SMALL_2D = {
    "spatial_dims": 2,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [4, 8],
    "strides": [2],
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A folder tree: a bundle, a model.ts-only bundle, a TorchScript file, a state dict,
    a pickled module."""
    root = tmp_path_factory.mktemp("models")
    make_bundle(root / "zoo" / "spleen_ct_segmentation")
    make_bundle(root / "zoo" / "ts_only_bundle", weights="ts")
    (root / "scripted").mkdir()
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(UNet(**SMALL_2D).eval()), str(root / "scripted" / "net2d.ts"))
    torch.save(UNet(**NET).state_dict(), root / "scripted" / "bare_weights.pth")
    torch.save(UNet(**SMALL_2D), root / "pickled_module.pt")  # needs unpickling: refused
    return root


def _names(bank):
    return [m["name"] for m in yaml.safe_load(bank.read_text())["models"]]


def test_init_writes_loadable_entries_and_check_passes(models, tmp_path, capsys):
    bank = tmp_path / "bank.yaml"
    assert main(["bank", "init", str(models), "--out", str(bank)]) == 0
    out = capsys.readouterr().out
    assert sorted(_names(bank)) == ["net2d", "spleen_ct_segmentation"]
    entries = {e.name: e for e in load_bank(bank)}
    assert entries["spleen_ct_segmentation"].kind == "bundle"
    assert entries["net2d"].kind == "torchscript"
    assert entries["net2d"].preprocessing.roi == (256, 256)
    text = bank.read_text()
    assert text.startswith("# ccfv model bank written by `ccfv bank init`")
    assert "# MONAI bundle:" in text and "# TorchScript file:" in text
    skipped = out.split("skipped")[1]
    assert "bare_weights.pth" in skipped and "state dict" in skipped
    assert "network" in skipped and "args" in skipped
    assert "ts_only_bundle" in skipped and "model.ts" in skipped
    assert "pickled_module.pt" in skipped and "weights_only=True" in skipped

    # no overwrite without --force
    assert main(["bank", "init", str(models), "--out", str(bank)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["bank", "init", str(models), "--out", str(bank), "--force"]) == 0
    capsys.readouterr()

    assert main(["bank", "check", str(bank)]) == 0
    table = capsys.readouterr().out
    for name in ("spleen_ct_segmentation", "net2d"):
        (line,) = [ln for ln in table.splitlines() if ln.startswith(f"| {name} ")]
        assert line.rstrip().endswith("| ok |")
    (line,) = [ln for ln in table.splitlines() if ln.startswith("| spleen_ct_segmentation ")]
    assert "1x8x16x16x16" in line  # UNet(4, 8, 16) decoder shape for a 32^3 window
    assert "outputs.0:output 1x2x256x256" in table


def test_check_reports_broken_entries(models, tmp_path, capsys):
    bad_ts = tmp_path / "broken.ts"
    bad_ts.write_bytes(b"not a torchscript file")
    bank = tmp_path / "bank.yaml"
    bank.write_text(
        yaml.safe_dump(
            {
                "models": [
                    {
                        "name": "good",
                        "network": "monai.networks.nets.UNet",
                        "args": NET,
                        "preprocessing": {"roi": [16, 16, 16]},
                    },
                    {"name": "broken", "torchscript": str(bad_ts)},
                    {"name": "no_roi", "network": "monai.networks.nets.UNet", "args": NET},
                    {
                        "name": "missing_ckpt",
                        "network": "monai.networks.nets.UNet",
                        "args": NET,
                        "checkpoint": "nowhere.pt",
                    },
                ]
            }
        )
    )
    assert main(["bank", "check", str(bank)]) == 1
    captured = capsys.readouterr()
    lines = {
        ln.split("|")[1].strip(): ln
        for ln in captured.out.splitlines()
        if ln.startswith("| ") and not ln.startswith("| name")
    }
    assert lines["good"].rstrip().endswith("| ok |")
    assert "is not a TorchScript file" in lines["broken"]
    assert "preprocessing: {roi:" in lines["no_roi"]
    assert "nowhere.pt" in lines["missing_ckpt"] and "does not exist" in lines["missing_ckpt"]
    assert "Traceback" not in captured.err
    assert "3 of 4 model(s) failed" in captured.err


def test_init_nnunet_folder_one_entry_per_fold(tmp_path, capsys):
    pytest.importorskip("nnunetv2")
    import shutil

    from test_bank_nnunet import make_results_folder

    folder = make_results_folder(
        tmp_path / "nnUNet_results",
        config="3d_fullres",
        dims=3,
        patch=(16, 32, 32),
        spacing=(2.0, 2.0, 2.0),
        scheme="CTNormalization",
        labels=2,
        reader="SimpleITKIO",
    )
    (folder / "fold_1").mkdir()
    shutil.copy(
        folder / "fold_0" / "checkpoint_final.pth", folder / "fold_1" / "checkpoint_best.pth"
    )
    (folder / "fold_2").mkdir()  # no checkpoint: skipped
    bank = tmp_path / "bank.yaml"
    assert main(["bank", "init", str(tmp_path / "nnUNet_results"), "--out", str(bank)]) == 0
    out = capsys.readouterr().out
    raw = yaml.safe_load(bank.read_text())["models"]
    assert [m["name"] for m in raw] == [
        "Dataset001_Test_3d_fullres_fold0",
        "Dataset001_Test_3d_fullres_fold1",
    ]
    assert raw[1]["fold"] == 1 and raw[1]["checkpoint"] == "checkpoint_best.pth"
    assert [e.kind for e in load_bank(bank)] == ["nnunet", "nnunet"]
    assert "fold_2" in out.split("skipped")[1]
    assert main(["bank", "check", str(bank)]) == 0
    table = capsys.readouterr().out
    assert table.count("| ok |") == 2 and "decoder.stages" in table
