"""Fingerprints of every bank kind, pinned to the values main's code gave before the kinds were
split into ``ccfv.bank.kinds`` (issue 15 item 1): cached features stay valid.

Every file the entries read is written here deterministically (seeded weights, fixed text), so
a fingerprint changes only when what :func:`ccfv.bank.fingerprint` covers changes. The MONAI
and nnunetv2 versions are part of ``network`` / ``bundle`` / ``nnunet`` fingerprints; the
values below hold for the versions in ``VERSIONS`` (the test is skipped under others, where
the values are expected to differ).
"""

import shutil
import textwrap
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
import yaml

from ccfv.bank import fingerprint, load_bank
from ccfv.demo.bank import bank_dict

#: ``torch.jit.save(torch.jit.script(_Scripted()), path)`` after ``torch.manual_seed(7)``
SCRIPTED = Path(__file__).parent / "fixtures" / "fingerprint_model.ts"
VERSIONS = {"monai": "1.6.1", "nnunetv2": "2.8.1", "torch": "2.13.0+cpu"}

#: name -> fingerprint, computed with main's code (commit d6e4e2d) before the refactor
EXPECTED = {
    "unet_brain_mask": "bf1d74e2f4b0581b24d675d7c5012cc348425feda6827bec5abaebf6cfa0b74e",
    "unet_white_matter": "8a85db6c3de6df86e5000bbe7dd75ffb9026536a3c0fb292d5a51905e3772456",
    "unet_intensity_bands": "2704cb654d0a03caee4183798745cb0c8ac8d717a5adf1d8b04709ae4b4276ff",
    "segresnet_brain_mask": "29b3eb44ffd08cbf268670f60b9db278c44101660e70da15b5f5c9ab57432d72",
    "segresnet_white_matter": "f328387fe47f70e7b0e4d7da6570ac3c56f683eab09d7f70d1e7979abbad4416",
    "unet_no_pretrain": "41fb2628416259571427784eb3a4ebb9957d5febb7e095708d2ffc9670b1e1d6",
    "segresnet_no_pretrain": "3f071784ce47bbc6f8c7c1bc7b035881e31ec4d49bcec92ff18382d1bbad8f76",
    "factory": "f672ef0a1f5b55e0489b7e3eceee461cc487dead1e6eebfa087dd9fd8e1a6e8e",
    "factory_seeded": "37d68d72edc08f9d4fc12e6a3dae08f1170fc02438d55323bc05f4c676e3fcf7",
    "torchscript": "8f49efb46b2b19f7f772cfbec8b68e4ed1eeda2464650181b5f0f59d160d29de",
    "bundle": "baae5a0fae2a6726f2b70b0173189712dd3a53301bac76135146ce9cf8bb0cee",
    "bundle_roi": "5466094ad697779ad8c746d5489838519b08b266a638b9179a946f485fcaacb5",
    "nnunet": "6f74191d1465a2d92786c11b4db5b10b977f878fedec1882dc81ae5918e789e7",
    "nnunet_layers": "49bc9e830ad4203bd746b9404cdf398cf73eb30c17c28610cff0bcd4e29687e2",
}

FACTORY_SOURCE = textwrap.dedent('''\
    """A tiny factory for the fingerprint test (its text is part of the fingerprint)."""
    import torch


    def make_net(width=4):
        torch.manual_seed(3)
        return torch.nn.Sequential(torch.nn.Conv3d(1, width, 3, padding=1),
                                   torch.nn.Conv3d(width, 2, 1))
    ''')


class _Scripted(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, 3, padding=1)

    def forward(self, x):
        return self.conv(x), x


def build_entries(tmp_path, monkeypatch):
    """Entries of every kind: the demo bank's, a factory, a TorchScript file, a bundle and an
    nnU-Net folder, all from files written here."""
    from test_bank_bundle import make_bundle
    from test_bank_nnunet import make_results_folder

    entries = {}
    demo = tmp_path / "demo.yaml"
    demo.write_text(yaml.safe_dump(bank_dict(), sort_keys=False))
    entries.update({e.name: e for e in load_bank(demo)})

    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "fp_factory_mod.py").write_text(FACTORY_SOURCE)
    monkeypatch.syspath_prepend(str(pkg))
    torch.manual_seed(5)
    ck = tmp_path / "factory.pt"
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.Conv3d(4, 2, 1))
    torch.save(net.state_dict(), ck)
    # torch.jit.save is not byte-reproducible: the TorchScript file is a committed fixture
    shutil.copy(SCRIPTED, tmp_path / "model.ts")
    make_bundle(tmp_path / "bundle")
    make_results_folder(
        tmp_path / "nnunet",
        config="3d_fullres",
        dims=3,
        patch=(16, 32, 32),
        spacing=(6.0, 2.0, 2.0),
        scheme="CTNormalization",
        labels=2,
        reader="SimpleITKIO",
        transpose=(0, 2, 1),
    )
    nn_folder = next((tmp_path / "nnunet").rglob("plans.json")).parent
    models = [
        {
            "name": "factory",
            "factory": "fp_factory_mod:make_net",
            "args": {"width": 4},
            "checkpoint": str(ck),
            "layers": ["0", "1:input"],
            "preprocessing": {
                "spacing": [1.5, 1.5, 2.0],
                "roi": [32, 32, 16],
                "intensity": {"kind": "ct", "clip": [-175, 250]},
            },
        },
        {"name": "factory_seeded", "factory": "fp_factory_mod:make_net", "seed": 4},
        {
            "name": "torchscript",
            "torchscript": "model.ts",
            "layers": ["outputs.1"],
            "preprocessing": {"roi": [16, 16, 16], "orientation": "LPS"},
        },
        {"name": "bundle", "bundle": "bundle"},
        {
            "name": "bundle_roi",
            "bundle": "bundle",
            "layers": ["model.2:input"],
            "preprocessing": {"roi": [48, 48, 48]},
        },
        {"name": "nnunet", "nnunet": str(nn_folder)},
        {
            "name": "nnunet_layers",
            "nnunet": str(nn_folder),
            "layers": ["decoder.stages.0"],
            "preprocessing": {"overlap": 0.25},
        },
    ]
    bank = tmp_path / "bank.yaml"
    bank.write_text(yaml.safe_dump({"models": models}, sort_keys=False))
    entries.update({e.name: e for e in load_bank(bank)})
    return entries


def installed_versions():
    return {"monai": version("monai"), "nnunetv2": version("nnunetv2"), "torch": torch.__version__}


def test_fingerprints_equal_mains(tmp_path, monkeypatch):
    pytest.importorskip("nnunetv2")
    if installed_versions() != VERSIONS:
        pytest.skip(
            f"the pinned fingerprints are for {VERSIONS}, installed are {installed_versions()}"
        )
    entries = build_entries(tmp_path, monkeypatch)
    got = {name: fingerprint(entry) for name, entry in entries.items()}
    assert got == EXPECTED
