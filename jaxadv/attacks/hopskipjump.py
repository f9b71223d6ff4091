"""HopSkipJump (Chen, Jordan, Wainwright, IEEE S&P 2020; arXiv 1904.02144): a label-only,
minimum-norm attack that walks along the decision boundary.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv import _validate as V
from jaxadv._struct import pytree_dataclass, replace, static
from jaxadv.attacks import _blackbox as bb
from jaxadv.attacks.base import AbstractAttack, register
from jaxadv.attacks.driver import iterate
from jaxadv.result import AttackResult, finalize
from jaxadv.threats import L2Ball, LinfBall

Array = jax.Array


@register
@pytree_dataclass
class HopSkipJump(AbstractAttack):
    """HopSkipJump attack (Chen et al., 2020): reads only the model's top label.

    Per example: one query on ``x`` (clean errors are returned as they are); uniform noise images
    until one is adversarial (``init_tries`` at most; an example without one is left at ``x``);
    then ``num_iterations`` rounds of

    1. a binary search between ``x`` and the current adversarial point, to the boundary
       (``ceil(log2(1 / theta))`` queries, ``theta = gamma / d^{3/2}`` for L2 and
       ``gamma / d^2`` for L∞; for L∞ the search is over the radius of a box around ``x``);
    2. a Monte-Carlo estimate of the boundary's normal at that point from
       ``n_t = min(init_num_evals * sqrt(t), max_num_evals)`` label queries on random directions
       of radius ``delta_t`` (``0.1 * (hi - lo)`` at ``t = 1``, then ``sqrt(d) theta dist`` for L2
       and ``d theta dist`` for L∞), with the sample mean as baseline;
    3. a geometric step-size search: ``xi = dist / sqrt(t)``, halved until the step along the
       estimate (its sign for L∞) is adversarial (one query per try, ``max_halvings`` at most).

    and a final binary search. Every point the attack keeps is adversarial; per example the one
    closest to ``x`` is returned, and ``info['norm_history'][B, num_iterations]`` records the
    distance of the current boundary point after each round. An example stops early once its
    distance is at most ``threat.eps`` (it is then a success of the threat model) unless
    ``early_stop=False``. The library projects the result into the threat set, so a
    point farther than ``eps`` usually stops being adversarial and counts as a failure.

    Queries are counted per example while it is active; the gradient samples are evaluated in
    chunks of ``init_num_evals`` (padded samples are computed but neither used nor charged).

    Deviations from the paper / reference code: the initial binary search starts directly from
    the noise image (no separate blending search); targeted runs also start from uniform noise
    (the paper starts from an image of the target class), so they can fail to start; the search
    counts are fixed per round, so the query count of a round depends only on the step search.

    Attributes:
        threat: ``L2Ball`` or ``LinfBall``; ``eps`` only decides early exit and success.
        num_iterations: rounds (static; the paper plots up to ~100).
        init_num_evals: ``B_0``, gradient samples at ``t = 1`` and the chunk size (static; 100).
        max_num_evals: cap on the samples per round (static; 10,000).
        gamma: the ``gamma`` of ``theta`` (static, as it sets the search lengths; 1.0).
        init_tries: uniform noise images tried for a start (static; 100).
        max_halvings: cap of the step-size search (static; 25).
        early_stop: stop an example once its distance is at most ``eps`` (static). ``False``
            runs every round (a minimum-norm attack, e.g. with ``eps = inf``).

    Example:
        >>> import jax, jax.numpy as jnp, jaxadv
        >>> model = jaxadv.from_apply(lambda w, x: x.reshape(x.shape[0], -1) @ w, jnp.eye(4, 2))
        >>> hsj = jaxadv.HopSkipJump(threat=jaxadv.L2Ball(eps=1.0), num_iterations=3)
        >>> x, y = jnp.array([[[[0.6], [0.4]], [[0.5], [0.5]]]]), jnp.array([0])
        >>> res = hsj(jax.random.key(0), model, x, y)
        >>> bool(res.success[0])
        True
    """

    oracle: ClassVar[str] = "labels"
    budget_field: ClassVar[str | None] = "num_iterations"
    restarts_field: ClassVar[str | None] = None
    threats: ClassVar[tuple[type, ...]] = (LinfBall, L2Ball)
    settings: ClassVar[Mapping[str, V.Range]] = {
        "num_iterations": V.at_least(1),
        "init_num_evals": V.at_least(1),
        "max_num_evals": V.at_least(1),
        "gamma": V.positive(),
        "init_tries": V.at_least(1),
        "max_halvings": V.at_least(0),
    }

    threat: Any
    num_iterations: int = static(default=40)
    init_num_evals: int = static(default=100)
    max_num_evals: int = static(default=10000)
    gamma: float = static(default=1.0)
    init_tries: int = static(default=100)
    max_halvings: int = static(default=25)
    early_stop: bool = static(default=True)

    def __post_init__(self):
        if self.max_num_evals < self.init_num_evals:
            raise ValueError("HopSkipJump needs max_num_evals >= init_num_evals")

    def num_binary_steps(self, d: int) -> int:
        """Queries of one boundary search on inputs of ``d`` values (fixed: ``log2(1/theta)``
        halvings)."""
        theta = self.gamma / (d**1.5 if self.threat.p == 2.0 else d**2)
        return max(1, math.ceil(math.log2(1.0 / theta)))

    def num_evals(self, t: int) -> int:
        """Gradient samples in round ``t`` (1-based)."""
        return min(int(self.init_num_evals * math.sqrt(t)), self.max_num_evals)

    def run(self, keys, model, x, y, *, target=None) -> AttackResult:
        threat = self.threat
        l2 = threat.p == 2.0
        b = x.shape[0]
        dt = x.dtype
        d = int(np.prod(x.shape[1:]))
        lo = jnp.asarray(threat.lo, dt)
        hi = jnp.asarray(threat.hi, dt)
        theta = self.gamma / (d**1.5 if l2 else float(d) ** 2)
        n_bin = self.num_binary_steps(d)
        chunk = self.init_num_evals
        eps = jnp.broadcast_to(jnp.asarray(threat.eps, dt), (b,))
        i32 = lambda m: m.astype(jnp.int32)  # noqa: E731

        def adversarial(z):
            """Top-label oracle on ``z[N, ...]`` (``N`` a multiple of ``B``): ``bool[N]``."""
            reps = z.shape[0] // b
            pred = bb.labels(model, z)
            t = None if target is None else jnp.repeat(target, reps)
            return bb.is_adversarial_label(pred, jnp.repeat(y, reps), t)

        def dist(z):
            return threat.norm(z - x)

        def boundary(xa, act, q):
            """Binary search from adversarial ``xa`` toward ``x``; the adversarial end."""
            if l2:
                point = lambda a: x + bb.bcast(a, x) * (xa - x)  # noqa: E731
                top = jnp.ones((b,), dt)
            else:
                point = lambda a: jnp.clip(xa, x - bb.bcast(a, x), x + bb.bcast(a, x))  # noqa: E731
                top = dist(xa)

            def step(_, s):
                low, high = s
                mid = (low + high) / 2
                a = adversarial(point(mid))
                return jnp.where(a, low, mid), jnp.where(a, mid, high)

            _, high = jax.lax.fori_loop(0, n_bin, step, (jnp.zeros_like(top), top))
            return bb.bsel(act, point(high), xa), q + n_bin * i32(act)

        # -- clean check and start point
        succ0 = adversarial(x)
        queries = jnp.ones((b,), jnp.int32)

        def s_step(it, s):
            found, start = s
            u = jax.vmap(lambda k: jax.random.uniform(k, x.shape[1:], dt))(
                bb.fold(bb.fold(keys, 0), it)
            )
            u = lo + (hi - lo) * u
            a = adversarial(u)
            # the driver freezes the examples that stopped searching
            return (found | a, bb.bsel(a, u, start)), None

        search = iterate(
            s_step,
            (jnp.zeros((b,), bool), x),
            stop=self.init_tries,
            active=~succ0,
            queries=queries,
            done=lambda s, _: s[0],
            exit_early=True,
        )
        (found, xa), queries = search.state, search.queries
        xa, queries = boundary(xa, found, queries)
        dcur = jnp.where(found, dist(xa), jnp.where(succ0, 0.0, jnp.inf)).astype(dt)
        active = found & ((dcur > eps) | (not self.early_stop))
        rows = jnp.arange(b)

        def estimate(ks, xb, delta, n_t):
            """Sums over ``n_t`` samples (chunks of ``chunk``): sum f, sum u, sum f u."""

            def c_body(j, acc):
                sf, su, sfu = acc
                kj = bb.fold(ks, j)
                if l2:
                    u = jax.vmap(lambda k: jax.random.normal(k, (chunk,) + x.shape[1:], dt))(kj)
                else:
                    u = jax.vmap(
                        lambda k: jax.random.uniform(k, (chunk,) + x.shape[1:], dt, -1, 1)
                    )(kj)
                n = jnp.sqrt(jnp.sum(jnp.square(u.reshape(b, chunk, -1)), axis=2))
                u = u / bb.bcast(jnp.maximum(n, 1e-12), u)
                dl = bb.bcast(delta, u)
                pert = threat.clip_box(xb[:, None] + dl * u)
                u = (pert - xb[:, None]) / dl  # the box may have shortened some directions
                a = bb.over_population(adversarial, pert)  # [B, chunk]
                valid = (j * chunk + jnp.arange(chunk)) < n_t
                f = jnp.where(valid[None, :], 2 * a.astype(dt) - 1, 0.0)
                uv = jnp.where(bb.bcast(jnp.broadcast_to(valid[None, :], f.shape), u), u, 0.0)
                return (
                    sf + jnp.sum(f, axis=1),
                    su + jnp.sum(uv, axis=1),
                    sfu + jnp.sum(bb.bcast(f, u) * u, axis=1),
                )

            zero = jnp.zeros_like(x)
            n_chunks = (n_t + chunk - 1) // chunk
            return jax.lax.fori_loop(0, n_chunks, c_body, (jnp.zeros((b,), dt), zero, zero))

        def hsj_step(t, s, act):
            # Queries vary per example (inner searches), so the step gets the active mask and
            # masks its own state (the history is written for every example).
            tf = t.astype(dt)
            ks = bb.fold(keys, t)
            xb, dcur, q = s["xa"], s["dist"], jnp.zeros((b,), jnp.int32)

            # -- 2. boundary normal
            n_t = jnp.minimum(
                (self.init_num_evals * jnp.sqrt(tf)).astype(jnp.int32), self.max_num_evals
            )
            scale = jnp.sqrt(float(d)) if l2 else float(d)
            delta = jnp.where(t == 1, 0.1 * (hi - lo), scale * theta * dcur)
            delta = jnp.maximum(delta, 1e-12)
            sf, su, sfu = estimate(ks, xb, delta, n_t)
            nf = n_t.astype(dt)
            mean_f = sf / nf
            g = jnp.where(
                bb.bcast(mean_f >= 1, su),
                su,
                jnp.where(bb.bcast(mean_f <= -1, su), -su, sfu - bb.bcast(mean_f, su) * su),
            )
            q = q + n_t * i32(act)
            if l2:
                v = g / bb.bcast(jnp.maximum(bb.flat_norm2(g), 1e-12), g)
            else:
                v = jnp.sign(g)

            # -- 3. geometric step-size search
            def g_step(_, gs):
                xi, moved, xn = gs
                cand = threat.clip_box(xb + bb.bcast(xi, xb) * v)
                a = adversarial(cand)
                # the driver freezes (and stops charging) the examples that have moved
                return (jnp.where(~a, xi / 2, xi), moved | a, bb.bsel(a, cand, xn)), None

            xi0 = dcur / jnp.sqrt(tf)
            search = iterate(
                g_step,
                (xi0, jnp.zeros((b,), bool), xb),
                stop=self.max_halvings,
                active=act,
                queries=q,
                done=lambda gs, _: gs[1],
                exit_early=True,
            )
            (_, moved, xn), q = search.state, search.queries

            # -- 1. (next round's) boundary search from the new point
            xn, q = boundary(xn, act & moved, q)
            dn = dist(xn)
            better = act & moved & (dn < s["best_dist"])
            best = bb.bsel(better, xn, s["best"])
            best_dist = jnp.where(better, dn, s["best_dist"])
            d_new = jnp.where(act & moved, dn, dcur)
            hist = s["hist"].at[rows, t - 1].set(jnp.where(act, d_new, s["hist"][rows, t - 2]))
            new = dict(
                xa=bb.bsel(act & moved, xn, xb),
                dist=d_new,
                best=best,
                best_dist=best_dist,
                hist=hist,
            )
            return new, None, q

        state = dict(
            xa=xa,
            dist=dcur,
            best=xa,
            best_dist=dcur,
            hist=jnp.zeros((b, self.num_iterations + 1), dt).at[:, -1].set(dcur),
        )

        def finished(s, _):
            if self.early_stop:
                return ~(s["best_dist"] > eps)
            return jnp.zeros((b,), bool)

        loop = iterate(
            hsj_step,
            state,
            start=1,
            stop=self.num_iterations + 1,
            active=active,
            queries=queries,
            cost=None,
            done=finished,
            exit_early=True,
            freeze_state=False,
        )
        out, t_end = loop.state, loop.stop
        # rounds an example skipped (finished early) repeat its last distance
        hist = out["hist"][:, :-1]
        ran = jnp.arange(self.num_iterations)[None, :] < (t_end - 1)
        last = out["hist"][:, (t_end - 2) % (self.num_iterations + 1)]
        hist = jnp.where(ran, hist, last[:, None])
        res = finalize(threat, model, x, out["best"], y, target=target, queries=loop.queries)
        return replace(res, info={**res.info, "norm_history": hist})
