"""NCE: Negative Conditional Entropy (Tran et al., ICCV 2019).

Reference: Tran, Nguyen, Hassner, "Transferability and Hardness of Supervised Classification
Tasks", ICCV 2019, arXiv 1908.08142. Checked against the TLlib
implementation (``tllib/ranking/nce.py``) and PARC's ``methods.NegativeCrossEntropy``.

Each target sample i gets a hard source label ``z_i = argmax_z theta(x_i)_z`` (the source
model's most likely source class; ties go to the lowest index) and its target class ``y_i``::

    P(y, z)  = 1/n #{i : y_i = y, z_i = z}                (empirical joint)
    P(z)     = sum_y P(y, z)
    NCE      = -H(Y | Z) = sum_{y,z: P(y,z) > 0} P(y, z) log( P(y, z) / P(z) )

NCE <= 0 (0 when the source label determines the target class); larger = more transferable.
Terms with ``P(y, z) = 0`` are 0 (the limit ``p log p -> 0``): no epsilon is added, unlike
PARC's re-implementation (``eps = 1e-5``) and TLlib (``1e-20``), so the value is exact.
In ccfv a sample is a sampled voxel of the chosen layer and its target class is the voxel's
class id (0 = background counts as a class).
"""

from __future__ import annotations

import numpy as np

from ccfv.estimators._labelled import labelled_samples
from ccfv.estimators._threads import one_blas_thread
from ccfv.estimators.featureset import FeatureSet, validate_predictions


@one_blas_thread
def nce_score(features: FeatureSet, predictions, *, layer: str | None = None) -> float:
    """Negative conditional entropy of the target labels given the source model's labels.

    Parameters
    ----------
    features : feature set ``{layer: [(X, y) per case]}``; only the labels ``y`` of ``layer``
        are used (X only fixes the row count the predictions must match).
    predictions : list of arrays, one per case, shape ``(n_samples, n_source_classes)``: the
        source model's softmax over its source classes at the rows of ``features[layer]``.
    layer : which layer's samples; default the last (the layer before the final convolution).

    Returns
    -------
    float, <= 0; larger = the source labels say more about the target labels.

    Raises
    ------
    FeatureSetError
        Missing or misaligned predictions, or rows that are not probabilities.
    UserError
        Fewer than 2 target classes among the samples.
    """
    labels = labelled_samples(features, layer, "nce").labels
    theta = validate_predictions(predictions, features, layer, method="nce")
    return _nce(np.argmax(theta, axis=1), labels)


def _nce(source_labels: np.ndarray, labels: np.ndarray) -> float:
    """-H(Y|Z) from hard source labels and target labels (both non-negative ints)."""
    n = len(labels)
    _, z = np.unique(source_labels, return_inverse=True)  # only the source classes that occur
    n_classes, n_source = int(labels.max()) + 1, int(z.max()) + 1
    counts = np.bincount(labels * n_source + z, minlength=n_classes * n_source)
    joint = counts.reshape(n_classes, n_source) / n
    marginal = joint.sum(axis=0)  # > 0 for every occurring z
    nonzero = joint > 0
    # joint <= marginal holds in floating point too (a rounded sum of non-negative terms is
    # >= each term) and rounded division is monotone, so ratio <= 1 and NCE <= 0 without a clip
    ratio = joint / marginal
    return float(np.sum(joint[nonzero] * np.log(ratio[nonzero])))
