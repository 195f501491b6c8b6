"""Atomic file writes: a reader sees the old file, the new file, or nothing, never a part.

Every file ccfv writes for a user (reports, scores, the feature cache, the demo's dataset.json)
goes through :func:`atomic_write`: the content is written to a temporary file with a unique name
in the target's folder (``.<name>.<random>.tmp``), flushed and fsync'ed, then moved over the
target with :func:`os.replace`. A run killed part-way leaves at most a temporary file, which no
reader opens; an exception while writing removes it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "write_png"]


def atomic_write(path: str | Path, content: str | bytes | Callable[[BinaryIO], object]) -> Path:
    """Write ``content`` to ``path`` atomically and return ``path``.

    ``content`` is text (written as UTF-8, newlines as given), bytes, or a function called with
    the temporary file opened in binary mode (``lambda fh: np.savez(fh, ...)``). The folder of
    ``path`` must exist.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            if isinstance(content, str):
                handle.write(content.encode("utf-8"))
            elif isinstance(content, bytes):
                handle.write(content)
            else:
                content(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def write_png(figure, path: str | Path, dpi: int = 110) -> Path:
    """Save a matplotlib ``figure`` to ``path`` as PNG through :func:`atomic_write` (a killed
    run leaves no half-written plot) and close it (pyplot keeps every open figure otherwise),
    also when saving fails. Returns ``path``."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=dpi))
    finally:
        plt.close(figure)
    return path
