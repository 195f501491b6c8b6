"""The model bank: from a bank entry to a ready torch module, its hooked layers, its preprocessing.

::

    entries = load_bank("bank.yaml")                 # validated once (schema)
    for entry in entries:
        model, report = load_model(entry)            # eval mode, checkpoint checked (build)
        layers = resolve_layers(model, entry)        # 'auto' or named (layers)
        prep = make_preprocess(entry.preprocessing, ndim=3)
        image, affine = prep(image, affine)          # affine of the new grid (preprocess)
        with hooked(model, layers) as feats:         # refilled at every forward
            model(window)
        key = fingerprint(entry)                     # cache key

Every step that depends on how the entry gives its model (a MONAI class, a factory, a
TorchScript file, a MONAI bundle, an nnU-Net folder) asks the entry's kind, registered in
:mod:`ccfv.bank.kinds` (one module per kind, one :class:`ModelKind` interface). Modules, from
the bottom: ``entry`` (the dataclasses), ``validate``, ``hashing``, ``callables``,
``checkpoint``, ``transforms``, ``hooks``; then ``kinds``; then ``schema``, ``build``,
``layers``, ``preprocess``, ``fingerprint``, ``check``, ``init``, which dispatch through it.

May import torch, MONAI, yaml, numpy and :mod:`ccfv.errors`; nothing above it.
"""

from ccfv.bank.build import build_model, load_model
from ccfv.bank.checkpoint import (
    MIN_MATCH_FRACTION,
    LoadReport,
    apply_state_dict,
    read_state_dict,
    strip_prefixes,
)
from ccfv.bank.fingerprint import file_sha256, fingerprint
from ccfv.bank.kinds import KINDS, ModelKind, entry_files, kind_of, register
from ccfv.bank.kinds.torchscript import TorchScriptModel  # public since before the kinds
from ccfv.bank.layers import (
    AUTO_ARCHITECTURES,
    LayerInfo,
    auto_layers,
    hooked,
    list_layers,
    register_hooks,
    resolve_layers,
)
from ccfv.bank.preprocess import make_preprocess
from ccfv.bank.schema import (
    BankEntry,
    Intensity,
    LayerSpec,
    Preprocessing,
    load_bank,
    parse_bank,
    parse_layer,
)

__all__ = [
    "AUTO_ARCHITECTURES",
    "BankEntry",
    "KINDS",
    "Intensity",
    "LayerInfo",
    "LayerSpec",
    "LoadReport",
    "MIN_MATCH_FRACTION",
    "ModelKind",
    "Preprocessing",
    "TorchScriptModel",
    "apply_state_dict",
    "auto_layers",
    "build_model",
    "entry_files",
    "file_sha256",
    "fingerprint",
    "hooked",
    "kind_of",
    "list_layers",
    "load_bank",
    "load_model",
    "make_preprocess",
    "parse_bank",
    "parse_layer",
    "read_state_dict",
    "register",
    "register_hooks",
    "resolve_layers",
    "strip_prefixes",
]
