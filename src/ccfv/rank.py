"""Rank a model bank on a target dataset: data -> plan -> features (cached) -> scores.

One function per stage, plain values between them. The sampling plan depends only on the
data, the budget and the seed, so every model is read at the same voxels (but those its
preprocessing crops away, which are dropped for it and counted in ``details["dropped"]``,
:mod:`ccfv.extract.plan`); features are cached
per (model fingerprint, data fingerprint, plan fingerprint) and per case, so re-scoring with
other methods never runs a model again and a run killed half-way redoes at most one case.
"""

from __future__ import annotations

import math
import re
import tempfile
import time
import traceback
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ccfv.bootstrap import BootstrapResult, replicate_scores, resample_cases, summarize
from ccfv.data.fingerprint import data_fingerprint  # noqa: F401  (ccfv.rank.data_fingerprint)
from ccfv.errors import CCFVWarning, UserError, first_line
from ccfv.estimators.registry import get_estimator

DEFAULT_CACHE = Path(".ccfv_cache")

#: Name under which the feature cache holds the source model's own predictions: its softmax
#: (a sigmoid output becomes the two columns ``1 - p, p``) at the voxels planned for the last
#: hooked layer, read from the model's output by the same point-wise extraction. LEEP and NCE
#: read them; every other estimator sees only the hooked layers.
PREDICTIONS = "<model output>:softmax"


@dataclass
class RankResult:
    """Scores per model and method (None where a model failed), and what happened."""

    methods: list[str]
    scores: dict[str, dict[str, float | None]]
    failures: dict[str, str] = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    #: Bootstrap over target cases of the first (ranking) method; None when turned off.
    bootstrap: BootstrapResult | None = None
    #: Traceback text of every failure that was not a UserError (``model`` or
    #: ``model / method``).
    tracebacks: dict[str, str] = field(default_factory=dict)

    def ranking(self) -> list[str]:
        key = self.methods[0]
        value = {m: s.get(key) for m, s in self.scores.items()}
        return sorted(self.scores, key=lambda m: math.inf if value[m] is None
                      or math.isnan(value[m]) else -value[m])


def target_cases(data: str | Path, cases: int | None, seed: int):
    """``(dataset, chosen cases)``: the target folder's cases, ``cases`` of them picked with
    ``seed`` (all when None). The one selection rule of a run, on the driver and on a Ray
    worker alike."""
    from ccfv.data import find_cases, select_cases

    dataset = find_cases(data)
    return dataset, (list(dataset.cases) if cases is None
                     else select_cases(dataset, cases, seed))


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`rank`; its message says what the feature cache holds."""


def check_cases(cases) -> None:
    """``cases``: None (all) or an integer >= 1."""
    if cases is not None and (isinstance(cases, bool) or not isinstance(cases, int)
                              or cases < 1):
        raise UserError(f"--cases {cases}: give a number of cases >= 1, or leave it out to use "
                        "all cases")


def check_bootstrap(bootstrap) -> None:
    """``bootstrap``: an integer >= 0 (0 turns it off)."""
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 0:
        raise UserError(f"--bootstrap {bootstrap}: give a number of resamples >= 1, or 0 to "
                        "turn the bootstrap off")


def check_device(device: str, backend: str = "local") -> str:
    """The device as given, once it is known to be usable: a torch device this machine has
    (``cpu``, ``cuda``, ``cuda:N`` with that GPU present, ``mps`` where available); with the
    Ray backend ``auto``, ``cpu`` or ``cuda`` (the cluster's GPUs are checked when it is
    joined)."""
    if backend == "ray":
        if device not in ("auto", "cpu", "cuda"):
            raise UserError(f"--device {device} with --backend ray: give cpu, cuda (one GPU "
                            "per task, Ray assigns it) or leave it out (a GPU per task when "
                            "the cluster has GPUs)")
        return device
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UserError(f"--device {device!r} is not a torch device: give cpu, cuda or cuda:N "
                        "(the N-th GPU)") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            build = (f"CUDA {torch.version.cuda} build" if torch.version.cuda
                     else "a CPU-only build")
            raise UserError(f"--device {device}: torch here ({torch.__version__}, {build}) sees "
                            "no CUDA GPU: use --device cpu, or run where a GPU and a CUDA "
                            "build of torch are installed")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise UserError(f"--device {device}: this machine has {count} CUDA GPU(s), "
                            f"cuda:0 to cuda:{count - 1}")
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise UserError(f"--device {device}: MPS is not available here: use --device cpu")
    elif parsed.type != "cpu":
        raise UserError(f"--device {device}: ccfv runs models on cpu, cuda[:N] or mps")
    return device


def check_folder(path: str | Path, option: str) -> Path:
    """Create the folder ``path`` if needed and check that a file can be written in it."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{option} {folder} is a file, not a folder: give a folder (it is "
                        "created if it does not exist)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UserError(f"{option} {folder}: cannot write there ({exc.strerror or exc}): give "
                        "a folder you may write to") from None
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
        estimator = replace(estimator, options={
            key: value for key, value in estimator.options.items()
            if key not in ("layer", "layers") or value == "last"})
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                estimator(features, predictions=predictions)
        except Exception as error:  # noqa: BLE001 - a bad value may raise any type
            text = str(error) if isinstance(error, UserError) else (
                f"{type(error).__name__}: {first_line(error)}")
            raise UserError(f"--methods {method} on {n_cases} target case(s): {text} (checked "
                            "on a small test feature set, before any model runs)") from None


