"""Read layer features at chosen voxels, window by window, without full-resolution maps.

:func:`extract_at_points` runs a model over an image in MONAI's sliding windows (see
:mod:`ccfv.extract.windows` for the geometry) and reads each requested point exactly once, from
the window where it is most central, by interpolating the low-resolution layer maps at the
point with ``grid_sample``: neither a stitched full-volume map nor a map upsampled to the window
is ever built. :func:`extract_at_points_naive` does the same with the released code's recipe
(upsample every map to the window, then index) and serves as the reference in tests and
benchmarks.

Interpolation convention
------------------------
In a window of size ``R`` (per axis) whose layer map has size ``R_l``, the feature at
window-local position ``q`` is the trilinear (bilinear in 2D) interpolation of the map at map
coordinate ``(q + 0.5) * R_l / R - 0.5``, clamped to ``[0, R_l - 1]``: this equals
``F.interpolate(map, size=R, mode="trilinear", align_corners=False)[..., q]`` at integer
``q``, and extends it to continuous ``q``. It is computed with
``grid_sample(map, grid, mode="bilinear", align_corners=False, padding_mode="border")`` at
normalised coordinates ``(2q + 1) / R - 1``, axes reversed to grid_sample's (x, y, z) order.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ccfv.errors import CCFVWarning, UserError
from ccfv.extract.windows import WindowLayout, window_layout
from ccfv.progress import progress_bar

__all__ = ["extract_at_points", "extract_at_points_naive", "Forward"]

#: ``forward(batch (B, C, *roi)) -> {layer: Tensor (B, C_l, *spatial_l)}``, e.g. a LayerTap.
Forward = Callable[[torch.Tensor], Mapping[str, torch.Tensor]]


def extract_at_points(
    forward: Forward,
    image: torch.Tensor | np.ndarray,
    points: Mapping[str, np.ndarray],
    roi_size: Sequence[int] | int,
    overlap: float | Sequence[float] = 0.25,
    sw_batch_size: int = 2,
    device: str | torch.device = "cpu",
    autocast: bool = False,
    padding_value: float = 0.0,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Features of hooked layers at continuous voxel positions, by sliding-window inference.

    For every window (MONAI's layout, in MONAI's order) that holds at least one point, the
    window is cut from the (padded) image and batched with others, ``forward`` is run under
    ``torch.no_grad()``, and every layer map is interpolated at the window's points. Windows
    without points are skipped: no forward pass is spent on them.

    Parameters
    ----------
    forward : callable
        ``forward(batch) -> {layer_name: Tensor}``, batch ``(B, C, *roi_size)`` on ``device``,
        maps ``(B, C_l, *spatial_l)`` with the image's number of spatial axes (any
        ``spatial_l``). Typically a :class:`ccfv.extract.LayerTap` on a model in eval mode,
        already on ``device``.
    image : Tensor or ndarray, ``(C, *spatial)``, 2D or 3D
        One preprocessed image, channel first. It stays where it is; windows are copied to
        ``device`` one batch at a time.
    points : mapping ``layer_name -> float array (P_l, ndim)``
        Continuous voxel coordinates in ``image``'s grid, array axis order (see
        :mod:`ccfv.extract.windows`); every layer may have its own points. Each layer name must
        be one of the keys ``forward`` returns.
    roi_size : int or sequence of int
        Window size (MONAI's ``roi_size``; non-positive entries mean the image size).
    overlap : float or sequence of float
        Window overlap in ``[0, 1)``, as in MONAI.
    sw_batch_size : int
        Windows per forward pass. Halved (with a warning) on CUDA out-of-memory.
    device : str or torch.device
        Where the forward passes run.
    autocast : bool
        Run the forward passes under ``torch.autocast`` (float16) on CUDA; ignored on CPU.
        Sampling is always done in float32.
    padding_value : float
        Constant used to pad an image smaller than the window (MONAI's default: 0).
    progress : bool
        Show a tqdm bar over windows.

    Returns
    -------
    dict ``layer_name -> float32 array (P_l, C_l)``
        Row ``i`` holds the features of ``points[layer_name][i]``. If no layer has any point,
        no forward pass runs and every array has shape ``(0, 0)``.

    Raises
    ------
    UserError
        A point outside the image (beyond :data:`ccfv.extract.windows.POINT_TOL`; points
        within it are clamped to the image's extent; drop the others first, as
        :meth:`ccfv.extract.CasePlan.points_inside` does), a layer ``forward`` does not
        return, a map of the wrong rank, bad window options, or out of GPU memory with a
        single window.

    Examples
    --------
    >>> with LayerTap(model.eval(), ["model.1.submodule", "model.2"]) as tap:  # doctest: +SKIP
    ...     feats = extract_at_points(tap, image, {"model.2": pts}, roi_size=(64, 64, 32))
    """
    return _extract(
        forward,
        image,
        points,
        roi_size,
        overlap,
        sw_batch_size,
        device,
        autocast,
        padding_value,
        progress,
        _sample_grid,
    )


