"""``jaxadv attack`` options for durable successes (:mod:`jaxadv.durable`): ``--success-margin``,
``--grid`` and ``--recheck``. Registered from :mod:`jaxadv.cli` with a few lines."""

from __future__ import annotations

import argparse
from typing import Any

from jaxadv.durable import RECHECK_MODES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the durable-success flags to the ``attack`` sub-command's ``parser``."""
    parser.add_argument(
        "--success-margin",
        type=float,
        default=None,
        metavar="KAPPA",
        help="count a success only when the logit margin exceeds KAPPA (default 0: the argmax "
        "rule); e.g. 1e-3 rejects points on the decision boundary",
    )
    parser.add_argument(
        "--grid",
        default=None,
        help="quantise adversarial images to this storage grid inside the attack (8, 12, 16, "
        "uint8, uint16, or 'dataset': the bit depth of the data set's stored images); success "
        "is decided on the quantised image",
    )
    parser.add_argument(
        "--recheck",
        default=None,
        choices=RECHECK_MODES,
        help="re-evaluate every success at every eps outside the attack's program (eager, "
        "a separately compiled forward, or float64) and report how many flip (recheck_flips)",
    )


def apply(attack: Any, args: argparse.Namespace) -> Any:
    """``attack`` with ``--success-margin`` / ``--grid`` set on its threat model (the one parser,
    :func:`jaxadv.vocab.parse_durable`; raises ``SpecError`` for a bad value, before any
    loading)."""
    from jaxadv.vocab import GRID_FROM_DATA, parse_durable, with_durable

    changes = parse_durable(
        getattr(args, "success_margin", None), getattr(args, "grid", None), dataset_ok=True
    )
    if changes.get("grid") == GRID_FROM_DATA:
        del changes["grid"]  # set by apply_data_grid once the data set is loaded
    if not changes or attack is None:
        return attack
    return with_durable(attack, changes)


def apply_data_grid(attack: Any, args: argparse.Namespace, ds: Any) -> Any:
    """``attack`` with ``--grid dataset`` resolved to the bit depth of ``ds``'s stored images
    (:func:`jaxadv.vocab.dataset_grid`, as sweeps resolve ``grid: dataset``); unchanged for any
    other ``--grid``. Raises ``SpecError`` for data stored as floats."""
    from jaxadv.vocab import GRID_FROM_DATA, dataset_grid, parse_durable, with_durable

    grid = parse_durable(None, getattr(args, "grid", None), dataset_ok=True).get("grid")
    if grid != GRID_FROM_DATA or attack is None:
        return attack
    return with_durable(attack, {"grid": dataset_grid(ds)})


def evaluate_kwargs(args: argparse.Namespace, n: int) -> dict[str, Any]:
    """Extra :func:`jaxadv.evaluate` keywords: ``recheck=`` (every example, every eps)."""
    mode = getattr(args, "recheck", None)
    return {"recheck": mode} if mode else {}


def recheck_report(ev: Any) -> dict[str, Any] | None:
    """The re-check of ``ev`` (evaluated with ``recheck=``) at its largest eps, for
    ``results.json``; the rows hold ``recheck_flips`` at every eps.

    Returns ``None`` without ``--recheck``, else ``{"mode", "eps", "num_success",
    "num_flipped", "flipped_indices"}``.
    """
    if ev.recheck is None:
        return None
    import numpy as np

    j = int(np.argmax(ev.eps))
    flipped = ev.per_eps["recheck_flipped"][j]
    return {
        "mode": ev.recheck,
        "eps": float(ev.eps[j]),
        "num_success": int(ev.per_eps["success"][j].sum()),
        "num_flipped": int(flipped.sum()),
        "flipped_indices": [int(i) for i in ev.indices[flipped]],
    }
