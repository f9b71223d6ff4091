"""Classic minimum-norm gradient attacks: Carlini–Wagner L2, DDN and DeepFool (L2 / L∞).

All three look for the *smallest* adversarial perturbation and are not bounded by the threat
model's ``eps``: the search runs as in the paper, and the library then projects the result into
the threat set (:func:`jaxadv.result.finalize`), so success means "an adversarial point within
``eps`` was found". With ``eps=jnp.inf`` (the whole box) ``res.norm`` is the norm each attack
found, the quantity the papers report; with a finite ``eps`` a point found farther away is shrunk
onto the ball and usually stops being adversarial (a failure at that budget, like HopSkipJump).
``eps`` is read by nothing else, so a new budget never retraces and an eps grid is a ``vmap``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxadv import _validate as V
from jaxadv import losses as L
from jaxadv._batch import bcast, bsel
from jaxadv._struct import float32_fields, pytree_dataclass, static
from jaxadv._xla_cpu import canonical_convs
from jaxadv.attacks.base import AbstractAttack, fold_keys, register
from jaxadv.attacks.driver import Best, Scored, iterate, keep_best
from jaxadv.attacks.gradient import loss_grad
from jaxadv.result import AttackResult, finalize
from jaxadv.threats import L2Ball, LinfBall

Array = jax.Array

_TINY = 1e-12


def _l2(v: Array) -> Array:
    """Per-example L2 norm ``[B]`` of ``v[B, ...]``."""
    return jnp.sqrt(jnp.sum(jnp.square(v.reshape(v.shape[0], -1)), axis=1))


def _box(threat: Any, x: Array) -> tuple[Array, Array]:
    """The threat's box bounds broadcast to ``x``'s shape (scalars or per-channel arrays)."""
    lo = jnp.broadcast_to(jnp.asarray(threat.lo, x.dtype), x.shape)
    hi = jnp.broadcast_to(jnp.asarray(threat.hi, x.dtype), x.shape)
    return lo, hi


def _success(
    logits: Array,
    y: Array,
    target: Array | None = None,
    kappa: float = 0.0,
    overshoot: float | Array | None = None,
) -> Array:
    """The library's success rule on finite logits only (a NaN row's argmax is 0: read naively it
    could count as misclassified and steer the search). ``kappa``: the threat's
    ``success_margin`` (static), so the search aims past the margin :func:`finalize` demands;
    ``overshoot``: the attack's headroom past it (:func:`jaxadv.losses.is_adversarial`)."""
    ok = L.is_adversarial(logits, y, target, success_margin=kappa, overshoot=overshoot)
    return ok & jnp.all(jnp.isfinite(logits), axis=1)


def _margin(logits: Array, y: Array, target: Array | None) -> Array:
    """The adversarial margin ``[B]`` (> 0 exactly on success), targeted when ``target`` is set."""
    return L.margin(logits, y) if target is None else L.margin_targeted(logits, target)


# ------------------------------------------------------------------------------------------ CW
@pytree_dataclass
class CWState:
    """One Adam run of CW: the tanh-space iterate ``w`` with Adam's moments, the loss at the last
    early-abort check, whether this run found a ``confidence``-adversarial point, and whether the
    example aborted (no progress since the last check)."""

    w: Array
    m: Array
    v: Array
    prev: Array
    found: Array
    aborted: Array


