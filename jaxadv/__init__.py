"""jaxadv: adversarial attacks on image classifiers in JAX.

Attacks are values: ``res = attack(key, model, x, y)`` with ``x`` float NHWC in ``[0, 1]`` and ``y``
integer labels; ``res.adv`` always lies in the threat set and ``res.success`` is recomputed on it.
Attacks maximise their loss; success means misclassified (or classified as the target).
"""

from jaxadv import checkpoint, data, durable, losses, metrics, multilabel
from jaxadv.attacks import APGD, APGDT, FGSM, FMN, PGD, REGISTRY, AbstractAttack, AutoAttack
from jaxadv.attacks.autoattack import EOT, RandomizedModel
from jaxadv.attacks.dgde import DGDE, DGDEOptions
from jaxadv.attacks.fab import FAB
from jaxadv.attacks.hopskipjump import HopSkipJump
from jaxadv.attacks.minnorm import CW, DDN, DeepFool
from jaxadv.attacks.nes import NES
from jaxadv.attacks.onepixel import OnePixel
from jaxadv.attacks.simba import SimBA
from jaxadv.attacks.sparse_rs import SparseRS
from jaxadv.attacks.square import Square
from jaxadv.attacks.zoo import ZOO
from jaxadv.engine import Evaluation, evaluate
from jaxadv.eps_sweep import EpsCurve, sweep_eps
from jaxadv.metrics import (
    accuracy,
    attack_success_rate,
    auc,
    auc_under_attack,
    clean_accuracy,
    robust_accuracy,
    ssim,
)
from jaxadv.models import Model, from_apply, from_linen, from_nnx
from jaxadv.multilabel import MultiLabel
from jaxadv.result import AttackResult
from jaxadv.sanity import SanityWarning, check_model
from jaxadv.threats import L0Pixels, L1Ball, L2Ball, LinfBall, Patch

__version__ = "0.1.0"

__all__ = [
    "APGD",
    "APGDT",
    "AutoAttack",
    "CW",
    "DDN",
    "DeepFool",
    "DGDE",
    "DGDEOptions",
    "EOT",
    "EpsCurve",
    "Evaluation",
    "FAB",
    "FMN",
    "FGSM",
    "HopSkipJump",
    "NES",
    "PGD",
    "REGISTRY",
    "RandomizedModel",
    "AbstractAttack",
    "AttackResult",
    "L0Pixels",
    "L1Ball",
    "L2Ball",
    "LinfBall",
    "Model",
    "MultiLabel",
    "OnePixel",
    "Patch",
    "SanityWarning",
    "SimBA",
    "SparseRS",
    "Square",
    "ZOO",
    "check_model",
    "from_apply",
    "from_linen",
    "from_nnx",
    "accuracy",
    "checkpoint",
    "data",
    "durable",
    "evaluate",
    "attack_success_rate",
    "auc",
    "auc_under_attack",
    "clean_accuracy",
    "losses",
    "metrics",
    "multilabel",
    "robust_accuracy",
    "ssim",
    "sweep_eps",
]
