"""Benchmark networks, training, Dice and checkpoints (ccfv.bench.train)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from ccfv.bank import auto_layers, load_model, parse_bank, resolve_layers
from ccfv.bench.train import (
    ARCHITECTURES,
    augment_batch,
    build_network,
    dice_per_case,
    dice_per_class,
    head_module,
    load_checkpoint,
    load_pretrained,
    mean_dice,
    network_spec,
    save_checkpoint,
    set_seed,
    train,
)
from ccfv.errors import CCFVWarning, UserError


@pytest.fixture(autouse=True)
def _one_thread_and_restored_determinism():
    """One torch thread (2-thread OpenMP collapses when the CPU is shared); undo set_seed's
    flags."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def disc_task(n: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A bright disc (label 1) of random radius and place on dark noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = rng.integers(0, 90, size=(n, 1, size, size)).astype(np.uint8)
    labels = np.zeros((n, size, size), np.int64)
    for i in range(n):
        r = rng.uniform(4, 9)
        cy, cx = rng.uniform(r + 1, size - r - 1, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        labels[i][disc] = 1
        images[i, 0][disc] = rng.integers(150, 256, disc.sum())
    return images, labels


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------------
# architectures


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_architecture_builds_from_spec_runs_and_has_its_head(arch):
    spec = network_spec(arch, 2, 3, 32)
    assert set(spec) == {"network", "args"} and spec["network"].startswith("monai.networks.nets.")
    assert all(not isinstance(v, tuple) for v in spec["args"].values())  # YAML-ready
    torch.manual_seed(0)
    from_spec = build_network(spec)
    torch.manual_seed(0)
    from_table = ARCHITECTURES[arch](2, 3, 32)
    assert type(from_spec) is type(from_table)
    assert same(weights(from_spec), weights(from_table))
    # the head: its input is the last auto layer, its output is the network's output
    head = head_module(arch)
    assert auto_layers(from_table)[-1].key == f"{head}:input"
    seen = {}
    module = dict(from_table.named_modules())[head]
    handle = module.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    x = torch.rand(2, 2, 32, 32)
    with torch.no_grad():
        out = from_table.eval()(x)
    handle.remove()
    assert out.shape == (2, 3, 32, 32)
    assert torch.equal(seen["out"], out)


@pytest.mark.parametrize("arch", ["unet", "segresnet", "dynunet"])
def test_3d_architecture_has_its_head_and_loads_pretrained(arch):
    torch.manual_seed(0)
    model = ARCHITECTURES[arch](1, 3, [16, 16, 8])
    assert network_spec(arch, 1, 3, [16, 16, 8])["args"]["spatial_dims"] == 3
    head = head_module(arch)
    assert auto_layers(model)[-1].key == f"{head}:input"
    with torch.no_grad():
        out = model.eval()(torch.rand(1, 1, 16, 16, 8))
    assert out.shape == (1, 3, 16, 16, 8)
    torch.manual_seed(1)
    source = ARCHITECTURES[arch](1, 2, [16, 16, 8])  # another number of classes
    loaded = load_pretrained(model, source.state_dict(), head)
    own, theirs = model.state_dict(), source.state_dict()
    assert loaded["loaded"] == sum(not k.startswith(head + ".") for k in own)
    assert all(torch.equal(own[k], theirs[k]) for k in own if not k.startswith(head + "."))


def test_training_3d_learns_and_dice_is_3d():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 60, size=(6, 1, 16, 16, 8)).astype(np.uint8)
    labels = np.zeros((6, 16, 16, 8), dtype=np.int64)
    labels[:, 4:12, 4:12, 2:6] = 1
    images[:, 0][labels == 1] += 150  # a bright box
    set_seed(0)
    model = ARCHITECTURES["unet"](1, 2, [16, 16, 8])
    info = train(model, images, labels, steps=40, batch_size=2, lr=1e-2, seed=0)
    assert info["loss_last"] < info["loss_first"]
    assert dice_per_class(model, images, labels, n_classes=2)[0] > 0.5


