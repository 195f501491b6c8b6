"""What a kind of bank entry provides: the :class:`ModelKind` interface.

A kind is one way of getting a model from a bank entry: a MONAI class by name (``network:``),
a factory function (``factory:``), a TorchScript file (``torchscript:``), a MONAI bundle folder
(``bundle:``), an nnU-Net v2 trained-model folder (``nnunet:``). Each lives in one module of
:mod:`ccfv.bank.kinds` as a subclass of :class:`ModelKind` and is registered in
:mod:`ccfv.bank.kinds` (one line); every place of ccfv that depends on the kind asks the
registry for the entry's kind and calls one of these methods. The methods that are not
abstract have the behaviour of an entry that uses the bank file's own ``preprocessing`` keys
and ``layers: auto`` for MONAI architectures, so a kind overrides only what it does otherwise.

Also here: what ``ccfv bank init`` finds (:class:`Candidate`, :class:`Skipped`), because a
kind may recognise its own files or folders (:meth:`ModelKind.scan_folder`,
:meth:`ModelKind.scan_file`).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from ccfv.bank.checkpoint import LoadReport
from ccfv.bank.entry import BankEntry, LayerSpec
from ccfv.bank.hooks import auto_layers
from ccfv.bank.transforms import PreprocessFn, describe_keys, make_preprocess, summarize_keys
from ccfv.bank.validate import ParseContext

__all__ = ["Candidate", "ModelKind", "Skipped", "clean_name", "relative_path"]


@dataclass
class Candidate:
    """A model found by ``ccfv bank init``: its bank entry (as written) and where it came from."""

    raw: dict[str, Any]
    source_format: str
    path: Path
    comment: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass
class Skipped:
    """A file or folder ``ccfv bank init`` did not turn into an entry, and why."""

    path: Path
    reason: str


class ModelKind(ABC):
    """One kind of bank entry.

    Class attributes
    ----------------
    key : str
        The YAML key that selects the kind (``bundle``); also ``BankEntry.kind``.
    key_hint : str
        What the key's value is, for "give exactly one of 'key' (hint), ..." messages.
    owns_entry : bool
        True: the key selects the kind whatever else the entry holds, and :meth:`parse` checks
        every other key itself (a folder that brings its own network, weights and
        preprocessing). False: the kind is one of the builders of an entry with the common
        keys (``args``, ``checkpoint``, ``seed``, ``layers``, ``preprocessing``), and an entry
        names exactly one builder.
    """

    key: ClassVar[str]
    key_hint: ClassVar[str]
    owns_entry: ClassVar[bool] = False

    # -- the bank file ---------------------------------------------------------------------

    @abstractmethod
    def parse(self, raw: Mapping[str, Any], ctx: ParseContext) -> BankEntry:
        """Validate the entry ``raw`` (a mapping with this kind's key) into a BankEntry.

        Raises :class:`ccfv.errors.UserError` naming ``ctx.where``, the value and the fix
        (the validators of :mod:`ccfv.bank.validate` do).
        """

    def files(self, entry: BankEntry) -> list[tuple[str, Path]]:
        """``[(what, path)]`` of the files and folders the entry reads besides its checkpoint
        (the registry adds that one): checked by ``rank --backend ray`` on every worker."""
        return []

    # -- the model -------------------------------------------------------------------------

    @abstractmethod
    def load(self, entry: BankEntry) -> tuple[torch.nn.Module, LoadReport]:
        """The entry's network with its weights, on the CPU, in eval mode, and how the weights
        were set (see :func:`ccfv.bank.load_model`)."""

    @abstractmethod
    def fingerprint(self, entry: BankEntry) -> dict[str, Any]:
        """What changes the entry's features besides the keys every fingerprint covers (args,
        seed, layers, preprocessing, checkpoint): added to the payload of
        :func:`ccfv.bank.fingerprint`. Changing what a kind returns invalidates cached
        features, so it is pinned by the tests."""

    def auto_layers(self, model: torch.nn.Module, entry: BankEntry) -> list[LayerSpec]:
        """``layers: auto``: the decoder pyramid of a known MONAI architecture."""
        return auto_layers(model, entry=entry.name)

    # -- the image -------------------------------------------------------------------------

    def preprocess(self, entry: BankEntry, ndim: int) -> PreprocessFn:
        """``f(image, affine) -> (image', affine')`` for ``ndim``-D images (see
        :func:`ccfv.bank.make_preprocess` for the contract)."""
        return make_preprocess(entry.preprocessing, ndim)

    def describe_preprocessing(self, entry: BankEntry) -> str:
        """One line naming what the entry does to an image before its windows (messages)."""
        return describe_keys(entry.preprocessing)

    def summary(self, entry: BankEntry) -> str:
        """The entry's one-line preprocessing and window summary in ``ccfv bank check``."""
        return summarize_keys(entry.preprocessing)

    def window_note(self, entry: BankEntry) -> str:
        """Added to ``bank check``'s "the window size is unknown" message (why it is)."""
        return ""

    def trainer_checkpoint(
        self, entry: BankEntry, state: Mapping[str, Any], classes: Mapping[str, str]
    ) -> tuple[str, dict[str, Any]] | None:
        """Fine-tuned weights ``state`` in the form the entry's own trainer continues from, as
        ``(file name, object to torch.save)``; ``classes`` maps the target's label ids (as
        text) to class names. None: the plain state dict is that form (``ccfv select``)."""
        return None

    # -- ccfv bank init --------------------------------------------------------------------

    def scan_folder(self, folder: Path, base: Path) -> list[Candidate | Skipped] | None:
        """The entries (or skipped reasons) of ``folder`` when it is a model folder of this
        kind (the scan then does not descend into it), else None. ``base`` is the folder of
        the bank file being written (paths are written relative to it)."""
        return None

    def scan_file(self, path: Path, base: Path) -> Candidate | Skipped | None:
        """The entry (or skipped reason) of the file ``path`` when this kind reads such files,
        else None."""
        return None

    def complete_candidate(self, candidate: Candidate, model: torch.nn.Module) -> None:
        """Fill in what the scan could only know once the model was loaded (layers, window),
        adding notes to ``candidate.notes``."""
        return None


def clean_name(text: str) -> str:
    """``text`` as a model name: letters, digits, ``_.-`` (others become ``_``)."""
    text = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")
    return text or "model"


def relative_path(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` when it lies under it, else absolute, as text."""
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)
