"""First-order white-box attacks: FGSM and PGD."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxadv import _validate as V
from jaxadv import losses as L
from jaxadv._struct import pytree_dataclass, static
from jaxadv._xla_cpu import canonical_convs
from jaxadv.attacks.base import AbstractAttack, register
from jaxadv.attacks.driver import Best, Scored, iterate, keep_best, masked
from jaxadv.result import AttackResult, finalize
from jaxadv.threats import L1Ball, L2Ball, LinfBall

Array = jax.Array


def loss_grad(model, loss_fn, x_adv, lbl):
    """Per-example loss ``[B]``, its input gradient and the logits, from one forward+backward.

    The one place the gradient attacks take their gradient: a model with an
    ``expected_loss_grad`` method (:class:`jaxadv.attacks.eot.EOTModel`) supplies its own
    (averaged over random transforms), with the same signature.
    """
    expected = getattr(model, "expected_loss_grad", None)
    if expected is not None:
        return expected(loss_fn, x_adv, lbl)

    def total(xa, lbl):
        logits = model(xa)
        per = loss_fn(logits, lbl)
        return jnp.sum(per), (per, logits)

    # canonical_convs keeps the convolution input-gradients on XLA:CPU's fast path when this runs
    # inside an attack's step loop (about 3x faster PGD/APGD/FMN on CPU; see jaxadv/_xla_cpu.py).
    grad = canonical_convs(jax.grad(total, has_aux=True))
    g, (per, logits) = grad(x_adv, lbl)
    return g, per, logits


@register
@pytree_dataclass
class FGSM(AbstractAttack):
    """Fast gradient sign method (Goodfellow et al., 2015): one steepest-ascent step of length
    ``eps`` in the threat model's norm (the sign step for L∞).

    Example:
        >>> import jax, jax.numpy as jnp, jaxadv
        >>> model = jaxadv.from_apply(lambda w, x: x.reshape(x.shape[0], -1) @ w, jnp.eye(4, 2))
        >>> x, y = jnp.full((1, 2, 2, 1), 0.5), jnp.array([0])
        >>> res = jaxadv.FGSM(threat=jaxadv.LinfBall(eps=0.1))(jax.random.key(0), model, x, y)
        >>> float(res.norm[0])
        0.1...
    """

    oracle: ClassVar[str] = "gradient"
    budget_field: ClassVar[str | None] = None
    restarts_field: ClassVar[str | None] = None
    threats: ClassVar[tuple[type, ...]] = (LinfBall, L2Ball, L1Ball)
    settings: ClassVar[Mapping[str, V.Range]] = {}

    threat: Any
    loss: str | Callable = static(default="ce")

    def run(self, keys, model, x, y, *, target=None) -> AttackResult:
        loss_fn = L.resolve(self.loss, target is not None)
        lbl = y if target is None else target
        g, _, _ = loss_grad(model, loss_fn, x, lbl)
        adv = x + self.threat.ascent_step(g, self.threat.eps)
        return finalize(
            self.threat,
            model,
            x,
            adv,
            y,
            target=target,
            queries=jnp.ones((x.shape[0],), jnp.int32),
        )


@register
@pytree_dataclass
class PGD(AbstractAttack):
    """Projected gradient descent with random start (Madry et al., 2018).

    Per example the best point over all steps and restarts is kept: a successful iterate beats an
    unsuccessful one, then the higher loss wins (so restarts can only help).

    Attributes:
        threat: the threat model (``LinfBall``, ``L2Ball``, ``L1Ball``).
        step_size: step length in the threat's norm; ``None`` means ``2.5 * eps / num_steps``.
        num_steps: gradient steps per restart (static).
        num_restarts: independent random restarts (static).
        random_start: start from a uniform point of the ball (static).
        loss: ``'ce'``, ``'margin'``, ``'dlr'`` or a callable ``(logits, y) -> [B]`` (static).
        early_stop: freeze an example as soon as it is adversarial, and stop the step loop once
            every example of the batch is frozen (static; ``unroll`` is then ignored). Success
            is that of the full run; ``adv`` is the first adversarial iterate, ``queries`` count the
            steps taken.
        unroll: ``lax.fori_loop`` unroll factor for the step loop (static); ``True`` means
            ``num_steps`` (straight-line code: about 2x faster on XLA:CPU, where convolution
            gradients inside a loop take a slow path, at a longer compile; see benchmarks/loops.py).

    Example:
        >>> import jax, jax.numpy as jnp, jaxadv
        >>> model = jaxadv.from_apply(lambda w, x: x.reshape(x.shape[0], -1) @ w, jnp.eye(4, 2))
        >>> pgd = jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.1), num_steps=5)
        >>> res = pgd(jax.random.key(0), model, jnp.full((2, 2, 2, 1), 0.5), jnp.array([0, 1]))
        >>> res.adv.shape, res.success.dtype
        ((2, 2, 2, 1), dtype('bool'))
    """

    oracle: ClassVar[str] = "gradient"
    budget_field: ClassVar[str | None] = "num_steps"
    restarts_field: ClassVar[str | None] = "num_restarts"
    threats: ClassVar[tuple[type, ...]] = (LinfBall, L2Ball, L1Ball)
    settings: ClassVar[Mapping[str, V.Range]] = {
        "step_size": V.positive(),
        "num_steps": V.at_least(1),
        "num_restarts": V.at_least(1),
    }

    threat: Any
    step_size: float | Array | None = None
    num_steps: int = static(default=10)
    num_restarts: int = static(default=1)
    random_start: bool = static(default=True)
    loss: str | Callable = static(default="ce")
    early_stop: bool = static(default=False)
    unroll: int | bool = static(default=1)

    def __post_init__(self):
        if self.unroll is True:
            # jit caches compare static fields with ==, and True == 1: left as True, a fully
            # unrolled PGD would silently reuse a compiled unroll=1 program (and vice versa).
            object.__setattr__(self, "unroll", self.num_steps)

    def step_length(self, dtype) -> Array:
        """The step in the threat's norm: ``step_size``, or ``2.5 * eps / num_steps`` when unset."""
        if self.step_size is None:
            return jnp.asarray(self.threat.eps, dtype) * (2.5 / self.num_steps)
        return jnp.asarray(self.step_size, dtype)

    def run(self, keys, model, x, y, *, target=None) -> AttackResult:
        threat = self.threat
        loss_fn = L.resolve(self.loss, target is not None)
        lbl = y if target is None else target
        step = self.step_length(x.dtype)
        b = x.shape[0]

        def pgd_step(_, xa):
            # Scores the current iterate, then moves it (the driver freezes finished examples).
            g, per, logits = loss_grad(model, loss_fn, xa, lbl)
            succ = L.is_adversarial(logits, y, target)
            xn = threat.project(x, xa + threat.ascent_step(g, step))
            return xn, Scored(point=xa, success=succ, score=per)

        def restart(r, carry):
            best, queries = carry
            rkeys = jax.vmap(lambda k: jax.random.fold_in(k, r))(keys)
            x0 = threat.random_init(rkeys, x) if self.random_start else x
            out = iterate(
                pgd_step,
                x0,
                stop=self.num_steps,
                active=jnp.ones((b,), bool),
                queries=queries,
                best=best,
                # Once every example is frozen the remaining steps change nothing: leave the
                # loop (same result, fewer gradients when a whole batch breaks early).
                done=(lambda _, sc: sc.success) if self.early_stop else None,
                exit_early=self.early_stop,
                unroll=self.unroll,
            )
            # The last iterate has not been scored yet.
            logits = model(out.state)
            last = Scored(
                point=out.state,
                success=L.is_adversarial(logits, y, target),
                score=loss_fn(logits, lbl),
            )
            best = keep_best(out.best, masked(last, out.active))
            return best, out.queries + out.active.astype(jnp.int32)

        carry = (Best.empty(x), jnp.zeros((b,), jnp.int32))
        if self.num_restarts == 1:
            # No loop around a single restart: on XLA:CPU any enclosing while loop keeps the
            # step loop from being straight-line code even with ``unroll=True``, and inside a
            # while body the input-gradient convolutions take a slow path (see
            # benchmarks/loops.py). Same computation, same results.
            best, queries = restart(0, carry)
        else:
            best, queries = jax.lax.fori_loop(0, self.num_restarts, restart, carry)
        return finalize(threat, model, x, best.point, y, target=target, queries=queries)
