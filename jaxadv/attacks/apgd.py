"""Auto-PGD (Croce & Hein, ICML 2020): step-size-free PGD with momentum and a per-example
step-size schedule, and its targeted version APGD-T.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxadv import _validate as V
from jaxadv import losses as L
from jaxadv._batch import bsel
from jaxadv._struct import pytree_dataclass, static
from jaxadv.attacks.base import AbstractAttack, register
from jaxadv.attacks.driver import Best, Scored, iterate, keep_best
from jaxadv.attacks.gradient import loss_grad
from jaxadv.result import AttackResult, finalize
from jaxadv.threats import L1Ball, L2Ball, LinfBall

Array = jax.Array


@pytree_dataclass
class APGDState:
    """One APGD run's per-example state (``counter`` and ``interval`` are shared by the batch)."""

    xa: Array
    x_prev: Array
    g: Array
    step: Array
    loss_prev: Array
    x_max: Array  # best by loss (the restart point) and its gradient
    g_max: Array
    loss_max: Array
    n_inc: Array
    loss_max_last: Array
    reduced_last: Array
    counter: Array
    interval: Array


@pytree_dataclass
class APGDRun:
    """A single-restart APGD run that can be resumed (:meth:`APGD.begin` / :meth:`APGD.advance`):
    the iterate's state, the best point so far and the gradient evaluations spent ``int32[B]``."""

    state: APGDState
    best: Best
    queries: Array


def _apgd_begin(model, x, y, lbl, target, loss_fn, x0, eps, num_steps, kappa=0.0) -> APGDRun:
    """The state before the first step: the gradient at ``x0`` (one evaluation). ``kappa``: the
    threat's ``success_margin``, so a point counts as broken only past it (as finalize judges)."""
    b = x.shape[0]
    g, loss, logits = loss_grad(model, loss_fn, x0, lbl)
    succ = L.is_adversarial(logits, y, target, success_margin=kappa)
    step = jnp.broadcast_to(2.0 * jnp.asarray(eps, x.dtype), (b,))
    state = APGDState(
        xa=x0,
        x_prev=x0,
        g=g,
        step=step,
        loss_prev=loss,
        x_max=x0,
        g_max=g,
        loss_max=loss,
        n_inc=jnp.zeros((b,), jnp.int32),
        loss_max_last=loss,
        reduced_last=jnp.zeros((b,), bool),
        counter=jnp.zeros((), jnp.int32),
        interval=jnp.asarray(max(int(0.22 * num_steps), 1), jnp.int32),
    )
    return APGDRun(
        state=state,
        best=keep_best(Best.empty(x), Scored(point=x0, success=succ, score=loss)),
        queries=jnp.ones((b,), jnp.int32),
    )


def _apgd_single(threat, model, x, y, lbl, target, loss_fn, x0, num_steps, rho, momentum, unroll):
    """One APGD run from ``x0``. Returns the driver's :class:`~jaxadv.attacks.driver.Loop`: the
    best point per example (success first, then loss) and the gradient evaluations
    (``num_steps + 1``)."""
    run = _apgd_begin(
        model, x, y, lbl, target, loss_fn, x0, threat.eps, num_steps, threat.success_margin
    )
    return _apgd_advance(
        threat,
        model,
        x,
        y,
        lbl,
        target,
        loss_fn,
        run,
        0,
        num_steps,
        num_steps,
        rho,
        momentum,
        unroll,
    )


