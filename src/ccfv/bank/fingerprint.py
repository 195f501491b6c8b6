"""A content fingerprint of a bank entry, the model part of feature-cache keys.

Two entries with the same fingerprint give the same features on the same data and plan: same
builder and arguments, same weights (checkpoint and TorchScript files by the SHA-256 of their
*content*, so moving or touching a file keeps the cache), same seed, layers and
preprocessing. The entry's name and the location of its files are left out.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from ccfv.bank.entry import BankEntry
from ccfv.bank.hashing import file_sha256
from ccfv.bank.kinds import kind_of

__all__ = ["FINGERPRINT_VERSION", "file_sha256", "fingerprint"]

#: Bumped whenever what the fingerprint covers, or what ``layers: auto`` picks, changes.
FINGERPRINT_VERSION = 1


def fingerprint(entry: BankEntry) -> str:
    """Deterministic SHA-256 (hex) of everything in ``entry`` that changes its features.

    Parameters
    ----------
    entry : BankEntry

    Returns
    -------
    str
        64 hex digits.

    Notes
    -----
    Covered: the kind and what it adds (:meth:`ccfv.bank.kinds.ModelKind.fingerprint`: the
    class path or factory plus the factory module's source file content, the TorchScript
    file's content, a bundle's configs and weights, an nnU-Net folder's plans; the MONAI
    version for classes and bundles, MONAI's architectures change between releases), ``args``,
    the checkpoint's content and key, the seed, the layers (``auto`` together with
    :data:`FINGERPRINT_VERSION`), the preprocessing. Not covered: the name, file locations,
    torch's version.
    """
    payload: dict[str, Any] = {
        "version": FINGERPRINT_VERSION,
        "kind": entry.kind,
        "args": entry.args,
        "seed": entry.seed,
        "layers": entry.layers if entry.layers == "auto" else [s.key for s in entry.layers],
        "preprocessing": dataclasses.asdict(entry.preprocessing),
        "checkpoint": None,
    }
    payload.update(kind_of(entry).fingerprint(entry))
    if entry.checkpoint is not None:
        payload["checkpoint"] = {
            "sha256": file_sha256(entry.checkpoint),
            "key": entry.checkpoint_key,
        }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=_jsonable)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    return repr(value)
