"""Rank a model bank on a target dataset: settings -> target -> feature passes -> scores.

:class:`RankSettings` holds the options of a run, each checked once, when it is built (the
CLI builds it from its flags). :func:`rank` prepares the target
(:class:`ccfv.passes.FeatureTarget`: cases, data fingerprint, sampling plans, feature cache),
hands it to a feature backend (:mod:`ccfv.backends`: here by default, or a Ray cluster), and
scores each model's features as the backend hands them back, in bank order, into a
:class:`RankResult`. Scoring, the bootstrap and ``on_model`` always run here, on the features
read from the cache, so every backend gives the same scores.

Messages (notes on the data, a line per model, failures, warnings) go to the ``ccfv.rank``
logger (``logging.getLogger("ccfv.rank")``; the command line prints them); progress bars go
through :mod:`ccfv.progress`.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from ccfv.backends.base import FeatureBackend
from ccfv.backends.local import LocalBackend
from ccfv.bootstrap import BootstrapResult, replicate_scores, resample_cases, summarize
from ccfv.errors import UserError, collect_ccfv_warnings, first_line
from ccfv.estimators.registry import DEFAULT_METHOD, get_estimator, split_methods
from ccfv.passes import (
    FeatureTarget,
    ModelFeatures,
    output_probabilities,
    split_predictions,
    target_cases,
)

__all__ = [
    "DEFAULT_CACHE",
    "Interrupted",
    "RankResult",
    "RankSettings",
    "check_bootstrap",
    "check_cases",
    "check_folder",
    "check_methods",
    "drop_warning",
    "rank",
    "score_features",
]

_log = logging.getLogger(__name__)

DEFAULT_CACHE = Path(".ccfv_cache")

#: The sampling budgets (:func:`ccfv.extract.make_plan`).
BUDGETS = ("fixed", "proportional")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`rank`; its message says what the feature cache holds."""


def check_cases(cases: object) -> None:
    """``cases``: None (all) or an integer >= 1."""
    if cases is not None and (isinstance(cases, bool) or not isinstance(cases, int) or cases < 1):
        raise UserError(
            f"--cases {cases}: give a number of cases >= 1, or leave it out to use all cases"
        )