def _apgd_advance(
    threat, model, x, y, lbl, target, loss_fn, run, start, stop, num_steps, rho, momentum, unroll
):
    """Steps ``start .. stop - 1`` of an APGD run of ``num_steps`` steps (the driver's
    :class:`~jaxadv.attacks.driver.Loop`). ``start`` and ``stop`` may be traced.

    State machine (per example, vectorised): the step size starts at ``2 eps``; the check interval
    starts at ``ceil(0.22 N)`` and shrinks by ``0.03 N`` per check down to ``0.06 N`` (shared by the
    batch). At each check an example halves its step and restarts from its best point when fewer
    than ``rho`` of the steps since the last check increased the loss, or when the previous check
    did not halve and the best loss did not improve since.
    """
    n_check_min = max(int(0.06 * num_steps), 1)
    n_decr = max(int(0.03 * num_steps), 1)

    def apgd_step(i, s):
        a = jnp.where(i == 0, 1.0, momentum).astype(x.dtype)
        z = threat.project(x, s.xa + threat.ascent_step(s.g, s.step))
        xn = threat.project(x, s.xa + a * (z - s.xa) + (1 - a) * (s.xa - s.x_prev))
        g, loss, logits = loss_grad(model, loss_fn, xn, lbl)
        succ = L.is_adversarial(logits, y, target, success_margin=threat.success_margin)
        improved = loss > s.loss_max
        x_max = bsel(improved, xn, s.x_max)
        g_max = bsel(improved, g, s.g_max)
        loss_max = jnp.where(improved, loss, s.loss_max)
        n_inc = s.n_inc + (loss > s.loss_prev).astype(jnp.int32)
        counter = s.counter + 1

        # Checkpoint (same iteration for the whole batch, decisions per example).
        at_check = counter == s.interval
        oscillating = n_inc.astype(x.dtype) <= rho * s.interval.astype(x.dtype)
        no_progress = ~s.reduced_last & (s.loss_max_last >= loss_max)
        reduce = at_check & (oscillating | no_progress)
        new = APGDState(
            xa=bsel(reduce, x_max, xn),
            x_prev=s.xa,
            g=bsel(reduce, g_max, g),
            step=jnp.where(reduce, s.step / 2, s.step),
            loss_prev=loss,
            x_max=x_max,
            g_max=g_max,
            loss_max=loss_max,
            n_inc=jnp.where(at_check, 0, n_inc),
            loss_max_last=jnp.where(at_check, loss_max, s.loss_max_last),
            reduced_last=jnp.where(at_check, reduce, s.reduced_last),
            counter=jnp.where(at_check, 0, counter),
            interval=jnp.where(at_check, jnp.maximum(s.interval - n_decr, n_check_min), s.interval),
        )
        return new, Scored(point=xn, success=succ, score=loss)

    return iterate(
        apgd_step,
        run.state,
        start=start,
        stop=stop,
        active=jnp.ones((x.shape[0],), bool),
        queries=run.queries,
        best=run.best,
        unroll=unroll,
    )


@register
@pytree_dataclass
class APGD(AbstractAttack):
    """Auto-PGD with cross-entropy or DLR loss (Croce & Hein, 2020).

    No step size to tune: it starts at ``2 eps`` and is halved per example when progress stalls,
    restarting from the best point found. Momentum 0.75. Works with ``LinfBall`` and ``L2Ball``
    (with ``L1Ball`` it runs the same schedule with the sparse L1 step; the paper's APGD-L1 differs).

    Attributes:
        threat: the threat model.
        num_steps: iterations per restart (100 in AutoAttack).
        num_restarts: random restarts, best kept per example.
        loss: ``'ce'``, ``'dlr'`` (targeted DLR when a target is given), ``'margin'`` or a callable.
        rho: the oscillation threshold (0.75).
        momentum: the weight of the new step (0.75).

    Example:
        >>> import jax, jax.numpy as jnp, jaxadv
        >>> model = jaxadv.from_apply(lambda w, x: x.reshape(x.shape[0], -1) @ w, jnp.eye(4, 3))
        >>> apgd = jaxadv.APGD(threat=jaxadv.LinfBall(eps=0.1), num_steps=10, loss="dlr")
        >>> apgd(jax.random.key(0), model, jnp.full((2, 2, 2, 1), 0.5), jnp.array([0, 1])).norm.shape
        (2,)
    """

    oracle: ClassVar[str] = "gradient"
    budget_field: ClassVar[str | None] = "num_steps"
    restarts_field: ClassVar[str | None] = "num_restarts"
    threats: ClassVar[tuple[type, ...]] = (LinfBall, L2Ball, L1Ball)
    settings: ClassVar[Mapping[str, V.Range]] = {
        "num_steps": V.at_least(1),
        "num_restarts": V.at_least(1),
        "rho": V.unit(),
        "momentum": V.unit(),
    }

    threat: Any
    num_steps: int = static(default=100)
    num_restarts: int = static(default=1)
    loss: str | Callable = static(default="ce")
    random_start: bool = static(default=True)
    rho: float = 0.75
    momentum: float = 0.75
    unroll: int | bool = static(default=1)

    def _loss_fn(self, y, target):
        if self.loss == "dlr" and target is not None:
            return lambda logits, t: L.dlr_targeted(logits, t, y)
        return L.resolve(self.loss, target is not None)

    def run_from(self, keys, model, x, y, target):
        """All restarts; returns the best point (a :class:`Best`) and the queries ``int32[B]``."""
        loss_fn = self._loss_fn(y, target)
        lbl = y if target is None else target
        b = x.shape[0]

        def restart(r, carry):
            best, queries = carry
            rkeys = jax.vmap(lambda k: jax.random.fold_in(k, r))(keys)
            x0 = self.threat.random_init(rkeys, x) if self.random_start else x
            cand = _apgd_single(
                self.threat,
                model,
                x,
                y,
                lbl,
                target,
                loss_fn,
                x0,
                self.num_steps,
                jnp.asarray(self.rho, x.dtype),
                jnp.asarray(self.momentum, x.dtype),
                self.unroll,
            )
            cb = cand.best
            cand_scored = Scored(point=cb.point, success=cb.success, score=cb.score)
            return keep_best(best, cand_scored), queries + cand.queries

        carry = (Best.empty(x), jnp.zeros((b,), jnp.int32))
        return jax.lax.fori_loop(0, self.num_restarts, restart, carry)

    def begin(self, keys, model, x, y, target=None) -> APGDRun:
        """The first restart's run before its first step, to be stepped by :meth:`advance`
        (resumable, so that a caller can drop finished examples between segments: AutoAttack)."""
        rkeys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
        x0 = self.threat.random_init(rkeys, x) if self.random_start else x
        loss_fn = self._loss_fn(y, target)
        lbl = y if target is None else target
        return _apgd_begin(
            model,
            x,
            y,
            lbl,
            target,
            loss_fn,
            x0,
            self.threat.eps,
            self.num_steps,
            self.threat.success_margin,
        )

    def advance(self, run: APGDRun, model, x, y, start, stop, target=None) -> APGDRun:
        """Steps ``start .. stop - 1`` (may be traced) of the run :meth:`begin` started. Row for
        row the same arithmetic as :meth:`run` with one restart: ``begin`` then
        ``advance(0, num_steps)`` is that run, whichever rows are dropped between segments."""
        loss_fn = self._loss_fn(y, target)
        lbl = y if target is None else target
        out = _apgd_advance(
            self.threat,
            model,
            x,
            y,
            lbl,
            target,
            loss_fn,
            run,
            start,
            stop,
            self.num_steps,
            jnp.asarray(self.rho, x.dtype),
            jnp.asarray(self.momentum, x.dtype),
            1,
        )
        return APGDRun(state=out.state, best=out.best, queries=out.queries)

    def run(self, keys, model, x, y, *, target=None) -> AttackResult:
        best, q = self.run_from(keys, model, x, y, target)
        return finalize(self.threat, model, x, best.point, y, target=target, queries=q)


