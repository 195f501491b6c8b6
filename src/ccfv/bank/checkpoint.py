"""Reading checkpoints and loading them into a model, with a report of what matched.

A checkpoint that silently leaves a network randomly initialised (or drops keys of the wrong
shape) makes a transferability ranking meaningless, so every load is compared key by key with
the model and refused when less than ``min_fraction`` (90 %) of the model's parameter tensors
are matched with the right shape.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ccfv.errors import UserError, first_line

__all__ = [
    "DEFAULT_KEYS",
    "LoadReport",
    "MIN_MATCH_FRACTION",
    "apply_state_dict",
    "load_torch_file",
    "read_state_dict",
    "strip_prefixes",
]

log = logging.getLogger(__name__)

#: Keys tried, in order, when the checkpoint is a dict that is not itself a state dict.
DEFAULT_KEYS = ("state_dict", "model", "network_weights", "model_state_dict", "net", "network")
#: Prefixes added by DataParallel/DistributedDataParallel and by torch.compile.
STRIPPED_PREFIXES = ("module.", "_orig_mod.")
#: Fewer matched parameter tensors than this fraction of the model's refuse the checkpoint.
MIN_MATCH_FRACTION = 0.9
_EXAMPLES = 5


@dataclass(frozen=True)
class LoadReport:
    """What happened when a bank entry's weights were set.

    Attributes
    ----------
    entry : str
        The bank entry's name.
    initialisation : {"checkpoint", "seeded-random", "torchscript"}
        Where the weights come from.
    checkpoint : Path or None
        The checkpoint file, if any.
    key : str or None
        The key of the checkpoint dict that held the state dict (None: the file was one).
    seed : int or None
        The initialisation seed (random init and any tensor the checkpoint did not cover).
    n_params : int
        Parameter tensors of the model.
    n_params_matched : int
        Of those, how many the checkpoint set (name and shape matched).
    matched, missing, unexpected : tuple of str
        State-dict keys loaded / in the model but not in the checkpoint / in the checkpoint but
        not in the model (buffers included).
    shape_mismatched : tuple of (str, tuple, tuple)
        Keys in both with different shapes: (key, checkpoint shape, model shape); not loaded.
    stripped : tuple of str
        Prefixes removed from the checkpoint's keys.
    weights_from : str or None
        Where the weights are when the model file holds them (no checkpoint), for the
        summary: ``"the TorchScript file"``.
    """

    entry: str
    initialisation: str
    checkpoint: Path | None = None
    key: str | None = None
    seed: int | None = None
    n_params: int = 0
    n_params_matched: int = 0
    matched: tuple[str, ...] = field(default=(), repr=False)
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    shape_mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = ()
    stripped: tuple[str, ...] = ()
    weights_from: str | None = None

    @property
    def fraction_matched(self) -> float:
        """Matched parameter tensors / model parameter tensors (1.0 for a model without any)."""
        return self.n_params_matched / self.n_params if self.n_params else 1.0

    @property
    def n_missing(self) -> int:
        return len(self.missing)

    @property
    def n_unexpected(self) -> int:
        return len(self.unexpected)

    @property
    def n_shape_mismatched(self) -> int:
        return len(self.shape_mismatched)

    def summary(self) -> str:
        """One line for logs and reports."""
        if self.initialisation == "seeded-random":
            return (
                f"{self.entry}: no checkpoint, random initialisation with seed {self.seed} "
                "(the 'no pre-training' baseline)"
            )
        if self.weights_from is not None and self.checkpoint is None:
            return f"{self.entry}: weights from {self.weights_from}"
        return (
            f"{self.entry}: checkpoint {self.checkpoint}"
            + (f" [key '{self.key}']" if self.key else "")
            + f" set {self.n_params_matched}/{self.n_params} parameter tensors "
            f"({100 * self.fraction_matched:.1f}%); missing {self.n_missing}, unexpected "
            f"{self.n_unexpected}, shape mismatched {self.n_shape_mismatched}"
        )


# ------------------------------------------------------------------------------------------------


def read_state_dict(
    path: str | Path, key: str | None = None, *, entry: str = "?"
) -> tuple[dict[str, torch.Tensor], str | None]:
    """Load a checkpoint file on the CPU and return its state dict.

    Parameters
    ----------
    path : str or Path
        A file written by ``torch.save``.
    key : str, optional
        The key holding the state dict. Without it, the file itself is used when it is a state
        dict (a mapping of tensors), else the first of :data:`DEFAULT_KEYS` present.
    entry : str
        The bank entry's name, for messages.

    Returns
    -------
    state : dict of str to Tensor
    key : str or None
        The key used (None when the file was the state dict).

    Raises
    ------
    UserError
        The file is not a torch checkpoint, pickles objects (a whole ``nn.Module``: save its
        ``state_dict``), the key is absent, or no state dict is found.

    Notes
    -----
    Read with :func:`load_torch_file` (``weights_only=True``, numpy arrays and scalars
    allowed); a checkpoint pickling any other object, e.g. a whole ``nn.Module``, is refused.
    """
    path = Path(path)
    obj = _torch_load(path, entry)
    if not isinstance(obj, Mapping):
        raise UserError(
            f"checkpoint {path} of model '{entry}' holds a {type(obj).__name__}, not a state "
            "dict or a dict containing one; save it with torch.save(model.state_dict(), path)"
        )
    if key is not None:
        if key not in obj:
            raise UserError(
                f"checkpoint {path} of model '{entry}' has no key '{key}'; its keys are "
                f"{_short(list(map(str, obj)))}. Fix 'checkpoint.key' in the bank"
            )
        return _as_state_dict(obj[key], path, entry, key), key
    if _is_state_dict(obj):
        return dict(obj), None
    for candidate in DEFAULT_KEYS:
        if candidate in obj:
            value = obj[candidate]
            if _is_state_dict(value):
                return _as_state_dict(value, path, entry, candidate), candidate
    raise UserError(
        f"checkpoint {path} of model '{entry}' is a dict without a state dict under any of "
        f"{', '.join(DEFAULT_KEYS)}; its keys are {_short(list(map(str, obj)))}. Name the key "
        "with 'checkpoint: {path: ..., key: KEY}' in the bank"
    )


def strip_prefixes(state: Mapping[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Remove leading ``module.`` (DataParallel) and ``_orig_mod.`` (torch.compile) from keys.

    A prefix is removed only when every key has it, repeatedly, so ``module._orig_mod.x``
    becomes ``x``. Returns the new dict and the prefixes removed, in order.
    """
    out = dict(state)
    removed: list[str] = []
    changed = True
    while changed and out:
        changed = False
        for prefix in STRIPPED_PREFIXES:
            if all(k.startswith(prefix) for k in out):
                out = {k[len(prefix) :]: v for k, v in out.items()}
                removed.append(prefix)
                changed = True
    return out, tuple(removed)