def check_bootstrap(bootstrap: object) -> None:
    """``bootstrap``: an integer >= 0 (0 turns it off)."""
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 0:
        raise UserError(
            f"--bootstrap {bootstrap}: give a number of resamples >= 1, or 0 to "
            "turn the bootstrap off"
        )


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass(frozen=True)
class RankSettings:
    """The options of one ranking run, checked when the object is built.

    Attributes
    ----------
    methods : estimator names (``ccfv``, ``ccfv-official``, ``ccfv-paper[distance=kl]``,
        ...), or one comma-separated string of them; the first one ranks.
    cases : use this many cases, picked reproducibly with ``seed`` (default: all).
    seed : seeds case selection, voxel sampling and the bootstrap (an integer >= 0).
    device : torch device of the feature passes; None: the backend's default (``cpu``
        locally; with the Ray backend ``auto``, a GPU per task when the cluster has GPUs).
        Locally ``cpu``, ``cuda``, ``cuda:1``, ``mps``; with Ray ``auto``, ``cpu`` or
        ``cuda``. Checked by the backend (:meth:`ccfv.backends.FeatureBackend.check_device`).
    cache_dir : where sampled features are cached (with Ray: a folder every node sees).
    budget, counts : the sampling plan: ``fixed`` counts per case, class and layer, from the
        layer nearest the bottleneck to the output, or ``proportional`` to the class size.
    autocast : mixed precision on CUDA.
    bootstrap : replicates of the bootstrap over target cases for the first method (0: off);
        see :mod:`ccfv.bootstrap`. Re-scores cached features only, never runs a model.
    level : coverage of the bootstrap intervals, in (0, 1).
    progress : show progress bars.
    failure_log : file to which the traceback of every model failure that is not a
        :class:`~ccfv.errors.UserError` is appended (the one-line message names it); None:
        the tracebacks are kept in :attr:`RankResult.tracebacks` only.

    Every value is checked here, once (a UserError naming the flag, the value and the fix):
    the method names and their options, cases, seed, budget, counts, bootstrap (and that it
    has at least 2 cases to resample), level. What needs the machine or the data (the
    device, the cache folder, each method on as many cases as selected) is checked by
    :func:`rank` before any model runs.
    """

    methods: tuple[str, ...] = (DEFAULT_METHOD,)
    cases: int | None = None
    seed: int = 0
    device: str | None = None
    cache_dir: Path = DEFAULT_CACHE
    budget: str = "fixed"
    counts: tuple[int, ...] = (100, 200, 400)
    autocast: bool = False
    bootstrap: int = 100
    level: float = 0.95
    progress: bool = True
    failure_log: Path | None = None

    def __post_init__(self) -> None:
        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        raw: Any = self.methods
        methods = tuple(split_methods(raw) if isinstance(raw, str) else raw)
        if not methods:
            raise UserError("--methods names no method: give e.g. --methods ccfv,ccfv-official")
        for method in methods:
            get_estimator(method)
        put("methods", methods)
        check_cases(self.cases)
        if not _is_int(self.seed) or self.seed < 0:
            raise UserError(f"--seed {self.seed}: give an integer >= 0")
        put("seed", int(self.seed))
        if self.device is not None and not isinstance(self.device, str):
            raise UserError(f"--device {self.device!r}: give a device name such as cpu or cuda")
        if self.budget not in BUDGETS:
            raise UserError(f"--budget {self.budget!r}: give {' or '.join(BUDGETS)}")
        counts = tuple(self.counts) if isinstance(self.counts, Iterable) else ()
        if not counts or not all(_is_int(c) and c >= 1 for c in counts):
            raise UserError(
                f"counts {self.counts!r}: give voxels per case and class as "
                "integers >= 1, one per hooked layer from the bottleneck to the "
                "output, e.g. (100, 200, 400)"
            )
        put("counts", tuple(int(c) for c in counts))
        check_bootstrap(self.bootstrap)
        if self.cases == 1 and self.bootstrap:
            raise UserError(
                f"--cases 1 with --bootstrap {self.bootstrap}: the bootstrap "
                "resamples target cases and needs at least 2: give --cases 2 or "
                "more, or --bootstrap 0"
            )
        if (
            isinstance(self.level, bool)
            or not isinstance(self.level, (int, float))
            or not 0 < self.level < 1
        ):
            raise UserError(
                f"level {self.level!r}: give the coverage of the bootstrap "
                "intervals, between 0 and 1 (e.g. 0.95)"
            )
        put("level", float(self.level))
        put("cache_dir", Path(self.cache_dir))
        put("failure_log", None if self.failure_log is None else Path(self.failure_log))
        put("autocast", bool(self.autocast))
        put("progress", bool(self.progress))

    @classmethod
    def from_options(
        cls, options: Mapping[str, Any], base: RankSettings | None = None
    ) -> RankSettings:
        """Settings from keyword options (those of :func:`rank`), over ``base`` if given; an
        unknown option is a UserError listing the known ones."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            ray = sorted(set(unknown) & {"address", "retries"})
            hint = (
                f"; {' and '.join(ray)} belong to the Ray backend: "
                "rank(..., backend=ccfv.backends.ray.RayBackend(address=..., retries=...))"
                if ray
                else ""
            )
            raise UserError(
                f"unknown rank option(s) {', '.join(unknown)}: the options are "
                f"{', '.join(known)}{hint}"
            )
        values = {f.name: getattr(base, f.name) for f in fields(cls)} if base else {}
        return cls(**{**values, **options})


@dataclass
class RankResult:
    """Scores per model and method (None where a model failed), and what the run used.

    The fields after ``tracebacks`` describe the run; :attr:`details` gathers them into the
    dict that ``scores.json`` and ``report.md`` hold (the same keys as always).
    """

    methods: list[str]
    scores: dict[str, dict[str, float | None]]
    #: model -> one-line message, for each model whose load, feature pass or scoring failed.
    failures: dict[str, str] = field(default_factory=dict)
    #: Bootstrap over target cases of the first (ranking) method; None when turned off.
    bootstrap: BootstrapResult | None = None
    #: Traceback text of every failure that was not a UserError (``model`` or
    #: ``model / method``).
    tracebacks: dict[str, str] = field(default_factory=dict)
    data: str = ""
    bank: str = ""
    #: The target cases used, in run order.
    cases: list[str] = field(default_factory=list)
    #: The class table used (``{"0": "background", ...}``) and the rule that made it.
    classes: dict[str, str] = field(default_factory=dict)
    label_rule: str = ""
    seed: int = 0
    budget: str = "fixed"
    counts: list[int] = field(default_factory=list)
    #: The device the feature passes ran on (for Ray: as resolved against the cluster).
    device: str = "cpu"
    #: The feature backend's name (``local``, ``ray``).
    backend: str = "local"
    #: model -> hooked layers, how its weights were set, features extracted or cached.
    per_model: dict[str, str] = field(default_factory=dict)
    #: Notes on the data (classes absent from the selected cases).
    notes: list[str] = field(default_factory=list)
    #: model -> method -> message, for methods that failed on a model's features.
    method_failures: dict[str, dict[str, str]] = field(default_factory=dict)
    #: model -> planned voxels outside its preprocessed image
    #: (:func:`ccfv.extract.dropped_voxels`).
    dropped: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Said when the models' drop rates differ (:func:`drop_warning`); "" otherwise.
    drop_warning: str = ""

    @property
    def details(self) -> dict[str, Any]:
        """The run's description as ``scores.json`` holds it under ``details`` (without
        ``failures``, which the report adds): ``notes``, ``backend`` (when not local),
        ``method_failures``, ``dropped``, ``drop_warning`` and ``bootstrap`` only when there
        is something to say."""
        out: dict[str, Any] = {
            "data": self.data,
            "bank": self.bank,
            "cases": list(self.cases),
            "classes": self.classes,
            "label_rule": self.label_rule,
            "seed": self.seed,
            "budget": self.budget,
            "counts": list(self.counts),
            "device": self.device,
            "per_model": self.per_model,
        }
        if self.notes:
            out["notes"] = self.notes
        if self.backend != "local":
            out["backend"] = self.backend
        if self.method_failures:
            out["method_failures"] = self.method_failures
        if self.dropped:
            out["dropped"] = self.dropped
        if self.drop_warning:
            out["drop_warning"] = self.drop_warning
        if self.bootstrap is not None:
            out["bootstrap"] = self.bootstrap.to_dict()
        return out

    def ranking(self) -> list[str]:
        """Model names, best first by the first method (failed models last)."""
        key = self.methods[0]
        value = {m: s.get(key) for m, s in self.scores.items()}

        def order(model: str) -> float:
            v = value[model]
            return math.inf if v is None or math.isnan(v) else -v

        return sorted(self.scores, key=order)


def check_folder(path: str | Path, option: str) -> Path:
    """Create the folder ``path`` if needed and check that a file can be written in it."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UserError(
            f"{option} {folder} is a file, not a folder: give a folder (it is "
            "created if it does not exist)"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UserError(
            f"{option} {folder}: cannot write there ({exc.strerror or exc}): give "
            "a folder you may write to"
        ) from None
    return folder


