"""ccfv: which pre-trained segmentation model should I fine-tune on my data?

The estimators take a *feature set*, ``{layer: [(X, y) per case]}``: X (n_samples, dim)
sampled voxel features of one target case, y (n_samples,) their class ids (0 = background).
LEEP and NCE also take ``predictions``: per case the source model's softmax at the rows of
the last layer. Every estimator is registered by name in
``ccfv.estimators.registry.ESTIMATORS``; :mod:`ccfv.evaluation` scores an estimator against
fine-tuned Dice and :mod:`ccfv.bootstrap` resamples target cases.
"""

from ccfv.errors import CCFVWarning, FeatureSetError, UserError
from ccfv.estimators.ccfv import (
    CCFVResult,
    CCFVTables,
    LayerParts,
    ccfv_parts,
    ccfv_score,
    ccfv_tables,
)
from ccfv.estimators.featureset import validate_feature_set
from ccfv.estimators.gbc import gbc_score
from ccfv.estimators.hscore import hscore, regularized_hscore
from ccfv.estimators.leep import leep_score
from ccfv.estimators.logme import logme_score
from ccfv.estimators.nce import nce_score
from ccfv.estimators.nleep import nleep_score
from ccfv.estimators.parc import parc_score
from ccfv.estimators.registry import ESTIMATORS, get_estimator
from ccfv.estimators.sfda import sfda_score
from ccfv.estimators.transrate import transrate_score

__version__ = "0.1.0"

__all__ = [
    "CCFVResult",
    "CCFVTables",
    "CCFVWarning",
    "ESTIMATORS",
    "FeatureSetError",
    "LayerParts",
    "UserError",
    "ccfv_parts",
    "ccfv_score",
    "ccfv_tables",
    "gbc_score",
    "get_estimator",
    "hscore",
    "leep_score",
    "logme_score",
    "nce_score",
    "nleep_score",
    "parc_score",
    "regularized_hscore",
    "sfda_score",
    "transrate_score",
    "validate_feature_set",
    "__version__",
]
