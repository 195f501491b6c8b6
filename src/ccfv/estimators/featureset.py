"""The feature set: the only input the estimators ever see, and its validation.

A feature set maps a layer name to a list over target cases of ``(X, y)``:

- ``X``: float array, shape ``(n_samples, dim)``, the sampled voxel features of one case;
- ``y``: int array, shape ``(n_samples,)``, the class id of each sampled voxel
  (0 = background, 1..C = foreground classes).

Every layer holds the same cases in the same order; ``dim`` is fixed within a layer and may
differ between layers. :func:`validate_feature_set` checks all of this once, at the boundary,
and returns float64/int64 copies that the estimators then trust.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ccfv.errors import FeatureSetError

FeatureSet = Mapping[str, Sequence[tuple[np.ndarray, np.ndarray]]]
#: Indices of a subset of the cases of a feature set (a bootstrap draw is an int array).
CaseIndices = Sequence[int] | np.ndarray


def validate_feature_set(
    features: FeatureSet, layers: Sequence[str] | None = None, min_cases: int = 2
) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Check a feature set and return it as ``{layer: [(X float64, y int64), ...]}``.

    Parameters
    ----------
    features : mapping ``layer -> list of (X, y)``
    layers : names of the layers to keep (default: all, in the mapping's order).
    min_cases : the fewest cases an estimator can work with.

    Raises
    ------
    FeatureSetError
        With a message naming the layer, the case and the offending value: an empty set,
        an unknown layer, fewer than ``min_cases`` cases, a different number of cases between
        layers, ragged feature dims within a layer, features and labels of different length,
        non-integer or negative labels, NaN or Inf features.
    """
    if not isinstance(features, Mapping) or len(features) == 0:
        raise FeatureSetError(
            "the feature set is empty or not a mapping: pass {layer_name: [(X, y) per case]}, "
            "X of shape (n_samples, dim), y of shape (n_samples,)"
        )
    names = list(features.keys())
    if layers is not None:
        layers = [layers] if isinstance(layers, str) else list(layers)
        unknown = [name for name in layers if name not in features]
        if unknown:
            raise FeatureSetError(
                f"unknown layer(s) {unknown}: this feature set has layers {names}; "
                "pass a subset of those to `layers`"
            )
        if not layers:
            raise FeatureSetError(f"`layers` selects no layer: name at least one of {names}")
        names = layers
    out: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    n_cases = None
    for name in names:
        cases = features[name]
        if isinstance(cases, (np.ndarray, str)) or not isinstance(cases, Sequence):
            raise FeatureSetError(
                f"layer {name!r}: expected a list of (X, y) pairs, one per case, got "
                f"{type(cases).__name__}"
            )
        if len(cases) < min_cases:
            raise FeatureSetError(
                f"layer {name!r} holds {len(cases)} case(s); at least {min_cases} are needed "
                "to compare cases: add labelled target cases"
            )
        if n_cases is not None and len(cases) != n_cases:
            raise FeatureSetError(
                f"layer {name!r} holds {len(cases)} cases but layer {names[0]!r} holds "
                f"{n_cases}: every layer must hold the same cases in the same order"
            )
        n_cases = len(cases)
        dim = None
        checked = []
        for c, pair in enumerate(cases):
            try:
                X, y = pair
            except (TypeError, ValueError):
                raise FeatureSetError(
                    f"layer {name!r}, case {c}: expected a pair (X, y), got {type(pair).__name__}"
                ) from None
            X = np.asarray(X)
            y = np.asarray(y)
            if X.ndim != 2:
                raise FeatureSetError(
                    f"layer {name!r}, case {c}: X has shape {X.shape}; expected "
                    "(n_samples, dim): one row per sampled voxel"
                )
            if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
                raise FeatureSetError(
                    f"layer {name!r}, case {c}: X has dtype {X.dtype}; expected real numbers"
                )
            if y.ndim != 1 or y.shape[0] != X.shape[0]:
                raise FeatureSetError(
                    f"layer {name!r}, case {c}: {X.shape[0]} feature rows but labels of shape "
                    f"{y.shape}; expected one class id per row"
                )
            if dim is None:
                dim = X.shape[1]
            elif X.shape[1] != dim:
                raise FeatureSetError(
                    f"layer {name!r}, case {c}: features have dim {X.shape[1]} but case 0 has "
                    f"dim {dim}; all cases of one layer must come from the same layer"
                )
            if dim == 0:
                raise FeatureSetError(f"layer {name!r}: features have dim 0")
            X = X.astype(np.float64, copy=True)
            bad = ~np.isfinite(X)
            if bad.any():
                row, col = np.argwhere(bad)[0]
                raise FeatureSetError(
                    f"layer {name!r}, case {c}: {int(bad.sum())} non-finite feature value(s), "
                    f"first {X[row, col]} at sample {row}, channel {col}; the model produced "
                    "NaN/Inf: check its input normalisation or run it in float32"
                )
            if y.size and not np.issubdtype(y.dtype, np.integer):
                if not (
                    np.issubdtype(y.dtype, np.floating)
                    and np.all(np.isfinite(y))
                    and np.all(y == np.round(y))
                ):
                    raise FeatureSetError(
                        f"layer {name!r}, case {c}: labels must be integer class ids, got "
                        f"dtype {y.dtype} with values such as {y.flat[0]!r}"
                    )
            y = y.astype(np.int64, copy=True)
            if y.size and y.min() < 0:
                raise FeatureSetError(
                    f"layer {name!r}, case {c}: negative class id {int(y.min())}; class ids "
                    "are 0 (background) and 1..C"
                )
            checked.append((X, y))
        out[name] = checked
    return out


