"""Attacks. Every public attack is registered in :data:`REGISTRY`."""

from jaxadv.attacks.apgd import APGD, APGDT
from jaxadv.attacks.autoattack import AutoAttack
from jaxadv.attacks.base import REGISTRY, AbstractAttack, example_keys, register
from jaxadv.attacks.evolution import DGDE, OnePixel
from jaxadv.attacks.fmn import FMN
from jaxadv.attacks.gradient import FGSM, PGD

__all__ = [
    "APGD",
    "APGDT",
    "DGDE",
    "FGSM",
    "FMN",
    "OnePixel",
    "PGD",
    "REGISTRY",
    "AbstractAttack",
    "AutoAttack",
    "example_keys",
    "register",
]
