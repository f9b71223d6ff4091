"""Keep convolution gradients on XLA:CPU's fast path inside loops.

JAX writes the input gradient of a convolution as a convolution whose kernel has its in/out axes
swapped (``dim_labels=..._01oi->...``). In straight-line code XLA:CPU's convolution
canonicalisation rewrites that into a transpose plus a convolution in the layout its fast library
kernels take. Inside a ``while`` body (every ``fori_loop`` / ``scan`` of an iterative attack) that
rewrite does not happen in the XLA shipped with jax 0.10 and the convolution falls back to a
generic emitted loop nest, measured 20x slower for one 3x3 input gradient and about 3x for a whole
PGD-20 / APGD-20 on the reference CNN (``benchmarks/loops.py``).

:func:`canonical_convs` does that rewrite before XLA sees the program: it traces a function to a
jaxpr and replays it with every ``conv_general_dilated`` re-emitted in the canonical layout
(input ``b01f``, kernel ``01io``, output ``b01f``) between explicit transposes. Same arithmetic,
same results (bit-identical in our checks of PGD and APGD; FMN within float rounding). Calls such
as ``pjit`` are inlined; control flow inside the model (``scan`` over layers, ``cond``) is replayed
unchanged, so convolutions there keep XLA's own treatment. The outputs of the rewritten function
must not be differentiated again (custom differentiation rules are inlined away).

The same replay also rewrites the max-pool gradient. JAX differentiates ``reduce_window_max``
into ``select_and_scatter_add``, which XLA:CPU expands into a variadic reduce-window over index
arrays plus a serial scatter: about 70% of a forward+backward of the reference CNN at batch 64
(profiled). For non-overlapping, unpadded windows (the usual 2x2/2 pool) it is re-emitted as
element-wise selects with XLA's own tie rule (scan the window in row-major order, keep the current
pick while ``select(current, candidate)`` holds), so the result is bit-identical; overlapping or
padded windows are left to XLA. Together: PGD-10 on the reference CNN about 2x faster again.

Only applied on the CPU backend; ``JAXADV_CANONICAL_CONVS=0`` turns it off.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core as jex_core

_CONV = lax.conv_general_dilated_p
_SELECT_SCATTER = lax.select_and_scatter_add_p
# Call-like primitives whose body is replayed in place (so that convolutions inside are rewritten).
_INLINE = {
    "pjit",
    "jit",
    "closed_call",
    "core_call",
    "remat",
    "checkpoint",
    "custom_jvp_call",
    "custom_vjp_call",
    "custom_vjp_call_jaxpr",
}


def canonical_dimension_numbers(ndim: int) -> lax.ConvDimensionNumbers:
    """XLA:CPU's preferred layout for an ``ndim``-D convolution: NHWC input, HWIO kernel, NHWC out."""
    spatial = tuple(range(1, ndim - 1))
    return lax.ConvDimensionNumbers(
        lhs_spec=(0, ndim - 1, *spatial),
        rhs_spec=(ndim - 1, ndim - 2, *range(ndim - 2)),
        out_spec=(0, ndim - 1, *spatial),
    )


def _canonical_conv(lhs, rhs, *, dimension_numbers, **params):
    lhs_spec, rhs_spec, out_spec = dimension_numbers
    n = len(lhs_spec)
    can = canonical_dimension_numbers(n)
    if tuple(map(tuple, dimension_numbers)) == tuple(map(tuple, can)):
        return _CONV.bind(lhs, rhs, dimension_numbers=dimension_numbers, **params)
    # spec = (batch/out-feature dim, feature/in-feature dim, spatial dims...) as axis indices
    lhs_t = lax.transpose(lhs, (lhs_spec[0], *lhs_spec[2:], lhs_spec[1]))
    rhs_t = lax.transpose(rhs, (*rhs_spec[2:], rhs_spec[1], rhs_spec[0]))
    out = _CONV.bind(lhs_t, rhs_t, dimension_numbers=can, **params)
    # out is (batch, spatial..., feature); put each axis where out_spec wants it
    inverse = [0] * n
    inverse[out_spec[0]] = 0
    inverse[out_spec[1]] = n - 1
    for i, d in enumerate(out_spec[2:]):
        inverse[d] = 1 + i
    return lax.transpose(out, tuple(inverse))