@register
@pytree_dataclass
class APGDT(AbstractAttack):
    """APGD-T: targeted APGD with the targeted DLR loss against each of the ``num_target_classes``
    highest-scoring wrong classes in turn (Croce & Hein, 2020). Untargeted in effect: an example
    counts as broken when it is misclassified; the first target that succeeds is kept.

    With fewer than 4 classes the targeted DLR loss falls back to the targeted margin, and with 2
    classes APGD-T is targeted APGD toward the only other class.
    """

    oracle: ClassVar[str] = "gradient"
    budget_field: ClassVar[str | None] = "num_steps"
    restarts_field: ClassVar[str | None] = "num_restarts"
    threats: ClassVar[tuple[type, ...]] = (LinfBall, L2Ball, L1Ball)
    settings: ClassVar[Mapping[str, V.Range]] = {
        "num_steps": V.at_least(1),
        "num_target_classes": V.at_least(1),
        "num_restarts": V.at_least(1),
        "rho": V.unit(),
        "momentum": V.unit(),
    }

    threat: Any
    num_steps: int = static(default=100)
    num_target_classes: int = static(default=9)
    num_restarts: int = static(default=1)
    random_start: bool = static(default=True)
    rho: float = 0.75
    momentum: float = 0.75
    unroll: int | bool = static(default=1)

    def inner(self) -> APGD:
        """The targeted APGD (DLR loss) run against each target."""
        return APGD(
            threat=self.threat,
            num_steps=self.num_steps,
            num_restarts=self.num_restarts,
            loss="dlr",
            random_start=self.random_start,
            rho=self.rho,
            momentum=self.momentum,
            unroll=self.unroll,
        )

    def run(self, keys, model, x, y, *, target=None) -> AttackResult:
        if target is not None:
            raise ValueError("APGDT chooses its own targets; use APGD(loss='dlr') with target=")
        b = x.shape[0]
        logits0 = model(x)
        c = logits0.shape[1]
        n_t = min(self.num_target_classes, c - 1)
        order = jnp.argsort(logits0, axis=1)  # ascending: the top class is last
        inner = self.inner()
        kappa = self.threat.success_margin  # a target broken only at margin <= κ is no success

        def per_target(j, state):
            adv, succ = state
            # j-th most likely class other than the top one (the usual APGD-T target choice).
            t = order[:, c - 2 - j]
            t = jnp.where(t == y, order[:, c - 1], t)
            tkeys = jax.vmap(lambda k: jax.random.fold_in(k, 1000 + j))(keys)
            cand = inner.run_from(tkeys, model, x, y, t)[0].point
            cand_succ = L.is_adversarial(model(cand), y, success_margin=kappa)
            take = cand_succ & ~succ
            return bsel(take, cand, adv), succ | cand_succ

        clean = L.is_adversarial(logits0, y, success_margin=kappa)
        adv, _ = jax.lax.fori_loop(0, n_t, per_target, (x, clean))
        q = jnp.full((b,), 1 + n_t * (self.num_restarts * (self.num_steps + 1) + 1), jnp.int32)
        return finalize(self.threat, model, x, adv, y, queries=q)
