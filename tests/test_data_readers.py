"""Target-data layer: layouts, readers, checks and case selection, on real and generated data."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from ccfv.data import Case, find_cases, load_case, read_file, select_cases
from ccfv.errors import CCFVWarning, UserError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared(name: str) -> Path:
    path = SHARED / name
    if not (path / "dataset.json").is_file():
        pytest.skip(f"shared data {path} not present")
    return path


# --------------------------------------------------------------------------- real data


def test_msd_spleen_ct_3d():
    root = shared("spleen_ct_crop_3d")
    ds = find_cases(root)
    assert (ds.name, ds.layout, ds.ndim, len(ds)) == ("spleen_ct_crop_3d", "msd", 3, 1)
    assert ds.labels == {0: "background", 1: "spleen"}
    case = ds.cases[0]
    assert case.case_id == "spleen2" and case.dataset == "spleen_ct_crop_3d"
    assert case.images == (root.resolve() / "imagesTr" / "spleen2.nii.gz",)
    loaded = load_case(case, ds.labels)
    assert loaded.image.shape == (1, 164, 166, 26) and loaded.image.dtype == np.float32
    assert loaded.label.shape == (164, 166, 26) and loaded.label.dtype == np.int64
    assert set(np.unique(loaded.label)) == {0, 1}
    ref_image, ref_label = nib.load(case.images[0]), nib.load(case.label)
    np.testing.assert_allclose(loaded.affine, ref_image.affine)
    np.testing.assert_allclose(ref_label.affine, ref_image.affine, atol=1e-3)
    np.testing.assert_allclose(loaded.image[0], ref_image.get_fdata(), rtol=1e-6)
    assert loaded.affine.shape == (4, 4) and loaded.affine.dtype == np.float64
    np.testing.assert_allclose(loaded.spacing, (0.794922, 0.794922, 5.0), atol=1e-5)


def test_msd_spinalcord_mri_3d_float_labels():
    ds = find_cases(shared("spinalcord_mri_3d"))
    assert [c.case_id for c in ds.cases] == ["unf01_T1w", "unf01_T2star", "unf01_T2w"]
    assert ds.labels == {0: "background", 1: "spinal cord"} and ds.ndim == 3
    for case in ds.cases[:2]:
        loaded = load_case(case, ds.labels)  # labels stored as float32 0./1. on disk
        assert loaded.image.shape == (1, 131, 141, 16) and loaded.label.shape == (131, 141, 16)
        assert set(np.unique(loaded.label)) == {0, 1} and loaded.label.sum() > 0
        np.testing.assert_allclose(nib.load(case.label).affine, loaded.affine, atol=1e-3)
        np.testing.assert_allclose(loaded.spacing, (1.0, 1.0, 1.0), atol=1e-5)


def test_msd_chaos_multiclass_3d():
    ds = find_cases(shared("chaos_t2spir_abdomen3d"))
    assert len(ds) == 16 and ds.ndim == 3 and sorted(ds.labels) == [0, 1, 2, 3, 4]
    assert ds.labels[4] == "spleen"
    loaded = load_case(ds.cases[0], ds.labels)
    assert ds.cases[0].case_id == "chaos_001"
    assert loaded.image.shape == (1, 256, 256, 37) and loaded.label.shape == (256, 256, 37)
    assert set(np.unique(loaded.label)) == {0, 1, 2, 3, 4}
    np.testing.assert_allclose(loaded.spacing, (1.25, 1.25, 7.7), atol=1e-4)
    np.testing.assert_allclose(nib.load(ds.cases[0].label).affine, loaded.affine, atol=1e-3)


def test_msd_drive_rgb_png():
    ds = find_cases(shared("drive_retinal_vessels"))
    assert (ds.layout, ds.ndim, len(ds)) == ("msd", 2, 40)
    case = ds.cases[0]
    loaded = load_case(case, ds.labels)
    pixels = np.asarray(Image.open(case.images[0]))  # (H, W, 3)
    assert loaded.image.shape == (3, 584, 565) == (3, *pixels.shape[:2])
    np.testing.assert_array_equal(loaded.image, np.moveaxis(pixels, -1, 0).astype(np.float32))
    assert loaded.label.shape == (584, 565)
    assert set(np.unique(loaded.label)) == {0, 1}
    np.testing.assert_array_equal(loaded.affine, np.eye(4))
    assert loaded.spacing == (1.0, 1.0)


def test_msd_acdc_multiclass_2d():
    ds = find_cases(shared("acdc_cine_mri2d"))
    assert len(ds) == 490 and ds.ndim == 2 and sorted(ds.labels) == [0, 1, 2, 3]
    case = ds.cases[0]
    assert case.case_id == "patient001_frame01_slice01"
    loaded = load_case(case, ds.labels)
    assert loaded.image.shape == (1, 256, 216) and loaded.label.shape == (256, 216)
    assert set(np.unique(loaded.label)) == {0, 1, 2, 3}


# --------------------------------------------------------------------------- generated data


def write_nifti(path: Path, array, affine=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([2.0, 2.0, 3.0, 1.0]) if affine is None else affine
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return path


def write_png(path: Path, array) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


def write_json(path: Path, meta: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta))
    return path


def make_nnunet(root: Path, n_cases: int = 3, labels=None) -> Path:
    rng = np.random.default_rng(0)
    write_json(
        root / "dataset.json",
        {
            "channel_names": {"0": "T2", "1": "ADC"},
            "labels": labels or {"background": 0, "tumour": 1},
            "numTraining": n_cases,
            "file_ending": ".nii.gz",
        },
    )
    for i in range(n_cases):
        for c in range(2):
            write_nifti(
                root / "imagesTr" / f"case{i}_{c:04d}.nii.gz",
                (rng.random((6, 5, 4)) + 10 * c).astype(np.float32),
            )
        write_nifti(
            root / "labelsTr" / f"case{i}.nii.gz", (rng.random((6, 5, 4)) > 0.5).astype(np.uint8)
        )
    return root


def make_msd(
    root: Path, image, label, labels=None, image_affine=None, label_affine=None, ext=".nii.gz"
) -> Path:
    write_json(
        root / "dataset.json",
        {
            "name": root.name,
            "labels": labels or {"0": "background", "1": "organ"},
            "training": [{"image": f"./imagesTr/a{ext}", "label": f"./labelsTr/a{ext}"}],
        },
    )
    if ext == ".png":
        write_png(root / "imagesTr" / "a.png", image)
        write_png(root / "labelsTr" / "a.png", label)
    else:
        write_nifti(root / "imagesTr" / f"a{ext}", image, image_affine)
        write_nifti(root / "labelsTr" / f"a{ext}", label, label_affine)
    return root


def test_nnunet_two_channels(tmp_path):
    root = make_nnunet(tmp_path / "Dataset001_Test")
    ds = find_cases(root)
    assert (ds.name, ds.layout, ds.ndim, len(ds)) == ("Dataset001_Test", "nnunet", 3, 3)
    assert ds.labels == {0: "background", 1: "tumour"}
    case = ds.cases[1]
    assert case.case_id == "case1"
    assert [p.name for p in case.images] == ["case1_0000.nii.gz", "case1_0001.nii.gz"]
    loaded = load_case(case, ds.labels)
    assert loaded.image.shape == (2, 6, 5, 4) and loaded.label.shape == (6, 5, 4)
    np.testing.assert_allclose(loaded.image[1], nib.load(case.images[1]).get_fdata(), rtol=1e-6)
    assert loaded.image[1].min() >= 10 > loaded.image[0].max()
    np.testing.assert_allclose(loaded.affine, np.diag([2.0, 2.0, 3.0, 1.0]))
    assert loaded.spacing == (2.0, 2.0, 3.0)


def test_nnunet_rejects_regions_and_missing_channel(tmp_path):
    root = make_nnunet(tmp_path / "regions", labels={"background": 0, "whole tumour": [1, 2]})
    with pytest.raises(UserError, match=r"dataset\.json.*region"):
        find_cases(root)
    root = make_nnunet(tmp_path / "missing")
    (root / "imagesTr" / "case2_0001.nii.gz").unlink()
    with pytest.raises(UserError, match=r"case2_0001\.nii\.gz: missing"):
        find_cases(root)
    root = make_nnunet(tmp_path / "nolabel")
    (root / "labelsTr" / "case0.nii.gz").unlink()
    with pytest.raises(UserError, match=r"labelsTr/case0\.nii\.gz: missing label"):
        find_cases(root)


def test_msd_labels_in_name_to_id_form(tmp_path):
    root = make_msd(
        tmp_path / "t",
        np.zeros((2, 2, 2)),
        np.zeros((2, 2, 2), np.uint8),
        labels={"background": 0, "liver": 1, "tumour": 2},
    )
    ds = find_cases(root / "dataset.json")
    assert ds.labels == {0: "background", 1: "liver", 2: "tumour"} and ds.root == root.resolve()


def test_msd_4d_channels_last_becomes_channels_first(tmp_path):
    image = np.stack([np.full((5, 4, 3), c, np.float32) for c in range(4)], axis=-1)
    root = make_msd(tmp_path / "brats", image, np.ones((5, 4, 3), np.uint8))
    loaded = load_case(find_cases(root).cases[0])
    assert loaded.image.shape == (4, 5, 4, 3)
    assert [float(loaded.image[c].mean()) for c in range(4)] == [0.0, 1.0, 2.0, 3.0]


def test_itk_format_agrees_with_nifti(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    affine = np.array([[0, -1.5, 0, 10], [2.0, 0, 0, -5], [0, 0, 3.0, 7], [0, 0, 0, 1]])
    for shape in ((5, 4, 3), (5, 4, 3, 2)):  # one channel; channels on a 4th axis
        array = np.arange(np.prod(shape), dtype=np.int16).reshape(shape)
        nii = write_nifti(tmp_path / "x.nii.gz", array, affine)
        sitk.WriteImage(sitk.ReadImage(str(nii)), str(tmp_path / "x.mha"))
        got, got_affine = read_file(tmp_path / "x.mha")
        np.testing.assert_array_equal(got, read_file(nii)[0])
        assert got.shape == ((1, 5, 4, 3) if len(shape) == 3 else (2, 5, 4, 3))
        np.testing.assert_allclose(got_affine, affine, atol=1e-5)


def test_folder_png_with_255_masks(tmp_path):
    root = tmp_path / "skin"
    rng = np.random.default_rng(1)
    for name in ("b", "a", "c"):
        write_png(root / "images" / f"{name}.png", rng.integers(0, 255, (7, 9, 3)))
        mask = np.zeros((7, 9), np.uint8)
        mask[2:5, 3:6] = 255
        write_png(root / "masks" / f"{name}.png", mask)
    (root / "images" / "notes.txt").write_text("ignored")
    ds = find_cases(root)
    assert (ds.layout, ds.ndim, [c.case_id for c in ds.cases]) == ("folder", 2, ["a", "b", "c"])
    assert ds.labels == {0: "background", 1: "class_1"}
    with pytest.warns(CCFVWarning, match=r"\[0, 255\].*class ids \[0, 1\]"):
        loaded = load_case(ds.cases[0], ds.labels)
    assert loaded.image.shape == (3, 7, 9) and loaded.label.shape == (7, 9)
    assert set(np.unique(loaded.label)) == {0, 1} and loaded.label.sum() == 9
    with pytest.warns(CCFVWarning):  # without the dataset's labels: same rule, same result
        np.testing.assert_array_equal(load_case(ds.cases[0]).label, loaded.label)


def test_folder_grey_level_masks_map_consistently(tmp_path):
    root = tmp_path / "heart"
    for name, levels in (("a", [0, 128, 255]), ("b", [0, 255])):  # b lacks the middle class
        write_png(root / "imagesTr" / f"{name}.png", np.zeros((4, 6)))
        write_png(root / "labelsTr" / f"{name}.png", np.resize(levels, (4, 6)))
    ds = find_cases(root)
    assert sorted(ds.labels) == [0, 1, 2]
    with pytest.warns(CCFVWarning):
        b = load_case(ds.cases[1], ds.labels)
    assert set(np.unique(b.label)) == {0, 2}
    with pytest.warns(CCFVWarning):  # one mask alone cannot tell 3 levels from 2
        assert set(np.unique(load_case(ds.cases[1]).label)) == {0, 1}


def _folder_of_masks(root, masks):
    rng = np.random.default_rng(0)
    for name, mask in masks.items():
        write_png(root / "images" / f"{name}.png", rng.integers(0, 255, np.shape(mask)))
        write_png(root / "labels" / f"{name}.png", mask)
    return root


def test_folder_mixing_01_and_0255_masks_has_two_classes(tmp_path):
    """The issue's folder: 0/1 and 0/255 masks together were read as classes {0, 1, 255}."""
    square = np.zeros((8, 8), np.uint8)
    square[2:6, 2:6] = 1
    root = _folder_of_masks(
        tmp_path / "mixed", {"a": square, "b": 255 * square, "c": np.zeros((8, 8))}
    )
    ds = find_cases(root)
    assert ds.labels == {0: "background", 1: "class_1"}
    assert "0/1" in ds.label_rule and "0/255" in ds.label_rule
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CCFVWarning)  # the 255 -> 1 remap is announced
        for case in ds.cases:
            label = load_case(case, ds.labels).label
            assert set(np.unique(label)) <= {0, 1}
            assert label.sum() == (0 if case.case_id == "c" else 16)
    assert ds.class_table() == {"classes": {0: "background", 1: "class_1"}, "rule": ds.label_rule}


