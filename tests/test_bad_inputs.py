"""The bad-input matrix: each case runs the real command line in a subprocess and checks the
exit code, that no traceback is printed, and the key words of the message (issue 14).

A case is ``pytest.param(build, exit_code, [key words], id=...)`` where ``build(tmp_path)``
writes the bad input under ``tmp_path`` and returns the arguments after ``ccfv``.
``CASES_DATA``: data, labels, cache and checkpoints. A file named ``code_ran`` appearing in
``tmp_path`` would mean a checkpoint ran code: every case checks that it does not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

UNET2D = {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "channels": [4, 8],
          "strides": [2]}
SIZE = (24, 20)


# --------------------------------------------------------------------------- small builders


def _square(c: int) -> np.ndarray:
    label = np.zeros(SIZE, np.uint8)
    label[4 + c:14 + c, 5:15] = 1
    return label


def _image(label: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (50.0 * label + rng.normal(60, 5, label.shape)).astype(np.float32)


def msd(root: Path, n: int = 3, edit=None, ext: str = ".nii") -> Path:
    """``n`` 2D NIfTI cases in Decathlon layout; ``edit(c, image)`` may change an image."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for c in range(n):
        label = _square(c)
        image = _image(label, c)
        if edit is not None:
            image = edit(c, image)
        nib.save(nib.Nifti1Image(image, np.eye(4)), root / f"imagesTr/c{c}{ext}")
        nib.save(nib.Nifti1Image(label, np.eye(4)), root / f"labelsTr/c{c}{ext}")
        training.append({"image": f"./imagesTr/c{c}{ext}", "label": f"./labelsTr/c{c}{ext}"})
    (root / "dataset.json").write_text(json.dumps(
        {"labels": {"0": "background", "1": "square"}, "tensorImageSize": "2D",
         "training": training}))
    return root


def png_folder(root: Path, masks: list[np.ndarray]) -> Path:
    """A plain images/ + masks/ folder of PNG pictures with the given masks."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for c, mask in enumerate(masks):
        image = np.clip(_image((mask > 0).astype(np.uint8), c), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"c{c}.png")
        Image.fromarray(np.asarray(mask, np.uint8)).save(root / "masks" / f"c{c}.png")
    return root


def bank(tmp_path: Path, roi=(16, 16), **extra) -> Path:
    entry = {"name": "u", "network": "monai.networks.nets.UNet", "args": UNET2D, "seed": 0,
             "layers": "auto", "preprocessing": {"intensity": {"kind": "zscore"},
                                                 "roi": list(roi)}, **extra}
    path = tmp_path / "bank.yaml"
    path.write_text(yaml.safe_dump({"models": [entry]}, sort_keys=False))
    return path


def rank_args(tmp_path: Path, data: Path, bank_file: Path | None = None) -> list[str]:
    return ["rank", "--bank", str(bank_file or bank(tmp_path)), "--data", str(data),
            "--bootstrap", "0", "--quiet", "--cache-dir", str(tmp_path / "cache"),
            "--out", str(tmp_path / "out")]


def smoothed(size=SIZE) -> np.ndarray:
    """A 0/255 square with a blurred (anti-aliased) edge: many grey values."""
    from PIL import ImageFilter

    mask = Image.fromarray(_square(1) * 255)
    return np.asarray(mask.filter(ImageFilter.GaussianBlur(1.5)))


class CreatesFile:
    """Unpickling this calls os.mkdir(<tmp>/code_ran): the proof that a checkpoint ran code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


# --------------------------------------------------------------------------- the cases


def mixed_01_0255(tmp_path):
    masks = [_square(0), _square(1) * 255, _square(2)]
    return rank_args(tmp_path, png_folder(tmp_path / "d", masks))


def antialiased_masks(tmp_path):
    return rank_args(tmp_path, png_folder(tmp_path / "d", [_square(0) * 255, smoothed()]))


def ids_beside_0255(tmp_path):
    two = _square(0) + _square(3)
    return rank_args(tmp_path, png_folder(tmp_path / "d", [two, _square(1) * 255]))


def nan_in_image(tmp_path):
    def edit(c, image):
        if c == 1:
            image[2, 3] = np.nan
            image[5, 5:8] = np.nan
        return image
    return rank_args(tmp_path, msd(tmp_path / "d", edit=edit))


def inf_in_image(tmp_path):
    def edit(c, image):
        if c == 2:
            image[0, 0] = -np.inf
        return image
    return rank_args(tmp_path, msd(tmp_path / "d", edit=edit))


def constant_image(tmp_path):
    return rank_args(tmp_path, msd(tmp_path / "d", edit=lambda c, im: im * 0 + 7 if c == 0
                                   else im))


def window_far_larger(tmp_path):
    return rank_args(tmp_path, msd(tmp_path / "d"), bank(tmp_path, roi=(96, 96)))


def _checkpoint_bank(tmp_path, obj) -> list[str]:
    torch.save(obj, tmp_path / "model.pt")
    return rank_args(tmp_path, msd(tmp_path / "d"),
                     bank(tmp_path, checkpoint=str(tmp_path / "model.pt")))