def test_architecture_arguments_are_checked():
    with pytest.raises(UserError, match="unknown benchmark architecture 'vnet'.*unet, unetr"):
        network_spec("vnet", 1, 2, 32)
    with pytest.raises(UserError, match=r"'unetr'.*multiple of 16 on every axis, got \[40, 40"):
        network_spec("unetr", 1, 2, 40)
    with pytest.raises(UserError, match=r"multiple of 8 on every axis, got \[36, 36\]"):
        ARCHITECTURES["unet"](1, 2, 36)
    with pytest.raises(UserError, match=r"multiple of 8 on every axis, got \[16, 16, 12\]"):
        ARCHITECTURES["segresnet"](1, 2, [16, 16, 12])
    with pytest.raises(UserError, match="2 or 3 values"):
        network_spec("dynunet", 1, 2, [16])
    with pytest.raises(UserError, match="unknown"):
        head_module("vnet")


# ------------------------------------------------------------------------------------------------
# training


def test_training_learns_a_disc():
    images, labels = disc_task(16)
    test_images, test_labels = disc_task(8, seed=1)
    set_seed(0)
    model = ARCHITECTURES["unet"](1, 2, 32)
    result = train(model, images, labels, steps=60, batch_size=8, lr=1e-2, seed=0)
    assert not model.training
    assert set(result) >= {"loss_first", "loss_last", "seconds"} and result["seconds"] > 0
    assert result["loss_first"] > 1.2
    assert result["loss_last"] < 0.3
    dice = dice_per_class(model, test_images, test_labels, n_classes=2)
    assert dice.shape == (1,)
    assert dice[0] > 0.8


def test_training_is_reproducible_and_seed_dependent():
    images, labels = disc_task(8)
    set_seed(3)
    init = weights(ARCHITECTURES["unet"](1, 2, 32))

    def trained(seed: int, augment: bool = True) -> dict[str, torch.Tensor]:
        model = ARCHITECTURES["unet"](1, 2, 32)
        model.load_state_dict(init)
        train(model, images, labels, steps=4, batch_size=4, lr=1e-3, seed=seed, augment=augment)
        return weights(model)

    first = trained(0)
    assert not same(first, init)
    assert same(first, trained(0))
    assert not same(first, trained(1))
    assert not same(first, trained(0, augment=False))


def test_unetr_trains():
    images, labels = disc_task(4)
    set_seed(0)
    model = ARCHITECTURES["unetr"](1, 2, 32)
    result = train(model, images, labels, steps=2, batch_size=2, lr=1e-3, seed=0, progress="t")
    assert np.isfinite([result["loss_first"], result["loss_last"]]).all()


def test_training_refuses_labels_beyond_the_outputs():
    images, labels = disc_task(4)
    model = ARCHITECTURES["unet"](1, 2, 32)
    with pytest.raises(ValueError, match="class id 2 .* only 2 output channels"):
        train(model, images, labels * 2, steps=1, batch_size=2, lr=1e-3, seed=0)


def test_augmentation_moves_image_and_label_together():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(32, 2, 8, 8)).astype(np.uint8)
    labels = (images[:, 0] > 127).astype(np.int64)
    out_images, out_labels = augment_batch(images, labels, np.random.default_rng(5))
    assert out_images.shape == images.shape and out_labels.shape == labels.shape
    assert np.array_equal(out_labels, (out_images[:, 0] > 127).astype(np.int64))
    changed = [not np.array_equal(a, b) for a, b in zip(images, out_images)]
    assert 16 < sum(changed) < 32  # 1 in 8 draws is the identity
    # the same transforms as a permutation of each sample's pixels
    for a, b in zip(images, out_images):
        assert sorted(a[1].ravel()) == sorted(b[1].ravel())
    again = augment_batch(images, labels, np.random.default_rng(5))
    assert np.array_equal(again[0], out_images)


def test_augmentation_3d_moves_volume_and_label_together():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(16, 1, 6, 6, 4)).astype(np.uint8)
    labels = (images[:, 0] > 127).astype(np.int64)
    out_images, out_labels = augment_batch(images, labels, np.random.default_rng(3))
    assert out_images.shape == images.shape
    assert np.array_equal(out_labels, (out_images[:, 0] > 127).astype(np.int64))
    flipped_z = [
        np.array_equal(b, a[:, :, :, ::-1]) or np.array_equal(b, a[:, ::-1, ::-1, ::-1])
        for a, b in zip(images, out_images)
    ]
    assert any(flipped_z)  # the third axis is flipped too


# ------------------------------------------------------------------------------------------------
# Dice


class ClassIdsAsLogits(torch.nn.Module):
    """Test stub: the input's first channel holds class ids / 255; returns them one-hot."""

    def __init__(self, n_classes: int):
        super().__init__()
        self.n_classes = n_classes
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = (x[:, 0] * 255).round().long()
        return torch.nn.functional.one_hot(ids, self.n_classes).permute(0, 3, 1, 2).float()