def check_methods(methods: Sequence[str], n_cases: int, n_classes: int = 2) -> None:
    """Run every method once on a small random feature set with ``n_cases`` cases (at most
    3) and ``n_classes`` classes, so that an option with a bad value
    (``ccfv[distance=foo]``) or too few cases for a method (CC-FV compares cases: at least 2)
    is refused before any model runs. Options naming layers are left out of this check (the
    layers are known only once a model is loaded)."""
    from dataclasses import replace

    rng = np.random.default_rng(0)
    n_probe, k = max(1, min(int(n_cases), 3)), max(2, min(int(n_classes), 4))
    features, predictions = {}, []
    for layer, dim in (("test layer 1", 12), ("test layer 2", 8)):
        cases = []
        for _ in range(n_probe):
            y = np.repeat(np.arange(k), 16)
            cases.append((rng.normal(size=(y.size, dim)) + y[:, None], y))
        features[layer] = cases
    for _, y in features[layer]:
        logits = 2.0 * np.eye(k)[y] + rng.normal(size=(y.size, k))
        predictions.append(output_probabilities(logits))
    for method in methods:
        estimator = get_estimator(method)
        estimator = replace(
            estimator,
            options={
                key: value
                for key, value in estimator.options.items()
                if key not in ("layer", "layers") or value == "last"
            },
        )
        try:
            with collect_ccfv_warnings(everything=True):  # made-up data: nothing to report
                estimator(features, predictions=predictions)
        except Exception as error:  # noqa: BLE001 - a bad value may raise any type
            text = (
                str(error)
                if isinstance(error, UserError)
                else (f"{type(error).__name__}: {first_line(error)}")
            )
            raise UserError(
                f"--methods {method} on {n_cases} target case(s): {text} (checked "
                "on a small test feature set, before any model runs)"
            ) from None


