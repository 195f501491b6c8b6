"""Building models: MONAI class, factory, TorchScript; checkpoints; seeded initialisation."""

from __future__ import annotations

import copy
import importlib.util
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import NO_TORCHVISION

from ccfv.bank import (
    LoadReport,
    TorchScriptModel,
    apply_state_dict,
    build_model,
    hooked,
    list_layers,
    load_model,
    parse_bank,
    read_state_dict,
    resolve_layers,
    strip_prefixes,
)
from ccfv.errors import CCFVWarning, UserError

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

ARGS = {
    "spatial_dims": 2,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [4, 8, 16],
    "strides": [2, 2],
}


def entry_of(tmp_path: Path, **fields):
    raw = {"name": "m", "network": "monai.networks.nets.UNet", "args": copy.deepcopy(ARGS)}
    raw.update(fields)
    return parse_bank({"models": [raw]}, tmp_path)[0]


def reference_model(seed: int = 123) -> torch.nn.Module:
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    return UNet(**ARGS).eval()


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------------------------------------
# seeded random initialisation


def test_seeded_init_is_reproducible_and_seed_dependent(tmp_path):
    m0, report = load_model(entry_of(tmp_path, seed=0))
    assert not m0.training
    assert report.initialisation == "seeded-random" and report.seed == 0
    assert "no checkpoint" in report.summary() and "seed 0" in report.summary()
    torch.manual_seed(999)
    state_before = torch.get_rng_state()
    again = build_model(entry_of(tmp_path, seed=0))
    assert torch.equal(torch.get_rng_state(), state_before)  # caller's RNG untouched
    assert same_weights(m0, again)
    other = build_model(entry_of(tmp_path, seed=1))
    assert not same_weights(m0, other)
    w0 = dict(m0.named_parameters())["model.0.conv.weight"]
    w1 = dict(other.named_parameters())["model.0.conv.weight"]
    assert not torch.equal(w0, w1)


# ------------------------------------------------------------------------------------------------
# checkpoints


@pytest.mark.parametrize(
    ("wrap", "key_used"),
    [
        (lambda sd: sd, None),
        (lambda sd: {"state_dict": sd, "epoch": 3}, "state_dict"),
        (lambda sd: {"model": sd, "optimizer": {"lr": 0.1}}, "model"),
        (lambda sd: {"network_weights": sd, "trainer_name": "nnUNetTrainer"}, "network_weights"),
        (lambda sd: {"state_dict": {"module." + k: v for k, v in sd.items()}}, "state_dict"),
        (lambda sd: {"_orig_mod." + k: v for k, v in sd.items()}, None),
        (lambda sd: {"module._orig_mod." + k: v for k, v in sd.items()}, None),
    ],
    ids=["bare", "state_dict", "model", "network_weights", "module.", "_orig_mod.", "both"],
)
def test_checkpoint_keys_and_prefixes(tmp_path, wrap, key_used):
    ref = reference_model()
    torch.save(wrap(ref.state_dict()), tmp_path / "ck.pt")
    model, report = load_model(entry_of(tmp_path, checkpoint="ck.pt", seed=7))
    assert same_weights(model, ref)
    assert report.initialisation == "checkpoint"
    assert report.key == key_used
    assert report.fraction_matched == 1.0
    assert report.n_params == len(list(ref.parameters())) == report.n_params_matched
    assert report.missing == () and report.unexpected == () and report.shape_mismatched == ()


def test_user_given_key_and_missing_key(tmp_path):
    ref = reference_model()
    other = reference_model(5).state_dict()
    torch.save({"ema": ref.state_dict(), "state_dict": other}, tmp_path / "ck.pt")
    e = entry_of(tmp_path, checkpoint={"path": "ck.pt", "key": "ema"})
    model, report = load_model(e)
    assert same_weights(model, ref) and report.key == "ema"
    e = entry_of(tmp_path, checkpoint={"path": "ck.pt", "key": "weights"})
    with pytest.raises(UserError, match=r"ck\.pt.*'m'.*no key 'weights'.*ema, state_dict"):
        build_model(e)


def test_dict_without_state_dict(tmp_path):
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "ck.pt")
    with pytest.raises(UserError, match=r"ck\.pt.*'m'.*epoch, lr"):
        build_model(entry_of(tmp_path, checkpoint="ck.pt"))


