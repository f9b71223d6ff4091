"""Re-checked successes in sweeps: the ``recheck:`` config key, the stored flips and the report's
``recheck_flips`` column.

A config with ``recheck: eager`` (or ``jit``, ``float64``) evaluates every cell with
:func:`jaxadv.evaluate` ``(..., recheck=MODE)``: every reported success, at every eps, is
re-evaluated outside the attack's compiled program (:func:`jaxadv.durable.recheck`, argmax rule),
and the cell stores the per-example flips ``bool[E, N]`` (``results.recheck_flipped``). The report
counts them per eps (``recheck_flips``, out of ``num_examples - num_robust`` reported successes).
Configs without the key keep their hashes; a cell with it has its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxadv.durable import RECHECK_MODES

#: The stored per-example field ``bool[E, N]`` (also the :class:`jaxadv.Evaluation` ``per_eps``
#: key).
FIELD = "recheck_flipped"


def parse(raw: Any, attacks: Sequence[Mapping[str, Any]], *, error: type) -> str:
    """The ``recheck:`` value, checked: a mode of :data:`jaxadv.durable.RECHECK_MODES`, and only
    for attacks whose success is the argmax rule of integer labels."""
    from jaxadv.sweep import segmentation as seg
    from jaxadv.sweep import universal as univ

    if raw not in RECHECK_MODES:
        raise error(f"recheck: must be one of {', '.join(RECHECK_MODES)}, got {raw!r}")
    for i, a in enumerate(attacks):
        if seg.is_dense(a) or univ.is_universal(a) or a.get("multilabel"):
            raise error(
                f"recheck: attacks[{i}] ({a['label']}) is a segmentation, universal or "
                "multi-label attack; recheck covers per-example classification attacks, so give "
                "it a sweep of its own without recheck"
            )
    return str(raw)


def results(ev: Any) -> dict[str, Any]:
    """The cell record's ``results.recheck_flipped`` ``[E, N]`` (nothing without a re-check)."""
    from jaxadv.sweep.storage import encode_array

    if ev.recheck is None:
        return {}
    return {FIELD: encode_array(ev.per_eps[FIELD].astype(np.bool_))}


def check_fields(r: Mapping[str, Any], num_eps: int, n: int) -> str | None:
    """``None`` when ``results.recheck_flipped`` (if present) holds ``[E, n]`` booleans."""
    from jaxadv.sweep.storage import decode_array

    if FIELD not in r:
        return None
    if decode_array(r[FIELD], np.bool_).shape != (num_eps, n):
        return f"results.{FIELD} must be {num_eps} lists of {n} booleans"
    return None


def per_eps(r: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``{FIELD: bool[E, N]}`` of a checked record's results, for the summary rows."""
    from jaxadv.sweep.storage import decode_array

    return {FIELD: decode_array(r[FIELD], np.bool_)} if FIELD in r else {}
