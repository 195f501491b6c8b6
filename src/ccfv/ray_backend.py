"""The Ray backend of ``ccfv rank``: every (model, dataset) feature pass as one Ray task.

:class:`RayFeaturePasses` submits one task per bank entry when it is built and, called with an
entry, waits for that task and hands back what :func:`ccfv.rank.extract_model` returns, read
from the feature cache. Scoring, the bootstrap and the reports stay on the driver
(:func:`ccfv.rank.rank`), so a Ray run gives the scores of a local run on the same features.

What travels to a task is a small dict of paths and settings (:func:`task_spec`), never a
checkpoint or a volume: the task (:func:`feature_pass`) reads the bank file, the checkpoints
and the data itself, from the paths the driver resolved, and writes the features into the
``--cache-dir`` as a local run would. Bank, checkpoints, data and cache must therefore be on
a file system every node sees under the same path; a task that cannot see one of them fails
with a message naming the path and the node, and is not retried.

Ray retries a task whose worker process or node died, and a task that failed with an
``OSError`` (a shared file system that hiccupped), up to ``retries`` times; a retried task
resumes from the cases already in the cache. A task that still fails is reported for its
(model, dataset) pair and the other models are scored.

``ray`` is imported here only, and only when a Ray run starts, so ``import ccfv`` never needs
it; without it, :func:`require_ray` raises a :class:`ccfv.errors.UserError` with the install
command.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ccfv.errors import UserError, first_line

__all__ = ["INSTALL", "RayFeaturePasses", "RemoteReport", "entry_paths", "feature_pass",
           "require_ray", "task_spec"]

#: How to install the optional dependency.
INSTALL = "pip install 'ccfv[ray]'"

SHARED_HINT = ("bank, checkpoints, data and --cache-dir must lie on a file system that every "
               "node of the Ray cluster sees under the same path")


def require_ray():
    """The ``ray`` module; a UserError with the install command when it is not installed."""
    try:
        import ray
    except ImportError as exc:
        raise UserError(f"--backend ray needs Ray, which is not installed here ({exc}): "
                        f"install it with {INSTALL} (or pip install ray), or use --backend "
                        "local") from None
    return ray


@dataclass(frozen=True)
class RemoteReport:
    """How a model's weights were set, as the task reported it (``LoadReport.summary()``),
    plus where and how long its feature pass ran."""

    text: str
    host: str
    seconds: float
    hit: bool

    def summary(self) -> str:
        """The task's LoadReport summary and where the features were made or found."""
        where = ("features found in the cache by" if self.hit
                 else f"feature pass of {self.seconds:.1f} s on")
        return f"{self.text}; {where} Ray worker {self.host}"


def entry_paths(entry) -> list[tuple[str, str]]:
    """The files and folders a bank entry reads: ``[(what, absolute path)]``."""
    from ccfv.bank import entry_files  # the checkpoint, then what the entry's kind reads

    return entry_files(entry)


def task_spec(entry, *, bank, data, cases, seed, case_ids, data_fp, budget, counts,
              cache_dir, device, autocast) -> dict:
    """The plain, small dict a task needs to redo one model's feature pass: absolute paths
    (resolved on the driver, so the worker's working folder does not matter) and settings."""
    return {"bank": str(Path(bank).resolve()), "model": entry.name,
            "data": str(Path(data).resolve()), "cases": cases, "seed": int(seed),
            "case_ids": [str(c) for c in case_ids], "data_fp": data_fp, "budget": budget,
            "counts": [int(c) for c in counts], "cache_dir": str(Path(cache_dir).resolve()),
            "device": device, "autocast": bool(autocast), "paths": entry_paths(entry)}


def _cannot_see(host: str, what: str, path: str) -> UserError:
    return UserError(f"Ray worker {host} cannot see the {what} {path}: {SHARED_HINT}")


