"""Re-initialise a segmentation network's output head for another number of classes.

The head is the tail of the network whose layers carry the output's channel count: walking the
leaf modules backwards from the last convolution, every convolution producing (or consuming)
that many channels and every norm / PReLU of that width is replaced by a fresh layer of the new
width, until a convolution whose input has another width (that one is replaced too and ends
the head). A MONAI ``UNet``'s last up-sampling block with its residual unit, a ``SegResNet``'s
or ``SwinUNETR``'s final convolution and nnU-Net's ``seg_layers[-1]`` are heads in this sense.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["output_channels", "replace_head"]

_CONVS = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
_NORMS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.GroupNorm,
)


def output_channels(model: nn.Module, channels: int, shape: Sequence[int]) -> int:
    """Channels of the model's output on a zero input ``(1, channels, *shape)``."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(1, channels, *[int(s) for s in shape], device=device))
    model.train(was)
    out = out[0] if isinstance(out, (list, tuple)) else out
    return int(out.shape[1])


def _conv_like(conv: nn.Module, in_ch: int, out_ch: int) -> nn.Module:
    kind = type(conv)
    kwargs: dict = dict(
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=1,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    if isinstance(conv, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        kwargs["output_padding"] = conv.output_padding
    return kind(in_ch, out_ch, **kwargs)


def _norm_like(norm: nn.Module, width: int) -> nn.Module:
    if isinstance(norm, nn.GroupNorm):
        groups = norm.num_groups if width % norm.num_groups == 0 else 1
        return nn.GroupNorm(groups, width, eps=norm.eps, affine=norm.affine)
    return type(norm)(
        width,
        eps=norm.eps,
        momentum=norm.momentum,
        affine=norm.affine,
        track_running_stats=norm.track_running_stats,
    )


def replace_head(
    model: nn.Module, n_classes: int, channels: int, shape: Sequence[int], seed: int
) -> list[str]:
    """Replace the head (module docstring) of ``model`` in place so that it outputs
    ``n_classes`` channels; the new layers are initialised with ``seed``. Returns the names of
    the replaced modules ([] when the output already has ``n_classes`` channels).

    Raises
    ------
    ValueError
        No head found, or the network does not output ``n_classes`` channels afterwards (a
        head this rule cannot follow, e.g. a TorchScript module).
    """
    old = output_channels(model, channels, shape)
    if old == n_classes:
        return []
    leaves = [(name, m) for name, m in model.named_modules() if not list(m.children())]
    last = max(
        (i for i, (_, m) in enumerate(leaves) if isinstance(m, _CONVS) and m.out_channels == old),
        default=None,
    )
    if last is None:
        raise ValueError(
            f"no convolution with {old} output channels found: the output head "
            f"of {type(model).__name__} cannot be re-initialised"
        )
    replace: dict[str, nn.Module] = {}
    param = next(model.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for name, module in reversed(leaves[: last + 1]):
            if isinstance(module, _CONVS):
                if module.out_channels != old:
                    break
                in_ch = n_classes if module.in_channels == old else module.in_channels
                replace[name] = _conv_like(module, in_ch, n_classes)
                if module.in_channels != old:
                    break
            elif (
                isinstance(module, _NORMS)
                and getattr(module, "num_features", getattr(module, "num_channels", None)) == old
            ):
                replace[name] = _norm_like(module, n_classes)
            elif isinstance(module, nn.PReLU) and module.num_parameters == old:
                replace[name] = nn.PReLU(n_classes)
    for name, new in replace.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new.to(device=param.device, dtype=param.dtype))
    got = output_channels(model, channels, shape)
    if got != n_classes:
        raise ValueError(
            f"re-initialising the output head of {type(model).__name__} "
            f"({', '.join(sorted(replace))}) gave {got} output channels, not "
            f"{n_classes}"
        )
    return sorted(replace)
