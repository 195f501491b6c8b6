"""Geometry you can trust: every planned voxel is read from its own anatomy, through any
preprocessing a bank entry can declare.

Synthetic volumes hold known anatomy (boxes touching the volume's faces, a sphere) on grids
whose affines are diagonal, flipped, rotated about one axis, oblique in 3D (random orthonormal
directions rounded to float32, as a NIfTI header stores them), anisotropic (8 mm slices), and
the oblique short-axis cardiac geometry (256 x 256 x 15, 1.25 x 1.25 x 8 mm, axis codes P, S, R).
The label is turned into one indicator channel per class, sent through the model's actual
preprocessing function (its own keys, a bundle's transforms, nnU-Net's preprocessing), and read
back (linear interpolation) at the planned voxels mapped through the two affines, exactly as
``rank`` maps them: the strongest channel must be the planned class at >= 99% of the interior
voxels (those whose whole 3x3(x3) neighbourhood has their class), and no planned voxel may be
lost unless the transforms crop it.
"""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from monai.data import MetaTensor
from monai.transforms import Spacing
from scipy.ndimage import map_coordinates, maximum_filter, minimum_filter
from scipy.spatial.transform import Rotation

from ccfv.bank import Intensity, Preprocessing, load_bank, make_preprocess
from ccfv.bank.preprocess import orthonormal_affine
from ccfv.cli import main
from ccfv.errors import UserError
from ccfv.extract import dropped_voxels, make_plan
from ccfv.extract.geometry import spacing_warnings
from ccfv.extract.plan import grid_mapping

NONE = Intensity(kind="none")


# --- known anatomy ------------------------------------------------------------------------------


