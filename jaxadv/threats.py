"""Threat models: the set of allowed adversarial inputs around ``x``.

A threat model is a value (a frozen pytree). ``eps`` and the box bounds are leaves, so a new eps never
retraces and an eps grid is a ``vmap``. Every method works on a whole batch ``[B, ...]``.

The allowed set is ``{x' : ||x' - x||_p <= eps} ∩ [lo, hi]^D``. ``project`` first projects the
perturbation onto the norm ball and then clips to the box; because ``x`` itself lies in the box,
clipping only shrinks each ``|delta_i|``, so the result is inside both sets (and projecting again leaves
it unchanged).
"""

from __future__ import annotations

import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv._batch import bcast
from jaxadv._struct import is_concrete, pytree_dataclass, static

Array = jax.Array
_TINY = 1e-12


def _flat(x: Array) -> Array:
    return x.reshape(x.shape[0], -1)


def _step(step_size, g: Array) -> Array:
    """A scalar or per-example ``[B]`` step length, ready to multiply ``g[B, ...]``."""
    s = jnp.asarray(step_size, g.dtype)
    return bcast(s, g) if s.ndim == 1 else s


#: Storage dtypes accepted as ``grid`` names, with their bit depth.
GRID_DTYPES = {"uint8": 8, "uint16": 16}


def grid_bits(grid: int | str | None) -> int | None:
    """The bit depth of a storage grid: ``None`` (no grid), an int in ``1..16`` (``12`` for
    12-bit scanners) or a dtype name (``'uint8'``, ``'uint16'``).

    Raises:
        ValueError: anything else (floating dtypes have no uniform grid; quantise to 16 bits).
    """
    if grid is None:
        return None
    if isinstance(grid, str) and grid.strip().lower() in GRID_DTYPES:
        return GRID_DTYPES[grid.strip().lower()]
    if isinstance(grid, (int, np.integer)) and not isinstance(grid, bool) and 1 <= grid <= 16:
        return int(grid)
    raise ValueError(
        f"grid must be None, a bit depth 1..16 (8, 12, 16) or one of {sorted(GRID_DTYPES)}, "
        f"got {grid!r}"
    )


