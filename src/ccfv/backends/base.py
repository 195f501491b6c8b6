"""The feature-backend interface: what :func:`ccfv.rank.rank` asks of a backend."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ccfv.errors import UserError

if TYPE_CHECKING:
    from ccfv.passes import FeatureTarget, ModelFeatures

__all__ = ["FeatureBackend", "FeaturePasses", "check_retries", "check_torch_device"]


@runtime_checkable
class FeaturePasses(Protocol):
    """The passes of one run, started: iterate for one ModelFeatures per entry, in bank
    order (a failed pass is a ModelFeatures with ``error`` set, never an exception, so the
    other models go on); ``device`` is the device the passes run on; ``close()`` stops what
    is still running (Ctrl-C) and may be called more than once."""

    device: str

    def __iter__(self) -> Iterator[ModelFeatures]: ...

    def close(self) -> None: ...


@runtime_checkable
class FeatureBackend(Protocol):
    """Runs every bank entry's feature pass on a prepared target.

    ``name`` is recorded in the run's details when it is not ``local``.
    :meth:`check_device` is called once, before any work: it returns the device to use (the
    backend's default for None) or raises a UserError naming the flag and the fix.
    :meth:`run` starts the passes and returns them (:class:`FeaturePasses`).
    """

    name: str

    def check_device(self, device: str | None) -> str: ...

    def run(self, target: FeatureTarget, device: str) -> FeaturePasses: ...


def check_torch_device(device: str) -> str:
    """The device as given, once it is known to be usable here: a torch device this machine
    has (``cpu``, ``cuda``, ``cuda:N`` with that GPU present, ``mps`` where available)."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UserError(
            f"--device {device!r} is not a torch device: give cpu, cuda or cuda:N (the N-th GPU)"
        ) from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
            raise UserError(
                f"--device {device}: torch here ({torch.__version__}, {build}) sees "
                "no CUDA GPU: use --device cpu, or run where a GPU and a CUDA "
                "build of torch are installed"
            )
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise UserError(
                f"--device {device}: this machine has {count} CUDA GPU(s), "
                f"cuda:0 to cuda:{count - 1}"
            )
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise UserError(f"--device {device}: MPS is not available here: use --device cpu")
    elif parsed.type != "cpu":
        raise UserError(f"--device {device}: ccfv runs models on cpu, cuda[:N] or mps")
    return device


def check_retries(retries: object) -> int:
    """``retries`` (``--retries``, how often Ray retries a task): an integer >= 0."""
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise UserError(f"--retries {retries}: give 0 or more")
    return retries
