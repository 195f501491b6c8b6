"""Turn a bank entry into a ready torch module in eval mode.

Three ways to build (one per entry): a class by dotted path (``network``, e.g.
``monai.networks.nets.UNet``) called with ``args``; a function (``factory``,
``pkg.module:function``) called with ``args``; a TorchScript file (``torchscript``) read with
``torch.jit.load``. Then the checkpoint, if any, is loaded through
:func:`ccfv.bank.checkpoint.apply_state_dict`, which refuses one that does not fit.

Without a checkpoint the network keeps the random initialisation drawn after
``torch.manual_seed(entry.seed)``: the seeded "no pre-training" baseline, identical on every
run. The seed is set inside ``torch.random.fork_rng`` so the caller's random state is untouched.

TorchScript modules cannot be hooked (torch runs no Python hooks inside them), so a
TorchScript model is wrapped in :class:`TorchScriptModel`: when its ``forward`` returns a tuple
or a dict, the elements named as layers ``outputs.<index or key>`` pass through identity
modules of that name, where the usual forward hooks read them.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ccfv.bank.checkpoint import LoadReport, apply_state_dict, read_state_dict
from ccfv.bank.schema import BankEntry
from ccfv.errors import UserError, first_line

__all__ = ["TorchScriptModel", "build_model", "load_model", "resolve_callable"]

log = logging.getLogger(__name__)

TAP_PREFIX = "outputs."


class TorchScriptModel(torch.nn.Module):
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

    def __init__(self, scripted: torch.nn.Module, taps: Sequence[str] = ()):
        super().__init__()
        self.scripted = scripted
        self.outputs = torch.nn.ModuleDict({str(k): torch.nn.Identity() for k in taps})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = self.scripted(x)
        for key, tap in self.outputs.items():
            tap(pick_output(raw, key))
        return primary_output(raw)


def pick_output(raw: Any, key: str) -> torch.Tensor:
    """Element ``key`` of a scripted forward's result (index for sequences, key for dicts)."""
    if isinstance(raw, torch.Tensor):
        if key != "0":
            raise UserError(
                f"the TorchScript model returns one tensor; only layer 'outputs.0' exists, not "
                f"'outputs.{key}'"
            )
        return raw
    if isinstance(raw, (tuple, list)):
        if not key.isdigit() or int(key) >= len(raw):
            raise UserError(
                f"the TorchScript model returns {len(raw)} values; layer 'outputs.{key}' must be "
                f"outputs.0 ... outputs.{len(raw) - 1}"
            )
        return raw[int(key)]
    if isinstance(raw, Mapping):
        if key not in raw:
            raise UserError(
                f"the TorchScript model returns a dict without '{key}'; its keys are "
                f"{', '.join(map(str, raw))}"
            )
        return raw[key]
    raise UserError(f"the TorchScript model returns a {type(raw).__name__}, which has no parts")


def primary_output(raw: Any) -> torch.Tensor:
    """The segmentation output of a forward's result (see :class:`TorchScriptModel`)."""
    if isinstance(raw, (tuple, list)):
        return raw[0]
    if isinstance(raw, Mapping):
        for key in ("logits", "out", "pred"):
            if key in raw:
                return raw[key]
        return next(iter(raw.values()))
    return raw


def resolve_callable(reference: str, *, entry: str = "?", what: str = "network") -> Any:
    """Import ``pkg.module.Name`` or ``pkg.module:name`` and return the object.

    A bare name (no dot) is looked up in ``monai.networks.nets``.

    Raises
    ------
    UserError
        The module cannot be imported or has no such attribute (close names are suggested).
    """
    if ":" in reference:
        module_name, attr = reference.split(":", 1)
    elif "." in reference:
        module_name, attr = reference.rsplit(".", 1)
    else:
        module_name, attr = "monai.networks.nets", reference
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(
            f"model '{entry}': cannot import module '{module_name}' of {what} '{reference}' "
            f"({exc}); check the spelling and that the package is installed / on PYTHONPATH"
        ) from None
    try:
        return getattr(module, attr)
    except AttributeError:
        import difflib

        close = difflib.get_close_matches(attr, [n for n in dir(module) if not n.startswith("_")])
        hint = f"; did you mean {', '.join(module_name + '.' + c for c in close)}?" if close else ""
        raise UserError(
            f"model '{entry}': module '{module_name}' has no '{attr}' ({what} '{reference}'){hint}"
        ) from None


