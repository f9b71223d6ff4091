"""jaxadv: adversarial attacks on image classifiers in JAX.

Attacks are values: ``res = attack(key, model, x, y)`` with ``x`` float NHWC in ``[0, 1]`` and ``y``
integer labels; ``res.adv`` always lies in the threat set and ``res.success`` is recomputed on it.
Attacks maximise their loss; success means misclassified (or classified as the target).
"""

from jaxadv import (
    checkpoint,
    data,
    defences,
    detect,
    durable,
    losses,
    metrics,
    multilabel,
    segmentation,
)
from jaxadv.attacks import APGD, APGDT, FGSM, FMN, PGD, REGISTRY, AbstractAttack, AutoAttack
from jaxadv.attacks.autoattack import EOTLogits, RandomizedModel
from jaxadv.attacks.bias import BiasField, BiasFieldThreat
from jaxadv.attacks.dense import ASMA, DAG, SegPGD
from jaxadv.attacks.dgde import DGDE, DGDEOptions
from jaxadv.attacks.eot import EOT, RandomAffine
from jaxadv.attacks.fab import FAB
from jaxadv.attacks.hfc import HFC, Adaptive
from jaxadv.attacks.hopskipjump import HopSkipJump
from jaxadv.attacks.minnorm import CW, DDN, DeepFool
from jaxadv.attacks.momentum import MIFGSM
from jaxadv.attacks.nes import NES
from jaxadv.attacks.onepixel import OnePixel
from jaxadv.attacks.patch import AdversarialPatch, FittedPatch
from jaxadv.attacks.simba import SimBA
from jaxadv.attacks.sparse_rs import SparseRS
from jaxadv.attacks.square import Square
from jaxadv.attacks.universal import FittedPerturbation, UniversalPerturbation, load_fitted
from jaxadv.attacks.zoo import ZOO
from jaxadv.engine import Evaluation, evaluate
from jaxadv.eps_sweep import EpsCurve, sweep_eps
from jaxadv.features import FeatureModel, from_feature_fn, with_features
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
from jaxadv.segmentation import dice, iou, pixel_accuracy
from jaxadv.surrogate import (
    Ensemble,
    QueriedSurrogate,
    Transfer,
    surrogate_from_queries,
    transfer,
)
from jaxadv.threats import L0Pixels, L1Ball, L2Ball, LinfBall, Patch

__version__ = "0.1.0"

__all__ = [
    "AdversarialPatch",
    "BiasField",
    "BiasFieldThreat",
    "FittedPatch",
    "FittedPerturbation",
    "UniversalPerturbation",
    "load_fitted",
    "APGD",
    "APGDT",
    "Adaptive",
    "FeatureModel",
    "HFC",
    "detect",
    "from_feature_fn",
    "with_features",
    "AutoAttack",
    "CW",
    "DDN",
    "DeepFool",
    "DGDE",
    "DGDEOptions",
    "EOT",
    "EOTLogits",
    "RandomAffine",
    "Ensemble",
    "QueriedSurrogate",
    "EpsCurve",
    "Evaluation",
    "FAB",
    "FMN",
    "FGSM",
    "HopSkipJump",
    "MIFGSM",
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
    "defences",
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
    "surrogate_from_queries",
    "transfer",
    "Transfer",
    "sweep_eps",
    # segmentation (dense targets)
    "ASMA",
    "DAG",
    "SegPGD",
    "dice",
    "iou",
    "pixel_accuracy",
    "segmentation",
]
