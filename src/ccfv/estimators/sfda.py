"""SFDA: Self-challenging Fisher Discriminant Analysis (Shao et al., ECCV 2022).

Reference: Shao, Zhao, Wang, Wang, Luo, Liu, "Not All Models Are Equal: Predicting Model
Transferability in a Self-challenging Fisher Space", ECCV 2022, arXiv 2207.03036.
Every constant below is that of the authors' released code, ``SFDA`` and ``SFDA_Score`` in
``metrics.py`` and ``iterative_A`` in ``utils.py`` of github.com/TencentARC/SFDA.

With n samples x_i (rows of F, d channels), classes k = 1..C of n_k samples, priors
pi_k = n_k / n, class means mu_k::

    S_w       = sum_k pi_k Cov_k = 1/n sum_i (x_i - mu_{y_i})(x_i - mu_{y_i})^T   (biased covs)
    lambda    = max(exp(-a sigma_max(S_w)), 1e-10),  a = 5          (shrinkage from the data)
    S_w^l     = (1 - lambda) S_w + lambda (Tr S_w / d) I              (regularised within scatter)
    S_b^l     = [(1 - lambda) S_t + lambda (Tr S_t / d) I] - S_w^l     (S_t: total covariance)
    V         = all d generalised eigenvectors of (S_b^l, S_w^l), V^T S_w^l V = I
    z         = V^T x                                                  (the Fisher space)
    s_k(x)    = z . m_k - |m_k|^2 / 2 + log pi_k,   m_k = V^T mu_k     (LDA scores there)
    p(k | x)  = softmax_k s_k(x)

    ConfMix ("self-challenging"):
    q_i       = softmax( p(. | x_i) )_{y_i}          (the posteriors softened by a 2nd softmax)
    x~_i      = q_i x_i + (1 - q_i) mean_{k != y_i} mu_k   (towards the other classes' means)

    The same Fisher discriminant, with the same lambda, is fitted again on the x~_i, and

    SFDA      = 1/n sum_i log p~(y_i | x~_i)          (log=True, the paper's log-likelihood)
              = 1/n sum_i p~(y_i | x~_i)               (log=False, the released code)

Larger = more transferable. Notes on the constants and on two places where code and paper part:

- a = 5 and the floor 1e-10 are the code's. ``sigma_max(S_w)`` is the exact largest eigenvalue
  here; the code estimates it by 3 power iterations started from the row sums of S_w (the
  two agree once the iteration has converged). lambda depends on the scale of the features,
  which are not standardised (as in the code).
- The code keeps ALL d eigenvectors for the posteriors (only its ``transform`` keeps C - 1).
  Since V^T S_w^l V = I with V square, V V^T = (S_w^l)^-1, so
  ``s_k(x) = x^T (S_w^l)^-1 mu_k - mu_k^T (S_w^l)^-1 mu_k / 2 + log pi_k``: exactly shrinkage
  LDA, in which S_b^l cancels. That is how it is computed here (one symmetric eigendecomposition
  of S_w^l, eigenvalues floored at ``max * d * eps`` against round-off), without the
  generalised eigenproblem; the tests check the identity against the literal projection.
- The released code averages p(y_i | x~_i) without the log; its comment says the log of the
  method's score "is ignored in case of instability". Here the log-posterior comes from a
  log-sum-exp, which is finite however confident the classifier, so ``log=True`` is the
  default and ``log=False`` reproduces the code.
- The code assumes labels 0..C-1; here any class ids are mapped to 0..C-1 first.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_softmax, softmax

from ccfv.errors import UserError
from ccfv.estimators._labelled import labelled_samples
from ccfv.estimators._threads import one_blas_thread
from ccfv.estimators.featureset import FeatureSet

#: ``a`` in lambda = exp(-a sigma_max(S_w)) (released code).
SHRINKAGE_RATE = 5.0
#: Lower bound of lambda (released code).
MIN_SHRINKAGE = 1e-10


@one_blas_thread
def sfda_score(features: FeatureSet, *, layer: str | None = None, log: bool = True) -> float:
    """SFDA of a feature set's layer.

    Parameters
    ----------
    features : feature set ``{layer: [(X, y) per case]}``; the chosen layer's rows of all
        cases are pooled.
    layer : which layer; default the last (the layer before the final convolution).
    log : average the log-posterior of the true class (paper, default; <= 0) or the posterior
        itself (released code; in [0, 1]).

    Returns
    -------
    float; larger = more transferable.

    Raises
    ------
    UserError
        Fewer than 2 classes, or features constant within every class (no within-class
        scatter to regularise).
    """
    data = labelled_samples(features, layer, "sfda")
    X, labels = data.X, data.labels
    rows = np.arange(len(labels))
    shrinkage = _shrinkage(X, labels)
    first = softmax(_lda_scores(X, labels, shrinkage), axis=1)
    confidence = softmax(first, axis=1)[rows, labels]
    mixed = _confmix(X, labels, confidence)
    log_posterior = log_softmax(_lda_scores(mixed, labels, shrinkage), axis=1)[rows, labels]
    return float(np.mean(log_posterior) if log else np.mean(np.exp(log_posterior)))


def _class_means(X: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class counts (C,) and class means (C, d) for labels 0..C-1."""
    counts = np.bincount(labels).astype(np.float64)
    means = np.stack([X[labels == k].mean(axis=0) for k in range(len(counts))])
    return counts, means


def _within_scatter(X: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """S_w = sum_k pi_k Cov_k (biased class covariances), a (d, d) matrix."""
    _, means = _class_means(X, labels)
    residual = X - means[labels]
    return residual.T @ residual / X.shape[0]


def _shrinkage(X: np.ndarray, labels: np.ndarray) -> float:
    """lambda = max(exp(-a sigma_max(S_w)), 1e-10)."""
    largest = float(np.linalg.eigvalsh(_within_scatter(X, labels))[-1])
    return max(float(np.exp(-SHRINKAGE_RATE * largest)), MIN_SHRINKAGE)


def _lda_scores(X: np.ndarray, labels: np.ndarray, shrinkage: float) -> np.ndarray:
    """Shrinkage-LDA scores s_k(x_i), (n, C): the Fisher-space nearest-mean scores."""
    counts, means = _class_means(X, labels)
    within = _within_scatter(X, labels)
    d = within.shape[0]
    mean_var = np.trace(within) / d
    if not mean_var > 0:
        raise UserError(
            "sfda: the features are constant within every class (zero within-class scatter), "
            "so the Fisher discriminant is undefined: use another layer or check that the "
            "features are not all equal"
        )
    regularised = (1.0 - shrinkage) * within
    regularised.flat[:: d + 1] += shrinkage * mean_var
    evals, evecs = np.linalg.eigh(regularised)
    evals = np.maximum(evals, evals[-1] * d * np.finfo(np.float64).eps)
    coef = ((means @ evecs) / evals) @ evecs.T  # mu_k^T (S_w^l)^-1, (C, d)
    intercept = -0.5 * np.sum(coef * means, axis=1) + np.log(counts / counts.sum())
    return X @ coef.T + intercept


def _confmix(X: np.ndarray, labels: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """x~_i = q_i x_i + (1 - q_i) (mean of the other classes' means)."""
    _, means = _class_means(X, labels)
    n_classes = means.shape[0]
    others = (means.sum(axis=0) - means) / (n_classes - 1)  # (C, d)
    q = confidence[:, None]
    return q * X + (1.0 - q) * others[labels]
