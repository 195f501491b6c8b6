"""One model's feature pass on one target, and the types a feature backend hands back.

A run prepares its target once (:class:`FeatureTarget`: the selected and loaded cases, their
data fingerprint, the sampling plans, the feature cache) and a backend
(:mod:`ccfv.backends`) runs :func:`extract_model` for every bank entry on it, here or on a
Ray cluster, and yields one :class:`ModelFeatures` per entry, in bank order. Scoring happens
in :func:`ccfv.rank.rank`, on the features read from the cache, whichever backend ran the
passes.

The sampling plan depends only on the data, the budget and the seed (:func:`plan_maker`), so
every model is read at the same voxels (but those its preprocessing crops away, which are
dropped for it, :mod:`ccfv.extract.plan`); features are cached per (model fingerprint, data
fingerprint, plan fingerprint) and per case, so re-scoring with other methods never runs a
model again and a pass killed half-way redoes at most one case.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ccfv.data.fingerprint import data_fingerprint
from ccfv.errors import UserError, first_line
from ccfv.progress import progress as progress_iter

__all__ = [
    "PREDICTIONS",
    "FeatureTarget",
    "ModelFeatures",
    "check_dimensionality",
    "extract_model",
    "network_dims",
    "output_probabilities",
    "plan_maker",
    "split_predictions",
    "target_cases",
    "window_hint",
]

#: Name under which the feature cache holds the source model's own predictions: its softmax
#: (a sigmoid output becomes the two columns ``1 - p, p``) at the voxels planned for the last
#: hooked layer, read from the model's output by the same point-wise extraction. LEEP and NCE
#: read them; every other estimator sees only the hooked layers.
PREDICTIONS = "<model output>:softmax"


@dataclass(frozen=True)
class ModelFeatures:
    """What a feature backend hands back for one bank entry: its features or its failure.

    Attributes
    ----------
    model : the bank entry's name.
    features : the feature set as the cache holds it (``{layer: [(X, y) per case]}``, the
        predictions under :data:`PREDICTIONS`); None when the pass failed.
    layers : the hooked layers, as text (``name:input`` / ``name:output``).
    summary : how the weights were set (``LoadReport.summary()``) and, for a Ray task, where
        the pass ran.
    hit : the features came from the cache (no forward pass ran).
    error : why the pass failed (a :class:`~ccfv.errors.UserError` for a cause the user can
        fix; any other exception keeps its traceback for the failure log); None when it ran.
    """

    model: str
    features: dict[str, Any] | None = None
    layers: tuple[str, ...] = ()
    summary: str = ""
    hit: bool = False
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        """The pass gave features."""
        return self.error is None and self.features is not None


def target_cases(data: str | Path, cases: int | None, seed: int) -> tuple[Any, list[Any]]:
    """``(dataset, chosen cases)``: the target folder's cases, ``cases`` of them picked with
    ``seed`` (all when None). The one selection rule of a run, on the driver and on a Ray
    worker alike."""
    from ccfv.data import find_cases, select_cases

    dataset = find_cases(data)
    return dataset, (list(dataset.cases) if cases is None else select_cases(dataset, cases, seed))


def plan_maker(
    loaded_cases: Sequence[Any], budget: str, counts: Sequence[int], seed: int
) -> Callable[[int], Any]:
    """``plan_for(n_layers)``: the sampling plan of the loaded cases for a model with that
    many hooked layers, made once per layer count (the same plan for every model)."""
    from ccfv.extract import make_plan

    plans: dict[int, Any] = {}

    def plan_for(n_layers: int) -> Any:
        if n_layers not in plans:
            plans[n_layers] = make_plan(
                [c.label for c in loaded_cases],
                [c.case_id for c in loaded_cases],
                layers=n_layers,
                budget=budget,
                counts=list(counts),
                seed=seed,
            )
        return plans[n_layers]

    return plan_for


@dataclass
class FeatureTarget:
    """One target dataset, prepared once for every feature pass of a run.

    ``bank``, ``data``, ``cases`` and ``seed`` are the run's arguments (a Ray task redoes the
    selection from them); ``chosen`` the selected cases (:class:`ccfv.data.Case`), ``loaded``
    their volumes, ``labels`` the dataset's class table. ``cache`` and ``plan_for`` are made
    from the rest.
    """

    bank: str | Path
    data: str | Path
    entries: list[Any]
    cases: int | None
    seed: int
    chosen: list[Any]
    loaded: list[Any]
    labels: Mapping[int, str]
    budget: str
    counts: tuple[int, ...]
    cache_dir: Path
    autocast: bool = False
    progress: bool = True
    data_fp: str = field(init=False)
    cache: Any = field(init=False)
    plan_for: Callable[[int], Any] = field(init=False)

    def __post_init__(self) -> None:
        from ccfv.extract import FeatureCache

        self.data_fp = data_fingerprint(self.chosen, self.labels)
        self.cache = FeatureCache(self.cache_dir)
        self.plan_for = plan_maker(self.loaded, self.budget, self.counts, self.seed)

    @property
    def case_ids(self) -> list[str]:
        """The selected cases' ids, in run order."""
        return [c.case_id for c in self.chosen]

    @property
    def case_files(self) -> dict[str, str]:
        """``{case id: first image file}``, to name files in messages."""
        return {c.case_id: str(c.images[0]) for c in self.chosen}