def test_folder_class_id_masks_keep_their_ids(tmp_path):
    a = np.resize(np.arange(4, dtype=np.uint8), (6, 6))
    root = _folder_of_masks(tmp_path / "ids", {"a": a, "b": (a > 2).astype(np.uint8)})
    ds = find_cases(root)
    assert sorted(ds.labels) == [0, 1, 2, 3] and "class ids [0, 1, 2, 3]" in ds.label_rule
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(load_case(ds.cases[0], ds.labels).label, a)


def smoothed_mask(size=32):
    """A 0/255 disc whose edge was smoothed (as a bilinear resize gives): many grey values."""
    from PIL import Image, ImageFilter

    yy, xx = np.mgrid[:size, :size]
    disc = (np.hypot(yy - size / 2, xx - size / 2) < size / 3).astype(np.uint8) * 255
    return np.asarray(Image.fromarray(disc).filter(ImageFilter.GaussianBlur(1.5)))


def test_folder_with_antialiased_masks_is_refused(tmp_path):
    good = np.zeros((32, 32), np.uint8)
    good[8:20, 8:20] = 255
    blurred = smoothed_mask()
    n_values = len(np.unique(blurred))
    assert n_values > 10
    root = _folder_of_masks(tmp_path / "smooth", {"a": good, "b": blurred})
    with pytest.raises(UserError) as error:
        find_cases(root)
    message = str(error.value)
    assert message.startswith(str(root / "labels" / "b.png") + ": a mask with values {0, ")
    assert f"({n_values} values)" in message and "interpolation or anti-aliasing" in message
    assert "nearest-neighbour" in message and "dataset.json with 'labels'" in message


