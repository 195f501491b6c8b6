"""Extraction at points: equals the naive upsample-and-index path, reads each point once from its
most central window, MONAI's window layout, padding, errors, OOM fallback, hooks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from monai.networks.nets import UNet

from ccfv.bank import LayerSpec
from ccfv.errors import CCFVWarning, UserError
from ccfv.extract import (
    LayerTap,
    extract_at_points,
    extract_at_points_naive,
    make_plan,
    window_layout,
)

# Decoder modules of MONAI's UNet(channels=(8, 16, 32), strides=(2, 2)):
# 1/4 resolution (skip concat), 1/2 resolution (transposed conv), full resolution (output).
UNET_LAYERS = ["model.1.submodule.1", "model.1.submodule.2", "model.2"]


def _unet(ndim):
    torch.manual_seed(0)
    return UNet(
        spatial_dims=ndim, in_channels=1, out_channels=2, channels=(8, 16, 32), strides=(2, 2)
    ).eval()


def _border_points(shape):
    """All corners of the image plus a few face points: integer coordinates on the border."""
    corners = np.stack(np.meshgrid(*[[0, n - 1] for n in shape], indexing="ij"), -1)
    faces = [
        [n // 2 if a != b else (0 if b % 2 else n - 1) for a, n in enumerate(shape)]
        for b in range(len(shape))
    ]
    return np.concatenate([corners.reshape(-1, len(shape)), faces]).astype(np.float64)


@pytest.mark.parametrize(
    "ndim, shape, roi",
    [
        (3, (40, 27, 13), (24, 24, 16)),  # several overlapping windows; axis 2 padded (13 < 16)
        (2, (50, 21), (32, 32)),  # several windows on axis 0; axis 1 padded
        (3, (11, 9, 7), (16, 16, 16)),  # image smaller than the window on every axis
    ],
)
def test_equals_naive_upsample_and_index_on_a_monai_unet(ndim, shape, roi):
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.standard_normal((1, *shape)).astype(np.float32))
    label = (rng.random(shape) < 0.3).astype(np.int64)
    plan = make_plan([label], ["case"], layers=3, counts=(20, 40, 80), seed=1)
    points = plan.cases[0].points(UNET_LAYERS)
    border = _border_points(shape)
    points = {k: np.concatenate([v, border]) for k, v in points.items()}
    with LayerTap(_unet(ndim), UNET_LAYERS) as tap:
        fast = extract_at_points(tap, image, points, roi_size=roi, overlap=0.25, sw_batch_size=2)
        naive = extract_at_points_naive(
            tap, image, points, roi_size=roi, overlap=0.25, sw_batch_size=3
        )
    assert len(window_layout(shape, roi)) > 1 or min(shape) < min(roi)
    for name in UNET_LAYERS:
        assert fast[name].shape == naive[name].shape == (len(points[name]), fast[name].shape[1])
        assert fast[name].dtype == np.float32
        np.testing.assert_allclose(fast[name], naive[name], rtol=0, atol=1e-5)
    # the layers really are at different resolutions
    with LayerTap(_unet(ndim), UNET_LAYERS) as tap:
        maps = tap(torch.zeros(1, 1, *roi))
    assert len({tuple(m.shape[2:]) for m in maps.values()}) == 3


def _coordinate_image(shape):
    """Channel a holds the voxel's coordinate along axis a (plus 100, so padding is visible)."""
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    return torch.from_numpy(np.stack(grids) + 100.0)


class _CoordinateModel:
    """Fake forward: maps that reveal where a value was read.

    ``full``: the input (global coordinates + 100); ``half``: 2x average pooled input (still
    linear in the coordinates); ``local``: the window-local coordinate of each voxel. Counts
    windows and forward passes.
    """

    def __init__(self):
        self.windows = 0
        self.calls = 0
        self.batch_sizes = []

    def __call__(self, batch):
        self.calls += 1
        self.windows += batch.shape[0]
        self.batch_sizes.append(batch.shape[0])
        ndim = batch.ndim - 2
        pool = F.avg_pool3d if ndim == 3 else F.avg_pool2d
        local = torch.stack(
            torch.meshgrid(
                *[torch.arange(n, dtype=torch.float32) for n in batch.shape[2:]], indexing="ij"
            )
        )
        return {
            "full": batch,
            "half": pool(batch, 2),
            "local": local.expand(batch.shape[0], *local.shape),
        }


