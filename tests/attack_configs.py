"""Tiny configurations of every registered attack (few steps / queries), for the table-driven
tests over the registry and for `make_driver_golden.py`. Test data, not library API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jaxadv
from jaxadv import L2Ball, LinfBall

SMALL: dict[str, Callable[[], Any]] = {
    "FGSM": lambda: jaxadv.FGSM(threat=LinfBall(eps=0.1)),
    "PGD": lambda: jaxadv.PGD(threat=LinfBall(eps=0.1), num_steps=3),
    "MIFGSM": lambda: jaxadv.MIFGSM(
        threat=LinfBall(eps=0.1), num_steps=3, nesterov=True, diversity=0.5, translation=3
    ),
    "APGD": lambda: jaxadv.APGD(threat=LinfBall(eps=0.1), num_steps=3),
    "APGDT": lambda: jaxadv.APGDT(threat=LinfBall(eps=0.1), num_steps=3, num_target_classes=2),
    "FMN": lambda: jaxadv.FMN(threat=LinfBall(eps=0.1), num_steps=3),
    "FAB": lambda: jaxadv.FAB(threat=LinfBall(eps=0.1), num_steps=3),
    "CW": lambda: jaxadv.CW(threat=L2Ball(eps=0.5), num_steps=4, num_binary_steps=2),
    "DDN": lambda: jaxadv.DDN(threat=L2Ball(eps=0.5), num_steps=4),
    "DeepFool": lambda: jaxadv.DeepFool(threat=LinfBall(eps=0.1), num_steps=3),
    "AutoAttack": lambda: jaxadv.AutoAttack.standard(LinfBall(eps=0.1), num_steps=3),
    "Square": lambda: jaxadv.Square(threat=LinfBall(eps=0.1), num_queries=20),
    "NES": lambda: jaxadv.NES(threat=LinfBall(eps=0.1), num_queries=60, population_size=10),
    "ZOO": lambda: jaxadv.ZOO(threat=L2Ball(eps=0.5), num_steps=4, num_coords=4),
    "HopSkipJump": lambda: jaxadv.HopSkipJump(
        threat=L2Ball(eps=1.0), num_iterations=3, init_num_evals=8, max_num_evals=16
    ),
    "OnePixel": lambda: jaxadv.OnePixel(num_pixels=1, population_size=8, num_generations=3),
    "DGDE": lambda: jaxadv.DGDE(num_tries=4, tries_per_call=2, num_generations=6, patience=3),
    "SimBA": lambda: jaxadv.SimBA(threat=L2Ball(eps=0.5), num_queries=20, step_size=0.2),
    "SparseRS": lambda: jaxadv.SparseRS(threat=jaxadv.L0Pixels(eps=2), num_queries=20),
}


def small(name: str) -> Any:
    """The tiny configuration of the registered attack ``name``."""
    return SMALL[name]()