def anatomy(shape):
    """Class 1: a slab on the first face of axis 0; class 2: a box in the far corner of axes
    0 and 1 (touching both faces) through the whole last axis (touching its two faces);
    class 3: a ball in the middle; 0 elsewhere."""
    label = np.zeros(shape, np.int64)
    n = np.asarray(shape)
    label[: max(2, n[0] // 4)] = 1
    far = tuple(slice(int(m * 0.6), None) for m in n[:2])
    label[far] = 2
    grid = np.stack(np.meshgrid(*[np.arange(m) for m in shape], indexing="ij"), -1)
    centre = (n - 1) / 2.0
    scale = n / n.min()
    label[np.linalg.norm((grid - centre) / scale, axis=-1) < n.min() * 0.22] = 3
    return label


def float32(affine):
    return np.asarray(affine, dtype=np.float32).astype(np.float64)


def affine_of(directions, spacing, origin):
    nd = len(spacing)
    a = np.eye(4)
    a[:nd, :nd] = np.asarray(directions, dtype=np.float64) * np.asarray(spacing)
    a[:nd, 3] = origin
    return float32(a)


def rot_z(degrees):
    return Rotation.from_euler("z", degrees, degrees=True).as_matrix()


def cardiac_affine(seed=3):
    """Short-axis stack, nibabel axis codes P, S, R, 1.25 x 1.25 x 8 mm, ~25 degrees oblique."""
    base = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # columns: P, S, R
    tilt = Rotation.from_rotvec(
        np.deg2rad(25) * np.array([0.6, 0.5, 0.62]) / np.linalg.norm([0.6, 0.5, 0.62])
    ).as_matrix()
    return affine_of(tilt @ base, (1.25, 1.25, 8.0), (-120.0, 80.0, -40.0))


GEOMETRIES_3D = {
    "diagonal": ((40, 36, 14), affine_of(np.eye(3), (1.2, 1.0, 2.5), (3.0, -4.0, 10.0))),
    "flipped": (
        (40, 36, 14),
        affine_of(np.diag([-1.0, 1.0, -1.0]), (1.0, 1.3, 2.0), (40.0, -5.0, 30.0)),
    ),
    "rotated": ((40, 36, 14), affine_of(rot_z(30), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))),
    "oblique": (
        (40, 36, 14),
        affine_of(Rotation.random(random_state=11).as_matrix(), (1.1, 0.9, 2.2), (5.0, 7.0, -3.0)),
    ),
    "anisotropic": (
        (48, 40, 9),
        affine_of(Rotation.random(random_state=5).as_matrix(), (1.25, 1.25, 8.0), (0.0, 0.0, 0.0)),
    ),
}

GEOMETRIES_2D = {
    "diagonal": ((60, 50), affine_of(np.eye(2), (0.8, 1.1), (0.0, 0.0))),
    "flipped": ((60, 50), affine_of(np.diag([-1.0, 1.0]), (1.0, 0.7), (50.0, 0.0))),
    "rotated": ((60, 50), affine_of(rot_z(35)[:2, :2], (1.0, 1.0), (4.0, -2.0))),
}


# --- the check ------------------------------------------------------------------------------------


def onehot(label, k):
    return np.stack([(label == c).astype(np.float32) for c in range(k)])


def interior(label):
    """Voxels whose whole 3x3(x3) neighbourhood (inside the volume) has their class."""
    size = 3
    lo = minimum_filter(label, size=size, mode="nearest")
    hi = maximum_filter(label, size=size, mode="nearest")
    return (lo == label) & (hi == label)


def read_back(volume, points):
    """Linear interpolation of every channel of ``volume`` at ``points`` (P, ndim), border
    values beyond the last voxel centre (as grid_sample's border padding)."""
    return np.stack([map_coordinates(ch, points.T, order=1, mode="nearest") for ch in volume])


def through(preprocess, label, affine, k=4, layers=2, counts=(150, 300)):
    """Plan, preprocess the indicator channels, read back: per planned voxel (all layers) the
    planned class, the class read back (-1 where dropped), and whether it is interior."""
    plan = make_plan([label], ["case"], layers=layers, counts=list(counts), seed=0).cases[0]
    image, out_affine = preprocess(onehot(label, k), affine)
    assert image.shape[0] == k
    names = [f"l{i}" for i in range(layers)]
    points, keep = plan.points_inside(names, grid_mapping(affine, out_affine), image.shape[1:])
    inner = interior(label)
    planned, read, is_inner = [], [], []
    for name, idx, cls, kept in zip(names, plan.indices, plan.classes, keep):
        got = np.full(len(cls), -1)
        if kept.any():
            got[kept] = np.argmax(read_back(image, points[name]), axis=0)
        planned.append(cls)
        read.append(got)
        is_inner.append(inner[tuple(idx.T)])
    return (
        np.concatenate(planned),
        np.concatenate(read),
        np.concatenate(is_inner),
        image,
        out_affine,
    )


def assert_right_anatomy(planned, read, inner, allow_dropped=False, overall_min=0.99):
    """>= 99% of the kept interior voxels read back as their planned class, and
    ``overall_min`` of all kept voxels (boundary voxels included: a grid misplaced by half an
    output voxel reads ~96% of them right, a downsampling blurs a few percent)."""
    if not allow_dropped:
        assert np.all(read >= 0), f"{np.sum(read < 0)} planned voxels dropped without a crop"
    kept = read >= 0
    inner_kept = inner & kept
    assert inner_kept.sum() > 100
    agree = np.mean(read[inner_kept] == planned[inner_kept])
    assert agree >= 0.99, f"interior agreement {agree:.4f}"
    overall = np.mean(read[kept] == planned[kept])
    assert overall >= overall_min, f"overall agreement {overall:.4f}"
    return agree, overall


STEPS_3D = {
    "none": Preprocessing(intensity=NONE),
    "orientation RAS": Preprocessing(orientation="RAS", intensity=NONE),
    "orientation LPI": Preprocessing(orientation="LPI", intensity=NONE),
    "spacing up": Preprocessing(spacing=(0.7, 0.7, 1.1), intensity=NONE),
    "spacing down": Preprocessing(spacing=(2.0, 1.8, 3.0), intensity=NONE),
    "RAS + spacing": Preprocessing(orientation="RAS", spacing=(1.5, 1.5, 1.5), intensity=NONE),
}


@pytest.mark.parametrize("step", list(STEPS_3D))
@pytest.mark.parametrize("geometry", list(GEOMETRIES_3D))
def test_3d_preprocessing_reads_every_planned_voxel_from_its_anatomy(geometry, step):
    shape, affine = GEOMETRIES_3D[geometry]
    label = anatomy(shape)
    planned, read, inner, _, _ = through(make_preprocess(STEPS_3D[step], 3), label, affine)
    assert_right_anatomy(planned, read, inner, overall_min=0.95 if "down" in step else 0.99)


STEPS_2D = {
    "none": Preprocessing(intensity=NONE),
    "orientation RA": Preprocessing(orientation="RA", intensity=NONE),
    "spacing up": Preprocessing(spacing=(0.5, 0.6), intensity=NONE),
    "spacing down": Preprocessing(spacing=(1.7, 2.1), intensity=NONE),
}


@pytest.mark.parametrize("step", list(STEPS_2D))
@pytest.mark.parametrize("geometry", list(GEOMETRIES_2D))
def test_2d_preprocessing_reads_every_planned_voxel_from_its_anatomy(geometry, step):
    shape, affine = GEOMETRIES_2D[geometry]
    label = anatomy(shape)
    planned, read, inner, _, _ = through(make_preprocess(STEPS_2D[step], 2), label, affine)
    assert_right_anatomy(planned, read, inner, overall_min=0.95 if "down" in step else 0.99)


@pytest.mark.parametrize(
    "pre",
    [
        Preprocessing(orientation="RAS", spacing=(1.5, 1.5, 8.0), intensity=NONE),
        Preprocessing(spacing=(1.5, 1.5, 1.5), intensity=NONE),
    ],
)
def test_oblique_cardiac_stack_loses_no_planned_voxel(pre):
    """The issue's geometry: before the fix, MONAI's Spacing put the first two resampled
    planes of the slice axis outside the new grid and every model failed."""
    affine = cardiac_affine()
    assert nib.aff2axcodes(affine) == ("P", "S", "R")
    label = anatomy((256, 256, 15))
    planned, read, inner, image, out_affine = through(make_preprocess(pre, 3), label, affine)
    agree, _ = assert_right_anatomy(planned, read, inner)
    assert agree >= 0.995


def test_float32_oblique_affines_are_covered_by_spacing():
    """18 of 20 random float32 oblique 1.25 x 1.25 x 8 mm grids lose MONAI Spacing's coverage
    of their corner voxels (the issue's measurement); after orthonormal_affine none does, and
    the affine moves by far less than a micrometre."""
    lost_before = lost_after = 0
    for seed in range(20):
        affine = affine_of(
            Rotation.random(random_state=seed).as_matrix(),
            (1.25, 1.25, 8.0),
            (10.0 * seed, -3.0, 7.0),
        )
        shape = (64, 64, 15)
        corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape], indexing="ij"))
        corners = np.c_[corners.reshape(3, -1).T, np.ones(8)]
        for fixed in (False, True):
            a = orthonormal_affine(affine) if fixed else affine
            y = Spacing(pixdim=(1.5, 1.5, 1.5))(
                MetaTensor(torch.zeros(1, *shape), affine=torch.from_numpy(a))
            )
            m = (corners @ np.linalg.solve(np.asarray(y.affine, np.float64), affine).T)[:, :3]
            out = np.all((m >= -0.5 - 1e-3) & (m <= np.array(y.shape[1:]) - 0.5 + 1e-3))
            if fixed:
                lost_after += not out
            else:
                lost_before += not out
        assert np.abs(orthonormal_affine(affine) - affine).max() * 100 < 1e-4  # mm over 100 vox
    assert lost_before >= 15
    assert lost_after == 0