def _window_distance(p, start, roi):
    return np.min(np.minimum(p - start + 0.5, start + np.asarray(roi) - 0.5 - p), axis=-1)


@pytest.mark.parametrize(
    "ndim, shape, roi",
    [
        (3, (37, 30, 12), (16, 16, 16)),
        (2, (45, 14), (20, 20)),
    ],
)
def test_each_point_read_once_from_its_most_central_window(ndim, shape, roi):
    rng = np.random.default_rng(1)
    integer = np.stack([rng.integers(0, n, 300) for n in shape], 1).astype(np.float64)
    continuous = np.stack([rng.uniform(-0.5, n - 0.5, 300) for n in shape], 1)
    border = _border_points(shape)
    points = np.concatenate([integer, continuous, border])
    model = _CoordinateModel()
    got = extract_at_points(
        model,
        _coordinate_image(shape),
        {"full": points, "half": points, "local": points},
        roi_size=roi,
        overlap=0.4,
        sw_batch_size=3,
    )
    layout = window_layout(shape, roi, overlap=0.4)
    pad = np.asarray(layout.pad_before)

    # full resolution: the value read is the point's own coordinate (clamped to the image's
    # voxel centres near the border, where the window is padded)
    want = np.clip(points, 0, np.asarray(shape) - 1)
    inside = np.all((points >= 0) & (points <= np.asarray(shape) - 1), axis=1)
    np.testing.assert_allclose(got["full"][inside] - 100.0, want[inside], atol=1e-4)
    np.testing.assert_allclose(got["full"][: len(integer)] - 100.0, integer, atol=1e-4)
    # half resolution: linear maps are interpolated exactly (continuous points included) away
    # from window borders and from padded voxels
    start = points + pad - got["local"]
    away = (_window_distance(points + pad, start, roi) >= 1.0) & np.all(
        (points >= 2) & (points <= np.asarray(shape) - 3), axis=1
    )
    assert away[: len(integer)].sum() > 100 and away[len(integer) :].sum() > 100
    np.testing.assert_allclose(got["half"][away] - 100.0, points[away], atol=1e-4)

    # local coordinates reveal the window each point was read from: one of the windows where
    # the point is most central (brute force over all windows; ties allowed)
    padded_pts = points + pad
    dist = _window_distance(padded_pts[:, None, :], layout.starts[None], roi)  # (P, W)
    best = dist.max(axis=1, keepdims=True)
    used = set()
    for i, p in enumerate(padded_pts):
        candidates = np.flatnonzero(dist[i] >= best[i] - 1e-9)
        expected = np.clip(p - layout.starts[candidates], 0, np.asarray(roi) - 1)
        match = np.flatnonzero(np.all(np.abs(expected - got["local"][i]) < 1e-4, axis=1))
        assert match.size, f"point {points[i]} read from a window where it is not most central"
        used.add(int(candidates[match[0]]))

    # every window holding a point ran once, no other window ran
    assert model.windows == len(used)
    assert 1 < len(used) <= len(layout)
    assert model.batch_sizes[:-1] == [3] * (len(model.batch_sizes) - 1)


def test_windows_without_points_are_skipped():
    shape, roi = (60, 60, 20), (16, 16, 16)
    model = _CoordinateModel()
    pts = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [59.0, 59.0, 19.0]])
    out = extract_at_points(model, _coordinate_image(shape), {"full": pts}, roi_size=roi)
    assert len(window_layout(shape, roi)) > 20
    assert model.windows == 2 and model.calls == 1
    np.testing.assert_allclose(out["full"] - 100.0, pts, atol=1e-5)
    # no points at all: no forward pass
    model = _CoordinateModel()
    out = extract_at_points(
        model, _coordinate_image(shape), {"full": np.zeros((0, 3))}, roi_size=roi
    )
    assert model.calls == 0 and out["full"].shape == (0, 0)


