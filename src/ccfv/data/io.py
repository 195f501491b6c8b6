"""Read one image or label file into a numpy array and a 4x4 affine, whatever its format.

Three families of files, chosen by extension:

- NIfTI (``.nii``, ``.nii.gz``), read with nibabel: index order ``(i, j, k)`` of the file, the
  file's affine (RAS+). A 4D file holds channels last as the Decathlon stores them
  (``x, y, z, c``) and a 5D one ``x, y, z, 1, c`` as ITK writes vector images; both are
  returned channels first.
- Other ITK formats (``.mha``, ``.mhd``, ``.nrrd``, ``.nhdr``), read with SimpleITK: the array
  is transposed to ``(i, j, k)`` order and the LPS direction/origin turned into the RAS+ affine
  nibabel would give, so both families agree; vector pixels or a 4th axis are the channels.
- 2D pictures (``.png``, ``.jpg``, ``.jpeg``, ``.tif``, ``.tiff``, ``.bmp``, ``.gif``), read with
  PIL: ``(H, W)`` rows then columns, RGB as 3 channels first, identity affine. (MONAI's
  ``LoadImage`` gives ``(W, H)`` for pictures; this module does not.)

SimpleITK is used directly rather than through MONAI, whose ITK reader needs the ``itk`` package.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from ccfv.errors import UserError

if TYPE_CHECKING:
    from nibabel.spatialimages import SpatialImage

NIFTI_EXTS = (".nii.gz", ".nii")
ITK_EXTS = (".mha", ".mhd", ".nrrd", ".nhdr")
PICTURE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")
SUPPORTED_EXTS = NIFTI_EXTS + ITK_EXTS + PICTURE_EXTS

_RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def split_ext(path: str | Path) -> tuple[str, str]:
    """Split a file name into ``(stem, extension)`` for a supported format.

    The extension is lower-case (``".nii.gz"`` counts as one); it is ``""`` when the format is
    not supported.
    """
    name = Path(path).name
    lower = name.lower()
    for ext in SUPPORTED_EXTS:
        if lower.endswith(ext):
            return name[: -len(ext)], ext
    return name, ""


def is_picture(path: str | Path) -> bool:
    """Whether ``path`` is a 2D picture format read with PIL (no geometry)."""
    return split_ext(path)[1] in PICTURE_EXTS


def not_a_file(path: str | Path) -> str | None:
    """What ``path`` is when it is not a regular file (or a link to one); None when it is.

    One of ``"missing"``, ``"a broken symbolic link (to T)"``, ``"a symbolic link loop"``,
    ``"a directory"``, ``"a FIFO (named pipe)"``, ``"a socket"``, ``"a device file"``,
    ``"not readable (reason)"``. Never opens the path (a FIFO would block a reader).
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            return f"a broken symbolic link (to {os.readlink(path)})"
        return "missing"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symbolic link loop"
        return f"not readable ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device file"


def check_is_file(
    path: str | Path,
    what: str = "an image or label file",
    fix: str = "check the path or the dataset listing it",
) -> None:
    """Raise a :class:`UserError` saying what ``path`` is when it is not a regular file."""
    kind = not_a_file(path)
    if kind == "missing":
        raise UserError(f"{path}: no such file; {fix}")
    if kind is not None:
        raise UserError(f"{path}: {kind}, not {what}; {fix}")


def _check_ext(path: Path) -> str:
    ext = split_ext(path)[1]
    if not ext:
        raise UserError(
            f"{path}: unsupported file format {''.join(path.suffixes) or '(no extension)'!r}; "
            f"convert it to one of {', '.join(SUPPORTED_EXTS)}"
        )
    check_is_file(path)
    return ext