def test_partial_checkpoint_is_reported_and_loaded(tmp_path):
    ref = reference_model()
    sd = ref.state_dict()
    params = [k for k, _ in ref.named_parameters()]
    dropped = params[-1]  # one parameter tensor missing: still >= 90 %
    del sd[dropped]
    sd["extra.head.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "ck.pt")
    model, report = load_model(entry_of(tmp_path, checkpoint="ck.pt"))
    assert report.missing == (dropped,)
    assert report.unexpected == ("extra.head.weight",)
    assert report.n_params_matched == len(params) - 1
    assert report.fraction_matched == pytest.approx((len(params) - 1) / len(params))
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in sd.items() if k in loaded)


def test_barely_matching_checkpoint_is_refused(tmp_path):
    ref = reference_model()
    sd = ref.state_dict()
    params = [k for k, _ in ref.named_parameters()]
    # keep only half the parameter tensors, and give one of them the wrong shape
    keep = params[: len(params) // 2]
    sd = {k: sd[k] for k in keep}
    sd[keep[0]] = torch.zeros(99, 1)
    torch.save({"state_dict": sd}, tmp_path / "bad.pt")
    e = entry_of(tmp_path, checkpoint="bad.pt")
    with pytest.raises(UserError) as info:
        build_model(e)
    msg = str(info.value)
    n_ok = len(keep) - 1
    assert "bad.pt" in msg and "'m'" in msg
    assert f"only {n_ok} of {len(params)} parameter tensors" in msg
    assert f"{100 * n_ok / len(params):.1f}%" in msg and "90%" in msg
    assert params[len(keep)] in msg  # an example of a missing key
    assert keep[0] in msg and "[99, 1]" in msg  # the shape mismatch


def test_apply_state_dict_reports_shape_mismatch(tmp_path):
    model = reference_model()
    sd = reference_model(1).state_dict()
    name = next(k for k, _ in model.named_parameters() if k.endswith("bias"))
    sd[name] = torch.zeros(77)
    before = model.state_dict()[name].clone()
    report = apply_state_dict(model, sd, entry="m", min_fraction=0.5)
    assert isinstance(report, LoadReport)
    assert [m[0] for m in report.shape_mismatched] == [name]
    assert report.shape_mismatched[0][1] == (77,)
    assert torch.equal(model.state_dict()[name], before)  # mismatched tensor left alone
    assert report.n_shape_mismatched == 1 and report.n_missing == 0


def test_strip_prefixes_only_when_all_keys_have_them():
    out, removed = strip_prefixes({"module.a": 1, "module.b": 2})
    assert out == {"a": 1, "b": 2} and removed == ("module.",)
    out, removed = strip_prefixes({"module.a": 1, "b": 2})
    assert out == {"module.a": 1, "b": 2} and removed == ()


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"this is not a torch checkpoint" * 20)
    (tmp_path / "text.pt").write_text("models: []\n")
    for name in ("junk.pt", "text.pt"):
        with pytest.raises(
            UserError,
            match=rf"{name}.*'m'.*not a readable torch checkpoint"
            r".*written by torch\.save",
        ) as error:
            build_model(entry_of(tmp_path, checkpoint=name))
        assert "weights_only=False" not in str(error.value)  # torch's advice is not passed on
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(UserError, match=r"list\.pt.*holds a list"):
        build_model(entry_of(tmp_path, checkpoint="list.pt"))


