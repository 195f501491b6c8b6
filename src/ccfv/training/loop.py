"""Seeding and the one training loop of ccfv (Adam, MONAI's DiceCELoss, optional polynomial
learning-rate decay, validation every few steps, checkpoint selection, resumable state).

The loop does not know where batches come from: ``batches(step) -> (inputs, target)`` gives
the float32 network input ``(B, C, *spatial)`` and the class-id target ``(B, 1, *spatial)`` of
global step ``step`` (``ccfv bench`` draws whole images from in-memory arrays, ``ccfv select``
crops patches from volumes, :mod:`ccfv.training.patches`).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ccfv.progress import progress_bar

__all__ = ["TrainState", "fit", "set_seed"]

Batches = Callable[[int], tuple[torch.Tensor, torch.Tensor]]


def set_seed(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator and torch; ask torch for determinism.

    Sets ``torch.use_deterministic_algorithms(True, warn_only=True)`` (process-wide: an operation
    without a deterministic implementation warns instead of failing) and turns cuDNN
    benchmarking off. On the CPU, the same seed, inputs and thread count give identical results.
    """
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the global state MONAI's random transforms draw
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


@dataclass
class TrainState:
    """Everything needed to continue a run at ``step``: weights, optimiser, torch's random
    state, the losses and the validation curve so far. :meth:`to_dict` / :meth:`from_dict`
    hold only tensors, numbers and lists, so ``torch.load(weights_only=True)`` reads it."""

    step: int
    model: dict[str, torch.Tensor]
    optimiser: dict[str, Any]
    rng: torch.Tensor
    losses: list[float] = field(default_factory=list)
    curve: list[list] = field(default_factory=list)
    scaler: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "model": self.model,
            "optimiser": self.optimiser,
            "rng": self.rng,
            "losses": list(self.losses),
            "curve": list(self.curve),
            "scaler": self.scaler,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainState:
        return cls(
            step=int(raw["step"]),
            model=raw["model"],
            optimiser=raw["optimiser"],
            rng=raw["rng"],
            losses=[float(v) for v in raw["losses"]],
            curve=[[int(a), float(b)] for a, b in raw["curve"]],
            scaler=raw.get("scaler"),
        )