def pickled_module(tmp_path):
    from monai.networks.nets import UNet

    return _checkpoint_bank(tmp_path, UNet(**UNET2D))


def code_running_checkpoint(tmp_path):
    return _checkpoint_bank(tmp_path, {"state_dict": CreatesFile(tmp_path / "code_ran")})


def code_running_file_in_bank_init(tmp_path):
    (tmp_path / "models").mkdir()
    torch.save(CreatesFile(tmp_path / "code_ran"), tmp_path / "models" / "evil.pt")
    return ["bank", "init", str(tmp_path / "models"), "--out", str(tmp_path / "bank.yaml")]


def not_a_checkpoint(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"not a torch file")
    return rank_args(tmp_path, msd(tmp_path / "d"),
                     bank(tmp_path, checkpoint=str(tmp_path / "model.pt")))


def old_cache_format(tmp_path):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / ("0" * 64 + ".npz")).write_bytes(b"a feature file of format 2")
    return rank_args(tmp_path, msd(tmp_path / "d"))


def nnunet_file_ending(tmp_path):
    root = tmp_path / "Dataset001_x"
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    for c in range(2):
        Image.fromarray(_square(c) * 100).save(root / "imagesTr" / f"c{c}_0000.png")
        Image.fromarray(_square(c)).save(root / "labelsTr" / f"c{c}.png")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "x": 1},
        "numTraining": 2, "file_ending": ".nii.gz"}))
    return rank_args(tmp_path, root)


def _replace_image(tmp_path, make) -> list[str]:
    """A Decathlon dataset whose image c1 is replaced by what ``make(path)`` creates."""
    root = msd(tmp_path / "d")
    path = root / "imagesTr" / "c1.nii"
    path.unlink()
    make(path)
    return rank_args(tmp_path, root)


def image_is_directory(tmp_path):
    return _replace_image(tmp_path, lambda p: p.mkdir())


def image_is_fifo(tmp_path):
    return _replace_image(tmp_path, os.mkfifo)


def image_is_symlink_loop(tmp_path):
    def loop(path):
        os.symlink(path.with_name("other.nii"), path)
        os.symlink(path, path.with_name("other.nii"))
    return _replace_image(tmp_path, loop)


def image_is_broken_link(tmp_path):
    return _replace_image(tmp_path, lambda p: os.symlink(p.with_name("gone.nii"), p))


def folder_image_is_fifo(tmp_path):
    root = png_folder(tmp_path / "d", [_square(0), _square(1)])
    (root / "images" / "c1.png").unlink()
    os.mkfifo(root / "images" / "c1.png")
    return rank_args(tmp_path, root)


def data_is_a_file(tmp_path):
    (tmp_path / "data.nii").write_bytes(b"")
    return rank_args(tmp_path, tmp_path / "data.nii")


def data_missing(tmp_path):
    return rank_args(tmp_path, tmp_path / "nowhere")


def listed_image_missing(tmp_path):
    root = msd(tmp_path / "d")
    (root / "imagesTr" / "c2.nii").unlink()
    return rank_args(tmp_path, root)


def interpolated_nifti_label(tmp_path):
    root = msd(tmp_path / "d")
    path = root / "labelsTr" / "c0.nii"
    label = _square(0).astype(np.float32) * 0.5
    nib.save(nib.Nifti1Image(label, np.eye(4)), path)
    return rank_args(tmp_path, root)


def label_value_unknown(tmp_path):
    root = msd(tmp_path / "d")
    nib.save(nib.Nifti1Image(_square(0) * 3, np.eye(4)), root / "labelsTr" / "c0.nii")
    return rank_args(tmp_path, root)


def shape_mismatch(tmp_path):
    root = msd(tmp_path / "d")
    nib.save(nib.Nifti1Image(np.zeros((10, 10), np.uint8), np.eye(4)),
             root / "labelsTr" / "c1.nii")
    return rank_args(tmp_path, root)


def dataset_json_invalid(tmp_path):
    root = msd(tmp_path / "d")
    (root / "dataset.json").write_text("{ not json")
    return rank_args(tmp_path, root)


def image_without_label(tmp_path):
    root = png_folder(tmp_path / "d", [_square(0), _square(1)])
    (root / "masks" / "c1.png").unlink()
    return rank_args(tmp_path, root)


