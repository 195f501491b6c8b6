"""Bank ``factory:`` functions for the Ray tests: a MONAI UNet whose process dies mid-run.

They are real factories (``factory: ray_factories:unet_crash_once`` in a bank file); the Ray
tests put this folder on the workers' PYTHONPATH. The model they return is the UNet that a
``network: monai.networks.nets.UNet`` entry with the same seed and UNet ``args`` builds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from monai.networks.nets import UNet


def unet_crash_once(marker: str, cache_dir: str, crash_at: int = 3, **args):
    """A UNet whose ``crash_at``-th forward pass ends its process (``os._exit``) when no file
    exists at ``marker``, after writing there, as JSON, its process id and the number of
    per-case parts in each ``*.cases`` folder of the feature cache ``cache_dir``: the first
    attempt dies mid-run, later ones (which see the marker) run through."""
    model = UNet(**args)
    calls = []

    def maybe_die(module, inputs):
        calls.append(1)
        if len(calls) >= crash_at and not Path(marker).exists():
            parts = {d.name: len(list(d.glob("*.npz"))) for d in Path(cache_dir).glob("*.cases")}
            Path(marker).write_text(json.dumps({"pid": os.getpid(), "parts": parts}))
            os._exit(17)

    model.register_forward_pre_hook(maybe_die)
    return model


def unet_always_crash(attempts: str, **args):
    """Records the attempt (an empty file named after the process id in the folder
    ``attempts``) and ends the process at once, every time."""
    Path(attempts).mkdir(parents=True, exist_ok=True)
    (Path(attempts) / str(os.getpid())).touch()
    os._exit(17)
