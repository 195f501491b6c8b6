"""The records of the data layer: a case on disk, a found dataset, a case read into arrays.

Conventions of a :class:`LoadedCase` (the same for every layout and file format):

- ``image``: float32, shape ``(C, *spatial)``, raw intensities (no normalisation: that is the
  model's preprocessing, decided by the bank).
- ``label``: int64, shape ``spatial``, class ids (0 = background).
- ``spatial``: for NIfTI / ITK files the voxel index order of the file as nibabel gives it,
  ``(i, j, k)`` (no reorientation); for 2D picture files (PNG, JPEG, TIFF, BMP, GIF) ``(H, W)``,
  rows then columns as PIL gives them.
- ``affine``: always 4x4 float64, voxel index -> world millimetres, RAS+ as nibabel / MONAI give
  it. A 2D picture has no geometry: its affine is the identity acting on ``(row, col, 0, 1)``
  (spacing 1).
- ``spacing``: one value per spatial axis, the column norms of ``affine[:3, :ndim]``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Case:
    """One labelled target case on disk.

    Attributes
    ----------
    case_id : str
        Identifier of the case, unique within its dataset (the label file's name without its
        extension for MSD and plain folders, the nnU-Net case identifier for nnU-Net).
    images : tuple of Path
        One path per channel file, in channel order; a single multi-channel file is one path.
    label : Path
        The label map.
    dataset : str
        Name of the dataset the case belongs to (its folder name).
    """

    case_id: str
    images: tuple[Path, ...]
    label: Path
    dataset: str

    def __post_init__(self) -> None:
        images = (self.images,) if isinstance(self.images, (str, Path)) else self.images
        object.__setattr__(self, "images", tuple(Path(p) for p in images))
        object.__setattr__(self, "label", Path(self.label))
        if not self.images:
            raise ValueError(f"case {self.case_id!r} has no image file")


@dataclass
class Dataset:
    """A labelled dataset found on disk by :func:`ccfv.data.find_cases`.

    Attributes
    ----------
    name : str
        The dataset folder's name.
    root : Path
        The dataset folder (absolute).
    layout : {"msd", "nnunet", "folder"}
        How the folder was read.
    labels : dict of int to str
        Class id -> class name (0 = background); empty when unknown.
    cases : list of Case
        Every labelled case, sorted by ``case_id``.
    ndim : int or None
        Number of spatial dimensions (2 or 3) when known.
    label_rule : str
        One line saying how label values become class ids (where ``labels`` came from), for
        reports.
    """

    name: str
    root: Path
    layout: str
    labels: dict[int, str]
    cases: list[Case] = field(default_factory=list)
    ndim: int | None = None
    label_rule: str = ""

    def __len__(self) -> int:
        return len(self.cases)

    def class_table(self, values: Iterable[int] = ()) -> dict[str, object]:
        """The class table a run used, for ``report.md`` and ``scores.json``.

        ``{"classes": {id: name}, "rule": label_rule}``: ``labels`` when known, else the
        class ids ``values`` found in the loaded label maps (named ``class_<id>``).
        """
        labels = self.labels or {
            int(v): "background" if int(v) == 0 else f"class_{int(v)}"
            for v in sorted(set(values) | {0})
        }
        return {
            "classes": {int(k): str(v) for k, v in sorted(labels.items())},
            "rule": self.label_rule or "label values taken as class ids",
        }


@dataclass
class LoadedCase:
    """A case read into arrays (see the module docstring for the conventions).

    Attributes
    ----------
    case_id : str
    image : numpy.ndarray
        float32, shape ``(C, *spatial)``.
    label : numpy.ndarray
        int64, shape ``spatial``, class ids.
    affine : numpy.ndarray
        float64, shape ``(4, 4)``, voxel index -> world mm (RAS+); identity for 2D pictures.
    spacing : tuple of float
        Voxel size along each spatial axis, in mm (1.0 for 2D pictures).
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, ...]

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions."""
        return self.label.ndim

    @property
    def n_channels(self) -> int:
        """Number of image channels."""
        return self.image.shape[0]
