"""Read the feature maps of named submodules out of a forward pass.

:class:`LayerTap` turns a ``torch.nn.Module`` and the layers to read into the
``forward(batch) -> {layer: Tensor}`` callable that :func:`ccfv.extract.extract_at_points`
takes. It registers no hook of its own: it is a thin adapter over
:func:`ccfv.bank.register_hooks`, the one hook mechanism of ccfv (store refilled at every
forward, cleared when a forward starts, ``name:input`` / ``name:output`` per layer).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ccfv.bank import LayerSpec, parse_layer, register_hooks
from ccfv.errors import CCFVWarning, UserError

__all__ = ["LayerTap"]

Layer = LayerSpec | str


def _spec(layer: Any, where: str) -> LayerSpec:
    if isinstance(layer, LayerSpec):
        return layer
    if isinstance(layer, str):
        return parse_layer(layer, where=where)
    raise UserError(
        f"{where}: a layer is a module name ('name', 'name:input', 'name:output') or a "
        f"LayerSpec, got {layer!r}"
    )


class LayerTap:
    """Hooks on named submodules; calling the tap runs the model and returns their maps.

    Parameters
    ----------
    model : torch.nn.Module
        In eval mode (a warning is given otherwise), on the device the windows will be sent to.
    layers : sequence of (LayerSpec or str), or mapping ``alias -> LayerSpec or str``
        The layers to read. A string is parsed by :func:`ccfv.bank.parse_layer`: ``"name"`` or
        ``"name:output"`` reads what module ``name`` (as in ``model.named_modules()``) returns,
        ``"name:input"`` its first positional input (what the released CC-FV code reads:
        ``input[0]`` of the deep-supervision heads). The maps are returned under the string as
        given, under ``spec.key`` (``"name:io"``) for a LayerSpec, or under the alias for a
        mapping.
    copy : bool
        Return copies (``clone``) instead of references; see :func:`ccfv.bank.register_hooks`.

    Raises
    ------
    UserError
        No layer, a malformed layer string, a name that is not a submodule of ``model`` (close
        names are suggested), or a module inside TorchScript (torch runs no hooks there).

    Shape
    -----
    ``tap(batch)``: ``batch`` ``(B, C, *spatial)`` -> ``{name: Tensor (B, C_l, *spatial_l)}``.
    A module called more than once in one forward gives the map of its last call.

    Examples
    --------
    >>> with LayerTap(model, ["model.1.submodule", "model.2:input"]) as tap:  # doctest: +SKIP
    ...     feats = extract_at_points(tap, image, points, roi_size=(64, 64, 32))
    """

    def __init__(
        self,
        model: torch.nn.Module,
        layers: Sequence[Layer] | Mapping[str, Layer],
        *,
        copy: bool = False,
    ):
        where = "LayerTap layers"
        if isinstance(layers, (str, LayerSpec)):
            layers = [layers]
        if isinstance(layers, Mapping):
            items = [
                (alias, _spec(layer, f"{where}[{alias!r}]")) for alias, layer in layers.items()
            ]
        else:
            items = []
            for layer in layers:
                spec = _spec(layer, where)
                items.append((layer if isinstance(layer, str) else spec.key, spec))
        if not items:
            raise UserError(
                f"{where}: no layer to hook: name at least one submodule of the "
                "model (see `ccfv layers` or model.named_modules())"
            )
        self.model = model
        #: ``{returned name: LayerSpec}``, in the order the maps are returned.
        self.layers: dict[str, LayerSpec] = dict(items)
        self.names = list(self.layers)
        specs = list(dict.fromkeys(self.layers.values()))  # each module side hooked once
        self._store, self._handles = register_hooks(model, specs, copy=copy)
        self._warned = False

    def __call__(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the model on ``batch`` and return ``{name: feature map}`` of every layer."""
        if self.model.training and not self._warned:
            self._warned = True
            warnings.warn(
                "the model is in training mode (dropout and batch statistics change "
                "the features): call model.eval() before extracting",
                CCFVWarning,
                stacklevel=2,
            )
        if not self._handles:
            raise UserError("this LayerTap is closed: create a new one to read features")
        self.model(batch)
        store = self._store
        missing = [f"{n!r} ({s.key})" for n, s in self.layers.items() if s.key not in store]
        if missing:
            store.clear()
            raise UserError(
                f"layer(s) {', '.join(missing)} did not fire in the forward pass (or gave no "
                "tensor): hook modules that the model's forward actually calls, with a tensor "
                "as their output or first input"
            )
        out = {name: store[spec.key] for name, spec in self.layers.items()}
        store.clear()  # no reference kept between calls
        return out

    def close(self) -> None:
        """Remove the hooks (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._store.clear()

    def __enter__(self) -> LayerTap:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
