"""ccfv: which pre-trained segmentation model should I fine-tune on my data?

The estimators take a *feature set*, ``{layer: [(X, y) per case]}``: X (n_samples, dim)
sampled voxel features of one target case, y (n_samples,) their class ids (0 = background).
"""

from ccfv.errors import CCFVWarning, FeatureSetError, UserError
from ccfv.estimators.ccfv import CCFVResult, LayerParts, ccfv_parts, ccfv_score
from ccfv.estimators.featureset import validate_feature_set

__version__ = "0.1.0"

__all__ = [
    "CCFVResult",
    "CCFVWarning",
    "FeatureSetError",
    "LayerParts",
    "UserError",
    "ccfv_parts",
    "ccfv_score",
    "validate_feature_set",
    "__version__",
]
