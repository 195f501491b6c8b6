"""Benchmark tasks in one input format, with a fixed train/test split, cached on disk.

Every task (a Decathlon-layout folder) becomes images of one ``size`` (``size x size`` 2D
images, or a 3D ``[x, y, z]`` grid for 3D volumes) with ``channels`` channels, so that every
model of the bank runs on every target:

- at most ``max_cases`` cases, picked with :func:`ccfv.data.select_cases` (seeded);
- intensities: per image, the 0.5 and 99.5 percentiles over all channels map to 0 and 255
  (uint8), whatever the modality's range (any Decathlon folder works, not only pictures);
- grey images are repeated to ``channels`` channels; more channels than ``channels`` is an
  error that says so;
- images resized with MONAI's ``Resize`` (area interpolation), labels with nearest neighbour
  (the aspect ratio is not kept: every image fills the grid);
- a seeded split by case: ``round(test_fraction * N)`` test cases (at least 1), the rest train;
  with a ``group`` pattern (a regular expression whose first group is, say, the patient id
  in the case id), by group instead: ``round(test_fraction * G)`` whole groups are test, so
  no patient has slices on both sides.
- ``train_cases`` (protocol v2, the low-data regime): exactly that many cases (groups with a
  ``group`` pattern) are target-train, seeded, and every other case is test, so that the test
  split is as large as the task allows (``test_fraction`` is then not used).
- ``reserve`` (``source_cases`` in the config): that many cases (or groups) of the folder,
  seeded, are set aside for source tasks derived from it and never enter its own split, so a
  target's subjects are split three ways: sources / target-train / target-test. A derived task
  (``derived={"liver": [1]}``) reads exactly those reserved cases, with its labels remapped
  (here: class 1 = the folder's label 1, everything else background).

The prepared task is cached as ``<work>/tasks/<name>-<digest>.npz`` with its split written
in ``split.json`` beside it, and the TRAIN cases are also written as a Decathlon folder
(``<work>/tasks/<name>-<digest>/train``; PNG in 2D, NIfTI with an identity affine in 3D) that
``ccfv rank`` scores: the estimators never see a test case. Networks read ``images / 255``;
bank entries read these files with the ``range`` intensity 0..255 -> 0..1, so both see the
same numbers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ccfv.bench.sizes import spatial_size
from ccfv.errors import UserError, collect_ccfv_warnings
from ccfv.files import atomic_write


@dataclass
class PreparedTask:
    """One task in the benchmark's input format."""

    name: str
    images: np.ndarray  # uint8 (N, C, *size)
    labels: np.ndarray  # int64 (N, *size)
    case_ids: list[str]
    train: np.ndarray  # int64 indices into the cases
    test: np.ndarray
    class_names: dict[int, str]
    train_folder: Path  # Decathlon folder of the train split, for ccfv rank
    reserved: list[str] | None = None  # case ids set aside for the derived source tasks

    @property
    def n_classes(self) -> int:
        return max(self.class_names) + 1 if self.class_names else int(self.labels.max()) + 1


@dataclass
class NativeTask:
    """A target at its native resolution (the ``native`` key of the benchmark config): every
    case on its own grid, so the images of a task may differ in size. Fine-tuned on patches,
    predicted by sliding windows (:func:`ccfv.bench.run.finetune`)."""

    name: str
    images: list[np.ndarray]  # uint8 (C, *spatial_i) per case
    labels: list[np.ndarray]  # int64 (*spatial_i) per case: the label's own grid
    case_ids: list[str]
    train: np.ndarray  # int64 indices into the cases
    test: np.ndarray
    class_names: dict[int, str]
    train_folder: Path  # Decathlon folder of the train split at native resolution

    @property
    def n_classes(self) -> int:
        if self.class_names:
            return max(self.class_names) + 1
        return int(max(int(label.max()) for label in self.labels)) + 1

    @property
    def shapes(self) -> list[str]:
        """The distinct label grids of the cases, e.g. ``["584x565"]``, sorted."""
        return sorted({"x".join(map(str, label.shape)) for label in self.labels})


def _scale(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, [0.5, 99.5])
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((image - lo) / (hi - lo) * 255.0, 0, 255)