def _device_of(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def fit(
    model: torch.nn.Module,
    batches: Batches,
    *,
    steps: int,
    lr: float,
    seed: int,
    schedule: str = "constant",
    validate: Callable[[torch.nn.Module], float] | None = None,
    eval_every: int = 0,
    keep_best: bool = True,
    progress: str | None = None,
    max_label: int | None = None,
    amp: bool = False,
    start: TrainState | None = None,
    stop: int | None = None,
    save: Callable[[TrainState], None] | None = None,
    save_every: int = 0,
) -> dict[str, Any]:
    """Train ``model`` in place with Adam and MONAI's ``DiceCELoss`` (softmax, one-hot target).

    Parameters
    ----------
    model : torch.nn.Module
        Outputs logits ``(B, K, *spatial)``; trained on the device its parameters are on.
    batches : callable
        ``batches(step) -> (inputs, target)`` for global step ``step`` (0-based), on the
        model's device; called once per step, in order.
    steps : int
        Length of the whole schedule (the polynomial decay runs over it).
    lr : float
        Adam's learning rate.
    seed : int
        Seeds torch's random state during training (restored afterwards); a resumed run
        restores the saved state instead.
    schedule : ``"constant"`` or ``"poly"``
        Learning rate: constant, or nnU-Net's polynomial decay ``lr * (1 - step / steps) ** 0.9``.
    validate : callable, optional
        ``validate(model) -> float`` (larger is better, e.g. the validation Dice), called every
        ``eval_every`` global steps and after the last step of this call.
    keep_best : bool
        With ``validate``: end with the weights of the best call (checkpoint selection, the
        first best on ties); False: end with the last weights.
    progress : str, optional
        Show a tqdm bar with this description (the loss and the last validation value).
    max_label : int, optional
        Largest class id of the data: refused when the network has no channel for it.
    amp : bool
        Mixed precision: ``torch.autocast`` on the model's device (float16 with a gradient
        scaler on CUDA, bfloat16 elsewhere).
    start : TrainState, optional
        Continue from this state (its step, weights, optimiser and random state).
    stop : int, optional
        Global step after which this call returns (default ``steps``).
    save : callable, optional
        ``save(state)`` every ``save_every`` global steps and after the last step of the call.

    Returns
    -------
    dict
        ``loss_first`` (loss of the first step of this call), ``loss_last`` (mean loss of the
        last 10 % of the steps so far, at least one), ``seconds`` (wall time of this call),
        ``steps`` (global step reached); with ``validate`` also ``curve``
        (``[[step, value], ...]`` since step 0), ``best_step`` and ``best_value`` (of this
        call's validations).

    Raises
    ------
    ValueError
        Bad arguments, or a label id the network has no output channel for.
    FloatingPointError
        The loss became NaN or infinite.

    Notes
    -----
    The model is in train mode during and in eval mode after training. The same initial
    weights, batches and seed give identical weights (CPU; see :func:`set_seed`); a run
    stopped at a saved state and continued from it gives the same weights as one run.
    """
    from monai.losses import DiceCELoss

    first = 0 if start is None else int(start.step)
    stop = steps if stop is None else int(stop)
    if steps < 1 or not lr > 0:
        raise ValueError(f"need steps >= 1, lr > 0; got {steps}, {lr}")
    if not 0 <= first < stop <= steps:
        raise ValueError(f"need 0 <= start step < stop <= steps; got {first}, {stop}, {steps}")
    if schedule not in ("constant", "poly"):
        raise ValueError(f"schedule must be 'constant' or 'poly', got {schedule!r}")
    if eval_every < 0 or save_every < 0:
        raise ValueError(f"eval_every and save_every must be >= 0, got {eval_every}, {save_every}")
    device = _device_of(model)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    cuda_amp = amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if cuda_amp else None
    losses: list[float] = []
    curve: list[list[float]] = []
    if start is not None:
        model.load_state_dict(start.model)
        optimiser.load_state_dict(start.optimiser)
        losses, curve = list(start.losses), [list(p) for p in start.curve]
        if scaler is not None and start.scaler:
            scaler.load_state_dict(start.scaler)
    first_loss = len(losses)
    n_last = max(1, math.ceil(0.1 * stop))
    best: tuple[float, int, dict] | None = None

    def check(step: int) -> None:
        nonlocal best
        value = float(validate(model))  # type: ignore[misc]
        model.train()
        curve.append([step, value])
        if bar is not None:
            bar.set_postfix(loss=f"{losses[-1]:.4f}", val_dice=f"{value:.4f}")
        if best is None or value > best[0]:
            best = (
                value,
                step,
                {k: v.detach().clone() for k, v in model.state_dict().items()} if keep_best else {},
            )

    def snapshot(step: int) -> TrainState:
        return TrainState(
            step=step,
            model={k: v.detach().clone() for k, v in model.state_dict().items()},
            optimiser=optimiser.state_dict(),
            rng=torch.get_rng_state(),
            losses=list(losses),
            curve=[list(p) for p in curve],
            scaler=scaler.state_dict() if scaler is not None else None,
        )

    bar = progress_bar(
        stop,
        desc=str(progress),
        unit="step",
        enabled=isinstance(progress, str),
        initial=first,
        leave=False,
    )
    began = time.perf_counter()
    model.train()
    try:
        with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
            if start is None:
                torch.manual_seed(int(seed))
            else:
                torch.set_rng_state(start.rng)
            for step in range(first, stop):
                if schedule == "poly":
                    for group in optimiser.param_groups:
                        group["lr"] = lr * (1.0 - step / steps) ** 0.9
                inputs, target = batches(step)
                if amp:
                    with torch.autocast(
                        device.type, dtype=torch.float16 if cuda_amp else torch.bfloat16
                    ):
                        logits = model(inputs)
                else:
                    logits = model(inputs)
                if isinstance(logits, (list, tuple)):  # deep supervision: the full-size output
                    logits = logits[0]
                if amp:  # the loss in float32
                    logits = logits.float()
                if step == first and max_label is not None and max_label >= logits.shape[1]:
                    raise ValueError(
                        f"labels contain class id {max_label} but the network has only "
                        f"{logits.shape[1]} output channels"
                    )
                loss = loss_fn(logits, target)
                optimiser.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimiser)
                    scaler.update()
                else:
                    loss.backward()
                    optimiser.step()
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise FloatingPointError(
                        f"training loss is {value} at step {step + 1} of {steps} (lr {lr}); "
                        "lower the learning rate"
                    )
                losses.append(value)
                if bar is not None:
                    bar.update(1)
                    if step % 10 == 0 or step == stop - 1:
                        bar.set_postfix(loss=f"{value:.4f}")
                if validate is not None and (
                    step == stop - 1 or (eval_every and (step + 1) % eval_every == 0)
                ):
                    check(step + 1)
                if save is not None and (
                    step == stop - 1 or (save_every and (step + 1) % save_every == 0)
                ):
                    save(snapshot(step + 1))
    finally:
        model.eval()
        if bar is not None:
            bar.close()
    out: dict[str, Any] = {
        "loss_first": losses[first_loss],
        "loss_last": float(np.mean(losses[-n_last:])),
        "seconds": time.perf_counter() - began,
        "steps": stop,
    }
    if best is not None:
        if keep_best:
            model.load_state_dict(best[2])
        out.update(curve=curve, best_value=best[0], best_step=best[1])
    return out
