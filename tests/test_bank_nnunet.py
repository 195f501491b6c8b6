"""nnU-Net v2 trained-model folders as bank entries (``nnunet:``), checked against nnU-Net itself.

The folders are genuine nnU-Net v2 results folders: plans.json / dataset.json in nnU-Net's
format (read by its PlansManager), the network built by nnU-Net's ``get_network_from_plans``
and the checkpoint saved in the dict format of ``nnUNetTrainer.save_checkpoint``.
"""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import yaml
from conftest import SHARED

pytest.importorskip("nnunetv2")

from conftest import NO_TORCHVISION  # noqa: E402
from monai.networks.nets import UNet  # noqa: E402
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor  # noqa: E402
from nnunetv2.preprocessing.preprocessors.default_preprocessor import (  # noqa: E402
    DefaultPreprocessor,
)
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans  # noqa: E402
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager  # noqa: E402

from ccfv.bank import load_model, parse_bank, resolve_layers  # noqa: E402
from ccfv.bank.kinds.nnunet import make_nnunet_preprocess  # noqa: E402
from ccfv.data import find_cases, load_case  # noqa: E402
from ccfv.errors import UserError  # noqa: E402
from ccfv.rank import rank  # noqa: E402

DATA = SHARED / "data"
ARCH = "dynamic_network_architectures.architectures.unet.PlainConvUNet"