def feature_pass(spec: dict) -> dict:
    """One model's feature pass on one dataset, as a Ray task runs it (callable without Ray).

    Checks that this process sees the bank file, the data folder, the feature cache (and can
    write to it) and every file of the entry, reads them from their paths, selects the cases
    as the driver did (same ids, same data fingerprint), and runs
    :func:`ccfv.rank.extract_model` into the feature cache of ``spec["cache_dir"]``.

    Returns ``{"key", "layers", "report", "hit", "seconds", "host"}``: the cache key of the
    feature set, the hooked layers (as text), the LoadReport summary, whether the features were
    already cached, the seconds the pass took and this host's name.

    Raises
    ------
    UserError
        A path is not visible here, the data here differs from the driver's, or the model
        fails as it would locally (bad checkpoint, ...).
    """
    from ccfv.bank import fingerprint, load_bank
    from ccfv.data import load_case
    from ccfv.extract import FeatureCache, cache_key
    from ccfv.rank import data_fingerprint, extract_model, plan_maker, target_cases

    host = socket.gethostname()
    needed = [("bank file", spec["bank"]), ("data folder", spec["data"]),
              ("feature cache folder (--cache-dir)", spec["cache_dir"]), *spec["paths"]]
    for what, path in needed:
        if not os.path.exists(path):
            raise _cannot_see(host, what, path)
    if not os.access(spec["cache_dir"], os.W_OK):
        raise UserError(f"Ray worker {host} cannot write to the feature cache folder "
                        f"{spec['cache_dir']}: give --cache-dir a shared folder that every "
                        "node may write to")
    start = time.perf_counter()
    entries = {entry.name: entry for entry in load_bank(spec["bank"])}
    if spec["model"] not in entries:
        raise UserError(f"Ray worker {host} reads no model '{spec['model']}' in "
                        f"{spec['bank']}: the bank file changed during the run, or the worker "
                        f"sees another file under that path; {SHARED_HINT}")
    entry = entries[spec["model"]]
    dataset, chosen = target_cases(spec["data"], spec["cases"], spec["seed"])
    data_fp = data_fingerprint(chosen, dataset.labels)
    if [c.case_id for c in chosen] != spec["case_ids"] or data_fp != spec["data_fp"]:
        raise UserError(f"Ray worker {host} sees other files under {spec['data']} than the "
                        f"driver (cases, file contents or class table differ): {SHARED_HINT}")
    loaded = [load_case(case, dataset.labels) for case in chosen]
    plan_for = plan_maker(loaded, spec["budget"], spec["counts"], spec["seed"])
    cache = FeatureCache(spec["cache_dir"])
    _, report, layers, hit = extract_model(entry, loaded, plan_for, cache, data_fp,
                                           spec["device"], spec["autocast"], progress=False,
                                           case_files={c.case_id: str(c.images[0])
                                                       for c in chosen})
    key = cache_key(fingerprint(entry), data_fp, plan_for(len(layers)).fingerprint())
    return {"key": key, "layers": [str(spec_) for spec_ in layers], "report": report.summary(),
            "hit": bool(hit), "seconds": time.perf_counter() - start, "host": host}


def task_device(ray, device: str) -> tuple[str, dict]:
    """The torch device a task uses and its Ray resource request, for ``device``.

    ``auto``: one GPU per task when the cluster has GPUs, else one CPU. ``cuda``: one GPU per
    task (an error when the cluster has none). Anything else (``cpu``): one CPU per task.
    """
    gpus = float(ray.cluster_resources().get("GPU", 0))
    if device == "auto":
        device = "cuda" if gpus > 0 else "cpu"
    if device.startswith("cuda"):
        if device != "cuda":
            raise UserError(f"--device {device} with --backend ray: give --device cuda, Ray "
                            "assigns each task its own GPU")
        if gpus <= 0:
            raise UserError("--device cuda with --backend ray, but the Ray cluster has no GPU: "
                            "add GPU nodes or use --device cpu")
        return "cuda", {"num_gpus": 1}
    return device, {"num_cpus": 1}