def apply_state_dict(
    model: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    entry: str,
    checkpoint: Path | None = None,
    key: str | None = None,
    seed: int | None = None,
    min_fraction: float = MIN_MATCH_FRACTION,
) -> LoadReport:
    """Load the tensors of ``state`` whose names and shapes match ``model``; report the rest.

    Parameters
    ----------
    model : torch.nn.Module
        Modified in place.
    state : mapping of str to Tensor
        Prefixes ``module.`` / ``_orig_mod.`` are stripped first.
    entry, checkpoint, key, seed
        Recorded in the report and named in messages.
    min_fraction : float
        Refuse when fewer than this fraction of the model's parameter tensors are matched.

    Returns
    -------
    LoadReport

    Raises
    ------
    UserError
        Too few parameter tensors matched; nothing is loaded then.
    """
    state, stripped = strip_prefixes(state)
    own = model.state_dict()
    param_names = {name for name, _ in model.named_parameters()}
    matched, mismatched, missing = [], [], []
    for name, tensor in own.items():
        if name not in state:
            missing.append(name)
            continue
        theirs = state[name]
        if not isinstance(theirs, torch.Tensor) or tuple(theirs.shape) != tuple(tensor.shape):
            shape = tuple(theirs.shape) if isinstance(theirs, torch.Tensor) else ()
            mismatched.append((name, shape, tuple(tensor.shape)))
            continue
        matched.append(name)
    unexpected = [k for k in state if k not in own]
    n_params = sum(1 for name in own if name in param_names)
    n_matched = sum(1 for name in matched if name in param_names)
    report = LoadReport(
        entry=entry,
        initialisation="checkpoint",
        checkpoint=checkpoint,
        key=key,
        seed=seed,
        n_params=n_params,
        n_params_matched=n_matched,
        matched=tuple(matched),
        missing=tuple(missing),
        unexpected=tuple(unexpected),
        shape_mismatched=tuple(mismatched),
        stripped=stripped,
    )
    if report.fraction_matched < min_fraction:
        raise UserError(
            f"checkpoint {checkpoint} does not fit model '{entry}' ({type(model).__name__}): only "
            f"{n_matched} of {n_params} parameter tensors ({100 * report.fraction_matched:.1f}%) "
            f"match by name and shape, {100 * min_fraction:.0f}% needed. "
            + _examples(report)
            + " Check that 'network'/'args' describe the architecture the checkpoint was trained "
            "with, and 'checkpoint.key' if the state dict sits under another key"
        )
    if matched:
        model.load_state_dict({k: state[k] for k in matched}, strict=False)
    if missing or unexpected or mismatched:
        log.warning("%s. %s", report.summary(), _examples(report))
    else:
        log.info("%s", report.summary())
    return report


# ------------------------------------------------------------------------------------------------


