"""The feature-pass seam: settings checked once, backends behind one interface, logging.

``ccfv.rank`` scores whatever a :class:`ccfv.backends.FeatureBackend` hands back and never
imports the Ray backend (checked in a fresh interpreter and in the source); the settings of a
run refuse bad values when they are built; messages go to the ``ccfv.rank`` logger, or to a
``log`` callable instead.
"""

import ast
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import test_rank_e2e as e2e

from ccfv.backends import FeatureBackend, FeaturePasses, LocalBackend
from ccfv.errors import UserError
from ccfv.passes import ModelFeatures
from ccfv.rank import RankResult, RankSettings, rank

SRC = Path(__file__).resolve().parents[1] / "src"
generated_data = e2e.generated_data


def test_importing_rank_imports_no_ray_code():
    """A fresh interpreter: ``import ccfv.rank`` (and the CLI) loads neither the Ray backend
    module nor ray; importing the backend module itself still does not import ray."""
    code = (
        "import sys\n"
        "import ccfv.rank, ccfv.cli\n"
        "bad = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')\n"
        "             or m == 'ccfv.backends.ray')\n"
        "assert not bad, bad\n"
        "import ccfv.backends.ray\n"
        "assert 'ray' not in sys.modules\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_rank_and_the_passes_name_no_ray_module():
    """Not even lazily: rank.py, passes.py and the local backend import nothing of Ray, and
    the Ray backend imports nothing of rank.py (the former cycle rank <-> ray_backend)."""
    for name in (
        "rank.py",
        "passes.py",
        "backends/local.py",
        "backends/base.py",
        "backends/__init__.py",
    ):
        imported = _imported_modules(SRC / "ccfv" / name)
        assert not {
            m
            for m in imported
            if m == "ray" or m.startswith("ray.") or m.startswith("ccfv.backends.ray")
        }, name
    assert not {
        m
        for m in _imported_modules(SRC / "ccfv" / "backends" / "ray.py")
        if m.startswith("ccfv.rank") or m.startswith("ccfv.cli")
    }


def test_both_backends_implement_the_interface():
    assert isinstance(LocalBackend(), FeatureBackend)
    assert LocalBackend().check_device(None) == "cpu"
    with pytest.raises(UserError, match="--device 'gpu' is not a torch device"):
        LocalBackend().check_device("gpu")
    pytest.importorskip("ray")
    from ccfv.backends.ray import RayBackend

    backend = RayBackend(address="10.0.0.5:6379", retries=2)
    assert isinstance(backend, FeatureBackend) and backend.name == "ray"
    assert backend.check_device(None) == "auto" and backend.check_device("cuda") == "cuda"
    with pytest.raises(UserError, match="--device cuda:1 with --backend ray"):
        backend.check_device("cuda:1")
    with pytest.raises(UserError, match="--retries -1: give 0 or more"):
        RayBackend(retries=-1)


def test_settings_check_every_value_once_when_built():
    settings = RankSettings(
        methods="ccfv,ccfv-paper[distance=kl; s=2],logme",
        cases=3,
        counts=[10, 20],
        cache_dir="somewhere",
    )
    assert settings.methods == ("ccfv", "ccfv-paper[distance=kl; s=2]", "logme")
    assert settings.counts == (10, 20) and settings.cache_dir == Path("somewhere")
    assert RankSettings.from_options({"seed": 3}, settings).methods == settings.methods
    bad = [
        ({"methods": ""}, "names no method"),
        ({"methods": ["nope"]}, "unknown method 'nope'"),
        ({"cases": 0}, "--cases 0"),
        ({"seed": -1}, "--seed -1"),
        ({"budget": "some"}, "--budget 'some': give fixed or proportional"),
        ({"counts": (100, 0)}, "integers >= 1"),
        ({"bootstrap": -5}, "--bootstrap -5"),
        ({"cases": 1, "bootstrap": 10}, "--cases 1 with --bootstrap 10"),
        ({"level": 1.5}, "between 0 and 1"),
    ]
    for options, text in bad:
        with pytest.raises(UserError, match=text.replace("[", r"\[")):
            RankSettings(**options)
    with pytest.raises(UserError, match="unknown rank option.*address.*RayBackend"):
        RankSettings.from_options({"address": "x:1"})


def test_rank_refuses_a_backend_it_cannot_use(tmp_path, generated_data):
    bank = e2e.write_bank(tmp_path / "bank.yaml", [e2e.unet_entry("m", roi=(32, 32, 16))])
    with pytest.raises(UserError, match="backend 'ray' given by name.*RayBackend"):
        rank(bank, generated_data, backend="ray")
    with pytest.raises(UserError, match="settings is a list, not a RankSettings"):
        rank(bank, generated_data, ["ccfv"])


class Reversed:
    """A backend of its own (one file, the two methods of the interface): the local passes,
    run last entry first, handed back in bank order."""

    name = "reversed"

    def check_device(self, device):
        return LocalBackend().check_device(device)

    def run(self, target, device):
        local = LocalBackend().run(target, device)
        entries = target.entries
        target.entries = entries[::-1]
        try:
            done = {got.model: got for got in local}
        finally:
            target.entries = entries
        return ListedPasses([done[e.name] for e in entries], device)


class ListedPasses(list):
    def __init__(self, items, device):
        super().__init__(items)
        self.device = device

    def close(self):
        pass


def test_any_backend_gives_the_local_scores_and_logging(tmp_path, generated_data, caplog):
    """A backend written in the test gives exactly the local scores; the run's messages go
    to the ``ccfv.rank`` logger (one line per model), or only to ``log`` when given."""
    bank = e2e.write_bank(
        tmp_path / "bank.yaml",
        [
            e2e.unet_entry("a", seed=0, roi=(32, 32, 16)),
            e2e.unet_entry("bad", seed=0, roi=(32, 32, 16), args={**e2e.UNET3D, "in_channels": 2}),
            e2e.unet_entry("b", seed=1, roi=(32, 32, 16)),
        ],
    )
    settings = RankSettings(
        methods=("ccfv", "logme"), bootstrap=5, progress=False, cache_dir=tmp_path / "cache"
    )
    with caplog.at_level(logging.INFO, logger="ccfv"):
        local = rank(bank, generated_data, settings)
    assert isinstance(local, RankResult) and set(local.failures) == {"bad"}
    lines = [r.getMessage() for r in caplog.records if r.name == "ccfv.rank"]
    assert [line.split(":")[0] for line in lines] == ["a", "bad", "b"]
    assert "bad: FAILED: RuntimeError" in lines[1]
    assert [r.levelno for r in caplog.records if r.name == "ccfv.rank"] == [
        logging.INFO,
        logging.WARNING,
        logging.INFO,
    ]
    caplog.clear()
    said: list[str] = []
    other = rank(
        bank,
        generated_data,
        settings,
        backend=Reversed(),
        cache_dir=tmp_path / "other",
        log=said.append,
    )
    assert isinstance(Reversed(), FeatureBackend)
    assert not [r for r in caplog.records if r.name == "ccfv.rank"]
    assert [line.split(":")[0] for line in said] == ["a", "bad", "b"]
    assert other.scores == local.scores and set(other.failures) == {"bad"}
    for model in ("a", "b"):
        assert all(np.isfinite(v) for v in other.scores[model].values())
    assert other.bootstrap.to_dict() == local.bootstrap.to_dict()
    assert other.details["backend"] == "reversed" and "backend" not in local.details
    assert list(local.details) == [
        "data",
        "bank",
        "cases",
        "classes",
        "label_rule",
        "seed",
        "budget",
        "counts",
        "device",
        "per_model",
        "dropped",
        "bootstrap",
    ]


def test_a_failed_pass_is_a_value_not_an_exception():
    got = ModelFeatures("m", error=UserError("no"))
    assert not got.ok and ModelFeatures("m", {"l": []}).ok
    assert isinstance(ListedPasses([], "cpu"), FeaturePasses)


checkpoint = e2e.checkpoint  # a seeded UNet's state dict


def test_cli_prints_run_lines_on_stdout_and_library_warnings_on_stderr(
    tmp_path, generated_data, checkpoint, capsys
):
    """The CLI's logging: rank's lines on stdout as before (print), the bank's INFO lines
    (a checkpoint that fits) not shown, its warnings (no checkpoint) on stderr, as Python
    shows a library's warnings without a handler; nothing is left configured afterwards."""
    from ccfv.cli import main

    bank = e2e.write_bank(
        tmp_path / "bank.yaml",
        [
            e2e.unet_entry("loaded", checkpoint=str(checkpoint), roi=(32, 32, 16)),
            e2e.unet_entry("seeded", seed=3, roi=(32, 32, 16)),
        ],
    )
    before = logging.getLogger("ccfv").handlers[:]
    rc = main(
        [
            "rank",
            "--bank",
            str(bank),
            "--data",
            str(generated_data),
            "--bootstrap",
            "0",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--out",
            str(tmp_path / "out"),
            "--quiet",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    out_lines = captured.out.splitlines()
    assert any(line.startswith("loaded: ccfv ") for line in out_lines)
    assert any(line.startswith("seeded: ccfv ") for line in out_lines)
    assert "parameter tensors" not in captured.out + captured.err  # the checkpoint's INFO line
    assert "seeded: no checkpoint, random initialisation with seed 3" in captured.err
    assert logging.getLogger("ccfv").handlers == before
