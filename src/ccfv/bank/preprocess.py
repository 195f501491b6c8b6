"""A bank entry's preprocessing as one function of (image, affine), with the geometry kept right.

:func:`entry_preprocess` asks the entry's kind (:mod:`ccfv.bank.kinds`): a bundle's own
transforms, nnU-Net's preprocessing of its plans, or :func:`make_preprocess` of the entry's
``preprocessing`` keys. The returned affine is the voxel-to-world map of the *returned* grid.
The transforms, their conventions (channel-first images, RAS+ affines, 2D images, the order
orientation -> spacing -> intensity, float32 affines) and the re-exported names are
:mod:`ccfv.bank.transforms`.
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

__all__ = [
    "ORTHONORMAL_TOL",
    "RAS_LABELS",
    "as_meta_tensor",
    "describe_preprocessing",
    "entry_preprocess",
    "make_preprocess",
    "orthonormal_affine",
]


def entry_preprocess(entry: BankEntry, ndim: int) -> PreprocessFn:
    """The preprocessing function of a bank entry, from its kind: a bundle's own transforms,
    nnU-Net's preprocessing of its plans, or :func:`make_preprocess` of the entry's
    ``preprocessing``."""
    return kind_of(entry).preprocess(entry, ndim)


def describe_preprocessing(entry: BankEntry) -> str:
    """One line naming what a bank entry does to an image before its windows, for messages:
    a bundle's transforms, nnU-Net's preprocessing, or the entry's ``preprocessing`` keys."""
    return kind_of(entry).describe_preprocessing(entry)