def drop_warning(dropped: dict[str, dict]) -> str:
    """A warning when the models lost different shares of the planned voxels (outside their
    preprocessed images): their estimators then compare features of different voxels.
    ``dropped`` maps model -> :func:`ccfv.extract.dropped_voxels`; "" when all rates agree."""
    rates = {m: d["rate"] for m, d in dropped.items()}
    if len(set(rates.values())) < 2:
        return ""
    shares = ", ".join(f"{m} {100 * r:.2f}%" for m, r in rates.items())
    return (
        "the models' preprocessing dropped different shares of the planned voxels "
        f"(outside the preprocessed image: {shares}), so their scores compare features of "
        "different voxels; `ccfv bank check BANK --data DIR` shows each model's grid (align "
        "the crops/roi, or rank those models separately)"
    )


def _failure_message(
    result: RankResult, what: str, error: BaseException, failure_log: Path | None
) -> str:
    """One line for a failure: the UserError's message, or the exception's type and first
    line with the traceback appended to ``failure_log`` (and kept in ``result.tracebacks``)."""
    remote = getattr(error, "traceback_text", None)  # a Ray worker's unexpected error
    if isinstance(error, UserError) and not remote:
        return str(error)
    text = remote or "".join(traceback.format_exception(error))
    result.tracebacks[what] = text
    message = str(error) if remote else f"{type(error).__name__}: {first_line(error)}"
    if failure_log is None:
        return message + " (an unexpected error: please report it with its traceback)"
    log_path = Path(failure_log)
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as handle:
            handle.write(f"=== {what} ({time.strftime('%Y-%m-%d %H:%M:%S')})\n{text}\n")
    except OSError as exc:
        return message + f" (its traceback could not be written to {log_path}: {exc})"
    return message + f" (traceback in {log_path})"


def _log_collected(caught: list[str]) -> None:
    """The estimators' CCFVWarnings of one model, once each, at DEBUG level."""
    for text in dict.fromkeys(caught):
        _log.debug("estimator warning: %s", text)


def score_features(
    features: Mapping[str, Any],
    methods: Sequence[str],
    predictions: Sequence[np.ndarray] | None = None,
    errors: dict[str, BaseException] | None = None,
) -> dict[str, float | None]:
    """Every method's score on one model's feature set (and its predictions, for the
    estimators that read them).

    With ``errors`` (a dict), a method that fails is scored None and its error kept there
    (``method -> exception``), so the other methods' scores stand; without, it raises."""
    out: dict[str, float | None] = {}
    for method in methods:
        estimator = get_estimator(method)
        try:
            with collect_ccfv_warnings() as caught:
                out[method] = float(estimator(features, predictions=predictions))
            _log_collected(caught)
        except Exception as error:  # noqa: BLE001 - one method's failure is that method's
            if errors is None:
                raise
            errors[method] = error
            out[method] = None
    return out


def _backend(backend: FeatureBackend | str | None) -> FeatureBackend:
    """The backend object: None or ``"local"`` -> :class:`LocalBackend`."""
    if backend is None or backend == "local":
        return LocalBackend()
    if backend == "ray":
        raise UserError(
            "backend 'ray' given by name: give the backend object, "
            "backend=ccfv.backends.ray.RayBackend(address=..., retries=3) "
            "(ccfv.rank never imports the Ray backend itself)"
        )
    if isinstance(backend, str) or not isinstance(backend, FeatureBackend):
        raise UserError(
            f"backend {backend!r} is not one of local, ray: give None (local), "
            "ccfv.backends.LocalBackend() or ccfv.backends.ray.RayBackend(...)"
        )
    return backend


