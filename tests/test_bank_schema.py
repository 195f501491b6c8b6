"""Bank file schema: round trip, every validation error, fingerprint."""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path

import pytest
import torch
import yaml

from ccfv.bank import (
    BankEntry,
    Intensity,
    LayerSpec,
    Preprocessing,
    fingerprint,
    load_bank,
    parse_bank,
    parse_layer,
)
from ccfv.errors import UserError

UNET_ARGS = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [4, 8, 16],
    "strides": [2, 2],
}


@pytest.fixture()
def bank_dir(tmp_path: Path) -> Path:
    (tmp_path / "ckpts").mkdir()
    torch.save({"w": torch.zeros(1)}, tmp_path / "ckpts" / "unet.pt")
    return tmp_path


def base_bank() -> dict:
    return {
        "models": [
            {
                "name": "unet_spleen",
                "network": "monai.networks.nets.UNet",
                "args": copy.deepcopy(UNET_ARGS),
                "checkpoint": "ckpts/unet.pt",
                "seed": 3,
                "layers": ["model.1.submodule.2:input", "model.2:input", "model.2"],
                "preprocessing": {
                    "orientation": "ras",
                    "spacing": [1.5, 1.5, 2],
                    "intensity": {"kind": "ct", "clip": [-175, 250]},
                    "roi": [96, 96, 96],
                    "overlap": 0.5,
                    "sw_batch_size": 4,
                },
            },
            {
                "name": "random_unet",
                "network": "monai.networks.nets.UNet",
                "args": copy.deepcopy(UNET_ARGS),
                "layers": "auto",
            },
        ]
    }


def write(dirpath: Path, data: dict, name: str = "bank.yaml") -> Path:
    path = dirpath / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def errors_of(bank_dir: Path, data: dict) -> str:
    with pytest.raises(UserError) as info:
        load_bank(write(bank_dir, data))
    return str(info.value)


# ------------------------------------------------------------------------------------------------


def test_yaml_round_trip(bank_dir):
    entries = load_bank(write(bank_dir, base_bank()))
    assert [e.name for e in entries] == ["unet_spleen", "random_unet"]
    e = entries[0]
    assert e.kind == "network" and e.network == "monai.networks.nets.UNet"
    assert e.target == "monai.networks.nets.UNet"
    assert e.args == UNET_ARGS
    assert e.checkpoint == (bank_dir / "ckpts" / "unet.pt").resolve()
    assert e.checkpoint.is_absolute()
    assert e.checkpoint_key is None
    assert e.seed == 3
    assert e.layers == (
        LayerSpec("model.1.submodule.2", "input"),
        LayerSpec("model.2", "input"),
        LayerSpec("model.2", "output"),
    )
    assert e.preprocessing == Preprocessing(
        orientation="RAS",
        spacing=(1.5, 1.5, 2.0),
        intensity=Intensity(kind="ct", clip=(-175.0, 250.0)),
        roi=(96, 96, 96),
        overlap=0.5,
        sw_batch_size=4,
        in_channels=1,
    )
    assert e.spatial_dims == 3
    assert e.source.endswith("bank.yaml")
    r = entries[1]
    assert r.checkpoint is None and r.seed == 0 and r.layers == "auto"
    assert r.preprocessing == Preprocessing(in_channels=1)
    # the already-parsed dict gives the same entries
    assert parse_bank(base_bank(), bank_dir) == entries


def test_checkpoint_mapping_with_key_and_absolute_path(bank_dir):
    data = base_bank()
    data["models"][0]["checkpoint"] = {
        "path": str(bank_dir / "ckpts" / "unet.pt"),
        "key": "network_weights",
    }
    e = parse_bank(data, "/nonexistent/elsewhere")[0]
    assert e.checkpoint == (bank_dir / "ckpts" / "unet.pt").resolve()
    assert e.checkpoint_key == "network_weights"


def test_paths_are_relative_to_the_yaml_folder(bank_dir, monkeypatch):
    sub = bank_dir / "configs"
    sub.mkdir()
    data = base_bank()
    data["models"][0]["checkpoint"] = "../ckpts/unet.pt"
    path = write(sub, data)
    monkeypatch.chdir(bank_dir / "ckpts")  # the working directory must not matter
    assert load_bank(path)[0].checkpoint == (bank_dir / "ckpts" / "unet.pt").resolve()


