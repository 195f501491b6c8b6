"""The Ray feature backend (``ccfv rank --backend ray``): every (model, dataset) feature pass
as one Ray task.

:class:`RayBackend` implements :class:`ccfv.backends.FeatureBackend`: its :meth:`~RayBackend.run`
joins (or starts) a Ray cluster and submits one task per bank entry at once; iterating what it
returns waits for each task in bank order and hands back a :class:`ccfv.passes.ModelFeatures`
read from the feature cache. Scoring, the bootstrap and the reports stay on the driver
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

``ray`` is imported here only, and only when a Ray backend is built, so ``import ccfv`` (and
``import ccfv.rank``) never needs it; without it, :func:`require_ray` raises a
:class:`ccfv.errors.UserError` with the install command.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ccfv.backends.base import check_retries
from ccfv.errors import UserError, first_line
from ccfv.passes import ModelFeatures, extract_model, plan_maker, target_cases

if TYPE_CHECKING:
    from ccfv.passes import FeatureTarget

__all__ = [
    "INSTALL",
    "RayBackend",
    "RayPasses",
    "entry_paths",
    "feature_pass",
    "remote_summary",
    "require_ray",
    "task_device",
    "task_spec",
]

log = logging.getLogger(__name__)

#: How to install the optional dependency.
INSTALL = "pip install 'ccfv[ray]'"

SHARED_HINT = (
    "bank, checkpoints, data and --cache-dir must lie on a file system that every "
    "node of the Ray cluster sees under the same path"
)


def require_ray() -> Any:
    """The ``ray`` module; a UserError with the install command when it is not installed."""
    try:
        import ray
    except ImportError as exc:
        raise UserError(
            f"--backend ray needs Ray, which is not installed here ({exc}): "
            f"install it with {INSTALL} (or pip install ray), or use --backend "
            "local"
        ) from None
    return ray


def remote_summary(report: str, host: str, seconds: float, hit: bool) -> str:
    """A task's LoadReport summary and where its features were made or found."""
    where = "features found in the cache by" if hit else f"feature pass of {seconds:.1f} s on"
    return f"{report}; {where} Ray worker {host}"


def entry_paths(entry) -> list[tuple[str, str]]:
    """The files and folders a bank entry reads: ``[(what, absolute path)]``."""
    from ccfv.bank import entry_files  # the checkpoint, then what the entry's kind reads

    return entry_files(entry)


def task_spec(
    entry: Any,
    *,
    bank: str | Path,
    data: str | Path,
    cases: int | None,
    seed: int,
    case_ids: list[str],
    data_fp: str,
    budget: str,
    counts: tuple[int, ...] | list[int],
    cache_dir: str | Path,
    device: str,
    autocast: bool,
) -> dict[str, Any]:
    """The plain, small dict a task needs to redo one model's feature pass: absolute paths
    (resolved on the driver, so the worker's working folder does not matter) and settings."""
    return {
        "bank": str(Path(bank).resolve()),
        "model": entry.name,
        "data": str(Path(data).resolve()),
        "cases": cases,
        "seed": int(seed),
        "case_ids": [str(c) for c in case_ids],
        "data_fp": data_fp,
        "budget": budget,
        "counts": [int(c) for c in counts],
        "cache_dir": str(Path(cache_dir).resolve()),
        "device": device,
        "autocast": bool(autocast),
        "paths": entry_paths(entry),
    }


def _cannot_see(host: str, what: str, path: str) -> UserError:
    return UserError(f"Ray worker {host} cannot see the {what} {path}: {SHARED_HINT}")


