"""``network:`` entries: a MONAI network (or any ``torch.nn.Module`` class) by dotted path.

::

    - name: unet_spleen
      network: monai.networks.nets.UNet      # a bare name is looked up in monai.networks.nets
      args: {spatial_dims: 3, in_channels: 1, out_channels: 2, channels: [16, 32, 64],
             strides: [2, 2]}
      checkpoint: ckpts/unet_spleen.pt       # or {path: ..., key: ...}; none: seeded init

The class is called with ``args`` after ``torch.manual_seed(seed)``, then the checkpoint, if
any, is loaded through :func:`ccfv.bank.checkpoint.apply_state_dict`, which refuses one that
does not fit. The fingerprint covers the class path and MONAI's version (MONAI's
architectures change between releases).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import monai
import torch

from ccfv.bank.checkpoint import LoadReport
from ccfv.bank.entry import BankEntry
from ccfv.bank.kinds.base import ModelKind
from ccfv.bank.kinds.common import construct_from_callable, load_built, parse_built_entry, seeded
from ccfv.bank.validate import ParseContext, string
from ccfv.errors import UserError

__all__ = ["MonaiNetwork"]


class MonaiNetwork(ModelKind):
    """A class by dotted path (``monai.networks.nets.UNet``), called with ``args``."""

    key = "network"
    key_hint = "a class, e.g. monai.networks.nets.UNet"

    def parse(self, raw: Mapping[str, Any], ctx: ParseContext) -> BankEntry:
        network = string(raw[self.key], f"{ctx.where}: '{self.key}'")
        if any(not part.isidentifier() for part in network.replace(":", ".").split(".")):
            raise UserError(
                f"{ctx.where}: 'network' {network!r} is not a dotted class path such as "
                "monai.networks.nets.UNet"
            )
        return parse_built_entry(raw, ctx, self.key, network)

    def load(self, entry: BankEntry) -> tuple[torch.nn.Module, LoadReport]:
        model = seeded(entry, lambda: construct_from_callable(entry, str(entry.location)))
        return load_built(entry, model)

    def fingerprint(self, entry: BankEntry) -> dict[str, Any]:
        return {"network": entry.location, "monai": monai.__version__}
