"""Fingerprint of the selected target cases: what the feature cache keys its files by.

The fingerprint hashes, for every case (in ``case_id`` order), its id and the *content* of its
image and label files (sha256 of the bytes), plus the class table the labels were read with.
It does not depend on where the files are, their modification times or the order the cases
were picked in, so:

- a file edited in place, even with the same size and its modification time restored, gives
  another fingerprint (the cache never serves the old features);
- the same cases picked in another order (``--cases N`` equal to the number of cases, another
  seed picking the same set) or a copied / moved dataset reuse the cache.

Every file is read once per run; hashing costs a fraction of decoding the same files (see
:func:`file_digest`), so no hash memo is kept.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from ccfv.errors import UserError

#: Part of every fingerprint; bump when what is hashed changes.
FINGERPRINT_FORMAT = "ccfv-data-content-1"
_CHUNK = 1 << 20


def file_digest(path: str | Path) -> str:
    """sha256 hex digest of the bytes of ``path`` (the stored bytes: a ``.nii.gz`` is hashed
    compressed, which is faster than decoding it and changes whenever its content does)."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError as exc:
        raise UserError(
            f"{path}: cannot read this file to fingerprint it "
            f"({exc.strerror or exc}); check that it exists and is readable"
        ) from exc


def data_fingerprint(cases: Iterable, labels: Mapping[int, str] | None = None) -> str:
    """16 hex digits identifying the cases' ids, file contents and class table.

    Parameters
    ----------
    cases : iterable of :class:`ccfv.data.Case`
        The selected cases; their order does not matter.
    labels : mapping of int to str, optional
        The class table the label maps are read with (``Dataset.labels``).
    """
    digest = hashlib.sha256(FINGERPRINT_FORMAT.encode())
    table = sorted((int(k), str(v)) for k, v in (labels or {}).items())
    digest.update(json.dumps(table).encode())
    for case in sorted(cases, key=lambda c: str(c.case_id)):
        files = [("image", p) for p in case.images] + [("label", case.label)]
        record = [str(case.case_id), [(role, file_digest(p)) for role, p in files]]
        digest.update(json.dumps(record).encode())
    return digest.hexdigest()[:16]