@register
@pytree_dataclass
class CW(AbstractAttack):
    """Carlini–Wagner L2 attack (Carlini & Wagner, "Towards evaluating the robustness of neural
    networks", IEEE S&P 2017).

    Per example it minimises ``||x' - x||_2^2 + c * max(z_y - max_{j != y} z_j + kappa, 0)``
    (targeted: ``max(max_{j != t} z_j - z_t + kappa, 0)``) over ``x' = mid + half * tanh(w)``,
    which keeps ``x'`` inside the box ``[lo, hi]`` without clipping, with Adam from ``w`` at ``x``.
    The constant ``c`` starts at ``initial_const`` and is searched per example over
    ``num_binary_steps`` runs: multiplied by 10 until a run finds a point whose margin is at least
    ``kappa`` (and past ``threat.success_margin + overshoot``), then bisected between the largest failing and smallest succeeding ``c``; with 10 or
    more binary steps the last one uses the smallest succeeding ``c`` (``upper``), as the authors'
    code does. Each run restarts Adam from ``x``. Per example the smallest perturbation over all
    runs whose margin reaches ``kappa`` is returned (``x`` itself when none does).

    Defaults are those of the authors' code and of foolbox 3 (``L2CarliniWagnerAttack``): 9 binary
    steps, 10,000 Adam steps of size 0.01 per binary step, ``initial_const = 1e-3``, ``kappa = 0``,
    early abort on; except ``overshoot`` (default ``1e-3``, ``0`` is the authors' rule). These are expensive; minimum-norm comparisons in the literature often use far
    fewer steps (e.g. 100–1,000).

    Deviations: early abort (every ``ceil(num_steps / 10)`` steps, stop the run if the loss did not
    fall below 0.9999 times its value at the previous check) is decided per example on that
    example's loss, as the authors' code does at its default batch size of 1, not on the batch's
    summed loss as it and foolbox do for larger batches, so results do not depend on the other
    examples of the batch (an example then stops sooner: ``benchmarks/RESULTS.md``); the point
    evaluated at the aborting step still counts for the best.

    Attributes:
        threat: ``L2Ball``; ``eps`` only decides success (see the module doc).
        num_steps: Adam steps per binary-search step (static; the budget ``--num-steps`` sets).
        num_binary_steps: binary-search steps over ``c`` (static).
        step_size: Adam's learning rate.
        confidence: the margin ``kappa`` a point must reach to count (``>= 0``).
        initial_const: the first ``c``.
        overshoot: logit headroom (a leaf, default ``1e-3``), as FMN's and FAB's: a point counts
            only when its margin exceeds ``threat.success_margin + overshoot``, and the hinge
            aims at ``max(kappa, threat.success_margin + overshoot)``, so the returned point lies
            strictly past the boundary and keeps its label under re-evaluation (issue 19; its
            margin is ``res.loss``). ``0`` with ``success_margin=0`` is the paper's rule, bit for
            bit. The final success is still decided by :func:`~jaxadv.result.finalize`.
        abort_early: stop an Adam run once its loss stalls (static).

    Queries: one per Adam step run (a forward and backward pass) plus the final re-evaluation.

    Example:
        >>> import jax, jax.numpy as jnp, jaxadv
        >>> model = jaxadv.from_apply(lambda w, x: x.reshape(x.shape[0], -1) @ w, jnp.eye(4, 2))
        >>> cw = jaxadv.CW(threat=jaxadv.L2Ball(eps=jnp.inf), num_steps=50, num_binary_steps=5)
        >>> x, y = jnp.array([[[[0.6], [0.4]], [[0.5], [0.5]]]]), jnp.array([0])
        >>> res = cw(jax.random.key(0), model, x, y)
        >>> bool(res.success[0]), round(float(res.norm[0]), 2)  # closed form 0.2 / sqrt(2)
        (True, 0.14)
    """

    oracle: ClassVar[str] = "gradient"
    budget_field: ClassVar[str | None] = "num_steps"
    restarts_field: ClassVar[str | None] = None
    threats: ClassVar[tuple[type, ...]] = (L2Ball,)
    settings: ClassVar[Mapping[str, V.Range]] = {
        "num_steps": V.at_least(1),
        "num_binary_steps": V.at_least(1),
        "step_size": V.positive(),
        "confidence": V.Range(0.0, math.inf),
        "initial_const": V.positive(),
        "overshoot": V.Range(0.0, math.inf),
    }

    threat: Any
    num_steps: int = static(default=10000)
    num_binary_steps: int = static(default=9)
    step_size: float | Array = 1e-2
    confidence: float | Array = 0.0
    initial_const: float | Array = 1e-3
    abort_early: bool = static(default=True)
    overshoot: float | Array = 1e-3

    def __post_init__(self) -> None:
        float32_fields(self, "step_size", "confidence", "initial_const", "overshoot")

    def run(self, keys, model, x, y, *, target=None) -> AttackResult:
        b = x.shape[0]
        dt = x.dtype
        lo, hi = _box(self.threat, x)
        mid, half = (lo + hi) / 2, (hi - lo) / 2
        # arctanh(+-1) is infinite: pull pixels at the bounds in by a hair (the authors' 0.999999)
        w0 = jnp.arctanh(jnp.clip((x - mid) / half, -1.0, 1.0) * (1 - 1e-6))
        kappa = jnp.asarray(self.confidence, dt)
        # the hinge aims past the margin a point must clear to count (0: the paper's, bit for bit)
        thr = jnp.asarray(self.threat.success_margin, jnp.float32) + self.overshoot
        aim = jnp.maximum(kappa, thr.astype(dt))
        lr = jnp.asarray(self.step_size, dt)
        b1, b2 = 0.9, 0.999
        period = math.ceil(self.num_steps / 10)

        def objective(w, c):
            xa = jnp.tanh(w) * half + mid
            logits = model(xa)
            m = _margin(logits, y, target)
            dist2 = jnp.sum(jnp.square((xa - x).reshape(b, -1)), axis=1)
            per = dist2 + c * jnp.maximum(aim - m, 0.0)
            return jnp.sum(per), (per, logits, xa, m, dist2)

        # canonical_convs: fast convolution input-gradients on XLA:CPU inside the loop
        grad_fn = canonical_convs(jax.grad(objective, has_aux=True))

        def binary_step(k, carry):
            consts, lower, upper, best, queries = carry
            if self.num_binary_steps >= 10:
                # the authors' "repeat": the last run uses the smallest successful constant
                last = k == self.num_binary_steps - 1
                consts = jnp.where(last, jnp.minimum(upper, 1e10), consts)

            def adam_step(i, s: CWState):
                g, (per, logits, xa, m, dist2) = grad_fn(s.w, consts)
                succ = _success(logits, y, target, self.threat.success_margin, self.overshoot) & (
                    m >= kappa
                )
                t = (jnp.asarray(i, jnp.int32) + 1).astype(dt)
                mom = b1 * s.m + (1 - b1) * g
                vel = b2 * s.v + (1 - b2) * jnp.square(g)
                mhat = mom / (1 - jnp.power(jnp.asarray(b1, dt), t))
                vhat = vel / (1 - jnp.power(jnp.asarray(b2, dt), t))
                w = s.w - lr * mhat / (jnp.sqrt(vhat) + 1e-8)
                prev, aborted = s.prev, s.aborted
                if self.abort_early:
                    check = (jnp.asarray(i, jnp.int32) % period) == 0
                    aborted = aborted | (check & ~(per <= 0.9999 * prev))
                    prev = jnp.where(check, per, prev)
                new = CWState(w=w, m=mom, v=vel, prev=prev, found=s.found | succ, aborted=aborted)
                return new, Scored(point=xa, success=succ, score=-jnp.sqrt(dist2))

            s0 = CWState(
                w=w0,
                m=jnp.zeros_like(x),
                v=jnp.zeros_like(x),
                prev=jnp.full((b,), jnp.inf, dt),
                found=jnp.zeros((b,), bool),
                aborted=jnp.zeros((b,), bool),
            )
            out = iterate(
                adam_step,
                s0,
                stop=self.num_steps,
                active=jnp.ones((b,), bool),
                queries=queries,
                best=best,
                done=(lambda s, _: s.aborted) if self.abort_early else None,
                exit_early=self.abort_early,
            )
            found = out.state.found
            upper = jnp.where(found, jnp.minimum(upper, consts), upper)
            lower = jnp.where(found, lower, jnp.maximum(lower, consts))
            consts = jnp.where(upper < 1e9, (lower + upper) / 2, consts * 10)
            return consts, lower, upper, out.best, out.queries

        carry = (
            jnp.full((b,), jnp.asarray(self.initial_const, dt)),
            jnp.zeros((b,), dt),
            jnp.full((b,), 1e10, dt),
            Best.empty(x),
            jnp.zeros((b,), jnp.int32),
        )
        _, _, _, best, queries = jax.lax.fori_loop(0, self.num_binary_steps, binary_step, carry)
        adv = bsel(best.success, best.point, x)
        return finalize(self.threat, model, x, adv, y, target=target, queries=queries)