@pytest.mark.parametrize(
    "shape, roi, overlap",
    [
        ((40, 27, 13), (24, 24, 16), 0.25),
        ((9, 30), (16, 16), 0.5),
        ((33, 20, 20), (16, -1, 8), 0.0),
    ],
)
def test_windows_and_padding_are_monai_s(shape, roi, overlap):
    """The windows cut here equal the windows MONAI's sliding_window_inference feeds a model."""
    image = _coordinate_image(shape)
    seen = []

    def predictor(batch):
        seen.extend(batch.clone())
        return batch

    sliding_window_inference(image[None], roi, 1, predictor, overlap=overlap)
    layout = window_layout(shape, roi, overlap)
    padded = F.pad(
        image,
        [
            p
            for b, a in zip(reversed(layout.pad_before), reversed(layout.pad_after))
            for p in (b, a)
        ],
    )
    assert len(seen) == len(layout)
    for w, window in enumerate(seen):
        torch.testing.assert_close(window, padded[(slice(None), *layout.slices(w))])


def test_batch_size_and_points_per_layer_do_not_change_values():
    rng = np.random.default_rng(3)
    shape = (30, 26, 10)
    image = torch.from_numpy(rng.standard_normal((1, *shape)).astype(np.float32))
    pts = np.stack([rng.uniform(0, n - 1, 50) for n in shape], 1)
    with LayerTap(_unet(3), UNET_LAYERS) as tap:
        one = extract_at_points(
            tap,
            image,
            {"model.2": pts, "model.1.submodule.1": pts[:5]},
            roi_size=(16, 16, 16),
            sw_batch_size=1,
        )
        four = extract_at_points(
            tap, image, {"model.2": pts}, roi_size=(16, 16, 16), sw_batch_size=4
        )
    np.testing.assert_allclose(one["model.2"], four["model.2"], atol=1e-5)
    np.testing.assert_allclose(one["model.1.submodule.1"][:5].shape, (5, 48))


def test_out_of_memory_halves_the_window_batch():
    class OomAboveOne(_CoordinateModel):
        def __call__(self, batch):
            if batch.shape[0] > 1:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return super().__call__(batch)

    shape = (40, 40, 16)
    pts = np.stack(np.meshgrid([0, 20, 39], [0, 20, 39], [3], indexing="ij"), -1)
    pts = pts.reshape(-1, 3).astype(float)
    model = OomAboveOne()
    with pytest.warns(CCFVWarning) as record:
        out = extract_at_points(
            model, _coordinate_image(shape), {"full": pts}, roi_size=(16, 16, 16), sw_batch_size=4
        )
    assert [str(r.message)[-15:] for r in record] == ["sw_batch_size=2", "sw_batch_size=1"]
    np.testing.assert_allclose(out["full"] - 100.0, pts, atol=1e-5)
    assert set(model.batch_sizes) == {1}

    class AlwaysOom(_CoordinateModel):
        def __call__(self, batch):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CCFVWarning)
        with pytest.raises(UserError, match="smaller roi_size"):
            extract_at_points(
                AlwaysOom(),
                _coordinate_image(shape),
                {"full": pts},
                roi_size=(16, 16, 16),
                sw_batch_size=2,
            )


@pytest.mark.parametrize(
    "points, match",
    [
        ({"full": np.array([[-0.51, 0.0, 0.0]])}, "outside the image"),
        ({"full": np.array([[0.0, 0.0, 9.6]])}, "outside the image"),
        ({"full": np.array([[0.0, 0.0]])}, r"shape \(P, 3\)"),
        ({"full": np.array([[np.nan, 0.0, 0.0]])}, "NaN"),
        ({"nope": np.array([[0.0, 0.0, 0.0]])}, "returned only"),
    ],
)
def test_bad_points(points, match):
    with pytest.raises(UserError, match=match):
        extract_at_points(
            _CoordinateModel(), _coordinate_image((10, 10, 10)), points, roi_size=(8, 8, 8)
        )