def extract_model(
    entry: Any,
    loaded_cases: Sequence[Any],
    plan_for: Callable[[int], Any],
    cache: Any,
    data_fp: str,
    device: str = "cpu",
    autocast: bool = False,
    progress: bool = True,
    case_files: Mapping[str, str] | None = None,
) -> ModelFeatures:
    """Feature set of one bank entry on the loaded cases, from the cache where possible.

    ``case_files`` (``{case_id: image path}``, optional) names the files in messages. Raises
    what the load or the pass raised (the backends turn it into a failed
    :class:`ModelFeatures`)."""
    import torch

    from ccfv.bank import LayerSpec, fingerprint, load_model, resolve_layers
    from ccfv.bank.preprocess import describe_preprocessing, entry_preprocess
    from ccfv.extract import LayerTap, cache_key, extract_at_points
    from ccfv.extract.plan import grid_mapping

    model, report = load_model(entry)
    layers = resolve_layers(model, entry)
    as_text = tuple(str(spec) for spec in layers)  # "name:io"
    plan = plan_for(len(layers))
    key = cache_key(fingerprint(entry), data_fp, plan.fingerprint())
    cached = cache.get(key)
    if cached is not None:
        return ModelFeatures(entry.name, cached, as_text, report.summary(), hit=True)
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
            for case, case_plan in progress_iter(
                zip(loaded_cases, plan.cases), desc=f"{entry.name}", unit="case", enabled=progress
            ):
                if cache.get_case(key, case.case_id) is not None:
                    continue
                window = None
                image, affine = preprocess(case.image, case.affine)
                # planned voxels outside the preprocessed image (a crop) are dropped, and
                # counted later from the cached classes (ccfv.extract.dropped_voxels)
                points, keep = case_plan.points_inside(
                    names,
                    grid_mapping(case.affine, affine),
                    image.shape[1:],
                    model=entry.name,
                    case_file=(case_files or {}).get(case.case_id, ""),
                    preprocessing=described,
                )
                roi = list(pre.roi) if pre.roi else list(image.shape[1:])
                points[PREDICTIONS] = points[names[-1]]
                window = (int(image.shape[0]), roi)
                feats = extract_at_points(
                    forward,
                    torch.as_tensor(image),
                    points,
                    roi,
                    overlap=pre.overlap,
                    sw_batch_size=pre.sw_batch_size,
                    device=device,
                    autocast=autocast,
                )
                parts = {
                    name: (feats[name], cls[kept])
                    for name, cls, kept in zip(names, case_plan.classes, keep)
                }
                parts[PREDICTIONS] = (
                    output_probabilities(feats[PREDICTIONS]),
                    case_plan.classes[-1][keep[-1]],
                )
                cache.put_case(key, case.case_id, parts)
    except (RuntimeError, ValueError) as error:  # a forward pass that failed: say why if known
        if isinstance(error, UserError) or window is None:
            raise
        hint = window_hint(entry, model, *window, device)
        if hint is None:
            raise
        raise UserError(f"{hint} ({type(error).__name__}: {first_line(error)})") from error
    features = cache.assemble(
        key, [c.case_id for c in loaded_cases], info={"model": entry.name, "layers": names}
    )
    return ModelFeatures(entry.name, features, as_text, report.summary(), hit=False)


_CONV = re.compile(r"Conv(?:Transpose)?([123])d$")


def network_dims(model: Any) -> tuple[int, str] | None:
    """``(spatial dims, layer type)`` of a network's first convolution (``Conv3d`` -> 3),
    TorchScript modules included; None when it has no 1/2/3D convolution."""
    for module in model.modules():
        kind = getattr(module, "original_name", None) or type(module).__name__
        match = _CONV.search(str(kind))
        if match:
            return int(match.group(1)), str(kind)
    return None


def check_dimensionality(entry: Any, model: Any, case: Any) -> None:
    """A UserError when the network's convolutions are not of the data's dimensionality (a
    3D network on 2D images, or the reverse), named as such, not as a window problem."""
    found = network_dims(model)
    ndim = case.label.ndim
    if found is None or found[0] == ndim:
        return
    dims, kind = found
    shape = "x".join(str(n) for n in case.label.shape)
    raise UserError(
        f"a {dims}D network ({kind} layers) on {ndim}D target data (case "
        f"{case.case_id}: {shape}): rank {ndim}D networks on this data (for MONAI "
        f"networks spatial_dims: {ndim} in the bank file), or this one on {dims}D "
        "data"
    )


def window_hint(
    entry: Any, model: Any, channels: int, roi: Sequence[int], device: str = "cpu"
) -> str | None:
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
            return (
                f"{who} needs a window divisible by {divisor}; roi {text} is "
                f"not: use {'x'.join(map(str, fixed))} (preprocessing: roi: {fixed} in the "
                "bank file)"
            )
    return None


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


def split_predictions(cached: Mapping[str, Any]) -> tuple[dict[str, Any], list[np.ndarray] | None]:
    """A cached feature set -> (the hooked layers' feature set, the predictions per case)."""
    features = {k: v for k, v in cached.items() if k != PREDICTIONS}
    predictions = [P for P, _ in cached[PREDICTIONS]] if PREDICTIONS in cached else None
    return features, predictions