def _numpy_globals() -> list:
    """The numpy classes and reconstructors that plain arrays and scalars pickle with.

    nnU-Net's checkpoints hold numpy scalars (its training log); ``torch.load(weights_only=True)``
    reads them once these are allowed. None of them runs code: they rebuild an array, a
    scalar or a dtype from its bytes (an object array's items are unpickled by the same
    restricted unpickler).
    """
    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]
    dtypes = {type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDGSUV"}
    dtypes.add(type(np.dtype("M8[s]")))
    dtypes.add(type(np.dtype("m8[s]")))
    return [
        multiarray._reconstruct,
        multiarray.scalar,
        np.ndarray,
        np.dtype,
        *sorted((d for d in dtypes if d is not np.dtype), key=lambda d: d.__name__),
    ]


def load_torch_file(path: str | Path, what: str) -> Any:
    """Read a file written by ``torch.save``: THE one place ccfv calls ``torch.load``.

    Always ``torch.load(path, map_location="cpu", weights_only=True)``: tensors, containers,
    plain Python values, ``torch.device`` / dtypes and numpy arrays and scalars are read; any
    other pickled object (a whole ``nn.Module`` saved with ``torch.save(model)``, a custom
    class, a function) is refused without being unpickled, so no code from the file runs.

    Parameters
    ----------
    path : str or Path
        The file.
    what : str
        How messages name the file, e.g. ``"checkpoint ck.pt of model 'unet'"``.

    Raises
    ------
    UserError
        The file is missing, is not a torch file, or pickles objects other than the above
        (naming up to five of them and the fix: save the ``state_dict``).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what}: {path} is not a file; point it at a file written by torch.save")
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        unsafe = _unsafe_globals(path)
        if not unsafe:  # torch's own text would advise weights_only=False: never
            raise UserError(
                f"{what} is not a readable torch checkpoint ({_unpickler_reason(exc)}); "
                "point it at a complete file written by torch.save"
            ) from None
        modules = [name for name in unsafe if ".nn." in name or ".networks." in name]
        kind = "a whole pickled nn.Module" if modules else "pickled Python objects besides tensors"
        raise UserError(
            f"{what} holds {kind} ({_short(unsafe)}); ccfv reads checkpoints with "
            "torch.load(weights_only=True) only and never unpickles objects, since unpickling "
            "runs code from the file. Save the weights instead: "
            "torch.save(model.state_dict(), path) (with 'network'/'args' in the bank), or the "
            "model as TorchScript: torch.jit.save(torch.jit.script(model), path)"
        ) from None
    except Exception as exc:  # not a zip/pickle file at all, truncated file, ...
        raise UserError(
            f"{what} is not a readable torch checkpoint ({type(exc).__name__}: "
            f"{first_line(exc)}); point it at a file written by torch.save"
        ) from None


def _unpickler_reason(exc: BaseException) -> str:
    """The restricted unpickler's own reason, without torch's advice to unpickle."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            rest = line.split("WeightsUnpickler error:", 1)[1].strip()
            reason = rest or (lines[i + 1] if i + 1 < len(lines) else "")
            if reason:
                return f"not a torch.save file or a damaged one: {reason}"
    return "not a torch.save file, or a damaged one"


def _unsafe_globals(path: Path) -> list[str]:
    """Names of the classes/functions a torch file would unpickle, read without unpickling."""
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # an unusual archive: the message just lacks the names
        return []
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in _numpy_globals()}
    return sorted({name for name in names if name not in allowed})


def _torch_load(path: Path, entry: str) -> Any:
    """A bank checkpoint of model ``entry`` (:func:`load_torch_file`)."""
    return load_torch_file(path, f"checkpoint {path} of model '{entry}'")


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _as_state_dict(value: Any, path: Path, entry: str, key: str) -> dict[str, torch.Tensor]:
    if isinstance(value, Mapping):
        tensors = {k: v for k, v in value.items() if isinstance(v, torch.Tensor)}
        if tensors and all(isinstance(k, str) for k in tensors):
            return tensors
    raise UserError(
        f"checkpoint {path} of model '{entry}': key '{key}' holds a {type(value).__name__} "
        "without tensors, not a state dict; name the key that holds the weights"
    )


def _examples(report: LoadReport) -> str:
    parts = []
    if report.missing:
        parts.append(f"missing in checkpoint: {_short(list(report.missing))}")
    if report.unexpected:
        parts.append(f"not in model: {_short(list(report.unexpected))}")
    if report.shape_mismatched:
        shown = [
            f"{k} (checkpoint {list(a)} vs model {list(b)})"
            for k, a, b in report.shape_mismatched[:_EXAMPLES]
        ]
        more = len(report.shape_mismatched) - len(shown)
        parts.append(
            "shape mismatch: " + ", ".join(shown) + (f" and {more} more" if more > 0 else "")
        )
    return ("Examples: " + "; ".join(parts) + ".") if parts else ""


def _short(names: list[str]) -> str:
    shown = ", ".join(names[:_EXAMPLES])
    more = len(names) - _EXAMPLES
    return shown + (f" and {more} more" if more > 0 else "")