# ----------------------------------------------------------------------------------------- DDN
@pytree_dataclass
class DDNState:
    """DDN's per-example state: the perturbation and the norm ``eps_k`` it is rescaled to."""

    delta: Array
    eps_k: Array


@register
@pytree_dataclass
class DDN(AbstractAttack):
    """Decoupled Direction and Norm (Rony et al., "Decoupling direction and norm for efficient
    gradient-based L2 adversarial attacks and defenses", CVPR 2019).

    Each step takes a normalised gradient step of the cross-entropy (ascent of the true label's,
    or descent of the target's) of length ``alpha_k``, cosine-annealed from ``alpha_init`` to
    ``alpha_final``, then rescales the perturbation to norm ``eps_k``: ``eps_k`` shrinks by
    ``(1 - gamma)`` when the previous point was adversarial and grows by ``(1 + gamma)`` when not
    (capped at the largest norm the box allows), and the point is clipped to the box. Per example
    the smallest adversarial perturbation seen is returned (``x`` when none).

    Defaults are the paper's and foolbox 3's (``DDNAttack``): 100 steps, ``gamma = 0.05``,
    ``eps_0 = 1``, step cosine-annealed from 1 to 0.01. A zero gradient is replaced by Gaussian
    noise (as in the reference code), drawn from the example's own key. Not done: the paper's
    optional quantisation to 256 levels (foolbox does not do it either).

    Attributes:
        threat: ``L2Ball``; ``eps`` only decides success (see the module doc).
        num_steps: iterations (static).
        gamma: the factor by which the norm grows or shrinks, in ``(0, 1)``.
        init_norm: ``eps_0``, the first norm.
        alpha_init, alpha_final: the step length's cosine schedule.
        overshoot: logit headroom (a leaf, default ``1e-3``), as FMN's and FAB's: a point counts
            as adversarial (for the norm update and the best point) only when its margin exceeds
            ``threat.success_margin + overshoot``, so the returned point lies strictly past the
            boundary and keeps its label under re-evaluation (issue 19; its margin is
            ``res.loss``). ``0`` with ``success_margin=0`` is the paper's argmax rule, bit for bit.

    Queries: one per step (a forward and backward pass), one for the last iterate, one for the
    final re-evaluation.

    Example:
        >>> import jax, jax.numpy as jnp, jaxadv
        >>> model = jaxadv.from_apply(lambda w, x: x.reshape(x.shape[0], -1) @ w, jnp.eye(4, 2))
        >>> ddn = jaxadv.DDN(threat=jaxadv.L2Ball(eps=jnp.inf), num_steps=100)
        >>> x, y = jnp.array([[[[0.6], [0.4]], [[0.5], [0.5]]]]), jnp.array([0])
        >>> res = ddn(jax.random.key(0), model, x, y)
        >>> bool(res.success[0]), round(float(res.norm[0]), 2)  # closed form 0.2 / sqrt(2)
        (True, 0.14)
    """

    oracle: ClassVar[str] = "gradient"
    budget_field: ClassVar[str | None] = "num_steps"
    restarts_field: ClassVar[str | None] = None
    threats: ClassVar[tuple[type, ...]] = (L2Ball,)
    settings: ClassVar[Mapping[str, V.Range]] = {
        "num_steps": V.at_least(1),
        "gamma": V.unit(lo_open=True, hi_open=True),
        "init_norm": V.positive(),
        "alpha_init": V.positive(),
        "alpha_final": V.positive(),
        "overshoot": V.Range(0.0, math.inf),
    }

    threat: Any
    num_steps: int = static(default=100)
    gamma: float | Array = 0.05
    init_norm: float | Array = 1.0
    alpha_init: float | Array = 1.0
    alpha_final: float | Array = 0.01
    overshoot: float | Array = 1e-3

    def __post_init__(self) -> None:
        float32_fields(self, "gamma", "init_norm", "alpha_init", "alpha_final", "overshoot")

    def run(self, keys, model, x, y, *, target=None) -> AttackResult:
        b = x.shape[0]
        dt = x.dtype
        lo, hi = _box(self.threat, x)
        lbl = y if target is None else target
        loss_fn = L.ce if target is None else L.ce_targeted
        gamma = jnp.asarray(self.gamma, dt)
        a0, a1 = jnp.asarray(self.alpha_init, dt), jnp.asarray(self.alpha_final, dt)
        # the largest norm a perturbation inside the box can have
        worst = _l2(jnp.maximum(x - lo, hi - x))

        def ddn_step(i, s: DDNState):
            xa = x + s.delta
            g, _, logits = loss_grad(model, loss_fn, xa, lbl)
            succ = _success(logits, y, target, self.threat.success_margin, self.overshoot)
            noise = jax.vmap(lambda k: jax.random.normal(k, x.shape[1:], dt))(fold_keys(keys, i))
            g = bsel(_l2(g) == 0, noise, g)
            g = g / bcast(jnp.maximum(_l2(g), _TINY), g)
            k = jnp.asarray(i, jnp.int32).astype(dt)
            alpha = a1 + (a0 - a1) * (1 + jnp.cos(math.pi * k / self.num_steps)) / 2
            delta = s.delta + alpha * g
            eps_k = jnp.minimum(s.eps_k * jnp.where(succ, 1 - gamma, 1 + gamma), worst)
            delta = delta * bcast(eps_k / jnp.maximum(_l2(delta), _TINY), delta)
            delta = jnp.clip(x + delta, lo, hi) - x
            return DDNState(delta=delta, eps_k=eps_k), Scored(
                point=s.delta, success=succ, score=-_l2(s.delta)
            )

        s0 = DDNState(
            delta=jnp.zeros_like(x), eps_k=jnp.full((b,), jnp.asarray(self.init_norm, dt))
        )
        out = iterate(
            ddn_step,
            s0,
            stop=self.num_steps,
            active=jnp.ones((b,), bool),
            queries=jnp.zeros((b,), jnp.int32),
            best=Best.empty(jnp.zeros_like(x)),
        )
        last = out.state.delta
        logits = model(x + last)
        best = keep_best(
            out.best,
            Scored(
                point=last,
                success=_success(logits, y, target, self.threat.success_margin, self.overshoot),
                score=-_l2(last),
            ),
        )
        adv = x + bsel(best.success, best.point, jnp.zeros_like(x))
        return finalize(self.threat, model, x, adv, y, target=target, queries=out.queries + 1)


