"""Sparse-RS (Croce, Andriushchenko, Singh, Flammarion, Hein, "Sparse-RS: a versatile framework for
query-efficient sparse black-box adversarial attacks", AAAI 2022; arXiv 2006.12834).

Random search over sparse perturbations, reading only the model's scores:

* **L0 pixels** (:class:`~jaxadv.threats.L0Pixels`, ``k = eps``): ``k`` pixels set to random corners
  of the colour cube; each iteration moves ``max(floor(alpha_i k), 1)`` of them to pixels not yet
  perturbed, with fresh corner colours;
* **patches** (:class:`~jaxadv.threats.Patch`, side ``s = eps``): one ``s × s`` patch; most
  iterations recolour a sub-square of side ``max(floor(sqrt(alpha_i) s), 1)`` of it, every
  ``5 (1 + it // 1000)``-th iteration shifts it instead (by at most ``0.75 (1 - it / N) H``).

A candidate replaces the current point when it increases the loss (or is adversarial). ``alpha_i``
follows the paper's piecewise-constant schedule of the fraction of the budget spent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxadv import _validate as V
from jaxadv import losses as L
from jaxadv._struct import float32_fields, pytree_dataclass, static
from jaxadv.attacks import _blackbox as bb
from jaxadv.attacks.base import AbstractAttack, register
from jaxadv.attacks.driver import iterate
from jaxadv.result import AttackResult, finalize
from jaxadv.threats import L0Pixels, Patch, keep_top_k

Array = jax.Array

#: Points of the alpha schedule in ten-thousandths of the budget, and the divisor of ``alpha_init``
#: once the rescaled iteration ``floor(10000 it / N)`` exceeds each point (the paper's code).
_L0_SCHEDULE = ((0, 2), (50, 4), (200, 5), (500, 6), (1000, 8), (2000, 10), (4000, 12),
                (6000, 15), (8000, 20))  # fmt: skip
_PATCH_SCHEDULE = ((10, 2), (50, 4), (200, 8), (500, 16), (1000, 32), (2000, 32), (4000, 64),
                   (6000, 64), (8000, 128))  # fmt: skip
#: Default ``alpha_init`` of the paper's untargeted runs: L0 and patches.
ALPHA_INIT = {"L0Pixels": 0.3, "Patch": 0.4}


def alpha_schedule(it: Array, num_queries: int, alpha_init: Array, patches: bool) -> Array:
    """``alpha_i`` at iteration ``it`` (1-based) of a ``num_queries`` budget: ``alpha_init / d``
    with ``d`` the divisor of the last schedule point ``t`` below ``floor(10000 it / N)``.

    The thresholds become integer iteration numbers on the host (``floor(10000 it / N) > t``
    exactly when ``it >= ceil((t + 1) N / 10000)``), so the comparison is exact for any budget.
    """
    sched = _PATCH_SCHEDULE if patches else _L0_SCHEDULE
    div = jnp.asarray(1.0, alpha_init.dtype)
    for t, d in sched:
        th = math.ceil((t + 1) * num_queries / 10000)
        div = jnp.where(it >= th, jnp.asarray(float(d), alpha_init.dtype), div)
    return alpha_init / div


def _corners(key: Array, shape: tuple[int, ...], lo: Array, hi: Array, dtype) -> Array:
    """Random corners of the colour cube: every entry ``lo`` or ``hi`` with probability 1/2."""
    return jnp.where(jax.random.bernoulli(key, 0.5, shape), hi, lo).astype(dtype)


@register
@pytree_dataclass
class SparseRS(AbstractAttack):
    """Sparse-RS (Croce et al., AAAI 2022): score-based random search for L0 pixels and patches.

    The threat picks the variant: :class:`~jaxadv.threats.L0Pixels` (``k = floor(eps)`` pixels,
    all channels of a pixel count once) or :class:`~jaxadv.threats.Patch` (one square patch of side
    ``s = floor(eps)``, location and content searched). Budgets are leaves: one compiled attack
    serves a whole grid of ``k`` or ``s``.

    Per example: one query on ``x`` (clean errors are returned as they are), one on the random
    start, then one per iteration until the example is adversarial or ``num_queries`` (which
    includes those two) is spent; finished examples are frozen and no longer charged.

    * L0 start: ``k`` distinct pixels uniformly at random, each channel set to ``lo`` or ``hi``.
      Iteration ``it``: ``n = max(floor(alpha_i k), 1)`` perturbed pixels go back to ``x`` and
      ``n`` unperturbed ones get fresh corner colours (when every pixel is perturbed, ``n`` of
      them are recoloured instead).
    * Patch start: a uniform location, content in vertical stripes of corner colours (one per
      column and channel). Iteration ``it``: when ``it`` is a multiple of ``5 (1 + it // 1000)`` and
      the shift range ``floor(0.75 (N - it) / N · H)`` is positive, the patch moves by a uniform
      offset in that range per axis (clipped to the image); otherwise a sub-square of side
      ``max(floor(sqrt(alpha_i) s), 1)`` at a uniform place inside the patch gets one corner colour.

    ``alpha_i`` is ``alpha_init`` divided by 2, 4, 5, 6, 8, 10, 12, 15, 20 (L0) or 2, 4, 8, 16, 32,
    32, 64, 64, 128 (patches) as ``floor(10000 it / N)`` passes 0 (L0) or 10 (patches), 50, 200,
    500, 1000, 2000, 4000, 6000, 8000: the schedule of the paper's code.

    The loss is computed on log-probabilities (the logit margin for ``'margin'``); the default
    ``loss=None`` is the paper's: margin untargeted, cross-entropy targeted. A candidate is kept
    when its loss is higher (strictly) or it is adversarial.

    Deviations from the reference code (documented): the random draws (sub-square place,
    pixels to swap) are per example, not shared by the batch; patch corners are uniform over all
    ``H - s + 1`` places per axis; the clean image is queried first (clean errors cost one query).

    Attributes:
        threat: ``L0Pixels`` (``eps = k``) or ``Patch`` (``eps = s``).
        num_queries: total queries per example (static; 10000 as in the paper).
        alpha_init: initial fraction ``alpha`` (``None``: the paper's untargeted 0.3 for L0, 0.4
            for patches; it used 0.1 for targeted runs with larger budgets).
        loss: ``'margin'``, ``'ce'`` or a callable on log-probabilities (static); ``None``: margin
            untargeted, cross-entropy targeted.

    Example:
        >>> import jax, jax.numpy as jnp, jaxadv
        >>> w = jnp.zeros((16, 2)).at[5, 1].set(10.0)  # class 1 iff pixel 5 is bright
        >>> model = jaxadv.from_apply(lambda w, x: x.reshape(x.shape[0], -1) @ w - jnp.array([[0., 7.]]), w)
        >>> x, y = jnp.full((1, 4, 4, 1), 0.2), jnp.array([0])
        >>> atk = jaxadv.SparseRS(threat=jaxadv.L0Pixels(eps=1), num_queries=100)
        >>> res = atk(jax.random.key(0), model, x, y)
        >>> bool(res.success[0]), float(res.norm[0])
        (True, 1.0)
    """

    oracle: ClassVar[str] = "scores"
    budget_field: ClassVar[str | None] = "num_queries"
    restarts_field: ClassVar[str | None] = None
    threats: ClassVar[tuple[type, ...]] = (L0Pixels, Patch)
    settings: ClassVar[Mapping[str, V.Range]] = {
        "num_queries": V.at_least(2),  # the clean check and the random start
        "alpha_init": V.positive(),
    }

    threat: Any
    num_queries: int = static(default=10000)
    alpha_init: float | Array | None = None
    loss: str | Callable | None = static(default=None)

    def __post_init__(self) -> None:
        if self.alpha_init is None and isinstance(self.threat, (L0Pixels, Patch)):
            object.__setattr__(self, "alpha_init", ALPHA_INIT[type(self.threat).__name__])
        float32_fields(self, "alpha_init")

    def run(self, keys, model, x, y, *, target=None) -> AttackResult:
        targeted = target is not None
        patches = isinstance(self.threat, Patch)
        lbl = y if target is None else target
        loss_fn = L.resolve(self.loss or ("ce" if targeted else "margin"), targeted)
        dt = x.dtype
        alpha0 = jnp.asarray(self.alpha_init, dt)

        def score(xa):
            lp = bb.log_probs(model, xa)
            pred = jnp.argmax(lp, axis=-1).astype(jnp.int32)
            return loss_fn(lp, lbl).astype(dt), bb.is_adversarial_label(pred, y, target)

        _, succ0 = score(x)
        queries = jnp.ones((x.shape[0],), jnp.int32)
        active = ~succ0
        if patches:
            init, candidate, render = self._patch_search(x, alpha0)
        else:
            init, candidate, render = self._l0_search(x, alpha0)

        st0 = init(bb.fold(keys, 0))
        loss_i, succ_i = score(render(st0))
        queries = queries + active.astype(jnp.int32)
        active = active & ~succ_i

        def step(i, s):
            cur, lb, _ = s
            new = candidate(bb.fold(keys, i), cur, i - 1)
            ln, sn = score(render(new))
            take = sn | (ln > lb)
            nxt = jax.tree.map(lambda a, b: bb.bsel(take, a, b), new, cur)
            return (nxt, jnp.where(take, ln, lb), sn), None

        # the step's success is kept in the state: a candidate that is adversarial is always taken
        out = iterate(
            step,
            (st0, loss_i, succ_i),
            start=2,
            stop=self.num_queries,
            active=active,
            queries=queries,
            done=lambda s, _: s[2],
            exit_early=True,
        )
        adv = bb.bsel(succ0, x, render(out.state[0]))  # clean errors are returned as they are
        return finalize(self.threat, model, x, adv, y, target=target, queries=out.queries)

    # -------------------------------------------------------------------------------- L0
    def _l0_search(self, x: Array, alpha0: Array):
        threat = self.threat
        b, h, w, c = x.shape
        n_pix = h * w
        lo = jnp.asarray(threat.lo, x.dtype)
        hi = jnp.asarray(threat.hi, x.dtype)
        eps = jnp.broadcast_to(jnp.asarray(threat.eps, jnp.float32), (b,))
        k = jnp.floor(jnp.minimum(eps, float(n_pix))).astype(jnp.int32)  # [B]

        def init(ks):
            k1, k2 = jax.vmap(lambda kk: jax.random.split(kk))(ks).swapaxes(0, 1)
            u = jax.vmap(lambda kk: jax.random.uniform(kk, (n_pix,)))(k1)
            mask = keep_top_k(u, k)  # [B, HW]: exactly k distinct pixels
            col = jax.vmap(lambda kk: _corners(kk, (n_pix, c), lo, hi, x.dtype))(k2)
            return mask, col

        def candidate(ks, cur, it):
            mask, col = cur
            alpha = alpha_schedule(it, self.num_queries, alpha0, patches=False)
            n = jnp.maximum(jnp.floor(alpha * k.astype(alpha.dtype)).astype(jnp.int32), 1)
            n = jnp.where(k > 0, n, 0)
            free = n_pix - jnp.sum(mask, axis=1, dtype=jnp.int32)
            full = free == 0
            n = jnp.where(full, jnp.minimum(n, k), jnp.minimum(n, free))
            k1, k2, k3 = jax.vmap(lambda kk: jax.random.split(kk, 3))(ks).swapaxes(0, 1)
            u1 = jax.vmap(lambda kk: jax.random.uniform(kk, (n_pix,)))(k1)
            u2 = jax.vmap(lambda kk: jax.random.uniform(kk, (n_pix,)))(k2)
            out = keep_top_k(jnp.where(mask, u1, -1.0), n) & mask  # leave the set
            into = keep_top_k(jnp.where(mask, -1.0, u2), n) & ~mask  # join it
            into = jnp.where(full[:, None], out, into)  # all pixels in use: recolour instead
            out = out & ~full[:, None]
            fresh = jax.vmap(lambda kk: _corners(kk, (n_pix, c), lo, hi, x.dtype))(k3)
            return (mask & ~out) | into, jnp.where(into[..., None], fresh, col)

        def render(cur):
            mask, col = cur
            xf = x.reshape(b, n_pix, c)
            return jnp.where(mask[..., None], col, xf).reshape(x.shape)

        return init, candidate, render

    # ---------------------------------------------------------------------------- patches
    def _patch_search(self, x: Array, alpha0: Array):
        threat = self.threat
        b, h, w, c = x.shape
        lo = jnp.asarray(threat.lo, x.dtype)
        hi = jnp.asarray(threat.hi, x.dtype)
        s = threat.side(x.shape)  # int32 scalar
        nq = self.num_queries

        def init(ks):
            k1, k2, k3 = jax.vmap(lambda kk: jax.random.split(kk, 3))(ks).swapaxes(0, 1)
            r = jax.vmap(lambda kk: jax.random.randint(kk, (), 0, h - s + 1))(k1)
            q = jax.vmap(lambda kk: jax.random.randint(kk, (), 0, w - s + 1))(k2)
            stripes = jax.vmap(lambda kk: _corners(kk, (1, w, c), lo, hi, x.dtype))(k3)
            content = jnp.broadcast_to(stripes, (b, h, w, c))  # patch-local coordinates
            return r.astype(jnp.int32), q.astype(jnp.int32), content

        def candidate(ks, cur, it):
            r, q, content = cur
            alpha = alpha_schedule(it, nq, alpha0, patches=True)
            side = jnp.maximum(jnp.floor(jnp.sqrt(alpha) * s.astype(alpha.dtype)), 1.0)
            side = jnp.minimum(side.astype(jnp.int32), jnp.maximum(s, 1))
            shift = jnp.floor(
                jnp.maximum((nq - it).astype(jnp.float32) / nq, 0.0) * 0.75 * h
            ).astype(jnp.int32)
            period = 5 * (1 + it // 1000)
            move = (it % period == 0) & (shift > 0)
            k1, k2, k3, k4, k5 = jax.vmap(lambda kk: jax.random.split(kk, 5))(ks).swapaxes(0, 1)
            # a sub-square of the patch gets one corner colour
            pr = jax.vmap(lambda kk: jax.random.randint(kk, (), 0, s - side + 1))(k1)
            pc = jax.vmap(lambda kk: jax.random.randint(kk, (), 0, s - side + 1))(k2)
            sub = threat.window(pr, pc, jnp.broadcast_to(side, (b,)), x.shape)[..., None]
            colour = jax.vmap(lambda kk: _corners(kk, (1, 1, c), lo, hi, x.dtype))(k3)
            recoloured = jnp.where(sub, colour, content)
            # or the patch moves
            dr = jax.vmap(lambda kk: jax.random.randint(kk, (), -shift, shift + 1))(k4)
            dc = jax.vmap(lambda kk: jax.random.randint(kk, (), -shift, shift + 1))(k5)
            r2 = jnp.clip(r + dr, 0, h - s).astype(jnp.int32)
            q2 = jnp.clip(q + dc, 0, w - s).astype(jnp.int32)
            return (
                jnp.where(move, r2, r),
                jnp.where(move, q2, q),
                jnp.where(move, content, recoloured),
            )

        def render(cur):
            r, q, content = cur
            win = threat.window(r, q, jnp.broadcast_to(s, (b,)), x.shape)
            ii = jnp.clip(jnp.arange(h, dtype=jnp.int32)[None, :] - r[:, None], 0, h - 1)
            jj = jnp.clip(jnp.arange(w, dtype=jnp.int32)[None, :] - q[:, None], 0, w - 1)
            placed = jnp.take_along_axis(content, ii[:, :, None, None], axis=1)
            placed = jnp.take_along_axis(placed, jj[:, None, :, None], axis=2)
            return jnp.where(win[..., None], placed, x)

        return init, candidate, render


__all__ = ["SparseRS", "alpha_schedule"]
