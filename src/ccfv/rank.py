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
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ccfv.bootstrap import BootstrapResult, replicate_scores, resample_cases, summarize
from ccfv.data.fingerprint import data_fingerprint  # noqa: F401  (ccfv.rank.data_fingerprint)
from ccfv.errors import CCFVWarning, UserError
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

    def ranking(self) -> list[str]:
        key = self.methods[0]
        return sorted(self.scores, key=lambda m: -(self.scores[m].get(key) or -math.inf))


def target_cases(data: str | Path, cases: int | None, seed: int):
    """``(dataset, chosen cases)``: the target folder's cases, ``cases`` of them picked with
    ``seed`` (all when None). The one selection rule of a run, on the driver and on a Ray
    worker alike."""
    from ccfv.data import find_cases, select_cases

    dataset = find_cases(data)
    return dataset, (select_cases(dataset, cases, seed) if cases else list(dataset.cases))


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
    model = model.to(device)
    pre = entry.preprocessing
    ndim = loaded_cases[0].label.ndim
    preprocess = entry_preprocess(entry, ndim)  # its own, a bundle's or nnU-Net's
    described = describe_preprocessing(entry)
    taps = {spec.key: spec for spec in layers}
    taps[PREDICTIONS] = LayerSpec("", "output")  # the root module's output: the logits
    with LayerTap(model, taps) as forward:  # {name: map} for ``names`` and PREDICTIONS
        iterator = zip(loaded_cases, plan.cases)
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(list(iterator), desc=f"{entry.name}", unit="case", leave=False)
        for case, case_plan in iterator:
            if cache.get_case(key, case.case_id) is not None:
                continue
            image, affine = preprocess(case.image, case.affine)
            # planned voxels outside the preprocessed image (a crop) are dropped, and counted
            # later from the cached classes (ccfv.extract.dropped_voxels)
            points, keep = case_plan.points_inside(
                names, grid_mapping(case.affine, affine), image.shape[1:], model=entry.name,
                case_file=(case_files or {}).get(case.case_id, ""), preprocessing=described)
            roi = list(pre.roi) if pre.roi else list(image.shape[1:])
            points[PREDICTIONS] = points[names[-1]]
            feats = extract_at_points(forward, torch.as_tensor(image), points, roi,
                                      overlap=pre.overlap, sw_batch_size=pre.sw_batch_size,
                                      device=device, autocast=autocast)
            parts = {name: (feats[name], cls[kept])
                     for name, cls, kept in zip(names, case_plan.classes, keep)}
            parts[PREDICTIONS] = (output_probabilities(feats[PREDICTIONS]),
                                  case_plan.classes[-1][keep[-1]])
            cache.put_case(key, case.case_id, parts)
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


def score_features(features, methods: Sequence[str], predictions=None) -> dict[str, float]:
    """Every method's score on one model's feature set (and its predictions, for the
    estimators that read them)."""
    out = {}
    for method in methods:
        estimator = get_estimator(method)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CCFVWarning)
            out[method] = float(estimator(features, predictions=predictions))
    return out


def rank(bank: str | Path, data: str | Path, methods: Sequence[str] = ("ccfv",),
         cases: int | None = None, seed: int = 0, device: str = "cpu",
         cache_dir: str | Path = DEFAULT_CACHE, budget: str = "fixed",
         counts: Sequence[int] = (100, 200, 400), autocast: bool = False,
         bootstrap: int = 100, level: float = 0.95, progress: bool = True,
         log=print, on_model=None, backend: str = "local", address: str | None = None,
         retries: int = 3) -> RankResult:
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

    A model that fails (bad checkpoint, out of memory, ...) is reported in
    ``RankResult.failures`` and the others are still scored. Planned voxels that land outside
    a model's preprocessed image (a crop) are dropped for that model and counted per case and
    class in ``details["dropped"]``; ``details["drop_warning"]`` says when the models' drop
    rates differ.
    """
    from ccfv.bank import load_bank
    from ccfv.data import load_case
    from ccfv.extract import FeatureCache, dropped_voxels

    for method in methods:
        get_estimator(method)
    if backend not in ("local", "ray"):
        raise UserError(f"backend {backend!r} is not one of local, ray")
    if backend == "ray":
        from ccfv.ray_backend import require_ray

        require_ray()
    elif address is not None:
        raise UserError(f"address {address!r} is for the Ray backend: add --backend ray or "
                        "drop --address")
    entries = load_bank(bank)
    dataset, chosen = target_cases(data, cases, seed)
    loaded = [load_case(case, dataset.labels) for case in chosen]
    present = sorted({int(k) for case in loaded for k in np.unique(case.label)} - {0})
    if not present:
        raise UserError(f"{data}: the selected {len(loaded)} case(s) hold no foreground label; "
                        "choose other cases (--cases, --seed) or check the label files")
    missing = sorted(set(dataset.labels) - {0} - set(present))
    if missing:
        log(f"note: {data}: class(es) {missing} of dataset.json appear in none of the "
            f"{len(loaded)} selected cases and are not scored; select more cases (--cases) "
            "or another --seed to include them")
    plan_for = plan_maker(loaded, budget, counts, seed)
    cache = FeatureCache(cache_dir)
    data_fp = data_fingerprint(chosen, dataset.labels)
    table = dataset.class_table(present)  # the class table used: report.md, scores.json
    result = RankResult(methods=list(methods), scores={}, details={
        "data": str(data), "bank": str(bank), "cases": [c.case_id for c in loaded],
        "classes": table["classes"], "label_rule": table["rule"],
        "seed": seed, "budget": budget, "counts": list(counts), "device": device,
        "per_model": {}})
    draws = resample_cases(len(loaded), bootstrap, seed) if bootstrap else []
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
    for entry in entries:
        start = time.perf_counter()
        try:
            cached, report, layers, hit = feature_pass(entry)
            features, predictions = split_predictions(cached)
            dropped[entry.name] = dropped_voxels(plan_for(len(layers)), cached,
                                                 [str(spec) for spec in layers])  # "name:io"
            if draws:  # the ranking method's tables are built once, for the score and draws
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", CCFVWarning)
                    scorer = get_estimator(methods[0]).prepare(features, predictions)
                    first = float(scorer(np.arange(len(loaded))))
                rest = score_features(features, methods[1:], predictions)
                result.scores[entry.name] = {methods[0]: first, **rest}
                replicates[entry.name] = replicate_scores(
                    features, predictions, get_estimator(methods[0]), draws,
                    progress=f"{entry.name}: bootstrap" if progress else None, scorer=scorer)
            else:
                result.scores[entry.name] = score_features(features, methods, predictions)
            if on_model is not None:
                on_model(entry.name, features, predictions)
        except UserError as error:
            result.failures[entry.name] = str(error)
            result.scores[entry.name] = {m: None for m in methods}
            log(f"{entry.name}: FAILED: {error}")
            continue
        took = time.perf_counter() - start
        result.details["per_model"][entry.name] = (
            f"layers {[str(s) for s in layers]}; {report.summary()}; "
            f"{'features from cache' if hit else f'features extracted in {took:.1f} s'}")
        log(f"{entry.name}: " + ", ".join(f"{m} {v:.4f}" for m, v in
                                          result.scores[entry.name].items())
            + (" (cached features)" if hit else f" ({took:.1f} s)"))
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
