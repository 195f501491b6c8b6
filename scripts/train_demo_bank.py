"""Train the demo bank's checkpoints (run once; the results ship in src/ccfv/demo/checkpoints).

Each model is a small MONAI 3D network trained on one source task made from the MNI152
template (see ccfv.demo.data): brain mask, white matter, bright intensity band. The demo then
ranks them, with randomly initialised twins, on the grey/white-matter target.

    python scripts/train_demo_bank.py [--steps 150] [--out src/ccfv/demo/checkpoints]

CPU, about a minute per model on 2 cores. Seeds fix the result.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceCELoss

from ccfv.data import find_cases, load_case
from ccfv.demo.bank import ARCHITECTURES, SOURCES
from ccfv.demo.data import write_task


def zscore(image):
    return (image - image.mean()) / max(float(image.std()), 1e-6)


def train(arch: str, task: str, data_root: Path, steps: int, seed: int = 0):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    network, args = ARCHITECTURES[arch]
    model = network(**args)
    dataset = find_cases(write_task(task, data_root))
    loaded = [load_case(case, dataset.labels) for case in dataset.cases]
    images = torch.tensor(np.stack([zscore(c.image) for c in loaded]), dtype=torch.float32)
    labels = torch.tensor(np.stack([c.label for c in loaded]))[:, None]
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        batch = rng.choice(len(loaded), size=2, replace=False)
        flip = [2 + int(a) for a in np.flatnonzero(rng.random(3) < 0.5)]
        x, y = images[batch], labels[batch]
        if flip:
            x, y = x.flip(flip), y.flip(flip)
        optimiser.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimiser.step()
        if step % 25 == 0 or step == steps - 1:
            print(f"  {arch} on {task}: step {step:4d} loss {loss.item():.4f}", flush=True)
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "src/ccfv/demo/checkpoints",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        for arch, task in SOURCES:
            target = args.out / f"{arch}_{task}.pt"
            if target.exists():
                print(f"{target.name} exists, skipped")
                continue
            model = train(arch, task, Path(tmp), args.steps)
            state = {
                k: v.to(torch.float16) if v.is_floating_point() else v
                for k, v in model.state_dict().items()
            }
            torch.save({"state_dict": state, "task": task, "steps": args.steps}, target)
            print(f"wrote {target} ({target.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
