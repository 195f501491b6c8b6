"""Where the feature passes of a run happen: the :class:`FeatureBackend` interface.

A backend takes the prepared target (:class:`ccfv.passes.FeatureTarget`) and yields one
:class:`ccfv.passes.ModelFeatures` per bank entry, in bank order, the way MONAI's inferers
take inputs and a network. :func:`ccfv.rank.rank` scores what it yields and never needs to
know where the passes ran.

- :class:`LocalBackend` (the default): here, one model after the other.
- :class:`ccfv.backends.ray.RayBackend`: one Ray task per model on a cluster (``ray`` is
  imported by that module only, and only when a run starts; import it yourself, or let
  ``ccfv rank --backend ray`` build it).
"""

from ccfv.backends.base import FeatureBackend, FeaturePasses, check_retries, check_torch_device
from ccfv.backends.local import LocalBackend

__all__ = ["FeatureBackend", "FeaturePasses", "LocalBackend", "check_retries", "check_torch_device"]