def _pool_gradient(source, operand, *, select_prim, window_dimensions, window_strides, padding):
    """``select_and_scatter_add`` for non-overlapping unpadded windows, or ``None`` (use XLA's)."""
    win = tuple(window_dimensions)
    if win != tuple(window_strides) or any(tuple(p) != (0, 0) for p in padding):
        return None
    n = operand.ndim
    full = operand.shape
    used = tuple((d // w) * w for d, w in zip(full, win, strict=True))  # VALID drops the rest
    if used != full:
        operand = operand[tuple(slice(0, u) for u in used)]
    outs = tuple(u // w for u, w in zip(used, win, strict=True))
    k = math.prod(win)
    # (o0, w0, o1, w1, ...) -> (o0, o1, ..., w0, w1, ...) -> (o..., k): each window on one axis
    perm = tuple(range(0, 2 * n, 2)) + tuple(range(1, 2 * n, 2))
    split = sum(((o, w) for o, w in zip(outs, win, strict=True)), ())
    windows = operand.reshape(split).transpose(perm).reshape((*outs, k))
    pick = windows[..., 0]
    idx = jnp.zeros(outs, jnp.int32)
    for j in range(1, k):  # XLA's rule: keep the current pick while select(current, candidate)
        cand = windows[..., j]
        keep = select_prim.bind(pick, cand)
        pick = jnp.where(keep, pick, cand)
        idx = jnp.where(keep, idx, j)
    hit = idx[..., None] == jnp.arange(k, dtype=jnp.int32).reshape((1,) * n + (k,))
    grad = jnp.where(hit, source[..., None], jnp.zeros((), source.dtype))
    inverse = [0] * (2 * n)
    for i, p in enumerate(perm):
        inverse[p] = i
    grad = grad.reshape((*outs, *win)).transpose(tuple(inverse)).reshape(used)
    if used != full:
        grad = jnp.pad(grad, [(0, d - u) for d, u in zip(full, used, strict=True)])
    return grad


def _sub_jaxpr(params: dict) -> Any:
    for name in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        if params.get(name) is not None:
            return params[name]
    return None


def _replay(jaxpr, consts, *args) -> list:
    env: dict = {}

    def read(v):
        return v.val if isinstance(v, jex_core.Literal) else env[v]

    env.update(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        prim = eqn.primitive
        sub = _sub_jaxpr(eqn.params) if prim.name in _INLINE else None
        pooled = _pool_gradient(*invals, **eqn.params) if prim is _SELECT_SCATTER else None
        if prim is _CONV:
            outs = [_canonical_conv(*invals, **eqn.params)]
        elif pooled is not None:
            outs = [pooled]
        elif sub is not None:
            if isinstance(sub, jex_core.ClosedJaxpr):
                outs = _replay(sub.jaxpr, sub.consts, *invals)
            else:
                outs = _replay(sub, (), *invals)
        else:
            with eqn.ctx.manager:
                outs = prim.bind(*invals, **prim.get_bind_params(eqn.params))
            if not prim.multiple_results:
                outs = [outs]
        env.update(zip(eqn.outvars, outs, strict=True))
    return [read(v) for v in jaxpr.outvars]


def _enabled() -> bool:
    return os.environ.get("JAXADV_CANONICAL_CONVS", "1") != "0" and jax.default_backend() == "cpu"


def canonical_convs(fun: Callable, *, force: bool = False) -> Callable:
    """``fun`` with every convolution re-emitted in XLA:CPU's canonical layout (see module doc).

    A no-op (returns ``fun``) off the CPU backend or with ``JAXADV_CANONICAL_CONVS=0``, unless
    ``force``. Arguments and results may be any pytrees of arrays; ``fun`` may close over arrays.
    """
    if not (force or _enabled()):
        return fun

    @functools.wraps(fun)
    def wrapped(*args):
        flat, tree = jax.tree.flatten(args)
        closed, out_shape = jax.make_jaxpr(
            lambda *leaves: fun(*jax.tree.unflatten(tree, leaves)), return_shape=True
        )(*flat)
        out = _replay(closed.jaxpr, closed.consts, *flat)
        return jax.tree.unflatten(jax.tree.structure(out_shape), out)

    return wrapped