def load_model(entry: BankEntry) -> tuple[torch.nn.Module, LoadReport]:
    """Build the entry's network, load its weights, put it in eval mode.

    Parameters
    ----------
    entry : BankEntry

    Returns
    -------
    model : torch.nn.Module
        On the CPU, in eval mode. A TorchScript entry gives a :class:`TorchScriptModel`.
    report : LoadReport
        Where the weights come from and how well the checkpoint matched.

    Raises
    ------
    UserError
        The class/factory cannot be found or rejects ``args``, the TorchScript file cannot be
        read, the checkpoint cannot be read or does not fit.
    """
    if entry.kind == "bundle":  # MONAI bundle: network_def + models/model.pt, strict
        from ccfv.bank.bundle import load_bundle_model

        return load_bundle_model(entry)
    if entry.kind == "nnunet":  # nnU-Net v2 folder: plans.json + fold_X checkpoint, strict
        from ccfv.bank.nnunet import load_nnunet_model

        return load_nnunet_model(entry)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(entry.seed)
        model = _construct(entry)
    if entry.checkpoint is not None:
        state, key = read_state_dict(entry.checkpoint, entry.checkpoint_key, entry=entry.name)
        target = model.scripted if isinstance(model, TorchScriptModel) else model
        report = apply_state_dict(
            target,
            state,
            entry=entry.name,
            checkpoint=entry.checkpoint,
            key=key,
            seed=entry.seed,
        )
    elif isinstance(model, TorchScriptModel):
        n = sum(1 for _ in model.scripted.parameters())
        report = LoadReport(
            entry=entry.name, initialisation="torchscript", n_params=n, n_params_matched=n
        )
        log.info("%s", report.summary())
    else:
        report = LoadReport(
            entry=entry.name,
            initialisation="seeded-random",
            seed=entry.seed,
            n_params=sum(1 for _ in model.parameters()),
        )
        log.warning("%s", report.summary())
    model.eval()
    return model, report


def build_model(entry: BankEntry) -> torch.nn.Module:
    """The entry's network with its weights, in eval mode (see :func:`load_model`)."""
    return load_model(entry)[0]


# ------------------------------------------------------------------------------------------------


def _construct(entry: BankEntry) -> torch.nn.Module:
    if entry.kind == "torchscript":
        try:
            with warnings.catch_warnings():
                # recent torch marks TorchScript deprecated; loading existing files still works
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                scripted = torch.jit.load(str(entry.torchscript), map_location="cpu")
        except Exception as exc:
            raise UserError(
                f"model '{entry.name}': {entry.torchscript} is not a TorchScript file "
                f"({type(exc).__name__}: {first_line(exc)}); "
                "write it with torch.jit.save(torch.jit.script(model), path)"
            ) from None
        taps = []
        if entry.layers != "auto":
            taps = [
                spec.name[len(TAP_PREFIX):]
                for spec in entry.layers
                if spec.name.startswith(TAP_PREFIX) and "." not in spec.name[len(TAP_PREFIX):]
            ]
        return TorchScriptModel(scripted, dict.fromkeys(taps))

    reference = entry.network if entry.kind == "network" else entry.factory
    assert reference is not None
    what = entry.kind
    builder = resolve_callable(reference, entry=entry.name, what=what)
    if not callable(builder):
        raise UserError(f"model '{entry.name}': {what} '{reference}' is not callable")
    try:
        model = builder(**entry.args)
    except (TypeError, ValueError, AssertionError) as exc:
        raise UserError(
            f"model '{entry.name}': {what} '{reference}' rejected args {entry.args} "
            f"({type(exc).__name__}: {exc}); fix 'args' in {entry.source}"
        ) from None
    except ImportError as exc:  # e.g. MONAI's OptionalImportError for einops
        raise UserError(
            f"model '{entry.name}': {what} '{reference}' needs a package that is not installed "
            f"({first_line(exc)}); install it"
        ) from None
    if not isinstance(model, torch.nn.Module):
        raise UserError(
            f"model '{entry.name}': {what} '{reference}' returned a {type(model).__name__}, not a "
            "torch.nn.Module"
        )
    _check_optional_dependencies(model, entry)
    return model


#: MONAI modules that import einops lazily, failing only in ``forward``.
_NEEDS_EINOPS = (
    "monai.networks.nets.swin_unetr",
    "monai.networks.blocks.selfattention",
    "monai.networks.blocks.crossattention",
    "monai.networks.blocks.patchembedding",
)


def _check_optional_dependencies(model: torch.nn.Module, entry: BankEntry) -> None:
    """Fail now, not in the first forward, when a MONAI block needs einops and it is missing."""
    if not any(type(m).__module__ in _NEEDS_EINOPS for m in model.modules()):
        return
    try:
        importlib.import_module("einops")
    except ImportError:
        raise UserError(
            f"model '{entry.name}' ({entry.target}) needs the package einops, which is not "
            "installed; install it (pip install einops)"
        ) from None
