"""Which layers of a model are read, and the hooks that read them.

``layers: auto`` picks the decoder feature pyramid of the MONAI architectures listed in
:data:`AUTO_ARCHITECTURES`: 2-3 layers ordered from the one nearest the bottleneck to the one
nearest the output, at increasing resolution, the last being the input of the final
segmentation convolution (the "layer before the final convolution" of the baselines). This
mirrors the released CC-FV configurations, which hook the input of nnU-Net's deep-supervision
heads and of UNETR's ``decoder3``, ``decoder2``, ``out``. Resolutions are relative to the
network input (1 = full):

=============  =========================================================  ===============
class          auto layers (deepest first)                                resolution
=============  =========================================================  ===============
UNet           inputs of the last 3 up-path blocks; for 4 levels:         1/8, 1/4, 1/2
               ``model.1.submodule.1.submodule.2:input``,                 (the top up
               ``model.1.submodule.2:input``, ``model.2:input``           block is the
                                                                          final conv)
BasicUNet      ``upcat_3``, ``upcat_2``, ``final_conv:input``             1/4, 1/2, 1
DynUNet        ``upsamples.{S-4}``, ``upsamples.{S-3}``,                  1/4, 1/2, 1
               ``output_block:input``  (S = len(strides))                 (stride 2)
UNETR          ``decoder3:input``, ``decoder2:input``, ``out:input``      1/4, 1/2, 1
SwinUNETR      ``decoder2:input``, ``decoder1:input``, ``out:input``      1/4, 1/2, 1
SegResNet      ``up_layers.{n-3}``, ``up_layers.{n-2}``,                  1/4, 1/2, 1
               ``conv_final.2:input`` (after the final norm + act)
VNet           ``up_tr128``, ``up_tr64``, ``out_tr:input``                1/4, 1/2, 1
AttentionUnet  ``model.1.submodule.1.submodule.1``,                       1/4, 1/2, 1
               ``model.1.submodule.1``, ``model.2:input``
=============  =========================================================  ===============

Shallower networks give fewer layers (a 3-level UNet: 2). Names without ``:io`` are outputs.

:func:`register_hooks` is the only place in ccfv that registers feature hooks; :func:`hooked`
and :class:`ccfv.extract.LayerTap` (the ``forward(batch) -> {layer: map}`` callable of the
extraction) are built on it. Hooks stay registered for every forward until they are
removed: the released CC-FV code removed them after the first batch, so every later window read
the first batch's features. The store is cleared at the start of each forward of the hooked
model, so a layer that did not run in a forward is absent rather than stale.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch

from ccfv.bank.entry import LayerSpec
from ccfv.errors import UserError

__all__ = [
    "AUTO_ARCHITECTURES",
    "TAP_PREFIX",
    "LayerInfo",
    "OutputsModel",
    "auto_layers",
    "check_layers",
    "hooked",
    "list_layers",
    "pick_output",
    "primary_output",
    "register_hooks",
]

Modules = dict[str, torch.nn.Module]

#: Layer names ``outputs.<index or key>`` of an :class:`OutputsModel`.
TAP_PREFIX = "outputs."


class LayerInfo(NamedTuple):
    """One row of :func:`list_layers`."""

    name: str
    type_name: str
    output_shape: tuple[int, ...] | None


class OutputsModel(torch.nn.Module):
    """Base of a Python shell around a module whose layers torch cannot hook.

    The values the wrapped module's forward returns (a tensor, a tuple or a dict) pass through
    identity modules ``outputs.<index or key>`` (``self.outputs``, a ``ModuleDict`` the
    subclass fills with the keys to expose), where the usual forward hooks read them;
    :func:`list_layers` lists those values and :func:`auto_layers` says so. ``forward`` returns
    the segmentation output (:func:`primary_output`). A subclass sets :attr:`wrapped_label`
    and implements :meth:`wrapped`.
    """

    #: What the wrapped module is, in messages ("the <label> model returns ...").
    wrapped_label = "wrapped"
    outputs: torch.nn.ModuleDict

    def wrapped(self) -> torch.nn.Module:
        """The module whose forward this shell runs."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = self.wrapped()(x)
        for key, tap in self.outputs.items():
            tap(pick_output(raw, key, self.wrapped_label))
        return primary_output(raw)


