"""CC-FV in a common number of principal components per layer (``ccfv-pca``).

Per layer l, with P_l all sampled features of that layer pooled over the cases (background
included), mu_l their mean and V_l (d x k) the top-k eigenvectors of their covariance::

    Z_j        = (X_j - mu_l) V_l              (k_l = min(components, rank of P_l); default
                                                components = 8; a warning where k_l < it)
    Z_j        = Z_j diag(lambda_1..k)^-1/2    (whiten=true only)
    ccfv-pca   = ccfv(Z)                       (the default CC-FV: paper formulas, class
                                                Gaussians and variety on the unit sphere)

Why, in general: the default CC-FV compares networks whose hooked layers have different
numbers of channels and very different spectra. Its two terms are distances and energies on
the unit sphere of the layer's feature space, and both depend on how many directions the
features spread over (the W2 of two Gaussians sums over every direction; the hyperspherical
energy of a cloud falls as its effective dimension grows), and on where the origin is: a ReLU
or a normalisation-plus-ReLU output lies in one orthant, so its unit-normalised rows crowd
into one cone whose width says more about the architecture than about the target. Centring
on the pooled target mean puts the origin at the features' centre (the score becomes
invariant to adding a common vector to every feature, which the default is not), and keeping
the same number k of principal directions in every layer of every model compares each model
on the same number of degrees of freedom: the k directions along which the model's features
of this target vary most. ``whiten=true`` also equalises their variances, so that only the
arrangement of cases and classes relative to the pooled spread counts, not the spectrum.

The principal directions are fitted once, on all the cases; re-scoring a subset of cases
(the bootstrap) uses those directions (:func:`ccfv_pca_tables`), as a user who scores a target
fits them on the cases at hand. Invariant to rescaling, channel permutations, orthogonal
maps, zero-padding and translations of the features (sign flips of the components are
orthogonal maps of Z, which CC-FV on the unit sphere ignores).
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Sequence

import numpy as np

from ccfv.errors import CCFVWarning, UserError
from ccfv.estimators._labelled import spectrum
from ccfv.estimators._threads import one_blas_thread
from ccfv.estimators.ccfv import CCFVTables, ccfv_tables
from ccfv.estimators.featureset import FeatureSet, validate_feature_set

#: Principal components kept per layer by default. A common number must not exceed the
#: smallest hooked layer of the bank: MONAI's SegResNet and DynUNet with their default widths
#: feed their final convolution with 8 channels (the benchmark's banks hook such layers).
DEFAULT_COMPONENTS = 8


def centred(
    data: dict[str, list[tuple[np.ndarray, np.ndarray]]],
) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Every layer's features minus their mean pooled over all its cases (a validated feature
    set in, labels unchanged)."""
    out = {}
    for layer, cases in data.items():
        mu = np.concatenate([X for X, _ in cases]).mean(axis=0)
        out[layer] = [(X - mu, y) for X, y in cases]
    return out


def principal_features(
    features: FeatureSet,
    components: int = DEFAULT_COMPONENTS,
    *,
    whiten: bool = False,
    layers: Sequence[str] | None = None,
) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Every layer's features centred on the pooled mean and projected on its top
    ``components`` principal directions (whitened with ``whiten``); labels unchanged.

    Raises
    ------
    UserError
        ``components`` not an integer >= 1, or a layer whose features are all equal.

    Warns
    -----
    CCFVWarning
        A layer with fewer principal directions than ``components`` (scored on those).
    """
    if (
        isinstance(components, bool)
        or not isinstance(components, numbers.Integral)
        or components < 1
    ):
        raise UserError(
            f"ccfv-pca: components={components!r}: use an integer >= 1 "
            f"(default {DEFAULT_COMPONENTS})"
        )
    data = validate_feature_set(features, layers=layers)
    out = {}
    for layer, cases in data.items():
        pooled = np.concatenate([X for X, _ in cases])
        mu = pooled.mean(axis=0)
        Xc = pooled - mu
        lam, W, right = spectrum(Xc)
        if lam.size == 0:
            raise UserError(
                f"ccfv-pca: every sampled feature of layer {layer!r} is the same "
                "vector, so it has no principal direction: check the layer"
            )
        k = min(int(components), lam.size)
        if k < components:
            warnings.warn(
                f"ccfv-pca: layer {layer!r} has {lam.size} principal direction(s) "
                f"(dim {pooled.shape[1]}), fewer than components={components}; it is "
                "scored on those, so its terms are not on the common number of "
                "dimensions: lower components to the smallest layer of the bank",
                CCFVWarning,
                stacklevel=2,
            )
        lam = lam[:k]
        V = W[:, :k] if right else Xc.T @ W[:, :k] / np.sqrt(lam)
        if whiten:
            V = V / np.sqrt(lam / max(pooled.shape[0] - 1, 1))
        out[layer] = [((X - mu) @ V, y) for X, y in cases]
    return out


@one_blas_thread
def ccfv_pca_tables(
    features: FeatureSet,
    *,
    components: int = DEFAULT_COMPONENTS,
    whiten: bool = False,
    distance: str = "wasserstein",
    s: float = 1.0,
    layers: Sequence[str] | None = None,
    ridge: float = 1e-3,
    workers: int | None = None,
) -> CCFVTables:
    """The CC-FV tables (:func:`ccfv.estimators.ccfv.ccfv_tables`, default ``ccfv``) of the
    principal features (:func:`principal_features`); ``.score(cases)`` re-scores a subset."""
    projected = principal_features(features, components, whiten=whiten, layers=layers)
    return ccfv_tables(
        projected,
        "paper",
        distance=distance,
        s=s,
        ridge=ridge,
        normalize_consistency=True,
        workers=workers,
    )


def ccfv_pca_score(
    features: FeatureSet,
    *,
    components: int = DEFAULT_COMPONENTS,
    whiten: bool = False,
    distance: str = "wasserstein",
    s: float = 1.0,
    layers: Sequence[str] | None = None,
    ridge: float = 1e-3,
    workers: int | None = None,
) -> float:
    """``ccfv-pca``: the default CC-FV on each layer's features centred on the pooled target
    mean and projected on their top ``components`` principal directions (larger = better).

    Parameters
    ----------
    features : feature set ``{layer: [(X, y) per case]}``.
    components : principal directions kept per layer (fewer, with a warning, where a layer's
        pooled features have lower rank).
    whiten : divide each component by its standard deviation.
    distance, s, layers, ridge, workers : as :func:`ccfv.ccfv_parts`.
    """
    return ccfv_pca_tables(
        features,
        components=components,
        whiten=whiten,
        distance=distance,
        s=s,
        layers=layers,
        ridge=ridge,
        workers=workers,
    ).score()
