"""``ccfv select`` end to end on real 3D volumes (CHAOS T2-SPIR, 3 cases) with a bank of the
three kinds (a MONAI network, an nnU-Net v2 folder, a MONAI bundle) plus a TorchScript entry
whose head cannot be re-initialised (the failing candidate); resume after a kill; bad inputs
refused before any training."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from conftest import SHARED

pytest.importorskip("nnunetv2")

from ccfv.bank import load_bank, load_model  # noqa: E402
from ccfv.bank.checkpoint import load_torch_file  # noqa: E402
from ccfv.cli import main  # noqa: E402
from ccfv.training import replace_head  # noqa: E402

DATA = SHARED / "data" / "chaos_t2spir_abdomen3d"
ARGS = [
    "--data",
    str(DATA),
    "--cases",
    "3",
    "--top",
    "4",
    "--budget",
    "16",
    "--save-every",
    "1",
    "--quiet",
]


class _Scripted(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = torch.nn.Conv3d(1, 4, 3, padding=1)
        self.head = torch.nn.Conv3d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = torch.relu(self.enc(x))
        return self.head(f), f


def make_bank(root):
    from test_bank_bundle import inference_config, make_bundle
    from test_bank_nnunet import make_results_folder

    bundle = make_bundle(
        root / "bundle", config=inference_config(pixdim=(4.0, 4.0, 8.0), roi=(32, 32, 16))
    )
    nn = make_results_folder(
        root / "nn",
        config="3d_fullres",
        dims=3,
        patch=(8, 32, 32),
        spacing=(8.0, 4.0, 4.0),
        scheme="ZScoreNormalization",
        labels=5,
        reader="SimpleITKIO",
        seed=1,
    )
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(_Scripted()), root / "scripted.pt")
    pre = {"intensity": {"kind": "zscore"}, "spacing": [4.0, 4.0, 8.0], "roi": [32, 32, 8]}
    models = [
        {
            "name": "monai_unet",
            "network": "monai.networks.nets.UNet",
            "args": {
                "spatial_dims": 3,
                "in_channels": 1,
                "out_channels": 3,
                "channels": [8, 16, 32],
                "strides": [2, 2],
                "num_res_units": 1,
            },
            "preprocessing": pre,
        },
        {"name": "nnunet_mr", "nnunet": str(nn)},
        {"name": "bundle_unet", "bundle": str(bundle)},
        {
            "name": "scripted",
            "torchscript": str(root / "scripted.pt"),
            "layers": ["outputs.1"],
            "preprocessing": pre,
        },
    ]
    path = root / "bank.yaml"
    path.write_text(yaml.safe_dump({"models": models}, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def selected(tmp_path_factory):
    root = tmp_path_factory.mktemp("select")
    bank = make_bank(root)
    out, cache = root / "out", root / "cache"
    assert (
        main(["select", "--bank", str(bank), *ARGS, "--cache-dir", str(cache), "--out", str(out)])
        == 0
    )
    return bank, out, cache, json.loads((out / "selection.json").read_text())


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_select_end_to_end_three_kinds(selected):
    bank, out, cache, result = selected
    cands = result["candidates"]
    assert set(cands) == {"monai_unet", "nnunet_mr", "bundle_unet", "scripted"}
    assert [c["rank"] for c in cands.values()] == [1, 2, 3, 4]
    # the plan for 4 candidates within 16 steps: rungs of 4 and 2, base 2, ends 2 and 6
    assert result["plan"]["counts"] == [4, 2] and result["plan"]["rung_ends"] == [2, 6]
    assert "head cannot be re-initialised" in cands["scripted"]["failure"]
    trained = {n: c for n, c in cands.items() if not c["failure"]}
    assert len(trained) == 3
    # rung 1: the two best of three by validation Dice go on to step 6, the third stops at 2
    first = {n: c["rungs"][0] for n, c in trained.items()}
    assert all(0.0 <= v <= 1.0 for v in first.values())
    goes_on = sorted(first, key=lambda n: (-first[n], cands[n]["rank"]))[:2]
    assert sorted(n for n, c in trained.items() if c["steps"] == 6) == sorted(goes_on)
    assert [c["steps"] for n, c in trained.items() if n not in goes_on] == [2]
    winner = result["winner"]["model"]
    assert winner in goes_on
    assert result["winner"]["val_dice"] == max(cands[n]["rungs"][1] for n in goes_on)
    for name in goes_on:  # validation every base (2) steps
        assert [s for s, _ in cands[name]["curve"]] == [2, 4, 6]
    # heads: 3 -> 5 classes (MONAI), 2 -> 5 (bundle), nnU-Net's already has 5
    assert cands["monai_unet"]["head_reinitialised"]
    assert cands["bundle_unet"]["head_reinitialised"]
    assert cands["nnunet_mr"]["head_reinitialised"] == []
    comp = result["compute"]
    assert comp["training_steps"] == 2 + 6 + 6  # the scripted candidate never trained
    assert comp["all_models_same_budget"]["steps"] == 4 * 6  # 4 ranked models x 6 steps
    assert comp["fraction_of_all"] == pytest.approx(14 / 24)
    split = result["split"]
    assert len(split["train"]) == 2 and len(split["val"]) == 1
    assert not set(split["train"]) & set(split["val"])
    for name in ("report.md", "curves.png", "selection.json"):
        assert (out / name).stat().st_size > 0
    assert winner in (out / "report.md").read_text()
    # the winner's weights: a plain state dict that the entry's network (head replaced) loads
    state = load_torch_file(out / "winner" / "model.pt", "winner")
    (entry,) = [e for e in load_bank(bank) if e.name == winner]
    model, _ = load_model(entry)
    replace_head(model, 5, 1, (32, 32, 8), seed=0)
    model.load_state_dict(state)
    assert state.keys() == model.state_dict().keys()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_nnunet_winner_checkpoint_loads_in_nnunet(tmp_path):
    """A select of the nnU-Net entry alone, with a time budget, writes checkpoint_final.pth
    that nnU-Net's own ``load_pretrained_weights`` reads into the network of its plans."""
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from test_bank_nnunet import make_results_folder

    nn = make_results_folder(
        tmp_path / "nn",
        config="3d_fullres",
        dims=3,
        patch=(8, 32, 32),
        spacing=(8.0, 4.0, 4.0),
        scheme="ZScoreNormalization",
        labels=5,
        reader="SimpleITKIO",
        seed=1,
    )
    entry = {"name": "nnunet_mr", "nnunet": str(nn)}
    cache = tmp_path / "cache"
    alone = tmp_path / "alone.yaml"
    alone.write_text(yaml.safe_dump({"models": [entry]}))
    out = tmp_path / "out"
    args = list(ARGS)
    args[args.index("--top") + 1], args[args.index("--budget") + 1] = "1", "2s"  # a time
    assert (
        main(["select", "--bank", str(alone), *args, "--cache-dir", str(cache), "--out", str(out)])
        == 0
    )
    (budget,) = (cache / "select").glob("time-budget-*.json")  # measured once, kept
    plan = json.loads((out / "selection.json").read_text())["plan"]
    assert plan["budget"] == "2 s"
    assert plan["total_steps"] == json.loads(budget.read_text())["steps"] >= 1
    ckpt = load_torch_file(out / "winner" / "checkpoint_final.pth", "nnU-Net checkpoint")
    init = ckpt["init_args"]
    assert init["dataset_json"]["labels"]["liver"] == 1
    cm = PlansManager(init["plans"]).get_configuration(init["configuration"])
    net = get_network_from_plans(
        cm.network_arch_class_name,
        cm.network_arch_init_kwargs,
        cm.network_arch_init_kwargs_req_import,
        1,
        5,
        deep_supervision=True,
    )
    load_pretrained_weights(net, str(out / "winner" / "checkpoint_final.pth"))
    mine = load_torch_file(out / "winner" / "model.pt", "winner")
    for key, value in net.state_dict().items():
        if ".seg_layers." not in key:
            assert torch.equal(value, mine[key]), key


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_killed_select_resumes_at_its_step(selected, tmp_path, capsys):
    bank, out, cache, result = selected
    fresh = tmp_path / "cache"
    fresh.mkdir()
    for item in cache.iterdir():  # the ranking's features, not the candidates' runs
        if item.name != "select":
            os.symlink(item, fresh / item.name)
    cmd = [
        sys.executable,
        "-m",
        "ccfv.cli",
        "select",
        "--bank",
        str(bank),
        *ARGS,
        "--cache-dir",
        str(fresh),
        "--out",
        str(tmp_path / "killed"),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    states = []
    try:
        deadline = time.monotonic() + 600
        while not states and proc.poll() is None and time.monotonic() < deadline:
            states = list((fresh / "select").glob("*/state.pt"))
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len(states) == 1, "killed after the first saved state"
    saved = load_torch_file(states[0], "state")["step"]
    name = states[0].parent.name.rsplit("-", 1)[0]
    assert name == next(iter(result["candidates"]))  # the first candidate trains first
    capsys.readouterr()
    assert (
        main(
            [
                "select",
                "--bank",
                str(bank),
                *ARGS,
                "--cache-dir",
                str(fresh),
                "--out",
                str(tmp_path / "resumed"),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    if saved < 2:  # killed inside rung 1: the rerun continues at the saved step
        assert f"{name}: resuming rung 1 at step {saved} of 2" in printed
    again = json.loads((tmp_path / "resumed" / "selection.json").read_text())
    for n, c in result["candidates"].items():  # the same run as one never killed
        assert again["candidates"][n]["rungs"] == c["rungs"], n
        assert again["candidates"][n]["curve"] == c["curve"], n
    assert again["winner"]["model"] == result["winner"]["model"]
    assert again["winner"]["val_dice"] == result["winner"]["val_dice"]
    a = load_torch_file(out / "winner" / "model.pt", "a")
    b = load_torch_file(tmp_path / "resumed" / "winner" / "model.pt", "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _one_case_data(tmp_path):
    folder = tmp_path / "one"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    meta = json.loads((DATA / "dataset.json").read_text())
    first = meta["training"][0]
    for key, sub in (("image", "imagesTr"), ("label", "labelsTr")):
        os.symlink(DATA / first[key], folder / sub / (DATA / first[key]).name)
    meta["training"], meta["numTraining"] = [first], 1
    (folder / "dataset.json").write_text(json.dumps(meta))
    return folder


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--top", "0"], "--top 0"),
        (["--budget", "soon"], "--budget soon"),
        (["--budget", "5"], "needs at least 8 steps"),
        (["--device", "cuda:0"], "--device cuda:0"),
        (["--val-fraction", "1.5"], "--val-fraction 1.5"),
        (["--lr", "0"], "--lr 0"),
        (["--group", "^(patient\\d+)"], "does not match case id"),
    ],
)
def test_bad_inputs_refused_before_any_training(selected, tmp_path, capsys, extra, message):
    bank = selected[0]
    cache = tmp_path / "cache"
    assert (
        main(
            [
                "select",
                "--bank",
                str(bank),
                *ARGS,
                *extra,
                "--cache-dir",
                str(cache),
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not any(cache.glob("*")) if cache.exists() else True  # nothing ranked or trained


def test_one_patient_refused(selected, tmp_path, capsys):
    data = _one_case_data(tmp_path)
    args = [a if a != str(DATA) else str(data) for a in ARGS]
    del args[args.index("--cases") : args.index("--cases") + 2]
    assert (
        main(
            [
                "select",
                "--bank",
                str(selected[0]),
                *args,
                "--cache-dir",
                str(tmp_path / "cache"),
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    assert "at least 2" in capsys.readouterr().err