def pick_output(raw: Any, key: str, label: str = "wrapped") -> torch.Tensor:
    """Element ``key`` of a wrapped forward's result (index for sequences, key for dicts);
    ``label`` names the wrapped model in messages."""
    if isinstance(raw, torch.Tensor):
        if key != "0":
            raise UserError(
                f"the {label} model returns one tensor; only layer 'outputs.0' exists, not "
                f"'outputs.{key}'"
            )
        return raw
    if isinstance(raw, (tuple, list)):
        if not key.isdigit() or int(key) >= len(raw):
            raise UserError(
                f"the {label} model returns {len(raw)} values; layer 'outputs.{key}' must be "
                f"outputs.0 ... outputs.{len(raw) - 1}"
            )
        return raw[int(key)]
    if isinstance(raw, Mapping):
        if key not in raw:
            raise UserError(
                f"the {label} model returns a dict without '{key}'; its keys are "
                f"{', '.join(map(str, raw))}"
            )
        return raw[key]
    raise UserError(f"the {label} model returns a {type(raw).__name__}, which has no parts")


def primary_output(raw: Any) -> torch.Tensor:
    """The segmentation output of a forward's result (see :class:`OutputsModel`)."""
    if isinstance(raw, (tuple, list)):
        return raw[0]
    if isinstance(raw, Mapping):
        for key in ("logits", "out", "pred"):
            if key in raw:
                return raw[key]
        return next(iter(raw.values()))
    return raw


# ------------------------------------------------------------------------------------------------
# auto layers, one rule per architecture


def _pyramid(stages: Sequence[str], final: LayerSpec | None) -> list[LayerSpec]:
    """Last decoder stages (deepest first) as outputs, then ``final``; at most 3 layers."""
    specs = [LayerSpec(s, "output") for s in stages]
    if final is not None:
        specs.append(final)
    return specs[-3:]


def _unet(mods: Modules) -> list[LayerSpec]:
    # model = Sequential(down, SkipConnection(Sequential(down, SkipConnection(...), up)), up)
    ups, prefix = [], "model"
    while (
        isinstance(block := mods.get(prefix), torch.nn.Sequential)
        and len(block) == 3
        and type(mods.get(prefix + ".1")).__name__ == "SkipConnection"
    ):
        ups.append(prefix + ".2")
        prefix += ".1.submodule"
    return [LayerSpec(name, "input") for name in reversed(ups[:3])]


def _basic_unet(mods: Modules) -> list[LayerSpec]:
    return _pyramid(["upcat_3", "upcat_2"], LayerSpec("final_conv", "input"))


def _dynunet(mods: Modules) -> list[LayerSpec]:
    n = sum(1 for name in mods if name.startswith("upsamples.") and name.count(".") == 1)
    return _pyramid([f"upsamples.{i}" for i in range(n - 1)], LayerSpec("output_block", "input"))


def _unetr(mods: Modules) -> list[LayerSpec]:
    return [LayerSpec(n, "input") for n in ("decoder3", "decoder2", "out")]


def _swin_unetr(mods: Modules) -> list[LayerSpec]:
    return [LayerSpec(n, "input") for n in ("decoder2", "decoder1", "out")]


def _segresnet(mods: Modules) -> list[LayerSpec]:
    n = sum(1 for name in mods if name.startswith("up_layers.") and name.count(".") == 1)
    if "conv_final.2" in mods:
        stages = [f"up_layers.{i}" for i in range(n - 1)]
        return _pyramid(stages, LayerSpec("conv_final.2", "input"))
    return _pyramid([f"up_layers.{i}" for i in range(n)], None)


def _vnet(mods: Modules) -> list[LayerSpec]:
    return _pyramid(["up_tr128", "up_tr64"], LayerSpec("out_tr", "input"))


def _attention_unet(mods: Modules) -> list[LayerSpec]:
    # model = Sequential(ConvBlock, AttentionLayer(submodule=Sequential(ConvBlock,
    #                    AttentionLayer(...))), final Convolution)
    stages, prefix = [], "model.1"
    while type(mods.get(prefix)).__name__ == "AttentionLayer":
        stages.append(prefix)
        prefix += ".submodule.1"
    # the top attention layer's output is the final convolution's input
    return _pyramid(list(reversed(stages[1:])), LayerSpec("model.2", "input"))


