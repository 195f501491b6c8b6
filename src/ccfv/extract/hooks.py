"""Read the feature maps of named submodules out of a forward pass.

:class:`LayerTap` wraps a ``torch.nn.Module`` and a list of its submodule names (as in
``model.named_modules()``) into the ``forward(batch) -> {layer: Tensor}`` callable that
:func:`ccfv.extract.extract_at_points` takes.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import torch

from ccfv.errors import CCFVWarning, UserError

__all__ = ["LayerTap"]


class _AllCaptured(Exception):
    """Raised inside a hook to cut a forward pass short once every layer is captured."""


class LayerTap:
    """Forward hooks on named submodules; calling the tap runs the model and returns the maps.

    Parameters
    ----------
    model : torch.nn.Module
        In eval mode (a warning is given otherwise), on the device the windows will be sent to.
    layers : sequence of str or mapping ``name -> module name``
        The submodules to read, by their name in ``model.named_modules()``; with a mapping,
        the keys are the names the maps are returned under.
    capture : {"output", "input"}
        Read each module's output, or its first positional input (what the released CC-FV code
        reads: ``input[0]`` of the deep-supervision heads).
    stop_early : bool
        Abort the forward pass (with an exception caught here) as soon as every layer has been
        captured, skipping the rest of the network. Only safe when no hooked module runs more
        than once per forward pass.

    Shape
    -----
    ``tap(batch)``: ``batch`` ``(B, C, *spatial)`` -> ``{name: Tensor (B, C_l, *spatial_l)}``.

    Examples
    --------
    >>> with LayerTap(model, ["model.1.submodule", "model.2"]) as tap:  # doctest: +SKIP
    ...     feats = extract_at_points(tap, image, points, roi_size=(64, 64, 32))
    """

    def __init__(self, model: torch.nn.Module, layers: Sequence[str] | Mapping[str, str],
                 capture: str = "output", stop_early: bool = False):
        if capture not in ("output", "input"):
            raise UserError(f"capture={capture!r}: choose 'output' or 'input' (the hooked "
                            "module's first input)")
        mapping = dict(layers) if isinstance(layers, Mapping) else {n: n for n in layers}
        if not mapping:
            raise UserError("no layer to hook: name at least one submodule of the model")
        modules = dict(model.named_modules())
        unknown = [m for m in mapping.values() if m not in modules]
        if unknown:
            sample = [n for n in modules if n][:20]
            raise UserError(f"the model has no submodule(s) {unknown}; its submodules include "
                            f"{sample}: pick names from model.named_modules()")
        self.model = model
        self.names = list(mapping)
        self.capture = capture
        self.stop_early = stop_early
        self._store: dict[str, torch.Tensor] = {}
        self._calls: dict[str, int] = {}
        self._handles = []
        self._warned = False
        for name, module_name in mapping.items():
            self._handles.append(
                modules[module_name].register_forward_hook(self._make_hook(name, module_name)))

    def _make_hook(self, name: str, module_name: str):
        def hook(module, inputs, output):
            value = inputs[0] if self.capture == "input" and inputs else output
            if self.capture == "input" and not inputs:
                value = None
            if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
                value = value[0]
            if not isinstance(value, torch.Tensor):
                raise UserError(
                    f"layer {name!r} (module {module_name!r}): its {self.capture} is a "
                    f"{type(value).__name__}, not a tensor: hook a module whose {self.capture} "
                    "is a feature map (B, C, *spatial)")
            self._calls[name] = self._calls.get(name, 0) + 1
            self._store[name] = value
            if self.stop_early and len(self._store) == len(self.names):
                raise _AllCaptured
        return hook

    def __call__(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the model on ``batch`` and return ``{name: feature map}`` of every hooked layer."""
        if self.model.training and not self._warned:
            self._warned = True
            warnings.warn("the model is in training mode (dropout and batch statistics change "
                          "the features): call model.eval() before extracting", CCFVWarning,
                          stacklevel=2)
        self._store, self._calls = {}, {}
        try:
            self.model(batch)
        except _AllCaptured:
            pass
        store, self._store = self._store, {}
        missing = [n for n in self.names if n not in store]
        if missing:
            raise UserError(f"layer(s) {missing} did not run in the forward pass: hook modules "
                            "that the model's forward actually calls")
        repeated = [n for n, c in self._calls.items() if c > 1]
        if repeated:
            raise UserError(f"layer(s) {repeated} ran more than once in one forward pass, so "
                            "their feature map is ambiguous: hook a module that runs once")
        return {n: store[n] for n in self.names}

    def close(self) -> None:
        """Remove the hooks (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> LayerTap:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