def test_parse_layer():
    assert parse_layer("decoder3") == LayerSpec("decoder3", "output")
    assert parse_layer("decoder3:input") == LayerSpec("decoder3", "input")
    assert parse_layer(" out : output ") == LayerSpec("out", "output")
    assert LayerSpec("a.b", "input").key == "a.b:input" == str(LayerSpec("a.b", "input"))
    with pytest.raises(UserError, match="ends in ':inp'"):
        parse_layer("decoder3:inp")
    with pytest.raises(UserError, match="no module name"):
        parse_layer(":input")


def test_intensity_kinds(bank_dir):
    cases = {
        "none": ({"kind": "none"}, Intensity()),
        "zscore": ({"kind": "zscore", "nonzero": True}, Intensity(kind="zscore", nonzero=True)),
        "ct_stats": (
            {"kind": "ct", "clip": [-1000, 1000], "mean": 50, "std": 10},
            Intensity(kind="ct", clip=(-1000.0, 1000.0), mean=50.0, std=10.0),
        ),
        "percentile": (
            {"kind": "percentile"},
            Intensity(kind="percentile", lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=False),
        ),
        "range": (
            {"kind": "range", "a_min": -57, "a_max": 164, "b_min": 0, "b_max": 1, "clip": True},
            Intensity(kind="range", a_min=-57.0, a_max=164.0, b_min=0.0, b_max=1.0, clip=True),
        ),
        "string": ("zscore", Intensity(kind="zscore")),
    }
    for raw, expected in cases.values():
        data = base_bank()
        data["models"][1]["preprocessing"] = {"intensity": raw}
        assert parse_bank(data, bank_dir)[1].preprocessing.intensity == expected


# ------------------------------------------------------------------------------------------------
# validation errors: each names the entry (or file) and the bad value


def mutate(fn):
    data = base_bank()
    fn(data)
    return data


def set0(**kv):
    """Set keys of the first entry."""
    return lambda d: d["models"][0].update(kv)


def set1(**kv):
    """Set keys of the second entry."""
    return lambda d: d["models"][1].update(kv)


def pre0(**kv):
    """Set keys of the first entry's preprocessing."""
    return lambda d: d["models"][0]["preprocessing"].update(kv)


def inten(**kv):
    """Set the first entry's intensity."""
    return pre0(intensity=kv)


U, R = "unet_spleen", "random_unet"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (set0(chekpoint="x.pt"), [U, "chekpoint", "did you mean 'checkpoint'"]),
        (set0(layer="auto"), [U, "'layer'", "did you mean 'layers'"]),
        (lambda d: d["models"][0].pop("name"), ["entry 1", "no 'name'"]),
        (set0(name="  "), ["entry 1", "no 'name'"]),
        (set1(name=U), [U, "used twice"]),
        (lambda d: d["models"][1].pop("network"), [R, "exactly one", "got none"]),
        (set1(factory="pkg.mod:make"), [R, "exactly one", "network and factory"]),
        (set1(network="monai nets UNet"), [R, "dotted class path"]),
        (set1(network=None, factory="pkg.mod.make"), [R, "pkg.module:function"]),
        (set0(checkpoint="ckpts/missing.pt"), [U, "missing.pt", "does not exist"]),
        (set0(checkpoint={"key": "model"}), [U, "needs 'path'"]),
        (set0(checkpoint={"path": "ckpts/unet.pt", "kye": "m"}), [U, "'kye'", "mean 'key'"]),
        (set0(seed=-1), [U, "'seed'", "-1"]),
        (set0(seed="zero"), [U, "'seed'"]),
        (set0(args=[1, 2]), [U, "'args'"]),
        (set0(layers=[]), [U, "'layers'", "ccfv layers"]),
        (set0(layers=["a", "a:output"]), [U, "a:output", "more than once"]),
        (set0(layers=["a:middle"]), [U, "a:middle"]),
        (pre0(spacng=[1, 1, 1]), [U, "spacng", "did you mean 'spacing'"]),
        (pre0(spacing=[1, 0, 1]), [U, "spacing", "positive"]),
        (pre0(spacing=[1, 1, 1, 1]), [U, "spacing"]),
        (pre0(roi=[96, 96.5, 96]), [U, "roi"]),
        (pre0(roi=[96, 96]), [U, "disagrees", "spatial_dims -> 3D", "preprocessing.roi -> 2D"]),
        (pre0(overlap=1.0), [U, "overlap"]),
        (pre0(sw_batch_size=0), [U, "sw_batch_size"]),
        (pre0(orientation="RRS"), [U, "orientation", "RRS"]),
        (pre0(orientation="RAX"), [U, "orientation"]),
        (pre0(in_channels=3), [U, "in_channels is 3", "args.in_channels is 1"]),
        (inten(kind="zscor"), [U, "zscor", "did you mean 'zscore'"]),
        (inten(kind="ct"), [U, "clip"]),
        (inten(kind="ct", clip=[250, -175]), [U, "lo < hi"]),
        (inten(kind="ct", clip=[-1, 1], mean=3), [U, "both 'mean' and 'std'"]),
        (inten(kind="ct", clip=[-1, 1], mean=3, std=0), [U, "std must be positive"]),
        (inten(kind="zscore", clip=[-1, 1]), [U, "'clip'", "kind zscore"]),
        (inten(kind="percentile", lower=99, upper=1), [U, "lower < upper"]),
        (inten(kind="range", a_min=0), [U, "a_max"]),
        (inten(kind="zscore", nonzero="yes"), [U, "nonzero"]),
        (lambda d: d.update(model=[]), ["bank.yaml", "unknown key 'model'", "mean 'models'"]),
        (lambda d: d.update(models=[]), ["bank.yaml", "non-empty list"]),
        (lambda d: d["models"].append("just a string"), ["bank.yaml", "entry 3", "mapping"]),
    ],
)
def test_validation_errors(bank_dir, change, expected):
    message = errors_of(bank_dir, mutate(change))
    for fragment in expected:
        assert fragment in message, (fragment, message)


