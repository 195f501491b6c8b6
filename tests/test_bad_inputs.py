"""The bad-input matrix (issue 14): every bad input and fault a new user can hit, run through the
real command line in a subprocess. One parametrised test, ``test_bad_input``, runs every case and
asserts the exit code, that no traceback is printed, the key words of the message, that
torch's ``weights_only=False`` is never advised, and that no checkpoint ran code (a file named
``code_ran`` appearing in the case's folder would mean it did).

A case is ``pytest.param(build, exit_code, [key words], id=...)`` where ``build(folder)`` writes
what the case needs under ``folder`` and returns the arguments after ``ccfv``.

- ``CASES_DATA``: data, labels, cache and checkpoints.
- ``CASES_RUN``: runs, arguments and failures (``rank``, ``demo``, ``evaluate``, ``layers``):
  options checked before any work, one model's failure kept to that model, knowable causes
  named.

Exit codes: 2 = refused before any work (a one-line ``ccfv CMD: error: ...``), 1 = the run
finished and wrote its report but some model failed, 0 = done (warnings only). The tiny data
(24x20 pictures and volumes, 24x24x16 volumes, 32x32 pictures) and the 4-8-16 channel UNets keep
a model's feature pass under a second.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

UNET2D = {
    "spatial_dims": 2,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [4, 8],
    "strides": [2],
}
SIZE = (24, 20)


# --------------------------------------------------------------------------- small builders


def _square(c: int) -> np.ndarray:
    label = np.zeros(SIZE, np.uint8)
    label[4 + c : 14 + c, 5:15] = 1
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
    entry = {
        "name": "u",
        "network": "monai.networks.nets.UNet",
        "args": UNET2D,
        "seed": 0,
        "layers": "auto",
        "preprocessing": {"intensity": {"kind": "zscore"}, "roi": list(roi)},
        **extra,
    }
    path = tmp_path / "bank.yaml"
    path.write_text(yaml.safe_dump({"models": [entry]}, sort_keys=False))
    return path


def rank_args(tmp_path: Path, data: Path, bank_file: Path | None = None) -> list[str]:
    return [
        "rank",
        "--bank",
        str(bank_file or bank(tmp_path)),
        "--data",
        str(data),
        "--bootstrap",
        "0",
        "--quiet",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--out",
        str(tmp_path / "out"),
    ]


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
    return rank_args(tmp_path, msd(tmp_path / "d", edit=lambda c, im: im * 0 + 7 if c == 0 else im))


def window_far_larger(tmp_path):
    return rank_args(tmp_path, msd(tmp_path / "d"), bank(tmp_path, roi=(96, 96)))


def _checkpoint_bank(tmp_path, obj) -> list[str]:
    torch.save(obj, tmp_path / "model.pt")
    return rank_args(
        tmp_path, msd(tmp_path / "d"), bank(tmp_path, checkpoint=str(tmp_path / "model.pt"))
    )


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
    return rank_args(
        tmp_path, msd(tmp_path / "d"), bank(tmp_path, checkpoint=str(tmp_path / "model.pt"))
    )


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
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "MRI"},
                "labels": {"background": 0, "x": 1},
                "numTraining": 2,
                "file_ending": ".nii.gz",
            }
        )
    )
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
    nib.save(nib.Nifti1Image(np.zeros((10, 10), np.uint8), np.eye(4)), root / "labelsTr" / "c1.nii")
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
    pytest.param(
        mixed_01_0255,
        0,
        ["values [0, 255] read as 8-bit grey levels of 2 classes", "class ids [0, 1]", "wrote"],
        id="folder masks 0/1 and 0/255 mixed: classes {0,1}",
    ),
    pytest.param(
        antialiased_masks,
        2,
        [
            "masks/c1.png",
            "a mask with values {0, ",
            "interpolation or anti-aliasing",
            "nearest-neighbour",
            "dataset.json with 'labels'",
        ],
        id="folder masks anti-aliased",
    ),
    pytest.param(
        ids_beside_0255,
        2,
        ["masks/c1.png", "0/255 binary mask", "class ids", "the same way"],
        id="folder masks class ids beside 0/255",
    ),
    pytest.param(
        nan_in_image,
        2,
        ["imagesTr/c1.nii", "4 NaN and 0 Inf", "of 480", "channel 0, voxel (2, 3)", "nan_to_num"],
        id="NaN in an image",
    ),
    pytest.param(inf_in_image, 2, ["imagesTr/c2.nii", "0 NaN and 1 Inf"], id="Inf in an image"),
    pytest.param(
        constant_image,
        0,
        ["imagesTr/c0.nii", "one value (7.0) in all 480 voxels", "constant image", "wrote"],
        id="constant image: warning",
    ),
    pytest.param(
        window_far_larger,
        0,
        ["window (roi) 96x96", "times the size of the image", "zero padding", "wrote"],
        id="window far larger than the image: warning",
    ),
    pytest.param(
        pickled_module,
        1,
        [
            "u: FAILED",
            "model.pt",
            "a whole pickled nn.Module",
            "monai.networks",
            "weights_only=True",
            "torch.save(model.state_dict(), path)",
        ],
        id="checkpoint is a pickled nn.Module",
    ),
    pytest.param(
        code_running_checkpoint,
        1,
        ["u: FAILED", "pickled Python objects", "mkdir", "never unpickles"],
        id="checkpoint whose unpickling runs code: nothing runs",
    ),
    pytest.param(
        code_running_file_in_bank_init,
        2,
        ["skipped 1", "evil.pt", "never unpickles", "nothing written"],
        id="bank init on a file whose unpickling runs code: nothing runs",
    ),
    pytest.param(
        not_a_checkpoint,
        1,
        ["u: FAILED", "not a readable torch checkpoint", "not a torch.save file or a damaged one"],
        id="checkpoint not a torch file",
    ),
    pytest.param(
        old_cache_format,
        0,
        ["holds files of cache format ccfv-features-2 or older", "delete", "wrote"],
        id="cache of an older format: warning",
    ),
    pytest.param(
        nnunet_file_ending,
        2,
        [
            "imagesTr",
            "2 file(s) end with '.png'",
            "\"file_ending\": '.nii.gz'",
            "set \"file_ending\": '.png'",
        ],
        id="nnU-Net file_ending mismatch",
    ),
    pytest.param(
        image_is_directory,
        2,
        ["imagesTr/c1.nii", "a directory, not a file"],
        id="image is a directory",
    ),
    pytest.param(
        image_is_fifo,
        2,
        ["imagesTr/c1.nii", "a FIFO (named pipe), not a file"],
        id="image is a FIFO",
    ),
    pytest.param(
        image_is_symlink_loop,
        2,
        ["imagesTr/c1.nii", "a symbolic link loop"],
        id="image is a symlink loop",
    ),
    pytest.param(
        image_is_broken_link,
        2,
        ["imagesTr/c1.nii", "a broken symbolic link", "gone.nii"],
        id="image is a broken symlink",
    ),
    pytest.param(
        folder_image_is_fifo,
        2,
        ["images/c1.png", "a FIFO (named pipe), not an image"],
        id="plain-folder image is a FIFO",
    ),
    pytest.param(
        data_is_a_file,
        2,
        ["data.nii: a file, not a folder", "dataset folder"],
        id="--data is a file",
    ),
    pytest.param(data_missing, 2, ["nowhere: no such folder"], id="--data missing"),
    pytest.param(
        listed_image_missing,
        2,
        ["imagesTr/c2.nii", "listed in", "but missing"],
        id="listed image missing",
    ),
    pytest.param(
        interpolated_nifti_label,
        2,
        ["labelsTr/c0.nii", "must be integer class ids", "found 0.5", "not interpolated"],
        id="NIfTI label with interpolated values",
    ),
    pytest.param(
        label_value_unknown,
        2,
        ["labelsTr/c0.nii", "label values [3]", "class ids [0, 1]"],
        id="label value not in dataset.json labels",
    ),
    pytest.param(
        shape_mismatch,
        2,
        ["labelsTr/c1.nii", "spatial shape (10, 10) differs", "same voxel grid"],
        id="image and label shapes differ",
    ),
    pytest.param(
        dataset_json_invalid,
        2,
        ["dataset.json: not valid JSON", "line 1"],
        id="dataset.json not JSON",
    ),
    pytest.param(
        image_without_label,
        2,
        ["images/c1.png", "an image without label"],
        id="plain-folder image without label",
    ),
]


# ----------------------------------------------------------------- runs, arguments and failures

SRC = Path(__file__).resolve().parents[1] / "src"


def ccfv(args, cwd, **kwargs):
    """Run ``python -m ccfv.cli ARGS`` (this checkout's ccfv first on the path)."""
    env = {
        **os.environ,
        "PYTHONWARNINGS": "default",
        "PYTHONPATH": os.pathsep.join([str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    return subprocess.run(
        [sys.executable, "-m", "ccfv.cli", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        **kwargs,
    )


# --- tiny data and banks ------------------------------------------------------------------------


def volumes(root: Path) -> Path:
    """Three 24x24x16 volumes in Decathlon layout, classes 1 and 2 (boxes)."""
    data = root / "vol"
    if (data / "dataset.json").exists():
        return data
    (data / "imagesTr").mkdir(parents=True)
    (data / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    training = []
    for c in range(3):
        label = np.zeros((24, 24, 16), np.uint8)
        label[4 + c : 12 + c, 4:12, 4:10] = 1
        label[14:20, 12:20, 6:12] = 2
        image = 100.0 * label + rng.normal(0, 20, label.shape)
        nib.save(
            nib.Nifti1Image(image.astype(np.float32), np.eye(4)), data / f"imagesTr/c{c}.nii.gz"
        )
        nib.save(nib.Nifti1Image(label, np.eye(4)), data / f"labelsTr/c{c}.nii.gz")
        training.append({"image": f"./imagesTr/c{c}.nii.gz", "label": f"./labelsTr/c{c}.nii.gz"})
    (data / "dataset.json").write_text(
        json.dumps(
            {
                "name": "boxes",
                "labels": {"0": "background", "1": "a", "2": "b"},
                "tensorImageSize": "3D",
                "training": training,
            }
        )
    )
    return data


def pictures(root: Path) -> Path:
    """Three 32x32 grey pictures with 0/1 masks in images/ + labels/."""
    data = root / "pic"
    if data.exists():
        return data
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    rng = np.random.default_rng(1)
    for c in range(3):
        label = np.zeros((32, 32), np.uint8)
        label[8 + c : 20 + c, 8:20] = 1
        image = (120 * label + rng.normal(60, 10, label.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(image).save(data / f"images/c{c}.png")
        Image.fromarray(label).save(data / f"labels/c{c}.png")
    return data


def unet(name, dims=3, roi=(16, 16, 16), in_channels=1, seed=0):
    entry = {
        "name": name,
        "network": "monai.networks.nets.UNet",
        "args": {
            "spatial_dims": dims,
            "in_channels": in_channels,
            "out_channels": 2,
            "channels": [4, 8, 16],
            "strides": [2, 2],
        },
        "seed": seed,
        "layers": "auto",
        "preprocessing": {"intensity": {"kind": "zscore"}},
    }
    if roi:
        entry["preprocessing"]["roi"] = list(roi)
    return entry


def run_bank(root: Path, *models, name="bank.yaml") -> Path:
    path = root / name
    path.write_text(yaml.safe_dump({"models": list(models)}, sort_keys=False))
    return path


def good_bank(root):
    return run_bank(root, unet("a"), unet("b", roi=(16, 16, 8), seed=1))


def run_rank_args(root, *extra, models=None, data=None):
    """``rank`` of the good bank (or ``models``) on the volumes, output and cache in root."""
    bank_file = run_bank(root, *models) if models else good_bank(root)
    return [
        "rank",
        "--bank",
        bank_file,
        "--data",
        data or volumes(root),
        "--out",
        root / "out",
        "--cache-dir",
        root / "cache",
        "--quiet",
        "--bootstrap",
        "0",
        *extra,
    ]


def a_file(root, name="taken"):
    path = root / name
    path.write_text("not a folder\n")
    return path


def scores_and_truth(root):
    scores = root / "scores.csv"
    scores.write_text("model,ccfv\na,0.1\nb,0.2\nc,0.3\n")
    truth = root / "truth.csv"
    truth.write_text("model,dice\na,0.5\nb,0.6\nc,0.7\n")
    return scores, truth


def cuda_available():
    import torch

    return torch.cuda.is_available()


ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False

CASES_RUN = [
    # --- refused before any work (exit 2), rank -------------------------------------------------
    pytest.param(
        lambda t: run_rank_args(t, "--out", a_file(t)),
        2,
        ["ccfv rank: error", "--out", "is a file"],
        id="rank-out-is-a-file",
    ),
    pytest.param(
        lambda t: run_rank_args(t, "--cache-dir", a_file(t)),
        2,
        ["--cache-dir", "is a file"],
        id="rank-cache-dir-is-a-file",
    ),
    pytest.param(
        lambda t: run_rank_args(t, "--cache-dir", a_file(t) / "sub"),
        2,
        ["--cache-dir", "cannot write there"],
        id="rank-cache-dir-below-a-file",
    ),
    pytest.param(
        lambda t: (os.chmod(t, 0o555), run_rank_args(t, "--cache-dir", t / "ro"))[1],
        2,
        ["--cache-dir", "cannot write there", "Permission denied"],
        id="rank-cache-dir-unwritable",
        marks=pytest.mark.skipif(ROOT, reason="root may write anywhere"),
    ),
    pytest.param(
        lambda t: run_rank_args(t, "--device", "cuda"),
        2,
        ["--device cuda", "no CUDA GPU", "--device cpu"],
        id="rank-cuda-without-cuda",
        marks=pytest.mark.skipif("cuda_available()", reason="this machine has CUDA"),
    ),
    pytest.param(
        lambda t: run_rank_args(t, "--device", "gpu"),
        2,
        ["--device 'gpu'", "not a torch device", "cuda:N"],
        id="rank-device-gpu",
    ),
    pytest.param(
        lambda t: run_rank_args(t, "--cases", "0"), 2, ["--cases 0", ">= 1"], id="rank-cases-0"
    ),
    pytest.param(
        lambda t: run_rank_args(t, "--cases", "-2"),
        2,
        ["--cases -2", ">= 1"],
        id="rank-cases-negative",
    ),
    pytest.param(
        lambda t: run_rank_args(t, "--bootstrap", "-5"),
        2,
        ["--bootstrap -5", "0 to turn the bootstrap off"],
        id="rank-bootstrap-negative",
    ),
    pytest.param(
        lambda t: run_rank_args(t, "--methods", "ccfv[distance=foo]"),
        2,
        ["ccfv[distance=foo]", "unknown distance 'foo'", "wasserstein", "before any model runs"],
        id="rank-method-option-bad-value",
    ),
    pytest.param(
        lambda t: run_rank_args(t, "--methods", "ccfv,logme,ccfv[distance=foo]"),
        2,
        ["ccfv[distance=foo]", "before any model runs"],
        id="rank-one-method-of-three-bad-value",
    ),
    pytest.param(
        lambda t: run_rank_args(t, "--methods", "ccfv[s=foo]"),
        2,
        ["ccfv[s=foo]", "TypeError", "before any model runs"],
        id="rank-method-option-wrong-type",
    ),
    pytest.param(
        lambda t: run_rank_args(t, "--cases", "1"),
        2,
        ["--methods ccfv on 1 target case(s)", "at least 2", "before any model runs"],
        id="rank-one-case-ccfv-without-bootstrap",
    ),
    pytest.param(
        lambda t: run_rank_args(t, "--cases", "1", "--bootstrap", "100"),
        2,
        ["--cases 1 with --bootstrap 100", "--bootstrap 0"],
        id="rank-one-case-with-bootstrap",
    ),
    # already refused before this issue: kept in the matrix
    pytest.param(
        lambda t: ["rank", "--bank", t / "missing.yaml", "--data", volumes(t)],
        2,
        ["missing.yaml"],
        id="rank-bank-missing",
    ),
    pytest.param(
        lambda t: run_rank_args(t, "--methods", "nope"),
        2,
        ["unknown method 'nope'", "known methods are"],
        id="rank-unknown-method",
    ),
    pytest.param(
        lambda t: run_rank_args(t, "--methods", "ccfv[foo=1]"),
        2,
        ["'foo=1' is not an option of ccfv"],
        id="rank-unknown-method-option",
    ),
    pytest.param(
        lambda t: run_rank_args(t, "--retries", "-1"),
        2,
        ["--retries -1"],
        id="rank-retries-negative",
    ),
    pytest.param(
        lambda t: run_rank_args(t, "--address", "1.2.3.4:6379"),
        2,
        ["--address", "--backend ray"],
        id="rank-address-without-ray",
    ),
    pytest.param(
        lambda t: run_rank_args(t, "--backend", "ray", "--device", "cuda:1"),
        2,
        ["--device cuda:1 with --backend ray"],
        id="rank-ray-device-index",
    ),
    # --- refused before any work, demo (before its data are written) ------------------------------
    pytest.param(
        lambda t: ["demo", "--out", a_file(t), "--cache-dir", t / "cache"],
        2,
        ["ccfv demo: error", "--out", "is a file"],
        id="demo-out-is-a-file",
    ),
    pytest.param(
        lambda t: ["demo", "--cache-dir", a_file(t)],
        2,
        ["ccfv demo: error", "--cache-dir", "is a file"],
        id="demo-cache-dir-is-a-file",
    ),
    pytest.param(
        lambda t: ["demo", "--cache-dir", t / "cache", "--device", "gpu"],
        2,
        ["ccfv demo: error", "not a torch device"],
        id="demo-device-gpu",
    ),
    pytest.param(
        lambda t: ["demo", "--cache-dir", t / "cache", "--cases", "0"],
        2,
        ["ccfv demo: error", "--cases 0"],
        id="demo-cases-0",
    ),
    pytest.param(
        lambda t: ["demo", "--cache-dir", t / "cache", "--bootstrap", "-5"],
        2,
        ["ccfv demo: error", "--bootstrap -5"],
        id="demo-bootstrap-negative",
    ),
    pytest.param(
        lambda t: ["demo", "--cache-dir", t / "cache", "--methods", "ccfv,ccfv[distance=foo]"],
        2,
        ["ccfv demo: error", "unknown distance 'foo'"],
        id="demo-method-option-bad-value",
    ),
    # --- evaluate and layers ---------------------------------------------------------------------
    pytest.param(
        lambda t: [
            "evaluate",
            *sum(zip(("--scores", "--truth"), scores_and_truth(t)), ()),
            "--out",
            a_file(t),
        ],
        2,
        ["ccfv evaluate: error", "--out", "is a file"],
        id="evaluate-out-is-a-file",
    ),
    pytest.param(
        lambda t: [
            "evaluate",
            "--scores",
            t / "none.csv",
            "--truth",
            scores_and_truth(t)[1],
            "--out",
            t / "ev",
        ],
        2,
        ["none.csv"],
        id="evaluate-scores-missing",
    ),
    pytest.param(
        lambda t: ["layers", "--bank", good_bank(t), "--shape", "1,a,16"],
        2,
        ["ccfv layers: error", "--shape 1,a,16", "C,X,Y"],
        id="layers-shape-not-numbers",
    ),
    pytest.param(
        lambda t: ["layers", "--bank", good_bank(t), "--model", "nope"],
        2,
        ["no model named 'nope'", "a, b"],
        id="layers-model-missing",
    ),
    pytest.param(
        lambda t: ["layers", "--bank", run_bank(t, unet("a"), unet("odd", roi=(18, 18, 10)))],
        1,
        [
            "odd: FAILED",
            "needs a window divisible by 4",
            "use 20x20x12",
            "RuntimeError",
            "1 of 2 model(s) failed",
            "layers used",
        ],
        id="layers-one-model-fails",
    ),
    # --- one model's failure is that model's failure (exit 1, the others scored and written) ------
    pytest.param(
        lambda t: run_rank_args(
            t, models=[unet("a"), unet("odd", roi=(18, 18, 10)), unet("c", roi=(16, 16, 8))]
        ),
        1,
        [
            "odd: FAILED",
            "UNet with strides 2,2 needs a window divisible by 4",
            "roi 18x18x10 is not: use 20x20x12",
            "a: ccfv",
            "c: ccfv",
            "wrote",
            "1 model(s) failed: odd",
        ],
        id="rank-window-not-divisible-by-stride",
    ),
    pytest.param(
        lambda t: run_rank_args(
            t, models=[unet("u3"), unet("u2", dims=2, roi=(16, 16))], data=pictures(t)
        ),
        1,
        [
            "u3: FAILED",
            "a 3D network (Conv3d layers) on 2D target data",
            "spatial_dims: 2",
            "u2: ccfv",
            "wrote",
        ],
        id="rank-3d-network-on-2d-data",
    ),
    pytest.param(
        lambda t: run_rank_args(
            t, models=[unet("u3", roi=None), unet("u2", dims=2, roi=(16, 16))], data=pictures(t)
        ),
        1,
        ["u3: FAILED", "a 3D network (Conv3d layers) on 2D target data", "u2: ccfv"],
        id="rank-3d-network-without-roi-on-2d-data",
    ),
    pytest.param(
        lambda t: run_rank_args(t, models=[unet("a"), unet("two", in_channels=2)]),
        1,
        ["two: FAILED: RuntimeError", "traceback in", "failures.log", "a: ccfv", "wrote"],
        id="rank-unexpected-error-in-one-model",
    ),
    pytest.param(
        lambda t: run_rank_args(t, models=[unet("u3"), unet("v3", seed=1)], data=pictures(t)),
        1,
        ["2 model(s) failed: u3, v3", "wrote"],
        id="rank-every-model-fails",
    ),
]


@pytest.mark.parametrize("build, exit_code, keywords", CASES_DATA + CASES_RUN)
def test_bad_input(build, exit_code, keywords, tmp_path):
    work = tmp_path / "case"
    work.mkdir()
    try:
        args = build(work)
        done = ccfv(args, cwd=tmp_path)
    finally:
        os.chmod(work, 0o755)
    text = done.stdout + done.stderr
    assert done.returncode == exit_code, text
    assert "Traceback" not in text, text
    assert "weights_only=False" not in text, text  # never advised, never done
    missing = [word for word in keywords if word not in text]
    assert not missing, f"missing {missing} in:\n{text}"
    assert not (work / "code_ran").exists(), "a checkpoint ran code"
    if exit_code == 2:  # refused: one line of error, and no model ran
        errors = [line for line in done.stderr.splitlines() if ": error: " in line]
        assert len(errors) == 1, done.stderr
        assert "FAILED" not in text and "wrote" not in text


# --- what the matrix's exit-1 cases leave behind --------------------------------------------------


def test_failed_models_lose_no_scores_and_get_no_rank(tmp_path):
    """A model failing in the middle of the bank: the others are scored and written, its
    traceback (an unexpected error) is in failures.log, it has no rank number; when every
    model fails there is no rank 1 at all."""
    models = [
        unet("a"),
        unet("two", in_channels=2),
        unet("odd", roi=(18, 18, 10)),
        unet("c", roi=(16, 16, 8)),
    ]
    done = ccfv(run_rank_args(tmp_path, "--methods", "ccfv,logme", models=models), cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    out = tmp_path / "out"
    saved = json.loads((out / "scores.json").read_text())
    assert saved["ranking"][:2] == sorted(["a", "c"], key=lambda m: -saved["scores"][m]["ccfv"])
    for model in ("a", "c"):
        assert all(np.isfinite(saved["scores"][model][m]) for m in ("ccfv", "logme"))
    assert saved["scores"]["two"] == {"ccfv": None, "logme": None}
    assert "needs a window divisible by 4" in saved["details"]["failures"]["odd"]
    log = (out / "failures.log").read_text()
    assert "=== two" in log and "Traceback" in log and "=== odd" not in log
    report = (out / "report.md").read_text()
    assert "## Failures" in report and "`odd`: UNet with strides 2,2" in report
    rows = [line.split() for line in report.split("```")[1].splitlines()[3:]]
    assert [r[0] for r in rows] == ["1", "2", "-", "-"]
    assert {r[1] for r in rows[2:]} == {"two", "odd"}

    done = ccfv(
        run_rank_args(tmp_path, models=[unet("u3"), unet("v3", seed=1)], data=pictures(tmp_path)),
        cwd=tmp_path,
    )
    table = (tmp_path / "out" / "report.md").read_text().split("```")[1]
    assert done.returncode == 1
    assert [line.split()[0] for line in table.splitlines()[3:]] == ["-", "-"]


def test_ctrl_c_says_what_is_cached(tmp_path):
    """SIGINT after the first model's score: one line naming the cache and the models whose
    features are complete there, exit 130, no KeyboardInterrupt traceback; the same command
    then resumes from the cache."""
    models = [unet(f"m{i}", roi=(8, 8, 8), seed=i) for i in range(8)]
    args = run_rank_args(tmp_path, models=models)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "ccfv.cli", *map(str, args)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stdout:
        if line.startswith("m0: ccfv"):
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    lines = [line for line in err.splitlines() if "interrupted" in line]
    assert len(lines) == 1, err
    assert "ccfv rank: interrupted (Ctrl-C): features of" in lines[0]
    assert str((tmp_path / "cache").resolve()) in lines[0]
    assert "(m0" in lines[0] and "resumes" in lines[0]
    again = ccfv(args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "m0: ccfv" in again.stdout and "(cached features)" in again.stdout.split("m1:")[0]


def test_notes_on_missing_classes_fit_the_selection(tmp_path):
    """A class of dataset.json absent from every case: with all cases selected the note does
    not advise selecting more cases; with a subset it does; either way report.md holds it."""
    data = volumes(tmp_path)
    meta = json.loads((data / "dataset.json").read_text())
    meta["labels"]["3"] = "never drawn"
    (data / "dataset.json").write_text(json.dumps(meta))
    done = ccfv(run_rank_args(tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = (tmp_path / "out" / "report.md").read_text()
    for text in (done.stdout, report):
        assert "class(es) [3]" in text and "all of them are used" in text
        assert "select more cases" not in text
    done = ccfv(run_rank_args(tmp_path, "--cases", "2"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Notes" in report and "select more cases (--cases)" in report


def test_method_check_refuses_only_what_cannot_score():
    """The before-any-model check of --methods accepts every registered method with its
    default options on 2 to 10 cases and 2 to 6 classes (no false refusal), options naming
    layers included, and refuses CC-FV on 1 case (it compares cases) but not LogME or LEEP."""
    from ccfv.errors import UserError
    from ccfv.estimators.registry import ESTIMATORS
    from ccfv.rank import check_methods

    for n_cases in (2, 3, 10):
        for n_classes in (2, 3, 6):
            check_methods(list(ESTIMATORS), n_cases, n_classes)
    check_methods(["ccfv[layers=last]", "leep[layer=model.2:input]", "parc[pca_dim=64]"], 3, 3)
    check_methods(["logme", "leep", "gbc"], 1, 3)
    with pytest.raises(UserError, match="on 1 target case.*at least 2 are needed"):
        check_methods(["logme", "ccfv"], 1, 3)
    with pytest.raises(UserError, match=r"ccfv-paper\[distance=foo\].*unknown distance"):
        check_methods(["ccfv", "ccfv-paper[distance=foo]"], 5, 3)
