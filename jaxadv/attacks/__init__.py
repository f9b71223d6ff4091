"""Attacks. Every public attack is registered in :data:`REGISTRY`."""

from jaxadv.attacks.apgd import APGD, APGDT
from jaxadv.attacks.autoattack import AutoAttack, EOTLogits, RandomizedModel
from jaxadv.attacks.base import REGISTRY, AbstractAttack, example_keys, register
from jaxadv.attacks.dgde import DGDE, DGDEOptions
from jaxadv.attacks.eot import EOT, RandomAffine
from jaxadv.attacks.fab import FAB
from jaxadv.attacks.fmn import FMN
from jaxadv.attacks.gradient import FGSM, PGD
from jaxadv.attacks.hopskipjump import HopSkipJump
from jaxadv.attacks.minnorm import CW, DDN, DeepFool
from jaxadv.attacks.momentum import MIFGSM
from jaxadv.attacks.nes import NES
from jaxadv.attacks.onepixel import OnePixel
from jaxadv.attacks.simba import SimBA
from jaxadv.attacks.sparse_rs import SparseRS
from jaxadv.attacks.square import Square
from jaxadv.attacks.zoo import ZOO

__all__ = [
    "APGD",
    "APGDT",
    "CW",
    "DDN",
    "DeepFool",
    "DGDE",
    "EOT",
    "EOTLogits",
    "RandomAffine",
    "DGDEOptions",
    "FAB",
    "FGSM",
    "FMN",
    "HopSkipJump",
    "MIFGSM",
    "NES",
    "OnePixel",
    "PGD",
    "REGISTRY",
    "RandomizedModel",
    "SimBA",
    "SparseRS",
    "Square",
    "ZOO",
    "AbstractAttack",
    "AutoAttack",
    "example_keys",
    "register",
]