def foreground_classes(
    features: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray]]],
) -> list[int]:
    """Sorted foreground class ids (> 0) present anywhere in a validated feature set."""
    ids: set[int] = set()
    for cases in features.values():
        for _, y in cases:
            ids.update(int(v) for v in np.unique(y))
    return sorted(k for k in ids if k > 0)


def _chosen_layer(features: FeatureSet, layer: str | None) -> str | None:
    """``layer``, or by default the last layer of the feature set (None for a non-mapping,
    which validation then rejects with its message)."""
    if layer is not None:
        return layer
    names = list(features.keys()) if isinstance(features, Mapping) else []
    return names[-1] if names else None


def layer_samples(
    features: FeatureSet, layer: str | None = None, min_cases: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One layer's samples pooled over cases, for the estimators that ignore case structure.

    Parameters
    ----------
    features : feature set ``{layer: [(X, y) per case]}`` (validated here).
    layer : which layer; default the LAST one, which in ccfv's layer order (bottleneck ->
        output) is the input of the final convolution: "the layer before the final
        convolution" that the baselines of the CC-FV paper use.
    min_cases : fewest cases accepted (the pooled estimators work with one case).

    Returns
    -------
    X : float64 (n, d), every case's rows stacked in case order
    y : int64 (n,), class ids (0 = background, a class like the others here)
    case : int64 (n,), the case index of each row
    """
    name = _chosen_layer(features, layer)
    checked = validate_feature_set(
        features, layers=None if name is None else [name], min_cases=min_cases
    )
    cases = checked[name] if name is not None else []
    X = np.concatenate([X for X, _ in cases])
    y = np.concatenate([y for _, y in cases])
    case = np.concatenate([np.full(len(y_), c, dtype=np.int64) for c, (_, y_) in enumerate(cases)])
    if X.shape[0] == 0:
        raise FeatureSetError(f"layer {name!r} holds no sample in any case")
    return X, y, case


Predictions = Sequence[np.ndarray]


def validate_predictions(
    predictions: Predictions | None,
    features: FeatureSet,
    layer: str | None = None,
    *,
    method: str = "this estimator",
) -> np.ndarray:
    """Check source-model predictions against a feature set and pool them over cases.

    ``predictions`` holds one array per case, shape ``(n_samples, n_source_classes)``: the
    source model's softmax over ITS OWN classes at the very voxels of ``features[layer]``
    (row for row; ``layer`` defaults to the last layer, as in :func:`layer_samples`).
    ``ccfv rank`` extracts them alongside the features.

    Returns
    -------
    float64 (n, n_source_classes), rows of all cases stacked in case order; rows sum to 1.

    Raises
    ------
    FeatureSetError
        No predictions, another number of cases or rows than ``features[layer]``, NaN/Inf,
        negative values, rows that do not sum to 1 (pass probabilities, not logits).
    """
    if predictions is None:
        raise FeatureSetError(
            f"{method} needs the source model's predictions (its softmax over its source "
            "classes at the sampled voxels), given as predictions=[P per case]; `ccfv rank` "
            "extracts them with the features"
        )
    name = _chosen_layer(features, layer)
    checked = validate_feature_set(features, layers=None if name is None else [name], min_cases=1)
    cases = checked[name] if name is not None else []  # None: validation raised already
    if isinstance(predictions, np.ndarray) or len(predictions) != len(cases):
        n = "an array" if isinstance(predictions, np.ndarray) else f"{len(predictions)} case(s)"
        raise FeatureSetError(
            f"predictions hold {n} but layer {name!r} holds {len(cases)} cases: give one "
            "(n_samples, n_source_classes) array per case, aligned with the layer's rows"
        )
    pooled = []
    width = None
    for c, (P, (X, _)) in enumerate(zip(predictions, cases)):
        P = np.asarray(P, dtype=np.float64)
        if P.ndim != 2 or P.shape[0] != X.shape[0]:
            raise FeatureSetError(
                f"predictions, case {c}: shape {P.shape}, but layer {name!r} has "
                f"{X.shape[0]} rows in that case; expected ({X.shape[0]}, n_source_classes)"
            )
        if width is None:
            width = P.shape[1]
        elif P.shape[1] != width:
            raise FeatureSetError(
                f"predictions, case {c}: {P.shape[1]} source classes but case 0 has {width}"
            )
        if not np.all(np.isfinite(P)):
            raise FeatureSetError(f"predictions, case {c}: NaN or Inf values")
        if P.size and (P.min() < 0 or not np.allclose(P.sum(axis=1), 1.0, atol=1e-4)):
            raise FeatureSetError(
                f"predictions, case {c}: rows must be probabilities (>= 0, summing to 1; "
                f"row 0 sums to {P[0].sum():.6g}): apply a softmax to logits first"
            )
        pooled.append(P)
    if width is None or width < 1:
        raise FeatureSetError("predictions have no source class")
    return np.concatenate(pooled)
