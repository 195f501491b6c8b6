"""Content hashes of the files a bank entry reads (for :mod:`ccfv.bank.fingerprint`)."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

__all__ = ["file_sha256", "module_source_hash"]

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


def module_source_hash(module: str) -> str | None:
    """Content hash of a module's source file, or None when it cannot be located."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    origin = getattr(spec, "origin", None) if spec else None
    if not origin or not Path(origin).is_file():
        return None
    return file_sha256(origin)
