"""LEEP: Log Expected Empirical Prediction (Nguyen et al., ICML 2020).

Reference: Nguyen, Hassner, Seeger, Archambeau, "LEEP: A New Measure to Evaluate
Transferability of Learned Representations", ICML 2020, arXiv 2002.12462. Checked
against the TLlib implementation (``tllib/ranking/leep.py``) and PARC's ``methods.LEEP``.

With ``theta(x_i)`` the source model's softmax over ITS OWN classes z at target sample i and
``y_i`` the sample's target class::

    P(y, z)   = 1/n sum_i theta(x_i)_z [y_i = y]        (empirical joint)
    P(z)      = sum_y P(y, z)  = 1/n sum_i theta(x_i)_z
    P(y | z)  = P(y, z) / P(z)                           (0 for a z with P(z) = 0)
    LEEP      = 1/n sum_i log sum_z P(y_i | z) theta(x_i)_z

LEEP <= 0; larger = more transferable. In ccfv a sample is a sampled voxel of the chosen layer
and its target class is the voxel's class id (0 = background is a class like the others);
``predictions`` are the source model's softmax at the very same voxels (see
:func:`ccfv.estimators.featureset.validate_predictions`).

The log never sees 0: for every i some z has ``theta(x_i)_z >= 1/Z`` (a row sums to 1), so
``P(y_i | z) >= 1/(nZ)`` and the inner sum is at least ``1/(n Z^2)``. Some implementations (the
SFDA repository's ``LEEP``) drop the log; this one follows the paper.
"""

from __future__ import annotations

import numpy as np

from ccfv.estimators._labelled import labelled_samples
from ccfv.estimators._threads import one_blas_thread
from ccfv.estimators.featureset import FeatureSet, validate_predictions


@one_blas_thread
def leep_score(features: FeatureSet, predictions, *, layer: str | None = None) -> float:
    """LEEP of a source model's predictions for the target labels of a feature set.

    Parameters
    ----------
    features : feature set ``{layer: [(X, y) per case]}``; only the labels ``y`` of ``layer``
        are used (X only fixes the row count the predictions must match).
    predictions : list of arrays, one per case, shape ``(n_samples, n_source_classes)``: the
        source model's softmax over its source classes at the rows of ``features[layer]``.
    layer : which layer's samples; default the last (the layer before the final convolution).

    Returns
    -------
    float, <= 0; larger = the source predictions explain the target labels better.

    Raises
    ------
    FeatureSetError
        Missing predictions, predictions misaligned with the layer's rows, or rows that are
        not probabilities (logits).
    UserError
        Fewer than 2 target classes among the samples.
    """
    labels = labelled_samples(features, layer, "leep").labels
    theta = validate_predictions(predictions, features, layer, method="leep")
    return _leep(theta, labels)


def _leep(theta: np.ndarray, labels: np.ndarray) -> float:
    """LEEP from probabilities ``theta`` (n, Z) and target labels 0..K-1 (n,)."""
    theta = theta / theta.sum(axis=1, keepdims=True)  # exact row sums (inputs are within 1e-4)
    n = theta.shape[0]
    n_classes = int(labels.max()) + 1
    joint = np.stack([theta[labels == k].sum(axis=0) for k in range(n_classes)]) / n  # P(y, z)
    marginal = joint.sum(axis=0)  # P(z)
    conditional = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)
    expected = np.einsum("iz,iz->i", theta, conditional[labels])
    # ``expected`` is a convex combination of the P(y_i | z) <= 1, so <= 1 in exact arithmetic;
    # the sums can round to 1 + 1e-16 when one component holds a class (N-LEEP's mixture does
    # on separated classes), and log of that is > 0. Clip to 1 so LEEP (and N-LEEP) stay <= 0.
    expected = np.minimum(expected, 1.0)
    return float(np.mean(np.log(expected)))
