"""Benchmark tasks in one input format, with a fixed train/test split, cached on disk.

Every task (a Decathlon-layout folder) becomes ``size x size`` images with ``channels``
channels, so that every model of the bank runs on every target:

- at most ``max_cases`` cases, picked with :func:`ccfv.data.select_cases` (seeded);
- intensities: per image, the 0.5 and 99.5 percentiles over all channels map to 0 and 255
  (uint8), whatever the modality's range (any Decathlon folder works, not only pictures);
- grey images are repeated to ``channels`` channels; more channels than ``channels`` is an
  error that says so;
- images resized with MONAI's ``Resize`` (area interpolation), labels with nearest neighbour
  (the aspect ratio is not kept: every image fills the square);
- a seeded split by case: ``round(test_fraction * N)`` test cases (at least 1), the rest train;
  with a ``group`` pattern (a regular expression whose first group is, say, the patient id
  in the case id), by group instead: ``round(test_fraction * G)`` whole groups are test, so
  no patient has slices on both sides.

The prepared task is cached as ``<work>/tasks/<name>-<digest>.npz`` with its split written
in ``split.json`` beside it, and the TRAIN cases are also written as a Decathlon folder
(PNG, ``<work>/tasks/<name>-<digest>/train``) that ``ccfv rank`` scores: the estimators never
see a test case. Networks read ``images / 255``; bank entries read the PNGs with the
``range`` intensity 0..255 -> 0..1, so both see the same numbers.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ccfv.errors import CCFVWarning, UserError


@dataclass
class PreparedTask:
    """One task in the benchmark's input format."""

    name: str
    images: np.ndarray         # uint8 (N, C, S, S)
    labels: np.ndarray         # int64 (N, S, S)
    case_ids: list[str]
    train: np.ndarray          # int64 indices into the cases
    test: np.ndarray
    class_names: dict[int, str]
    train_folder: Path         # Decathlon folder of the train split (PNG), for ccfv rank

    @property
    def n_classes(self) -> int:
        return max(self.class_names) + 1 if self.class_names else int(self.labels.max()) + 1


def _scale(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, [0.5, 99.5])
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((image - lo) / (hi - lo) * 255.0, 0, 255)


