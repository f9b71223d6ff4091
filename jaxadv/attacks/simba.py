"""SimBA, the Simple Black-box Attack (Guo, Gardner, You, Wilson, Weinberger, ICML 2019;
arXiv 1905.07121).

A score-based coordinate search: directions ``q`` are taken one at a time, without replacement, from
an orthonormal basis (the pixel basis, or the 2-D DCT basis in low-frequency-first order); the
step ``+eps q`` is tried, then ``-eps q`` when the first did not lower the true-class probability
(raise the target's), and the first step that helps is kept. One query per step tried.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv import _validate as V
from jaxadv._struct import float32_fields, pytree_dataclass, static
from jaxadv.attacks import _blackbox as bb
from jaxadv.attacks.base import AbstractAttack, register
from jaxadv.attacks.driver import iterate
from jaxadv.result import AttackResult, finalize
from jaxadv.threats import L2Ball, LinfBall

Array = jax.Array

BASES = ("pixel", "dct")
ORDERS = ("strided", "random")


def dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix ``[n, n]``: row ``u`` is the ``u``-th cosine basis vector
    ``a(u) cos(pi (2 i + 1) u / 2n)`` with ``a(0) = sqrt(1/n)``, ``a(u) = sqrt(2/n)``."""
    i = np.arange(n)
    u = np.arange(n)[:, None]
    m = np.cos(np.pi * (2 * i[None, :] + 1) * u / (2 * n)) * np.sqrt(2.0 / n)
    m[0] = np.sqrt(1.0 / n)
    return m.astype(np.float32)