_AUTO_RULES: dict[str, Callable[[Modules], list[LayerSpec]]] = {
    "UNet": _unet,
    "BasicUNet": _basic_unet,
    "DynUNet": _dynunet,
    "UNETR": _unetr,
    "SwinUNETR": _swin_unetr,
    "SegResNet": _segresnet,
    "VNet": _vnet,
    "AttentionUnet": _attention_unet,
}
#: Classes (and their subclasses) whose decoder pyramid ``layers: auto`` knows.
AUTO_ARCHITECTURES = tuple(_AUTO_RULES)


def auto_layers(model: torch.nn.Module, *, entry: str = "?") -> list[LayerSpec]:
    """The decoder feature pyramid of a known MONAI architecture (see the module table).

    Parameters
    ----------
    model : torch.nn.Module
        An instance of (a subclass of) one of :data:`AUTO_ARCHITECTURES`.
    entry : str
        Model name for messages.

    Returns
    -------
    list of LayerSpec
        Deepest first; the last one is the input of the final segmentation convolution.

    Raises
    ------
    UserError
        Unknown architecture: the user must name the layers.
    """
    rule = None
    for cls in type(model).__mro__:
        if cls.__name__ in _AUTO_RULES and cls.__module__.startswith("monai."):
            rule = _AUTO_RULES[cls.__name__]
            break
    if rule is None:
        what, note = _type_name(model), ""
        if isinstance(model, OutputsModel):
            label = model.wrapped_label
            what = f"{label} {_type_name(model.wrapped())}"
            note = (
                f"; a {label} model can only expose what its forward returns, as "
                f"'{TAP_PREFIX}<index or key>'"
            )
        raise UserError(
            f"model '{entry}': 'layers: auto' knows {', '.join(AUTO_ARCHITECTURES)} (MONAI), not "
            f"{what}; run `ccfv layers` to list its layers and name 2-3 decoder layers in the "
            'bank\'s \'layers\' (e.g. ["dec3", "dec2", "head:input"])' + note
        )
    mods = dict(model.named_modules())
    specs = rule(mods)
    absent = [s.name for s in specs if s.name not in mods]
    if not specs or absent:
        raise UserError(
            f"model '{entry}': 'layers: auto' could not find the decoder layers of this "
            f"{_type_name(model)} ({', '.join(absent) or 'none found'}); run `ccfv layers` and "
            "name the layers in the bank"
        )
    return specs


def check_layers(
    model: torch.nn.Module, layers: Sequence[LayerSpec], entry: str, source: str
) -> None:
    """A UserError when a named layer is not a module of ``model`` (close names are listed)
    or cannot be hooked (inside a TorchScript module); ``entry``/``source`` for messages."""
    mods = dict(model.named_modules())
    for spec in layers:
        if spec.name not in mods:
            raise UserError(
                f"model '{entry}' in {source}: layer '{spec.name}' does not exist."
                f"{_close_names(spec.name, mods)} Run `ccfv layers` to list the model's layers"
            )
        _check_hookable(mods[spec.name], spec.name, entry)


# ------------------------------------------------------------------------------------------------
# hooks


def register_hooks(
    model: torch.nn.Module, layers: Sequence[LayerSpec], *, copy: bool = False
) -> tuple[dict[str, torch.Tensor], list[Any]]:
    """Register hooks that store each layer's tensor at every forward.

    Parameters
    ----------
    model : torch.nn.Module
    layers : sequence of LayerSpec
    copy : bool
        Store a copy (``clone``) instead of a reference; needed only when a later in-place
        operation of the network would overwrite a hooked tensor.

    Returns
    -------
    store : dict of str to Tensor
        ``{spec.key: tensor}``, detached; refilled at every forward of ``model`` (cleared when
        the forward starts). An ``output`` that is a tuple/list stores its first tensor.
    handles : list
        Call ``h.remove()`` on each to unhook (or use :func:`hooked`).
    """
    mods = dict(model.named_modules())
    store: dict[str, torch.Tensor] = {}
    handles: list[Any] = []

    def keep(key: str, value: Any) -> None:
        tensor = _first_tensor(value)
        if tensor is not None:
            tensor = tensor.detach()
            store[key] = tensor.clone() if copy else tensor

    try:
        _check_hookable(model, "", "?")
        handles.append(model.register_forward_pre_hook(lambda module, args: store.clear()))
        for spec in layers:
            if spec.name not in mods:
                raise UserError(
                    f"layer '{spec.name}' is not a module of this {_type_name(model)}."
                    f"{_close_names(spec.name, mods)} Run `ccfv layers` (or print "
                    "model.named_modules()) to list its layers"
                )
            module = mods[spec.name]
            _check_hookable(module, spec.name, "?")
            key = spec.key
            if spec.io == "input":

                def pre_hook(module, args, kwargs, key=key):
                    keep(key, args[0] if args else next(iter(kwargs.values()), None))

                handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
            else:

                def post_hook(module, args, output, key=key):
                    keep(key, output)

                handles.append(module.register_forward_hook(post_hook))
    except BaseException:
        for handle in handles:
            handle.remove()
        raise
    return store, handles