def test_checkpoint_with_numpy_values_loads_without_unpickling(tmp_path):
    """nnU-Net-like checkpoints hold numpy arrays and scalars: read with weights_only=True."""
    ref = reference_model()
    torch.save(
        {
            "network_weights": ref.state_dict(),
            "init_args": {"plans": np.arange(3)},
            "logging": {"ema_fg_dice": [np.float64(0.5), np.float32(0.25)]},
            "device": torch.device("cpu"),
        },
        tmp_path / "nnunet_like.pt",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        state, key = read_state_dict(tmp_path / "nnunet_like.pt", entry="m")
    assert key == "network_weights" and set(state) == set(ref.state_dict())
    assert all(torch.equal(state[k], v) for k, v in ref.state_dict().items())


class _CreatesFile:
    """Unpickling this object calls os.mkdir(marker): proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("layout", ["bare", "under_state_dict", "beside_weights"])
def test_checkpoint_that_would_run_code_is_refused_and_nothing_runs(tmp_path, layout):
    marker = tmp_path / "code_ran"
    evil = _CreatesFile(marker)
    obj = {
        "bare": evil,
        "under_state_dict": {"state_dict": evil},
        "beside_weights": {"state_dict": reference_model().state_dict(), "extra": evil},
    }[layout]
    torch.save(obj, tmp_path / "evil.pt")
    with pytest.raises(
        UserError,
        match=r"evil\.pt.*pickled Python objects.*mkdir.*"
        r"weights_only=True.*state_dict",
    ):
        read_state_dict(tmp_path / "evil.pt", entry="m")
    assert not marker.exists()
    with pytest.raises(UserError, match="never unpickles"):
        build_model(entry_of(tmp_path, checkpoint="evil.pt"))
    assert not marker.exists()


def test_pickled_module_is_refused_with_the_fix(tmp_path):
    torch.save(reference_model(), tmp_path / "whole.pt")
    with pytest.raises(
        UserError,
        match=r"whole\.pt.*a whole pickled nn\.Module "
        r"\(monai\.networks\..*"
        r"torch\.save\(model\.state_dict\(\), path\)",
    ):
        read_state_dict(tmp_path / "whole.pt", entry="m")


def test_every_torch_load_goes_through_load_torch_file():
    """One function reads torch files (weights_only=True); no other torch.load in src/."""
    import re

    src = Path(__file__).resolve().parents[1] / "src" / "ccfv"
    calls = []
    for path in src.rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if re.search(r"^[^\"'`]*\btorch\.load\(", code):  # a call, not text
                calls.append((path.relative_to(src).as_posix(), line.strip()))
            assert "weights_only=False" not in code or "``" in code, (path, number, line)
    assert calls == [
        ("bank/checkpoint.py", 'return torch.load(path, map_location="cpu", weights_only=True)')
    ]


# ------------------------------------------------------------------------------------------------
# builders


def test_network_errors(tmp_path):
    with pytest.raises(UserError, match=r"'m'.*has no 'UNett'.*monai\.networks\.nets\.UNet"):
        build_model(entry_of(tmp_path, network="monai.networks.nets.UNett"))
    with pytest.raises(UserError, match=r"'m'.*cannot import module 'nosuchpkg\.nets'"):
        build_model(entry_of(tmp_path, network="nosuchpkg.nets.Net"))
    bad = copy.deepcopy(ARGS)
    bad["chanels"] = bad.pop("channels")
    with pytest.raises(UserError, match=r"'m'.*rejected args.*chanels"):
        build_model(entry_of(tmp_path, args=bad))
    # a bare class name is looked up in monai.networks.nets
    assert type(build_model(entry_of(tmp_path, network="UNet"))).__name__ == "UNet"


@pytest.mark.skipif(importlib.util.find_spec("einops") is not None, reason="einops is installed")
def test_missing_einops_is_a_user_error(tmp_path):
    e = parse_bank(
        {
            "models": [
                {
                    "name": "swin",
                    "network": "monai.networks.nets.SwinUNETR",
                    "args": {
                        "in_channels": 1,
                        "out_channels": 2,
                        "feature_size": 12,
                        "spatial_dims": 2,
                        "depths": [1, 1, 1, 1],
                        "num_heads": [1, 1, 1, 1],
                    },
                }
            ]
        },
        tmp_path,
    )[0]
    with pytest.raises(UserError, match="einops"):
        build_model(e)


FACTORY_SOURCE = textwrap.dedent(
    """
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self, width):
            super().__init__()
            self.enc = torch.nn.Conv2d(1, width, 3, padding=1)
            self.dec = torch.nn.Conv2d(width, width, 3, padding=1)
            self.head = torch.nn.Conv2d(width, 2, 1)

        def forward(self, x):
            return self.head(torch.relu(self.dec(torch.relu(self.enc(x)))))

    def make_tiny(width=4):
        return Tiny(width)

    def not_a_module(width=4):
        return "nope"
    """
)


def test_factory_entry(tmp_path, monkeypatch):
    (tmp_path / "my_models_for_test.py").write_text(FACTORY_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    raw = {
        "name": "tiny",
        "factory": "my_models_for_test:make_tiny",
        "args": {"width": 6},
        "seed": 2,
        "layers": ["dec", "head:input"],
    }
    e = parse_bank({"models": [raw]}, tmp_path)[0]
    model, report = load_model(e)
    assert type(model).__name__ == "Tiny" and not model.training
    assert model.enc.out_channels == 6 and report.initialisation == "seeded-random"
    assert same_weights(model, build_model(e))
    layers = resolve_layers(model, e)
    with hooked(model, layers) as feats, torch.no_grad():
        model(torch.randn(1, 1, 8, 8))
    assert feats["dec:output"].shape == (1, 6, 8, 8)
    assert torch.equal(feats["head:input"], torch.relu(feats["dec:output"]))
    with pytest.raises(UserError, match="ccfv layers"):
        resolve_layers(model, parse_bank({"models": [dict(raw, layers="auto")]}, tmp_path)[0])

    def variant(**kv):
        return parse_bank({"models": [dict(raw, **kv)]}, tmp_path)[0]

    with pytest.raises(UserError, match=r"'tiny'.*not_a_module.*not a torch\.nn\.Module"):
        build_model(variant(factory="my_models_for_test:not_a_module"))
    with pytest.raises(UserError, match=r"'tiny'.*has no 'make_tin'.*make_tiny"):
        build_model(variant(factory="my_models_for_test:make_tin"))
    with pytest.raises(UserError, match=r"'tiny'.*rejected args"):
        build_model(variant(args={"depth": 3}))


class _WithFeatures(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.head = torch.nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = torch.relu(self.enc(x))
        return self.head(f), f


def test_torchscript_entry(tmp_path):
    torch.manual_seed(0)
    plain = reference_model()
    torch.jit.save(torch.jit.script(plain), tmp_path / "plain_ts.pt")
    e = parse_bank({"models": [{"name": "ts", "torchscript": "plain_ts.pt"}]}, tmp_path)[0]
    model, report = load_model(e)
    assert isinstance(model, TorchScriptModel) and not model.training
    assert report.initialisation == "torchscript"
    assert report.n_params == len(list(plain.parameters()))
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model(x), plain(x))
    with pytest.raises(UserError, match=r"'ts'.*TorchScript.*outputs\."):
        resolve_layers(model, e)  # auto cannot look inside TorchScript
    e_inner = parse_bank(
        {"models": [{"name": "ts", "torchscript": "plain_ts.pt", "layers": ["scripted.model.2"]}]},
        tmp_path,
    )[0]
    with pytest.raises(UserError, match="TorchScript module, where torch runs no hooks"):
        resolve_layers(build_model(e_inner), e_inner)

    # a scripted model that returns its features exposes them as outputs.<i>
    torch.manual_seed(1)
    feat_model = _WithFeatures().eval()
    torch.jit.save(torch.jit.script(feat_model), tmp_path / "feat_ts.pt")
    e2 = parse_bank(
        {"models": [{"name": "ts2", "torchscript": "feat_ts.pt", "layers": ["outputs.1"]}]},
        tmp_path,
    )[0]
    model2 = build_model(e2)
    layers = resolve_layers(model2, e2)
    with hooked(model2, layers) as feats, torch.no_grad():
        out = model2(x)
    ref_out, ref_feat = feat_model(x)
    assert torch.allclose(out, ref_out) and torch.allclose(feats["outputs.1:output"], ref_feat)
    rows = list_layers(model2, (1, 1, 16, 16))
    assert [(r.name, r.output_shape) for r in rows] == [
        ("outputs.0", (1, 2, 16, 16)),
        ("outputs.1", (1, 4, 16, 16)),
    ]

    # a state-dict checkpoint can still be applied to a TorchScript model
    torch.save(_WithFeatures().state_dict(), tmp_path / "sd.pt")
    e3 = parse_bank(
        {"models": [{"name": "ts3", "torchscript": "feat_ts.pt", "checkpoint": "sd.pt"}]}, tmp_path
    )[0]
    model3, report3 = load_model(e3)
    assert report3.initialisation == "checkpoint" and report3.fraction_matched == 1.0

    (tmp_path / "not_ts.pt").write_bytes(b"garbage" * 10)
    e4 = parse_bank({"models": [{"name": "ts4", "torchscript": "not_ts.pt"}]}, tmp_path)[0]
    with pytest.raises(UserError, match=r"'ts4'.*not_ts\.pt.*not a TorchScript file"):
        build_model(e4)


def test_no_warning_for_clean_checkpoint(tmp_path):
    torch.save(reference_model().state_dict(), tmp_path / "ck.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CCFVWarning)
        build_model(entry_of(tmp_path, checkpoint="ck.pt"))


def test_bank_never_imports_torchvision_or_timm():
    code = textwrap.dedent(
        """
        import sys, torch
        import ccfv.bank as B
        raw = {"name": "a", "network": "monai.networks.nets.SegResNet", "args": {"spatial_dims": 2}}
        e = B.parse_bank({"models": [raw]}, ".")[0]
        m = B.build_model(e)
        with B.hooked(m, B.resolve_layers(m, e)):
            m(torch.zeros(1, 1, 16, 16))
        B.make_preprocess(B.Preprocessing(spacing=(1.0, 1.0)), 2)
        print(sorted(k for k in sys.modules if k.split(".")[0] in ("torchvision", "timm")))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", NO_TORCHVISION + code], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "[]"
