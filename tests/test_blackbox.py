"""Black-box attacks (NES, Square, ZOO, HopSkipJump): no gradients, exact per-example query
counts, frozen finished examples, determinism, success on an easy model, label-only behaviour of
HopSkipJump, and Square's p-schedule."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import _linear_apply, linear_model

import jaxadv
from jaxadv.attacks.nes import nes_gradient
from jaxadv.attacks.square import p_schedule
from jaxadv.attacks.zoo import zoo_coordinate_grad

SHAPE = (4, 4, 1)


def _batch(n=6, seed=1, lo=0.3, hi=0.7):
    return jax.random.uniform(jax.random.key(seed), (n, *SHAPE), jnp.float32, lo, hi)


# ----------------------------------------------------------- a model with no usable gradient
@jax.custom_vjp
def _linear_no_grad(x, p):
    return _linear_apply(p, x)


def _fwd(x, p):
    return _linear_apply(p, x), None


def _bwd(_, g):
    raise RuntimeError("a black-box attack asked for the model's gradient")


_linear_no_grad.defvjp(_fwd, _bwd)

_ROWS: list[int] = []


def _counting_apply(p, x):
    """Linear logits whose gradient raises; every executed call records how many images it saw."""
    jax.debug.callback(lambda n: _ROWS.append(int(n)), jnp.asarray(x.shape[0], jnp.int32))
    return _linear_no_grad(x, p)


def _counting_model(seed=0):
    return jaxadv.from_apply(_counting_apply, linear_model(2, SHAPE, seed=seed).params)


def test_counting_model_gradient_raises():
    """The control: a gradient attack on this model fails, so the tests below can fail too."""
    model = _counting_model()
    x = _batch(2)
    with pytest.raises(RuntimeError, match="gradient"):
        jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.1), num_steps=2)(
            jax.random.key(0), model, x, jnp.zeros((2,), jnp.int32)
        )


HSJ = dict(num_iterations=4, init_num_evals=6, max_num_evals=10, early_stop=False)
BLACK_BOX = {
    "NES": lambda t: jaxadv.NES(threat=t, num_queries=150, population_size=10),
    "NES-partial": lambda t: jaxadv.NES(
        threat=t, num_queries=150, population_size=6, mode="partial_info", init_tries=20
    ),
    "NES-label": lambda t: jaxadv.NES(
        threat=t,
        num_queries=150,
        population_size=4,
        mode="label_only",
        label_only_samples=5,
        init_tries=20,
    ),
    "Square": lambda t: jaxadv.Square(threat=t, num_queries=40),
    "ZOO": lambda t: jaxadv.ZOO(threat=t, num_steps=6, num_coords=3, patience=0),
    "HopSkipJump": lambda t: jaxadv.HopSkipJump(threat=t, **HSJ),
}


def _hsj_padding(n_rounds: int) -> int:
    """Gradient samples HopSkipJump computes but does not charge (chunks of init_num_evals)."""
    atk = jaxadv.HopSkipJump(threat=jaxadv.L2Ball(eps=1.0), **HSJ)
    c = atk.init_num_evals
    return sum(
        math.ceil(atk.num_evals(t) / c) * c - atk.num_evals(t) for t in range(1, n_rounds + 1)
    )


@pytest.mark.parametrize("name", sorted(BLACK_BOX))
def test_no_gradient_exact_queries_frozen(name):
    """Runs on a model whose gradient raises; a lone example is charged exactly the images the
    model saw; in a batch it is charged the same (per-example keys), and an example that is
    misclassified from the start is charged only the clean check and the final re-evaluation."""
    model = _counting_model()
    threat = jaxadv.LinfBall(eps=0.05) if name != "ZOO" else jaxadv.L2Ball(eps=0.3)
    atk = BLACK_BOX[name](threat)
    x = _batch(3)
    pred = jnp.argmax(model(x), axis=1).astype(jnp.int32)
    y = pred.at[0].set(1 - pred[0])  # example 0 is a clean error: nothing to attack
    key = jax.random.key(4)

    singles = []
    for i in (1, 2):
        _ROWS.clear()
        r = atk(key, model, x[i : i + 1], y[i : i + 1], index_offset=i, validate=False)
        jax.block_until_ready(r)
        seen = sum(_ROWS)
        if name == "HopSkipJump":
            seen -= _hsj_padding(HSJ["num_iterations"])
        assert int(r.queries[0]) == seen, (name, i, int(r.queries[0]), seen)
        singles.append(r)

    res = atk(key, model, x, y, validate=False)
    res2 = atk(key, model, x, y, validate=False)
    for a, b in zip(jax.tree.leaves(res), jax.tree.leaves(res2), strict=True):
        np.testing.assert_array_equal(a, b)  # same key => same result
    assert int(res.queries[0]) == 2 and bool(res.success[0])
    np.testing.assert_array_equal(res.adv[0], x[0])
    for i, r in zip((1, 2), singles, strict=True):
        assert int(res.queries[i]) == int(r.queries[0])
        np.testing.assert_allclose(res.adv[i], r.adv[0], atol=1e-6)
    assert bool(jnp.all(threat.contains(x, res.adv)))


def test_square_failing_example_spends_exactly_the_budget():
    """An example Square cannot break (eps far too small) spends the whole budget, plus the
    library's final re-evaluation."""
    model = linear_model(2, SHAPE)
    x = _batch(4)
    y = jnp.argmax(model(x), axis=1).astype(jnp.int32)
    res = jaxadv.Square(threat=jaxadv.LinfBall(eps=1e-4), num_queries=37)(
        jax.random.key(0), model, x, y
    )
    assert not bool(jnp.any(res.success))
    np.testing.assert_array_equal(res.queries, 38)


