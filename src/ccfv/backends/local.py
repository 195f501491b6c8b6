"""The local feature backend: every pass here, in this process, one model after the other."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ccfv.backends.base import check_torch_device
from ccfv.passes import ModelFeatures, extract_model

if TYPE_CHECKING:
    from ccfv.passes import FeatureTarget

__all__ = ["LocalBackend"]


class LocalBackend:
    """Feature passes here (``--backend local``, the default) on a torch device of this
    machine (default ``cpu``)."""

    name = "local"

    def check_device(self, device: str | None) -> str:
        """``device`` (default ``cpu``) once torch here has it."""
        return check_torch_device("cpu" if device is None else device)

    def run(self, target: FeatureTarget, device: str) -> LocalPasses:
        """The passes of ``target``'s entries, run one by one as they are iterated."""
        return LocalPasses(target, device)

    def __repr__(self) -> str:
        return "LocalBackend()"


@dataclass
class LocalPasses:
    """Iterating runs each entry's pass (:func:`ccfv.passes.extract_model`) in bank order; a
    pass that raises is handed back as a failed :class:`ModelFeatures`."""

    target: FeatureTarget
    device: str

    def __iter__(self) -> Iterator[ModelFeatures]:
        target, files = self.target, self.target.case_files
        for entry in target.entries:
            try:
                yield extract_model(
                    entry,
                    target.loaded,
                    target.plan_for,
                    target.cache,
                    target.data_fp,
                    self.device,
                    target.autocast,
                    target.progress,
                    files,
                )
            except Exception as error:  # noqa: BLE001 - one model's failure is that model's
                yield ModelFeatures(entry.name, error=error)

    def close(self) -> None:
        """Nothing runs between two passes: nothing to stop."""
