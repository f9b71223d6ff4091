"""One loop driver for the iterative attacks (the optimistix shape: the attack says what one
iteration does, the driver owns the loop).

An attack describes its iteration by

* a **state**: any pytree (usually a :func:`jaxadv._struct.pytree_dataclass`) whose array leaves
  with at least one axis are per example (leading axis ``B``); 0-d leaves (a schedule counter) are
  shared by the batch;
* a **step** ``step(i, state) -> (state, Scored | None)``: one iteration at step index ``i``,
  returning the next state and, when the step queried the model at some point, that point with its
  success and score (see :class:`Scored`); a step whose queries vary per example is
  ``step(i, state, active) -> (state, scored, spent)`` (``cost=None``);
* optionally **done** ``done(state, scored) -> bool[B]``: per example finished after this step.

:func:`iterate` then owns what every attack used to re-write:

* the loop: ``lax.fori_loop`` over ``range(start, stop)`` (with ``unroll``) when the attack cannot
  stop early, else a ``lax.while_loop`` that also leaves once every example is done. The static
  ``fori_loop`` form matters on XLA:CPU: fully unrolled (``unroll=stop - start``) it is
  straight-line code, and only straight-line code keeps the input-gradient convolutions on the fast
  path (see ``benchmarks/loops.py``); a while loop never is;
* the per-example **active mask**: an example inactive when a step starts keeps its state (every
  per-example leaf is selected back with :func:`jaxadv._batch.bsel`), is not charged and does not
  update the best point; ``done`` clears it after the step;
* **query charging**: ``cost`` queries per step to every example active when the step starts, or,
  for a step whose queries vary per example (compacted scoring, inner searches: ``cost=None``),
  the count the step reports;
* the **best point** (when a :class:`Best` is passed): :func:`keep_best` of every scored point of
  an active example (a success beats a failure, then the higher score wins; ties keep the older).

Nothing else: what a step computes is the attack's business, and the driver adds no host
synchronisation. Without ``done`` and ``budget`` no mask is applied at all (every example is
stepped throughout; ``active`` then only decides who is charged), so an attack that never freezes
runs exactly the arithmetic it ran before.

Ported: PGD (restarts, early stop), APGD / APGD-T, FMN, Square, NES, ZOO, HopSkipJump, the DE
engine (:func:`jaxadv.attacks.population.minimize`, hence OnePixel), DGDE's three phases (noise
tries in batches, the decrease-group generations, the minimality sweep), the start-point noise
searches of NES and HopSkipJump and HopSkipJump's step-size search (a driver loop inside a driver
step).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxadv._batch import bsel
from jaxadv._struct import pytree_dataclass

Array = jax.Array


@pytree_dataclass
class Scored:
    """A point a step queried the model at.

    Attributes:
        point: ``[B, ...]`` the queried point (an image, or whatever the attack keeps as its best).
        success: ``bool[B]`` the model's verdict there.
        score: ``[B]`` higher is better (the attack's loss; ``-norm`` for a minimum-norm attack).
    """

    point: Array
    success: Array
    score: Array


@pytree_dataclass
class Best:
    """The best point per example so far (a success beats a failure, then the higher score)."""

    point: Array
    success: Array
    score: Array

    @classmethod
    def empty(cls, x: Array) -> Best:
        """No point yet: ``x`` as a placeholder, no success, score ``-inf``."""
        b = x.shape[0]
        return cls(point=x, success=jnp.zeros((b,), bool), score=jnp.full((b,), -jnp.inf, x.dtype))


def keep_best(best: Best, cand: Scored) -> Best:
    """Per example keep the better of ``best`` and ``cand``: a success beats a failure, then the
    higher score wins (ties and NaN scores keep ``best``)."""
    better = (cand.success & ~best.success) | (
        (cand.success == best.success) & (cand.score > best.score)
    )
    return Best(
        point=bsel(better, cand.point, best.point),
        success=best.success | cand.success,
        score=jnp.where(better, cand.score, best.score),
    )


def masked(cand: Scored, active: Array) -> Scored:
    """``cand`` as seen by :func:`keep_best` when only ``active`` examples may update the best."""
    return Scored(
        point=cand.point,
        success=cand.success & active,
        score=jnp.where(active, cand.score, -jnp.inf),
    )


@pytree_dataclass
class Loop:
    """What :func:`iterate` returns.

    Attributes:
        state: the attack's final state.
        active: ``bool[B]`` still running (never done) at the end.
        queries: ``int32[B]`` the queries passed in plus those charged by the loop.
        best: the best point (``None`` when none was tracked).
        stop: ``int32[]`` the index after the last step run (``stop`` unless the loop left early).
    """

    state: Any
    active: Array
    queries: Array
    best: Best | None
    stop: Array


def freeze(active: Array, new: Any, old: Any) -> Any:
    """``new`` for active examples, ``old`` for the others (0-d leaves are shared: ``new``)."""
    return jax.tree.map(lambda n, o: n if n.ndim == 0 else bsel(active, n, o), new, old)


def iterate(
    step: Callable[..., tuple],
    state: Any,
    *,
    stop: int,
    start: int = 0,
    active: Array,
    queries: Array,
    cost: int | None = 1,
    done: Callable[[Any, Scored | None], Array] | None = None,
    best: Best | None = None,
    exit_early: bool = False,
    unroll: int = 1,
    budget: int | None = None,
    freeze_state: bool = True,
) -> Loop:
    """Run ``state = step(i, state)`` for ``i`` in ``range(start, stop)`` (static bounds).

    Args:
        step: one iteration, ``(i, state) -> (state, scored)``; ``scored`` may be ``None`` when
            no best point is tracked.
        state: the initial state.
        stop, start: the static step range.
        active: ``bool[B]`` examples that run at all (with ``done`` or ``budget``, the others keep
            their state throughout; without, they are only not charged).
        queries: ``int32[B]`` queries spent before the loop.
        cost: queries one step spends per active example. ``None``: the step's queries vary per
            example; it is then called as ``step(i, state, active)`` and returns
            ``(state, scored, spent)`` with ``spent`` ``int32[B]`` (zero for inactive examples:
            the step knows the mask, so it can skip their queries), charged as is.
        done: ``(state, scored) -> bool[B]`` per example finished after a step; ``None``: never
            (no masking at all).
        best: the best point so far, updated with every scored point of an active example;
            ``None`` tracks nothing.
        exit_early: a ``lax.while_loop`` that also leaves once no example is active (needs
            ``done``); else a ``lax.fori_loop`` (``unroll`` applies to it only).
        unroll: ``lax.fori_loop`` unroll factor.
        budget: a per-example query budget (needs an int ``cost``): an example stops once its
            next step would take it over ``budget``.
        freeze_state: select inactive examples' state back after each step. ``False`` (with
            ``cost=None``, where the step gets the mask) leaves the masking to the step: for state
            that inactive examples still update, such as a per-round history.

    Returns:
        a :class:`Loop` with the final state, active mask, queries and best point.
    """

    if budget is not None and cost is None:
        raise ValueError("iterate: budget needs an int cost")
    if exit_early and done is None and budget is None:
        raise ValueError("iterate: exit_early needs done or budget")

    def body(i, c: Loop) -> Loop:
        # ``i`` is passed on as the loop gives it (weakly typed from ``fori_loop``: a step may mix
        # it with Python floats under strict promotion).
        nxt = jnp.asarray(i, jnp.int32) + 1
        if cost is None:
            new, scored, spent = step(i, c.state, c.active)
            q = c.queries + spent
        else:
            new, scored = step(i, c.state)
            inc = c.active.astype(jnp.int32)
            q = c.queries + (inc if cost == 1 else inc * cost)
        b = c.best
        if b is not None:
            b = keep_best(b, scored if done is None else masked(scored, c.active))
        if done is None and budget is None:
            return Loop(state=new, active=c.active, queries=q, best=b, stop=nxt)
        active = c.active if done is None else c.active & ~done(new, scored)
        if budget is not None:
            active = active & (q + cost <= budget)
        if freeze_state:
            new = freeze(c.active, new, c.state)
        return Loop(state=new, active=active, queries=q, best=b, stop=nxt)

    init = Loop(
        state=state,
        active=active,
        queries=queries.astype(jnp.int32),
        best=best,
        stop=jnp.asarray(start, jnp.int32),
    )
    if not exit_early:
        return jax.lax.fori_loop(start, stop, body, init, unroll=unroll)

    def cond(c: Loop):
        return (c.stop < stop) & jnp.any(c.active)

    return jax.lax.while_loop(cond, lambda c: body(c.stop, c), init)
