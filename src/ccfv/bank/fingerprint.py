"""A content fingerprint of a bank entry, the model part of feature-cache keys.

Two entries with the same fingerprint give the same features on the same data and plan: same
builder and arguments, same weights (checkpoint and TorchScript files by the SHA-256 of their
*content*, so moving or touching a file keeps the cache), same seed, layers and
preprocessing. The entry's name and the location of its files are left out.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

from ccfv.bank.schema import BankEntry

__all__ = ["FINGERPRINT_VERSION", "file_sha256", "fingerprint"]

#: Bumped whenever what the fingerprint covers, or what ``layers: auto`` picks, changes.
FINGERPRINT_VERSION = 1
_CHUNK = 1 << 20
_memo: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's content, read in 1 MiB chunks (memoised on path, size and mtime)."""
    path = Path(path).resolve()
    stat = path.stat()
    memo_key = (str(path), stat.st_size, stat.st_mtime_ns)
    if memo_key not in _memo:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
        _memo[memo_key] = digest.hexdigest()
    return _memo[memo_key]


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
    Covered: the builder (class path or factory, plus the factory module's source file
    content; the TorchScript file's content), ``args``, the checkpoint's content and key, the
    seed, the layers (``auto`` together with :data:`FINGERPRINT_VERSION`), the preprocessing,
    and the MONAI version for ``network`` entries (MONAI's architectures change between
    releases). Not covered: the name, file locations, torch's version.
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
    if entry.kind == "network":
        import monai

        payload["network"] = entry.network
        payload["monai"] = monai.__version__
    elif entry.kind == "bundle":
        import monai

        from ccfv.bank.bundle import bundle_fingerprint

        payload["bundle"] = bundle_fingerprint(entry)
        payload["monai"] = monai.__version__
    elif entry.kind == "nnunet":
        from ccfv.bank.nnunet import nnunet_fingerprint

        payload["nnunet"] = nnunet_fingerprint(entry)
    elif entry.kind == "factory":
        payload["factory"] = entry.factory
        payload["factory_source"] = _module_source_hash(str(entry.factory).split(":", 1)[0])
    else:
        payload["torchscript"] = file_sha256(entry.torchscript)  # type: ignore[arg-type]
    if entry.checkpoint is not None:
        payload["checkpoint"] = {
            "sha256": file_sha256(entry.checkpoint),
            "key": entry.checkpoint_key,
        }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=_jsonable)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _module_source_hash(module: str) -> str | None:
    """Content hash of a module's source file, or None when it cannot be located."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    origin = getattr(spec, "origin", None) if spec else None
    if not origin or not Path(origin).is_file():
        return None
    return file_sha256(origin)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    return repr(value)
