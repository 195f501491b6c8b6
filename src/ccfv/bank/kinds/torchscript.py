"""``torchscript:`` entries: a TorchScript file (``torch.jit.save``), already built.

::

    - name: scripted
      torchscript: models/net.pt
      layers: [outputs.1, outputs.2]         # what its forward returns
      preprocessing: {roi: [96, 96, 96]}

The file is read with ``torch.jit.load`` (no ``args``). TorchScript modules cannot be hooked
(torch runs no Python hooks inside them), so the model is wrapped in :class:`TorchScriptModel`:
when its ``forward`` returns a tuple or a dict, the elements named as layers
``outputs.<index or key>`` pass through identity modules of that name, where the usual forward
hooks read them. A ``checkpoint`` is loaded into the scripted module. The fingerprint covers
the file's content.

``ccfv bank init`` reads ``*.ts`` files and the ``*.pt``/``*.pth`` files that are TorchScript
archives; it skips other torch files (a state dict does not say its architecture), never
unpickling arbitrary objects.
"""

from __future__ import annotations

import logging
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ccfv.bank.checkpoint import LoadReport, load_torch_file
from ccfv.bank.entry import BankEntry
from ccfv.bank.hashing import file_sha256
from ccfv.bank.hooks import TAP_PREFIX, OutputsModel, list_layers
from ccfv.bank.kinds.base import Candidate, ModelKind, Skipped, clean_name, relative_path
from ccfv.bank.kinds.common import apply_checkpoint, parse_built_entry
from ccfv.bank.validate import ParseContext, existing_file
from ccfv.errors import UserError, first_line

__all__ = ["TorchScript", "TorchScriptModel"]

log = logging.getLogger(__name__)

_DEFAULT_ROI = {3: (96, 96, 96), 2: (256, 256)}


class TorchScriptModel(OutputsModel):
    """A Python shell around a TorchScript module, so that what it returns can be hooked.

    Parameters
    ----------
    scripted : torch.jit.ScriptModule
        The loaded module.
    taps : sequence of str
        Keys (tuple indices as text, or dict keys) of the scripted forward's result to expose
        as the submodules ``outputs.<key>``.

    Notes
    -----
    ``forward`` returns the segmentation output: the tensor itself, element 0 of a tuple/list,
    or the value under ``"logits"``/``"out"``/``"pred"`` (else the first value) of a dict.
    """

    wrapped_label = "TorchScript"

    def __init__(self, scripted: torch.nn.Module, taps: Sequence[str] = ()):
        super().__init__()
        self.scripted = scripted
        self.outputs = torch.nn.ModuleDict({str(k): torch.nn.Identity() for k in taps})

    def wrapped(self) -> torch.nn.Module:
        return self.scripted