def feature_pass(spec: dict[str, Any]) -> dict[str, Any]:
    """One model's feature pass on one dataset, as a Ray task runs it (callable without Ray).

    Checks that this process sees the bank file, the data folder, the feature cache (and can
    write to it) and every file of the entry, reads them from their paths, selects the cases
    as the driver did (same ids, same data fingerprint), and runs
    :func:`ccfv.passes.extract_model` into the feature cache of ``spec["cache_dir"]``.

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
    from ccfv.data.fingerprint import data_fingerprint
    from ccfv.extract import FeatureCache, cache_key

    host = socket.gethostname()
    needed = [
        ("bank file", spec["bank"]),
        ("data folder", spec["data"]),
        ("feature cache folder (--cache-dir)", spec["cache_dir"]),
        *spec["paths"],
    ]
    for what, path in needed:
        if not os.path.exists(path):
            raise _cannot_see(host, what, path)
    if not os.access(spec["cache_dir"], os.W_OK):
        raise UserError(
            f"Ray worker {host} cannot write to the feature cache folder "
            f"{spec['cache_dir']}: give --cache-dir a shared folder that every "
            "node may write to"
        )
    start = time.perf_counter()
    entries = {entry.name: entry for entry in load_bank(spec["bank"])}
    if spec["model"] not in entries:
        raise UserError(
            f"Ray worker {host} reads no model '{spec['model']}' in "
            f"{spec['bank']}: the bank file changed during the run, or the worker "
            f"sees another file under that path; {SHARED_HINT}"
        )
    entry = entries[spec["model"]]
    dataset, chosen = target_cases(spec["data"], spec["cases"], spec["seed"])
    data_fp = data_fingerprint(chosen, dataset.labels)
    if [c.case_id for c in chosen] != spec["case_ids"] or data_fp != spec["data_fp"]:
        raise UserError(
            f"Ray worker {host} sees other files under {spec['data']} than the "
            f"driver (cases, file contents or class table differ): {SHARED_HINT}"
        )
    loaded = [load_case(case, dataset.labels) for case in chosen]
    plan_for = plan_maker(loaded, spec["budget"], spec["counts"], spec["seed"])
    cache = FeatureCache(spec["cache_dir"])
    done = extract_model(
        entry,
        loaded,
        plan_for,
        cache,
        data_fp,
        spec["device"],
        spec["autocast"],
        progress=False,
        case_files={c.case_id: str(c.images[0]) for c in chosen},
    )
    key = cache_key(fingerprint(entry), data_fp, plan_for(len(done.layers)).fingerprint())
    return {
        "key": key,
        "layers": list(done.layers),
        "report": done.summary,
        "hit": bool(done.hit),
        "seconds": time.perf_counter() - start,
        "host": host,
    }


def task_device(ray: Any, device: str) -> tuple[str, dict[str, int]]:
    """The torch device a task uses and its Ray resource request, for ``device``.

    ``auto``: one GPU per task when the cluster has GPUs, else one CPU. ``cuda``: one GPU per
    task (an error when the cluster has none). Anything else (``cpu``): one CPU per task.
    """
    gpus = float(ray.cluster_resources().get("GPU", 0))
    if device == "auto":
        device = "cuda" if gpus > 0 else "cpu"
    if device.startswith("cuda"):
        if device != "cuda":
            raise UserError(
                f"--device {device} with --backend ray: give --device cuda, Ray "
                "assigns each task its own GPU"
            )
        if gpus <= 0:
            raise UserError(
                "--device cuda with --backend ray, but the Ray cluster has no GPU: "
                "add GPU nodes or use --device cpu"
            )
        return "cuda", {"num_gpus": 1}
    return device, {"num_cpus": 1}


class RayBackend:
    """Feature passes as Ray tasks (``--backend ray``), one per bank entry.

    Parameters
    ----------
    address : the Ray cluster to join (``ray.init(address=...)``); None: ``$RAY_ADDRESS``,
        else a cluster started with ``ray start`` on this machine, else a new local one. When
        Ray is already initialised in this process, that connection is used as it is.
    retries : how often Ray retries a task whose worker died or that raised ``OSError``
        before its model counts as failed (0 or more).

    Building one checks both and that Ray is installed (a UserError with the install command
    otherwise); nothing connects to a cluster before :meth:`run`.
    """

    name = "ray"

    def __init__(self, address: str | None = None, retries: int = 3):
        check_retries(retries)
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise UserError(
                f"--address {address!r}: give the cluster's HOST:PORT as "
                "`ray start --head` prints it, or leave it out"
            )
        require_ray()
        self.address, self.retries = address, retries

    def check_device(self, device: str | None) -> str:
        """``auto`` (the default: a GPU per task when the cluster has GPUs, else a CPU),
        ``cpu`` or ``cuda``; the cluster's GPUs are checked when it is joined."""
        device = "auto" if device is None else device
        if device not in ("auto", "cpu", "cuda"):
            raise UserError(
                f"--device {device} with --backend ray: give cpu, cuda (one GPU "
                "per task, Ray assigns it) or leave it out (a GPU per task when "
                "the cluster has GPUs)"
            )
        return device

    def run(self, target: FeatureTarget, device: str) -> RayPasses:
        """Join or start the cluster and submit every entry's task."""
        return RayPasses(target, device, address=self.address, retries=self.retries)

    def __repr__(self) -> str:
        return f"RayBackend(address={self.address!r}, retries={self.retries})"