def test_dice_per_class_matches_hand_computation():
    # 3 images 4x4, classes 0..3; class 3 is predicted once but never in a label
    label = np.array(
        [
            [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 2, 2], [0, 0, 0, 0]],  # A
            [[0, 0, 0, 0], [2, 2, 0, 0], [2, 2, 0, 0], [0, 0, 0, 0]],  # B
            [[1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],  # C
        ]
    )
    pred = np.array(
        [
            [[1, 0, 0, 1], [1, 0, 0, 0], [0, 0, 2, 2], [0, 0, 0, 3]],  # A
            [[0, 0, 0, 0], [2, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],  # B
            [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 2], [0, 0, 0, 0]],  # C
        ]
    )
    # class 1: A 2*2/(3+4) = 4/7; B no class 1 in label (ignored); C 0 -> mean 2/7
    # class 2: A 1; B 2*2/(2+4) = 2/3; C not in label (ignored) -> mean 5/6
    # class 3: in no label -> NaN
    images = pred[:, None].astype(np.uint8)
    model = ClassIdsAsLogits(4).train()
    dice = dice_per_class(model, images, label, n_classes=4, batch_size=2)
    assert model.training  # mode restored
    assert dice.shape == (3,)
    np.testing.assert_allclose(dice[:2], [2 / 7, 5 / 6], rtol=1e-6)
    assert np.isnan(dice[2])
    # a class missing from some images does not poison the others' mean
    np.testing.assert_allclose(
        dice_per_class(model, images[:2], label[:2], n_classes=4)[:2], [4 / 7, 5 / 6], rtol=1e-6
    )
    with pytest.raises(ValueError, match="outputs 4 channels, n_classes is 3"):
        dice_per_class(model, images, np.minimum(label, 2), n_classes=3)


