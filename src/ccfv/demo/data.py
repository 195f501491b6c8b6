"""The demo's target and source data, made offline from the MNI152 template inside nilearn.

nilearn's wheel ships the ICBM 2009a T1 template with its grey- and white-matter probability
maps (2 mm). From them this module writes small Decathlon-layout datasets: each *case* is a
crop of the template at its own position, with its own smooth intensity bias and noise (a
stand-in for scanner variation), so the cases differ the way real acquisitions do while the
anatomy is real. Tasks:

- ``brain_tissue`` (the demo's target): 1 = grey matter, 2 = white matter;
- ``brain_mask``: 1 = brain (grey + white matter + the rest of the template's brain mask);
- ``white_matter``: 1 = white matter;
- ``intensity_bands``: 1 = the brightest third of the head's intensities (an unrelated,
  intensity-only task, a weak source for tissue segmentation).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from ccfv.files import atomic_write

TASKS = ("brain_tissue", "brain_mask", "white_matter", "intensity_bands")
CROP = (48, 56, 40)


def _template():
    from nilearn import datasets  # the template files ship inside the nilearn wheel

    t1 = datasets.load_mni152_template(resolution=2)
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=2).dataobj, dtype=np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=2).dataobj, dtype=np.float32)
    mask = np.asarray(datasets.load_mni152_brain_mask(resolution=2).dataobj) > 0
    return np.asarray(t1.dataobj, dtype=np.float32), gm, wm, mask, t1.affine


def _labels(task, t1, gm, wm, mask):
    if task == "brain_tissue":
        return np.where(wm > 0.5, 2, np.where(gm > 0.5, 1, 0))
    if task == "brain_mask":
        return ((gm > 0.5) | (wm > 0.5) | mask).astype(np.int64)
    if task == "white_matter":
        return (wm > 0.5).astype(np.int64)
    head = t1[t1 > 0.05]
    return (t1 > np.quantile(head, 2 / 3)).astype(np.int64)


LABEL_NAMES = {
    "brain_tissue": {"0": "background", "1": "grey matter", "2": "white matter"},
    "brain_mask": {"0": "background", "1": "brain"},
    "white_matter": {"0": "background", "1": "white matter"},
    "intensity_bands": {"0": "background", "1": "bright"},
}


def write_task(task: str, root: Path, n_cases: int = 8, seed: int = 0) -> Path:
    """Write ``n_cases`` crops of the template for ``task`` in Decathlon layout under ``root``.

    Returns the dataset folder; a folder already complete (its dataset.json written last) is
    reused as it is.
    """
    folder = Path(root) / task
    if (folder / "dataset.json").exists():
        return folder
    t1, gm, wm, mask, affine = _template()
    labels = _labels(task, t1, gm, wm, mask)
    rng = np.random.default_rng([seed, TASKS.index(task)])
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    centre = np.array(t1.shape) // 2
    training = []
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in CROP], indexing="ij"))
    for c in range(n_cases):
        jitter = rng.integers(-12, 13, size=3)
        start = np.clip(centre + jitter - np.array(CROP) // 2, 0, np.array(t1.shape) - CROP)
        window = tuple(slice(s, s + n) for s, n in zip(start, CROP))
        bias = np.exp(0.25 * np.tensordot(rng.normal(size=3), grid, axes=1))
        image = t1[window] * bias * rng.uniform(0.8, 1.2) * 1000
        image = image + rng.normal(scale=20.0, size=CROP)
        crop_affine = affine.copy()
        crop_affine[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]
        name = f"{task}_{c:03d}.nii.gz"
        nib.save(nib.Nifti1Image(image.astype(np.float32), crop_affine), folder / "imagesTr" / name)
        nib.save(
            nib.Nifti1Image(labels[window].astype(np.uint8), crop_affine),
            folder / "labelsTr" / name,
        )
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {
        "name": task,
        "description": f"{task} on crops of the MNI152 2009a template (nilearn)",
        "tensorImageSize": "3D",
        "modality": {"0": "T1w MRI"},
        "labels": LABEL_NAMES[task],
        "numTraining": n_cases,
        "training": training,
        "licence": "ICBM 2009a template: free use with attribution (see nilearn)",
    }
    atomic_write(folder / "dataset.json", json.dumps(meta, indent=1))
    return folder