def test_orthonormal_affine_leaves_shear_and_exact_affines_alone():
    sheared = np.eye(4)
    sheared[0, 1] = 0.2
    assert np.array_equal(orthonormal_affine(sheared), sheared)
    exact = affine_of(np.diag([-1.0, 1.0, 1.0]), (1.0, 2.0, 3.0), (1.0, 2.0, 3.0))
    assert np.array_equal(orthonormal_affine(exact), exact)


# --- a crop drops voxels, and they are counted ---------------------------------------------------


def test_points_outside_are_dropped_and_counted_exactly():
    label = anatomy((40, 36, 14))
    plan = make_plan([label], ["c0"], layers=2, counts=[50, 100], seed=1)
    case = plan.cases[0]

    def crop(indices):  # an image that starts at index 10 of axis 0 and holds 20 planes
        return indices - np.array([10.0, 0.0, 0.0])

    points, keep = case.points_inside(["a", "b"], crop, (20, 36, 14))
    features = {}
    for name, idx, cls, kept in zip(["a", "b"], case.indices, case.classes, keep):
        expected = (idx[:, 0] >= 10) & (idx[:, 0] <= 29)
        assert np.array_equal(kept, expected)
        assert np.allclose(points[name], idx[kept] - [10, 0, 0])
        features[name] = [(np.zeros((kept.sum(), 3)), cls[kept])]
    counts = dropped_voxels(plan, features, ["a", "b"])
    truth = {}
    for idx, cls in zip(case.indices, case.classes):
        for k in np.unique(cls):
            lost = int(np.sum((cls == k) & ((idx[:, 0] < 10) | (idx[:, 0] > 29))))
            if lost:
                truth[str(k)] = truth.get(str(k), 0) + lost
    assert counts["per_case"] == {"c0": truth}
    assert counts["dropped"] == sum(truth.values())
    assert counts["planned"] == sum(len(c) for c in case.classes)
    assert counts["rate"] == pytest.approx(counts["dropped"] / counts["planned"])


