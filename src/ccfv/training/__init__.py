"""Training shared by ``ccfv bench`` and ``ccfv select``: seeding, one optimisation loop, patch
sampling from volumes, output-head re-initialisation and sliding-window validation.

::

    set_seed(0)
    info = fit(model, batches, steps=1000, lr=1e-3, seed=0, schedule="poly")   # loop
    sampler = PatchSampler(cases, roi=(96, 96, 32), batch_size=2, seed=0)      # MONAI crops
    info = fit(model, sampler, steps=..., start=state, stop=500, save=save)     # resumable
    dice = validation_dice(model, val_cases, roi, n_classes=5)                 # sliding window

May import torch, MONAI, numpy, scipy, :mod:`ccfv.errors` and :mod:`ccfv.progress` (tqdm);
nothing above it.
"""

from ccfv.training.head import replace_head
from ccfv.training.loop import TrainState, fit, set_seed
from ccfv.training.patches import PatchSampler, TrainCase, label_on_grid, prediction_on_grid
from ccfv.training.validate import case_dice, validation_dice

__all__ = [
    "PatchSampler",
    "TrainCase",
    "TrainState",
    "case_dice",
    "fit",
    "label_on_grid",
    "prediction_on_grid",
    "replace_head",
    "set_seed",
    "validation_dice",
]
