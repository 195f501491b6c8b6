"""Target data: find labelled image/label pairs on disk and read them into arrays.

Knows nothing about models. ``find_cases`` detects the layout (Decathlon, nnU-Net v2 raw, plain
folder), ``select_cases`` picks N of them reproducibly, ``data_fingerprint`` hashes their content
(the feature cache's data key), ``load_case`` reads one into a
:class:`LoadedCase` (conventions in :mod:`ccfv.data.case`, mask-value rule in
:mod:`ccfv.data.masks`).
"""

from ccfv.data.case import Case, Dataset, LoadedCase
from ccfv.data.fingerprint import data_fingerprint
from ccfv.data.io import SUPPORTED_EXTS, read_file
from ccfv.data.layouts import find_cases
from ccfv.data.load import load_case
from ccfv.data.masks import to_class_ids
from ccfv.data.select import select_cases

__all__ = [
    "Case",
    "Dataset",
    "LoadedCase",
    "SUPPORTED_EXTS",
    "data_fingerprint",
    "find_cases",
    "load_case",
    "read_file",
    "select_cases",
    "to_class_ids",
]
