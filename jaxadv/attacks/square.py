"""Square Attack (Andriushchenko, Croce, Flammarion, Hein, ECCV 2020; arXiv 1912.00049).

A score-based random search: at every iteration one square window of side ``s`` is re-drawn (L∞:
``±eps`` per channel; L2: a pair of opposite "pseudo-Gaussian" bumps that takes its mass from a second
window), and the candidate is kept when it increases the margin loss. One query per iteration.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv import _validate as V
from jaxadv import losses as L
from jaxadv._struct import pytree_dataclass, static
from jaxadv.attacks import _blackbox as bb
from jaxadv.attacks.base import AbstractAttack, register
from jaxadv.attacks.driver import Scored, iterate
from jaxadv.result import AttackResult, finalize
from jaxadv.threats import L2Ball, LinfBall

Array = jax.Array

#: Points of the p-schedule, in ten-thousandths of the query budget: ``p`` is halved after each
#: (the schedule of the paper, with the extra halving at 500 that its reference code and
#: AutoAttack use).
_P_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
#: Candidate sign vectors drawn per L∞ iteration (the first one that changes the image is used).
_SIGN_TRIES = 4


def p_schedule(i: Array, num_queries: int, p_init: Array) -> Array:
    """Fraction ``p`` of pixels the square covers at iteration ``i`` of a ``num_queries`` budget.

    ``p = p_init / 2^m`` where ``m`` counts the schedule points ``t`` with
    ``floor(10000 i / num_queries) > t``. The thresholds are turned into integer iteration numbers
    on the host, so the comparison is exact for any budget.
    """
    thresholds = [math.ceil((t + 1) * num_queries / 10000) for t in _P_SCHEDULE]
    m = sum((i >= th).astype(jnp.int32) for th in thresholds)
    return p_init * jnp.exp2(-m.astype(p_init.dtype))


def _h2_table(n: int) -> np.ndarray:
    """``H2[m] = sum_{j=1}^{m} 1/j^2`` for ``m = 0..n``."""
    return np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n + 1) ** 2)]).astype(np.float32)


def _bump_pair(li: Array, lj: Array, s: Array, h2: Array) -> Array:
    """The L2 update pattern of the paper (its eq. 6, two halves of opposite sign), unnormalised,
    at local coordinates ``(li, lj)`` of an ``s × s`` window (0 outside it).

    Each half is a ``hh × s`` rectangle of concentric rings around its centre
    ``(hh // 2, s // 2)``; a pixel at ring distance ``d`` (Chebyshev) gets
    ``sum_{m=d+1}^{K} 1/m^2 = H2[K] - H2[d]`` with ``K = s // 2 + 1``: largest at the centre.
    """
    h1 = s // 2
    top = li < h1
    rr = jnp.where(top, li, li - h1)
    hh = jnp.where(top, h1, s - h1)
    d = jnp.maximum(jnp.abs(rr - hh // 2), jnp.abs(lj - s // 2))
    k = s // 2 + 1
    inside = (li >= 0) & (li < s) & (lj >= 0) & (lj < s)
    dd = jnp.clip(d, 0, h2.shape[0] - 1)
    kk = jnp.clip(k, 0, h2.shape[0] - 1)
    val = jnp.take(h2, kk) - jnp.take(h2, dd)
    return jnp.where(inside, jnp.where(top, val, -val), 0.0)


def _window(keys: Array, h: int, w: int, s: Array) -> tuple[Array, Array]:
    """A uniformly placed ``s × s`` window per example: its top-left corner ``([B], [B])``."""
    k1, k2 = jax.vmap(lambda k: jax.random.split(k))(keys).swapaxes(0, 1)
    r = jax.vmap(lambda k: jax.random.randint(k, (), 0, h - s + 1))(k1)
    c = jax.vmap(lambda k: jax.random.randint(k, (), 0, w - s + 1))(k2)
    return r, c


def _local(h: int, w: int, r: Array, c: Array) -> tuple[Array, Array]:
    """Local coordinates ``[B, H, W]`` of every pixel relative to per-example corners."""
    ii = jnp.arange(h, dtype=jnp.int32)[None, :, None] - r[:, None, None]
    jj = jnp.arange(w, dtype=jnp.int32)[None, None, :] - c[:, None, None]
    return jnp.broadcast_to(ii, (r.shape[0], h, w)), jnp.broadcast_to(jj, (r.shape[0], h, w))


@register
@pytree_dataclass
class Square(AbstractAttack):
    """Square Attack (Andriushchenko et al., 2020): score-based random search, L∞ and L2.

    Per example: one query on ``x`` (clean errors are returned as they are), one on the
    initialisation (L∞: vertical stripes of ``±eps``; L2: a grid of ``±`` bumps scaled to norm
    ``eps``), then one query per iteration until the example is adversarial or the budget
    ``num_queries`` (which includes those two) is spent. A candidate replaces the current point
    when it increases the loss (or is adversarial). The window side follows the paper's schedule:
    ``s = round(sqrt(p * H * W))`` with ``p`` halved at the fractions 10, 50, 200, 500, 1000, 2000,
    4000, 6000 and 8000 ten-thousandths of the budget (:func:`p_schedule`); L∞ keeps
    ``1 <= s < min(H, W)``, L2 uses odd ``s >= 3`` (capped at the image size).

    The attack reads the model only through its probabilities; the loss is computed on
    log-probabilities (so ``'margin'`` is the logit margin of the paper). Only the top label
    decides success; finished examples are frozen and no longer charged.

    Deviations from the reference code (documented): windows are drawn per example (the reference
    L2 code draws one per batch) and uniformly over all ``H - s + 1`` positions; when an L∞ window
    would not change the image, the first of ``4`` fresh sign draws that does is used (else the
    negated signs, which always do) instead of an unbounded rejection loop.

    Attributes:
        threat: ``LinfBall`` or ``L2Ball``.
        num_queries: total queries per example (static; 5000 as in AutoAttack).
        p_init: initial fraction of pixels changed per window (0.8 as in AutoAttack).
        loss: ``'margin'`` (default) or ``'ce'`` (or a callable on log-probabilities); maximised.

    Example:
        >>> import jax, jax.numpy as jnp, jaxadv
        >>> from jaxadv.attacks.square import Square
        >>> model = jaxadv.from_apply(lambda w, x: x.reshape(x.shape[0], -1) @ w, jnp.eye(4, 2))
        >>> sq = Square(threat=jaxadv.LinfBall(eps=0.1), num_queries=50)
        >>> res = sq(jax.random.key(0), model, jnp.full((2, 2, 2, 1), 0.5), jnp.array([0, 1]))
        >>> bool(jnp.all(res.queries <= 51))
        True
    """

    oracle: ClassVar[str] = "scores"
    budget_field: ClassVar[str | None] = "num_queries"
    restarts_field: ClassVar[str | None] = None
    threats: ClassVar[tuple[type, ...]] = (LinfBall, L2Ball)
    settings: ClassVar[Mapping[str, V.Range]] = {
        "num_queries": V.at_least(2),  # the clean check and the initialisation
        "p_init": V.unit(lo_open=True),
    }

    threat: Any
    num_queries: int = static(default=5000)
    p_init: float | Array = 0.8
    loss: str | Callable = static(default="margin")

    def run(self, keys, model, x, y, *, target=None) -> AttackResult:
        threat = self.threat
        linf = threat.p == math.inf
        b, h, w, c = x.shape
        dt = x.dtype
        lbl = y if target is None else target
        loss_fn = L.resolve(self.loss, target is not None)
        eps = jnp.asarray(threat.eps, dt)
        p_init = jnp.asarray(self.p_init, dt)
        h2 = jnp.asarray(_h2_table(max(h, w) // 2 + 2))

        def score(xa):
            lp = bb.log_probs(model, xa)
            pred = jnp.argmax(lp, axis=-1).astype(jnp.int32)
            if threat.success_margin == 0:
                return loss_fn(lp, lbl).astype(dt), bb.is_adversarial_label(pred, y, target)
            # κ > 0: the margin of the log-probabilities is the logits' margin (a shared shift)
            ok = L.is_adversarial(lp, y, target, success_margin=threat.success_margin)
            return loss_fn(lp, lbl).astype(dt), ok

        loss0, succ0 = score(x)
        queries = jnp.ones((b,), jnp.int32)
        active = ~succ0

        kinit = bb.fold(keys, 0)
        if linf:
            signs = jax.vmap(lambda k: jax.random.rademacher(k, (1, w, c), dt))(kinit)
            x_init = threat.clip_box(x + eps * signs)
        else:
            x_init = threat.clip_box(x + self._l2_init(kinit, x, h2, eps))
        loss_i, succ_i = score(x_init)
        queries = queries + active.astype(jnp.int32)
        x_best = bb.bsel(active, x_init, x)
        loss_best = jnp.where(active, loss_i, loss0)
        active = active & ~succ_i

        def square_step(i, s):
            xb, lb = s
            ks = bb.fold(keys, i)
            p = p_schedule(i - 1, self.num_queries, p_init)  # iteration index from 0
            if linf:
                x_new = self._linf_candidate(ks, x, xb, p, eps)
            else:
                x_new = self._l2_candidate(ks, x, xb, p, eps, h2)
            ln, sn = score(x_new)
            # The driver keeps finished examples' state (they are no longer active).
            take = sn | (ln > lb)
            return (bb.bsel(take, x_new, xb), jnp.where(take, ln, lb)), Scored(
                point=x_new, success=sn, score=ln
            )

        out = iterate(
            square_step,
            (x_best, loss_best),
            start=1,
            stop=self.num_queries - 1,
            active=active,
            queries=queries,
            done=lambda _, sc: sc.success,
            exit_early=True,
        )
        return finalize(threat, model, x, out.state[0], y, target=target, queries=out.queries)

    # ------------------------------------------------------------------------------- L∞
    def _linf_candidate(self, ks, x, xb, p, eps):
        b, h, w, c = x.shape
        side = jnp.round(jnp.sqrt(p * (h * w))).astype(jnp.int32)
        side = jnp.clip(side, 1, max(min(h, w) - 1, 1))
        kw, ksg = jax.vmap(lambda k: jax.random.split(k))(ks).swapaxes(0, 1)
        r, col = _window(kw, h, w, side)
        li, lj = _local(h, w, r, col)
        win = ((li >= 0) & (li < side) & (lj >= 0) & (lj < side))[..., None]
        # A window whose new value equals the current one wastes a query: find, per channel, which
        # sign would leave it unchanged, and use a sign vector that changes at least one channel.
        up = self.threat.clip_box(x + eps)
        down = self.threat.clip_box(x - eps)
        same_up = jnp.all(jnp.where(win, jnp.abs(up - xb) < 1e-7, True), axis=(1, 2))  # [B, C]
        same_dn = jnp.all(jnp.where(win, jnp.abs(down - xb) < 1e-7, True), axis=(1, 2))
        cand = jax.vmap(lambda k: jax.random.rademacher(k, (_SIGN_TRIES, c), x.dtype))(ksg)
        unchanged = jnp.all(
            jnp.where(cand > 0, same_up[:, None, :], same_dn[:, None, :]), axis=2
        )  # [B, T]
        first = jnp.argmax(~unchanged, axis=1)
        pick = jnp.take_along_axis(cand, first[:, None, None], axis=1)[:, 0]
        sign = jnp.where(jnp.all(unchanged, axis=1)[:, None], -cand[:, 0], pick)  # [B, C]
        new = jnp.where(sign[:, None, None, :] > 0, up, down)
        return jnp.where(win, new, xb)

    # -------------------------------------------------------------------------------- L2
    def _l2_init(self, ks, x, h2, eps):
        """A grid of bump pairs of side ``min(H, W) // 5`` with random signs per tile and channel
        (and a random orientation per tile), scaled to norm ``eps``."""
        b, h, w, c = x.shape
        s0 = max(min(h, w) // 5, 1)
        nth, ntw = h // s0, w // s0
        oh, ow = (h - nth * s0) // 2, (w - ntw * s0) // 2
        ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        inside = (ii >= oh) & (ii < oh + nth * s0) & (jj >= ow) & (jj < ow + ntw * s0)
        tile = np.where(inside, ((ii - oh) // s0) * ntw + (jj - ow) // s0, 0)
        li, lj = jnp.asarray((ii - oh) % s0), jnp.asarray((jj - ow) % s0)
        s0a = jnp.asarray(s0, jnp.int32)
        pat = _bump_pair(li, lj, s0a, h2) * jnp.asarray(inside, x.dtype)
        pat_t = _bump_pair(lj, li, s0a, h2) * jnp.asarray(inside, x.dtype)
        nt = nth * ntw
        k1, k2 = jax.vmap(lambda k: jax.random.split(k))(ks).swapaxes(0, 1)
        flip = jax.vmap(lambda k: jax.random.bernoulli(k, 0.5, (nt,)))(k1)
        sg = jax.vmap(lambda k: jax.random.rademacher(k, (nt, c), x.dtype))(k2)
        tile = jnp.asarray(tile)
        orient = jnp.take(flip, tile, axis=1)  # [B, H, W]
        base = jnp.where(orient, pat_t[None], pat[None])
        delta = base[..., None] * jnp.take(sg, tile, axis=1)  # [B, H, W, C]
        n = bb.flat_norm2(delta)
        return delta * bb.bcast(eps / jnp.maximum(n, 1e-12), delta)

    def _l2_candidate(self, ks, x, xb, p, eps, h2):
        b, h, w, c = x.shape
        dt = x.dtype
        side = jnp.maximum(jnp.round(jnp.sqrt(p * (h * w))).astype(jnp.int32), 3)
        side = side + (1 - side % 2)  # odd, as in the paper's reference code
        side = jnp.minimum(side, min(h, w))
        k1, k2, k3, k4 = jax.vmap(lambda k: jax.random.split(k, 4))(ks).swapaxes(0, 1)
        r1, c1 = _window(k1, h, w, side)
        r2, c2 = _window(k2, h, w, side)
        li1, lj1 = _local(h, w, r1, c1)
        li2, lj2 = _local(h, w, r2, c2)
        in1 = (li1 >= 0) & (li1 < side) & (lj1 >= 0) & (lj1 < side)
        in2 = (li2 >= 0) & (li2 < side) & (lj2 >= 0) & (lj2 < side)
        m1 = in1[..., None].astype(dt)
        m12 = (in1 | in2)[..., None].astype(dt)
        transpose = jax.vmap(lambda k: jax.random.bernoulli(k, 0.5))(k3)[:, None, None]
        eta = _bump_pair(
            jnp.where(transpose, lj1, li1), jnp.where(transpose, li1, lj1), side, h2
        ).astype(dt)
        eta = eta / jnp.sqrt(jnp.maximum(jnp.sum(eta * eta, axis=(1, 2), keepdims=True), 1e-24))
        rho = jax.vmap(lambda k: jax.random.rademacher(k, (c,), dt))(k4)  # [B, C]

        delta = xb - x
        sq = delta * delta
        n_w1 = jnp.sqrt(jnp.sum(sq * m1, axis=(1, 2)))  # [B, C]
        n_w12 = jnp.sqrt(jnp.sum(sq * m12, axis=(1, 2)))  # [B, C]
        n_img = bb.flat_norm2(delta)  # [B]
        temp = eta[..., None] * rho[:, None, None, :] + delta * m1 / (
            n_w1[:, None, None, :] + 1e-10
        )
        n_temp = jnp.sqrt(jnp.maximum(jnp.sum(temp * temp * m1, axis=(1, 2)), 1e-24))
        unused = jnp.maximum(eps * eps - n_img * n_img, 0.0) / c  # [B]
        avail = jnp.sqrt(unused[:, None] + n_w12 * n_w12)  # [B, C]
        new_w1 = temp / n_temp[:, None, None, :] * avail[:, None, None, :]
        nd = jnp.where(in2[..., None], 0.0, delta)
        nd = jnp.where(in1[..., None], new_w1, nd)
        nn = bb.flat_norm2(nd)
        nd = nd * bb.bcast(eps / jnp.maximum(nn, 1e-12), nd)
        return self.threat.clip_box(x + nd)
