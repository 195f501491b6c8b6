"""MONAI bundle entries (``bundle: folder``): network, weights, preprocessing, window, errors.

The bundle folders are built here, offline, after the public ``spleen_ct_segmentation`` bundle
(configs/metadata.json, configs/inference.json, models/model.pt), with a small UNet.
"""

import json

import numpy as np
import pytest
import torch
import yaml
from conftest import SHARED
from monai.bundle import ConfigParser
from monai.networks.nets import UNet

from ccfv.bank import load_bank, load_model, resolve_layers
from ccfv.bank.kinds.bundle import make_bundle_preprocess
from ccfv.data import find_cases, load_case
from ccfv.errors import UserError
from ccfv.rank import rank

DATA = SHARED / "data"
SPLEEN = DATA / "spleen_ct_crop_3d"
NET = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [4, 8, 16],
    "strides": [2, 2],
    "num_res_units": 1,
    "norm": "batch",
}

METADATA = {
    "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/"
    "0.8.1/meta_schema_20220324.json",
    "version": "0.1.0",
    "monai_version": "1.3.0",
    "pytorch_version": "2.0.0",
    "name": "Spleen CT segmentation (test copy)",
    "task": "Spleen segmentation",
    "network_data_format": {
        "inputs": {
            "image": {
                "type": "image",
                "format": "hounsfield",
                "modality": "CT",
                "num_channels": 1,
                "spatial_shape": [32, 32, 32],
                "dtype": "float32",
                "value_range": [0, 1],
                "is_patch_data": True,
                "channel_def": {"0": "image"},
            }
        },
        "outputs": {
            "pred": {
                "type": "image",
                "format": "segmentation",
                "num_channels": 2,
                "spatial_shape": [32, 32, 32],
                "dtype": "float32",
                "value_range": [0, 1],
                "is_patch_data": True,
                "channel_def": {"0": "background", "1": "spleen"},
            }
        },
    },
}