def _channels_scaled(image: np.ndarray, channels: int, task: str, case: str) -> np.ndarray:
    """A case's image ``(C, *spatial)`` with ``channels`` channels (grey repeated), its
    intensities mapped to 0..255 by :func:`_scale` (float32, not yet rounded)."""
    image = np.asarray(image, dtype=np.float32)
    if image.shape[0] == 1 and channels > 1:
        image = np.repeat(image, channels, axis=0)
    if image.shape[0] != channels:
        raise UserError(
            f"task {task}: case {case} has {image.shape[0]} channels but the benchmark "
            f"input has {channels}: set `channels` in the config"
        )
    return _scale(image)


def _atomic_savez(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda handle: np.savez_compressed(handle, **arrays))


def _write_case(tmp: Path, case: str, image: np.ndarray, label: np.ndarray) -> dict:
    """One train case as PNG (2D) or NIfTI with an identity affine (3D); its dataset entry."""
    if label.ndim == 2:
        from PIL import Image

        pixels = np.moveaxis(image, 0, -1)
        Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(
            tmp / "imagesTr" / f"{case}.png"
        )
        Image.fromarray(label.astype(np.uint8)).save(tmp / "labelsTr" / f"{case}.png")
        return {"image": f"./imagesTr/{case}.png", "label": f"./labelsTr/{case}.png"}
    import nibabel as nib

    voxels = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)  # channels last
    nib.save(nib.Nifti1Image(voxels, np.eye(4)), tmp / "imagesTr" / f"{case}.nii.gz")
    nib.save(
        nib.Nifti1Image(label.astype(np.uint8), np.eye(4)), tmp / "labelsTr" / f"{case}.nii.gz"
    )
    return {"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"}


def _write_train_folder(folder: Path, task: PreparedTask | NativeTask) -> None:
    if (folder / "dataset.json").is_file():
        return
    tmp = folder.with_name(folder.name + ".partial")
    (tmp / "imagesTr").mkdir(parents=True, exist_ok=True)
    (tmp / "labelsTr").mkdir(parents=True, exist_ok=True)
    training = [
        _write_case(tmp, task.case_ids[i], task.images[i], task.labels[i]) for i in task.train
    ]
    (tmp / "dataset.json").write_text(
        json.dumps(
            {
                "name": f"{task.name} (benchmark train split)",
                "tensorImageSize": f"{np.ndim(task.labels[0])}D",  # one case's spatial axes
                "labels": {str(k): v for k, v in task.class_names.items()},
                "numTraining": len(training),
                "training": training,
            },
            indent=1,
        )
    )
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    os.replace(tmp, folder)


def _group_keys(ids: list[str], group: str | None, task: str) -> list[str]:
    """The group (patient) of each case: the regex's first group, or the case id itself."""
    import re

    if group is None:
        return list(ids)
    keys = []
    for case in ids:
        match = re.search(group, case)
        if match is None:
            raise UserError(
                f"task {task}: case id {case!r} does not match the group pattern "
                f"{group!r}: fix `groups` in the benchmark config"
            )
        keys.append(match.group(1))
    return keys


def _reserve(keys: list[str], n: int, split_seed: int, group: str | None, task: str) -> set[str]:
    """The ``n`` groups (cases when ungrouped) set aside for derived source tasks, seeded;
    ``keys`` are the cases' groups (:func:`_group_keys`)."""
    names = sorted(set(keys))
    if n >= len(names) - 2:
        raise UserError(
            f"task {task}: source_cases {n} leaves {len(names) - n} of its "
            f"{len(names)} {'groups' if group else 'cases'} for its own train/test "
            "split; it needs at least 3: lower source_cases"
        )
    order = np.random.default_rng([split_seed, 11]).permutation(len(names))
    return {names[i] for i in order[:n]}