def plan_maker(loaded_cases, budget: str, counts: Sequence[int], seed: int):
    """``plan_for(n_layers)``: the sampling plan of the loaded cases for a model with that
    many hooked layers, made once per layer count (the same plan for every model)."""
    from ccfv.extract import make_plan

    plans = {}

    def plan_for(n_layers: int):
        if n_layers not in plans:
            plans[n_layers] = make_plan([c.label for c in loaded_cases],
                                        [c.case_id for c in loaded_cases], layers=n_layers,
                                        budget=budget, counts=list(counts), seed=seed)
        return plans[n_layers]

    return plan_for


def extract_model(entry, loaded_cases, plan_for, cache, data_fp: str, device: str = "cpu",
                  autocast: bool = False, progress: bool = True, case_files=None):
    """Feature set of one bank entry on the loaded cases, from the cache where possible.

    ``case_files`` (``{case_id: image path}``, optional) names the files in messages."""
    import torch

    from ccfv.bank import LayerSpec, fingerprint, load_model, resolve_layers
    from ccfv.bank.preprocess import describe_preprocessing, entry_preprocess
    from ccfv.extract import LayerTap, cache_key, extract_at_points
    from ccfv.extract.plan import grid_mapping

    model, report = load_model(entry)
    layers = resolve_layers(model, entry)
    plan = plan_for(len(layers))
    key = cache_key(fingerprint(entry), data_fp, plan.fingerprint())
    cached = cache.get(key)
    if cached is not None:
        return cached, report, layers, True
    names = [spec.key for spec in layers]
    pre = entry.preprocessing
    ndim = loaded_cases[0].label.ndim
    check_dimensionality(entry, model, loaded_cases[0])
    model = model.to(device)
    preprocess = entry_preprocess(entry, ndim)  # the one of the entry's kind
    described = describe_preprocessing(entry)
    taps = {spec.key: spec for spec in layers}
    taps[PREDICTIONS] = LayerSpec("", "output")  # the root module's output: the logits
    window = None  # (channels, roi) of the case in progress, for window_hint
    try:
        with LayerTap(model, taps) as forward:  # {name: map} for ``names`` and PREDICTIONS
            iterator = zip(loaded_cases, plan.cases)
            if progress:
                from tqdm.auto import tqdm

                iterator = tqdm(list(iterator), desc=f"{entry.name}", unit="case", leave=False)
            for case, case_plan in iterator:
                if cache.get_case(key, case.case_id) is not None:
                    continue
                window = None
                image, affine = preprocess(case.image, case.affine)
                # planned voxels outside the preprocessed image (a crop) are dropped, and
                # counted later from the cached classes (ccfv.extract.dropped_voxels)
                points, keep = case_plan.points_inside(
                    names, grid_mapping(case.affine, affine), image.shape[1:],
                    model=entry.name, case_file=(case_files or {}).get(case.case_id, ""),
                    preprocessing=described)
                roi = list(pre.roi) if pre.roi else list(image.shape[1:])
                points[PREDICTIONS] = points[names[-1]]
                window = (int(image.shape[0]), roi)
                feats = extract_at_points(forward, torch.as_tensor(image), points, roi,
                                          overlap=pre.overlap, sw_batch_size=pre.sw_batch_size,
                                          device=device, autocast=autocast)
                parts = {name: (feats[name], cls[kept])
                         for name, cls, kept in zip(names, case_plan.classes, keep)}
                parts[PREDICTIONS] = (output_probabilities(feats[PREDICTIONS]),
                                      case_plan.classes[-1][keep[-1]])
                cache.put_case(key, case.case_id, parts)
    except (RuntimeError, ValueError) as error:  # a forward pass that failed: say why if known
        if isinstance(error, UserError) or window is None:
            raise
        hint = window_hint(entry, model, *window, device)
        if hint is None:
            raise
        raise UserError(f"{hint} ({type(error).__name__}: {first_line(error)})") from error
    features = cache.assemble(key, [c.case_id for c in loaded_cases],
                              info={"model": entry.name, "layers": names})
    return features, report, layers, False