def ring_index(shape: tuple[int, int, int], order: str, freq_dims: int, stride: int) -> np.ndarray:
    """``int32[H*W*K]``: the group of every coordinate ``(u, v, k)`` (row-major) in the search order.

    ``'strided'`` (the paper's low-frequency-first order): group 0 is the ``freq_dims × freq_dims``
    top-left block (every channel), then rings ``max(u, v) in [freq_dims + j*stride,
    freq_dims + (j+1)*stride)`` form groups ``1 + j``. Coordinates are visited group by group, in
    a random order inside each group. ``'random'``: a single group (a uniform permutation).
    """
    h, w, c = shape
    if order == "random":
        return np.zeros(h * w * c, np.int32)
    u, v, _ = np.meshgrid(np.arange(h), np.arange(w), np.arange(c), indexing="ij")
    r = np.maximum(u, v).reshape(-1)
    return np.where(r < freq_dims, 0, 1 + (r - freq_dims) // stride).astype(np.int32)


@register
@pytree_dataclass
class SimBA(AbstractAttack):
    """SimBA (Guo et al., ICML 2019): score-based search along orthonormal directions.

    Per example, directions are visited in a random order drawn from its key (``order``, see
    :func:`ring_index`): ``basis='pixel'`` uses the standard basis of the ``H*W*K`` coordinates,
    ``basis='dct'`` the orthonormal 2-D DCT basis per channel (SimBA-DCT), low frequencies first.
    For each direction ``q`` the step ``+step_size q`` is tried (one query); when it does not
    improve the score, ``-step_size q`` is tried (a second query); the first that improves is kept
    (Algorithm 1 of the paper). The score is the true-class probability, to be lowered
    (untargeted), or the target's probability, to be raised (targeted), compared as log-odds
    ``log(p / (1 - p))`` (the same decisions, but no saturation at 1.0 in float32); a step that
    makes the example adversarial is always kept. Each candidate is mapped into the threat set
    (``threat.project``: the box, and the ball when ``eps`` is finite) before it is queried: the
    paper's unconstrained attack is ``L2Ball(eps=inf)``, where only the box clips.

    Queries per example: one on ``x`` (clean errors are returned as they are), then one or two per
    direction until the example is adversarial or ``num_queries`` (which includes the clean check)
    is spent; a second try that would exceed the budget is skipped. Finished examples are frozen
    and no longer charged. After all ``H*W*K`` directions the order starts again.

    Deviation (documented): a candidate that the box or ball leaves equal to the current point is
    still queried and charged, as in the paper's code.

    Attributes:
        threat: ``L2Ball`` or ``LinfBall`` (``eps = inf``: unconstrained, as in the paper).
        num_queries: total queries per example (static).
        step_size: the step ``eps`` of the paper along each unit direction (0.2 in the paper, on
            ``[0, 1]`` images).
        basis: ``'pixel'`` or ``'dct'`` (static).
        order: ``'strided'`` (low frequency first, the paper's DCT order) or ``'random'`` (static);
            ``None``: ``'strided'`` for the DCT basis, ``'random'`` for pixels.
        freq_dims: side of the first low-frequency block (static); ``None``: ``ceil(min(H, W) /
            8)``, the paper's 28 of 224.
        stride: width of each following ring (static); ``None``: ``ceil(freq_dims / 4)``, the
            paper's 7 of 28.

    Example:
        >>> import jax, jax.numpy as jnp, jaxadv
        >>> model = jaxadv.from_apply(lambda w, x: x.reshape(x.shape[0], -1) @ w, jnp.eye(4, 2))
        >>> atk = jaxadv.SimBA(threat=jaxadv.L2Ball(eps=jnp.inf), num_queries=40, basis="dct")
        >>> res = atk(jax.random.key(0), model, jnp.full((2, 2, 2, 1), 0.5), jnp.array([0, 1]))
        >>> bool(jnp.all(res.queries <= 41))
        True
    """

    oracle: ClassVar[str] = "scores"
    budget_field: ClassVar[str | None] = "num_queries"
    restarts_field: ClassVar[str | None] = None
    threats: ClassVar[tuple[type, ...]] = (L2Ball, LinfBall)
    settings: ClassVar[Mapping[str, V.Range]] = {
        "num_queries": V.at_least(1),  # the clean check
        "step_size": V.positive(),
        "freq_dims": V.at_least(1),
        "stride": V.at_least(1),
    }

    threat: Any
    num_queries: int = static(default=10000)
    step_size: float | Array = 0.2
    basis: str = static(default="dct")
    order: str | None = static(default=None)
    freq_dims: int | None = static(default=None)
    stride: int | None = static(default=None)

    def __post_init__(self) -> None:
        if self.basis not in BASES:
            raise ValueError(f"SimBA: basis must be one of {BASES}, got {self.basis!r}")
        if self.order is not None and self.order not in ORDERS:
            raise ValueError(f"SimBA: order must be one of {ORDERS} or None, got {self.order!r}")
        float32_fields(self, "step_size")

    def _order(self) -> str:
        if self.order is not None:
            return self.order
        return "strided" if self.basis == "dct" else "random"

    def directions(self, x: Array, idx: Array) -> Array:
        """Unit directions ``[B, H, W, K]`` for flat coordinate indices ``idx[B]`` (row-major over
        ``(H, W, K)``) in this attack's basis."""
        _, h, w, c = x.shape
        if self.basis == "pixel":
            return jax.nn.one_hot(idx, h * w * c, dtype=x.dtype).reshape(x.shape)
        u, rest = idx // (w * c), idx % (w * c)
        v, k = rest // c, rest % c
        rows = jnp.take(jnp.asarray(dct_matrix(h), x.dtype), u, axis=0)  # [B, H]
        cols = jnp.take(jnp.asarray(dct_matrix(w), x.dtype), v, axis=0)  # [B, W]
        chan = jax.nn.one_hot(k, c, dtype=x.dtype)  # [B, K]
        return rows[:, :, None, None] * cols[:, None, :, None] * chan[:, None, None, :]

    def permutation(self, keys: Array, shape: tuple[int, int, int]) -> Array:
        """``int32[B, H*W*K]``: per example the order in which coordinates are visited."""
        h, w, _ = shape
        fd = self.freq_dims if self.freq_dims is not None else max(1, math.ceil(min(h, w) / 8))
        st = self.stride if self.stride is not None else max(1, math.ceil(fd / 4))
        ring = jnp.asarray(ring_index(shape, self._order(), fd, st), jnp.float32)

        def one(k):  # groups in order, uniform inside each group
            return jnp.argsort(ring + jax.random.uniform(k, ring.shape), stable=True)

        return jax.vmap(one)(keys).astype(jnp.int32)

    def run(self, keys, model, x, y, *, target=None) -> AttackResult:
        threat = self.threat
        b, h, w, c = x.shape
        dt = x.dtype
        d = h * w * c
        lbl = y if target is None else target
        sign = 1.0 if target is not None else -1.0  # raise p_target / lower p_y
        step = jnp.asarray(self.step_size, dt)
        budget = self.num_queries

        def score(xa):
            # log-odds: the same order as p, but they do not round to 1.0 on confident examples
            # (in float32 p_y == 1 once the logit gap passes ~17, and no step would look better)
            lp = bb.log_probs(model, xa)
            pred = jnp.argmax(lp, axis=-1).astype(jnp.int32)
            s = sign * bb.log_odds(lp, lbl)
            return s.astype(dt), bb.is_adversarial_label(pred, y, target)

        s0, succ0 = score(x)
        perm = self.permutation(bb.fold(keys, 0), (h, w, c))
        state = (x, s0, succ0, jnp.ones((b,), jnp.int32))  # point, score, success, queries

        def simba_step(i, st, active):
            xc, sc, succ, q = st
            idx = jnp.take_along_axis(perm, jnp.full((b, 1), i % d, jnp.int32), axis=1)[:, 0]
            qd = self.directions(x, idx) * step
            c1 = threat.project(x, xc + qd)
            s1, ok1 = score(c1)
            imp1 = ok1 | (s1 > sc)
            # the second try only where the first did not help and the budget allows it; skipped
            # entirely (no model call) when no example needs it
            need2 = active & ~imp1 & (q + 2 <= budget)
            c2 = threat.project(x, xc - qd)
            s2, ok2 = jax.lax.cond(
                jnp.any(need2),
                lambda: score(c2),
                lambda: (jnp.full((b,), -jnp.inf, dt), jnp.zeros((b,), bool)),
            )
            imp2 = need2 & (ok2 | (s2 > sc))
            new_x = bb.bsel(imp1, c1, bb.bsel(imp2, c2, xc))
            new_s = jnp.where(imp1, s1, jnp.where(imp2, s2, sc))
            new_ok = jnp.where(imp1, ok1, imp2 & ok2)
            spent = active.astype(jnp.int32) * (1 + need2.astype(jnp.int32))
            return (new_x, new_s, new_ok, q + spent), None, spent

        out = iterate(
            simba_step,
            state,
            stop=max(budget - 1, 0),
            active=~succ0 & (budget > 1),
            queries=jnp.ones((b,), jnp.int32),
            cost=None,
            done=lambda st, _: st[2] | (st[3] >= budget),
            exit_early=True,
        )
        return finalize(threat, model, x, out.state[0], y, target=target, queries=out.queries)


__all__ = ["SimBA", "dct_matrix", "ring_index"]
