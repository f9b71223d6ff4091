"""canonical_convs: same values as the original function, every convolution in canonical layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxadv._xla_cpu import canonical_convs, canonical_dimension_numbers

CASES = [
    # (lhs shape, rhs shape, dimension numbers, extra conv kwargs)
    ((2, 9, 9, 3), (3, 3, 3, 4), ("NHWC", "HWIO", "NHWC"), {}),
    ((2, 3, 9, 9), (4, 3, 3, 3), ("NCHW", "OIHW", "NCHW"), {"window_strides": (2, 2)}),
    ((2, 9, 9, 4), (3, 3, 2, 6), ("NHWC", "HWIO", "NHWC"), {"feature_group_count": 2}),
    ((2, 11, 11, 2), (3, 3, 2, 2), ("NHWC", "HWIO", "NCHW"), {"rhs_dilation": (2, 2)}),
    ((2, 12, 3), (3, 3, 5), ("NWC", "WIO", "NWC"), {"padding": [(1, 1)]}),
]


def _conv_fn(rhs, dn, kw):
    kw = {"window_strides": (1,) * (rhs.ndim - 2), "padding": "SAME", **kw}

    def f(x):
        return lax.conv_general_dilated(x, rhs, dimension_numbers=dn, **kw)

    return f


def _eqns(closed):
    """Every equation of a jaxpr, those of nested jaxprs (loop bodies, calls) included."""

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            yield eqn
            for p in eqn.params.values():
                for j in p if isinstance(p, tuple | list) else (p,):
                    inner = getattr(j, "jaxpr", j)
                    if hasattr(inner, "eqns"):
                        yield from walk(inner)

    return list(walk(closed.jaxpr))


def _conv_dimension_numbers(closed):
    return [
        e.params["dimension_numbers"]
        for e in _eqns(closed)
        if e.primitive is lax.conv_general_dilated_p
    ]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_values_and_gradients_unchanged(case):
    lshape, rshape, dn, kw = CASES[case]
    x = jax.random.normal(jax.random.key(0), lshape)
    w = jax.random.normal(jax.random.key(1), rshape)
    f = _conv_fn(w, dn, kw)

    def loss(x):
        return jnp.sum(jnp.tanh(f(x)) ** 2)

    g = jax.jit(jax.grad(loss))
    gc = jax.jit(canonical_convs(jax.grad(loss), force=True))
    np.testing.assert_allclose(gc(x), g(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        jax.jit(canonical_convs(f, force=True))(x), jax.jit(f)(x), rtol=1e-5, atol=1e-5
    )


def test_every_convolution_canonical_inside_a_loop():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    w = jax.random.normal(jax.random.key(1), (3, 3, 3, 3))
    f = _conv_fn(w, ("NHWC", "HWIO", "NHWC"), {})
    grad = jax.grad(lambda x: jnp.sum(f(x) ** 2))

    def run(step_grad, x):
        return lax.fori_loop(0, 3, lambda i, z: z - 0.01 * step_grad(z), x)

    plain = _conv_dimension_numbers(jax.make_jaxpr(lambda x: run(grad, x))(x))
    canon = canonical_dimension_numbers(4)
    # the input gradient is a convolution with swapped kernel axes: not canonical as JAX writes it
    assert any(tuple(d) != tuple(canon) for d in plain)
    fixed = _conv_dimension_numbers(
        jax.make_jaxpr(lambda x: run(canonical_convs(grad, force=True), x))(x)
    )
    assert fixed and all(tuple(d) == tuple(canon) for d in fixed)
    np.testing.assert_allclose(
        jax.jit(lambda x: run(canonical_convs(grad, force=True), x))(x),
        jax.jit(lambda x: run(grad, x))(x),
        rtol=1e-5,
        atol=1e-5,
    )


def test_control_flow_and_closures_replayed():
    w = jax.random.normal(jax.random.key(1), (3, 3, 2, 2))
    conv = _conv_fn(w, ("NHWC", "HWIO", "NHWC"), {})

    def model(x):  # a scan over "layers" and a jitted sub-call, closing over w
        h, _ = lax.scan(lambda h, _: (jax.nn.relu(conv(h)), None), x, None, length=2)
        return jax.jit(lambda h: jnp.mean(h, axis=(1, 2, 3)))(h)

    x = jax.random.normal(jax.random.key(0), (3, 6, 6, 2))
    grad = jax.grad(lambda x: jnp.sum(model(x)))
    np.testing.assert_allclose(
        jax.jit(canonical_convs(grad, force=True))(x), jax.jit(grad)(x), rtol=1e-5, atol=1e-6
    )


def test_switch_off(monkeypatch):
    f = jnp.sin
    monkeypatch.setenv("JAXADV_CANONICAL_CONVS", "0")
    assert canonical_convs(f) is f
    assert canonical_convs(f, force=True) is not f


def _pool(x, window, strides, padding="VALID", init=-jnp.inf, op=lax.max):
    return lax.reduce_window(x, init, op, window, strides, padding)


def _select_scatter_count(closed):
    return sum(e.primitive is lax.select_and_scatter_add_p for e in _eqns(closed))


@pytest.mark.parametrize(
    "shape,window,rewritten",
    [
        ((2, 8, 8, 3), (1, 2, 2, 1), True),  # the usual 2x2/2 max pool
        ((2, 7, 9, 2), (1, 2, 2, 1), True),  # VALID pooling drops the last row / column
        ((1, 9, 9, 1), (1, 3, 3, 1), True),
        ((2, 8, 8, 2), (1, 3, 3, 1), False),  # overlapping windows (stride 2): left to XLA
    ],
)
def test_max_pool_gradient_bit_identical_with_ties(shape, window, rewritten):
    # values in {0, 1, 2}: many ties inside a window, so the tie rule must match XLA's exactly
    x = jax.random.randint(jax.random.key(0), shape, 0, 3).astype(jnp.float32)
    strides = window if rewritten else (1, 2, 2, 1)
    src = jax.random.normal(jax.random.key(1), _pool(x, window, strides).shape)

    def loss(x):
        return jnp.sum(_pool(x, window, strides) * src)

    grad = jax.grad(loss)
    fast = canonical_convs(grad, force=True)
    assert _select_scatter_count(jax.make_jaxpr(grad)(x)) == 1
    assert _select_scatter_count(jax.make_jaxpr(fast)(x)) == (0 if rewritten else 1)
    np.testing.assert_array_equal(jax.jit(fast)(x), jax.jit(grad)(x))
    # min pooling (select is <=) follows the same rule
    neg = jax.grad(lambda x: jnp.sum(-_pool(-x, window, strides) * src))
    np.testing.assert_array_equal(jax.jit(canonical_convs(neg, force=True))(x), jax.jit(neg)(x))