def read_file(path: str | Path, *, label: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Read an image (channels first) or a label map (no channel axis) and its affine.

    Parameters
    ----------
    path : str or Path
        The file.
    label : bool
        Read as a label map: a single channel, returned without the channel axis and in the
        file's own dtype (palette PNGs give their palette indices; an RGB(A) mask whose colour
        channels are all equal gives one of them).

    Returns
    -------
    array : numpy.ndarray
        Image: shape ``(C, *spatial)``, file dtype. Label: shape ``spatial``.
    affine : numpy.ndarray
        float64 ``(4, 4)``, voxel index -> world mm (RAS+); identity for 2D pictures.

    Raises
    ------
    UserError
        Unsupported format, missing or unreadable file, a multi-page picture, a label file with
        several channels or colours.
    """
    path = Path(path)
    ext = _check_ext(path)
    try:
        if ext in PICTURE_EXTS:
            array, affine = _read_picture(path, label)
        elif ext in NIFTI_EXTS:
            array, affine = _read_nifti(path)
        else:
            array, affine = _read_itk(path)
    except UserError:
        raise
    except Exception as exc:  # a corrupt or truncated file: say which one
        raise UserError(
            f"{path}: cannot read this file ({type(exc).__name__}: {exc}); "
            "check that it is complete and in the format its extension says"
        ) from exc
    if label:
        if array.shape[0] != 1:
            raise UserError(
                f"{path}: a label map must have one channel, this file has {array.shape[0]} "
                f"(shape {tuple(array.shape[1:])} x {array.shape[0]}); save one class-id map"
            )
        array = array[0]
    return array, affine


def spatial_ndim(path: str | Path) -> int:
    """Number of spatial dimensions of an image file, from its header only.

    2 for pictures; for NIfTI / ITK files the number of spatial axes (at most 3) in the header.
    """
    path = Path(path)
    ext = _check_ext(path)
    if ext in PICTURE_EXTS:
        return 2
    if ext in NIFTI_EXTS:
        return min(len(_load_nifti(str(path)).shape), 3)
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return min(reader.GetDimension(), 3)


def _load_nifti(path: str) -> SpatialImage:
    """``nibabel.load`` of a NIfTI file (annotated as returning any ``FileBasedImage``; for a
    NIfTI it is always a ``SpatialImage``, which has ``shape``, ``dataobj`` and ``affine``)."""
    import nibabel as nib

    return cast("SpatialImage", nib.load(path))


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = _load_nifti(str(path))
    array = np.asanyarray(img.dataobj)
    if array.ndim == 5 and array.shape[3] == 1:  # ITK vector image: x, y, z, 1, c
        array = array[:, :, :, 0]
    if array.ndim <= 3:
        array = array[None]
    elif array.ndim == 4:  # Decathlon: x, y, z, c
        array = np.moveaxis(array, -1, 0)
    else:
        raise UserError(
            f"{path}: a {array.ndim}D NIfTI of shape {array.shape} is not an image "
            "this tool reads; give 2D/3D volumes, channels last for several channels"
        )
    return array, np.asarray(img.affine, dtype=np.float64)


def _read_itk(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    dim = img.GetDimension()
    vector = img.GetNumberOfComponentsPerPixel() > 1
    if dim > 4 or (dim == 4 and vector):
        raise UserError(
            f"{path}: a {dim}D image is not supported; give 2D/3D images, "
            "several channels as a vector image or as one file per channel"
        )
    array = sitk.GetArrayFromImage(img)  # ITK's reversed order: ([c4,] k, j, i[, c])
    if dim == 4:  # the 4th axis holds the channels, as in a Decathlon 4D NIfTI
        dim = 3
        array = array.transpose(0, 3, 2, 1)
    elif vector:
        array = np.moveaxis(array, -1, 0).transpose(0, *range(dim, 0, -1))
    else:
        array = array.transpose(*range(dim - 1, -1, -1))[None]
    size = img.GetDimension()
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(size, size)[:dim, :dim]
    affine = np.eye(4)
    affine[:dim, :dim] = direction * np.asarray(img.GetSpacing(), dtype=np.float64)[:dim]
    affine[:dim, 3] = img.GetOrigin()[:dim]
    return np.ascontiguousarray(array), _RAS_FROM_LPS @ affine


def _read_picture(path: Path, label: bool) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    with Image.open(path) as im:
        n_frames = getattr(im, "n_frames", 1)
        if n_frames > 1:
            raise UserError(
                f"{path}: a picture with {n_frames} frames/pages is not supported; "
                "save one 2D picture per file, or a 3D stack as NIfTI"
            )
        mode = im.mode
        if mode in ("1", "L", "I", "F") or mode.startswith("I;16") or (label and mode == "P"):
            array = np.asarray(im)[None]  # palette masks give their indices
        elif mode == "LA" or (label and mode == "PA"):
            array = np.asarray(im)[None, ..., 0]  # drop the alpha channel
        elif label:
            array = np.moveaxis(np.asarray(im.convert("RGB")), -1, 0)
            if not (np.array_equal(array[0], array[1]) and np.array_equal(array[0], array[2])):
                r, c = np.argwhere((array[0] != array[1]) | (array[0] != array[2]))[0]
                raise UserError(
                    f"{path}: a colour mask (mode {mode}) whose channels differ, e.g. "
                    f"RGB {tuple(int(v) for v in array[:, r, c])} at row {r}, column {c}; "
                    "save masks as single-channel class ids (or grey levels)"
                )
            array = array[:1]
        else:  # RGB, RGBA (alpha dropped), palette images, CMYK, YCbCr, ...
            array = np.moveaxis(np.asarray(im.convert("RGB")), -1, 0)
    return np.ascontiguousarray(array), np.eye(4)
