"""TransRate: the coding-rate estimate of the mutual information between features and labels.

Reference: Huang, Huang, Rong, Yang, Wei, "Frustratingly Easy Transferability Estimation",
ICML 2022, arXiv 2106.09362. The constants are those of the authors' code (the listing the
paper gives, as reproduced in TLlib ``tllib/ranking/transrate.py`` and the SFDA repository's
``TransRate``), which computes::

    R(Z, eps) = 1/2 log det(I_d + 1/(n eps) Z^T Z)        Z: n x d, eps = 1e-4

With X (n x d) the pooled features of one layer and Z = X - mean(X) (centred ONCE, over all
samples; the rows of class k are then taken from this Z and not re-centred)::

    TrR = R(Z, eps) - 1/K sum_k R(Z_k, eps)

where Z_k (n_k x d) holds the rows of class k, its own n_k in the constant, and K counts the
classes present (background 0 included). The coding rate of MCR^2 (Yu et al., NeurIPS 2020),
``1/2 log det(I + d/(n eps^2) Z^T Z)``, has another constant; this module follows the authors'
code, ``1/(n eps)``. The release averages over ``range(max(y) + 1)``, which breaks on an absent
class id (an empty Z_k); here only the classes present are averaged. TransRate is not scale
invariant: ``eps`` is an absolute distortion in the units of the features (the release does
not normalise them either).

By Sylvester's identity ``det(I_d + c Z^T Z) = det(I_n + c Z Z^T)``, so the log determinant is
``sum_i log(1 + c s_i^2)`` over the eigenvalues s_i^2 of the SMALLER Gram matrix (Z^T Z when
n >= d, Z Z^T when n < d; round-off negatives clipped to 0): cost O(n d min(n, d)), exact for
n < d and for collinear or constant channels (a zero eigenvalue adds log 1 = 0). An eigenvalue
error of machine-eps * s_max^2 moves a term by at most that over n eps: negligible.
Larger = more transferable.
"""

from __future__ import annotations

import numpy as np

from ccfv.errors import UserError
from ccfv.estimators._labelled import labelled_samples, squared_singular_values
from ccfv.estimators._threads import one_blas_thread
from ccfv.estimators.featureset import FeatureSet


@one_blas_thread
def transrate_score(features: FeatureSet, *, layer: str | None = None, eps: float = 1e-4) -> float:
    """TransRate of one layer's pooled features for the voxel classes (larger = better).

    Parameters
    ----------
    features : feature set ``{layer: [(X, y) per case]}``.
    layer : which layer; default the last (the layer before the final convolution).
    eps : the distortion of the coding rate (the release's 1e-4), in squared feature units.

    Returns
    -------
    float: ``R(Z, eps) - mean_k R(Z_k, eps)`` in nats.

    Raises
    ------
    UserError
        Fewer than 2 classes among the samples, or ``eps`` not a positive number.
    FeatureSetError
        A malformed feature set.
    """
    if not (isinstance(eps, (int, float, np.floating)) and np.isfinite(eps) and eps > 0):
        raise UserError(f"transrate: eps must be a positive number, got {eps!r}")
    data = labelled_samples(features, layer, "transrate")
    Z = data.X - data.X.mean(axis=0)
    whole = _coding_rate(Z, eps)
    per_class = [_coding_rate(Z[data.labels == c], eps) for c in range(data.classes.size)]
    return float(whole - np.mean(per_class))


def _coding_rate(Z: np.ndarray, eps: float) -> float:
    """``1/2 log det(I + Z^T Z / (n eps))`` from the squared singular values of Z (n x d)."""
    lam = squared_singular_values(Z)
    return 0.5 * float(np.sum(np.log1p(lam / (Z.shape[0] * eps))))
