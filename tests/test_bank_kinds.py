"""Bank kinds are one interface: a new kind is one class and one ``register`` call.

A tiny kind is defined and registered here, in the test, and a bank mixing it with a MONAI
``network`` entry is validated, loaded, hooked, fingerprinted, checked and ranked on real data,
with no change anywhere else in ccfv.
"""

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from conftest import SHARED

from ccfv.bank import (
    KINDS,
    LayerSpec,
    ModelKind,
    entry_files,
    fingerprint,
    kind_of,
    load_bank,
    load_model,
    resolve_layers,
)
from ccfv.bank.check import check_entries
from ccfv.bank.kinds import registered
from ccfv.bank.kinds.common import load_built, parse_built_entry, seeded
from ccfv.bank.preprocess import describe_preprocessing
from ccfv.errors import UserError
from ccfv.rank import rank

DATA = SHARED / "data"


class Tiny(torch.nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv1 = torch.nn.Conv3d(1, width, 3, padding=1)
        self.conv2 = torch.nn.Conv3d(width, 2, 1)

    def forward(self, x):
        return self.conv2(torch.relu(self.conv1(x)))


class TinyNet(ModelKind):
    """``tinynet: <width>``: a two-layer 3D conv net of that width (the whole new kind)."""

    key = "tinynet"
    key_hint = "the width of a two-layer 3D conv net"

    def parse(self, raw: Mapping[str, Any], ctx) -> Any:
        width = raw[self.key]
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise UserError(
                f"{ctx.where}: 'tinynet' must be a positive integer (the width), got {width!r}"
            )
        return parse_built_entry(raw, ctx, self.key, str(width))

    def load(self, entry):
        return load_built(entry, seeded(entry, lambda: Tiny(int(entry.location))))

    def fingerprint(self, entry) -> dict[str, Any]:
        return {"tinynet": int(entry.location)}

    def auto_layers(self, model, entry):
        return [LayerSpec("conv1", "output"), LayerSpec("conv2", "input")]


PRE = {
    "orientation": "RAS",
    "spacing": [3.0, 3.0, 6.0],
    "intensity": {"kind": "zscore"},
    "roi": [48, 48, 16],
}
UNET = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [4, 8, 16],
    "strides": [2, 2],
    "num_res_units": 1,
}


def write_bank(path, models):
    path.write_text(yaml.safe_dump({"models": models}, sort_keys=False))
    return path


def test_registered_kind_builds_and_ranks_a_bank(tmp_path):
    models = [
        {"name": "tiny", "tinynet": 4, "seed": 3, "preprocessing": PRE},
        {
            "name": "unet",
            "network": "monai.networks.nets.UNet",
            "args": UNET,
            "seed": 1,
            "preprocessing": PRE,
        },
    ]
    bank = write_bank(tmp_path / "bank.yaml", models)
    with registered(TinyNet()):
        tiny, unet = load_bank(bank)
        assert (tiny.kind, unet.kind) == ("tinynet", "network")
        assert tiny.tinynet == "4" and unet.tinynet is None and tiny.network is None
        assert isinstance(kind_of(tiny), TinyNet)

        model, report = load_model(tiny)
        assert report.initialisation == "seeded-random" and report.seed == 3
        torch.manual_seed(3)
        reference = Tiny(4)
        assert all(
            torch.equal(a, b)
            for a, b in zip(model.state_dict().values(), reference.state_dict().values())
        )
        assert [s.key for s in resolve_layers(model, tiny)] == ["conv1:output", "conv2:input"]
        assert describe_preprocessing(tiny).startswith("preprocessing {orientation: RAS")
        assert entry_files(tiny) == []

        wider = write_bank(tmp_path / "wider.yaml", [{**models[0], "tinynet": 8}])
        assert fingerprint(tiny) == fingerprint(load_bank(bank)[0])
        assert fingerprint(tiny) != fingerprint(load_bank(wider)[0])

        rows = check_entries([tiny, unet])
        assert [(r.name, r.source_format, r.ok) for r in rows] == [
            ("tiny", "tinynet", True),
            ("unet", "network", True),
        ]
        assert rows[0].layers == [
            ("conv1:output", (1, 4, 48, 48, 16)),
            ("conv2:input", (1, 4, 48, 48, 16)),
        ]

        result = rank(
            bank,
            DATA / "chaos_t2spir_abdomen3d",
            methods=["ccfv"],
            cases=2,
            seed=0,
            cache_dir=tmp_path / "cache",
            bootstrap=0,
            progress=False,
            log=lambda *_: None,
        )
        assert not result.failures
        assert set(result.ranking()) == {"tiny", "unet"}
        assert all(np.isfinite(result.scores[n]["ccfv"]) for n in ("tiny", "unet"))

        with pytest.raises(
            UserError,
            match=r"bank\.yaml: model 'tiny': 'tinynet' must be a "
            r"positive integer.*got 0",
        ):
            load_bank(write_bank(tmp_path / "bank.yaml", [{**models[0], "tinynet": 0}]))
        with pytest.raises(
            UserError,
            match=r"exactly one of .*'tinynet' \(the width of a "
            r"two-layer 3D conv net\); got network and tinynet",
        ):
            load_bank(write_bank(tmp_path / "bank.yaml", [{**models[0], "network": "UNet"}]))
    assert "tinynet" not in KINDS
    with pytest.raises(UserError, match="unknown key 'tinynet'"):
        load_bank(write_bank(tmp_path / "bank.yaml", models))


def test_registry_holds_exactly_the_five_kinds():
    assert list(KINDS) == ["network", "factory", "torchscript", "nnunet", "bundle"]
    assert [k for k, v in KINDS.items() if v.owns_entry] == ["nnunet", "bundle"]


def test_registering_a_key_twice_or_a_common_key_is_refused():
    from ccfv.bank.kinds import register

    class Again(TinyNet):
        key = "network"

    class Seed(TinyNet):
        key = "seed"

    with pytest.raises(ValueError, match="registered already"):
        register(Again())
    with pytest.raises(ValueError, match="key of every bank entry"):
        register(Seed())


def test_entries_pickle_and_read_their_kind_key(tmp_path):
    import pickle

    from ccfv.demo.bank import bank_dict

    (entry, *_) = load_bank(write_bank(tmp_path / "demo.yaml", bank_dict()["models"]))
    again = pickle.loads(pickle.dumps(entry))
    assert again == entry and fingerprint(again) == fingerprint(entry)
    assert again.network == "monai.networks.nets.UNet" and again.bundle is None
    with pytest.raises(AttributeError, match="netwrk"):
        _ = entry.netwrk
