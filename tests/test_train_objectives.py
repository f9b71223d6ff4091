"""TRADES, MART and defensive distillation: losses against numpy, reductions, determinism, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import linear_model
from flax import nnx

import jaxadv
from jaxadv.nn import SmallCNN
from jaxadv.train import AdversarialTraining, Distillation, batch_loss, train
from jaxadv.train_objectives import (
    distillation_loss,
    mart_loss,
    pairwise_distance,
    trades_adversary,
    trades_loss,
)

Z = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0], [-1.0, 4.0, 0.0]], np.float32)
Z_ADV = np.array([[0.5, 1.0, 0.0], [1.0, 0.2, 0.3], [-1.0, 4.5, 2.0]], np.float32)
Y = np.array([0, 2, 1], np.int32)


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _kl(p, q):
    return np.sum(p * (np.log(p) - np.log(q)), axis=1)


def test_trades_loss_equals_numpy_reference():
    p, q = _softmax(Z.astype(np.float64)), _softmax(Z_ADV.astype(np.float64))
    ce = -np.log(p[np.arange(3), Y])
    want = ce + 6.0 * _kl(p, q)
    got = trades_loss(jnp.asarray(Z), jnp.asarray(Z_ADV), jnp.asarray(Y), 6.0)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)


def test_mart_loss_equals_numpy_reference():
    p, q = _softmax(Z.astype(np.float64)), _softmax(Z_ADV.astype(np.float64))
    rows = np.arange(3)
    other = q.copy()
    other[rows, Y] = -1.0  # the strongest wrong class, by brute force
    bce = -np.log(q[rows, Y]) - np.log(1.0 - other.max(axis=1))
    want = bce + 5.0 * _kl(p, q) * (1.0 - p[rows, Y])
    got = mart_loss(jnp.asarray(Z), jnp.asarray(Z_ADV), jnp.asarray(Y), 5.0)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)
    # a saturated wrong class (p_k rounds to 1 in float32) stays finite
    big = jnp.asarray([[0.0, 200.0, 0.0]], jnp.float32)
    assert np.isfinite(float(mart_loss(big, big, jnp.asarray([0]), 1.0)[0]))


def test_distillation_loss_equals_numpy_reference():
    t = 4.0
    soft = _softmax(Z_ADV.astype(np.float64) / t)
    want = -np.sum(soft * np.log(_softmax(Z.astype(np.float64) / t)), axis=1)
    got = distillation_loss(jnp.asarray(Z), jnp.asarray(Z_ADV), t)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)
    # the teacher's side is a constant
    g = jax.grad(lambda tz: jnp.sum(distillation_loss(jnp.asarray(Z), tz, t)))(jnp.asarray(Z_ADV))
    assert not np.any(np.asarray(g))


def _synthetic(n: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype(np.int32)
    x = rng.random((n, 28, 28, 1)) * 0.5 + 0.4 * y[:, None, None, None]
    return x.astype(np.float32), y


def _tiny(seed: int = 0, **kw) -> SmallCNN:
    return SmallCNN(2, 1, width=4, rngs=nnx.Rngs(seed), **kw)


def _pgd(eps=8 / 255, steps=2):
    return jaxadv.PGD(threat=jaxadv.LinfBall(eps=eps), num_steps=steps)


@pytest.mark.slow
def test_trades_beta_zero_is_clean_training_loss_and_mart_uses_the_attack():
    x, y = _synthetic()
    net = _tiny(dropout=0.0)  # batch norm on, dropout off: train-mode logits are deterministic
    clean, _ = batch_loss(net, x, y, mean=0.5, std=0.25)
    t0 = AdversarialTraining(attack=_pgd(), objective="trades", beta=0.0)
    loss, aux = batch_loss(net, x, y, key=0, adversarial=t0, mean=0.5, std=0.25)
    assert float(loss) == pytest.approx(float(clean), rel=1e-6)
    assert np.abs(np.asarray(aux["x_adv"]) - x).max() > 0  # the adversary still ran
    t6 = AdversarialTraining(attack=_pgd(), objective="trades", beta=6.0)
    assert float(batch_loss(net, x, y, key=0, adversarial=t6, mean=0.5, std=0.25)[0]) > float(clean)
    # MART is crafted by the attack itself: same x_adv as PGD-AT with the same key
    mart = AdversarialTraining(attack=_pgd(), objective="mart", beta=6.0)
    madry = AdversarialTraining(attack=_pgd())
    _, a = batch_loss(net, x, y, key=3, adversarial=mart)
    _, b = batch_loss(net, x, y, key=3, adversarial=madry)
    np.testing.assert_array_equal(np.asarray(a["x_adv"]), np.asarray(b["x_adv"]))


@pytest.mark.slow
def test_trades_adversary_raises_the_kl_inside_the_ball():
    model = linear_model(shape=(4, 4, 1))
    x = jnp.asarray(np.random.default_rng(0).random((6, 4, 4, 1)), jnp.float32)
    eps = 0.05
    pgd = jaxadv.PGD(threat=jaxadv.LinfBall(eps=eps), num_steps=5)
    x_adv = trades_adversary(pgd, jax.random.key(0), model, x)
    assert float(jnp.max(jnp.abs(x_adv - x))) <= eps + 1e-6
    assert float(jnp.min(x_adv)) >= 0 and float(jnp.max(x_adv)) <= 1
    kl = pairwise_distance("kl", model(x), model(x_adv))
    assert bool(jnp.all(kl > 1e-4))
    # one step from the start reaches less than five
    one = trades_adversary(
        jaxadv.PGD(threat=pgd.threat, num_steps=1, step_size=pgd.step_length(jnp.float32)),
        jax.random.key(0),
        model,
        x,
    )
    assert float(jnp.sum(pairwise_distance("kl", model(x), model(one)))) < float(jnp.sum(kl))
    # per-example keys: the first rows do not depend on the batch size
    part = trades_adversary(pgd, jax.random.key(0), model, x[:2])
    np.testing.assert_allclose(np.asarray(part), np.asarray(x_adv[:2]), rtol=1e-6)


def _params(net):
    return [np.asarray(a) for a in jax.tree.leaves(nnx.state(net, nnx.Not(nnx.RngState)))]


def _run(kind: str, seed: int):
    x, y = _synthetic(16)
    kw = {}
    if kind in ("trades", "mart"):
        kw["adversarial"] = AdversarialTraining(attack=_pgd(), objective=kind, beta=3.0)
    elif kind == "distill":
        teacher = _tiny(seed=5)
        train(teacher, x, y, epochs=1, batch_size=8, key=9, temperature=10.0)
        kw["distill"] = Distillation(teacher=teacher, temperature=10.0)
    net = _tiny()
    hist = train(net, x, y, epochs=1, batch_size=8, key=seed, mean=0.5, std=0.25, **kw)
    assert np.isfinite(hist[0]["loss"])
    return _params(net)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["trades", "mart", "distill"])
def test_short_training_run_is_deterministic_by_seed(kind):
    a, b, c = _run(kind, 1), _run(kind, 1), _run(kind, 2)
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))
    assert not all(np.array_equal(u, v) for u, v in zip(a, c, strict=True))
    assert not all(np.array_equal(u, v) for u, v in zip(a, _params(_tiny()), strict=True))


def test_weights_are_float32_leaves_so_a_new_beta_never_retraces():
    traces = []

    @jax.jit
    def weighted(at):
        traces.append(1)
        return at.alpha + at.lam + at.beta

    for beta in (6.0, jnp.asarray(3.0, jnp.float32), 2, np.float32(1.5)):
        at = AdversarialTraining(attack=_pgd(), objective="trades", beta=beta, alpha=1, lam=0.5)
        assert float(weighted(at)) == pytest.approx(1.5 + float(beta))
    assert len(traces) == 1


def test_teacher_temperature_divides_the_clean_logits():
    x, y = _synthetic(8)
    net = _tiny(dropout=0.0)
    _, aux = batch_loss(net, x, y)
    hot, _ = batch_loss(net, x, y, temperature=4.0)
    want = -jnp.mean(jax.nn.log_softmax(aux["logits"] / 4.0)[jnp.arange(8), y])
    assert float(hot) == pytest.approx(float(want), rel=1e-5)


def test_clear_errors():
    x, y = _synthetic(8)
    with pytest.raises(ValueError, match="beta must be >= 0"):
        AdversarialTraining(attack=_pgd(), objective="trades", beta=-1.0)
    with pytest.raises(ValueError, match="beta must be >= 0"):
        AdversarialTraining(attack=_pgd(), objective="mart", beta=-0.5)
    for bad in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="beta must be >= 0 and finite"):
            AdversarialTraining(attack=_pgd(), objective="trades", beta=bad)
    with pytest.raises(TypeError, match="jaxadv.PGD"):
        AdversarialTraining(attack=jaxadv.FGSM(threat=jaxadv.LinfBall(eps=0.1)), objective="trades")
    with pytest.raises(ValueError, match="needs a teacher"):
        Distillation(teacher=None, temperature=10.0)
    for bad in (0.0, -2.0, float("nan")):
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            Distillation(teacher=_tiny(), temperature=bad)
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            train(_tiny(), x, y, epochs=1, temperature=bad)
    with pytest.raises(ValueError, match="separate objectives"):
        train(
            _tiny(),
            x,
            y,
            epochs=1,
            adversarial=AdversarialTraining(attack=_pgd()),
            distill=Distillation(teacher=_tiny(), temperature=5.0),
        )
    with pytest.raises(ValueError, match="distillation teacher"):
        train(
            _tiny(), x, y, epochs=1, temperature=5.0, adversarial=AdversarialTraining(attack=_pgd())
        )
    with pytest.raises(TypeError, match="Distillation"):
        train(_tiny(), x, y, epochs=1, distill=_tiny())
