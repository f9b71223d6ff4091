"""Feature-space detectors of adversarial examples and their evaluation.

Example:
    >>> import jaxadv.detect as D
    >>> sorted(n for n in D.__all__ if n[0].isupper())
    ['BayesianUncertainty', 'DNNDetector', 'KernelDensity', 'LID', 'LogisticRegression', 'Mahalanobis']
"""

from jaxadv.detect.common import LogisticRegression, fit_logistic, load, read, save
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
    "evaluate",
    "fit_logistic",
    "lid_mle",
    "load",
    "rates",
    "read",
    "save",
    "tpr_at_tnr",
]