def extract_at_points_naive(
    forward: Forward,
    image: torch.Tensor | np.ndarray,
    points: Mapping[str, np.ndarray],
    roi_size: Sequence[int] | int,
    overlap: float | Sequence[float] = 0.25,
    sw_batch_size: int = 2,
    device: str | torch.device = "cpu",
    autocast: bool = False,
    padding_value: float = 0.0,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Reference for :func:`extract_at_points`: upsample each map to the window, then index.

    Same windows, same point-to-window assignment and same return value as
    :func:`extract_at_points`, but every layer map of every window is first upsampled to the
    window size with ``F.interpolate(..., mode="trilinear"/"bilinear", align_corners=False)``
    (the released CC-FV code's recipe: ``C_l x prod(roi_size)`` values per layer and window)
    and then indexed at the points' integer window-local positions. Points must therefore be
    integral; use it for tests and benchmarks only.
    """
    for name, pts in points.items():
        arr = np.asarray(pts, dtype=np.float64)
        if arr.size and not np.all(arr == np.round(arr)):
            raise UserError(
                f"points of layer {name!r}: the naive extraction reads integer voxel "
                "positions only; round the points or use extract_at_points"
            )
    return _extract(
        forward,
        image,
        points,
        roi_size,
        overlap,
        sw_batch_size,
        device,
        autocast,
        padding_value,
        progress,
        _sample_upsampled,
    )


# --- samplers: maps (B, C, *spatial_l) + local points -> (B, C, Pmax) ----------------------


def _sample_grid(maps: torch.Tensor, local: list[np.ndarray], roi: tuple[int, ...]) -> torch.Tensor:
    """Interpolate ``maps`` at window-local points; ``local[b]`` is ``(P_b, ndim)``."""
    ndim = len(roi)
    pmax = max(len(q) for q in local)
    unit = np.zeros((len(local), pmax, ndim), dtype=np.float64)  # pad rows: window centre
    r = np.asarray(roi, dtype=np.float64)
    for b, q in enumerate(local):
        unit[b, : len(q)] = (2.0 * q + 1.0) / r - 1.0
    grid = torch.from_numpy(unit[..., ::-1].copy()).to(device=maps.device, dtype=torch.float32)
    grid = grid.reshape(len(local), pmax, *([1] * (ndim - 1)), ndim)
    out = F.grid_sample(
        maps.float(), grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    return out.reshape(out.shape[0], out.shape[1], pmax)


def _sample_upsampled(
    maps: torch.Tensor, local: list[np.ndarray], roi: tuple[int, ...]
) -> torch.Tensor:
    """Upsample ``maps`` to ``roi`` (align_corners=False), then index at integer points."""
    mode = "trilinear" if len(roi) == 3 else "bilinear"
    up = F.interpolate(maps.float(), size=roi, mode=mode, align_corners=False)
    pmax = max(len(q) for q in local)
    out = up.new_zeros((up.shape[0], up.shape[1], pmax))
    for b, q in enumerate(local):
        if len(q):
            idx = torch.from_numpy(np.rint(q).astype(np.int64)).to(up.device)
            out[b, :, : len(q)] = up[(b, slice(None), *idx.T)]
    return out


# --- the loop ------------------------------------------------------------------------------


def _extract(
    forward,
    image,
    points,
    roi_size,
    overlap,
    sw_batch_size,
    device,
    autocast,
    padding_value,
    progress,
    sampler,
) -> dict[str, np.ndarray]:
    image = torch.as_tensor(image)
    if hasattr(image, "as_tensor"):  # a MONAI MetaTensor: drop the metadata
        image = image.as_tensor()
    if image.ndim not in (3, 4):
        raise UserError(
            f"image has shape {tuple(image.shape)}: expected (C, H, W) or "
            "(C, D, H, W), channel first, without a batch axis"
        )
    if not image.is_floating_point():
        image = image.float()
    if not isinstance(sw_batch_size, (int, np.integer)) or sw_batch_size < 1:
        raise UserError(f"sw_batch_size={sw_batch_size!r}: give an integer >= 1")
    if not isinstance(points, Mapping):
        raise UserError("points: expected a mapping {layer_name: array (P, ndim)}")
    device = torch.device(device)
    layout = window_layout(tuple(image.shape[1:]), roi_size, overlap)
    names = list(points)

    # Assign every point to its most central window; group point rows by window.
    by_window: dict[str, dict[int, np.ndarray]] = {}
    local: dict[str, np.ndarray] = {}
    n_points: dict[str, int] = {}
    for name in names:
        pts = layout.check_points(points[name], what=f"points of layer {name!r}")
        win, loc = layout.assign(pts)
        order = np.argsort(win, kind="stable")
        uniq, first = np.unique(win[order], return_index=True)
        groups = np.split(order, first[1:]) if len(order) else []
        by_window[name] = {int(w): g for w, g in zip(uniq, groups)}
        local[name], n_points[name] = loc, len(pts)
    todo = sorted(set().union(*(g.keys() for g in by_window.values())) if names else set())
    out: dict[str, np.ndarray | None] = {name: None for name in names}
    if not todo:
        return {name: np.zeros((0, 0), np.float32) for name in names}

    padded = image
    if any(layout.pad_before) or any(layout.pad_after):
        pad = []
        for b, a in zip(reversed(layout.pad_before), reversed(layout.pad_after)):
            pad += [b, a]
        padded = F.pad(image, pad, mode="constant", value=float(padding_value))

    use_autocast = bool(autocast) and device.type == "cuda"
    bar = progress_bar(len(todo), desc="windows", unit="win", enabled=progress)
    batch_size, pos = int(sw_batch_size), 0
    try:
        with torch.no_grad():
            while pos < len(todo):
                windows = todo[pos : pos + batch_size]
                try:
                    _run_batch(
                        forward,
                        padded,
                        layout,
                        windows,
                        by_window,
                        local,
                        out,
                        n_points,
                        device,
                        use_autocast,
                        sampler,
                    )
                except torch.cuda.OutOfMemoryError as exc:
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    if batch_size == 1:
                        raise UserError(
                            f"out of GPU memory with a single window of size {layout.roi_size}: "
                            "use a smaller roi_size, autocast=True, or device='cpu'"
                        ) from exc
                    batch_size //= 2
                    warnings.warn(
                        f"out of GPU memory: retrying with sw_batch_size={batch_size}",
                        CCFVWarning,
                        stacklevel=3,
                    )
                    continue
                pos += len(windows)
                if bar is not None:
                    bar.update(len(windows))
    finally:
        if bar is not None:
            bar.close()
    filled: dict[str, np.ndarray] = {}
    for name, arr in out.items():
        assert arr is not None  # todo is not empty: the first batch gave every layer its array
        filled[name] = arr
    return filled


def _run_batch(
    forward,
    padded,
    layout: WindowLayout,
    windows,
    by_window,
    local,
    out,
    n_points,
    device,
    use_autocast,
    sampler,
) -> None:
    """One forward pass over ``windows``; writes the sampled rows into ``out`` in place."""
    batch = torch.stack([padded[(slice(None), *layout.slices(w))] for w in windows])
    batch = batch.to(device)
    if use_autocast:
        with torch.autocast(device_type="cuda", dtype=torch.float16):
            maps = forward(batch)
    else:
        maps = forward(batch)
    del batch
    for name in out:
        if name not in maps:
            raise UserError(
                f"layer {name!r} has points but the forward pass returned only "
                f"layers {list(maps)}: hook that layer or rename the points"
            )
        fmap = maps[name]
        if (
            not isinstance(fmap, torch.Tensor)
            or fmap.ndim != layout.ndim + 2
            or fmap.shape[0] != len(windows)
        ):
            shape = tuple(fmap.shape) if isinstance(fmap, torch.Tensor) else type(fmap).__name__
            raise UserError(
                f"layer {name!r}: feature map of shape {shape} for a batch of "
                f"{len(windows)} window(s); expected (B, C, *spatial) with "
                f"{layout.ndim} spatial axes: hook a module that outputs a map"
            )
        if out[name] is None:
            out[name] = np.zeros((n_points[name], fmap.shape[1]), dtype=np.float32)
        rows = [by_window[name].get(w, np.empty(0, np.int64)) for w in windows]
        keep = [b for b, r in enumerate(rows) if len(r)]
        if not keep:
            continue
        sub = fmap if len(keep) == len(windows) else fmap[keep]
        values = sampler(sub, [local[name][rows[b]] for b in keep], layout.roi_size)
        values = values.cpu().numpy()
        for j, b in enumerate(keep):
            out[name][rows[b]] = values[j, :, : len(rows[b])].T