def inference_config(net=None, pixdim=(1.5, 1.5, 2.0), roi=(32, 32, 32)):
    """inference.json after spleen_ct_segmentation's, with a small network."""
    return {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "/workspace/data/Task09_Spleen",
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/imagesTs/*.nii.gz')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": net or {"_target_": "UNet", **NET},
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                {
                    "_target_": "Spacingd",
                    "keys": "image",
                    "pixdim": list(pixdim),
                    "mode": "bilinear",
                },
                {
                    "_target_": "ScaleIntensityRanged",
                    "keys": "image",
                    "a_min": -57,
                    "a_max": 164,
                    "b_min": 0,
                    "b_max": 1,
                    "clip": True,
                },
                {"_target_": "EnsureTyped", "keys": "image"},
            ],
        },
        "dataset": {
            "_target_": "Dataset",
            "data": "$[{'image': i} for i in @datalist]",
            "transform": "@preprocessing",
        },
        "dataloader": {
            "_target_": "DataLoader",
            "dataset": "@dataset",
            "batch_size": 1,
            "shuffle": False,
            "num_workers": 0,
        },
        "inferer": {
            "_target_": "SlidingWindowInferer",
            "roi_size": list(roi),
            "sw_batch_size": 4,
            "overlap": 0.5,
        },
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            ],
        },
    }


def make_bundle(folder, *, config=None, weights="pt", state=None, seed=0):
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "configs" / "metadata.json").write_text(json.dumps(METADATA, indent=1))
    if config is not False:
        text = json.dumps(config or inference_config(), indent=1)
        (folder / "configs" / "inference.json").write_text(text)
    if state is None:
        torch.manual_seed(seed)
        model = UNet(**NET)
        with torch.no_grad():  # non-trivial BatchNorm statistics
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm3d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 1.5)
        state = model.state_dict()
    if weights == "pt":
        torch.save(state, folder / "models" / "model.pt")
    elif weights == "ts":
        torch.jit.save(torch.jit.script(UNet(**NET).eval()), str(folder / "models" / "model.ts"))
    return folder


def bank_file(path, models):
    path.write_text(yaml.safe_dump({"models": models}, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def spleen_bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("bundles") / "spleen_ct_segmentation")


@pytest.fixture(scope="module")
def entry(spleen_bundle, tmp_path_factory):
    bank = bank_file(
        tmp_path_factory.mktemp("bank") / "bank.yaml",
        [{"name": "spleen", "bundle": str(spleen_bundle)}],
    )
    (e,) = load_bank(bank)
    return e


def bundle_parser(folder):
    parser = ConfigParser()
    parser.read_meta(str(folder / "configs" / "metadata.json"))
    parser.read_config(str(folder / "configs" / "inference.json"))
    parser["bundle_root"] = str(folder)
    return parser


def test_entry_takes_window_from_inferer(entry, spleen_bundle):
    assert entry.kind == "bundle" and entry.bundle == spleen_bundle.resolve()
    pre = entry.preprocessing
    assert pre.roi == (32, 32, 32) and pre.overlap == 0.5 and pre.sw_batch_size == 4
    assert pre.in_channels == 1
    model, report = load_model(entry)
    assert not model.training and report.fraction_matched == 1.0
    layers = resolve_layers(model, entry)  # layers: auto knows MONAI's UNet
    assert len(layers) >= 2


def test_preprocessing_equals_bundle_transforms(entry, spleen_bundle):
    """ccfv's (already loaded array + affine) == MONAI's preprocessing of the file."""
    dataset = find_cases(SPLEEN)
    case = load_case(dataset.cases[0], dataset.labels)
    image, affine = make_bundle_preprocess(entry, 3)(case.image, case.affine)

    compose = bundle_parser(spleen_bundle).get_parsed_content("preprocessing")
    ref = compose({"image": str(dataset.cases[0].images[0])})["image"]
    assert image.shape == tuple(ref.shape)
    assert image.shape[1:] != case.image.shape[1:]  # it was resampled
    np.testing.assert_allclose(image, ref.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(affine, ref.affine.numpy(), rtol=0, atol=1e-6)
    assert 0.0 <= image.min() and image.max() <= 1.0


def test_logits_equal_bundle_network_and_inferer(entry, spleen_bundle):
    from monai.inferers import SlidingWindowInferer

    dataset = find_cases(SPLEEN)
    case = load_case(dataset.cases[0], dataset.labels)
    image, _ = make_bundle_preprocess(entry, 3)(case.image, case.affine)
    x = torch.as_tensor(image)[None]

    parser = bundle_parser(spleen_bundle)
    net = parser.get_parsed_content("network")
    net.load_state_dict(torch.load(spleen_bundle / "models" / "model.pt", weights_only=True))
    net.eval()
    with torch.no_grad():
        ref = parser.get_parsed_content("inferer")(x, net)

    model, _ = load_model(entry)
    pre = entry.preprocessing
    inferer = SlidingWindowInferer(
        roi_size=pre.roi, overlap=pre.overlap, sw_batch_size=pre.sw_batch_size
    )
    with torch.no_grad():
        got = inferer(x, model)
    assert got.shape == ref.shape == (1, 2, *image.shape[1:])
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=0, atol=1e-5)


def test_rank_mixes_yaml_entry_and_bundle(tmp_path):
    make_bundle(
        tmp_path / "mri_bundle", config=inference_config(pixdim=(3.0, 3.0, 6.0), roi=(48, 48, 16))
    )
    bank = bank_file(
        tmp_path / "bank.yaml",
        [
            {
                "name": "yaml_unet",
                "network": "monai.networks.nets.UNet",
                "args": {k: v for k, v in NET.items()},
                "seed": 1,
                "layers": "auto",
                "preprocessing": {
                    "orientation": "RAS",
                    "spacing": [3.0, 3.0, 6.0],
                    "intensity": {"kind": "zscore"},
                    "roi": [48, 48, 16],
                },
            },
            {"name": "bundle_unet", "bundle": "mri_bundle"},
        ],
    )
    result = rank(
        bank,
        DATA / "chaos_t2spir_abdomen3d",
        methods=["ccfv"],
        cases=2,
        seed=0,
        cache_dir=tmp_path / "cache",
        bootstrap=0,
        progress=False,
        log=lambda *_: None,
    )
    assert not result.failures
    assert set(result.ranking()) == {"yaml_unet", "bundle_unet"}
    for name in ("yaml_unet", "bundle_unet"):
        assert np.isfinite(result.scores[name]["ccfv"])
    assert "models/model.pt" in result.details["per_model"]["bundle_unet"]


# ------------------------------------------------------------------------------------------------
# bad input: one line naming the file and the fix


def _load_error(tmp_path, folder):
    bank = bank_file(tmp_path / "bank.yaml", [{"name": "b", "bundle": str(folder)}])
    with pytest.raises(UserError) as info:
        load_model(load_bank(bank)[0])
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bundle_without_network_def(tmp_path):
    config = inference_config()
    del config["network_def"]
    config["network"] = "$None"
    folder = make_bundle(tmp_path / "b", config=config)
    message = _load_error(tmp_path, folder)
    assert "inference.json" in message and "no 'network_def'" in message


def test_torchscript_only_bundle(tmp_path):
    folder = make_bundle(tmp_path / "b", weights="ts")
    message = _load_error(tmp_path, folder)
    assert "models/model.ts" in message and "TorchScript" in message
    assert "hook" in message and "models/model.pt" in message


def test_bundle_without_inference_config(tmp_path):
    folder = make_bundle(tmp_path / "b", config=False)
    message = _load_error(tmp_path, folder)
    assert str(folder) in message and "configs/inference.json" in message


def test_weights_that_do_not_fit(tmp_path):
    other = UNet(**{**NET, "channels": [4, 8, 32]}).state_dict()
    folder = make_bundle(tmp_path / "b", state=other)
    message = _load_error(tmp_path, folder)
    assert "model.pt" in message and "do not fit" in message and "shape mismatched" in message


def test_auto_layers_unknown_network_lists_modules(tmp_path):
    net = {"_target_": "HighResNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2}
    folder = make_bundle(
        tmp_path / "b",
        config=inference_config(net=net, roi=(16, 16, 16)),
        state=__import__("monai")
        .networks.nets.HighResNet(spatial_dims=3, in_channels=1, out_channels=2)
        .state_dict(),
    )
    (entry,) = load_bank(bank_file(tmp_path / "bank.yaml", [{"name": "h", "bundle": str(folder)}]))
    model, _ = load_model(entry)
    with pytest.raises(UserError) as info:
        resolve_layers(model, entry)
    message = str(info.value)
    assert "\n" not in message and "ccfv layers" in message and "HighResNet" in message
    assert "blocks.0 [1, 16, 16, 16, 16]" in message  # module names with output shapes


def test_bundle_entry_rejects_other_keys(tmp_path, spleen_bundle):
    bank = bank_file(
        tmp_path / "bank.yaml", [{"name": "b", "bundle": str(spleen_bundle), "checkpoint": "x.pt"}]
    )
    with pytest.raises(UserError, match="'checkpoint' is not used with 'bundle'"):
        load_bank(bank)
    bank = bank_file(
        tmp_path / "bank.yaml",
        [{"name": "b", "bundle": str(spleen_bundle), "preprocessing": {"spacing": [1, 1, 1]}}],
    )
    with pytest.raises(UserError, match="unknown key 'spacing'"):
        load_bank(bank)
    bank = bank_file(
        tmp_path / "bank.yaml",
        [{"name": "b", "bundle": str(spleen_bundle), "preprocessing": {"roi": [16, 16, 8]}}],
    )
    pre = load_bank(bank)[0].preprocessing  # the entry overrides the inferer's window
    assert pre.roi == (16, 16, 8) and pre.overlap == 0.5 and pre.sw_batch_size == 4