class RayFeaturePasses:
    """Every entry's feature pass as a Ray task, submitted when this object is built.

    Parameters
    ----------
    entries : the bank entries (parsed on the driver; only their names and paths travel).
    bank, data, cases, seed, case_ids, data_fp, budget, counts, cache_dir, autocast :
        as in :func:`ccfv.rank.rank`, with the driver's case selection and data fingerprint.
    device : ``auto`` (a GPU per task when the cluster has GPUs), ``cuda`` or ``cpu``.
    address : the Ray cluster to join (``ray.init(address=...)``); None: ``$RAY_ADDRESS``,
        else a cluster started with ``ray start`` on this machine, else a new local one. When
        Ray is already initialised in this process, that connection is used as it is.
    retries : how often Ray retries a task whose worker died or that raised ``OSError``.
    cache : the driver's FeatureCache over the same folder, from which results are read.

    Calling the object with an entry waits for its task and returns ``(features, report,
    layers, hit)`` as :func:`ccfv.rank.extract_model` does, or raises a UserError naming the
    (model, dataset) pair when the task failed. A Ray instance started here is shut down once
    every entry has been collected.
    """

    def __init__(self, entries: Sequence, *, bank, data, cases, seed, case_ids, data_fp,
                 budget, counts, cache_dir, device: str, autocast: bool, cache,
                 address: str | None = None, retries: int = 3, log: Callable = print):
        ray = require_ray()
        if retries < 0:
            raise UserError(f"retries must be 0 or more, got {retries}")
        self._ray, self._cache, self._data, self._retries = ray, cache, str(data), retries
        self._started = False
        if not ray.is_initialized():
            try:
                ray.init(address=address, log_to_driver=True)
            except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
                raise UserError(f"cannot start or join the Ray cluster "
                                f"{address or '(no --address: RAY_ADDRESS or a local one)'}: "
                                f"{first_line(exc)}; start one with `ray start --head` and "
                                "give the address it prints with --address; a cluster with "
                                "token authentication (the default of `ray start`) also needs "
                                "RAY_AUTH_MODE=token here and its token in ~/.ray/auth_token "
                                "or RAY_AUTH_TOKEN") from None
            self._started = True
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        self.device, resources = task_device(ray, device)
        remote = ray.remote(feature_pass).options(
            max_retries=retries, retry_exceptions=[OSError], **resources)
        self._pending = {}
        for entry in entries:
            spec = task_spec(entry, bank=bank, data=data, cases=cases, seed=seed,
                             case_ids=case_ids, data_fp=data_fp, budget=budget, counts=counts,
                             cache_dir=cache_dir, device=self.device, autocast=autocast)
            self._pending[entry.name] = remote.remote(spec)
        resources_text = ", ".join(f"{v:g} {k}" for k, v in sorted(
            ray.cluster_resources().items()) if k in ("CPU", "GPU"))
        log(f"ray: {len(self._pending)} feature pass(es) submitted to a cluster of "
            f"{resources_text} ({'1 GPU' if 'num_gpus' in resources else '1 CPU'} each); "
            f"features land in {Path(cache_dir).resolve()}")

    def __call__(self, entry):
        ray = self._ray
        pair = f"({entry.name}, {self._data})"
        try:
            out = ray.get(self._pending.pop(entry.name))
        except ray.exceptions.RayTaskError as error:
            cause = error.cause
            if isinstance(cause, UserError):
                raise UserError(f"feature pass of {pair} failed on the Ray cluster: "
                                f"{cause}") from None
            failure = UserError(f"feature pass of {pair} failed on the Ray cluster: "
                                f"{type(cause).__name__}: {first_line(cause)}")
            # the worker's traceback, for the run's failure log (ccfv.rank names the file)
            failure.traceback_text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # no colours
            raise failure from None
        except ray.exceptions.RayError as error:  # worker or node died, all retries spent
            raise UserError(f"feature pass of {pair} failed on the Ray cluster after "
                            f"{self._retries} retries: {type(error).__name__}: "
                            f"{first_line(error)}") from None
        finally:
            if not self._pending:
                self.close()
        features = self._cache.get(out["key"])
        if features is None:
            path = self._cache.path(out["key"])
            raise UserError(f"feature pass of {pair} finished on Ray worker {out['host']}, but "
                            f"its features {path} are not readable here: {SHARED_HINT}")
        report = RemoteReport(out["report"], out["host"], out["seconds"], out["hit"])
        return features, report, out["layers"], out["hit"]

    def close(self) -> None:
        """Cancel the tasks not collected yet and shut down a Ray instance started here."""
        for ref in self._pending.values():
            self._ray.cancel(ref, force=True)
        self._pending = {}
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
        self._started = False
