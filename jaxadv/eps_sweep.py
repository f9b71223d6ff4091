"""Robustness curves over an eps grid: one compilation, ``vmap`` over eps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv import _validate
from jaxadv._struct import pytree_dataclass
from jaxadv.attacks.base import _bound, example_keys
from jaxadv.models import as_model
from jaxadv.result import AttackResult

Array = jax.Array


@pytree_dataclass
class EpsCurve:
    """Results over an eps grid.

    Attributes:
        eps: ``[E]`` the budgets.
        robust_accuracy: ``[E]`` fraction of examples still correctly classified under attack.
        result: an :class:`AttackResult` whose every field has a leading ``E`` axis (``adv[E, B, ...]``).
    """

    eps: Array
    robust_accuracy: Array
    result: AttackResult


@jax.jit
def _sweep(attack, eps, keys, model, x, y, target):
    def one(e):
        return attack.with_eps(e).run(keys, model, x, y, target=target)

    res = jax.vmap(one)(eps)
    return EpsCurve(eps=eps, robust_accuracy=jnp.mean(~res.success, axis=1), result=res)


def sweep_eps(
    attack: Any,
    eps: Sequence[float] | Array,
    *,
    key: Array,
    model: Any,
    x: Array,
    y: Array,
    target: Array | None = None,
    validate: bool = True,
    index_offset: int = 0,
) -> EpsCurve:
    """Run ``attack`` at every budget in ``eps`` as one compiled program (``vmap`` over eps).

    The attack's other settings are kept; in particular an explicit ``step_size`` stays absolute
    (``PGD(step_size=None)`` scales its step with each eps). Each eps uses the same per-example keys,
    so the curve differs only through the budget. ``index_offset`` is the data-set index of ``x[0]``
    when a data set is swept in batches (per-example keys then do not depend on the batching).

    Example:
        >>> import jax, jax.numpy as jnp, jaxadv
        >>> model = jaxadv.from_apply(lambda w, x: x.reshape(x.shape[0], -1) @ w, jnp.eye(4, 2))
        >>> pgd = jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.0), num_steps=5)
        >>> x, y = jnp.full((4, 2, 2, 1), 0.5), jnp.array([0, 1, 0, 1])
        >>> curve = jaxadv.sweep_eps(pgd, [0.0, 0.1, 0.3], key=jax.random.key(0), model=model, x=x, y=y)
        >>> curve.robust_accuracy.shape
        (3,)
    """
    model = as_model(model)
    e = np.asarray(eps, dtype=np.float32)
    if e.ndim != 1 or e.size == 0:
        raise ValueError(f"eps must be a non-empty 1-D grid, got shape {e.shape}")
    if np.any(~np.isfinite(e) & ~np.isposinf(e)) or np.any(e < 0):
        raise ValueError(f"eps values must be >= 0 and not NaN, got {e.tolist()}")
    if validate:
        _validate.check_inputs(
            model,
            x,
            y,
            lo=_bound(attack.threat.lo, min),
            hi=_bound(attack.threat.hi, max),
            target=target,
        )
    keys = example_keys(key, x.shape[0], index_offset)
    return _sweep(attack, jnp.asarray(e), keys, model, x, y, target)
