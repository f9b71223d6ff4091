"""Model adapters: NNX / Linen / apply functions, eval mode, baked-in normalisation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import jaxadv
from jaxadv.nn import SmallCNN


def test_from_nnx_forces_eval_mode_and_leaves_module_alone():
    m = SmallCNN(num_classes=3, rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1))
    m.train()
    target = jaxadv.from_nnx(m)
    a, b = target(x), target(x)
    np.testing.assert_array_equal(a, b)  # dropout off
    # batch norm uses running statistics (initially mean 0 / var 1): batch-independent outputs
    np.testing.assert_allclose(target(x[:1]), a[:1], rtol=1e-5, atol=1e-5)
    # the caller's module is still in train mode
    assert m.drop.deterministic is False
    m.eval()
    np.testing.assert_allclose(m(x), a, rtol=1e-5, atol=1e-6)


def test_nnx_new_weights_no_recompile():
    m = SmallCNN(num_classes=2, rngs=nnx.Rngs(0))
    t = jaxadv.from_nnx(m)
    m2 = SmallCNN(num_classes=2, rngs=nnx.Rngs(1))
    t2 = jaxadv.from_nnx(m2)
    assert jax.tree.structure(t) == jax.tree.structure(t2)
    f = jax.jit(lambda mod, x: mod(x))
    x = jnp.zeros((2, 28, 28, 1))
    f(t, x)
    n = f._cache_size()
    f(t2, x)
    assert f._cache_size() == n


class _LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.Conv(4, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        x = nn.Dropout(0.5, deterministic=not train)(x)
        return nn.Dense(2)(x.reshape(x.shape[0], -1))


def test_from_linen_sets_train_false():
    net = _LinenNet()
    x = jax.random.uniform(jax.random.key(0), (3, 8, 8, 1))
    variables = net.init(
        {"params": jax.random.key(1), "dropout": jax.random.key(2)}, x, train=False
    )
    target = jaxadv.from_linen(net, variables)
    np.testing.assert_allclose(target(x), net.apply(variables, x, train=False), rtol=1e-6)
    res = jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.05), num_steps=2)(
        jax.random.key(0), target, x, jnp.zeros((3,), jnp.int32)
    )
    assert res.adv.shape == x.shape


def test_normalisation_and_grey_to_rgb_baked_in():
    w = jax.random.normal(jax.random.key(0), (4 * 4 * 3, 2))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)

    def apply(p, x):
        return x.reshape(x.shape[0], -1) @ p

    target = jaxadv.from_apply(apply, w, mean=mean, std=std, grey_to_rgb=True)
    x = jax.random.uniform(jax.random.key(1), (2, 4, 4, 1))
    rgb = jnp.repeat(x, 3, axis=-1)
    manual = apply(
        w, (rgb - jnp.asarray(mean)[None, None, None, :]) / jnp.asarray(std)[None, None, None, :]
    )
    np.testing.assert_allclose(target(x), manual, rtol=1e-5, atol=1e-5)
    # eps stays in pixel units: the perturbation is measured on the grey [0, 1] input
    res = jaxadv.FGSM(threat=jaxadv.LinfBall(eps=2 / 255))(
        jax.random.key(0), target, x, jnp.zeros((2,), jnp.int32)
    )
    assert res.adv.shape == x.shape
    np.testing.assert_allclose(res.norm, 2 / 255, rtol=1e-4)


def test_bad_adapter_inputs():
    with pytest.raises(TypeError, match="nnx.Module"):
        jaxadv.from_nnx(lambda x: x)
    with pytest.raises(TypeError, match="linen"):
        jaxadv.from_linen(lambda x: x, {})
    with pytest.raises(ValueError, match="std must be positive"):
        jaxadv.from_apply(lambda p, x: x, None, std=0.0)