def _split(
    ids: list[str],
    test_fraction: float,
    split_seed: int,
    group: str | None,
    task: str,
    train_cases: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/test indices, by case or (``group``) by the regex's first group; with
    ``train_cases``, that many cases (groups) are train and all the others test."""
    n = len(ids)
    if group is None:
        order = np.random.default_rng([split_seed, 7]).permutation(n)
        if train_cases is not None:
            if train_cases > n - 1:
                raise UserError(
                    f"task {task}: train_cases {train_cases} leaves no test case "
                    f"among its {n} cases: lower train_cases"
                )
            n_test = n - train_cases
        else:
            n_test = min(n - 2, max(1, round(test_fraction * n)))
        return np.sort(order[n_test:]), np.sort(order[:n_test])
    keys = _group_keys(ids, group, task)
    names = sorted(set(keys))
    if len(names) < 2:
        raise UserError(
            f"task {task}: the group pattern {group!r} finds {len(names)} group(s) "
            "among the chosen cases; a split by group needs at least 2"
        )
    order = np.random.default_rng([split_seed, 7]).permutation(len(names))
    if train_cases is not None:
        if train_cases > len(names) - 1:
            raise UserError(
                f"task {task}: train_cases {train_cases} leaves no test group "
                f"among its {len(names)} groups: lower train_cases"
            )
        n_test = len(names) - train_cases
    else:
        n_test = min(len(names) - 1, max(1, round(test_fraction * len(names))))
    test_groups = {names[i] for i in order[:n_test]}
    test = np.array([i for i, k in enumerate(keys) if k in test_groups], dtype=np.int64)
    train = np.array([i for i, k in enumerate(keys) if k not in test_groups], dtype=np.int64)
    return train, test


def _remap(label: np.ndarray, derived: dict[str, list[int]]) -> np.ndarray:
    """Labels of a derived task: class k (1-based, in ``derived`` order) = the listed ids."""
    out = np.zeros_like(label)
    for k, ids in enumerate(derived.values(), start=1):
        out[np.isin(label, ids)] = k
    return out


def prepare_task(
    path: str | Path,
    work: str | Path,
    *,
    size: int | list[int],
    channels: int,
    max_cases: int,
    test_fraction: float,
    split_seed: int,
    group: str | None = None,
    reserve: int = 0,
    derived: dict[str, list[int]] | None = None,
    name: str | None = None,
    train_cases: int | None = None,
) -> PreparedTask:
    """Read, normalise, resize and split one task, or load it from ``work`` (see module doc).

    ``size`` is an int (square 2D images) or one value per spatial axis (2D or 3D; the task's
    images must have that many axes). ``reserve`` cases (groups) of the folder are set aside
    for derived source tasks; with ``derived`` (class name -> the folder's label ids) the task
    is the derived one, named ``name``, made of exactly those reserved cases.
    """
    import torch
    from monai.transforms import Resize

    from ccfv.data import find_cases, load_case, select_cases

    path = Path(path)
    name = name or path.name
    if derived is not None and reserve < 1:
        raise UserError(
            f"task {name} is derived from {path.name}, which sets no cases aside "
            f"for it: set source_cases: {{{path.name}: N}} in the benchmark config"
        )
    grid = spatial_size(size)
    settings: dict[str, Any] = {
        "size": size,
        "channels": channels,
        "max_cases": max_cases,
        "test_fraction": test_fraction,
        "split_seed": split_seed,
        "source": str(path.resolve()),
        "format": 1,
    }
    # keys added only when used, so that plain tasks keep the digest they always had
    if group is not None:
        settings["group"] = group
    if reserve:
        settings["reserve"] = reserve
    if train_cases is not None:
        settings["train_cases"] = int(train_cases)
    if derived is not None:
        settings.update(derived={k: [int(i) for i in v] for k, v in derived.items()}, name=name)
    import hashlib

    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    base = Path(work) / "tasks" / f"{name}-{digest}"
    npz = base.with_suffix(".npz")
    dataset = find_cases(path)
    if derived is not None:
        class_names = {0: "background", **{k: str(v) for k, v in enumerate(derived, start=1)}}
    else:
        class_names = {int(k): str(v) for k, v in dataset.labels.items()} or {
            0: "background",
            1: "foreground",
        }
    if npz.is_file():
        with np.load(npz) as z:
            task = PreparedTask(
                name,
                z["images"],
                z["labels"],
                [str(c) for c in z["case_ids"]],
                z["train"],
                z["test"],
                class_names,
                base / "train",
                [str(c) for c in z["reserved"]] if "reserved" in z else None,
            )
        _write_train_folder(task.train_folder, task)
        return task
    with collect_ccfv_warnings():
        chosen = select_cases(dataset, min(max_cases, len(dataset.cases)), split_seed)
    chosen = sorted(chosen, key=lambda c: c.case_id)
    reserved = None
    if reserve:
        all_ids = [str(c.case_id).replace("/", "_") for c in chosen]
        keys = _group_keys(all_ids, group, path.name)
        kept = _reserve(keys, reserve, split_seed, group, path.name)
        reserved = [i for i, k in zip(all_ids, keys) if k in kept]
        chosen = [c for c, k in zip(chosen, keys) if (k in kept) == (derived is not None)]
    resize_image = Resize(grid, mode="area")
    resize_label = Resize(grid, mode="nearest")
    images, labels, ids = [], [], []
    for case in chosen:
        loaded = load_case(case, dataset.labels)
        if loaded.ndim != len(grid):
            raise UserError(
                f"task {path.name}: case {case.case_id} is {loaded.ndim}D but the "
                f"benchmark size {size} is {len(grid)}D: give `size` as "
                f"{'one int or [x, y]' if loaded.ndim == 2 else '[x, y, z]'}, and "
                "keep 2D and 3D tasks in separate configs"
            )
        image = _channels_scaled(loaded.image, channels, path.name, case.case_id)
        image = np.asarray(resize_image(torch.as_tensor(image)))
        label = np.asarray(resize_label(torch.as_tensor(loaded.label[None].astype(np.float32))))
        label = label[0].astype(np.int64)
        images.append(np.round(image).astype(np.uint8))
        labels.append(_remap(label, derived) if derived is not None else label)
        ids.append(str(case.case_id).replace("/", "_"))
    n = len(ids)
    if derived is not None or n < 3:
        # a derived task, or too few cases to split: a source only (pre-trained on all its
        # cases); the benchmark refuses it as a target
        train, test = np.arange(n, dtype=np.int64), np.zeros(0, dtype=np.int64)
    else:
        train, test = _split(ids, test_fraction, split_seed, group, path.name, train_cases)
    task = PreparedTask(
        name,
        np.stack(images),
        np.stack(labels),
        ids,
        train,
        test,
        class_names,
        base / "train",
        reserved,
    )
    _atomic_savez(
        npz,
        images=task.images,
        labels=task.labels,
        case_ids=np.array(ids),
        train=train,
        test=test,
        **({"reserved": np.array(reserved)} if reserved is not None else {}),
    )
    split: dict[str, Any] = {
        "task": name,
        "settings": settings,
        "group": group,
        "train": [ids[i] for i in train],
        "test": [ids[i] for i in test],
    }
    if reserved is not None:
        split["sources" if derived is None else "from"] = (
            reserved if derived is None else {"task": path.name, "cases": ids}
        )
    base.mkdir(parents=True, exist_ok=True)
    (base / "split.json").write_text(json.dumps(split, indent=1))
    _write_train_folder(task.train_folder, task)
    return task


def prepare_native_task(
    path: str | Path,
    work: str | Path,
    *,
    ndim: int,
    channels: int,
    max_cases: int,
    test_fraction: float,
    split_seed: int,
    group: str | None = None,
    train_cases: int | None = None,
) -> NativeTask:
    """Read, normalise and split one target at its native resolution, or load it from
    ``work``: the cases of :func:`prepare_task` (the same seeded pick of ``max_cases``, the
    same channels and intensity mapping to uint8), but **not resized**: each image keeps its
    own grid and its label stays the label as read. Split as :func:`prepare_task` splits
    (``train_cases`` or ``test_fraction``, by ``group``). Cached as
    ``<work>/tasks/<name>-native-<digest>.npz`` with ``split.json``, and the train cases as a
    Decathlon folder of native-size PNG (2D) or NIfTI (3D) images for ``ccfv rank``.
    ``ndim``: the spatial axes the benchmark's networks take (a case with others is refused)."""
    import hashlib

    from ccfv.data import find_cases, load_case, select_cases

    path = Path(path)
    name = path.name
    settings: dict[str, Any] = {
        "native": True,
        "channels": channels,
        "max_cases": max_cases,
        "test_fraction": test_fraction,
        "split_seed": split_seed,
        "source": str(path.resolve()),
        "group": group,
        "train_cases": None if train_cases is None else int(train_cases),
        "format": 1,
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    base = Path(work) / "tasks" / f"{name}-native-{digest}"
    npz = base.with_suffix(".npz")
    dataset = find_cases(path)
    class_names = {int(k): str(v) for k, v in dataset.labels.items()} or {
        0: "background",
        1: "foreground",
    }
    if npz.is_file():
        with np.load(npz) as z:
            n = len(z["case_ids"])
            task = NativeTask(
                name,
                [z[f"image_{i}"] for i in range(n)],
                [z[f"label_{i}"] for i in range(n)],
                [str(c) for c in z["case_ids"]],
                z["train"],
                z["test"],
                class_names,
                base / "train",
            )
        _write_train_folder(task.train_folder, task)
        return task
    with collect_ccfv_warnings():
        chosen = select_cases(dataset, min(max_cases, len(dataset.cases)), split_seed)
    chosen = sorted(chosen, key=lambda c: c.case_id)
    images, labels, ids = [], [], []
    for case in chosen:
        loaded = load_case(case, dataset.labels)
        if loaded.ndim != ndim:
            raise UserError(
                f"task {name}: case {case.case_id} is {loaded.ndim}D but the benchmark's "
                f"networks are {ndim}D: keep 2D and 3D tasks in separate configs"
            )
        image = _channels_scaled(loaded.image, channels, name, case.case_id)
        images.append(np.round(image).astype(np.uint8))
        labels.append(np.asarray(loaded.label, dtype=np.int64))
        ids.append(str(case.case_id).replace("/", "_"))
    if len(ids) < 3:
        raise UserError(
            f"task {name}: {len(ids)} case(s), too few for a native target's train/test "
            "split: leave it out of `native` and `targets`"
        )
    train, test = _split(ids, test_fraction, split_seed, group, name, train_cases)
    task = NativeTask(name, images, labels, ids, train, test, class_names, base / "train")
    _atomic_savez(
        npz,
        case_ids=np.array(ids),
        train=train,
        test=test,
        **{f"image_{i}": a for i, a in enumerate(images)},
        **{f"label_{i}": a for i, a in enumerate(labels)},
    )
    base.mkdir(parents=True, exist_ok=True)
    split = {
        "task": name,
        "settings": settings,
        "group": group,
        "shapes": {ids[i]: list(labels[i].shape) for i in range(len(ids))},
        "train": [ids[i] for i in train],
        "test": [ids[i] for i in test],
    }
    (base / "split.json").write_text(json.dumps(split, indent=1))
    _write_train_folder(task.train_folder, task)
    return task


def carve_validation(
    task: PreparedTask | NativeTask, fraction: float, split_seed: int, group: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Split a target's train indices into (fit, validation), seeded and by group when the task
    has a ``group`` pattern: ``round(fraction * G)`` of its G train cases (groups), at least 1
    and leaving at least 1, validate (checkpoint selection); the test split is never touched.
    ``fraction`` 0 gives ``(train, empty)``."""
    train = np.asarray(task.train, dtype=np.int64)
    if fraction <= 0:
        return train, np.zeros(0, dtype=np.int64)
    ids = [task.case_ids[i] for i in train]
    keys = _group_keys(ids, group, task.name)
    names = sorted(set(keys))
    if len(names) < 2:
        raise UserError(
            f"task {task.name}: a validation split needs at least 2 train "
            f"{'groups' if group else 'cases'}, it has {len(names)}: raise "
            "train_cases or set finetune.val_fraction: 0"
        )
    n_val = min(len(names) - 1, max(1, round(fraction * len(names))))
    order = np.random.default_rng([split_seed, 13]).permutation(len(names))
    chosen = {names[i] for i in order[:n_val]}
    val = np.array([i for i, k in zip(train, keys) if k in chosen], dtype=np.int64)
    fit = np.array([i for i, k in zip(train, keys) if k not in chosen], dtype=np.int64)
    return fit, val
