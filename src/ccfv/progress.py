"""The one progress helper: tqdm bars for the feature passes, the bootstrap, the windows and
the training loop.

Every bar of a run goes through :func:`progress` (over an iterable) or :func:`progress_bar`
(a counter updated by hand), so that ``--quiet`` (``enabled=False``) turns all of them off in
one place and they all look alike (tqdm's ``auto`` front end, on stderr).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def progress(
    items: Iterable[T], *, desc: str, unit: str, enabled: bool = True, leave: bool = False
) -> Iterator[T]:
    """``items`` with a tqdm bar named ``desc`` counting ``unit``; ``items`` itself when
    ``enabled`` is false. The items are listed first, so the bar knows its length."""
    if not enabled:
        return iter(items)
    from tqdm.auto import tqdm

    return iter(tqdm(list(items), desc=desc, unit=unit, leave=leave))


def progress_bar(
    total: int,
    *,
    desc: str,
    unit: str,
    enabled: bool = True,
    initial: int = 0,
    leave: bool = True,
) -> Any:
    """A tqdm bar of ``total`` steps starting at ``initial`` (call ``update(n)``,
    ``set_postfix_str`` and ``close()``), or None when not ``enabled``."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, initial=initial, leave=leave)