@pytest.mark.parametrize(
    "masks, named, words",
    [
        ({"a": [0, 1, 2], "b": [0, 255]}, "b.png", "0/255 binary mask) while"),
        ({"a": [0, 1, 2], "b": [0, 128, 255]}, "b.png", "(grey levels) while"),
        ({"a": [0, 1], "b": [0, 128, 255]}, "a.png", "(a 0/1 binary mask) while"),
        ({"a": [0, 128]}, "a.png", "no mask of"),
        ({"a": [0, 1, 255]}, "a.png", "not a binary mask"),
        ({"a": list(range(17))}, "a.png", "not class ids (0..15)"),
    ],
)
def test_folder_masks_of_mixed_or_unknown_kinds_are_refused(tmp_path, masks, named, words):
    root = _folder_of_masks(
        tmp_path / "m", {k: np.resize(np.array(v, np.uint8), (5, 5)) for k, v in masks.items()}
    )
    with pytest.raises(UserError, match="nearest-neighbour") as error:
        find_cases(root)
    assert str(error.value).startswith(str(root / "labels" / named)) and words in str(error.value)


def test_rgb_masks(tmp_path):
    grey = np.zeros((4, 5), np.uint8)
    grey[1, 1] = 1
    root = make_msd(tmp_path / "ok", np.zeros((4, 5, 3)), np.stack([grey] * 3, -1), ext=".png")
    assert load_case(find_cases(root).cases[0]).label.sum() == 1
    colour = np.stack([grey, grey, 1 - grey], -1)
    root = make_msd(tmp_path / "bad", np.zeros((4, 5, 3)), colour, ext=".png")
    with pytest.raises(UserError, match=r"labelsTr/a\.png: a colour mask.*channels differ"):
        load_case(find_cases(root).cases[0])


