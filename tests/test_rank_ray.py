"""`ccfv rank --backend ray`: feature passes as Ray tasks on a real local Ray cluster.

The cluster tests start Ray with 2 CPUs (``ray.init(num_cpus=2)``) once for the module and
check that the Ray backend gives exactly the local backend's scores on a small real bank (the
demo's pre-trained MONAI networks on its template target), that a task whose worker dies
mid-run is retried, and that a task that always dies is reported for its (model, dataset)
while the other models are scored. The task body (path checks, cache key) and the message
without Ray run without a cluster.
"""

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import test_rank_e2e as e2e
import torch
from conftest import NO_TORCHVISION

from ccfv.bank import load_bank
from ccfv.cli import main
from ccfv.data import find_cases
from ccfv.data.fingerprint import data_fingerprint
from ccfv.errors import UserError
from ccfv.extract import FeatureCache
from ccfv.rank import rank

HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(
    not HAVE_RAY,
    reason="ray is not installed: pip install 'ccfv[ray]' to run the Ray backend tests",
)
TESTS = Path(__file__).resolve().parent
generated_data = e2e.generated_data  # four small 3D cases, two foreground classes
QUIET = {"progress": False, "log": lambda *_: None}


def ray_backend(**options):
    """The Ray backend (imported here: the test module also runs where Ray is missing)."""
    from ccfv.backends.ray import RayBackend

    return RayBackend(**options)


@pytest.fixture(scope="module")
def ray_cluster():
    """A real local Ray instance with 2 CPUs; its workers import this folder's factories."""
    import ray

    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), old) if p)
    # "local": a new instance even when this machine runs (or ran) a `ray start` cluster
    # workers on one torch thread whatever this shell's OMP_NUM_THREADS (see one_thread)
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
    )
    try:
        yield ray
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