class AbstractThreat:
    """Base of all threat models. Subclasses set ``p`` and implement the ball operations.

    Every threat model also carries two static settings that make a reported success durable
    (both default to today's behaviour; :func:`jaxadv.result.finalize` reads them, so they reach
    every attack):

    * ``success_margin`` (κ, default ``0.0``): success means the logit margin of
      :class:`jaxadv.AttackResult` is ``> κ`` (untargeted ``max_{j != y} z_j - z_y``, targeted
      ``z_t - max_{j != t} z_j``). With ``κ = 0`` the rule is the plain argmax rule. A small
      positive κ (e.g. ``1e-3``) rejects points that sit on the decision boundary, whose label can
      flip under another compilation, another framework or a saved-and-reloaded image.
    * ``grid`` (default ``None``): the storage grid the results are quantised to, a bit depth
      (``8``, ``12``, ``16``) or a dtype name (``'uint8'``, ``'uint16'``): the values
      ``lo + (hi - lo) * k / (2**bits - 1)``. The final ``adv`` lies on it and inside the threat
      set (:meth:`snap`), and success is recomputed on the quantised image, so saving it as
      8-bit PNG / 16-bit arrays and reloading gives the same image and the same success flag.
      Clean images should lie on the grid (loaded from files of that depth).
    """

    p: ClassVar[float]
    eps: float | Array
    lo: float | Array
    hi: float | Array
    success_margin: float
    grid: int | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", grid_bits(self.grid))
        m = self.success_margin
        num = (int, float, np.integer, np.floating)
        if isinstance(m, bool) or not isinstance(m, num) or not m >= 0 or m == math.inf:
            raise ValueError(
                f"{type(self).__name__}: success_margin must be a finite number >= 0 (logit "
                f"units; 0 is the plain argmax rule), got {m!r}"
            )
        object.__setattr__(self, "success_margin", float(m))
        # Python numbers become float32 scalars: eps=0 (int) and eps=0.1 then share one trace.
        for name in ("eps", "lo", "hi"):
            v = getattr(self, name)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                object.__setattr__(self, name, np.float32(v))
        if is_concrete(self.eps):
            e = np.asarray(self.eps)
            if np.any(np.isnan(e)) or np.any(e < 0):
                raise ValueError(
                    f"{type(self).__name__}: eps must be >= 0 and not NaN, got {self.eps!r}. "
                    "Use eps=0 for a clean evaluation."
                )
        if is_concrete(self.lo) and is_concrete(self.hi):
            if np.any(np.asarray(self.lo) >= np.asarray(self.hi)):
                raise ValueError(
                    f"{type(self).__name__}: box must satisfy lo < hi, got lo={self.lo}, hi={self.hi}."
                )

    # -- per-norm pieces -------------------------------------------------------------------
    def norm(self, delta: Array) -> Array:
        """Per-example norm ``[B]`` of ``delta[B, ...]``."""
        raise NotImplementedError

    def project_ball(self, delta: Array) -> Array:
        """Euclidean projection of each ``delta`` onto the ball of radius ``eps``."""
        raise NotImplementedError

    def ascent_step(self, grad: Array, step_size: Array | float) -> Array:
        """Steepest-ascent step of the given length in this norm."""
        raise NotImplementedError

    def sample_ball(self, key: Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
        """One random point of the ball (unbatched ``shape``), for random starts."""
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------------------
    def clip_box(self, x: Array) -> Array:
        return jnp.clip(x, self.lo, self.hi)

    def project(self, x: Array, x_adv: Array) -> Array:
        """Map ``x_adv`` into the threat set around ``x``: norm ball first, then the box."""
        return self.clip_box(x + self.project_ball(x_adv - x))

    def random_init(self, keys: Array, x: Array) -> Array:
        """A random start per example; ``keys`` holds one key per example ``[B]``."""
        delta = jax.vmap(lambda k: self.sample_ball(k, x.shape[1:], x.dtype))(keys)
        return self.project(x, x + delta)

    def snap(self, x: Array, x_adv: Array, *, away: bool = False) -> Array:
        """``x_adv[B, ...]`` (already in the set) moved onto the storage grid, still in the set.

        Per example: each value rounds to its nearest grid value when the result stays inside
        the ball; otherwise every changed value rounds towards ``x`` instead (``|delta_i|`` only
        shrinks, so every norm, pixel count and patch extent does too). Unchanged values keep
        ``x`` bit for bit; values of ``x`` that are off the grid (clean images not stored at this
        depth) are kept when no grid value lies between ``x`` and ``x_adv``. Without a grid,
        ``x_adv`` is returned as is.

        ``away=True``: every changed value rounds away from ``x`` instead (the perturbation's
        direction, each ``|delta_i|`` up to the next grid value), for examples where that stays
        in the set; the others get the default result. :func:`~jaxadv.result.finalize` tries it
        where the default rounding lost the success (rounding a small perturbation to nearest
        mostly undoes it).

        Example:
            >>> import jax.numpy as jnp, jaxadv
            >>> t = jaxadv.LinfBall(eps=8 / 255, grid=8)
            >>> x = jnp.zeros((1, 1, 1, 1))
            >>> round(float(t.snap(x, x + 0.01)[0, 0, 0, 0]) * 255, 4)  # 2.55 / 255 -> 3 / 255
            3.0
        """
        if self.grid is None:
            return x_adv
        top = float(2**self.grid - 1)
        lo = jnp.asarray(self.lo, x.dtype)
        span = jnp.asarray(self.hi, x.dtype) - lo
        ka = (x_adv - lo) / span * top
        kx = (x - lo) / span * top
        kx_r = jnp.round(kx)
        x_on = jnp.abs(kx - kx_r) < 1e-3
        kx = jnp.where(x_on, kx_r, kx)

        # grid values from a host table: XLA:CPU's float32 division is not correctly rounded,
        # and the values must equal NumPy's ``code / 255`` (how the loaders read 8-bit files)
        table = jnp.asarray(np.arange(top + 1, dtype=np.float32) / np.float32(top), x.dtype)

        def value(k):
            q = table[jnp.clip(k, 0.0, top).astype(jnp.int32)]
            return jnp.where(x_on & (k == kx), x, lo + span * q)

        near = jnp.where(x_adv == x, x, value(jnp.round(ka)))
        # towards x: the grid value between x and x_adv closest to x_adv (or x when none is)
        up = ka >= kx
        kt = jnp.where(up, jnp.floor(ka), jnp.ceil(ka))
        between = jnp.where(up, kt >= kx, kt <= kx)
        toward = jnp.where((x_adv == x) | ~between, x, value(kt))
        if self.p == 0:  # pixel budgets: rounding never changes a pixel that was unchanged
            first = near
        else:
            ok = self.norm(near - x) <= jnp.asarray(self.eps, x.dtype)
            first = jnp.where(bcast(ok, x), near, toward)
        if not away:
            return first
        # away from x: every changed value to the grid value beyond it (|delta_i| only grows)
        ka_away = jnp.where(up, jnp.ceil(ka), jnp.floor(ka))
        far = jnp.where(x_adv == x, x, value(ka_away))
        ok = self.norm(far - x) <= jnp.asarray(self.eps, x.dtype)
        return jnp.where(bcast(ok, x), far, first)

    def diameter(self, shape: tuple[int, ...]) -> float:
        """The largest norm of a change inside the box for inputs of ``shape`` ``[B, ...]``
        (host-side): a ball of this radius around any ``x`` in the box contains the whole box, so
        it stands in for an infinite ``eps`` without infinities in step sizes or projections."""
        span = float(np.max(np.asarray(self.hi)) - np.min(np.asarray(self.lo)))
        d = math.prod(shape[1:])
        # a hair above the exact value: float32 rounding must not shrink the ball below the box
        return span * (1.0 if self.p == math.inf else d ** (1.0 / self.p)) * (1 + 1e-6)

    def contains(self, x: Array, x_adv: Array, tol: float = 1e-5) -> Array:
        """Per-example check ``[B]`` that ``x_adv`` lies in the set (up to ``tol``)."""
        in_ball = self.norm(x_adv - x) <= self.eps * (1 + tol) + tol
        in_box = jnp.all(_flat((x_adv >= self.lo - tol) & (x_adv <= self.hi + tol)), axis=1)
        return in_ball & in_box


@pytree_dataclass
class LinfBall(AbstractThreat):
    """L∞ ball ``max_i |delta_i| <= eps`` intersected with the box ``[lo, hi]``.

    Example:
        >>> import jax.numpy as jnp, jaxadv
        >>> t = jaxadv.LinfBall(eps=0.1)
        >>> x = jnp.full((1, 2, 2, 1), 0.5)
        >>> round(float(t.project(x, x + 1.0).max()), 4)
        0.6
    """

    p: ClassVar[float] = math.inf
    eps: float | Array
    lo: float | Array = 0.0
    hi: float | Array = 1.0
    success_margin: float = static(default=0.0)
    grid: int | None = static(default=None)

    def norm(self, delta):
        return jnp.max(jnp.abs(_flat(delta)), axis=1)

    def project_ball(self, delta):
        eps = jnp.asarray(self.eps, delta.dtype)
        return jnp.clip(delta, -eps, eps)

    def ascent_step(self, grad, step_size):
        return _step(step_size, grad) * jnp.sign(grad)

    def sample_ball(self, key, shape, dtype=jnp.float32):
        eps = jnp.asarray(self.eps, dtype)
        return jax.random.uniform(key, shape, dtype, -1.0, 1.0) * eps


@pytree_dataclass
class L2Ball(AbstractThreat):
    """L2 ball ``||delta||_2 <= eps`` intersected with the box ``[lo, hi]``."""

    p: ClassVar[float] = 2.0
    eps: float | Array
    lo: float | Array = 0.0
    hi: float | Array = 1.0
    success_margin: float = static(default=0.0)
    grid: int | None = static(default=None)

    def norm(self, delta):
        return jnp.sqrt(jnp.sum(jnp.square(_flat(delta)), axis=1))

    def project_ball(self, delta):
        n = self.norm(delta)
        eps = jnp.asarray(self.eps, delta.dtype)
        scale = jnp.minimum(1.0, eps / jnp.maximum(n, _TINY)).astype(delta.dtype)
        return delta * bcast(scale, delta)

    def ascent_step(self, grad, step_size):
        n = jnp.sqrt(jnp.sum(jnp.square(_flat(grad)), axis=1))
        return _step(step_size, grad) * grad / bcast(jnp.maximum(n, _TINY), grad)

    def sample_ball(self, key, shape, dtype=jnp.float32):
        k1, k2 = jax.random.split(key)
        d = jax.random.normal(k1, shape, dtype)
        d = d / jnp.maximum(jnp.sqrt(jnp.sum(d * d)), _TINY)
        r = jax.random.uniform(k2, (), dtype)
        return d * r * jnp.asarray(self.eps, dtype)


def _project_l1_ball(v: Array, eps: Array) -> Array:
    """Exact projection of each row of ``v[B, D]`` onto the L1 ball (Duchi et al., 2008)."""
    a = jnp.abs(v)
    inside = jnp.sum(a, axis=1) <= eps
    s = -jnp.sort(-a, axis=1)
    cs = jnp.cumsum(s, axis=1)
    k = jnp.arange(1, v.shape[1] + 1, dtype=v.dtype)[None, :]
    cond = s * k > (cs - eps[:, None])
    rho = jnp.sum(cond, axis=1)  # number of positive entries after shrinkage (>= 1)
    theta = (jnp.take_along_axis(cs, (rho - 1)[:, None], axis=1)[:, 0] - eps) / rho.astype(v.dtype)
    w = jnp.sign(v) * jnp.maximum(a - jnp.maximum(theta, 0.0)[:, None], 0.0)
    return jnp.where(inside[:, None], v, w)


@pytree_dataclass
class L1Ball(AbstractThreat):
    """L1 ball ``sum_i |delta_i| <= eps`` intersected with the box ``[lo, hi]``.

    ``ascent_step`` is the sparse steepest-ascent step of Tramèr & Boneh (2019): it moves only the
    coordinates whose gradient magnitude is in the top ``sparsity`` fraction, spreading the step
    length over them (a pure sign step on one coordinate stalls on the box).
    """

    p: ClassVar[float] = 1.0
    eps: float | Array
    lo: float | Array = 0.0
    hi: float | Array = 1.0
    success_margin: float = static(default=0.0)
    grid: int | None = static(default=None)
    sparsity: float = static(default=0.01)

    def norm(self, delta):
        return jnp.sum(jnp.abs(_flat(delta)), axis=1)

    def project_ball(self, delta):
        eps = jnp.broadcast_to(jnp.asarray(self.eps, delta.dtype), (delta.shape[0],))
        return _project_l1_ball(_flat(delta), eps).reshape(delta.shape)

    def ascent_step(self, grad, step_size):
        g = _flat(grad)
        d = g.shape[1]
        k = max(1, int(round(self.sparsity * d)))
        thresh = jax.lax.top_k(jnp.abs(g), k)[0][:, -1:]
        sel = jnp.abs(g) >= thresh
        cnt = jnp.maximum(jnp.sum(sel, axis=1, keepdims=True), 1).astype(g.dtype)
        step = jnp.where(sel, jnp.sign(g), 0.0) / cnt
        return (_step(step_size, g) * step).reshape(grad.shape)

    def sample_ball(self, key, shape, dtype=jnp.float32):
        k1, k2 = jax.random.split(key)
        d = jax.random.laplace(k1, shape, dtype)
        d = d / jnp.maximum(jnp.sum(jnp.abs(d)), _TINY)
        r = jax.random.uniform(k2, (), dtype)
        return d * r * jnp.asarray(self.eps, dtype)


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

    A *pixel* is a spatial location ``(h, w)`` with all its channels, as in Su, Vargas & Sakurai
    (2019), "One pixel attack for fooling deep neural networks": changing one channel or all three
    of a pixel costs the same. The budget is the ``eps`` field (named ``eps``, not ``k``, so
    :meth:`AbstractAttack.with_eps` and :func:`jaxadv.sweep_eps` work unchanged). It is a leaf: a
    new budget never retraces.

    ``norm(delta)`` counts the pixels whose largest channel change exceeds ``tol`` (0 in float).
    ``project(x, x_adv)`` first clips ``x_adv`` to the box, then keeps the ``k`` pixels with the
    largest change (largest channel ``|delta|``; ties go to the lower flat index ``h * W + w``) and
    reverts every other pixel to ``x``. Clipping first means a slot is never wasted on a change the
    box would erase; since ``x`` lies in the box the result is inside both sets and projecting again
    leaves it unchanged. A non-integer ``eps`` is floored.

    L0 has no steepest-ascent step: use it with the black-box sparse attacks
    (:class:`~jaxadv.attacks.onepixel.OnePixel`, :class:`~jaxadv.attacks.dgde.DGDE`).

    Attributes:
        eps: pixel budget ``k`` (a leaf; ``jnp.inf`` means no budget).
        lo, hi: the input box.
        tol: a pixel counts as changed when ``max_k |delta| > tol`` (static; use ``0.5/255`` after
            8-bit quantisation of nearly equal images).

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxadv.threats import L0Pixels
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
    success_margin: float = static(default=0.0)
    grid: int | None = static(default=None)
    tol: float = static(default=0.0)

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


@pytree_dataclass
class Patch(AbstractThreat):
    """Every changed pixel lies inside one ``s × s`` square (``s = eps``), anywhere in the image,
    inside the box ``[lo, hi]``: the threat of image- and location-specific adversarial patches
    (Croce et al., "Sparse-RS", AAAI 2022; Brown et al. 2017).

    Inside the square the pixels may take any value in the box. The budget ``eps`` is the patch
    side in pixels (a leaf: a sweep over sides never retraces; a non-integer ``eps`` is floored,
    and a side beyond the image is the whole image).

    ``norm(delta)`` is the side of the smallest square holding every changed pixel (the larger
    extent of their bounding box; 0 when nothing changed), so the set is ``norm <= eps``.
    ``project(x, x_adv)`` clips to the box, then keeps the ``s × s`` window holding the most
    changed pixels (ties: the first in row-major order of its top-left corner) and reverts every
    pixel outside it to ``x``. Counts are integers, so when all changes already fit in a window
    the kept window holds them all: projecting again leaves the result unchanged.

    Attributes:
        eps: patch side ``s`` in pixels (a leaf; ``jnp.inf``: the whole image).
        lo, hi: the input box.
        tol: a pixel counts as changed when ``max_k |delta| > tol`` (static).

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxadv.threats import Patch
        >>> x = jnp.zeros((1, 4, 4, 1))
        >>> z = x.at[0, 0, 0, 0].set(0.5).at[0, 1, 1, 0].set(0.5).at[0, 3, 3, 0].set(0.5)
        >>> t = Patch(eps=2)
        >>> t.norm(z - x).tolist(), t.norm(t.project(x, z) - x).tolist()
        ([4.0], [2.0])
    """

    p: ClassVar[float] = 0.0
    eps: float | Array
    lo: float | Array = 0.0
    hi: float | Array = 1.0
    success_margin: float = static(default=0.0)
    grid: int | None = static(default=None)
    tol: float = static(default=0.0)

    def side(self, shape: tuple[int, ...]) -> Array:
        """``int32`` patch side for images of ``shape`` ``[B, H, W, K]``: ``floor(eps)`` capped at
        ``min(H, W)``."""
        cap = min(shape[1], shape[2])
        e = jnp.minimum(jnp.asarray(self.eps, jnp.float32), float(cap))
        return jnp.floor(e).astype(jnp.int32)

    def norm(self, delta: Array) -> Array:
        """Side ``f32[B]`` of the smallest square holding every changed pixel of ``delta``."""
        b, h, w = delta.shape[:3]
        ch = pixel_change(delta, self.tol).reshape(b, h, w)
        rows, cols = jnp.any(ch, axis=2), jnp.any(ch, axis=1)

        def extent(m):  # [B, N] -> last - first + 1 (0 when empty)
            n = m.shape[1]
            idx = jnp.arange(n, dtype=jnp.int32)[None, :]
            first = jnp.min(jnp.where(m, idx, n), axis=1)
            last = jnp.max(jnp.where(m, idx, -1), axis=1)
            return jnp.maximum(last - first + 1, 0)

        return jnp.maximum(extent(rows), extent(cols)).astype(jnp.float32)

    def window(self, r: Array, c: Array, s: Array, shape: tuple[int, ...]) -> Array:
        """``bool[B, H, W]``: the ``s × s`` windows with top-left corners ``(r[B], c[B])``."""
        _, h, w = shape[:3]
        ii = jnp.arange(h, dtype=jnp.int32)[None, :] - r[:, None]
        jj = jnp.arange(w, dtype=jnp.int32)[None, :] - c[:, None]
        s = jnp.reshape(s, (-1, 1))
        rin = (ii >= 0) & (ii < s)
        cin = (jj >= 0) & (jj < s)
        return rin[:, :, None] & cin[:, None, :]

    def _revert(self, x: Array, z: Array) -> Array:
        b, h, w = x.shape[:3]
        s = self.side(x.shape)
        ch = pixel_change(z - x, self.tol).reshape(b, h, w).astype(jnp.int32)
        cum = jnp.pad(jnp.cumsum(jnp.cumsum(ch, axis=1), axis=2), ((0, 0), (1, 0), (1, 0)))
        r0 = jnp.arange(h, dtype=jnp.int32)
        c0 = jnp.arange(w, dtype=jnp.int32)
        r1, c1 = jnp.minimum(r0 + s, h), jnp.minimum(c0 + s, w)
        count = (
            cum[:, r1][:, :, c1]
            - cum[:, r0][:, :, c1]
            - cum[:, r1][:, :, c0]
            + cum[:, r0][:, :, c0]
        )
        valid = ((r0 + s) <= h)[:, None] & ((c0 + s) <= w)[None, :]
        count = jnp.where(valid[None], count, -1).reshape(b, h * w)
        best = jnp.argmax(count, axis=1).astype(jnp.int32)  # first maximum: row-major tie-break
        keep = self.window(best // w, best % w, jnp.broadcast_to(s, (b,)), x.shape)
        keep = keep.reshape(x.shape[:3] + (1,) * (x.ndim - 3))
        return jnp.where(keep, z, x)

    def project_ball(self, delta: Array) -> Array:
        """Keep the ``s × s`` window of ``delta`` with the most changed pixels, zero the rest."""
        return self._revert(jnp.zeros_like(delta), delta)

    def project(self, x: Array, x_adv: Array) -> Array:
        """Clip to the box, keep the window with the most changes, revert the rest to ``x``."""
        return self.clip_box(self._revert(x, self.clip_box(x_adv)))

    def random_init(self, keys: Array, x: Array) -> Array:
        raise NotImplementedError(
            "Patch has no random start of its own: SparseRS draws the patch location and content"
        )

    def sample_ball(self, key: Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
        raise NotImplementedError("Patch has no ball to sample: use SparseRS")

    def ascent_step(self, grad: Array, step_size: Array | float) -> Array:
        raise NotImplementedError(
            "Patch has no steepest-ascent step: use the score-based SparseRS attack"
        )


THREATS = (LinfBall, L2Ball, L1Ball)