CASES_DATA = [
    pytest.param(mixed_01_0255, 0, ["values [0, 255] read as 8-bit grey levels of 2 classes",
                                    "class ids [0, 1]", "wrote"],
                 id="folder masks 0/1 and 0/255 mixed: classes {0,1}"),
    pytest.param(antialiased_masks, 2, ["masks/c1.png", "a mask with values {0, ",
                                        "interpolation or anti-aliasing", "nearest-neighbour",
                                        "dataset.json with 'labels'"],
                 id="folder masks anti-aliased"),
    pytest.param(ids_beside_0255, 2, ["masks/c1.png", "0/255 binary mask", "class ids",
                                      "the same way"],
                 id="folder masks class ids beside 0/255"),
    pytest.param(nan_in_image, 2, ["imagesTr/c1.nii", "4 NaN and 0 Inf", "of 480",
                                   "channel 0, voxel (2, 3)", "nan_to_num"],
                 id="NaN in an image"),
    pytest.param(inf_in_image, 2, ["imagesTr/c2.nii", "0 NaN and 1 Inf"],
                 id="Inf in an image"),
    pytest.param(constant_image, 0, ["imagesTr/c0.nii", "one value (7.0) in all 480 voxels",
                                     "constant image", "wrote"],
                 id="constant image: warning"),
    pytest.param(window_far_larger, 0, ["window (roi) 96x96", "times the size of the image",
                                        "zero padding", "wrote"],
                 id="window far larger than the image: warning"),
    pytest.param(pickled_module, 1, ["u: FAILED", "model.pt", "a whole pickled nn.Module",
                                     "monai.networks", "weights_only=True",
                                     "torch.save(model.state_dict(), path)"],
                 id="checkpoint is a pickled nn.Module"),
    pytest.param(code_running_checkpoint, 1, ["u: FAILED", "pickled Python objects", "mkdir",
                                              "never unpickles"],
                 id="checkpoint whose unpickling runs code: nothing runs"),
    pytest.param(code_running_file_in_bank_init, 2, ["skipped 1", "evil.pt", "never unpickles",
                                                      "nothing written"],
                 id="bank init on a file whose unpickling runs code: nothing runs"),
    pytest.param(not_a_checkpoint, 1, ["u: FAILED", "not a readable torch checkpoint",
                                       "not a torch.save file or a damaged one"],
                 id="checkpoint not a torch file"),
    pytest.param(old_cache_format, 0, ["holds files of cache format ccfv-features-2 or older",
                                       "delete", "wrote"],
                 id="cache of an older format: warning"),
    pytest.param(nnunet_file_ending, 2, ["imagesTr", "2 file(s) end with '.png'",
                                         '"file_ending": \'.nii.gz\'',
                                         'set "file_ending": \'.png\''],
                 id="nnU-Net file_ending mismatch"),
    pytest.param(image_is_directory, 2, ["imagesTr/c1.nii", "a directory, not a file"],
                 id="image is a directory"),
    pytest.param(image_is_fifo, 2, ["imagesTr/c1.nii", "a FIFO (named pipe), not a file"],
                 id="image is a FIFO"),
    pytest.param(image_is_symlink_loop, 2, ["imagesTr/c1.nii", "a symbolic link loop"],
                 id="image is a symlink loop"),
    pytest.param(image_is_broken_link, 2, ["imagesTr/c1.nii", "a broken symbolic link",
                                           "gone.nii"],
                 id="image is a broken symlink"),
    pytest.param(folder_image_is_fifo, 2, ["images/c1.png", "a FIFO (named pipe), not an image"],
                 id="plain-folder image is a FIFO"),
    pytest.param(data_is_a_file, 2, ["data.nii: a file, not a folder", "dataset folder"],
                 id="--data is a file"),
    pytest.param(data_missing, 2, ["nowhere: no such folder"], id="--data missing"),
    pytest.param(listed_image_missing, 2, ["imagesTr/c2.nii", "listed in", "but missing"],
                 id="listed image missing"),
    pytest.param(interpolated_nifti_label, 2, ["labelsTr/c0.nii", "must be integer class ids",
                                               "found 0.5", "not interpolated"],
                 id="NIfTI label with interpolated values"),
    pytest.param(label_value_unknown, 2, ["labelsTr/c0.nii", "label values [3]",
                                          "class ids [0, 1]"],
                 id="label value not in dataset.json labels"),
    pytest.param(shape_mismatch, 2, ["labelsTr/c1.nii", "spatial shape (10, 10) differs",
                                     "same voxel grid"],
                 id="image and label shapes differ"),
    pytest.param(dataset_json_invalid, 2, ["dataset.json: not valid JSON", "line 1"],
                 id="dataset.json not JSON"),
    pytest.param(image_without_label, 2, ["images/c1.png", "an image without label"],
                 id="plain-folder image without label"),
]


def run_cli(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``ccfv ARGV`` in a fresh interpreter (the installed command's entry point)."""
    return subprocess.run([sys.executable, "-m", "ccfv.cli", *argv], cwd=cwd,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONWARNINGS": "default"})


@pytest.mark.parametrize("build, code, words", CASES_DATA)
def test_bad_input(build, code, words, tmp_path):
    argv = build(tmp_path)
    done = run_cli(argv, tmp_path)
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output
    assert "weights_only=False" not in output, output  # never advised, never done
    assert done.returncode == code, output
    missing = [w for w in words if w not in output]
    assert not missing, f"missing {missing} in:\n{output}"
    assert not (tmp_path / "code_ran").exists(), "a checkpoint ran code"