def rank(
    bank: str | Path,
    data: str | Path,
    settings: RankSettings | None = None,
    *,
    backend: FeatureBackend | str | None = None,
    on_model: Callable[[str, Any, Any], None] | None = None,
    log: Callable[[str], Any] | None = None,
    **options: Any,
) -> RankResult:
    """Score every model of ``bank`` on the labelled cases under ``data``.

    Parameters
    ----------
    bank : bank YAML file (see docs/reference/bank-file.md).
    data : target dataset folder (Decathlon, nnU-Net v2 raw, or images/labels folders).
    settings : the run's options (:class:`RankSettings`); default ``RankSettings()``.
    **options : any field of :class:`RankSettings` as a keyword (``methods=["ccfv",
        "logme"], cases=8, bootstrap=0``, ...), over ``settings`` when both are given.
    backend : where the feature passes run (:class:`ccfv.backends.FeatureBackend`): None
        (or ``"local"``): :class:`~ccfv.backends.LocalBackend`, here, one model after the
        other; ``ccfv.backends.ray.RayBackend(address=..., retries=...)``: each model's
        feature pass as a Ray task on a cluster, writing into the same ``cache_dir`` (which,
        like the bank's files and ``data``, must be a path every node sees). Scoring, the
        bootstrap and ``on_model`` run here in both cases, in bank order, on the features
        read from the cache.
    on_model : optional ``f(model name, feature set, predictions)``, called after each model
        is scored, for callers that compute more from the features (the benchmark records
        CC-FV's per-class terms this way).
    log : optional ``f(message)`` that receives each message instead of the ``ccfv.rank``
        logger (for callers that collect or drop the messages themselves).

    The settings are checked when they are built; then the device (by the backend), the cache
    folder and every method (on a small test feature set with as many cases, see
    :func:`check_methods`) are checked before any model runs. A model that fails (bad
    checkpoint, a window its network cannot take, a 3D network on 2D data, out of memory, any
    exception in its load or feature pass) is reported in :attr:`RankResult.failures` with
    its cause in one line, and the others are still scored; a method that fails on one
    model's features is scored None for that model only (:attr:`RankResult.method_failures`).
    Planned voxels that land outside a model's preprocessed image (a crop) are dropped for
    that model and counted per case and class in :attr:`RankResult.dropped`;
    :attr:`RankResult.drop_warning` says when the models' drop rates differ. Ctrl-C raises
    :class:`Interrupted`, whose message says which models' features are complete in the
    cache.
    """
    from ccfv.bank import load_bank
    from ccfv.data import load_case
    from ccfv.extract import dropped_voxels

    if settings is not None and not isinstance(settings, RankSettings):
        raise UserError(
            f"rank(bank, data, settings): settings is a "
            f"{type(settings).__name__}, not a RankSettings (give methods=... and "
            "the other options as keywords, or settings=RankSettings(...))"
        )
    if options or settings is None:
        settings = RankSettings.from_options(options, settings)
    chosen_backend = _backend(backend)

    def say(level: int, text: str) -> None:
        if log is not None:
            log(text)
        else:
            _log.log(level, text)

    methods = list(settings.methods)
    device = chosen_backend.check_device(settings.device)
    check_folder(settings.cache_dir, "--cache-dir")
    entries = load_bank(bank)
    dataset, chosen = target_cases(data, settings.cases, settings.seed)
    draws = (
        resample_cases(len(chosen), settings.bootstrap, settings.seed) if settings.bootstrap else []
    )
    check_methods(methods, len(chosen), len(dataset.labels) or 2)
    loaded = [load_case(case, dataset.labels) for case in chosen]
    present = sorted({int(k) for case in loaded for k in np.unique(case.label)} - {0})
    if not present:
        raise UserError(
            f"{data}: the selected {len(loaded)} case(s) hold no foreground label; "
            "choose other cases (--cases, --seed) or check the label files"
        )
    missing = sorted(set(dataset.labels) - {0} - set(present))
    notes = []
    if missing and len(loaded) < len(dataset.cases):
        notes.append(
            f"{data}: class(es) {missing} of dataset.json appear in none of the "
            f"{len(loaded)} selected cases (of {len(dataset.cases)}) and are not "
            "scored; select more cases (--cases) or another --seed to include them"
        )
    elif missing:
        notes.append(
            f"{data}: class(es) {missing} of dataset.json appear in none of the "
            f"dataset's {len(loaded)} cases (all of them are used) and are not "
            "scored; check the labels table of dataset.json and the label files"
        )
    for note in notes:
        say(logging.INFO, f"note: {note}")
    target = FeatureTarget(
        bank=bank,
        data=data,
        entries=list(entries),
        cases=settings.cases,
        seed=settings.seed,
        chosen=list(chosen),
        loaded=loaded,
        labels=dataset.labels,
        budget=settings.budget,
        counts=settings.counts,
        cache_dir=settings.cache_dir,
        autocast=settings.autocast,
        progress=settings.progress,
    )
    table = dataset.class_table(present)  # the class table used: report.md, scores.json
    result = RankResult(
        methods=methods,
        scores={},
        data=str(data),
        bank=str(bank),
        cases=[c.case_id for c in loaded],
        classes=table["classes"],
        label_rule=table["rule"],
        seed=settings.seed,
        budget=settings.budget,
        counts=list(settings.counts),
        device=device,
        notes=notes,
        backend=chosen_backend.name,
    )
    dropped: dict[str, dict[str, Any]] = {}  # per model: planned voxels outside its image
    replicates: dict[str, np.ndarray] = {}
    passes = chosen_backend.run(target, device)
    result.device = passes.device
    coming = iter(passes)
    done: list[str] = []  # models whose features are complete in the cache
    current = None
    failure_log = settings.failure_log

    def failed(name: str, error: BaseException) -> None:
        message = _failure_message(result, name, error, failure_log)
        result.failures[name] = message
        result.scores[name] = {m: None for m in methods}
        say(logging.WARNING, f"{name}: FAILED: {message}")

    try:
        for entry in entries:
            current = entry.name
            start = time.perf_counter()
            errors: dict[str, BaseException] = {}
            got: ModelFeatures = next(coming)
            if got.model != entry.name:
                raise RuntimeError(
                    f"the {chosen_backend.name} feature backend handed back "
                    f"{got.model!r} where {entry.name!r} was due (bank order)"
                )
            if got.error is not None or got.features is None:
                failed(
                    entry.name,
                    got.error
                    or RuntimeError(
                        f"the {chosen_backend.name} feature backend handed back no features"
                    ),
                )
                continue
            try:
                done.append(entry.name)
                features, predictions = split_predictions(got.features)
                dropped[entry.name] = dropped_voxels(
                    target.plan_for(len(got.layers)), got.features, list(got.layers)
                )
                if draws:  # the ranking method's tables are built once, for score and draws
                    scores = _score_and_replicate(
                        features,
                        predictions,
                        methods,
                        draws,
                        len(loaded),
                        errors,
                        replicates,
                        entry.name,
                        settings.progress,
                    )
                else:
                    scores = score_features(features, methods, predictions, errors)
                result.scores[entry.name] = scores
                if on_model is not None:
                    on_model(entry.name, features, predictions)
            except Exception as error:  # noqa: BLE001 - one model's failure is that model's
                failed(entry.name, error)
                continue
            for method, problem in errors.items():
                message = _failure_message(result, f"{entry.name} / {method}", problem, failure_log)
                result.method_failures.setdefault(entry.name, {})[method] = message
                say(logging.WARNING, f"{entry.name}: {method} FAILED: {message}")
            took = time.perf_counter() - start
            hit = got.hit
            result.per_model[entry.name] = (
                f"layers {list(got.layers)}; {got.summary}; "
                f"{'features from cache' if hit else f'features extracted in {took:.1f} s'}"
            )
            say(
                logging.INFO,
                f"{entry.name}: "
                + ", ".join(
                    f"{m} {'failed' if v is None else f'{v:.4f}'}"
                    for m, v in result.scores[entry.name].items()
                )
                + (" (cached features)" if hit else f" ({took:.1f} s)"),
            )
            current = None
    except KeyboardInterrupt:
        passes.close()
        where = Path(settings.cache_dir).resolve()
        text = (
            f"features of {len(done)} of {len(entries)} model(s) are complete in the cache "
            f"{where}" + (f" ({', '.join(done)})" if done else "")
        )
        if current is not None and current not in done:
            text += f"; any case of {current} finished before Ctrl-C is kept there too"
        raise Interrupted(text + "; the same command resumes from there") from None
    if dropped:
        result.dropped = dropped
        warning = drop_warning(dropped)
        if warning:
            result.drop_warning = warning
            say(logging.WARNING, f"warning: {warning}")
    if replicates:
        full = {m: result.scores[m][methods[0]] for m in replicates}
        result.bootstrap = summarize(methods[0], replicates, full, settings.level, settings.seed)
    return result


def _score_and_replicate(
    features: Mapping[str, Any],
    predictions: Any,
    methods: list[str],
    draws: list[np.ndarray],
    n_cases: int,
    errors: dict[str, BaseException],
    replicates: dict[str, np.ndarray],
    model: str,
    progress: bool,
) -> dict[str, float | None]:
    """Every method's score, and the ranking method's bootstrap replicates (its tables built
    once, for the score and the draws) into ``replicates[model]``."""
    first: float | None
    scorer: Any
    try:
        with collect_ccfv_warnings() as caught:
            scorer = get_estimator(methods[0]).prepare(features, predictions)
            first = float(scorer(np.arange(n_cases)))
        _log_collected(caught)
    except Exception as error:  # noqa: BLE001 - the method's failure
        errors[methods[0]], first, scorer = error, None, None
    rest = score_features(features, methods[1:], predictions, errors)
    if scorer is not None:
        replicates[model] = replicate_scores(
            features,
            predictions,
            get_estimator(methods[0]),
            draws,
            progress=f"{model}: bootstrap" if progress else None,
            scorer=scorer,
        )
    return {methods[0]: first, **rest}