def drop_warning(dropped: dict[str, dict]) -> str:
    """A warning when the models lost different shares of the planned voxels (outside their
    preprocessed images): their estimators then compare features of different voxels.
    ``dropped`` maps model -> :func:`ccfv.extract.dropped_voxels`; "" when all rates agree."""
    rates = {m: d["rate"] for m, d in dropped.items()}
    if len(set(rates.values())) < 2:
        return ""
    shares = ", ".join(f"{m} {100 * r:.2f}%" for m, r in rates.items())
    return ("the models' preprocessing dropped different shares of the planned voxels "
            f"(outside the preprocessed image: {shares}), so their scores compare features of "
            "different voxels; `ccfv bank check BANK --data DIR` shows each model's grid (align "
            "the crops/roi, or rank those models separately)")


_CONV = re.compile(r"Conv(?:Transpose)?([123])d$")


def network_dims(model) -> tuple[int, str] | None:
    """``(spatial dims, layer type)`` of a network's first convolution (``Conv3d`` -> 3),
    TorchScript modules included; None when it has no 1/2/3D convolution."""
    for module in model.modules():
        kind = getattr(module, "original_name", None) or type(module).__name__
        match = _CONV.search(str(kind))
        if match:
            return int(match.group(1)), str(kind)
    return None


def check_dimensionality(entry, model, case) -> None:
    """A UserError when the network's convolutions are not of the data's dimensionality (a
    3D network on 2D images, or the reverse), named as such, not as a window problem."""
    found = network_dims(model)
    ndim = case.label.ndim
    if found is None or found[0] == ndim:
        return
    dims, kind = found
    shape = "x".join(str(n) for n in case.label.shape)
    raise UserError(f"a {dims}D network ({kind} layers) on {ndim}D target data (case "
                    f"{case.case_id}: {shape}): rank {ndim}D networks on this data (for MONAI "
                    f"networks spatial_dims: {ndim} in the bank file), or this one on {dims}D "
                    "data")


