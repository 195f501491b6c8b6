"""``factory:`` entries: a function ``pkg.module:function`` that returns the network.

::

    - name: my_net
      factory: mypkg.models:make_net          # called as make_net(**args)
      args: {width: 32}
      checkpoint: ckpts/my_net.pt

Built, seeded and loaded as a ``network:`` entry. The fingerprint covers the reference and
the content of the factory module's source file (editing the factory invalidates the cache).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ccfv.bank.checkpoint import LoadReport
from ccfv.bank.entry import BankEntry
from ccfv.bank.hashing import module_source_hash
from ccfv.bank.kinds.base import ModelKind
from ccfv.bank.kinds.common import construct_from_callable, load_built, parse_built_entry, seeded
from ccfv.bank.validate import ParseContext, string
from ccfv.errors import UserError

__all__ = ["Factory"]


class Factory(ModelKind):
    """A function by ``pkg.module:function``, called with ``args``."""

    key = "factory"
    key_hint = "pkg.module:function"

    def parse(self, raw: Mapping[str, Any], ctx: ParseContext) -> BankEntry:
        factory = string(raw[self.key], f"{ctx.where}: '{self.key}'")
        module, sep, func = factory.partition(":")
        if (
            not sep
            or not func.isidentifier()
            or any(not p.isidentifier() for p in module.split("."))
        ):
            raise UserError(
                f"{ctx.where}: 'factory' {factory!r} must be 'pkg.module:function' (module path, "
                "a colon, the function name)"
            )
        return parse_built_entry(raw, ctx, self.key, factory)

    def load(self, entry: BankEntry) -> tuple[torch.nn.Module, LoadReport]:
        model = seeded(entry, lambda: construct_from_callable(entry, str(entry.location)))
        return load_built(entry, model)

    def fingerprint(self, entry: BankEntry) -> dict[str, Any]:
        return {
            "factory": entry.location,
            "factory_source": module_source_hash(str(entry.location).split(":", 1)[0]),
        }