# --------------------------------------------------------------------------- bad input


def test_bad_folders_and_listings(tmp_path):
    with pytest.raises(UserError, match=r"nowhere: no such folder"):
        find_cases(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"empty: no dataset\.json and no image/label"):
        find_cases(tmp_path / "empty")
    write_json(tmp_path / "broken" / "dataset.json", {}).write_text("{oops")
    with pytest.raises(UserError, match=r"broken/dataset\.json: not valid JSON"):
        find_cases(tmp_path / "broken")
    root = make_msd(tmp_path / "gone", np.zeros((2, 2, 2)), np.zeros((2, 2, 2), np.uint8))
    (root / "labelsTr" / "a.nii.gz").unlink()
    with pytest.raises(
        UserError,
        match=r"labelsTr/a\.nii\.gz: listed in .*dataset\.json "
        r"\(training\[0\]\.label\) but missing",
    ):
        find_cases(root)
    write_json(tmp_path / "none" / "dataset.json", {"labels": {"0": "bg"}, "training": []})
    with pytest.raises(UserError, match=r"none: no labelled case found"):
        find_cases(tmp_path / "none")
    write_png(tmp_path / "orphan" / "images" / "a.png", np.zeros((3, 3)))
    (tmp_path / "orphan" / "labels").mkdir()
    with pytest.raises(UserError, match=r"images/a\.png: an image without label"):
        find_cases(tmp_path / "orphan")


