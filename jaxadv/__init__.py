"""jaxadv: adversarial attacks on image classifiers in JAX.

Attacks are values: ``res = attack(key, model, x, y)`` with ``x`` float NHWC in ``[0, 1]`` and ``y``
integer labels; ``res.adv`` always lies in the threat set and ``res.success`` is recomputed on it.
Attacks maximise their loss; success means misclassified (or classified as the target).
"""

from jaxadv import losses
from jaxadv.attacks import FGSM, PGD, REGISTRY, AbstractAttack
from jaxadv.models import Model, from_apply, from_linen, from_nnx
from jaxadv.result import AttackResult
from jaxadv.threats import L1Ball, L2Ball, LinfBall

__version__ = "0.1.0"

__all__ = [
    "FGSM",
    "PGD",
    "REGISTRY",
    "AbstractAttack",
    "AttackResult",
    "L1Ball",
    "L2Ball",
    "LinfBall",
    "Model",
    "from_apply",
    "from_linen",
    "from_nnx",
    "losses",
]
