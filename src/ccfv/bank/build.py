"""Turn a bank entry into a ready torch module in eval mode.

The entry's kind (:mod:`ccfv.bank.kinds`) builds it: a class by dotted path or a factory
function called with ``args``, a TorchScript file, a MONAI bundle's ``network_def``, an nnU-Net
folder's plans. A checkpoint is loaded through :func:`ccfv.bank.checkpoint.apply_state_dict`
(refused when it does not fit) or strictly (bundles, nnU-Net). Without a checkpoint the
network keeps the random initialisation drawn after ``torch.manual_seed(entry.seed)``: the
seeded "no pre-training" baseline, identical on every run, the caller's random state untouched.
"""

from __future__ import annotations

import torch

from ccfv.bank.callables import resolve_callable
from ccfv.bank.checkpoint import LoadReport
from ccfv.bank.entry import BankEntry
from ccfv.bank.kinds import kind_of

__all__ = ["build_model", "load_model", "resolve_callable"]


def load_model(entry: BankEntry) -> tuple[torch.nn.Module, LoadReport]:
    """Build the entry's network, load its weights, put it in eval mode.

    Parameters
    ----------
    entry : BankEntry

    Returns
    -------
    model : torch.nn.Module
        On the CPU, in eval mode. A TorchScript entry gives a
        :class:`ccfv.bank.TorchScriptModel`.
    report : LoadReport
        Where the weights come from and how well the checkpoint matched.

    Raises
    ------
    UserError
        The class/factory cannot be found or rejects ``args``, the TorchScript file cannot be
        read, the checkpoint cannot be read or does not fit.
    """
    return kind_of(entry).load(entry)


def build_model(entry: BankEntry) -> torch.nn.Module:
    """The entry's network with its weights, in eval mode (see :func:`load_model`)."""
    return load_model(entry)[0]