# ------------------------------------------------------------------------------------ DeepFool
@pytree_dataclass
class DeepFoolState:
    """DeepFool's per-example state: the current point, the accumulated step ``r_tot`` and whether
    the current point is adversarial."""

    x_adv: Array
    r_tot: Array
    adv: Array


@register
@pytree_dataclass
class DeepFool(AbstractAttack):
    """DeepFool (Moosavi-Dezfooli, Fawzi & Frossard, "DeepFool: a simple and accurate method to
    fool deep neural networks", CVPR 2016), L2 and L∞; untargeted.

    The candidate classes are the ``num_candidates`` largest clean logits (all classes when the
    model has fewer), the true label first. Each iteration linearises the model at the current
    point, finds the candidate ``l`` whose linearised boundary ``z_l = z_y`` is closest
    (``|f_l| / ||w_l||_q`` with ``f_l = z_l - z_y``, ``w_l`` its gradient and ``q`` the dual
    norm: 2 for L2, 1 for L∞), adds the step to that boundary (``(d_l + 1e-4) w_l / ||w_l||_2``
    for L2, ``(d_l + 1e-4) sign(w_l)`` for L∞) to ``r_tot``, and moves to
    ``clip(x + (1 + overshoot) r_tot)``; an example stops as soon as its point is misclassified
    (or after ``num_steps`` iterations), and its last point is returned. On an affine model
    without an active box this reaches the closest boundary in one step: the norm found is
    ``(1 + overshoot) (min_l |f_l| / ||w_l||_q + 1e-4)``.

    Defaults as in the paper and foolbox 3 (``L2DeepFoolAttack`` / ``LinfDeepFoolAttack``):
    overshoot 0.02, at most 50 iterations, 10 candidates, the logit difference as ``f``.

    Attributes:
        threat: ``L2Ball`` or ``LinfBall``; chooses the norm; ``eps`` only decides success.
        num_steps: the most iterations (static; the paper's ``max_iter``).
        num_candidates: how many of the top clean classes are candidates (static, ``>= 2``).
        overshoot: the step past the boundary, ``>= 0``.

    Queries: one forward pass on ``x``, then per iteration run the ``num_candidates - 1``
    gradients of the logit differences (vector-Jacobian products of one forward pass), plus the
    final re-evaluation.

    Example:
        >>> import jax, jax.numpy as jnp, jaxadv
        >>> model = jaxadv.from_apply(lambda w, x: x.reshape(x.shape[0], -1) @ w, jnp.eye(4, 2))
        >>> df = jaxadv.DeepFool(threat=jaxadv.L2Ball(eps=jnp.inf))
        >>> x, y = jnp.array([[[[0.6], [0.4]], [[0.5], [0.5]]]]), jnp.array([0])
        >>> res = df(jax.random.key(0), model, x, y)
        >>> bool(res.success[0]), round(float(res.norm[0]), 4)  # 1.02 (0.2 / sqrt(2) + 1e-4)
        (True, 0.1444)
    """

    oracle: ClassVar[str] = "gradient"
    budget_field: ClassVar[str | None] = "num_steps"
    restarts_field: ClassVar[str | None] = None
    threats: ClassVar[tuple[type, ...]] = (L2Ball, LinfBall)
    settings: ClassVar[Mapping[str, V.Range]] = {
        "num_steps": V.at_least(1),
        "num_candidates": V.at_least(2),
        "overshoot": V.Range(0.0, math.inf),
    }

    threat: Any
    num_steps: int = static(default=50)
    num_candidates: int = static(default=10)
    overshoot: float | Array = 0.02

    def __post_init__(self) -> None:
        float32_fields(self, "overshoot")

    def run(self, keys, model, x, y, *, target=None) -> AttackResult:
        if target is not None:
            raise ValueError(
                "DeepFool is untargeted: drop target=, or use a targeted minimum-norm attack "
                "(CW, DDN or FMN)"
            )
        b = x.shape[0]
        dt = x.dtype
        lo, hi = _box(self.threat, x)
        l2 = isinstance(self.threat, L2Ball)
        logits0 = model(x)
        c = logits0.shape[1]
        k = min(self.num_candidates, c)
        onehot_y = jax.nn.one_hot(y, c, dtype=dt)
        # the true label first, then the other top clean logits
        _, order = jax.lax.top_k(jnp.where(onehot_y > 0, jnp.inf, logits0), k)
        others = order[:, 1:]  # [B, k - 1]
        # cotangents of the logit differences z_j - z_y, one row per candidate: [k - 1, B, C]
        cots = jax.nn.one_hot(others.T, c, dtype=dt) - onehot_y[None]
        over = jnp.asarray(self.overshoot, dt)

        def diffs(xa):
            logits, vjp = jax.vjp(model, xa)
            (grads,) = jax.vmap(vjp)(cots)
            return logits, grads

        diffs_fn = canonical_convs(diffs)

        def df_step(_, s: DeepFoolState):
            logits, grads = diffs_fn(s.x_adv)  # grads [k - 1, B, ...]
            succ = _success(logits, y, None, self.threat.success_margin)
            f = jnp.take_along_axis(logits, others, axis=1) - jnp.take_along_axis(
                logits, y[:, None], axis=1
            )  # [B, k - 1]
            g = jnp.moveaxis(grads, 0, 1)  # [B, k - 1, ...]
            gflat = g.reshape(b, k - 1, -1)
            if l2:
                gnorm = jnp.sqrt(jnp.sum(jnp.square(gflat), axis=2))
            else:
                gnorm = jnp.sum(jnp.abs(gflat), axis=2)
            dist = jnp.abs(f) / (gnorm + 1e-8)
            pick = jnp.argmin(dist, axis=1)
            d = jnp.take_along_axis(dist, pick[:, None], axis=1)[:, 0] + 1e-4
            w = jnp.take_along_axis(gflat, pick[:, None, None], axis=1)[:, 0].reshape(x.shape)
            if l2:
                r = w * bcast(d / (_l2(w) + 1e-8), w)
            else:
                r = jnp.sign(w) * bcast(d, w)
            r_tot = s.r_tot + r
            moved = jnp.clip(x + (1 + over) * r_tot, lo, hi)
            # an adversarial point stays where it is
            new = DeepFoolState(
                x_adv=bsel(succ, s.x_adv, moved), r_tot=bsel(succ, s.r_tot, r_tot), adv=succ
            )
            return new, None

        s0 = DeepFoolState(x_adv=x, r_tot=jnp.zeros_like(x), adv=jnp.zeros((b,), bool))
        out = iterate(
            df_step,
            s0,
            stop=self.num_steps,
            active=jnp.ones((b,), bool),
            queries=jnp.ones((b,), jnp.int32),  # the clean forward pass
            cost=k - 1,
            done=lambda s, _: s.adv,
            exit_early=True,
        )
        return finalize(self.threat, model, x, out.state.x_adv, y, queries=out.queries)
