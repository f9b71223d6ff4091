"""Robustness curves over an eps grid.

Two ways to run a grid (:func:`sweep_eps`):

* independent (default): one compiled program, ``vmap`` over eps; every budget is attacked on
  every example, exactly as E separate runs would.
* ``cascade=True``: budgets in ascending order, each attacking only the examples that no smaller
  budget (and no clean error) has already broken; the others keep the adversarial found at the
  smaller budget, which lies inside every larger ball. Work falls with every broken example, and the
  curve is the per-example worst case over the grid: ``success[k] = OR_{j <= k} success_indep[j]``
  (clean errors count as broken at every budget).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv import _validate
from jaxadv._struct import pytree_dataclass
from jaxadv.attacks.base import example_keys, finite_eps
from jaxadv.engine.layout import bucket, pad_rows
from jaxadv.models import as_model
from jaxadv.result import AttackResult, finalize

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
    cascade: bool = False,
) -> EpsCurve:
    """Run ``attack`` at every budget in ``eps``.

    By default as one compiled program (``vmap`` over eps), each budget on every example.

    With ``cascade=True`` the budgets are taken in ascending order and each one attacks only the
    examples still robust: an example misclassified without attack, or broken at a smaller budget,
    keeps that result at every larger budget (its ``adv`` lies inside every larger ball of a norm
    threat). Host-driven: survivors are gathered into a batch padded to three significant bits
    (under a quarter padding, at most four batch sizes to compile per octave, each compiled once
    and reused across budgets and batches; padding rows repeat an example and are dropped). Since
    per-example keys do not depend on the batch, the result equals the cumulative OR of the
    independent runs' successes, at a fraction of the work when many examples break early; a curve
    from it is monotone by construction. Rows kept from a clean error
    carry ``adv = x``, ``queries = 1`` and zeros in ``info``.

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
    from jaxadv.engine import check_eps

    model = as_model(model)
    e = check_eps(eps)
    key, x, y, target = _validate.normalize_inputs(key, x, y, target)
    if validate:
        _validate.check_attack_inputs(attack.threat, model, x, y, target)
    keys = example_keys(key, x.shape[0], index_offset)
    e = finite_eps(attack.threat, e, tuple(x.shape)).astype(np.float32)  # inf: the whole box
    if cascade:
        return _cascade(attack, e, keys, model, x, y, target)
    return _sweep(attack, jnp.asarray(e), keys, model, x, y, target)


def _rows(i, keys, x, y, target):
    return keys[i], x[i], y[i], None if target is None else target[i]


@jax.jit
def _start(attack, keys, model, x, y, target):
    """Every example's result before any attack: the clean evaluation (``adv = x``), ``info``
    fields zero in the layout the attack returns."""
    k1, x1, y1, t1 = _rows(slice(0, 1), keys, x, y, target)
    shape = jax.eval_shape(lambda: attack.run(k1, model, x1, y1, target=t1))
    clean = finalize(attack.threat, model, x, x, y, target=target)
    b = x.shape[0]
    return AttackResult(
        adv=clean.adv.astype(shape.adv.dtype),
        success=clean.success,
        loss=clean.loss.astype(shape.loss.dtype),
        norm=clean.norm.astype(shape.norm.dtype),
        queries=clean.queries.astype(shape.queries.dtype),
        info=jax.tree_util.tree_map(lambda s: jnp.zeros((b, *s.shape[1:]), s.dtype), shape.info),
    )


@jax.jit
def _level(attack, eps, keys, model, x, y, target, prev, idx, valid):
    """Attack the rows ``idx`` at ``eps`` and write the valid ones over ``prev`` (padding rows are
    scattered out of range and dropped)."""
    k, xs, ys, ts = _rows(idx, keys, x, y, target)
    res = attack.with_eps(eps).run(k, model, xs, ys, target=ts)
    dest = jnp.where(valid, idx, x.shape[0])
    return jax.tree_util.tree_map(lambda p, q: p.at[dest].set(q, mode="drop"), prev, res)


def _cascade(attack, e: np.ndarray, keys, model, x, y, target) -> EpsCurve:
    b = x.shape[0]
    prev = _start(attack, keys, model, x, y, target)
    done = np.asarray(prev.success)
    per_eps: list[AttackResult | None] = [None] * len(e)
    for k in np.argsort(e, kind="stable"):
        alive = np.flatnonzero(~done)
        if alive.size:
            size = bucket(alive.size, b)
            idx = pad_rows(alive, size).astype(np.int32)
            valid = np.arange(size) < alive.size
            prev = _level(attack, jnp.float32(e[k]), keys, model, x, y, target, prev, idx, valid)
            done = np.asarray(prev.success)
        per_eps[k] = prev
    res = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *per_eps)
    return EpsCurve(eps=jnp.asarray(e), robust_accuracy=jnp.mean(~res.success, axis=1), result=res)