def test_border_round_off_is_read_not_dropped():
    plan = make_plan([anatomy((20, 20, 6))], ["c"], layers=1, counts=[400], seed=0)
    case = plan.cases[0]
    # shift by 0.5 + 1e-4 voxel: the last planes sit 1e-4 beyond the extent, within POINT_TOL
    points, keep = case.points_inside(["a"], lambda p: p + 0.5 + 1e-4, (20, 20, 6))
    assert keep[0].all()
    assert points["a"].max() <= np.array([19.5, 19.5, 5.5]).max()
    _, keep = case.points_inside(["a"], lambda p: p + 0.6, (20, 20, 6))
    assert not keep[0].all()


def test_nothing_inside_names_model_case_file_preprocessing_and_fix():
    plan = make_plan([anatomy((20, 20, 6))], ["c7"], layers=1, counts=[10], seed=0)
    with pytest.raises(UserError) as info:
        plan.cases[0].points_inside(
            ["a"],
            lambda p: p + 500.0,
            (20, 20, 6),
            model="unet_a",
            case_file="/data/imagesTr/c7.nii.gz",
            preprocessing="preprocessing {spacing: [1.5, 1.5, 8.0]}",
        )
    text = str(info.value)
    for part in (
        "unet_a",
        "/data/imagesTr/c7.nii.gz",
        "spacing: [1.5, 1.5, 8.0]",
        "bank check",
        "fix",
    ):
        assert part in text


# --- a bundle's transforms -----------------------------------------------------------------------


def bundle_entry(tmp_path, transforms, name="b"):
    from test_bank_bundle import inference_config, make_bundle

    config = inference_config()
    config["preprocessing"]["transforms"] = [
        {"_target_": "LoadImaged", "keys": "image"},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        *transforms,
    ]
    folder = make_bundle(tmp_path / name, config=config)
    bank = tmp_path / f"{name}.yaml"
    bank.write_text(yaml.safe_dump({"models": [{"name": name, "bundle": str(folder)}]}))
    (entry,) = load_bank(bank)
    return entry


@pytest.mark.parametrize("geometry", ["oblique", "anisotropic", "flipped"])
def test_bundle_orientation_spacing_and_pad(tmp_path, geometry):
    from ccfv.bank.kinds.bundle import make_bundle_preprocess

    entry = bundle_entry(
        tmp_path,
        [
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {
                "_target_": "Spacingd",
                "keys": "image",
                "pixdim": [1.5, 1.5, 1.5],
                "mode": "bilinear",
            },
            {"_target_": "SpatialPadd", "keys": "image", "spatial_size": [96, 96, 96]},
        ],
    )
    shape, affine = GEOMETRIES_3D[geometry]
    planned, read, inner, image, _ = through(
        make_bundle_preprocess(entry, 3), anatomy(shape), affine
    )
    assert min(image.shape[1:]) >= 96
    assert_right_anatomy(planned, read, inner)


def test_bundle_crop_drops_exactly_the_cropped_voxels(tmp_path):
    from ccfv.bank.kinds.bundle import make_bundle_preprocess

    entry = bundle_entry(
        tmp_path, [{"_target_": "CenterSpatialCropd", "keys": "image", "roi_size": [24, -1, -1]}]
    )
    shape, affine = GEOMETRIES_3D["rotated"]
    label = anatomy(shape)
    planned, read, inner, image, out_affine = through(
        make_bundle_preprocess(entry, 3), label, affine
    )
    assert image.shape[1:] == (24, 36, 14)
    plan = make_plan([label], ["case"], layers=2, counts=[150, 300], seed=0).cases[0]
    idx = np.concatenate(plan.indices)
    start = (40 - 24) // 2
    assert np.array_equal(read < 0, (idx[:, 0] < start) | (idx[:, 0] >= start + 24))
    assert_right_anatomy(planned, read, inner, allow_dropped=True)


