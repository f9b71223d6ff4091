"""Attacks. Every public attack is registered in :data:`REGISTRY`."""

from jaxadv.attacks.base import REGISTRY, AbstractAttack, example_keys, register
from jaxadv.attacks.gradient import FGSM, PGD

__all__ = ["REGISTRY", "AbstractAttack", "FGSM", "PGD", "example_keys", "register"]
