"""Benchmark: feature extraction at planned voxels vs. bare sliding-window inference.

One real configuration: MONAI's 3D BasicUNet (default features, random weights), the real
``spleen_ct_crop_3d`` CT volume and its label (from ``../shared/data`` if present, otherwise a
generated 160x160x48 volume with a blob), ROI 64x64x32, overlap 0.25, 2 windows per batch,
3 hooked decoder layers (``upcat_3`` 1/4 res, ``upcat_2`` 1/2 res, ``upcat_1`` full res), a
fixed plan of 100/200/400 voxels per class and layer for 2 classes (background, spleen).

Methods:

- ``floor``:  bare forward passes of the model over the windows ``points`` runs (no hooks);
- ``points``: :func:`ccfv.extract.extract_at_points` (grid_sample at the points);
- ``naive``:  :func:`ccfv.extract.extract_at_points_naive` (upsample maps to the window, index);
- ``monai``:  MONAI's ``sliding_window_inference`` over all windows with output stitching
  (context only: what a full-volume prediction costs).

Time: all methods interleaved in one process for ``--rounds`` rounds after one warm-up batch
(the machine may be shared: the minimum is the least disturbed run). Memory: one fresh
subprocess per method (one warm-up batch, one run), peak RSS of the process
(``resource.getrusage``; ``torch.cuda.max_memory_allocated`` on CUDA), also shown above the RSS
reached after setup (imports, model, volume, plan; before any forward pass), which is the part
the forward passes and the method add.

Usage: ``python benchmarks/bench_extraction.py [--rounds 3] [--device cpu] [--threads 2]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROI = (64, 64, 32)
LAYERS = ["upcat_3", "upcat_2", "upcat_1"]  # LayerTap layers: "name" reads the output
COUNTS = (100, 200, 400)
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "spleen_ct_crop_3d"


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _load_volume():
    """(image (1, *spatial) float32 tensor scaled to [0, 1], label int array, source name)."""
    import numpy as np
    import torch

    img_path = DATA / "imagesTr" / "spleen2.nii.gz"
    lab_path = DATA / "labelsTr" / "spleen2.nii.gz"
    if img_path.is_file() and lab_path.is_file():
        import nibabel as nib

        img = np.asarray(nib.load(str(img_path)).dataobj, dtype=np.float32)
        lab = np.asarray(nib.load(str(lab_path)).dataobj).astype(np.int64)
        source = f"spleen_ct_crop_3d/spleen2 {img.shape}"
    else:
        rng = np.random.default_rng(0)
        shape = (160, 160, 48)
        grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
        centre = np.array([80, 70, 24])[:, None, None, None]
        lab = (
            np.sum(((grid - centre) / np.array([30, 20, 10])[:, None, None, None]) ** 2, 0) < 1
        ).astype(np.int64)
        img = (rng.normal(0, 30, shape) + 100 * lab).astype(np.float32)
        source = f"generated {shape}"
    img = np.clip((img + 57.0) / (164.0 + 57.0), 0.0, 1.0)  # MONAI spleen tutorial CT window
    return torch.from_numpy(img[None].astype(np.float32)), lab, source


def _setup(device: str, threads: int) -> dict:
    """Model, volume, plan and one runner per method (each runs every window once)."""
    import torch
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import BasicUNet

    from ccfv.extract import (
        LayerTap,
        extract_at_points,
        extract_at_points_naive,
        make_plan,
        window_layout,
    )

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    image, label, source = _load_volume()
    model = BasicUNet(spatial_dims=3, in_channels=1, out_channels=2).eval().to(device)
    plan = make_plan([label], ["spleen2"], layers=3, budget="fixed", counts=COUNTS, seed=0)
    points = plan.cases[0].points(LAYERS)
    layout = window_layout(image.shape[1:], ROI, 0.25)
    used = sorted(set().union(*(layout.assign(p)[0].tolist() for p in points.values())))
    padded = torch.nn.functional.pad(
        image,
        [
            p
            for b, a in zip(reversed(layout.pad_before), reversed(layout.pad_after))
            for p in (b, a)
        ],
    )

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def batches():
        for i in range(0, len(used), 2):
            yield torch.stack(
                [padded[(slice(None), *layout.slices(w))] for w in used[i : i + 2]]
            ).to(device)

    def floor():
        with torch.no_grad():
            for batch in batches():
                model(batch)
        sync()

    def with_tap(fn):
        def run():
            with LayerTap(model, LAYERS) as tap:
                fn(tap, image, points, ROI, 0.25, 2, device)
            sync()

        return run

    def monai():
        with torch.no_grad():
            sliding_window_inference(image[None].to(device), ROI, 2, model, overlap=0.25)
        sync()

    def warm_up():
        with torch.no_grad():
            model(next(batches()))
        sync()

    return {
        "runners": {
            "floor": floor,
            "points": with_tap(extract_at_points),
            "naive": with_tap(extract_at_points_naive),
            "monai": monai,
        },
        "warm_up": warm_up,
        "info": {
            "source": source,
            "windows_run": len(used),
            "windows_all": len(layout),
            "points": {k: len(v) for k, v in points.items()},
        },
    }


def memory_worker(method: str, device: str, threads: int) -> dict:
    """Peak memory of one method, alone in this fresh process (one warm-up batch, one run)."""
    import torch

    bench = _setup(device, threads)
    setup_rss = _rss_mib()  # imports, model, volume, plan: before any forward pass
    bench["warm_up"]()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    bench["runners"][method]()
    out = {"peak_rss_mib": _rss_mib(), "setup_rss_mib": setup_rss, **bench["info"]}
    if device.startswith("cuda"):
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def timing_worker(methods: list[str], rounds: int, device: str, threads: int) -> dict:
    """Wall time of every method, interleaved round by round in one process.

    Interleaving exposes every method to the same background load; the minimum over rounds
    is the least disturbed run.
    """
    bench = _setup(device, threads)
    bench["warm_up"]()
    times = {m: [] for m in methods}
    for _ in range(rounds):
        for m in methods:
            t0 = time.perf_counter()
            bench["runners"][m]()
            times[m].append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds (interleaved)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--methods", default="floor,points,naive,monai")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    methods = args.methods.split(",")
    if args.worker == "timing":
        print(json.dumps(timing_worker(methods, args.rounds, args.device, args.threads)))
        return
    if args.worker:
        print(json.dumps(memory_worker(args.worker, args.device, args.threads)))
        return

    def call(worker):
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            worker,
            "--rounds",
            str(args.rounds),
            "--device",
            args.device,
            "--threads",
            str(args.threads),
            "--methods",
            args.methods,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"worker {worker!r} failed:\n{proc.stderr}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    memory = {m: call(m) for m in methods}
    times = call("timing")
    info = memory[methods[0]]
    print(
        f"volume: {info['source']}, ROI {ROI}, BasicUNet 3D (random weights), layers "
        f"{LAYERS}, points per layer {info['points']}, windows run {info['windows_run']} of "
        f"{info['windows_all']}, device {args.device}, {args.threads} thread(s), "
        f"{args.rounds} interleaved timing rounds, load average {os.getloadavg()[0]:.1f}"
    )
    mem = "cuda_peak_mib" if args.device.startswith("cuda") else "peak_rss_mib"
    print(f"{'method':8s} {'min s':>7s} {'median s':>9s} {'peak MiB':>9s} {'above setup':>12s}")
    for m in methods:
        r = memory[m]
        added = r[mem] - (0 if mem == "cuda_peak_mib" else r["setup_rss_mib"])
        print(
            f"{m:8s} {min(times[m]):7.2f} {sorted(times[m])[len(times[m]) // 2]:9.2f} "
            f"{r[mem]:9.0f} {added:12.0f}"
        )
    if "floor" in methods:
        a = memory["floor"]
        for m in ("points", "naive"):
            if m not in methods:
                continue
            r = memory[m]
            paired = sorted(t / f for t, f in zip(times[m], times["floor"]))
            line = (
                f"{m}/floor: time {min(times[m]) / min(times['floor']):.3f}x (ratio of "
                f"minima; per-round ratios {', '.join(f'{x:.3f}' for x in paired)}), "
                f"peak memory {r[mem] / a[mem]:.3f}x"
            )
            if mem == "peak_rss_mib":
                line += (
                    ", above setup "
                    f"{(r[mem] - r['setup_rss_mib']) / (a[mem] - a['setup_rss_mib']):.3f}x"
                )
            print(line)


if __name__ == "__main__":
    main()
