"""A model's preprocessing as one function of (image, affine), with the geometry kept right.

The transforms are :mod:`ccfv.bank.transforms`; :func:`entry_preprocess` asks the entry's kind
(:mod:`ccfv.bank.kinds`) which ones apply.

The returned affine is the voxel-to-world map of the *returned* grid: the caller maps a voxel
of the label grid to the preprocessed grid by ``inv(affine_out) @ affine_label @ index``, so a
resampling without the matching affine would silently misplace every sampled voxel.

Conventions
-----------
* ``image`` is channel-first, ``(C, *spatial)``; ``affine`` is 4 x 4, voxel index -> world
  (mm), in MONAI's / nibabel's RAS+ world frame (orientation codes are read in that frame:
  ``"RAS"`` = first axis towards Right, ...). A reader that gets LPS affines (SimpleITK / ITK)
  must flip the first two world axes before calling.
* 2D images (``ndim=2``): the 4 x 4 affine acts on ``(row, col, 0, 1)``; only its top-left
  2 x 2 block and the first two entries of its last column describe the grid, the third world
  axis is carried through unchanged. ``spacing`` then has 2 values and ``orientation`` 2
  letters (e.g. ``"RA"``); a 3-letter orientation is refused for 2D images.
* Steps, in order: orientation, spacing (bilinear, border padding, MONAI ``Spacing``), then
  intensity on the resampled image.
* Float32 affines: NIfTI headers store the affine in float32, so the direction cosines of an
  oblique scan are orthonormal only to ~1e-7. MONAI's ``Spacing`` then finds no input corner
  that is the lowest on every output axis (it tests with an absolute tolerance of 1e-8) and
  centres the output grid instead, which shifts it by about half an input voxel: on
  1.25 x 1.25 x 8 mm slices resampled to 1.5 mm the first two planes of the slice axis fall
  outside the new grid. :func:`as_meta_tensor` (the input of every ccfv pipeline, a bundle's
  transforms included) therefore re-orthonormalises direction cosines that are orthonormal to
  within :data:`ORTHONORMAL_TOL` (nearest orthonormal matrix, same voxel sizes): the world
  positions move by < 1e-4 mm and ``Spacing``'s grid covers the input's first and last voxel
  centres again. Sheared affines are left as they are.
"""

from __future__ import annotations

from ccfv.bank.entry import BankEntry
from ccfv.bank.kinds import kind_of
from ccfv.bank.transforms import (
    ORTHONORMAL_TOL,
    RAS_LABELS,
    PreprocessFn,
    as_meta_tensor,
    make_preprocess,
    orthonormal_affine,
)

__all__ = ["ORTHONORMAL_TOL", "RAS_LABELS", "as_meta_tensor", "describe_preprocessing",
           "entry_preprocess", "make_preprocess", "orthonormal_affine"]


def entry_preprocess(entry: BankEntry, ndim: int) -> PreprocessFn:
    """The preprocessing function of a bank entry, from its kind: a bundle's own transforms,
    nnU-Net's preprocessing of its plans, or :func:`make_preprocess` of the entry's
    ``preprocessing``."""
    return kind_of(entry).preprocess(entry, ndim)


def describe_preprocessing(entry: BankEntry) -> str:
    """One line naming what a bank entry does to an image before its windows, for messages:
    a bundle's transforms, nnU-Net's preprocessing, or the entry's ``preprocessing`` keys."""
    return kind_of(entry).describe_preprocessing(entry)