def test_nes_failing_example_spends_whole_iterations():
    """Query-limited NES: 1 clean check, then ``population_size + 1`` per iteration while the next
    iteration fits the budget, then the final re-evaluation."""
    model = linear_model(2, SHAPE)
    x = _batch(3)
    y = jnp.argmax(model(x), axis=1).astype(jnp.int32)
    nes = jaxadv.NES(threat=jaxadv.LinfBall(eps=1e-4), num_queries=100, population_size=10)
    res = nes(jax.random.key(0), model, x, y)
    iters = (100 - 1) // 11
    np.testing.assert_array_equal(res.queries, 1 + 11 * iters + 1)


# --------------------------------------------------------------------- success on easy models
EASY = [
    ("NES", jaxadv.LinfBall(eps=0.3)),
    ("NES", jaxadv.L2Ball(eps=1.5)),
    ("Square", jaxadv.LinfBall(eps=0.3)),
    ("Square", jaxadv.L2Ball(eps=1.5)),
    ("ZOO", jaxadv.L2Ball(eps=1.5)),
    ("HopSkipJump", jaxadv.L2Ball(eps=1.5)),
    ("HopSkipJump", jaxadv.LinfBall(eps=0.3)),
]


@pytest.mark.parametrize("name,threat", EASY, ids=lambda v: getattr(v, "__name__", None))
def test_succeeds_on_easy_linear_model(name, threat):
    """Linear 2-class model, budgets well above the minimal adversarial distance: every example
    breaks and the result stays in the ball and the box."""
    model = linear_model(2, SHAPE)
    x = _batch(6)
    y = jnp.argmax(model(x), axis=1).astype(jnp.int32)
    atk = {
        "NES": jaxadv.NES(threat=threat, num_queries=1500, population_size=20),
        "Square": jaxadv.Square(threat=threat, num_queries=300),
        "ZOO": jaxadv.ZOO(threat=threat, num_steps=300, num_coords=8),
        "HopSkipJump": jaxadv.HopSkipJump(threat=threat, num_iterations=10, init_num_evals=20),
    }[name]
    res = atk(jax.random.key(0), model, x, y)
    assert bool(jnp.all(res.success)), res.success
    assert bool(jnp.all(threat.contains(x, res.adv)))
    np.testing.assert_array_equal(res.success, jnp.argmax(model(res.adv), axis=1) != y)


def test_nes_targeted_succeeds():
    model = linear_model(4, SHAPE)
    x = _batch(4, lo=0.0, hi=1.0)
    y = jnp.argmax(model(x), axis=1).astype(jnp.int32)
    target = (y + 1) % 4
    nes = jaxadv.NES(threat=jaxadv.LinfBall(eps=1.0), num_queries=2000, population_size=20)
    res = nes(jax.random.key(0), model, x, y, target=target)
    np.testing.assert_array_equal(res.success, jnp.argmax(model(res.adv), axis=1) == target)
    assert bool(jnp.all(res.success))


