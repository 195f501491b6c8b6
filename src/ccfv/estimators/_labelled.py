"""Pooled, labelled samples of one layer and their spectrum: the input of the feature baselines.

LogME, TransRate, GBC and the H-scores ignore the case structure of a feature set: they see
one layer's samples of all cases stacked (:func:`ccfv.estimators.featureset.layer_samples`)
and the class id of each (0 = background, a class like the others). All of them compare
classes, so all need at least two classes among the samples.

Their linear algebra is one thin SVD of an n x d sample matrix, ``X = U diag(s) V^T``, taken
here from the eigendecomposition of the SMALLER Gram matrix (``X^T X`` when n >= d, ``X X^T``
when n < d): the cost is O(n d min(n, d)) + O(min(n, d)^3), so n < d costs no more than
n > d, and a matrix product of the Gram is several times faster than LAPACK's SVD of a tall
matrix. Squared singular values at or below ``lambda_max * max(n, d) * machine eps`` (the
round-off level of a Gram matrix's eigenvalues) count as zero: collinear or constant channels
are handled exactly, as rank-deficient directions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ccfv.errors import UserError
from ccfv.estimators.featureset import FeatureSet, layer_samples

_EPS = np.finfo(np.float64).eps


@dataclass(frozen=True)
class Labelled:
    """One layer's pooled samples with their classes.

    ``X`` float64 (n, d); ``labels`` int (n,) in 0..K-1, indexing ``classes`` (the class ids
    present, sorted); ``counts`` (K,) samples per class; ``layer`` the layer's name.
    """

    X: np.ndarray
    labels: np.ndarray
    classes: np.ndarray
    counts: np.ndarray
    layer: str

    def one_hot(self) -> np.ndarray:
        """(n, K) float indicator of each sample's class."""
        Y = np.zeros((self.labels.size, self.classes.size))
        Y[np.arange(self.labels.size), self.labels] = 1.0
        return Y


def labelled_samples(features: FeatureSet, layer: str | None, method: str) -> Labelled:
    """Pool ``layer`` (default: the last) and check that at least two classes are present."""
    X, y, _ = layer_samples(features, layer)
    name = layer if layer is not None else list(features.keys())[-1]
    classes, labels, counts = np.unique(y, return_inverse=True, return_counts=True)
    if len(classes) < 2:
        raise UserError(
            f"{method}: the {len(y)} samples of layer {name!r} hold a single class (id "
            f"{int(classes[0])}); the score compares classes and needs at least 2: sample "
            "background (0) and foreground voxels"
        )
    return Labelled(X, labels.reshape(-1), classes, counts, str(name))


def squared_singular_values(X: np.ndarray) -> np.ndarray:
    """All min(n, d) squared singular values of X (n x d), descending, round-off negatives 0."""
    n, d = X.shape
    lam = np.linalg.eigvalsh(X.T @ X if n >= d else X @ X.T)[::-1]
    return np.maximum(lam, 0.0)


def spectrum(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Numerically nonzero squared singular values of X and one set of singular vectors.

    Returns ``(lam, W, right)``: ``lam`` (r,) descending; ``W`` the matching right singular
    vectors V (d, r) when ``right`` (n >= d), else the left ones U (n, r).
    """
    n, d = X.shape
    right = n >= d
    lam, W = np.linalg.eigh(X.T @ X if right else X @ X.T)
    lam, W = lam[::-1], W[:, ::-1]
    if lam.size == 0 or lam[0] <= 0.0:
        return lam[:0], W[:, :0], right
    keep = lam > lam[0] * max(n, d) * _EPS
    return lam[keep], W[:, keep], right


def left_projections(X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``U^T Y`` and ``|Y - U U^T Y|^2`` per column, for the left singular vectors U of X.

    Returns ``(lam, P, residual)``: the numerically nonzero squared singular values (r,),
    ``P = U^T Y`` (r, m) and the squared norm of each column of Y outside the span of U (m,).
    When n >= d, ``U^T Y = diag(1/s) V^T (X^T Y)`` and the residual is ``|Y|^2 - |P|^2``
    (clipped at 0; its round-off is about 1e-8 of ``|Y|^2`` at worst); when n < d, U is at
    hand and the residual is computed directly (exactly 0 when X has rank n).
    """
    lam, W, right = spectrum(X)
    if right:
        P = (W.T @ (X.T @ Y)) / np.sqrt(lam)[:, None]
        residual = np.maximum(np.sum(Y**2, axis=0) - np.sum(P**2, axis=0), 0.0)
    else:
        P = W.T @ Y
        if lam.size == X.shape[0]:
            residual = np.zeros(Y.shape[1])
        else:
            residual = np.sum((Y - W @ P) ** 2, axis=0)
    return lam, P, residual