def _atomic_savez(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    os.replace(tmp, path)


def _write_train_folder(folder: Path, task: PreparedTask) -> None:
    from PIL import Image

    if (folder / "dataset.json").is_file():
        return
    tmp = folder.with_name(folder.name + ".partial")
    (tmp / "imagesTr").mkdir(parents=True, exist_ok=True)
    (tmp / "labelsTr").mkdir(parents=True, exist_ok=True)
    training = []
    for i in task.train:
        case = task.case_ids[i]
        image = np.moveaxis(task.images[i], 0, -1)
        image = image[..., 0] if image.shape[-1] == 1 else image
        Image.fromarray(image).save(tmp / "imagesTr" / f"{case}.png")
        Image.fromarray(task.labels[i].astype(np.uint8)).save(tmp / "labelsTr" / f"{case}.png")
        training.append({"image": f"./imagesTr/{case}.png", "label": f"./labelsTr/{case}.png"})
    (tmp / "dataset.json").write_text(json.dumps({
        "name": f"{task.name} (benchmark train split)", "tensorImageSize": "2D",
        "labels": {str(k): v for k, v in task.class_names.items()},
        "numTraining": len(training), "training": training}, indent=1))
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    os.replace(tmp, folder)


def _split(ids: list[str], test_fraction: float, split_seed: int, group: str | None,
           task: str) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/test indices, by case or (``group``) by the regex's first group."""
    import re

    n = len(ids)
    if group is None:
        order = np.random.default_rng([split_seed, 7]).permutation(n)
        n_test = min(n - 2, max(1, round(test_fraction * n)))
        return np.sort(order[n_test:]), np.sort(order[:n_test])
    keys = []
    for case in ids:
        match = re.search(group, case)
        if match is None:
            raise UserError(f"task {task}: case id {case!r} does not match the group pattern "
                            f"{group!r}: fix `groups` in the benchmark config")
        keys.append(match.group(1))
    names = sorted(set(keys))
    if len(names) < 2:
        raise UserError(f"task {task}: the group pattern {group!r} finds {len(names)} group(s) "
                        "among the chosen cases; a split by group needs at least 2")
    order = np.random.default_rng([split_seed, 7]).permutation(len(names))
    n_test = min(len(names) - 1, max(1, round(test_fraction * len(names))))
    test_groups = {names[i] for i in order[:n_test]}
    test = np.array([i for i, k in enumerate(keys) if k in test_groups], dtype=np.int64)
    train = np.array([i for i, k in enumerate(keys) if k not in test_groups], dtype=np.int64)
    return train, test


def prepare_task(path: str | Path, work: str | Path, *, size: int, channels: int,
                 max_cases: int, test_fraction: float, split_seed: int,
                 group: str | None = None) -> PreparedTask:
    """Read, normalise, resize and split one task, or load it from ``work`` (see module doc)."""
    import torch
    from monai.transforms import Resize

    from ccfv.data import find_cases, load_case, select_cases

    path = Path(path)
    settings = {"size": size, "channels": channels, "max_cases": max_cases,
                "test_fraction": test_fraction, "split_seed": split_seed,
                "source": str(path.resolve()), "format": 1}
    if group is not None:
        settings["group"] = group  # ungrouped tasks keep the digest they always had
    import hashlib

    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    base = Path(work) / "tasks" / f"{path.name}-{digest}"
    npz = base.with_suffix(".npz")
    dataset = find_cases(path)
    class_names = {int(k): str(v) for k, v in dataset.labels.items()} or {0: "background",
                                                                          1: "foreground"}
    if npz.is_file():
        with np.load(npz) as z:
            task = PreparedTask(path.name, z["images"], z["labels"],
                                [str(c) for c in z["case_ids"]], z["train"], z["test"],
                                class_names, base / "train")
        _write_train_folder(task.train_folder, task)
        return task
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CCFVWarning)
        chosen = select_cases(dataset, min(max_cases, len(dataset.cases)), split_seed)
    chosen = sorted(chosen, key=lambda c: c.case_id)
    resize_image = Resize((size, size), mode="area")
    resize_label = Resize((size, size), mode="nearest")
    images, labels, ids = [], [], []
    for case in chosen:
        loaded = load_case(case, dataset.labels)
        if loaded.ndim != 2:
            raise UserError(f"task {path.name}: case {case.case_id} is {loaded.ndim}D; this "
                            "benchmark track takes 2D tasks")
        image = loaded.image.astype(np.float32)
        if image.shape[0] == 1 and channels > 1:
            image = np.repeat(image, channels, axis=0)
        if image.shape[0] != channels:
            raise UserError(f"task {path.name}: case {case.case_id} has {image.shape[0]} "
                            f"channels but the benchmark input has {channels}: set `channels` "
                            "in the config")
        image = _scale(image)
        image = np.asarray(resize_image(torch.as_tensor(image)))
        label = np.asarray(resize_label(torch.as_tensor(loaded.label[None].astype(np.float32))))
        images.append(np.round(image).astype(np.uint8))
        labels.append(label[0].astype(np.int64))
        ids.append(str(case.case_id).replace("/", "_"))
    n = len(ids)
    if n < 3:
        raise UserError(f"task {path.name}: {n} case(s); the benchmark needs at least 3 "
                        "(train and test)")
    train, test = _split(ids, test_fraction, split_seed, group, path.name)
    task = PreparedTask(path.name, np.stack(images), np.stack(labels), ids, train, test,
                        class_names, base / "train")
    _atomic_savez(npz, images=task.images, labels=task.labels, case_ids=np.array(ids),
                  train=train, test=test)
    split = {"task": path.name, "settings": settings, "group": group,
             "train": [ids[i] for i in train], "test": [ids[i] for i in test]}
    base.mkdir(parents=True, exist_ok=True)
    (base / "split.json").write_text(json.dumps(split, indent=1))
    _write_train_folder(task.train_folder, task)
    return task