def test_nes_label_only_reads_only_labels_and_succeeds():
    """Label-only NES sees the top label alone: a strictly increasing transform of the logits
    (same top labels, other probabilities) gives the identical attack; and with a large
    budget it breaks every example of a linear model, inside the ball, charging what it used."""
    lin = linear_model(2, SHAPE)

    def apply(p, x):  # a z + c z^3 + d: strictly increasing in z, so every top label is kept
        z = _linear_apply(p["lin"], x)
        return p["a"] * z + p["c"] * z * z * z + p["d"]

    warped = jaxadv.from_apply(
        apply,
        {"lin": lin.params, "a": jnp.float32(0.3), "c": jnp.float32(2.0), "d": jnp.float32(5.0)},
    )
    x = _batch(4, lo=0.2, hi=0.8)
    y = jnp.argmax(lin(x), axis=1).astype(jnp.int32)
    threat = jaxadv.LinfBall(eps=0.45)  # PGD breaks all 4 from 0.3
    nes = jaxadv.NES(
        threat=threat,
        num_queries=6000,
        population_size=10,
        mode="label_only",
        label_only_samples=10,
        init_tries=100,
    )
    a = nes(jax.random.key(5), lin, x, y)
    b = nes(jax.random.key(5), warped, x, y)
    for f in ("adv", "success", "norm", "queries"):  # res.loss is the library's logit margin
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert bool(jnp.all(a.success)), a.success
    assert bool(jnp.all(threat.contains(x, a.adv)))
    np.testing.assert_array_equal(a.success, jnp.argmax(lin(a.adv), axis=1) != y)
    assert bool(jnp.all((a.queries > 1) & (a.queries <= 6001)))


# ------------------------------------------------------------------------------ HopSkipJump
def test_hopskipjump_reads_only_labels_and_shrinks_the_distance():
    """A strictly increasing per-row transform of the logits keeps every top label, so a
    label-only attack returns the identical result; and the boundary point walks toward the
    minimal L2 distance ``|margin| / ||w_1 - w_0||`` of the linear model."""
    lin = linear_model(2, SHAPE)

    def apply(p, x):  # a z + c z^3 + d: strictly increasing in z for a, c >= 0, a + c > 0
        z = _linear_apply(p["lin"], x)
        return p["a"] * z + p["c"] * z * z * z + p["d"]

    one, zero = jnp.float32(1.0), jnp.float32(0.0)
    base = jaxadv.from_apply(apply, {"lin": lin.params, "a": one, "c": zero, "d": zero})
    warped = base.with_params(
        {"lin": lin.params, "a": jnp.float32(0.2), "c": jnp.float32(3.0), "d": jnp.float32(11.0)}
    )
    x = _batch(5)
    y = jnp.argmax(base(x), axis=1).astype(jnp.int32)
    hsj = jaxadv.HopSkipJump(
        threat=jaxadv.L2Ball(eps=jnp.inf), num_iterations=12, init_num_evals=20, early_stop=False
    )
    a = hsj(jax.random.key(0), base, x, y)
    b = hsj(jax.random.key(0), warped, x, y)
    np.testing.assert_array_equal(a.adv, b.adv)
    np.testing.assert_array_equal(a.queries, b.queries)
    np.testing.assert_array_equal(a.info["norm_history"], b.info["norm_history"])

    w = lin.params["w"][:, 1] - lin.params["w"][:, 0]
    opt = np.asarray(jnp.abs(jaxadv.losses.margin(base(x), y)) / jnp.linalg.norm(w))
    hist = np.asarray(a.info["norm_history"])
    # the gap to the optimum at least halves between the first and the last round
    assert np.all(hist[:, -1] - opt < 0.5 * (hist[:, 0] - opt)), (hist, opt)
    # near the optimum the estimate is noisy: a round may go up, but only a little
    assert np.all(np.diff(hist, axis=1) <= 0.05 * hist[:, :-1]), hist
    assert np.all(np.asarray(a.norm) >= opt * (1 - 1e-3))
    assert np.all(np.asarray(a.norm) <= opt * 1.15), (a.norm, opt)
    assert bool(jnp.all(a.success))