@pytest.fixture
def one_thread():
    """Torch on one thread in this process, as in the Ray workers (OMP_NUM_THREADS=1), so
    that a local feature pass sums in the same order as a task's."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def demo_bank(tmp_path, names):
    """The demo's target and a bank file of the named demo models (real pre-trained
    checkpoints, absolute paths)."""
    from ccfv.demo import prepare
    from ccfv.demo.bank import bank_dict

    _, data = prepare(tmp_path / "demo")
    models = [m for m in bank_dict()["models"] if m["name"] in names]
    assert [m["name"] for m in models] == names
    return e2e.write_bank(tmp_path / "bank.yaml", models), data


@needs_ray
def test_ray_scores_equal_local_scores(tmp_path, ray_cluster, one_thread):
    names = ["unet_brain_mask", "segresnet_white_matter", "unet_no_pretrain"]
    bank, data = demo_bank(tmp_path, names)
    methods = ["ccfv", "ccfv-official", "logme", "leep", "nce"]
    settings = dict(methods=methods, cases=4, seed=0, bootstrap=10, **QUIET)
    local = rank(bank, data, cache_dir=tmp_path / "local", **settings)
    remote = rank(bank, data, cache_dir=tmp_path / "ray", backend=ray_backend(), **settings)
    assert not local.failures and not remote.failures
    assert list(remote.scores) == names  # bank order, as the local backend
    for model in names:
        for method in methods:
            assert np.isfinite(local.scores[model][method])
            assert remote.scores[model][method] == local.scores[model][method], (model, method)
    assert remote.bootstrap.to_dict() == local.bootstrap.to_dict()
    assert remote.details["backend"] == "ray" and remote.details["device"] == "cpu"
    assert all("Ray worker" in text for text in remote.details["per_model"].values())
    # the tasks wrote the very files a local run writes, and a local run reads them
    files = sorted(p.name for p in (tmp_path / "local").glob("*.npz"))
    assert len(files) == 3 and sorted(p.name for p in (tmp_path / "ray").glob("*.npz")) == files
    again = rank(bank, data, cache_dir=tmp_path / "ray", **settings)
    assert again.scores == local.scores
    assert all(text.endswith("features from cache") for text in again.details["per_model"].values())


@needs_ray
def test_killed_task_is_retried_and_a_dead_one_is_reported(tmp_path, ray_cluster, generated_data):
    roi = (32, 32, 16)
    marker, attempts = tmp_path / "died-once", tmp_path / "attempts"
    bank = e2e.write_bank(
        tmp_path / "bank.yaml",
        [
            e2e.unet_entry("plain", seed=2, roi=roi),
            {
                **e2e.unet_entry(
                    "crash_once",
                    seed=2,
                    roi=roi,
                    args={
                        **e2e.UNET3D,
                        "marker": str(marker),
                        "cache_dir": str(tmp_path / "cache"),
                        "crash_at": 6,
                    },
                ),  # 4 forwards a case: it dies in its second case
                "network": None,
                "factory": "ray_factories:unet_crash_once",
            },
            {
                **e2e.unet_entry(
                    "always_crash", roi=roi, args={**e2e.UNET3D, "attempts": str(attempts)}
                ),
                "network": None,
                "factory": "ray_factories:unet_always_crash",
            },
        ],
    )
    result = rank(
        bank,
        generated_data,
        methods=["ccfv", "ccfv-official"],
        bootstrap=0,
        cache_dir=tmp_path / "cache",
        backend=ray_backend(retries=1),
        **QUIET,
    )
    # the first attempt of crash_once died in its 6th forward pass, in its second case with
    # the first one cached, and left the marker; Ray ran it again, the retry resumed from the
    # cached case, and the features are those of the same UNet run in one go
    died = json.loads(marker.read_text())
    (sidecar,) = [
        p
        for p in (tmp_path / "cache").glob("*.json")
        if json.loads(p.read_text())["model"] == "crash_once"
    ]
    assert died["parts"][sidecar.stem + ".cases"] == 1
    assert set(result.failures) == {"always_crash"}
    assert result.scores["crash_once"] == result.scores["plain"]
    assert all(np.isfinite(v) for v in result.scores["plain"].values())
    # always_crash died on its first attempt and on its one retry, and is named with its data
    assert len(list(attempts.iterdir())) == 2
    assert result.scores["always_crash"] == {"ccfv": None, "ccfv-official": None}
    message = result.failures["always_crash"]
    assert f"(always_crash, {generated_data})" in message and "after 1 retries" in message
    assert "WorkerCrashedError" in message or "died" in message


@needs_ray
def test_cli_ray_backend(tmp_path, ray_cluster, generated_data, capsys):
    wrong = tmp_path / "wrong.pt"
    torch.save({"state_dict": {"conv.weight": torch.zeros(3, 3)}}, wrong)
    bank = e2e.write_bank(
        tmp_path / "bank.yaml",
        [
            e2e.unet_entry("good", roi=(32, 32, 16)),
            e2e.unet_entry("bad", checkpoint=str(wrong), roi=(32, 32, 16)),
        ],
    )
    out = tmp_path / "out"
    rc = main(
        [
            "rank",
            "--bank",
            str(bank),
            "--data",
            str(generated_data),
            "--backend",
            "ray",
            "--bootstrap",
            "0",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 1  # one model failed: reported, the other scored and written
    captured = capsys.readouterr()
    assert "1 model(s) failed: bad" in captured.err
    assert "ray: 2 feature pass(es) submitted" in captured.out
    rows = {r["model"]: r["ccfv"] for r in csv.DictReader(open(out / "scores.csv"))}
    assert np.isfinite(float(rows["good"])) and rows["bad"] in ("", "None", "nan")
    report = (out / "report.md").read_text()
    assert "wrong.pt" in report and f"(bad, {generated_data})" in report


def test_address_needs_the_ray_backend(tmp_path, generated_data, capsys):
    bank = e2e.write_bank(tmp_path / "bank.yaml", [e2e.unet_entry("m", roi=(32, 32, 16))])
    rc = main(
        ["rank", "--bank", str(bank), "--data", str(generated_data), "--address", "10.0.0.5:6379"]
    )
    assert rc == 2 and "--address 10.0.0.5:6379 is for --backend ray" in capsys.readouterr().err
    with pytest.raises(UserError, match="backend 'spark' is not one of local, ray"):
        rank(bank, generated_data, backend="spark", **QUIET)


def test_without_ray_a_message_and_no_import(tmp_path, generated_data):
    """With ray not importable: `import ccfv` and the CLI never import it, and
    `--backend ray` says how to install it (exit code 2, no traceback)."""
    bank = e2e.write_bank(tmp_path / "bank.yaml", [e2e.unet_entry("m", roi=(32, 32, 16))])
    blocked = NO_TORCHVISION.replace('("torchvision", "timm")', '("torchvision", "timm", "ray")')
    code = (
        blocked
        + f"""