def window_hint(entry, model, channels: int, roi, device="cpu") -> str | None:
    """Why a forward pass failed, when it is the window: the model runs on a zero window of
    ``roi`` rounded up to a multiple of 2, 4, ..., 64 (output of the window's size) but not on
    ``roi`` itself. Returns the sentence, or None when the window is not the cause."""
    import torch

    def runs(shape) -> bool:
        try:
            with torch.no_grad():
                out = model(torch.zeros(1, channels, *shape, device=device))
        except Exception:  # noqa: BLE001 - any failure means "does not run on this window"
            return False
        out = out[0] if isinstance(out, (list, tuple)) else out
        return isinstance(out, torch.Tensor) and tuple(out.shape[2:]) == tuple(shape)

    roi = [int(r) for r in roi]
    if not roi or runs(roi):
        return None
    text = "x".join(map(str, roi))
    for divisor in (2, 4, 8, 16, 32, 64):
        fixed = [-(-r // divisor) * divisor for r in roi]
        if fixed != roi and runs(fixed):
            strides = entry.args.get("strides") if isinstance(entry.args, dict) else None
            who = type(model).__name__
            if isinstance(strides, (list, tuple)) and strides:
                who += " with strides " + ",".join(str(s) for s in strides)
            return (f"{who} needs a window divisible by {divisor}; roi {text} is "
                    f"not: use {'x'.join(map(str, fixed))} (preprocessing: roi: {fixed} in the "
                    "bank file)")
    return None


def _failure_message(result: RankResult, what: str, error: BaseException,
                     failure_log: str | Path | None) -> str:
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


def output_probabilities(logits: np.ndarray) -> np.ndarray:
    """Class probabilities from output logits ``(P, C)``: softmax over C, or for a single
    output channel the sigmoid as two columns ``(1 - p, p)``; float64, rows sum to 1."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.shape[1] == 1:
        p = 1.0 / (1.0 + np.exp(-logits[:, 0]))
        return np.stack([1.0 - p, p], axis=1)
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def split_predictions(cached: dict) -> tuple[dict, list[np.ndarray] | None]:
    """A cached feature set -> (the hooked layers' feature set, the predictions per case)."""
    features = {k: v for k, v in cached.items() if k != PREDICTIONS}
    predictions = [P for P, _ in cached[PREDICTIONS]] if PREDICTIONS in cached else None
    return features, predictions


def score_features(features, methods: Sequence[str], predictions=None,
                   errors: dict | None = None) -> dict[str, float | None]:
    """Every method's score on one model's feature set (and its predictions, for the
    estimators that read them).

    With ``errors`` (a dict), a method that fails is scored None and its error kept there
    (``method -> exception``), so the other methods' scores stand; without, it raises."""
    out = {}
    for method in methods:
        estimator = get_estimator(method)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CCFVWarning)
                out[method] = float(estimator(features, predictions=predictions))
        except Exception as error:  # noqa: BLE001 - one method's failure is that method's
            if errors is None:
                raise
            errors[method] = error
            out[method] = None
    return out


def rank(bank: str | Path, data: str | Path, methods: Sequence[str] = ("ccfv",),
         cases: int | None = None, seed: int = 0, device: str = "cpu",
         cache_dir: str | Path = DEFAULT_CACHE, budget: str = "fixed",
         counts: Sequence[int] = (100, 200, 400), autocast: bool = False,
         bootstrap: int = 100, level: float = 0.95, progress: bool = True,
         log=print, on_model=None, backend: str = "local", address: str | None = None,
         retries: int = 3, failure_log: str | Path | None = None) -> RankResult:
    """Score every model of ``bank`` on the labelled cases under ``data``.

    Parameters
    ----------
    bank : bank YAML file (see README).
    data : target dataset folder (Decathlon, nnU-Net v2 raw, or images/labels folders).
    methods : estimator names (``ccfv``, ``ccfv-official``, ...); the first one ranks.
    cases : use this many cases, picked reproducibly with ``seed`` (default: all).
    seed : seeds case selection and voxel sampling.
    device : torch device for the feature pass (``cpu``, ``cuda``, ``cuda:1``); with the Ray
        backend ``cpu``, ``cuda`` (one GPU per task) or ``auto`` (a GPU per task when the
        cluster has GPUs, else a CPU).
    cache_dir : where sampled features are cached.
    budget, counts : the sampling plan (``fixed`` counts per case, class and layer, from the
        layer nearest the bottleneck to the output, or ``proportional``).
    bootstrap : replicates of the bootstrap over target cases for the first method (0: off);
        see :mod:`ccfv.bootstrap`. Re-scores cached features only, never runs a model.
    level : coverage of the bootstrap intervals.
    on_model : optional ``f(model name, feature set, predictions)``, called after each model
        is scored, for callers that compute more from the features (the benchmark records
        CC-FV's per-class terms this way).
    backend : ``local`` runs the feature passes here, one model after the other; ``ray`` runs
        each model's feature pass as a Ray task (:mod:`ccfv.ray_backend`) on the cluster
        ``address`` names, writing into the same ``cache_dir`` (which, like the bank's files
        and ``data``, must be a path every node sees); scoring, the bootstrap and
        ``on_model`` run here in both cases, in bank order, on the features read from the cache.
    address : Ray cluster address (Ray backend only); None: ``$RAY_ADDRESS``, else a cluster
        started with ``ray start`` on this machine, else a new local Ray instance.
    retries : Ray backend: how often a task whose worker died (or that hit an OSError) is
        retried before its model counts as failed.
    failure_log : file to which the traceback of every model failure that is not a
        :class:`~ccfv.errors.UserError` is appended (the one-line message names it); None:
        the tracebacks are kept in ``RankResult.tracebacks`` only.

    The arguments, the device, the cache folder and every method (on a small test feature
    set with as many cases, see :func:`check_methods`) are checked before any model runs.
    A model that fails (bad checkpoint, a window its network cannot take, a 3D network on 2D
    data, out of memory, any exception in its load or feature pass) is reported in
    ``RankResult.failures`` with its cause in one line, and the others are still scored; a
    method that fails on one model's features is scored None for that model only
    (``details["method_failures"]``). Planned voxels that land outside a model's preprocessed
    image (a crop) are dropped for that model and counted per case and class in
    ``details["dropped"]``; ``details["drop_warning"]`` says when the models' drop rates
    differ. Ctrl-C raises :class:`Interrupted`, whose message says which models' features are
    complete in the cache.
    """
    from ccfv.bank import load_bank
    from ccfv.data import load_case
    from ccfv.extract import FeatureCache, dropped_voxels

    for method in methods:
        get_estimator(method)
    check_cases(cases)
    check_bootstrap(bootstrap)
    if backend not in ("local", "ray"):
        raise UserError(f"backend {backend!r} is not one of local, ray")
    if backend == "ray":
        from ccfv.ray_backend import require_ray

        require_ray()
    elif address is not None:
        raise UserError(f"address {address!r} is for the Ray backend: add --backend ray or "
                        "drop --address")
    check_device(device, backend)
    check_folder(cache_dir, "--cache-dir")
    entries = load_bank(bank)
    dataset, chosen = target_cases(data, cases, seed)
    draws = resample_cases(len(chosen), bootstrap, seed) if bootstrap else []
    check_methods(methods, len(chosen), len(dataset.labels) or 2)
    loaded = [load_case(case, dataset.labels) for case in chosen]
    present = sorted({int(k) for case in loaded for k in np.unique(case.label)} - {0})
    if not present:
        raise UserError(f"{data}: the selected {len(loaded)} case(s) hold no foreground label; "
                        "choose other cases (--cases, --seed) or check the label files")
    missing = sorted(set(dataset.labels) - {0} - set(present))
    notes = []
    if missing and len(loaded) < len(dataset.cases):
        notes.append(f"{data}: class(es) {missing} of dataset.json appear in none of the "
                     f"{len(loaded)} selected cases (of {len(dataset.cases)}) and are not "
                     "scored; select more cases (--cases) or another --seed to include them")
    elif missing:
        notes.append(f"{data}: class(es) {missing} of dataset.json appear in none of the "
                     f"dataset's {len(loaded)} cases (all of them are used) and are not "
                     "scored; check the labels table of dataset.json and the label files")
    for note in notes:
        log(f"note: {note}")
    plan_for = plan_maker(loaded, budget, counts, seed)
    cache = FeatureCache(cache_dir)
    data_fp = data_fingerprint(chosen, dataset.labels)
    table = dataset.class_table(present)  # the class table used: report.md, scores.json
    result = RankResult(methods=list(methods), scores={}, details={
        "data": str(data), "bank": str(bank), "cases": [c.case_id for c in loaded],
        "classes": table["classes"], "label_rule": table["rule"],
        "seed": seed, "budget": budget, "counts": list(counts), "device": device,
        "per_model": {}})
    if notes:
        result.details["notes"] = notes
    dropped: dict[str, dict] = {}  # per model: planned voxels outside its preprocessed image
    replicates: dict[str, np.ndarray] = {}
    if backend == "ray":
        from ccfv.ray_backend import RayFeaturePasses

        feature_pass = RayFeaturePasses(
            entries, bank=bank, data=data, cases=cases, seed=seed,
            case_ids=[c.case_id for c in chosen], data_fp=data_fp, budget=budget,
            counts=counts, cache_dir=cache_dir, device=device, autocast=autocast, cache=cache,
            address=address, retries=retries, log=log)
        result.details.update(backend="ray", device=feature_pass.device)
    else:
        case_files = {c.case_id: str(c.images[0]) for c in chosen}

        def feature_pass(entry):
            return extract_model(entry, loaded, plan_for, cache, data_fp, device, autocast,
                                 progress, case_files)
    done: list[str] = []  # models whose features are complete in the cache
    current = None
    try:
        for entry in entries:
            current = entry.name
            start = time.perf_counter()
            errors: dict[str, BaseException] = {}
            try:
                cached, report, layers, hit = feature_pass(entry)
                done.append(entry.name)
                features, predictions = split_predictions(cached)
                dropped[entry.name] = dropped_voxels(plan_for(len(layers)), cached,
                                                     [str(spec) for spec in layers])  # "name:io"
                scores = score_features(features, methods, predictions, errors) if not draws \
                    else None
                if draws:  # the ranking method's tables are built once, for score and draws
                    try:
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore", CCFVWarning)
                            scorer = get_estimator(methods[0]).prepare(features, predictions)
                            first = float(scorer(np.arange(len(loaded))))
                    except Exception as error:  # noqa: BLE001 - the method's failure
                        errors[methods[0]], first, scorer = error, None, None
                    rest = score_features(features, methods[1:], predictions, errors)
                    scores = {methods[0]: first, **rest}
                    if scorer is not None:
                        replicates[entry.name] = replicate_scores(
                            features, predictions, get_estimator(methods[0]), draws,
                            progress=f"{entry.name}: bootstrap" if progress else None,
                            scorer=scorer)
                result.scores[entry.name] = scores
                if on_model is not None:
                    on_model(entry.name, features, predictions)
            except Exception as error:  # noqa: BLE001 - one model's failure is that model's
                message = _failure_message(result, entry.name, error, failure_log)
                result.failures[entry.name] = message
                result.scores[entry.name] = {m: None for m in methods}
                log(f"{entry.name}: FAILED: {message}")
                continue
            for method, error in errors.items():
                message = _failure_message(result, f"{entry.name} / {method}", error,
                                           failure_log)
                result.details.setdefault("method_failures", {}).setdefault(
                    entry.name, {})[method] = message
                log(f"{entry.name}: {method} FAILED: {message}")
            took = time.perf_counter() - start
            result.details["per_model"][entry.name] = (
                f"layers {[str(s) for s in layers]}; {report.summary()}; "
                f"{'features from cache' if hit else f'features extracted in {took:.1f} s'}")
            log(f"{entry.name}: " + ", ".join(
                f"{m} {'failed' if v is None else f'{v:.4f}'}"
                for m, v in result.scores[entry.name].items())
                + (" (cached features)" if hit else f" ({took:.1f} s)"))
            current = None
    except KeyboardInterrupt:
        close = getattr(feature_pass, "close", None)
        if close is not None:
            close()
        where = Path(cache_dir).resolve()
        text = (f"features of {len(done)} of {len(entries)} model(s) are complete in the cache "
                f"{where}" + (f" ({', '.join(done)})" if done else ""))
        if current is not None and current not in done:
            text += f"; any case of {current} finished before Ctrl-C is kept there too"
        raise Interrupted(text + "; the same command resumes from there") from None
    if dropped:
        result.details["dropped"] = dropped
        warning = drop_warning(dropped)
        if warning:
            result.details["drop_warning"] = warning
            log(f"warning: {warning}")
    if replicates:
        full = {m: result.scores[m][methods[0]] for m in replicates}
        result.bootstrap = summarize(methods[0], replicates, full, level, seed)
        result.details["bootstrap"] = result.bootstrap.to_dict()
    return result