def test_dice_per_case_by_hand_and_its_mean_is_dice_per_class():
    label = np.array(
        [
            [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 2, 2], [0, 0, 0, 0]],
            [[0, 0, 0, 0], [2, 2, 0, 0], [2, 2, 0, 0], [0, 0, 0, 0]],
            [[1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
        ]
    )
    pred = np.array(
        [
            [[1, 0, 0, 1], [1, 0, 0, 0], [0, 0, 2, 2], [0, 0, 0, 3]],
            [[0, 0, 0, 0], [2, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
            [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 2], [0, 0, 0, 0]],
        ]
    )
    model = ClassIdsAsLogits(4).train()
    images = pred[:, None].astype(np.uint8)
    cases = dice_per_case(model, images, label, n_classes=4, batch_size=2)
    assert model.training
    nan = np.nan
    np.testing.assert_allclose(cases, [[4 / 7, 1, nan], [nan, 2 / 3, nan], [0, nan, nan]])
    per_class = dice_per_class(model, images, label, n_classes=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        np.testing.assert_allclose(np.nanmean(cases, axis=0), per_class, rtol=1e-6)
    assert mean_dice(cases) == pytest.approx((2 / 7 + 5 / 6) / 2)
    assert mean_dice(np.full((2, 1), np.nan)) is None
    # on a trained network: the same numbers as MONAI's DiceMetric
    images, labels = disc_task(12, seed=3)
    set_seed(0)
    net = ARCHITECTURES["unet"](1, 2, 32)
    train(net, images, labels, steps=10, batch_size=4, lr=1e-2, seed=0)
    np.testing.assert_allclose(
        np.nanmean(dice_per_case(net, images, labels, n_classes=2), 0),
        dice_per_class(net, images, labels, n_classes=2),
        rtol=1e-6,
    )


def test_training_with_validation_selects_the_best_checkpoint_and_poly_decays():
    images, labels = disc_task(16)
    val_images, val_labels = disc_task(6, seed=1)

    def validate(net):
        return mean_dice(dice_per_case(net, val_images, val_labels, n_classes=2))

    set_seed(0)
    model = ARCHITECTURES["unet"](1, 2, 32)
    info = train(
        model,
        images,
        labels,
        steps=30,
        batch_size=8,
        lr=1e-2,
        seed=0,
        schedule="poly",
        validate=validate,
        eval_every=7,
    )
    assert [c[0] for c in info["curve"]] == [7, 14, 21, 28, 30]
    values = [c[1] for c in info["curve"]]
    assert info["best_value"] == max(values)
    assert info["best_step"] == info["curve"][values.index(max(values))][0]
    assert validate(model) == pytest.approx(info["best_value"])  # the best weights are kept
    assert not model.training
    # poly: the same run without validation ends with other weights than a constant rate
    set_seed(0)
    constant = ARCHITECTURES["unet"](1, 2, 32)
    train(constant, images, labels, steps=30, batch_size=8, lr=1e-2, seed=0)
    set_seed(0)
    poly = ARCHITECTURES["unet"](1, 2, 32)
    result = train(poly, images, labels, steps=30, batch_size=8, lr=1e-2, seed=0, schedule="poly")
    assert "curve" not in result and not same(weights(constant), weights(poly))
    with pytest.raises(ValueError, match="schedule"):
        train(poly, images, labels, steps=2, batch_size=2, lr=1e-2, seed=0, schedule="cos")


# ------------------------------------------------------------------------------------------------
# pre-trained weights and checkpoints


def test_load_pretrained_reinitialises_exactly_the_head():
    torch.manual_seed(1)
    source = weights(ARCHITECTURES["unet"](1, 3, 32))  # another number of classes
    torch.manual_seed(0)
    model = ARCHITECTURES["unet"](1, 2, 32)
    fresh = weights(model)
    head = head_module("unet")
    result = load_pretrained(model, source, head)
    now = weights(model)
    head_keys = [k for k in now if k.startswith(head + ".")]
    assert result["reinitialised"] == head_keys and head_keys
    assert result["loaded"] == len(now) - len(head_keys)
    for key in now:
        if key in head_keys:
            assert torch.equal(now[key], fresh[key]), key
        else:
            assert torch.equal(now[key], source[key]), key
            assert not torch.equal(now[key], fresh[key]) or now[key].numel() <= 1, key


def test_load_pretrained_refuses_another_architecture():
    torch.manual_seed(0)
    unetr = weights(ARCHITECTURES["unetr"](1, 2, 32))
    model = ARCHITECTURES["unet"](1, 2, 32)
    before = weights(model)
    with pytest.raises(
        UserError,
        match=r"missing in the checkpoint: model\.0\..*not in the model: "
        r"vit\.",
    ):
        load_pretrained(model, unetr, head_module("unet"))
    assert same(weights(model), before)  # nothing loaded
    three_channels = weights(ARCHITECTURES["unet"](3, 2, 32))
    with pytest.raises(UserError, match=r"shape mismatch: model\.0\.\S+ \(checkpoint \[16, 3"):
        load_pretrained(model, three_channels, "model.2")
    with pytest.raises(UserError, match="head 'decoder' is not a module"):
        load_pretrained(model, before, "decoder")


def test_checkpoint_round_trips_through_the_bank(tmp_path):
    torch.manual_seed(0)
    model = ARCHITECTURES["unet"](1, 2, 32)
    images, labels = disc_task(4)
    train(model, images, labels, steps=2, batch_size=2, lr=1e-3, seed=0)
    spec = network_spec("unet", 1, 2, 32)
    meta = {
        "arch": "unet",
        "task": "disc",
        "steps": np.int64(2),
        "size": (32, 32),
        "result": {"dice": np.float32(0.5)},
    }
    path = save_checkpoint(model, tmp_path / "ck" / "unet.pt", meta)
    save_checkpoint(model, path, meta)  # overwrite in place
    assert sorted(p.name for p in path.parent.iterdir()) == ["unet.pt"]  # no temp file left
    state, read_meta = load_checkpoint(path)
    assert same(state, weights(model))
    assert read_meta == {
        "arch": "unet",
        "task": "disc",
        "steps": 2,
        "size": [32, 32],
        "result": {"dice": 0.5},
    }
    entry = parse_bank({"models": [{"name": "u", **spec, "checkpoint": "ck/unet.pt"}]}, tmp_path)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", CCFVWarning)  # weights_only load, no fallback
        loaded, report = load_model(entry)
    assert report.initialisation == "checkpoint" and report.key == "state_dict"
    assert report.fraction_matched == 1.0 and not report.missing and not report.unexpected
    assert same(weights(loaded), weights(model))
    assert resolve_layers(loaded, entry)[-1].key == "model.2:input"
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    with pytest.raises(TypeError, match=r"meta\['bad'\] is a object"):
        save_checkpoint(model, tmp_path / "bad.pt", {"bad": object()})
    assert not (tmp_path / "bad.pt").exists()
