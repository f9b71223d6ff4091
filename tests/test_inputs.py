"""Bad input gets a clear error before anything compiles; sanity checks warn."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import linear_model

import jaxadv

SHAPE = (4, 4, 1)


@pytest.fixture
def setup():
    model = linear_model(3, SHAPE)
    x = jax.random.uniform(jax.random.key(0), (4, *SHAPE))
    y = jnp.array([0, 1, 2, 0], jnp.int32)
    return model, x, y


@pytest.fixture
def no_compile(monkeypatch):
    """Fail the test if the attack reaches its compiled program."""
    import jaxadv.attacks.base as base

    def boom(*a, **k):
        raise AssertionError("compiled attack was reached before the input check")

    monkeypatch.setattr(base, "run_jit", boom)


PGD = jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.1), num_steps=2)


def _call(model, x, y, **kw):
    return PGD(jax.random.key(0), model, x, y, **kw)


def test_wrong_rank(setup, no_compile):
    model, x, y = setup
    with pytest.raises(ValueError, match="rank 4"):
        _call(model, x[0], y)


def test_nchw_layout(no_compile):
    model = jaxadv.from_apply(lambda p, x: x.reshape(x.shape[0], -1)[:, :2], None)
    x = jnp.zeros((2, 3, 8, 8))
    with pytest.raises(ValueError, match="NCHW"):
        _call(model, x, jnp.zeros((2,), jnp.int32))


def test_uint8_images(setup, no_compile):
    model, x, y = setup
    with pytest.raises(TypeError, match="/ 255"):
        _call(model, (x * 255).astype(jnp.uint8), y)


def test_values_outside_box(setup, no_compile):
    model, x, y = setup
    with pytest.raises(ValueError, match="divide by 255"):
        _call(model, x * 255, y)
    with pytest.raises(ValueError, match=r"box \[0.0, 1.0\]"):
        _call(model, x - 0.5, y)


def test_nan_and_inf(setup, no_compile):
    model, x, y = setup
    with pytest.raises(ValueError, match="NaN/inf"):
        _call(model, x.at[0, 0, 0, 0].set(jnp.nan), y)
    with pytest.raises(ValueError, match="NaN/inf"):
        _call(model, x.at[1, 0, 0, 0].set(jnp.inf), y)


def test_labels_out_of_range(setup, no_compile):
    model, x, y = setup
    with pytest.raises(ValueError, match="outside"):
        _call(model, x, y.at[0].set(3))
    with pytest.raises(ValueError, match="outside"):
        _call(model, x, y.at[0].set(-1))


def test_labels_wrong_shape_or_dtype(setup, no_compile):
    model, x, y = setup
    with pytest.raises(ValueError, match=r"y\[:, 0\]"):
        _call(model, x, y[:, None])
    with pytest.raises(TypeError, match="integer"):
        _call(model, x, y.astype(jnp.float32))
    with pytest.raises(ValueError, match="argmax"):
        _call(model, x, jax.nn.one_hot(y, 3))


def test_target_checked(setup, no_compile):
    model, x, y = setup
    with pytest.raises(ValueError, match="target"):
        _call(model, x, y, target=y.at[0].set(7))


def test_negative_eps():
    for cls in (jaxadv.LinfBall, jaxadv.L2Ball, jaxadv.L1Ball):
        with pytest.raises(ValueError, match="eps must be >= 0"):
            cls(eps=-0.1)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        jaxadv.LinfBall(eps=float("nan"))


def test_negative_eps_in_sweep(setup):
    model, x, y = setup
    with pytest.raises(ValueError, match=">= 0"):
        jaxadv.sweep_eps(PGD, [0.1, -0.1], key=jax.random.key(0), model=model, x=x, y=y)


def test_empty_batch(setup, no_compile):
    model, x, y = setup
    with pytest.raises(ValueError, match="empty batch"):
        _call(model, x[:0], y[:0])


def test_mismatched_batch(setup, no_compile):
    model, x, y = setup
    with pytest.raises(ValueError, match="one label per image"):
        _call(model, x, y[:3])


def test_model_wrong_output(no_compile):
    model = jaxadv.from_apply(lambda p, x: x.reshape(x.shape[0], -1), None)
    x = jnp.zeros((2, 1, 1, 1))
    with pytest.raises(ValueError, match="single logit"):
        _call(model, x, jnp.zeros((2,), jnp.int32))
    bad = jaxadv.from_apply(lambda p, x: x.reshape(-1), None)
    with pytest.raises(ValueError, match=r"logits \[B, C\]"):
        _call(bad, jnp.zeros((2, 2, 2, 1)), jnp.zeros((2,), jnp.int32))


def test_model_fails_on_shape(no_compile):
    w = jnp.ones((10, 2))
    model = jaxadv.from_apply(lambda p, x: x.reshape(x.shape[0], -1) @ p, w)
    with pytest.raises(ValueError, match="model failed"):
        _call(model, jnp.zeros((2, 4, 4, 1)), jnp.zeros((2,), jnp.int32))


def test_box_bounds_invalid():
    with pytest.raises(ValueError, match="lo < hi"):
        jaxadv.LinfBall(eps=0.1, lo=1.0, hi=0.0)


def test_bad_model_type():
    with pytest.raises(TypeError, match="callable"):
        _call(42, jnp.zeros((1, 2, 2, 1)), jnp.zeros((1,), jnp.int32))


def test_loss_name():
    with pytest.raises(ValueError, match="unknown loss"):
        jaxadv.losses.resolve("hinge", False)


# ------------------------------------------------------------------------------ sanity checks
def test_sanity_clean_model_is_quiet(setup):
    model, x, y = setup
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert jaxadv.check_model(model, x, y) == []


def test_sanity_probabilities(setup):
    model, x, y = setup
    probs = jaxadv.from_apply(lambda p, x: jax.nn.softmax(model(x), axis=1), None)
    with pytest.warns(jaxadv.SanityWarning, match="probabilities"):
        jaxadv.check_model(probs, x, y)


def test_sanity_nondeterministic(setup):
    model, x, y = setup
    rng = np.random.default_rng(0)

    def noisy(xa):  # randomness outside JAX: a model with dropout left on, say
        return model(xa) + jnp.asarray(rng.normal(size=(xa.shape[0], 3)), jnp.float32)

    with pytest.warns(jaxadv.SanityWarning, match="not deterministic"):
        jaxadv.check_model(noisy, x, y)


def test_sanity_zero_and_nan_gradients(setup):
    model, x, y = setup
    step = jaxadv.from_apply(lambda p, x: model(jnp.round(x * 0)) + 0.0 * 0, None)
    with pytest.warns(jaxadv.SanityWarning, match="exactly zero"):
        jaxadv.check_model(step, x, y)

    def nan_grad(p, xa):  # finite logits, NaN input gradient (the where/sqrt trap)
        bump = jnp.sum(jnp.where(xa > 5.0, jnp.sqrt(xa - 5.0), 0.0), axis=(1, 2, 3))
        return model(xa) + bump[:, None]

    with pytest.warns(jaxadv.SanityWarning, match="gradients are NaN"):
        assert len(jaxadv.check_model(jaxadv.from_apply(nan_grad, None), x, y)) == 1
