"""A benchmark ``size`` as one value per spatial axis (shared by the config, the tasks and the
networks, which import nothing else of each other for it)."""

from __future__ import annotations

from numbers import Integral


def spatial_size(size) -> list[int]:
    """A benchmark ``size`` as one value per spatial axis: an int is a square 2D image
    (``64`` -> ``[64, 64]``), a list is kept (``[48, 48, 24]``)."""
    return [int(size)] * 2 if isinstance(size, Integral) else [int(v) for v in size]
