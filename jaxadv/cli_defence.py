"""Command-line options that put a pre-processing defence in front of the attacked model
(``jaxadv attack --defence jpeg:75 --bpda``); registered from :mod:`jaxadv.cli`."""

from __future__ import annotations

import argparse
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``--defence``, ``--bpda`` and ``--eot-draws`` on a sub-command's parser."""
    p.add_argument(
        "--defence",
        default=None,
        help="pre-processing defence in front of the model: jpeg:Q (exact), jpeg-diff:Q, "
        "bitdepth:BITS, median:SIZE, blur:SIGMA or resize-pad:RATIO (randomised)",
    )
    p.add_argument(
        "--bpda",
        action="store_true",
        help="attack through BPDA (identity backward pass of the defence; forward unchanged)",
    )
    p.add_argument(
        "--eot-draws",
        type=int,
        default=0,
        help="randomised defence: attack the mean logits of this many draws (results are judged "
        "on one fresh draw, as the deployed defence answers)",
    )


def check(args: argparse.Namespace) -> None:
    """Refuse a bad ``--defence`` spec or flag combination before anything is loaded
    (``ValueError``: one line, exit status 2)."""
    from jaxadv import defences

    spec = getattr(args, "defence", None)
    if spec is None:
        if getattr(args, "bpda", False) or getattr(args, "eot_draws", 0):
            raise ValueError("--bpda and --eot-draws need --defence (e.g. --defence jpeg:75)")
        return
    if args.eot_draws < 0:
        raise ValueError(f"--eot-draws must be >= 0, got {args.eot_draws}")
    stage = defences.from_spec(spec)
    if stage.randomised and args.bpda:
        raise ValueError(
            f"--bpda does not apply to the randomised defence {spec!r}; use --eot-draws"
        )
    if not stage.randomised and args.eot_draws > 1:
        raise ValueError(f"--eot-draws needs a randomised defence; {spec!r} is deterministic")


def apply(args: argparse.Namespace, model: Any) -> Any:
    """``model`` behind ``args.defence`` (unchanged without one); see :func:`check`."""
    from jaxadv import defences

    check(args)
    if getattr(args, "defence", None) is None:
        return model
    return defences.defend(
        model, args.defence, bpda=args.bpda, eot_draws=args.eot_draws, key=args.seed
    )