import ccfv, ccfv.rank, ccfv.cli, ccfv.backends.ray
assert "ray" not in sys.modules
from ccfv.cli import main
sys.exit(main(["rank", "--bank", {str(bank)!r}, "--data", {str(generated_data)!r},
               "--backend", "ray", "--cache-dir", {str(tmp_path / "cache")!r}]))
"""
    )
    assert '"ray")' in code
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "--backend ray needs Ray, which is not installed" in done.stderr
    assert "pip install 'ccfv[ray]'" in done.stderr and "Traceback" not in done.stderr


def test_task_body_writes_the_local_cache_and_names_unseen_paths(
    tmp_path, generated_data, checkpoint
):
    """The function each Ray task runs, called here: it writes the key a local run reads,
    and a path it cannot see (or data that changed) is an error naming it."""
    bank = e2e.write_bank(
        tmp_path / "bank.yaml",
        [e2e.unet_entry("pretrained", checkpoint=str(checkpoint), roi=(32, 32, 16))],
    )
    (entry,) = load_bank(bank)
    dataset = find_cases(generated_data)
    cases = list(dataset.cases)
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()

    def spec(**changes):
        args = dict(
            bank=bank,
            data=generated_data,
            cases=None,
            seed=0,
            case_ids=[c.case_id for c in cases],
            data_fp=data_fingerprint(cases, dataset.labels),
            budget="fixed",
            counts=(100, 200, 400),
            cache_dir=cache_dir,
            device="cpu",
            autocast=False,
        )
        return task_spec(entry, **{**args, **changes})

    from ccfv.backends.ray import feature_pass, task_spec

    done = feature_pass(spec())
    assert not done["hit"] and done["layers"] and "checkpoint" in done["report"]
    assert sorted(p.stem for p in cache_dir.glob("*.npz")) == [done["key"]]
    local = rank(bank, generated_data, methods=["ccfv"], bootstrap=0, cache_dir=cache_dir, **QUIET)
    assert local.details["per_model"]["pretrained"].endswith("features from cache")
    assert feature_pass(spec())["hit"]
    assert FeatureCache(cache_dir).get(done["key"]) is not None

    with pytest.raises(UserError, match="cannot see the feature cache folder .*missing"):
        feature_pass(spec(cache_dir=tmp_path / "missing"))
    with pytest.raises(UserError, match="other files under .* than the driver"):
        feature_pass(spec(data_fp="0" * 16))
    moved = spec()
    checkpoint.rename(tmp_path / "elsewhere.pt")
    with pytest.raises(UserError) as error:
        feature_pass(moved)
    assert f"cannot see the checkpoint of model 'pretrained' {checkpoint}" in str(error.value)
    assert "every node of the Ray cluster sees under the same path" in str(error.value)


checkpoint = e2e.checkpoint  # a seeded UNet's state dict under "state_dict", "module." keys


@needs_ray
def test_ray_failures_are_said_as_locally(tmp_path, ray_cluster, generated_data):
    """A window not divisible by the network's stride and an unexpected error in a Ray task:
    the same one-line causes as a local run, the worker's traceback in the failure log, and
    the good model scored."""
    args = {**e2e.UNET3D, "channels": [4, 8, 16]}
    bank = e2e.write_bank(
        tmp_path / "bank.yaml",
        [
            e2e.unet_entry("good", args=args, roi=(32, 32, 16), seed=0),
            e2e.unet_entry("odd", args=args, roi=(18, 18, 10), seed=0),
            e2e.unet_entry("two", args={**args, "in_channels": 2}, roi=(32, 32, 16), seed=0),
        ],
    )
    log = tmp_path / "out" / "failures.log"
    result = rank(
        bank,
        generated_data,
        bootstrap=0,
        cache_dir=tmp_path / "cache",
        backend=ray_backend(retries=0),
        failure_log=log,
        **QUIET,
    )
    assert set(result.failures) == {"odd", "two"}
    assert np.isfinite(result.scores["good"]["ccfv"])
    assert (
        "UNet with strides 2,2 needs a window divisible by 4; roi 18x18x10 is not: use 20x20x12"
    ) in result.failures["odd"]
    assert "RuntimeError" in result.failures["two"] and str(log) in result.failures["two"]
    text = log.read_text()
    assert "=== two" in text and "=== odd" not in text
    assert 'File "' in text and "to have 2 channels" in text and "\x1b[" not in text
