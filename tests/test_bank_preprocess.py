"""Preprocessing: the returned affine maps world points to the right voxels; intensity kinds."""

from __future__ import annotations

import numpy as np
import pytest

from ccfv.bank import Intensity, Preprocessing, make_preprocess
from ccfv.errors import UserError

# a permuted, flipped, anisotropic, translated 3D grid
AFFINE_3D = np.array(
    [
        [0.0, -0.8, 0.0, 10.0],
        [1.5, 0.0, 0.0, -3.0],
        [0.0, 0.0, 2.5, 4.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
AFFINE_2D = np.array(
    [
        [0.5, 0.0, 0.0, 10.0],
        [0.0, 2.0, 0.0, -3.0],
        [0.0, 0.0, 1.0, 7.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def blob(shape, centre, sigma_mm, affine):
    """A Gaussian blob, isotropic in world units, centred on voxel ``centre``."""
    idx = np.indices(shape).reshape(len(shape), -1).astype(np.float64)
    hom = np.zeros((4, idx.shape[1]))
    hom[: len(shape)] = idx
    hom[3] = 1
    world = affine @ hom
    c = np.zeros(4)
    c[: len(shape)] = centre
    c[3] = 1
    cw = affine @ c
    d2 = ((world[:3] - cw[:3, None]) ** 2).sum(0)
    return np.exp(-d2 / (2 * sigma_mm**2)).reshape(shape)[None].astype(np.float32)


def mapped(affine_in, affine_out, index):
    """Where voxel ``index`` of the input grid lies in the output grid."""
    p = np.zeros(4)
    p[: len(index)] = index
    p[3] = 1
    return (np.linalg.inv(affine_out) @ affine_in @ p)[: len(index)]


def test_single_bright_voxel_is_found_through_the_affines_after_orientation():
    img = np.zeros((1, 20, 30, 10), np.float32)
    idx = (7, 11, 4)
    img[(0, *idx)] = 100.0
    for codes in ("RAS", "LPI", "SRA", "PIL"):
        out, aff = make_preprocess(Preprocessing(orientation=codes), 3)(img, AFFINE_3D)
        j = mapped(AFFINE_3D, aff, idx)
        assert np.allclose(j, np.round(j), atol=1e-6)  # orientation is a permutation/flip
        assert out[(0, *np.round(j).astype(int))] == 100.0
        assert out.sum() == 100.0 and out.dtype == np.float32
    out, aff = make_preprocess(Preprocessing(orientation="RAS"), 3)(img, AFFINE_3D)
    assert out.shape == (1, 30, 20, 10)
    assert np.allclose(aff[:3, :3], np.diag([0.8, 1.5, 2.5]))  # RAS: positive diagonal


@pytest.mark.parametrize(
    "pre",
    [
        Preprocessing(spacing=(1.0, 1.0, 1.0)),
        Preprocessing(spacing=(0.7, 1.3, 2.0)),
        Preprocessing(orientation="RAS", spacing=(1.0, 1.0, 1.0)),
        Preprocessing(orientation="LPI", spacing=(0.6, 1.7, 1.1)),
    ],
    ids=["iso1", "aniso", "RAS+iso", "LPI+aniso"],
)
def test_world_point_keeps_its_intensity_after_spacing_3d(pre):
    shape, centre, sigma = (20, 30, 10), (7.0, 11.0, 4.0), 6.0
    img = blob(shape, centre, sigma_mm=sigma, affine=AFFINE_3D)
    out, aff = make_preprocess(pre, 3)(img, AFFINE_3D)
    # new voxel size is the requested spacing
    assert np.allclose(np.linalg.norm(aff[:3, :3], axis=0), pre.spacing)
    j = mapped(AFFINE_3D, aff, centre)
    peak = np.array(np.unravel_index(np.argmax(out[0]), out.shape[1:]))
    assert np.all(np.abs(peak - j) <= 0.5 + 1e-6), (peak, j)
    # every output voxel inside the input's field of view holds the blob's value at its world
    # position (up to trilinear interpolation error, < 0.035 for this blob and these grids)
    idx = np.indices(out.shape[1:]).reshape(3, -1)
    world = aff @ np.vstack([idx, np.ones(idx.shape[1])])
    src = np.linalg.inv(AFFINE_3D) @ world
    inside = np.all((src[:3] >= 0) & (src[:3] <= np.array(shape)[:, None] - 1), axis=0)
    assert inside.sum() > 0.3 * idx.shape[1]
    world_c = AFFINE_3D @ np.r_[centre, 1]
    expected = np.exp(-((world[:3] - world_c[:3, None]) ** 2).sum(0) / (2 * sigma**2))
    error = np.abs(out[0].reshape(-1) - expected)[inside]
    assert error.max() < 0.035, error.max()


@pytest.mark.parametrize(
    "pre",
    [
        Preprocessing(spacing=(1.0, 1.0)),
        Preprocessing(spacing=(0.8, 1.1)),
        Preprocessing(orientation="LA"),
        Preprocessing(orientation="LP", spacing=(0.8, 1.1)),
    ],
    ids=["iso", "aniso", "LA", "LP+aniso"],
)
def test_world_point_keeps_its_intensity_2d(pre):
    shape, centre = (40, 30), (13.0, 9.0)
    img = blob(shape, centre, sigma_mm=3.0, affine=AFFINE_2D)
    out, aff = make_preprocess(pre, 2)(img, AFFINE_2D)
    assert out.ndim == 3 and aff.shape == (4, 4)
    # the 2D affine acts on (row, col, 0, 1); the third world axis is carried through
    assert np.allclose(aff[2], AFFINE_2D[2]) and np.allclose(aff[:, 2], AFFINE_2D[:, 2])
    if pre.spacing is not None:
        assert np.allclose(np.abs(np.diag(aff)[:2]), pre.spacing)
    j = mapped(AFFINE_2D, aff, centre)
    peak = np.array(np.unravel_index(np.argmax(out[0]), out.shape[1:]))
    assert np.all(np.abs(peak - j) <= 0.5 + 1e-6), (peak, j)


def test_geometry_errors():
    with pytest.raises(UserError, match="orientation 'RAS' has 3 letters but the images are 2D"):
        make_preprocess(Preprocessing(orientation="RAS"), 2)
    with pytest.raises(UserError, match="spacing .* 2 values but the images are 3D"):
        make_preprocess(Preprocessing(spacing=(1.0, 1.0)), 3)
    with pytest.raises(UserError, match="2D or 3D"):
        make_preprocess(Preprocessing(), 4)
    f = make_preprocess(Preprocessing(), 3)
    with pytest.raises(ValueError, match="channel-first"):
        f(np.zeros((4, 4, 4), np.float32), np.eye(4))


def test_no_preprocessing_is_identity_and_inputs_are_untouched():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(2, 5, 6, 7)).astype(np.float32)
    keep = img.copy()
    out, aff = make_preprocess(Preprocessing(), 3)(img, AFFINE_3D)
    assert np.array_equal(out, img) and np.array_equal(aff, AFFINE_3D)
    assert np.array_equal(img, keep)
    out[...] = 0
    assert np.array_equal(img, keep)


# ------------------------------------------------------------------------------------------------
# intensity


def run(intensity, img):
    return make_preprocess(Preprocessing(intensity=intensity), 3)(img, np.eye(4))[0]


def test_ct_with_given_statistics():
    img = np.array([-1000.0, -175.0, 0.0, 100.0, 250.0, 3000.0], np.float32).reshape(1, 1, 2, 3)
    out = run(Intensity(kind="ct", clip=(-175.0, 250.0), mean=50.0, std=25.0), img)
    expected = (np.clip(img, -175, 250) - 50.0) / 25.0
    assert np.allclose(out, expected)


def test_ct_without_statistics_uses_the_clipped_image():
    rng = np.random.default_rng(1)
    img = rng.uniform(-1500, 2000, size=(1, 4, 5, 6)).astype(np.float32)
    out = run(Intensity(kind="ct", clip=(-175.0, 250.0)), img)
    c = np.clip(img, -175, 250)
    assert np.allclose(out, (c - c.mean()) / c.std(), atol=1e-4)


def test_zscore_per_channel_and_nonzero():
    rng = np.random.default_rng(2)
    img = np.stack([rng.normal(5, 2, (4, 4, 4)), rng.normal(-3, 7, (4, 4, 4))]).astype(np.float32)
    out = run(Intensity(kind="zscore"), img)
    for c in range(2):
        assert out[c].mean() == pytest.approx(0, abs=1e-5)
        assert out[c].std() == pytest.approx(1, abs=1e-4)
    img2 = img.copy()
    img2[:, :2] = 0
    out2 = run(Intensity(kind="zscore", nonzero=True), img2)
    assert np.all(out2[:, :2] == 0)
    nz = out2[0, 2:]
    assert nz.mean() == pytest.approx(0, abs=1e-5) and nz.std() == pytest.approx(1, abs=1e-4)


def test_percentile_and_range():
    img = np.arange(1000, dtype=np.float32).reshape(1, 10, 10, 10)
    pct = Intensity(kind="percentile", lower=1.0, upper=99.0, b_min=0.0, b_max=1.0, clip=False)
    out = run(pct, img)
    lo, hi = np.percentile(img, [1, 99])
    assert np.allclose(out, (img - lo) / (hi - lo), atol=1e-5)
    rng = Intensity(kind="range", a_min=100.0, a_max=600.0, b_min=-1.0, b_max=1.0, clip=True)
    out = run(rng, img)
    assert np.allclose(out, np.clip((img - 100) / 500 * 2 - 1, -1, 1), atol=1e-6)
    assert np.array_equal(run(Intensity(kind="none"), img), img)
