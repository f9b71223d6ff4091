"""The L0 pixel threat model: at most ``k`` changed spatial pixels.

A *pixel* is a spatial location ``(h, w)`` with all its channels (spec §0.2, §11): changing one
channel or all three of a pixel costs the same. The budget is the ``eps`` field (named ``eps``, not
``k``, so :meth:`AbstractAttack.with_eps` and :func:`jaxadv.sweep_eps` work unchanged; the
property :attr:`L0Pixels.k` reads it). It is a leaf: a new budget never retraces.
"""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxadv._struct import pytree_dataclass, static
from jaxadv.threats import AbstractThreat

Array = jax.Array


def pixel_change(delta: Array, tol: float = 0.0) -> Array:
    """``bool[B, N]``: which spatial pixels of ``delta[B, H, W, K]`` changed (``max_k |delta| > tol``).

    For inputs of rank 3 or more the last axis is the channel axis; a rank-2 ``[B, D]`` input
    counts every element as its own pixel.
    """
    a = jnp.abs(delta)
    if a.ndim >= 3:
        a = jnp.max(a, axis=-1)
    return a.reshape(a.shape[0], -1) > tol


def keep_top_k(m: Array, k: Array) -> Array:
    """``bool[B, N]``: the ``k`` largest entries of each row of ``m[B, N]`` (ties: lower index).

    ``k`` is a scalar or per-example ``[B]`` number (float or int, traced is fine; ``inf`` keeps
    everything). The stable sort makes the tie-break by index deterministic.
    """
    n = m.shape[1]
    order = jnp.argsort(-m, axis=1, stable=True)
    rows = jnp.arange(m.shape[0])[:, None]
    rank = (
        jnp.zeros(m.shape, jnp.int32).at[rows, order].set(jnp.arange(n, dtype=jnp.int32)[None, :])
    )
    k = jnp.floor(jnp.asarray(k, jnp.float32))
    k = k[:, None] if k.ndim == 1 else k
    return rank.astype(jnp.float32) < k


@pytree_dataclass
class L0Pixels(AbstractThreat):
    """At most ``k = eps`` changed spatial pixels, inside the box ``[lo, hi]``.

    ``norm(delta)`` counts the pixels whose largest channel change exceeds ``tol`` (0 in float).
    ``project(x, x_adv)`` first clips ``x_adv`` to the box, then keeps the ``k`` pixels with the
    largest change (largest channel ``|delta|``; ties go to the lower flat index ``h * W + w``) and
    reverts every other pixel to ``x``. Clipping first means a slot is never wasted on a change the
    box would erase; since ``x`` lies in the box the result is inside both sets and projecting again
    leaves it unchanged. A non-integer ``eps`` is floored.

    L0 has no steepest-ascent step: use it with the black-box sparse attacks
    (:class:`~jaxadv.attacks.evolution.OnePixel`, :class:`~jaxadv.attacks.evolution.DGDE`).

    Attributes:
        eps: pixel budget ``k`` (a leaf; ``jnp.inf`` means no budget).
        lo, hi: the input box.
        tol: a pixel counts as changed when ``max_k |delta| > tol`` (static; use ``0.5/255`` after
            8-bit quantisation of nearly equal images).

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxadv.attacks.sparse_threat import L0Pixels
        >>> x = jnp.zeros((1, 2, 2, 3))
        >>> z = x.at[0, 0, 0, 0].set(0.9).at[0, 1, 1, 2].set(0.3).at[0, 0, 1, 1].set(0.5)
        >>> t = L0Pixels(eps=2)
        >>> t.norm(z - x).tolist(), t.norm(t.project(x, z) - x).tolist()
        ([3.0], [2.0])
    """

    p: ClassVar[float] = 0.0
    eps: float | Array
    lo: float | Array = 0.0
    hi: float | Array = 1.0
    tol: float = static(default=0.0)

    @property
    def k(self) -> float | Array:
        """The pixel budget (an alias of ``eps``)."""
        return self.eps

    def norm(self, delta: Array) -> Array:
        """Number of changed spatial pixels ``f32[B]`` of ``delta[B, H, W, K]``."""
        return jnp.sum(pixel_change(delta, self.tol), axis=1).astype(jnp.float32)

    def _revert(self, x: Array, z: Array) -> Array:
        d = jnp.abs(z - x)
        m = jnp.max(d, axis=-1) if d.ndim >= 3 else d
        m = m.reshape(m.shape[0], -1)
        keep = keep_top_k(m, self.eps) & (m > self.tol)
        keep = keep.reshape((x.shape[0], *x.shape[1 : max(x.ndim - 1, 2)]))
        if x.ndim >= 3:
            keep = keep[..., None]
        return jnp.where(keep, z, x)

    def project_ball(self, delta: Array) -> Array:
        """Keep the ``k`` largest pixel changes of ``delta`` and zero the rest (no box)."""
        return self._revert(jnp.zeros_like(delta), delta)

    def project(self, x: Array, x_adv: Array) -> Array:
        """Clip to the box, keep the ``k`` largest pixel changes, revert the others to ``x``."""
        return self.clip_box(self._revert(x, self.clip_box(x_adv)))

    def random_init(self, keys: Array, x: Array) -> Array:
        """``min(k, H*W)`` pixels chosen uniformly at random per example, set to ``U(lo, hi)``."""

        def one(key, xi):
            ks, kv = jax.random.split(key)
            shape = xi.shape[:-1] if xi.ndim >= 2 else xi.shape
            score = jax.random.uniform(ks, (1, *shape)).reshape(1, -1)
            sel = keep_top_k(score, self.eps).reshape(shape)
            sel = sel[..., None] if xi.ndim >= 2 else sel
            lo = jnp.asarray(self.lo, xi.dtype)
            hi = jnp.asarray(self.hi, xi.dtype)
            vals = jax.random.uniform(kv, xi.shape, xi.dtype) * (hi - lo) + lo
            return jnp.where(sel, vals, xi)

        return self.project(x, jax.vmap(one)(keys, x))

    def sample_ball(self, key: Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
        raise NotImplementedError(
            "L0Pixels draws random starts from the image itself: call random_init(keys, x)"
        )

    def ascent_step(self, grad: Array, step_size: Array | float) -> Array:
        raise NotImplementedError(
            "L0Pixels has no steepest-ascent step (the L0 ball is not convex): use a black-box "
            "sparse attack such as OnePixel or DGDE, or a gradient attack with L1Ball"
        )


__all__ = ["L0Pixels", "keep_top_k", "pixel_change"]
