"""Command-line pieces for the medical perturbations (``jaxadv attack --attack bias-field``).

Kept apart from :mod:`jaxadv.cli` (which only dispatches here); the attack then runs through the
same engine, report and output files as every other ``attack`` run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from jaxadv.vocab import SpecError

#: the ``--attack`` names handled here.
NAMES = ("bias-field",)

#: ``attack --eps`` default of the command line, replaced by :data:`DEFAULT_AMPLITUDES` here.
GENERIC_EPS_DEFAULT = "0,1,2,4,8"
DEFAULT_AMPLITUDES = "0,0.1,0.2,0.4"


def amplitudes(value: Any) -> list[float]:
    """The ``--eps`` grid of a bias-field run: bounds on the log-space field's amplitude
    ``max |B|`` (0.2 lets intensities scale by ``e^±0.2``), as plain numbers, no 1/255 units.

    Raises:
        SpecError: an empty grid, a value that is not a number, negative, above 3 (a factor
            e^3 = 20 is no longer a bias field) or repeated.
    """
    if value == GENERIC_EPS_DEFAULT:
        value = DEFAULT_AMPLITUDES
    items = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for it in items:
        try:
            v = float(str(it).strip())
        except ValueError:
            raise SpecError(
                f"bias-field --eps takes field amplitudes (log space) such as "
                f"{DEFAULT_AMPLITUDES}; got {it!r}"
            ) from None
        if not math.isfinite(v) or v < 0 or v > 3:
            raise SpecError(
                f"bias-field --eps values are log-amplitudes in [0, 3] (0.2 scales intensities "
                f"by at most e^0.2 = 1.22), got {it!r}"
            )
        out.append(float(f"{v:.9g}"))
    if not out:
        raise SpecError(f"the eps grid is empty; give amplitudes such as {DEFAULT_AMPLITUDES}")
    if len(set(out)) != len(out):
        raise SpecError(f"the eps grid has repeated values {out}")
    return out


def make_bias_field(
    *,
    options: Mapping[str, Any] | None = None,
    num_steps: int | None = None,
    restarts: int | None = None,
):
    """A :class:`~jaxadv.attacks.bias.BiasField` from command-line settings.

    ``--option degree=D`` (default 3) and ``--option noise_eps=E`` (default 0) set the threat;
    other options (``step_size``, ``noise_step``, ``decay``, ``loss``) go to the attack.
    """
    from jaxadv.attacks.bias import BiasField, BiasFieldThreat

    if restarts is not None:
        raise SpecError("bias-field has no random restarts (it starts at the identity field)")
    opts = dict(options or {})
    degree = opts.pop("degree", 3)
    noise_eps = opts.pop("noise_eps", 0.0)
    try:
        threat = BiasFieldThreat(degree=degree, eps=0.0, noise_eps=noise_eps)
        return BiasField(threat=threat, num_steps=num_steps or 20, **opts)
    except TypeError as e:
        raise SpecError(
            f"attack 'bias-field' does not accept the options {sorted(opts)}: {e}"
        ) from e
    except ValueError as e:
        raise SpecError(f"attack 'bias-field': {e}") from e
