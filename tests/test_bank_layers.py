"""Layers: 'auto' pyramids of the MONAI architectures, named layers, hooks, listing."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from ccfv.bank import (
    AUTO_ARCHITECTURES,
    LayerSpec,
    auto_layers,
    build_model,
    hooked,
    list_layers,
    parse_bank,
    register_hooks,
    resolve_layers,
)
from ccfv.errors import UserError

HAS_EINOPS = importlib.util.find_spec("einops") is not None
needs_einops = pytest.mark.skipif(not HAS_EINOPS, reason="MONAI's UNETR/SwinUNETR need einops")

# (network, args without spatial_dims, spatial size, needs einops,
#  expected [(layer key, channels, downsampling factor)] deepest first)
ARCHS = [
    (
        "UNet",
        {
            "in_channels": 1,
            "out_channels": 2,
            "channels": [4, 8, 16, 32],
            "strides": [2, 2, 2],
            "num_res_units": 1,
        },
        32,
        False,
        [
            ("model.1.submodule.1.submodule.2:input", 16 + 32, 8),
            ("model.1.submodule.2:input", 8 + 8, 4),
            ("model.2:input", 4 + 4, 2),
        ],
    ),
    (
        "BasicUNet",
        {"in_channels": 1, "out_channels": 2, "features": [4, 4, 8, 8, 16, 4]},
        32,
        False,
        [("upcat_3:output", 8, 4), ("upcat_2:output", 4, 2), ("final_conv:input", 4, 1)],
    ),
    (
        "DynUNet",
        {
            "in_channels": 1,
            "out_channels": 2,
            "kernel_size": [3, 3, 3, 3],
            "strides": [1, 2, 2, 2],
            "upsample_kernel_size": [2, 2, 2],
            "filters": [4, 8, 16, 32],
            "deep_supervision": True,
            "deep_supr_num": 2,
        },
        32,
        False,
        [("upsamples.0:output", 16, 4), ("upsamples.1:output", 8, 2), ("output_block:input", 4, 1)],
    ),
    (
        "UNETR",
        {
            "in_channels": 1,
            "out_channels": 2,
            "img_size": None,
            "feature_size": 4,
            "hidden_size": 48,
            "mlp_dim": 96,
            "num_heads": 4,
        },
        32,
        True,
        [("decoder3:input", 16, 4), ("decoder2:input", 8, 2), ("out:input", 4, 1)],
    ),
    (
        "SwinUNETR",
        {
            "in_channels": 1,
            "out_channels": 2,
            "feature_size": 12,
            "depths": [1, 1, 1, 1],
            "num_heads": [1, 1, 1, 1],
        },
        64,
        True,
        [("decoder2:input", 24, 4), ("decoder1:input", 12, 2), ("out:input", 12, 1)],
    ),
    (
        "SegResNet",
        {"in_channels": 1, "out_channels": 2, "init_filters": 8, "blocks_down": [1, 1, 1, 1]},
        32,
        False,
        [
            ("up_layers.0:output", 32, 4),
            ("up_layers.1:output", 16, 2),
            ("conv_final.2:input", 8, 1),
        ],
    ),
    (
        "VNet",
        {"in_channels": 1, "out_channels": 2},
        32,
        False,
        [("up_tr128:output", 128, 4), ("up_tr64:output", 64, 2), ("out_tr:input", 32, 1)],
    ),
    (
        "AttentionUnet",
        {"in_channels": 1, "out_channels": 2, "channels": [4, 8, 16, 32], "strides": [2, 2, 2]},
        32,
        False,
        [
            ("model.1.submodule.1.submodule.1:output", 16, 4),
            ("model.1.submodule.1:output", 8, 2),
            ("model.2:input", 4, 1),
        ],
    ),
]


def make_entry(network, args, ndim, size, layers="auto", name="m"):
    args = dict(args, spatial_dims=ndim)
    if "img_size" in args:
        args["img_size"] = [size] * ndim
    raw = {"name": name, "network": f"monai.networks.nets.{network}", "args": args}
    raw["layers"] = layers
    return parse_bank({"models": [raw]}, ".")[0]


def test_every_auto_architecture_is_tested():
    assert sorted(AUTO_ARCHITECTURES) == sorted(a[0] for a in ARCHS)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize(
    ("network", "args", "size", "einops", "expected"),
    [pytest.param(*a, id=a[0], marks=needs_einops if a[3] else ()) for a in ARCHS],
)
def test_auto_layers_give_the_decoder_pyramid(network, args, size, einops, expected, ndim):
    entry = make_entry(network, args, ndim, size)
    model = build_model(entry)
    layers = resolve_layers(model, entry)
    assert [s.key for s in layers] == [k for k, _, _ in expected]
    names = dict(model.named_modules())
    assert all(s.name in names for s in layers)
    x = torch.randn(1, 1, *([size] * ndim))
    with hooked(model, layers) as feats, torch.no_grad():
        out = model(x)
    assert out.shape == (1, 2, *([size] * ndim))
    for key, channels, factor in expected:
        assert feats[key].shape == (1, channels, *([size // factor] * ndim)), key
    # increasing resolution, the last one at the network's output resolution or one level below
    sizes = [feats[k].shape[-1] for k, _, _ in expected]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)


def test_auto_layers_follow_the_depth_of_unet():
    shallow = make_entry(
        "UNet",
        {"in_channels": 1, "out_channels": 2, "channels": [4, 8, 16], "strides": [2, 2]},
        2,
        16,
    )
    model = build_model(shallow)
    assert auto_layers(model) == [
        LayerSpec("model.1.submodule.2", "input"),
        LayerSpec("model.2", "input"),
    ]
    deep = make_entry(
        "UNet",
        {
            "in_channels": 1,
            "out_channels": 2,
            "channels": [2, 2, 2, 2, 2, 2],
            "strides": [2, 2, 2, 2, 2],
        },
        2,
        32,
    )
    assert [s.name for s in auto_layers(build_model(deep))] == [
        "model.1.submodule.1.submodule.2",
        "model.1.submodule.2",
        "model.2",
    ]


def test_auto_layers_of_a_subclass():
    from monai.networks.nets import BasicUNet

    class MyUNet(BasicUNet):
        pass

    model = MyUNet(spatial_dims=2, in_channels=1, out_channels=2, features=(4, 4, 8, 8, 16, 4))
    keys = [s.key for s in auto_layers(model)]
    assert keys == ["upcat_3:output", "upcat_2:output", "final_conv:input"]


def test_unknown_architecture_with_auto():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3))
    with pytest.raises(UserError, match=r"'net'.*Sequential.*ccfv layers"):
        auto_layers(model, entry="net")


def test_named_layers_and_unknown_name():
    args = {"in_channels": 1, "out_channels": 2, "features": [4, 4, 8, 8, 16, 4]}
    layers = ["upcat_2.convs", "final_conv:input"]
    entry = make_entry("BasicUNet", args, 2, 32, layers=layers, name="bu")
    model = build_model(entry)
    expected = [LayerSpec("upcat_2.convs"), LayerSpec("final_conv", "input")]
    assert resolve_layers(model, entry) == expected
    bad = make_entry("BasicUNet", args, 2, 32, layers=["upcat2", "final_conv:input"], name="bu")
    with pytest.raises(UserError) as info:
        resolve_layers(model, bad)
    msg = str(info.value)
    assert "'bu'" in msg and "'upcat2'" in msg and "upcat_2" in msg and "ccfv layers" in msg


# ------------------------------------------------------------------------------------------------
# hooks


class Chain(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(1, 3, 1)
        self.b = torch.nn.Conv2d(3, 2, 1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_hooks_fire_on_every_forward_and_are_gone_after():
    model = Chain().eval()
    layers = [LayerSpec("a"), LayerSpec("b", "input"), LayerSpec("b", "output")]
    x1, x2 = torch.randn(2, 1, 4, 4), torch.randn(3, 1, 5, 5)
    with hooked(model, layers) as feats, torch.no_grad():
        for x in (x1, x2, x1, x2):  # every forward refills the store
            out = model(x)
            a = model.a(x)
            assert set(feats) == {"a:output", "b:input", "b:output"}
            assert torch.equal(feats["a:output"], a)
            assert torch.equal(feats["b:input"], torch.relu(a))
            assert torch.equal(feats["b:output"], out)
            assert not feats["a:output"].requires_grad
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
    kept = feats["a:output"]
    with torch.no_grad():
        model(x1)
    assert feats["a:output"] is kept  # nothing records after the context


def test_store_is_cleared_at_each_forward():
    class Skipper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Identity()

        def forward(self, x, use_a: bool = True):
            return self.a(x) if use_a else x

    model = Skipper()
    with hooked(model, [LayerSpec("a")]) as feats:
        model(torch.ones(1))
        assert "a:output" in feats
        model(torch.ones(1), use_a=False)
        assert "a:output" not in feats  # absent, not stale


def test_register_hooks_handles_and_copy():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.ReLU(inplace=True))
    store, handles = register_hooks(model, [LayerSpec("0")])
    model(-torch.ones(1, 1, 2, 2) * 5)
    assert (store["0:output"] >= 0).all()  # the in-place ReLU overwrote the referenced tensor
    for h in handles:
        h.remove()
    with hooked(model, [LayerSpec("0")], copy=True) as feats:
        with torch.no_grad():
            model[0].weight.fill_(1.0)
            model[0].bias.fill_(0.0)
            model(-torch.ones(1, 1, 2, 2))
        assert (feats["0:output"] == -1).all()  # the copy kept the pre-activation values
    with pytest.raises(UserError, match="'nope'"):
        register_hooks(model, [LayerSpec("nope")])
    assert not model[0]._forward_hooks and not model._forward_pre_hooks


def test_list_layers():
    model = Chain().eval()
    rows = list_layers(model, (1, 1, 6, 6))
    assert rows == [("a", "Conv2d", (1, 3, 6, 6)), ("b", "Conv2d", (1, 2, 6, 6))]
    assert rows[0].name == "a" and rows[0].type_name == "Conv2d"
    assert all(not m._forward_hooks for m in model.modules())


def test_list_layers_of_a_monai_network():
    entry = make_entry(
        "BasicUNet", {"in_channels": 1, "out_channels": 2, "features": [4, 4, 8, 8, 16, 4]}, 2, 32
    )
    rows = {r.name: r for r in list_layers(build_model(entry), (1, 1, 32, 32))}
    assert rows["upcat_2"].type_name == "UpCat" and rows["upcat_2"].output_shape == (1, 4, 16, 16)
    assert rows["final_conv"].output_shape == (1, 2, 32, 32)
    assert rows["down_4"].output_shape == (1, 16, 2, 2)