def _arch(dims, features=(4, 8, 16)):
    n = len(features)
    conv = f"torch.nn.modules.conv.Conv{dims}d"
    norm = f"torch.nn.modules.instancenorm.InstanceNorm{dims}d"
    return {
        "network_class_name": ARCH,
        "arch_kwargs": {
            "n_stages": n,
            "features_per_stage": list(features),
            "conv_op": conv,
            "kernel_sizes": [[3] * dims] * n,
            "strides": [[1] * dims] + [[2] * dims] * (n - 1),
            "n_conv_per_stage": [1] * n,
            "n_conv_per_stage_decoder": [1] * (n - 1),
            "conv_bias": True,
            "norm_op": norm,
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def _resampling(order):
    return {"is_seg": False, "order": order, "order_z": 0, "force_separate_z": None}


def make_results_folder(
    root,
    *,
    config,
    dims,
    patch,
    spacing,
    scheme,
    labels,
    reader,
    transpose=(0, 1, 2),
    use_mask=False,
    seed=0,
):
    """An nnU-Net v2 results folder Dataset001_Test/nnUNetTrainer__nnUNetPlans__<config>."""
    folder = root / "Dataset001_Test" / f"nnUNetTrainer__nnUNetPlans__{config}"
    (folder / "fold_0").mkdir(parents=True)
    plans = {
        "dataset_name": "Dataset001_Test",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "original_median_shape_after_transp": [64, 64, 64],
        "image_reader_writer": reader,
        "transpose_forward": list(transpose),
        "transpose_backward": [int(i) for i in np.argsort(transpose)],
        "configurations": {
            config: {
                "data_identifier": f"nnUNetPlans_{config}",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": list(patch),
                "median_image_size_in_voxels": list(patch),
                "spacing": list(spacing),
                "normalization_schemes": [scheme],
                "use_mask_for_norm": [use_mask],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": _resampling(3),
                "resampling_fn_seg_kwargs": {**_resampling(1), "is_seg": True},
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": _resampling(1),
                "architecture": _arch(dims),
                "batch_dice": True,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {
                "max": 400.0,
                "mean": 80.0,
                "median": 90.0,
                "min": -500.0,
                "percentile_00_5": -100.0,
                "percentile_99_5": 250.0,
                "std": 60.0,
            }
        },
    }
    dataset = {
        "channel_names": {"0": "CT" if scheme == "CTNormalization" else "MRI"},
        "labels": {"background": 0, **{f"c{k}": k for k in range(1, labels)}},
        "numTraining": 2,
        "file_ending": ".nii.gz" if dims == 3 else ".png",
    }
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    pm = PlansManager(plans)
    cm = pm.get_configuration(config)
    torch.manual_seed(seed)
    network = get_network_from_plans(
        cm.network_arch_class_name,
        cm.network_arch_init_kwargs,
        cm.network_arch_init_kwargs_req_import,
        1,
        labels,
        deep_supervision=True,
    )
    torch.save(
        {  # as nnUNetTrainer.save_checkpoint writes it
            "network_weights": network.state_dict(),
            "optimizer_state": {},
            "grad_scaler_state": None,
            "logging": {},
            "_best_ema": None,
            "current_epoch": 1,
            "init_args": {
                "plans": plans,
                "configuration": config,
                "fold": 0,
                "dataset_json": dataset,
                "device": torch.device("cpu"),
            },
            "trainer_name": "nnUNetTrainer",
            "inference_allowed_mirroring_axes": tuple(range(dims)),
        },
        folder / "fold_0" / "checkpoint_final.pth",
    )
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("nnunet_results")
    return {
        "ct3d": make_results_folder(
            root / "ct",
            config="3d_fullres",
            dims=3,
            patch=(16, 32, 32),
            spacing=(6.0, 2.0, 2.0),
            scheme="CTNormalization",
            labels=2,
            reader="SimpleITKIO",
            transpose=(0, 2, 1),
        ),
        "mr3d": make_results_folder(
            root / "mr",
            config="3d_fullres",
            dims=3,
            patch=(8, 32, 32),
            spacing=(8.0, 4.0, 4.0),
            scheme="ZScoreNormalization",
            labels=5,
            reader="SimpleITKIO",
            seed=1,
        ),
        "2d": make_results_folder(
            root / "2d",
            config="2d",
            dims=2,
            patch=(64, 64),
            spacing=(2.0, 2.0),
            scheme="ZScoreNormalization",
            labels=2,
            reader="NaturalImage2DIO",
            seed=2,
        ),
    }


def entry_of(folder, **extra):
    return parse_bank({"models": [{"name": "nn", "nnunet": str(folder), **extra}]}, ".")[0]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("which", ["ct3d", "2d"])
def test_logits_match_nnunet_predictor(folders, which):
    folder = folders[which]
    entry = entry_of(folder)
    model, report = load_model(entry)
    assert report.fraction_matched == 1.0 and not report.missing
    ckpt = torch.load(folder / "fold_0" / "checkpoint_final.pth", weights_only=True)
    plans = json.loads((folder / "plans.json").read_text())
    dataset = json.loads((folder / "dataset.json").read_text())
    pm = PlansManager(plans)
    cm = pm.get_configuration(entry.args["configuration"])
    net = get_network_from_plans(
        cm.network_arch_class_name,
        cm.network_arch_init_kwargs,
        cm.network_arch_init_kwargs_req_import,
        1,
        pm.get_label_manager(dataset).num_segmentation_heads,
        allow_init=False,
        deep_supervision=False,
    )
    # use_gaussian=False: nnU-Net 2.8 accumulates windows in float16, and the Gaussian's
    # corner weights underflow there; without it its output is the network's, rounded to fp16
    predictor = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=False,
        use_mirroring=False,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        verbose=False,
        verbose_preprocessing=False,
        allow_tqdm=False,
    )
    predictor.manual_initialization(
        net,
        pm,
        cm,
        [ckpt["network_weights"]],
        dataset,
        ckpt["trainer_name"],
        ckpt["inference_allowed_mirroring_axes"],
    )
    patch = list(cm.patch_size)
    torch.manual_seed(0)
    x = torch.randn(1, *([1] if len(patch) == 2 else []), *patch)  # (C, [1,] *patch)
    theirs = predictor.predict_logits_from_preprocessed_data(x).float()
    # the forward nnU-Net runs on each window, in float32 (network loaded by the predictor)
    window = x[None] if len(patch) == 3 else x.transpose(0, 1)  # 2D: slices as a batch
    with torch.no_grad():
        theirs_fp32 = predictor._internal_maybe_mirror_and_predict(window)
        ours = model(window)
    torch.testing.assert_close(ours, theirs_fp32, atol=1e-5, rtol=1e-5)
    ours = ours[0] if len(patch) == 3 else ours.transpose(0, 1)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, atol=2e-3, rtol=2e-3)  # float16 rounding
    layers = [s.key for s in resolve_layers(model, entry)]
    # 3 encoder stages -> 2 decoder stages; the last stage's output is the head's input
    assert layers == ["decoder.stages.0:output", "decoder.seg_layers.1:input"]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_preprocessing_equals_nnunet_run_case(folders):
    folder = folders["ct3d"]
    entry = entry_of(folder)
    dataset = find_cases(DATA / "spleen_ct_crop_3d")
    case = load_case(dataset.cases[0], dataset.labels)
    ours, affine = make_nnunet_preprocess(entry, 3)(case.image, case.affine)
    pm = PlansManager(str(folder / "plans.json"))
    cm = pm.get_configuration("3d_fullres")
    theirs, seg, _ = DefaultPreprocessor(verbose=False).run_case(
        [str(dataset.cases[0].images[0])],
        str(dataset.cases[0].label),
        pm,
        cm,
        str(folder / "dataset.json"),
    )
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
    # geometry: the label read at the preprocessed voxels' world positions is nnU-Net's
    # resampled label (up to its linear interpolation of the one-hot at the borders)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in ours.shape[1:]], indexing="ij"), -1)
    idx = grid.reshape(-1, 3) @ np.linalg.solve(case.affine, affine)[:3, :3].T
    idx += np.linalg.solve(case.affine, affine)[:3, 3]
    idx = np.clip(np.rint(idx).astype(int), 0, np.array(case.label.shape) - 1)
    ours_label = case.label[tuple(idx.T)].reshape(ours.shape[1:])
    theirs_label = np.maximum(seg[0], 0)
    dice = (
        2
        * ((ours_label == 1) & (theirs_label == 1)).sum()
        / ((ours_label == 1).sum() + (theirs_label == 1).sum())
    )
    assert dice > 0.9


def _bank(path, models):
    path.write_text(yaml.safe_dump({"models": models}, sort_keys=False))
    return path


def _rank_every_entry(bank, data, cases, tmp_path, names):
    """Rank the bank on ``cases`` cases of ``data``: every entry scores, with a finite CC-FV."""
    result = rank(
        bank,
        data,
        cases=cases,
        counts=(20, 40, 80),
        bootstrap=0,
        cache_dir=tmp_path / "cache",
        progress=False,
        log=lambda *_: None,
    )
    assert not result.failures, result.failures
    assert set(result.scores) == names
    assert all(np.isfinite(v["ccfv"]) for v in result.scores.values())
    return result


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_rank_mixes_monai_nnunet_and_bundle_3d(tmp_path, folders):
    """One bank of the three formats: a YAML MONAI entry, an nnU-Net folder, a MONAI bundle."""
    from test_bank_bundle import inference_config, make_bundle

    bundle = make_bundle(
        tmp_path / "bundle", config=inference_config(pixdim=(4.0, 4.0, 8.0), roi=(32, 32, 16))
    )
    bank = _bank(
        tmp_path / "bank.yaml",
        [
            {
                "name": "monai_unet",
                "network": "monai.networks.nets.UNet",
                "args": {
                    "spatial_dims": 3,
                    "in_channels": 1,
                    "out_channels": 5,
                    "channels": [8, 16, 32],
                    "strides": [2, 2],
                },
                "preprocessing": {
                    "intensity": {"kind": "zscore"},
                    "spacing": [4.0, 4.0, 8.0],
                    "roi": [32, 32, 8],
                },
            },
            {"name": "nnunet_mr", "nnunet": str(folders["mr3d"])},
            {"name": "bundle_unet", "bundle": str(bundle)},
        ],
    )
    result = _rank_every_entry(
        bank,
        DATA / "chaos_t2spir_abdomen3d",
        2,
        tmp_path,
        {"monai_unet", "nnunet_mr", "bundle_unet"},
    )
    assert "decoder.seg_layers.1:input" in result.details["per_model"]["nnunet_mr"]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_rank_mixes_monai_nnunet_and_bundle_2d(tmp_path, folders):
    from test_bank_bundle import inference_config, make_bundle

    net = {
        "spatial_dims": 2,
        "in_channels": 1,
        "out_channels": 2,
        "channels": [8, 16, 32],
        "strides": [2, 2],
        "num_res_units": 1,
    }
    config = inference_config(net={"_target_": "UNet", **net}, pixdim=(2.0, 2.0), roi=(64, 64))
    for transform in config["preprocessing"]["transforms"]:  # a 2D picture bundle
        if transform["_target_"] == "Orientationd":
            transform["axcodes"] = "RA"
        if transform["_target_"] == "ScaleIntensityRanged":
            transform.update(a_min=0, a_max=255)
    torch.manual_seed(0)
    bundle = make_bundle(tmp_path / "bundle2d", config=config, state=UNet(**net).state_dict())
    bank = _bank(
        tmp_path / "bank.yaml",
        [
            {
                "name": "monai_unet",
                "network": "monai.networks.nets.UNet",
                "args": {
                    "spatial_dims": 2,
                    "in_channels": 1,
                    "out_channels": 2,
                    "channels": [8, 16, 32],
                    "strides": [2, 2],
                },
                "preprocessing": {
                    "intensity": {"kind": "zscore"},
                    "spacing": [2.0, 2.0],
                    "roi": [64, 64],
                },
            },
            {"name": "nnunet_2d", "nnunet": str(folders["2d"])},
            {"name": "bundle_2d", "bundle": str(bundle)},
        ],
    )
    _rank_every_entry(
        bank, DATA / "hc18_fetal_head", 3, tmp_path, {"monai_unet", "nnunet_2d", "bundle_2d"}
    )


def test_2d_preprocess_affine_maps_to_the_same_pixels(folders):
    """2D: output pixel centres mapped back through the affine land on nnU-Net's grid."""
    entry = entry_of(folders["2d"])
    image = np.arange(40 * 60, dtype=np.float32).reshape(1, 40, 60) + 1.0
    out, affine = make_nnunet_preprocess(entry, 2)(image, np.eye(4))
    assert out.shape == (1, 20, 30)
    np.testing.assert_allclose(affine[:2, :2], np.diag([2.0, 2.0]))
    np.testing.assert_allclose(affine[:2, 3], [0.5, 0.5])


def test_cropped_border_is_padded_back_with_zeros(folders):
    """nnU-Net crops the zero border; inside the crop ccfv's image is run_case_npy's output."""
    folder = folders["mr3d"]
    entry = entry_of(folder)
    rng = np.random.default_rng(0)
    image = np.zeros((1, 40, 44, 12), np.float32)
    image[:, 6:34, 5:41, 2:10] = rng.normal(100, 20, (1, 28, 36, 8))
    affine = np.diag([2.0, 2.0, 4.0, 1.0])
    affine[:3, 3] = [-30.0, 12.0, 5.0]
    ours, out_affine = make_nnunet_preprocess(entry, 3)(image, affine)
    pm = PlansManager(str(folder / "plans.json"))
    theirs, _, props = DefaultPreprocessor(verbose=False).run_case_npy(
        image.transpose(0, 3, 2, 1),
        None,
        {"spacing": [4.0, 2.0, 2.0]},
        pm,
        pm.get_configuration("3d_fullres"),
        json.loads((folder / "dataset.json").read_text()),
    )
    # the crop's first output voxel lies (scale 2 on every axis) at file voxel first + 0.5:
    # the affine must put it at an integer voxel of ccfv's padded image. ccfv's output keeps
    # nnU-Net's axis order (the network's), its affine maps it to the world.
    first = np.array([6, 5, 2]) + 0.5  # ccfv (i, j, k) of the first non-zero voxel, + 0.5
    start = np.linalg.solve(out_affine, affine @ np.append(first, 1.0))[:3]
    np.testing.assert_allclose(start, np.rint(start), atol=1e-9)
    start = np.rint(start).astype(int)  # output axes are nnU-Net's (z, y, x), as its network's
    assert np.all(start > 0)
    ours_reader = ours
    inner = tuple(slice(s, s + n) for s, n in zip(start, theirs.shape[1:]))
    np.testing.assert_allclose(ours_reader[(slice(None), *inner)], theirs, atol=1e-6)
    assert np.abs(ours_reader).sum() == pytest.approx(np.abs(theirs).sum(), rel=1e-5)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_bad_inputs(tmp_path, folders):
    folder = folders["ct3d"]
    with pytest.raises(UserError, match=r"plans\.json does not exist"):
        (tmp_path / "empty__x__3d_fullres").mkdir()
        entry_of(tmp_path / "empty__x__3d_fullres")
    with pytest.raises(UserError, match=r"fold_3 does not exist.*found: fold_0"):
        entry_of(folder, fold=3)
    with pytest.raises(UserError, match=r"has no configuration '3d_lowres'.*3d_fullres"):
        entry_of(folder, configuration="3d_lowres")
    with pytest.raises(UserError, match=r"checkpoint_best\.pth does not exist"):
        entry_of(folder, checkpoint="checkpoint_best.pth")
    with pytest.raises(UserError, match=r"unknown key 'intensity'"):
        entry_of(folder, preprocessing={"intensity": "ct"})
    # a checkpoint of other plans (the 5-class MR folder) in this folder
    other = folders["mr3d"] / "fold_0" / "checkpoint_final.pth"
    (folder / "fold_0" / "checkpoint_mr.pth").write_bytes(other.read_bytes())
    with pytest.raises(
        UserError,
        match=r"checkpoint_mr\.pth does not fit the network.*"
        r"of another shape",
    ):
        load_model(entry_of(folder, checkpoint="checkpoint_mr.pth"))
    with pytest.raises(UserError, match=r"is 3D but the images are 2D"):
        make_nnunet_preprocess(entry_of(folder), 2)
    # nnunetv2 missing
    code = textwrap.dedent(f"""
        import sys
        sys.modules["nnunetv2"] = None
        from ccfv.bank import parse_bank, load_model
        from ccfv.errors import UserError
        e = parse_bank({{"models": [{{"name": "nn", "nnunet": {str(folder)!r}}}]}}, ".")[0]
        try:
            load_model(e)
        except UserError as err:
            print(err)
        """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install ccfv[nnunet]" in done.stdout


def test_nnunet_path_never_imports_torchvision_or_timm(folders):
    code = textwrap.dedent(f"""
        import sys, warnings
        warnings.simplefilter("ignore")
        import numpy as np, torch
        import ccfv.bank as B
        from ccfv.bank.kinds.nnunet import make_nnunet_preprocess
        raw = {{"name": "nn", "nnunet": {str(folders["2d"])!r}}}
        e = B.parse_bank({{"models": [raw]}}, ".")[0]
        m = B.build_model(e)
        with B.hooked(m, B.resolve_layers(m, e)):
            m(torch.zeros(1, 1, 64, 64))
        make_nnunet_preprocess(e, 2)(np.ones((1, 20, 20), np.float32), np.eye(4))
        print(sorted(k for k in sys.modules if k.split(".")[0] in ("torchvision", "timm")))
        """)
    done = subprocess.run(
        [sys.executable, "-c", NO_TORCHVISION + code], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "[]"