def test_points_on_the_outer_voxel_edge_are_accepted():
    pts = np.array([[-0.5, -0.5, -0.5], [9.5, 9.5, 9.5]])
    out = extract_at_points(
        _CoordinateModel(), _coordinate_image((10, 10, 10)), {"full": pts}, roi_size=(8, 8, 8)
    )
    np.testing.assert_allclose(out["full"] - 100.0, [[0, 0, 0], [9, 9, 9]], atol=1e-5)


def test_naive_rejects_continuous_points():
    with pytest.raises(UserError, match="integer"):
        extract_at_points_naive(
            _CoordinateModel(),
            _coordinate_image((10, 10, 10)),
            {"full": np.array([[0.5, 0.0, 0.0]])},
            roi_size=(8, 8, 8),
        )


def test_layer_tap():
    model = _unet(2)
    with pytest.raises(UserError, match=r"'model\.9' is not a module.*Close names: model\."):
        LayerTap(model, ["model.9"])
    with pytest.raises(UserError, match="no layer"):
        LayerTap(model, [])
    with pytest.raises(UserError, match="':inptu'"):
        LayerTap(model, ["model.2:inptu"])
    assert not model._forward_pre_hooks  # nothing left hooked by a failed construction
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        with LayerTap(model, {"out": "model.2"}) as tap:
            out = tap(x)["out"]
        torch.testing.assert_close(out, model(x))
        with LayerTap(model, {"head_in": "model.2:input"}) as tap:
            assert tap(x)["head_in"].shape == (2, 16, 8, 8)
        specs = [LayerSpec("model.2", "input"), LayerSpec("model.2")]
        with LayerTap(model, specs) as tap:  # LayerSpecs come back under spec.key
            both = tap(x)
        assert list(both) == ["model.2:input", "model.2:output"]
        torch.testing.assert_close(both["model.2:output"], out)
        with LayerTap(model, ["model.2:input", "model.2", "model.2:output"]) as tap:
            named = tap(x)  # strings come back as given
        assert list(named) == ["model.2:input", "model.2", "model.2:output"]
        torch.testing.assert_close(named["model.2:input"], both["model.2:input"])
        torch.testing.assert_close(named["model.2"], named["model.2:output"])
    assert not model.model[2]._forward_hooks  # hooks removed on close
    assert not model.model[2]._forward_pre_hooks and not model._forward_pre_hooks

    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Identity(), torch.nn.Identity()

        def forward(self, x):
            return self.a(x)

    with LayerTap(Branchy().eval(), {"never": "b"}) as tap:
        with pytest.raises(UserError, match=r"'never' \(b:output\) did not fire"):
            tap(torch.ones(1))
    model.train()
    with LayerTap(model, ["model.2"]) as tap, pytest.warns(CCFVWarning, match="eval"):
        tap(x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_and_autocast_is_close():
    rng = np.random.default_rng(5)
    shape = (40, 30, 20)
    image = torch.from_numpy(rng.standard_normal((1, *shape)).astype(np.float32))
    pts = np.stack([rng.integers(0, n, 200) for n in shape], 1).astype(float)
    points = {name: pts for name in UNET_LAYERS}
    with LayerTap(_unet(3), UNET_LAYERS) as tap:
        cpu = extract_at_points(tap, image, points, roi_size=(24, 24, 16))
    with LayerTap(_unet(3).cuda(), UNET_LAYERS) as tap:
        gpu = extract_at_points(tap, image, points, roi_size=(24, 24, 16), device="cuda")
        amp = extract_at_points(
            tap, image, points, roi_size=(24, 24, 16), device="cuda", autocast=True
        )
        naive = extract_at_points_naive(tap, image, points, roi_size=(24, 24, 16), device="cuda")
    for name in UNET_LAYERS:
        np.testing.assert_allclose(gpu[name], cpu[name], atol=1e-4)
        np.testing.assert_allclose(gpu[name], naive[name], atol=1e-5)
        np.testing.assert_allclose(amp[name], cpu[name], atol=5e-2)
