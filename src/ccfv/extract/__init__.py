"""Feature extraction: sampling plan -> features at the planned voxels -> feature cache.

- :func:`make_plan` / :class:`SamplingPlan`: which voxels of which case are read, per layer
  and class; depends on the labels, the budget and the seed only (never on a model).
- :class:`LayerTap`: the ``forward(batch) -> {layer: map}`` seam, a thin adapter over
  :func:`ccfv.bank.register_hooks` (layers as ``"name"``, ``"name:input"``, LayerSpecs or
  ``{alias: layer}``).
- :func:`extract_at_points`: sliding-window inference that reads each point once, by
  interpolating the low-resolution maps (no full-resolution map is ever built);
  :func:`extract_at_points_naive` is the upsample-then-index reference.
- :func:`window_layout`: MONAI's window grid and the point-to-window assignment;
  :func:`inside_image` the one rule for a point inside an image.
- :meth:`CasePlan.points_inside` / :func:`dropped_voxels`: planned voxels that a model's
  preprocessing cropped away are dropped for that model, and counted.
- :class:`FeatureCache` / :func:`cache_key`: one atomic ``.npz`` per (model, data, plan).
"""

from ccfv.extract.cache import CACHE_FORMAT, FeatureCache, cache_key
from ccfv.extract.hooks import LayerTap
from ccfv.extract.plan import (
    PLAN_FORMAT,
    CasePlan,
    SamplingPlan,
    dropped_voxels,
    label_hash,
    make_plan,
)
from ccfv.extract.sample import Forward, extract_at_points, extract_at_points_naive
from ccfv.extract.windows import POINT_TOL, WindowLayout, inside_image, window_layout

__all__ = [
    "CACHE_FORMAT",
    "FeatureCache",
    "cache_key",
    "LayerTap",
    "PLAN_FORMAT",
    "CasePlan",
    "SamplingPlan",
    "dropped_voxels",
    "label_hash",
    "make_plan",
    "Forward",
    "extract_at_points",
    "extract_at_points_naive",
    "POINT_TOL",
    "WindowLayout",
    "inside_image",
    "window_layout",
]