class RayPasses:
    """Every entry's feature pass as a Ray task, submitted when this object is built.

    ``target`` is the driver's prepared target (its case selection, data fingerprint and
    feature cache; only names and paths travel); ``device`` ``auto``, ``cuda`` or ``cpu``
    (:meth:`RayBackend.check_device`), resolved here against the cluster into ``self.device``.

    Iterating waits for each task in bank order and yields its ModelFeatures, read from the
    cache (a failed task: ``error`` a UserError naming the (model, dataset) pair). A Ray
    instance started here is shut down once every entry has been collected, or on
    :meth:`close`.
    """

    def __init__(
        self, target: FeatureTarget, device: str, *, address: str | None = None, retries: int = 3
    ):
        ray = require_ray()
        self._ray, self._cache, self._data, self._retries = (
            ray,
            target.cache,
            str(target.data),
            retries,
        )
        self._entries = list(target.entries)
        self._started = False
        if not ray.is_initialized():
            try:
                ray.init(address=address, log_to_driver=True)
            except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
                raise UserError(
                    f"cannot start or join the Ray cluster "
                    f"{address or '(no --address: RAY_ADDRESS or a local one)'}: "
                    f"{first_line(exc)}; start one with `ray start --head` and "
                    "give the address it prints with --address; a cluster with "
                    "token authentication (the default of `ray start`) also needs "
                    "RAY_AUTH_MODE=token here and its token in ~/.ray/auth_token "
                    "or RAY_AUTH_TOKEN"
                ) from None
            self._started = True
        cache_dir = target.cache_dir
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        self.device, resources = task_device(ray, device)
        remote = ray.remote(feature_pass).options(
            max_retries=retries, retry_exceptions=[OSError], **resources
        )
        self._pending: dict[str, Any] = {}
        for entry in self._entries:
            spec = task_spec(
                entry,
                bank=target.bank,
                data=target.data,
                cases=target.cases,
                seed=target.seed,
                case_ids=target.case_ids,
                data_fp=target.data_fp,
                budget=target.budget,
                counts=target.counts,
                cache_dir=cache_dir,
                device=self.device,
                autocast=target.autocast,
            )
            self._pending[entry.name] = remote.remote(spec)
        resources_text = ", ".join(
            f"{v:g} {k}" for k, v in sorted(ray.cluster_resources().items()) if k in ("CPU", "GPU")
        )
        log.info(
            f"ray: {len(self._pending)} feature pass(es) submitted to a cluster of "
            f"{resources_text} ({'1 GPU' if 'num_gpus' in resources else '1 CPU'} each); "
            f"features land in {Path(cache_dir).resolve()}"
        )

    def __iter__(self) -> Iterator[ModelFeatures]:
        for entry in self._entries:
            try:
                yield self._collect(entry)
            except Exception as error:  # noqa: BLE001 - one model's failure is that model's
                yield ModelFeatures(entry.name, error=error)

    def _collect(self, entry: Any) -> ModelFeatures:
        ray = self._ray
        pair = f"({entry.name}, {self._data})"
        try:
            out = ray.get(self._pending.pop(entry.name))
        except ray.exceptions.RayTaskError as error:
            cause = error.cause
            if isinstance(cause, UserError):
                raise UserError(
                    f"feature pass of {pair} failed on the Ray cluster: {cause}"
                ) from None
            failure = UserError(
                f"feature pass of {pair} failed on the Ray cluster: "
                f"{type(cause).__name__}: {first_line(cause)}"
            )
            # the worker's traceback, for the run's failure log (ccfv.rank names the file)
            text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # no colours
            failure.traceback_text = text  # type: ignore[attr-defined]
            raise failure from None
        except ray.exceptions.RayError as error:  # worker or node died, all retries spent
            raise UserError(
                f"feature pass of {pair} failed on the Ray cluster after "
                f"{self._retries} retries: {type(error).__name__}: "
                f"{first_line(error)}"
            ) from None
        finally:
            if not self._pending:
                self.close()
        features = self._cache.get(out["key"])
        if features is None:
            path = self._cache.path(out["key"])
            raise UserError(
                f"feature pass of {pair} finished on Ray worker {out['host']}, but "
                f"its features {path} are not readable here: {SHARED_HINT}"
            )
        summary = remote_summary(out["report"], out["host"], out["seconds"], out["hit"])
        return ModelFeatures(
            entry.name, features, tuple(out["layers"]), summary, hit=bool(out["hit"])
        )

    def close(self) -> None:
        """Cancel the tasks not collected yet and shut down a Ray instance started here."""
        for ref in self._pending.values():
            self._ray.cancel(ref, force=True)
        self._pending = {}
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
        self._started = False