def test_shape_mismatch_names_both_shapes(tmp_path):
    root = make_msd(tmp_path / "s", np.zeros((4, 5, 6)), np.zeros((4, 5, 7), np.uint8))
    with pytest.raises(
        UserError,
        match=r"labelsTr/a\.nii\.gz: spatial shape \(4, 5, 7\) "
        r"differs from \(4, 5, 6\) of .*imagesTr/a\.nii\.gz",
    ):
        load_case(find_cases(root).cases[0])


def test_affine_mismatch(tmp_path):
    shifted = np.diag([2.0, 2.0, 3.0, 1.0])
    shifted[0, 3] = 0.01
    root = make_msd(
        tmp_path / "aff", np.zeros((4, 5, 6)), np.zeros((4, 5, 6), np.uint8), label_affine=shifted
    )
    with pytest.raises(
        UserError,
        match=r"labelsTr/a\.nii\.gz: affine differs .* by up to "
        r"0\.01 mm",
    ) as info:
        load_case(find_cases(root).cases[0])
    assert "0.01" in str(info.value) and "imagesTr/a.nii.gz" in str(info.value)
    shifted[0, 3] = 1e-4  # within tolerance
    root = make_msd(
        tmp_path / "ok", np.zeros((4, 5, 6)), np.zeros((4, 5, 6), np.uint8), label_affine=shifted
    )
    load_case(find_cases(root).cases[0])


def test_non_integer_and_unknown_label_values(tmp_path):
    label = np.zeros((3, 3, 3), np.float32)
    label[1, 2, 0] = 0.5
    root = make_msd(tmp_path / "frac", np.zeros((3, 3, 3)), label)
    with pytest.raises(
        UserError,
        match=r"labelsTr/a\.nii\.gz: label values must be integer "
        r"class ids, found 0\.5 at voxel \(1, 2, 0\)",
    ):
        load_case(find_cases(root).cases[0])
    label = np.zeros((3, 3, 3), np.uint8)
    label[0, 0, :] = [1, 3, 7]
    root = make_msd(tmp_path / "unknown", np.zeros((3, 3, 3)), label)
    ds = find_cases(root)
    with pytest.raises(
        UserError,
        match=r"labelsTr/a\.nii\.gz: label values \[3, 7\] are not "
        r"among the dataset's class ids \[0, 1\]",
    ):
        load_case(ds.cases[0], ds.labels)
    # a picture mask of unexpected values is not silently remapped either
    mask = np.zeros((3, 4), np.uint8)
    mask[0, :3] = [1, 2, 255]
    root = make_msd(tmp_path / "png", np.zeros((3, 4)), mask, ext=".png")
    ds = find_cases(root)
    with pytest.raises(UserError, match=r"labelsTr/a\.png: label values \[2, 255\]"):
        load_case(ds.cases[0], ds.labels)


def test_unsupported_format(tmp_path):
    case = Case("x", (tmp_path / "x.xyz",), tmp_path / "y.png", "d")
    with pytest.raises(UserError, match=r"x\.xyz: unsupported file format '\.xyz'"):
        load_case(case)


# --------------------------------------------------------------------------- selection


def test_select_cases_reproducible():
    cases = [Case(f"c{i:02d}", (Path(f"/i/{i}.png"),), Path(f"/l/{i}.png"), "d") for i in range(20)]
    first = select_cases(cases, 5, seed=3)
    assert len(first) == 5 and len({c.case_id for c in first}) == 5
    assert select_cases(list(reversed(cases)), 5, seed=3) == first  # order-independent
    assert set(first) < set(select_cases(cases, 8, seed=3))  # smaller n: a subset
    assert first == sorted(first, key=lambda c: c.case_id)  # the same set: the same list
    assert select_cases(cases, 5, seed=4) != first
    with pytest.warns(CCFVWarning, match="only 20 exist"):
        everything = select_cases(cases, 50)
    assert everything == cases
    for bad in (0, -1, 2.5, True):
        with pytest.raises(UserError, match="give an integer >= 1"):
            select_cases(cases, bad)
    with pytest.raises(UserError, match="no case"):
        select_cases([], 3)


def test_select_cases_on_real_dataset():
    ds = find_cases(shared("chaos_t2spir_abdomen3d"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        picked = select_cases(ds, 4, seed=0)
    assert picked == select_cases(ds.cases[::-1], 4, seed=0)
    assert all(c.dataset == "chaos_t2spir_abdomen3d" for c in picked)