# --- nnU-Net's preprocessing ---------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("geometry", ["oblique", "anisotropic"])
def test_nnunet_preprocessing(tmp_path, geometry):
    """nnU-Net resamples (cubic spline) to its plans' spacing in its own axis order; each
    class's indicator (+1, so nothing is cropped as zero border) goes through separately."""
    pytest.importorskip("nnunetv2")
    from test_bank_nnunet import entry_of, make_results_folder

    from ccfv.bank.kinds.nnunet import make_nnunet_preprocess

    folder = make_results_folder(
        tmp_path,
        config="3d_fullres",
        dims=3,
        patch=(16, 16, 16),
        spacing=(3.0, 1.6, 1.4),
        scheme="NoNormalization",
        labels=2,
        reader="SimpleITKIO",
        transpose=(0, 2, 1),
    )
    pre = make_nnunet_preprocess(entry_of(folder), 3)

    def per_class(image, affine):
        outs = [pre(image[c : c + 1] + 1.0, affine) for c in range(image.shape[0])]
        return np.concatenate([o for o, _ in outs]) - 1.0, outs[0][1]

    shape, affine = GEOMETRIES_3D[geometry]
    planned, read, inner, _, _ = through(per_class, anatomy(shape), affine)
    assert_right_anatomy(planned, read, inner)


# --- what bank check --data says ------------------------------------------------------------------


def test_spacing_written_for_another_orientation_is_warned():
    affine = cardiac_affine()
    label = anatomy((256, 256, 15))
    pre = make_preprocess(
        Preprocessing(orientation="RAS", spacing=(1.5, 1.5, 8.0), intensity=NONE), 3
    )
    _, out_affine = pre(onehot(label, 1), affine)
    warnings = spacing_warnings(affine, out_affine, 3)
    assert len(warnings) >= 2 and all("another orientation" in w for w in warnings)
    assert "[8.0, 1.5, 1.5]" in warnings[0]
    ok = make_preprocess(Preprocessing(spacing=(1.5, 1.5, 8.0), intensity=NONE), 3)
    assert spacing_warnings(affine, ok(onehot(label, 1), affine)[1], 3) == []
    iso = make_preprocess(Preprocessing(spacing=(1.5, 1.5, 1.5), intensity=NONE), 3)
    (only,) = spacing_warnings(affine, iso(onehot(label, 1), affine)[1], 3)
    assert "5.3x finer" in only and "another orientation" not in only


def write_case(root, name, label, affine):
    image = 50.0 * label + np.random.default_rng(0).normal(0, 5, label.shape)
    nib.save(nib.Nifti1Image(image.astype(np.float32), affine), root / f"imagesTr/{name}.nii.gz")
    nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), root / f"labelsTr/{name}.nii.gz")
    return {"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"}


def cardiac_dataset(root, slices=(13, 16, 19)):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for c, n in enumerate(slices):
        shape = (96, 96, n)  # in-plane cut to 96 to keep the test small; geometry as the issue
        training.append(write_case(root, f"sax{c}", anatomy(shape), cardiac_affine(seed=c)))
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "name": "sax",
                "labels": {"0": "background", "1": "a", "2": "b", "3": "c"},
                "tensorImageSize": "3D",
                "training": training,
            }
        )
    )
    return root


UNET3D = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 4,
    "channels": [4, 8, 16],
    "strides": [2, 2],
}


def monai_entry(name, pre, network="UNet", args=None):
    return {
        "name": name,
        "network": f"monai.networks.nets.{network}",
        "args": args or UNET3D,
        "layers": "auto",
        "preprocessing": {"intensity": {"kind": "zscore"}, **pre},
    }


def test_bank_check_data_prints_the_table(tmp_path, capsys):
    data = cardiac_dataset(tmp_path / "sax")
    bank = tmp_path / "bank.yaml"
    bank.write_text(
        yaml.safe_dump(
            {
                "models": [
                    monai_entry(
                        "wrong_order",
                        {"orientation": "RAS", "spacing": [1.5, 1.5, 8.0], "roi": [32, 32, 32]},
                    ),
                    monai_entry("iso", {"spacing": [1.5, 1.5, 1.5], "roi": [32, 32, 32]}),
                ]
            }
        )
    )
    assert main(["bank", "check", str(bank), "--data", str(data)]) == 0
    out = capsys.readouterr().out
    lines = {
        line.split("|")[1].strip(): line
        for line in out.splitlines()
        if line.startswith("| wrong_order") or line.startswith("| iso")
    }
    assert len(lines) == 2
    rows = [line for line in out.splitlines() if "sax0" in line]
    assert len(rows) == 2
    assert "96x96x13 @ 1.25x1.25x8 mm" in rows[0]
    assert all("(100.0%)" in r for r in rows)
    warned = {
        line.split(":")[1].strip(): line for line in out.splitlines() if line.startswith("warning:")
    }
    assert "another orientation" in warned["wrong_order"]
    assert "5.3x finer" in warned["iso"] and "another orientation" not in warned["iso"]