@contextmanager
def hooked(
    model: torch.nn.Module, layers: Sequence[LayerSpec], *, copy: bool = False
) -> Iterator[dict[str, torch.Tensor]]:
    """Context manager: hook ``layers`` for every forward inside, unhook on exit.

    Examples
    --------
    >>> with hooked(model, layers) as feats:            # doctest: +SKIP
    ...     for window in windows:
    ...         logits = model(window)
    ...         maps = {k: feats[k] for k in keys}      # this window's features
    """
    store, handles = register_hooks(model, layers, copy=copy)
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


# ------------------------------------------------------------------------------------------------
# listing


def list_layers(model: torch.nn.Module, input_shape: Sequence[int]) -> list[LayerInfo]:
    """Every module of ``model`` with its type and output shape, from one dummy forward.

    Parameters
    ----------
    model : torch.nn.Module
    input_shape : sequence of int
        Full input shape ``(batch, channels, *spatial)``, e.g. ``(1, 1, 96, 96, 96)``.

    Returns
    -------
    list of LayerInfo
        ``(name, type_name, output_shape)`` in ``named_modules()`` order (root excluded);
        ``output_shape`` is None for a module that did not run (or returned no tensor), the
        shape of its first call otherwise. For an :class:`OutputsModel` (a TorchScript model): its
        returned values,
        ``outputs.<index or key>``.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.zeros(tuple(int(s) for s in input_shape), device=device)
    if isinstance(model, OutputsModel):
        with torch.no_grad():
            raw = model.wrapped()(x)
        return _list_outputs(raw)
    shapes: dict[str, tuple[int, ...] | None] = {}
    handles = []
    named = [(n, m) for n, m in model.named_modules() if n]
    try:
        for name, module in named:
            if isinstance(module, torch.jit.ScriptModule):
                continue

            def hook(module, args, output, name=name):
                if name not in shapes:
                    tensor = _first_tensor(output)
                    shapes[name] = tuple(tensor.shape) if tensor is not None else None

            handles.append(module.register_forward_hook(hook))
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return [LayerInfo(n, _type_name(m), shapes.get(n)) for n, m in named]


def _list_outputs(raw: Any) -> list[LayerInfo]:
    if isinstance(raw, torch.Tensor):
        items: list[tuple[str, Any]] = [("0", raw)]
    elif isinstance(raw, (tuple, list)):
        items = [(str(i), v) for i, v in enumerate(raw)]
    elif isinstance(raw, dict):
        items = [(str(k), v) for k, v in raw.items()]
    else:
        items = []
    out = []
    for key, value in items:
        tensor = _first_tensor(value)
        out.append(
            LayerInfo(
                TAP_PREFIX + key,
                "output" if value is not primary_output(raw) else "output (segmentation)",
                tuple(tensor.shape) if tensor is not None else None,
            )
        )
    return out


# ------------------------------------------------------------------------------------------------


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            if isinstance(item, torch.Tensor):
                return item
    return None


def _close_names(name: str, mods: Modules) -> str:
    """`` Close names: a, b.`` for an unknown layer name, or ``""`` when none is close."""
    close = difflib.get_close_matches(name, [n for n in mods if n], n=5, cutoff=0.5)
    return f" Close names: {', '.join(close)}." if close else ""


def _type_name(module: torch.nn.Module) -> str:
    return getattr(module, "original_name", None) or type(module).__name__


def _check_hookable(module: torch.nn.Module, name: str, entry: str) -> None:
    if isinstance(module, torch.jit.ScriptModule):
        raise UserError(
            f"model '{entry}': layer '{name or '<root>'}' is inside a TorchScript module, where "
            "torch runs no hooks; name what the scripted forward returns instead "
            f"('{TAP_PREFIX}<index or key>', see `ccfv layers`), or build the model from its class "
            "or a factory with a state-dict checkpoint"
        )
