"""Checkpoints of the benchmark: loading pre-trained weights except the head, and atomic
``torch.save`` files that ``ccfv rank`` reads with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ccfv.errors import UserError
from ccfv.files import atomic_write

__all__ = [
    "checkpoint_fingerprint",
    "fingerprint_once",
    "load_checkpoint",
    "load_pretrained",
    "save_checkpoint",
]


def load_pretrained(
    model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], head: str
) -> dict[str, Any]:
    """Load a pre-trained checkpoint into ``model`` except its head, which keeps its weights.

    Parameters
    ----------
    model : torch.nn.Module
        Freshly built (and seeded) target network; modified in place.
    state_dict : mapping of str to Tensor
        The pre-trained weights (see :func:`load_checkpoint`).
    head : str
        Module name of the head (:func:`head_module`): keys starting with ``head + "."`` are not
        loaded, whatever their shape (the source task may have another number of classes).

    Returns
    -------
    dict
        ``{"loaded": number of tensors loaded, "reinitialised": the model's head keys}``.

    Raises
    ------
    UserError
        ``head`` is not a module with weights of ``model``, or, outside the head, the checkpoint
        lacks a key of the model, has a key the model lacks, or has a tensor of another shape:
        a checkpoint of another architecture. The message names the keys; nothing is loaded.
    """
    prefix = head + "."
    own = model.state_dict()
    head_keys = [k for k in own if k.startswith(prefix)]
    if not head_keys:
        raise UserError(
            f"head '{head}' is not a module with weights of this {type(model).__name__}"
        )
    missing, mismatched, to_load = [], [], {}
    for key, tensor in own.items():
        if key.startswith(prefix):
            continue
        if key not in state_dict:
            missing.append(key)
            continue
        theirs = state_dict[key]
        if not isinstance(theirs, torch.Tensor) or theirs.shape != tensor.shape:
            shape = list(theirs.shape) if isinstance(theirs, torch.Tensor) else type(theirs)
            mismatched.append(f"{key} (checkpoint {shape} vs model {list(tensor.shape)})")
            continue
        to_load[key] = theirs
    unexpected = [k for k in state_dict if k not in own and not k.startswith(prefix)]
    if missing or mismatched or unexpected:
        parts = []
        if missing:
            parts.append(f"missing in the checkpoint: {_names(missing)}")
        if mismatched:
            parts.append(f"shape mismatch: {_names(mismatched)}")
        if unexpected:
            parts.append(f"not in the model: {_names(unexpected)}")
        raise UserError(
            f"the checkpoint does not fit this {type(model).__name__} outside its head "
            f"'{head}' ({'; '.join(parts)}); was it trained with another architecture?"
        )
    model.load_state_dict(to_load, strict=False)
    return {"loaded": len(to_load), "reinitialised": head_keys}


def _names(keys: list[str], shown: int = 5) -> str:
    more = len(keys) - shown
    return ", ".join(keys[:shown]) + (f" and {more} more" if more > 0 else "")


def _plain(value: Any, where: str = "meta") -> Any:
    """``value`` as str/int/float/bool/None, lists and str-keyed dicts (safe to unpickle)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(
        f"{where} is a {type(value).__name__}; checkpoint meta holds only plain values "
        "(str, numbers, bool, None, lists, dicts)"
    )


def save_checkpoint(model: torch.nn.Module, path: str | Path, meta: Mapping[str, Any]) -> Path:
    """Write ``{"state_dict": model weights (CPU), "meta": meta}`` atomically.

    The file is written to a temporary file in the same folder (created if needed) and moved
    into place with ``os.replace``, so an interrupted run never leaves a truncated checkpoint.
    ``meta`` is stored as plain values (tuples become lists, numpy scalars numbers, paths text)
    so that the file loads with ``torch.load(..., weights_only=True)``: ``ccfv rank`` reads it
    as a bank checkpoint (its state dict under the default key ``state_dict``).

    Returns the path written.
    """
    path = Path(path)
    plain_meta = _plain(dict(meta))
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(
        path, lambda handle: torch.save({"state_dict": state, "meta": plain_meta}, handle)
    )


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by :func:`save_checkpoint`: ``(state_dict, meta)`` on the CPU."""
    from ccfv.bank.checkpoint import load_torch_file

    obj = load_torch_file(path, f"benchmark checkpoint {path}")
    if not isinstance(obj, Mapping) or "state_dict" not in obj:
        raise UserError(f"{path} is not a benchmark checkpoint (no 'state_dict')")
    return dict(obj["state_dict"]), dict(obj.get("meta", {}))


def checkpoint_fingerprint(path: str | Path) -> str:
    """The first 12 hex characters of a sha256 over the weights of a benchmark checkpoint.

    What is hashed: the ``state_dict`` of the file (read by :func:`load_checkpoint`, i.e.
    ``torch.load(weights_only=True)``), its tensor names in sorted order, and for each its
    name, dtype, shape and raw bytes (CPU, contiguous). The ``meta`` (seconds, losses) is
    not hashed, nor are the file's bytes: ``torch.save`` writes a zip container whose bytes
    depend on more than the weights (the record names, the torch version), so the same
    weights saved twice may differ as files; two checkpoints have one fingerprint exactly
    when they hold the same weights.

    Why: pre-training is not bit-reproducible across machines (the same seed and config give
    other weights on another CPU), so a fine-tuning run is tied to the weights it started
    from by this fingerprint in its cache name (:func:`ccfv.bench.run.finetune_path`).
    """
    state, _meta = load_checkpoint(path)
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor):
            raise UserError(f"{path}: state_dict entry {name!r} is not a tensor")
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{list(tensor.shape)}\0".encode())
        # the bytes of the storage, whatever the dtype (bfloat16 has no numpy view)
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:12]


_FINGERPRINTS: dict[tuple[str, int, int], str] = {}


def fingerprint_once(path: str | Path) -> str:
    """:func:`checkpoint_fingerprint`, computed once per process for each checkpoint file:
    remembered by the file's resolved path, size and modification time (a file replaced
    since is hashed again)."""
    resolved = Path(path).resolve()
    try:
        stat = os.stat(resolved)
    except OSError as exc:
        raise UserError(
            f"{path}: cannot read this checkpoint to fingerprint it ({exc.strerror or exc})"
        ) from exc
    key = (str(resolved), stat.st_size, stat.st_mtime_ns)
    if key not in _FINGERPRINTS:
        _FINGERPRINTS[key] = checkpoint_fingerprint(resolved)
    return _FINGERPRINTS[key]