# --- end to end: an oblique target, two random-init MONAI 3D networks, `spacing` -------------


def test_oblique_target_ranks_with_every_model_scored(tmp_path):
    from ccfv.rank import rank

    data = cardiac_dataset(tmp_path / "sax")
    bank = tmp_path / "bank.yaml"
    seg_args = {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 4,
        "init_filters": 8,
        "blocks_down": [1, 1, 1],
        "blocks_up": [1, 1],
    }
    bank.write_text(
        yaml.safe_dump(
            {
                "models": [
                    monai_entry(
                        "unet",
                        {"orientation": "RAS", "spacing": [1.5, 1.5, 1.5], "roi": [48, 48, 48]},
                    ),
                    monai_entry(
                        "segresnet",
                        {"spacing": [1.5, 1.5, 1.5], "roi": [48, 48, 48]},
                        network="SegResNet",
                        args=seg_args,
                    ),
                ]
            }
        )
    )
    result = rank(
        bank,
        data,
        methods=("ccfv", "logme"),
        cache_dir=tmp_path / "cache",
        counts=(20, 40, 80),
        bootstrap=0,
        progress=False,
        log=lambda *_: None,
    )
    assert result.failures == {}
    for model in ("unet", "segresnet"):
        assert all(np.isfinite(v) for v in result.scores[model].values())
        assert result.details["dropped"][model]["dropped"] == 0
        assert result.details["dropped"][model]["planned"] > 0
    assert "drop_warning" not in result.details


def test_a_crop_is_dropped_counted_in_scores_json_and_warned(tmp_path, capsys):
    """A bundle whose transforms crop axis 0 to its central 48 planes next to an entry that
    crops nothing: both are scored, the bundle's dropped voxels are exactly the planned voxels
    outside the crop, per case and class, and the run warns that the drop rates differ."""
    from ccfv.bank import load_model, resolve_layers
    from ccfv.data import find_cases, load_case

    data = cardiac_dataset(tmp_path / "sax")
    crop = bundle_entry(
        tmp_path,
        [{"_target_": "CenterSpatialCropd", "keys": "image", "roi_size": [48, -1, -1]}],
        name="cropping",
    )
    bank = tmp_path / "bank.yaml"
    bank.write_text(
        yaml.safe_dump(
            {
                "models": [
                    monai_entry("plain", {"roi": [32, 32, 16]}),
                    {"name": "cropping", "bundle": str(crop.bundle)},
                ]
            }
        )
    )
    out = tmp_path / "out"
    assert (
        main(
            [
                "rank",
                "--bank",
                str(bank),
                "--data",
                str(data),
                "--out",
                str(out),
                "--bootstrap",
                "0",
                "--cache-dir",
                str(tmp_path / "cache"),
                "--quiet",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    result = json.loads((out / "scores.json").read_text())
    assert all(v is not None for m in result["scores"].values() for v in m.values())
    dropped = result["details"]["dropped"]
    assert dropped["plain"]["dropped"] == 0 and dropped["plain"]["per_case"] == {}

    n_layers = len(resolve_layers(load_model(crop)[0], crop))
    dataset = find_cases(data)
    loaded = [load_case(c, dataset.labels) for c in dataset.cases]
    plan = make_plan(
        [c.label for c in loaded],
        [c.case_id for c in loaded],
        layers=n_layers,
        counts=[100, 200, 400],
        seed=0,
    )
    truth, total = {}, 0
    for case in plan.cases:
        for idx, cls in zip(case.indices, case.classes):
            outside = (idx[:, 0] < 24) | (idx[:, 0] >= 72)
            total += int(outside.sum())
            for k in np.unique(cls[outside]):
                per = truth.setdefault(case.case_id, {})
                per[str(k)] = per.get(str(k), 0) + int(np.sum(outside & (cls == k)))
    assert total > 0
    assert dropped["cropping"]["dropped"] == total
    assert dropped["cropping"]["per_case"] == truth
    assert "drop_warning" in result["details"] and "warning:" in printed
    assert "outside the preprocessed image" in (out / "report.md").read_text()
