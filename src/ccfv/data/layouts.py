"""Find the labelled cases of a dataset folder: Decathlon, nnU-Net v2 raw, or a plain folder.

Detection, in this order:

- ``dataset.json`` with ``channel_names`` or ``file_ending``: **nnU-Net v2 raw**. Cases come from
  ``imagesTr/{case}_{channel:04d}{file_ending}`` + ``labelsTr/{case}{file_ending}`` (or from the
  json's optional ``dataset`` table); ``labels`` maps name -> id; region labels are refused.
- ``dataset.json`` with a ``training`` list: **Medical Segmentation Decathlon**. Each entry
  ``{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}`` (``image`` may also be a
  list of channel files); paths are relative to the folder; ``labels`` maps id -> name (or
  name -> id); ``tensorImageSize`` gives ``ndim`` ("4D" = 3D with channels).
- no ``dataset.json``: **plain folder** with an image and a label sub-folder (``images`` /
  ``labels``, ``imagesTr`` / ``labelsTr``, ``img`` / ``mask``, ``img`` / ``masks``,
  ``images`` / ``masks``, first found wins) whose files pair by name without extension
  (``images/a.png`` with ``labels/a.png``); channel files ``a_0000``, ``a_0001``, ... pair with
  label ``a``. The class table of picture masks is decided for the whole folder from the
  values of every mask (:func:`ccfv.data.masks.picture_class_table`: binary 0/1 or 0/255
  masks -> classes 0, 1; class ids; evenly spaced grey levels; anything else, such as the
  many values of interpolated or anti-aliased masks, is an error naming the file); for
  NIfTI / ITK masks it stays unknown (``{}``) and the values are the class ids.

Hidden files and files of unsupported formats are ignored when listing folders.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np

from ccfv.data.case import Case, Dataset
from ccfv.data.io import is_picture, not_a_file, read_file, spatial_ndim, split_ext
from ccfv.data.masks import parse_labels, picture_class_table
from ccfv.errors import CCFVWarning, UserError

FOLDER_PAIRS = (
    ("images", "labels"),
    ("imagesTr", "labelsTr"),
    ("img", "mask"),
    ("img", "masks"),
    ("images", "masks"),
)
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_NDIM = {"2D": 2, "3D": 3, "4D": 3}


def find_cases(root: str | Path) -> Dataset:
    """Find every labelled case of a dataset folder and detect its layout.

    Parameters
    ----------
    root : str or Path
        The dataset folder: the one holding ``dataset.json`` (Decathlon, nnU-Net v2 raw) or the
        image and label sub-folders (plain folder). A path to the ``dataset.json`` itself works.

    Returns
    -------
    Dataset
        Name (the folder's name), absolute root, layout ``"msd"``, ``"nnunet"`` or
        ``"folder"``, labels ``{id: name}`` (``{}`` when unknown), cases sorted by ``case_id``,
        and ``ndim`` (2, 3 or None).

    Raises
    ------
    UserError
        A missing folder, an unreadable or unrecognised ``dataset.json``, a listed or expected
        file that does not exist, an image without label (or the reverse), duplicate case ids,
        region labels, or no case at all; the message names the path and the fix.
    """
    root = Path(root).expanduser()
    if root.is_file() and root.name == "dataset.json":
        root = root.parent
    if not root.is_dir():
        kind = not_a_file(root) or "a file"
        raise UserError(
            f"{root}: "
            + ("no such folder" if kind == "missing" else f"{kind}, not a folder")
            + "; pass the dataset folder "
            "(the one holding dataset.json, or images/ and labels/ sub-folders)"
        )
    root = root.resolve()
    meta_file = root / "dataset.json"
    if not meta_file.is_file():
        dataset = _find_folder(root)
    else:
        meta = _read_json(meta_file)
        if "channel_names" in meta or "file_ending" in meta:
            dataset = _find_nnunet(root, meta, meta_file)
        elif "training" in meta:
            dataset = _find_msd(root, meta, meta_file)
        else:
            raise UserError(
                f"{meta_file}: neither a Decathlon dataset.json (no 'training' list) nor an "
                "nnU-Net v2 one (no 'channel_names' / 'file_ending'); add the missing entries "
                "or remove the file to read the folder as plain images/ + labels/"
            )
    if not dataset.cases:
        raise UserError(
            f"{root}: no labelled case found ({dataset.layout} layout); add image/"
            "label pairs or point to the right folder"
        )
    ids = [case.case_id for case in dataset.cases]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise UserError(
            f"{root}: case ids {dupes[:5]} occur more than once; give every case its own file name"
        )
    dataset.cases.sort(key=lambda case: case.case_id)
    if dataset.ndim is None:
        dataset.ndim = spatial_ndim(dataset.cases[0].images[0])
    return dataset


def _read_json(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column "
            f"{exc.colno}); fix the file"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(
            f"{path}: cannot read this file ({exc}); check its permissions and encoding (UTF-8)"
        ) from exc
    if not isinstance(meta, dict):
        raise UserError(
            f"{path}: expected a JSON object at the top level, got {type(meta).__name__}"
        )
    return meta


def _resolve(root: Path, entry: object, where: str, meta_file: Path) -> Path:
    if not isinstance(entry, str) or not entry:
        raise UserError(f"{meta_file}: {where} should be a file path, got {entry!r}")
    path = Path(entry).expanduser()
    path = path if path.is_absolute() else (root / path)
    kind = not_a_file(path)
    if kind == "missing":
        raise UserError(
            f"{path}: listed in {meta_file} ({where}) but missing; add the file or remove the entry"
        )
    if kind is not None:
        raise UserError(
            f"{path}: listed in {meta_file} ({where}) but {kind}, not a file; "
            "point the entry at the image or label file itself"
        )
    return path.resolve()


def _find_msd(root: Path, meta: dict, meta_file: Path) -> Dataset:
    training = meta["training"]
    if not isinstance(training, list):
        raise UserError(
            f"{meta_file}: 'training' should be a list of "
            '{"image": ..., "label": ...} entries, got '
            f"{type(training).__name__}"
        )
    labels = parse_labels(meta["labels"], meta_file) if "labels" in meta else {}
    cases = []
    for i, entry in enumerate(training):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise UserError(
                f"{meta_file}: training[{i}] = {entry!r} should be "
                '{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}'
            )
        images = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
        if not images:
            raise UserError(f"{meta_file}: training[{i}] has an empty 'image' list")
        images = [_resolve(root, p, f"training[{i}].image", meta_file) for p in images]
        label = _resolve(root, entry["label"], f"training[{i}].label", meta_file)
        cases.append(Case(split_ext(label)[0], tuple(images), label, root.name))
    ndim = _NDIM.get(str(meta.get("tensorImageSize", "")).upper())
    return Dataset(
        root.name,
        root,
        "msd",
        labels,
        cases,
        ndim,
        f"class ids as in {meta_file.name} 'labels'"
        if labels
        else "label values taken as class ids (no 'labels' in dataset.json)",
    )


def _find_nnunet(root: Path, meta: dict, meta_file: Path) -> Dataset:
    missing = [key for key in ("channel_names", "labels", "file_ending") if key not in meta]
    if missing:
        raise UserError(
            f"{meta_file}: nnU-Net v2 dataset.json lacks {missing}; add them "
            '(e.g. "channel_names": {"0": "CT"}, "labels": {"background": 0, '
            '"organ": 1}, "file_ending": ".nii.gz")'
        )
    labels = parse_labels(meta["labels"], meta_file)
    channels = meta["channel_names"]
    try:
        channels = sorted(int(c) for c in channels)
    except (TypeError, ValueError):
        channels = []
    if not channels:
        raise UserError(
            f"{meta_file}: 'channel_names' should map channel indices to names, "
            f'e.g. {{"0": "T2", "1": "ADC"}}, got {meta["channel_names"]!r}'
        )
    ending = str(meta["file_ending"])
    if "dataset" in meta:  # nnU-Net v2's explicit table {case: {"images": [...], "label": ...}}
        cases = []
        for case_id, entry in dict(meta["dataset"]).items():
            where = f"dataset[{case_id!r}]"
            images = [
                _resolve(root, p, f"{where}.images", meta_file) for p in entry.get("images", [])
            ]
            if len(images) != len(channels):
                raise UserError(
                    f"{meta_file}: {where} lists {len(images)} image files for "
                    f"{len(channels)} channels; list one file per channel"
                )
            label = _resolve(root, entry.get("label"), f"{where}.label", meta_file)
            cases.append(Case(str(case_id), tuple(images), label, root.name))
        return Dataset(
            root.name,
            root,
            "nnunet",
            labels,
            cases,
            _ending_ndim(ending),
            f"class ids as in {meta_file.name} 'labels'",
        )
    image_dir, label_dir = root / "imagesTr", root / "labelsTr"
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            raise UserError(
                f"{folder}: missing; an nnU-Net v2 raw dataset keeps its training "
                "images in imagesTr/ and its labels in labelsTr/"
            )
    _check_ending(image_dir, ending, meta_file, _list(image_dir, ending))
    _check_ending(label_dir, ending, meta_file, _list(label_dir, ending))
    files: dict[str, dict[int, Path]] = {}
    for path in _list(image_dir, ending):
        match = _CHANNEL.match(path.name[: -len(ending)])
        if match is None:
            raise UserError(
                f"{path}: not named {{case}}_{{channel:04d}}{ending} as nnU-Net "
                "expects (e.g. case01_0000"
                f"{ending}); rename it"
            )
        files.setdefault(match["case"], {})[int(match["channel"])] = path
    cases = []
    for case_id, found in sorted(files.items()):
        extra = sorted(set(found) - set(channels))
        if extra:
            raise UserError(
                f"{found[extra[0]]}: channel {extra[0]:04d} is not in "
                f"{meta_file} 'channel_names' {channels}; remove the file or "
                "declare the channel"
            )
        images = [image_dir / f"{case_id}_{c:04d}{ending}" for c in channels]
        for path in images:
            if path not in found.values():
                raise UserError(
                    f"{path}: missing; case {case_id!r} needs one file per channel "
                    f"{channels} listed in {meta_file} 'channel_names'"
                )
        label = label_dir / f"{case_id}{ending}"
        kind = not_a_file(label)
        if kind == "missing":
            raise UserError(
                f"{label}: missing label of case {case_id!r}; add it or remove "
                f"the case's images from {image_dir}"
            )
        if kind is not None:
            raise UserError(
                f"{label}: {kind}, not the label file of case {case_id!r}; "
                "replace it with the label map"
            )
        cases.append(Case(case_id, tuple(images), label, root.name))
    orphans = sorted(set(p.name[: -len(ending)] for p in _list(label_dir, ending)) - set(files))
    if orphans:
        raise UserError(
            f"{label_dir / (orphans[0] + ending)}: a label without images "
            f"({len(orphans)} such: {orphans[:5]}); add "
            f"{image_dir / (orphans[0] + '_0000' + ending)} or remove the label"
        )
    n_listed = meta.get("numTraining")
    if isinstance(n_listed, int) and n_listed != len(cases):
        warnings.warn(
            f"{meta_file}: numTraining is {n_listed} but {len(cases)} cases were "
            "found; using the cases found",
            CCFVWarning,
            stacklevel=3,
        )
    return Dataset(
        root.name,
        root,
        "nnunet",
        labels,
        cases,
        _ending_ndim(ending),
        f"class ids as in {meta_file.name} 'labels'",
    )


def _ending_ndim(ending: str) -> int | None:
    return 2 if is_picture("x" + ending) else None


def _list(folder: Path, ending: str | None = None) -> list[Path]:
    """Visible files of ``folder`` with ``ending`` (default: any supported format), sorted.

    An entry with that ending that is not a regular file (a directory, a FIFO, a symbolic
    link loop or a broken link, ...) is an error saying what it is.
    """
    out = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.name.endswith(ending) if ending else bool(split_ext(path)[1]):
            kind = not_a_file(path)
            if kind is not None:
                raise UserError(
                    f"{path}: {kind}, not an image or label file; replace it with "
                    f"the file, or move it out of {folder}"
                )
            out.append(path)
    return out


def _check_ending(folder: Path, ending: str, meta_file: Path, found: list[Path]) -> None:
    """Name a ``file_ending`` that the files of ``folder`` do not have."""
    others: dict[str, list[str]] = {}
    for path in sorted(folder.iterdir()):
        ext = split_ext(path)[1]
        if not path.name.startswith(".") and ext and not path.name.endswith(ending):
            others.setdefault(ext, []).append(path.name)
    if not others:
        return
    ext, names = max(others.items(), key=lambda kv: len(kv[1]))
    if not found or len(names) >= len(found):
        raise UserError(
            f"{folder}: {len(names)} file(s) end with {ext!r} (e.g. {names[0]}) but "
            f'{meta_file} says "file_ending": {ending!r} ({len(found)} file(s) end with it); '
            f'set "file_ending": {ext!r} or convert the files to {ending}'
        )
    warnings.warn(
        f"{folder}: {len(names)} file(s) ending with {ext!r} (e.g. {names[0]}) are "
        f'ignored: {meta_file} says "file_ending": {ending!r}',
        CCFVWarning,
        stacklevel=3,
    )


def _find_folder(root: Path) -> Dataset:
    pair = next(
        (
            (root / i, root / m)
            for i, m in FOLDER_PAIRS
            if (root / i).is_dir() and (root / m).is_dir()
        ),
        None,
    )
    if pair is None:
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise UserError(
            f"{root}: no dataset.json and no image/label sub-folders (found {found}); use "
            "images/ + labels/ (or imagesTr/ + labelsTr/, img/ + mask(s)/) holding files with "
            "the same names, or add a Decathlon / nnU-Net dataset.json"
        )
    image_dir, label_dir = pair
    labels_by_stem: dict[str, Path] = {}
    for path in _list(label_dir):
        stem = split_ext(path)[0]
        if stem in labels_by_stem:
            raise UserError(
                f"{path}: two label files named {stem!r} "
                f"({labels_by_stem[stem].name}, {path.name}); keep one"
            )
        labels_by_stem[stem] = path
    images_by_stem: dict[str, list[Path]] = {}
    for path in _list(image_dir):
        stem = split_ext(path)[0]
        match = _CHANNEL.match(stem)
        key = stem if stem in labels_by_stem or match is None else match["case"]
        images_by_stem.setdefault(key, []).append(path)
    unmatched = sorted(set(images_by_stem) - set(labels_by_stem))
    if unmatched:
        example = images_by_stem[unmatched[0]][0]
        raise UserError(
            f"{example}: an image without label ({len(unmatched)} such: "
            f"{unmatched[:5]}); add {label_dir / example.name} (same name as the "
            "image) or move the unlabelled images out of the folder"
        )
    orphans = sorted(set(labels_by_stem) - set(images_by_stem))
    if orphans:
        raise UserError(
            f"{labels_by_stem[orphans[0]]}: a label without image ({len(orphans)} "
            f"such: {orphans[:5]}); add the image to {image_dir} under the same "
            "name or remove the label"
        )
    cases = [
        Case(stem, tuple(sorted(images_by_stem[stem])), path, root.name)
        for stem, path in labels_by_stem.items()
    ]
    labels: dict[int, str] = {}
    rule = "label values taken as class ids (NIfTI / ITK masks)"
    if cases and all(is_picture(case.label) for case in cases):
        values = {
            case.label: np.unique(read_file(case.label, label=True)[0]).tolist() for case in cases
        }
        labels, rule = picture_class_table(values)
    return Dataset(root.name, root, "folder", labels, cases, None, rule)
