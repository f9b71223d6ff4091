"""Feature-space detectors of adversarial examples and their evaluation.

Example:
    >>> import jaxadv.detect as D
    >>> sorted(n for n in D.__all__ if n[0].isupper())
    ['BayesianUncertainty', 'DNNDetector', 'KernelDensity', 'LID', 'LogisticRegression', 'Mahalanobis']
"""

from jaxadv.detect.common import (
    LogisticRegression,
    attach,
    fit_logistic,
    load,
    model_fingerprint,
    read,
    read_with_model_id,
    save,
)
from jaxadv.detect.detectors import (
    LID,
    BayesianUncertainty,
    DNNDetector,
    KernelDensity,
    Mahalanobis,
    lid_mle,
)
from jaxadv.detect.evaluation import evaluate, rates, tpr_at_tnr

__all__ = [
    "LID",
    "BayesianUncertainty",
    "DNNDetector",
    "KernelDensity",
    "LogisticRegression",
    "Mahalanobis",
    "attach",
    "evaluate",
    "fit_logistic",
    "lid_mle",
    "load",
    "model_fingerprint",
    "rates",
    "read",
    "read_with_model_id",
    "save",
    "tpr_at_tnr",
]