# ------------------------------------------------------------------------- Square p-schedule
@pytest.mark.parametrize("budget", [10000, 1000, 137])
def test_square_p_schedule_matches_the_paper(budget):
    """p starts at p_init and halves after 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000
    ten-thousandths of the budget (the paper's schedule, with the 500 of its code)."""
    table = [(10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64)]
    table += [(6000, 128), (8000, 256), (10**9, 512)]

    def expected(i):
        r = int(i / budget * 10000)
        for upper, div in table:
            if r <= upper:
                return 0.8 / div
        raise AssertionError

    its = np.arange(budget)
    got = np.asarray(jax.vmap(lambda i: p_schedule(i, budget, jnp.float32(0.8)))(jnp.asarray(its)))
    np.testing.assert_allclose(got, [expected(i) for i in its], rtol=1e-6)
    if budget == 10000:
        assert got[10] == pytest.approx(0.8) and got[11] == pytest.approx(0.4)
        assert got[8001] == pytest.approx(0.8 / 512)


# -------------------------------------------------------------------------- the estimators
def test_nes_gradient_estimates_a_linear_gradient():
    w = jax.random.normal(jax.random.key(0), (2, 16))
    x = jnp.full((2, 16), 0.5)
    keys = jax.random.split(jax.random.key(1), 2)
    f = lambda c: jnp.sum(c * w[:, None, :], axis=-1)  # noqa: E731
    g, mean = nes_gradient(keys, f, x, population_size=2000, sigma=1e-2)
    cos = jnp.sum(g * w, axis=1) / (jnp.linalg.norm(g, axis=1) * jnp.linalg.norm(w, axis=1))
    assert bool(jnp.all(cos > 0.95)), cos
    np.testing.assert_allclose(mean, jnp.sum(x * w, axis=1), rtol=1e-4)


def test_zoo_symmetric_difference_is_exact_on_a_quadratic():
    c = jnp.arange(1.0, 17.0).reshape(1, 16)
    x = jnp.linspace(0.1, 0.9, 16).reshape(1, 4, 4, 1)
    f = lambda z: jnp.sum(c[:, None, :] * jnp.square(z.reshape(1, z.shape[1], -1)), axis=-1)  # noqa: E731
    idx = jnp.asarray([[0, 5, 15]], jnp.int32)
    g, f0 = zoo_coordinate_grad(f, x, idx, 1e-2)
    xf = x.reshape(1, -1)
    np.testing.assert_allclose(g, 2 * c[:, idx[0]] * xf[:, idx[0]], rtol=2e-3)
    np.testing.assert_allclose(f0, jnp.sum(c * xf * xf, axis=1), rtol=1e-6)


@pytest.mark.parametrize("name", sorted(BLACK_BOX))
def test_sharded_equals_unsharded(name):
    """5 examples padded to 8 over 8 fake devices: per-example keys make every result independent
    of its slot and of the other examples, queries included."""
    from jaxadv.sharding import attack_sharded

    assert jax.device_count() == 8
    model = linear_model(3, SHAPE, seed=2)
    x = _batch(5, seed=3, lo=0.0, hi=1.0)
    y = jnp.argmax(model(x), axis=1).astype(jnp.int32)
    atk = BLACK_BOX[name](jaxadv.LinfBall(eps=0.2))
    a = atk(jax.random.key(11), model, x, y)
    sh = attack_sharded(atk, jax.random.key(11), model, x, y)
    np.testing.assert_array_equal(sh.success, a.success)
    np.testing.assert_array_equal(sh.queries, a.queries)
    # HopSkipJump's geometric steps compile differently for 1 vs 5 rows per device: the same
    # decisions, float32 rounding apart (seen: 3e-8); the score-based attacks are bit-identical
    tol = 1e-6 if name == "HopSkipJump" else 0.0
    np.testing.assert_allclose(sh.adv, a.adv, rtol=0, atol=tol)
    np.testing.assert_allclose(sh.norm, a.norm, rtol=0, atol=tol)