def test_torchscript_entry_file_checks(bank_dir):
    data = {"models": [{"name": "ts", "torchscript": "model_ts.pt"}]}
    with pytest.raises(UserError, match=r"ts.*model_ts\.pt.*does not exist"):
        parse_bank(data, bank_dir)
    (bank_dir / "model_ts.pt").write_bytes(b"x")
    e = parse_bank(data, bank_dir)[0]
    assert e.kind == "torchscript" and e.torchscript == (bank_dir / "model_ts.pt").resolve()
    data["models"][0]["args"] = {"in_channels": 1}
    with pytest.raises(UserError, match="'args' is not used for a 'torchscript'"):
        parse_bank(data, bank_dir)


def test_bank_file_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_bank(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [\n  - name: x\n   bad indent: {")
    with pytest.raises(UserError, match=r"bad\.yaml.*not valid YAML"):
        load_bank(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- name: x\n")
    with pytest.raises(UserError, match=r"list\.yaml.*'models'"):
        load_bank(lst)


def test_entries_are_frozen(bank_dir):
    e = parse_bank(base_bank(), bank_dir)[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.seed = 5  # type: ignore[misc]
    assert isinstance(e, BankEntry)


# ------------------------------------------------------------------------------------------------
# fingerprint


def test_fingerprint_is_deterministic_and_content_based(bank_dir, tmp_path):
    e = parse_bank(base_bank(), bank_dir)[0]
    fp = fingerprint(e)
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert fingerprint(parse_bank(base_bank(), bank_dir)[0]) == fp

    # the name and the checkpoint's location/mtime do not matter, its content does
    data = base_bank()
    data["models"][0]["name"] = "renamed"
    assert fingerprint(parse_bank(data, bank_dir)[0]) == fp
    ckpt = bank_dir / "ckpts" / "unet.pt"
    st = ckpt.stat()
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert fingerprint(e) == fp
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "ckpts").mkdir()
    (moved / "ckpts" / "unet.pt").write_bytes(ckpt.read_bytes())
    assert fingerprint(parse_bank(base_bank(), moved)[0]) == fp
    torch.save({"w": torch.ones(1)}, ckpt)  # new content
    assert fingerprint(parse_bank(base_bank(), bank_dir)[0]) != fp


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m["args"].update(channels=[4, 8, 32]),
        lambda m: m.update(seed=4),
        lambda m: m.update(layers="auto"),
        lambda m: m["preprocessing"].update(spacing=[1, 1, 1]),
        lambda m: m["preprocessing"]["intensity"].update(clip=[-100, 250]),
        lambda m: m["preprocessing"].update(roi=[64, 64, 64]),
        lambda m: m.update(checkpoint={"path": "ckpts/unet.pt", "key": "model"}),
        lambda m: m.update(network="monai.networks.nets.BasicUNet"),
    ],
)
def test_fingerprint_changes_with_what_changes_features(bank_dir, change):
    fp = fingerprint(parse_bank(base_bank(), bank_dir)[0])
    data = base_bank()
    change(data["models"][0])
    assert fingerprint(parse_bank(data, bank_dir)[0]) != fp