class TorchScript(ModelKind):
    """A TorchScript file, hooked through what its forward returns."""

    key = "torchscript"
    key_hint = "a .pt file"

    def parse(self, raw: Mapping[str, Any], ctx: ParseContext) -> BankEntry:
        path = existing_file(raw[self.key], ctx.base, f"{ctx.where}: '{self.key}'")
        return parse_built_entry(raw, ctx, self.key, path, takes_args=False)

    def files(self, entry: BankEntry) -> list[tuple[str, Path]]:
        return [("TorchScript file", Path(entry.location))]

    def load(self, entry: BankEntry) -> tuple[torch.nn.Module, LoadReport]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(entry.seed)
            model = self._construct(entry)
        if entry.checkpoint is not None:
            report = apply_checkpoint(entry, model.scripted)
        else:
            n = sum(1 for _ in model.scripted.parameters())
            report = LoadReport(
                entry=entry.name,
                initialisation="torchscript",
                n_params=n,
                n_params_matched=n,
                weights_from="the TorchScript file",
            )
            log.info("%s", report.summary())
        model.eval()
        return model, report

    def fingerprint(self, entry: BankEntry) -> dict[str, Any]:
        return {"torchscript": file_sha256(entry.location)}

    @staticmethod
    def _construct(entry: BankEntry) -> TorchScriptModel:
        try:
            with warnings.catch_warnings():
                # recent torch marks TorchScript deprecated; loading existing files still works
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                scripted = torch.jit.load(str(entry.location), map_location="cpu")
        except Exception as exc:
            raise UserError(
                f"model '{entry.name}': {entry.location} is not a TorchScript file "
                f"({type(exc).__name__}: {first_line(exc)}); "
                "write it with torch.jit.save(torch.jit.script(model), path)"
            ) from None
        taps = []
        if entry.layers != "auto":
            taps = [
                spec.name[len(TAP_PREFIX) :]
                for spec in entry.layers
                if spec.name.startswith(TAP_PREFIX) and "." not in spec.name[len(TAP_PREFIX) :]
            ]
        return TorchScriptModel(scripted, list(dict.fromkeys(taps)))

    # -- ccfv bank init --------------------------------------------------------------------

    def scan_file(self, path: Path, base: Path) -> Candidate | Skipped | None:
        suffix = path.suffix.lower()
        if suffix == ".ts":
            return _candidate(path, base)
        if suffix in (".pt", ".pth"):
            is_scripted, reason = _probe_torch_file(path)
            return _candidate(path, base) if is_scripted else Skipped(path, reason)
        return None

    def complete_candidate(self, candidate: Candidate, model: torch.nn.Module) -> None:
        if not isinstance(model, TorchScriptModel):
            return
        cand = candidate  # no hooks: read what forward returns
        cand.raw["layers"] = ["outputs.0"]
        guess = _guess_input(model)
        if guess is None:
            cand.notes.append(
                "input size unknown: set preprocessing.roi (the training patch "
                "size) and in_channels"
            )
            return
        channels, dims = guess
        roi = _DEFAULT_ROI[dims]
        try:
            infos = list_layers(model, [1, channels, *roi])
        except Exception as exc:
            cand.notes.append(
                f"a {list(roi)} window did not run "
                f"({first_line(exc, printable=True)[:100]}); "
                "set preprocessing.roi (the training patch size)"
            )
            return
        cand.raw["layers"] = [i.name for i in infos if i.output_shape is not None] or ["outputs.0"]
        cand.raw["preprocessing"] = {"roi": list(roi), "in_channels": channels}
        cand.notes.append(
            "TorchScript runs no hooks: layers are what its forward returns "
            "(outputs.N); roi guessed, set the training patch size"
        )


def _candidate(path: Path, base: Path) -> Candidate:
    return Candidate(
        raw={"name": clean_name(path.stem), "torchscript": relative_path(path, base)},
        source_format="torchscript",
        path=path,
        comment=f"TorchScript file: {path}",
    )


def _guess_input(model: TorchScriptModel) -> tuple[int, int] | None:
    """(in_channels, spatial dims) from the first convolution weight of a scripted model."""
    for p in model.scripted.parameters():
        if p.ndim in (4, 5):
            return int(p.shape[1]), p.ndim - 2
    return None


def _probe_torch_file(path: Path) -> tuple[bool, str]:
    """``(True, "")`` for a TorchScript archive, else ``(False, why it is skipped)``.

    Never unpickles arbitrary objects: ``torch.load(weights_only=True)`` only.
    """
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError):
            names = []
        if any("/code/" in n or n.endswith("/constants.pkl") for n in names):
            return True, ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = load_torch_file(path, "this file")
    except UserError as exc:
        return False, f"{exc}; or write a 'network'/'args'/'checkpoint' entry by hand"
    if _holds_state_dict(obj):
        return False, (
            "a state dict: it does not say its architecture. Write its entry by hand: "
            "{name: ..., network: monai.networks.nets.UNet (its class), args: {...the "
            f"constructor arguments...}}, checkpoint: {path}}}"
        )
    return False, (
        f"holds a {type(obj).__name__}, not a model ccfv can build; save a "
        "TorchScript file or a state dict with a 'network'/'args' entry"
    )


def _holds_state_dict(obj: Any) -> bool:
    if not isinstance(obj, Mapping) or not obj:
        return False
    if any(isinstance(v, torch.Tensor) for v in obj.values()):
        return True
    return any(
        isinstance(v, Mapping) and any(isinstance(t, torch.Tensor) for t in v.values())
        for v in obj.values()
    )
