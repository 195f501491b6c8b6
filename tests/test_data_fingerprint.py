"""The feature cache's data key: file content, not path/size/mtime; pick order does not count."""

from __future__ import annotations

import json
import os
import shutil
import warnings

import nibabel as nib
import numpy as np
import pytest
import yaml

from ccfv.data import data_fingerprint, find_cases, select_cases
from ccfv.errors import CCFVWarning
from ccfv.extract import CACHE_FORMAT, FeatureCache
from ccfv.rank import rank

QUIET = {"progress": False, "log": lambda *_: None}
UNET2D = {
    "spatial_dims": 2,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [4, 8],
    "strides": [2],
}


def small_2d_dataset(root, n=3, size=(24, 20)):
    """``n`` uncompressed 2D NIfTI cases (a square of class 1), Decathlon layout."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    training = []
    for c in range(n):
        label = np.zeros(size, np.uint8)
        label[4 + c : 14 + c, 5:15] = 1
        image = (50.0 * label + rng.normal(0, 5, size)).astype(np.float32)
        nib.save(nib.Nifti1Image(image, np.eye(4)), root / f"imagesTr/c{c}.nii")
        nib.save(nib.Nifti1Image(label, np.eye(4)), root / f"labelsTr/c{c}.nii")
        training.append({"image": f"./imagesTr/c{c}.nii", "label": f"./labelsTr/c{c}.nii"})
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "labels": {"0": "background", "1": "square"},
                "tensorImageSize": "2D",
                "training": training,
            }
        )
    )
    return root


def small_bank(path):
    path.write_text(
        yaml.safe_dump(
            {
                "models": [
                    {
                        "name": "u",
                        "network": "monai.networks.nets.UNet",
                        "args": UNET2D,
                        "seed": 0,
                        "layers": "auto",
                        "preprocessing": {"intensity": {"kind": "zscore"}, "roi": [16, 16]},
                    }
                ]
            }
        )
    )
    return path


def test_fingerprint_is_content_not_path_or_mtime(tmp_path):
    root = small_2d_dataset(tmp_path / "d")
    dataset = find_cases(root)
    first = data_fingerprint(dataset.cases, dataset.labels)
    image = root / "imagesTr" / "c1.nii"
    stat = image.stat()
    data = bytearray(image.read_bytes())
    data[-4:] = np.float32(1234.5).tobytes()  # one voxel changed, same size
    image.write_bytes(bytes(data))
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # modification time restored
    assert image.stat().st_size == stat.st_size and image.stat().st_mtime_ns == stat.st_mtime_ns
    edited = data_fingerprint(dataset.cases, dataset.labels)
    assert edited != first
    # a copy elsewhere, cases in another order: the same fingerprint
    moved = find_cases(shutil.copytree(root, tmp_path / "elsewhere" / "d"))
    assert data_fingerprint(moved.cases[::-1], moved.labels) == edited
    # another class table: another fingerprint
    assert data_fingerprint(dataset.cases, {0: "background", 1: "other"}) != edited


def test_select_cases_returns_the_same_list_for_the_same_set(tmp_path):
    dataset = find_cases(small_2d_dataset(tmp_path / "d", n=5))
    assert select_cases(dataset, 5, seed=3) == dataset.cases
    picked = select_cases(dataset, 3, seed=3)
    assert picked == sorted(picked, key=lambda c: c.case_id)
    assert set(c.case_id for c in picked) <= set(c.case_id for c in select_cases(dataset, 4, 3))


def test_edited_image_is_never_served_from_the_cache(tmp_path):
    """The issue's case: an uncompressed NIfTI edited in place, size and mtime unchanged."""
    root = small_2d_dataset(tmp_path / "d")
    bank = small_bank(tmp_path / "bank.yaml")
    cache = tmp_path / "cache"
    first = rank(bank, root, bootstrap=0, cache_dir=cache, **QUIET)
    assert "features extracted" in first.details["per_model"]["u"]
    image = root / "imagesTr" / "c0.nii"
    stat = image.stat()
    array = np.asanyarray(nib.load(image).dataobj).copy()
    nib.save(nib.Nifti1Image(array[::-1].copy(), np.eye(4)), image)  # same size, new content
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert image.stat().st_size == stat.st_size and image.stat().st_mtime_ns == stat.st_mtime_ns
    again = rank(bank, root, bootstrap=0, cache_dir=cache, **QUIET)
    assert "features extracted" in again.details["per_model"]["u"]
    fresh = rank(bank, root, bootstrap=0, cache_dir=tmp_path / "fresh", **QUIET)
    assert again.scores == fresh.scores and again.scores != first.scores


def test_cases_n_equal_to_all_hits_the_cache_and_gives_the_same_digits(tmp_path):
    root = small_2d_dataset(tmp_path / "d")
    bank = small_bank(tmp_path / "bank.yaml")
    cache = tmp_path / "cache"
    every = rank(bank, root, bootstrap=20, cache_dir=cache, **QUIET)
    picked = rank(bank, root, cases=3, bootstrap=20, cache_dir=cache, **QUIET)
    assert picked.details["per_model"]["u"].endswith("features from cache")
    assert picked.scores == every.scores  # exactly, not approximately
    assert picked.details["cases"] == every.details["cases"] == ["c0", "c1", "c2"]
    assert picked.details["bootstrap"] == every.details["bootstrap"]


def test_cache_of_an_older_format_is_named(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / ("a" * 64 + ".npz")).write_bytes(b"old feature file")
    with pytest.warns(
        CCFVWarning,
        match=r"holds files of cache format ccfv-features-2 or older"
        r".*content.*delete",
    ):
        cache = FeatureCache(old)
    cache.put_case("k", "c0", {"l": (np.zeros((2, 3)), np.zeros(2, int))})
    assert (old / "CACHE_FORMAT").read_text().strip() == CACHE_FORMAT
    with warnings.catch_warnings():
        warnings.simplefilter("error", CCFVWarning)
        FeatureCache(old)  # recorded now: no more warning
        FeatureCache(tmp_path / "new")  # an empty or absent folder: no warning
