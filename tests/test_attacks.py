"""Attack core: analytic oracles, invariants, the contract over the registry, determinism,
jit/eager equality, eps-vmap equality, trace counts and sharding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attack_configs import small
from conftest import linear_model
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxadv
from jaxadv.attacks import REGISTRY, example_keys
from jaxadv.sharding import attack_sharded

SHAPE = (4, 4, 1)


def _batch(n=8, seed=1, lo=0.3, hi=0.7, shape=SHAPE):
    return jax.random.uniform(jax.random.key(seed), (n, *shape), jnp.float32, lo, hi)


def _labels(model, x):
    return jnp.argmax(model(x), axis=1).astype(jnp.int32)


# ---------------------------------------------------------------- analytic optimum (linear model)
@pytest.mark.parametrize("threat_cls", [jaxadv.LinfBall, jaxadv.L2Ball])
@pytest.mark.parametrize("attack", ["FGSM", "PGD", "PGD-restart", "APGD"])
def test_linear_two_class_optimum(threat_cls, attack):
    """For logits [0, w·x + b] the margin-maximising perturbation is eps·sign(±w) (L∞) or
    eps·(±w)/||w|| (L2) while the box is not active; every first-order attack must reach it."""
    model = linear_model(2, SHAPE)
    w = model.params["w"][:, 1] - model.params["w"][:, 0]
    x = _batch()
    y = _labels(model, x)
    eps = 0.05
    threat = threat_cls(eps=eps)
    direction = jnp.where(y[:, None] == 0, 1.0, -1.0) * w[None, :]
    if threat_cls is jaxadv.LinfBall:
        opt = eps * jnp.sign(direction)
        gain = eps * jnp.sum(jnp.abs(w))
    else:
        opt = eps * direction / jnp.linalg.norm(w)
        gain = eps * jnp.linalg.norm(w)
    atk = {
        "FGSM": jaxadv.FGSM(threat=threat),
        "PGD": jaxadv.PGD(threat=threat, num_steps=20, random_start=False),
        "PGD-restart": jaxadv.PGD(threat=threat, num_steps=40, num_restarts=2, loss="margin"),
        "APGD": jaxadv.APGD(threat=threat, num_steps=40),
    }[attack]
    res = atk(jax.random.key(0), model, x, y)
    delta = (res.adv - x).reshape(x.shape[0], -1)
    margin0 = jaxadv.losses.margin(model(x), y)
    margin = jaxadv.losses.margin(model(res.adv), y)
    # never above the optimum (it is the optimum), and at it
    assert np.all(np.asarray(margin - margin0) <= np.asarray(gain) * (1 + 1e-4) + 1e-5)
    if attack == "PGD-restart":
        # from a random start in L2 the component orthogonal to w decays only through the
        # projection; 40 steps get within 3% of the optimal gain
        assert np.all(np.asarray(margin - margin0) >= 0.97 * np.asarray(gain))
    else:
        np.testing.assert_allclose(margin, margin0 + gain, rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(delta, opt, atol=2e-4)


# ------------------------------------------------------------------- threat-model invariants
THREATS = [jaxadv.LinfBall, jaxadv.L2Ball, jaxadv.L1Ball]


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    eps=st.floats(0.0, 3.0),
    scale=st.floats(0.01, 5.0),
    which=st.integers(0, 2),
)
def test_projection_invariants(seed, eps, scale, which):
    threat = THREATS[which](eps=eps)
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.uniform(0, 1, (3, 5, 5, 2)), jnp.float32)
    z = x + jnp.asarray(rng.normal(0, scale, x.shape), jnp.float32)
    p = threat.project(x, z)
    assert bool(jnp.all(threat.contains(x, p, tol=1e-5)))
    assert np.all(np.asarray(threat.norm(p - x)) <= eps * (1 + 1e-5) + 1e-5)
    assert float(p.min()) >= 0.0 and float(p.max()) <= 1.0
    np.testing.assert_allclose(threat.project(x, p), p, atol=1e-5)  # idempotent
    if eps == 0.0:
        np.testing.assert_array_equal(p, x)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), eps=st.floats(0.0, 0.3), which=st.integers(0, 2))
def test_attack_invariants(seed, eps, which):
    """adv in the set and the box, eps=0 leaves x, success ⇔ misclassified on adv."""
    model = linear_model(3, SHAPE, seed=seed % 5)
    x = _batch(6, seed=seed % 97, lo=0.0, hi=1.0)
    y = jnp.asarray(np.random.default_rng(seed).integers(0, 3, 6), jnp.int32)
    threat = THREATS[which](eps=eps * (1 if which == 0 else 4))
    res = jaxadv.PGD(threat=threat, num_steps=3)(jax.random.key(seed), model, x, y)
    assert bool(jnp.all(threat.contains(x, res.adv)))
    np.testing.assert_array_equal(res.success, jnp.argmax(model(res.adv), axis=1) != y)
    if eps == 0.0:
        np.testing.assert_array_equal(res.adv, x)


def test_l1_projection_matches_sort_free_reference():
    """Our sort-based L1 projection against bisection on the threshold."""
    rng = np.random.default_rng(0)
    v = rng.normal(size=(5, 50)).astype(np.float32)
    eps = 2.0
    p = np.asarray(jaxadv.L1Ball(eps=eps, lo=-10.0, hi=10.0).project_ball(jnp.asarray(v)))
    for row, prow in zip(v, p, strict=True):
        lo, hi = 0.0, np.abs(row).max()
        for _ in range(100):
            mid = (lo + hi) / 2
            if np.maximum(np.abs(row) - mid, 0).sum() > eps:
                lo = mid
            else:
                hi = mid
        ref = np.sign(row) * np.maximum(np.abs(row) - hi, 0)
        np.testing.assert_allclose(prow, ref, atol=1e-4)


# ------------------------------------------------------------------------------ contract
def _small_attack(name, threat=None):
    atk = small(name)
    return atk if threat is None else atk.with_eps(threat.eps)


WHITE_BOX = ["FGSM", "PGD", "APGD", "APGDT", "FMN", "AutoAttack"]


def test_registry_covers_white_box_suite():
    assert set(WHITE_BOX) <= set(REGISTRY)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_attack_contract(name):
    """Every registered attack: result shapes/dtypes, adv in the threat set, success recomputed,
    same key ⇒ identical result, and new eps / weights / key reuse the compiled program."""
    model = linear_model(4, SHAPE)
    x = _batch(5, lo=0.0, hi=1.0)
    y = _labels(model, x)
    atk = _small_attack(name)
    threat = atk.threat
    res = atk(jax.random.key(3), model, x, y)
    b = x.shape[0]
    assert res.adv.shape == x.shape and res.adv.dtype == x.dtype
    assert res.success.shape == (b,) and res.success.dtype == jnp.bool_
    assert res.loss.shape == (b,) and res.norm.shape == (b,) and res.queries.shape == (b,)
    assert res.queries.dtype == jnp.int32 and bool(jnp.all(res.queries >= 1))
    assert bool(jnp.all(threat.contains(x, res.adv)))
    np.testing.assert_array_equal(res.success, jnp.argmax(model(res.adv), axis=1) != y)
    np.testing.assert_allclose(res.norm, threat.norm(res.adv - x), rtol=1e-6)
    res2 = atk(jax.random.key(3), model, x, y)
    for a, b_ in zip(jax.tree.leaves(res), jax.tree.leaves(res2), strict=True):
        np.testing.assert_array_equal(a, b_)


@pytest.mark.parametrize("name", ["FGSM", "PGD", "APGD", "APGDT", "FMN", "AutoAttack"])
def test_jit_equals_eager(name):
    threat = jaxadv.LinfBall(eps=0.1)
    model = linear_model(4, SHAPE)
    x = _batch(3, lo=0.0, hi=1.0)
    y = _labels(model, x)
    atk = _small_attack(name, threat)
    keys = example_keys(jax.random.key(0), 3)
    jitted = jax.jit(lambda k: atk.run(k, model, x, y))(keys)
    with jax.disable_jit():
        eager = atk.run(keys, model, x, y)
    np.testing.assert_allclose(jitted.adv, eager.adv, atol=1e-5)
    np.testing.assert_array_equal(jitted.success, eager.success)


def test_autoattack_compacted_equals_masked():
    """The host path (later stages only on robust points, APGD stages compacted at their first
    success) gives the pure masked path's verdicts; only a broken example's point (its first
    successful one) and the evaluations charged (those spent) may differ."""
    model = linear_model(5, SHAPE)
    x = _batch(16, lo=0.0, hi=1.0)
    y = _labels(model, x)
    aa = jaxadv.AutoAttack.standard(jaxadv.LinfBall(eps=0.03), num_steps=5)
    a = aa(jax.random.key(1), model, x, y)
    b = jax.jit(lambda k: aa.run(k, model, x, y))(example_keys(jax.random.key(1), 16))
    np.testing.assert_array_equal(a.success, b.success)
    np.testing.assert_array_equal(a.info["stage_success"], b.info["stage_success"])
    ok = np.asarray(a.success)
    assert 0 < ok.sum() < ok.size  # both kinds of example are exercised
    # robust examples ran every step of every stage on both paths
    np.testing.assert_allclose(np.asarray(a.adv)[~ok], np.asarray(b.adv)[~ok], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(a.queries)[~ok], np.asarray(b.queries)[~ok])
    assert np.all(np.asarray(a.queries) <= np.asarray(b.queries))
    # a broken example's returned point is adversarial and inside the ball
    adv_ok = np.asarray(a.adv)[ok]
    assert np.all(np.asarray(_labels(model, jnp.asarray(adv_ok))) != np.asarray(y)[ok])
    assert np.abs(adv_ok - np.asarray(x)[ok]).max() <= 0.03 + 1e-6
    # stages only ever add successes (worst case over the ensemble)
    ss = np.asarray(a.info["stage_success"])
    assert np.all(ss[:, 1:] >= ss[:, :-1])
    np.testing.assert_array_equal(ss[:, -1], a.success)


# ------------------------------------------------------------------------- eps sweep
def test_sweep_eps_equals_loop():
    model = linear_model(3, SHAPE)
    x = _batch(6, lo=0.0, hi=1.0)
    y = _labels(model, x)
    eps = [0.0, 0.02, 0.05, 0.1]
    pgd = jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.0), num_steps=5)
    curve = jaxadv.sweep_eps(pgd, eps, key=jax.random.key(0), model=model, x=x, y=y)
    assert curve.result.adv.shape == (4, *x.shape)
    for i, e in enumerate(eps):
        r = pgd.with_eps(e)(jax.random.key(0), model, x, y)
        np.testing.assert_allclose(curve.result.adv[i], r.adv, atol=1e-6)
        np.testing.assert_array_equal(curve.result.success[i], r.success)
        assert float(curve.robust_accuracy[i]) == pytest.approx(float(jnp.mean(~r.success)))
    np.testing.assert_array_equal(curve.result.adv[0], x)
    ra = np.asarray(curve.robust_accuracy)
    assert np.all(np.diff(ra) <= 1e-6), ra


def test_sweep_eps_cascade_is_the_cumulative_worst_case():
    """cascade=True attacks only survivors of the smaller budgets: per example its success is
    the OR of the independent runs' successes over all budgets up to that one, adversarials of
    carried rows come from a smaller budget (so lie in the larger ball), and the grid may come
    in any order."""
    model = linear_model(3, SHAPE)
    x = _batch(12, lo=0.0, hi=1.0)
    y = _labels(model, x)
    y = y.at[0].set((y[0] + 1) % 3)  # one clean error: carried from the start with adv = x
    eps = [0.1, 0.0, 0.02, 0.05]
    pgd = jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.0), num_steps=5)
    ind = jaxadv.sweep_eps(pgd, eps, key=jax.random.key(0), model=model, x=x, y=y)
    cas = jaxadv.sweep_eps(pgd, eps, key=jax.random.key(0), model=model, x=x, y=y, cascade=True)
    order = np.argsort(eps)
    s_ind = np.asarray(ind.result.success)[order]
    s_cas = np.asarray(cas.result.success)[order]
    np.testing.assert_array_equal(s_cas, np.logical_or.accumulate(s_ind, axis=0))
    assert 0 < s_cas[-1].sum() < len(y) and s_cas[0].sum() == 1  # the grid is not trivial
    np.testing.assert_allclose(cas.robust_accuracy, np.mean(~np.asarray(cas.result.success), 1))
    np.testing.assert_array_equal(cas.result.adv[1][0], x[0])  # the clean error at eps 0
    before = np.vstack([np.zeros((1, len(y)), bool), s_cas[:-1]])  # broken at a smaller budget
    for j, k in enumerate(order):
        adv, e = np.asarray(cas.result.adv[k]), eps[k]
        assert np.all(np.abs(adv - np.asarray(x)).reshape(len(y), -1).max(1) <= e + 1e-6)
        fresh = s_ind[j] & ~before[j]  # first broken here: exactly the independent run's rows
        np.testing.assert_allclose(adv[fresh], np.asarray(ind.result.adv[k])[fresh], atol=1e-6)
        np.testing.assert_array_equal(
            adv[before[j]], np.asarray(cas.result.adv[order[j - 1]])[before[j]]
        )
    # an attack with info fields keeps their layout
    aa = jaxadv.AutoAttack.standard(jaxadv.LinfBall(eps=0.0), num_steps=3)
    c = jaxadv.sweep_eps(aa, [0.0, 0.1], key=jax.random.key(0), model=model, x=x, y=y, cascade=True)
    assert c.result.info["stage_success"].shape == (2, len(y), len(aa.attacks))


def test_sweep_eps_autoattack():
    model = linear_model(4, SHAPE)
    x = _batch(4, lo=0.0, hi=1.0)
    y = _labels(model, x)
    aa = jaxadv.AutoAttack.standard(jaxadv.LinfBall(eps=0.0), num_steps=3)
    curve = jaxadv.sweep_eps(aa, [0.0, 0.1], key=jax.random.key(0), model=model, x=x, y=y)
    assert curve.result.info["stage_success"].shape == (2, 4, len(aa.attacks))
    assert float(curve.robust_accuracy[0]) == 1.0


# ------------------------------------------------------------------------- trace counts
def test_no_retrace_on_new_eps_weights_or_key():
    traces = []

    def apply(p, x):
        traces.append(1)
        return x.reshape(x.shape[0], -1) @ p

    w = jax.random.normal(jax.random.key(0), (16, 3))
    x = _batch(4, lo=0.0, hi=1.0)
    y = jnp.zeros((4,), jnp.int32)
    model = jaxadv.from_apply(apply, w)
    pgd = jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.1), num_steps=2)
    pgd(jax.random.key(0), model, x, y)
    n0 = len(traces)
    pgd.with_eps(0.2)(jax.random.key(0), model, x, y)
    pgd.with_eps(0)(jax.random.key(1), model, x, y)
    pgd(jax.random.key(2), model.with_params(w * 2), x, y)
    # each call also runs one eval_shape trace for validation; the compiled attack is not retraced
    assert len(traces) == n0 + 3, (n0, len(traces))
    fixed = jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.3), num_steps=2, step_size=0.01)
    fixed(jax.random.key(2), model, x, y)
    n1 = len(traces)
    jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.2), num_steps=2, step_size=0.02)(
        jax.random.key(2), model, x, y
    )
    assert len(traces) == n1 + 1
    before = len(traces)
    pgd(jax.random.key(0), model, x, y, validate=False)
    assert len(traces) == before


# ------------------------------------------------------------------------------ sharding
@pytest.mark.parametrize("batch", [16, 13])
@pytest.mark.parametrize("name", ["PGD", "APGD"])
def test_sharded_equals_unsharded(batch, name):
    assert jax.device_count() == 8
    model = linear_model(3, SHAPE)
    x = _batch(batch, lo=0.0, hi=1.0)
    y = _labels(model, x)
    atk = _small_attack(name, jaxadv.LinfBall(eps=0.05))
    ref = atk(jax.random.key(0), model, x, y)
    sh = attack_sharded(atk, jax.random.key(0), model, x, y)
    np.testing.assert_allclose(sh.adv, ref.adv, atol=1e-6)
    np.testing.assert_array_equal(sh.success, ref.success)
    np.testing.assert_array_equal(sh.queries, ref.queries)


def test_results_do_not_depend_on_batch_composition():
    """Per-example keys: an example's random start is the same alone or in a batch."""
    model = linear_model(3, SHAPE)
    x = _batch(6, lo=0.0, hi=1.0)
    y = _labels(model, x)
    pgd = jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.05), num_steps=3)
    full = pgd.run(example_keys(jax.random.key(0), 6), model, x, y)
    keys = example_keys(jax.random.key(0), 6)[2:4]
    part = pgd.run(keys, model, x[2:4], y[2:4])
    np.testing.assert_allclose(part.adv, full.adv[2:4], atol=1e-6)


# ------------------------------------------------------------------------------ targeted
@pytest.mark.parametrize("name", ["PGD", "APGD", "FMN"])
def test_targeted(name):
    model = linear_model(4, SHAPE)
    x = _batch(8, lo=0.0, hi=1.0)
    y = _labels(model, x)
    target = (y + 1) % 4
    threat = jaxadv.LinfBall(eps=1.0)  # large budget: every target reachable
    kw = {"num_steps": 30}
    atk = REGISTRY[name](threat=threat, **kw)
    res = atk(jax.random.key(0), model, x, y, target=target)
    np.testing.assert_array_equal(res.success, jnp.argmax(model(res.adv), axis=1) == target)
    assert float(jnp.mean(res.success)) == 1.0


def test_early_stop_freezes_successful_examples():
    model = linear_model(2, SHAPE)
    x = _batch(8)
    y = _labels(model, x)
    threat = jaxadv.LinfBall(eps=0.3)
    es = jaxadv.PGD(threat=threat, num_steps=20, early_stop=True, random_start=False)(
        jax.random.key(0), model, x, y
    )
    full = jaxadv.PGD(threat=threat, num_steps=20, random_start=False)(
        jax.random.key(0), model, x, y
    )
    assert bool(jnp.all(es.success == full.success))
    assert bool(jnp.all(es.queries[es.success] < full.queries[es.success]))
    assert float(jnp.mean(es.norm[es.success])) < float(jnp.mean(full.norm[full.success]))


def test_early_stop_leaves_the_step_loop_once_the_batch_is_broken():
    """With early_stop the step loop ends when every example is frozen: the model is called for
    as many steps as the slowest example needs, not num_steps (a counting callback sees it)."""
    base = linear_model(2, SHAPE)
    calls = []

    def apply(p, x):
        jax.debug.callback(lambda: calls.append(1))
        return base.apply_fn(p, x)

    model = jaxadv.from_apply(apply, base.params)
    x = _batch(8)
    y = _labels(base, x)
    threat = jaxadv.LinfBall(eps=0.5)  # large enough to break every example in a step or two
    kw = dict(threat=threat, num_steps=50, random_start=False)
    calls.clear()
    es = jaxadv.PGD(**kw, early_stop=True)(jax.random.key(0), model, x, y, validate=False)
    n_es = len(calls)
    calls.clear()
    full = jaxadv.PGD(**kw)(jax.random.key(0), model, x, y, validate=False)
    n_full = len(calls)
    assert bool(jnp.all(es.success)) and bool(jnp.all(full.success))
    steps_needed = int(jnp.max(es.queries)) - 1  # queries = steps taken + the final evaluation
    assert steps_needed < 50
    # one model call per executed step, plus the last-iterate score and the final re-evaluation
    assert n_es == steps_needed + 2, (n_es, steps_needed)
    assert n_full == 50 + 2


def test_fmn_minimal_norm_on_linear_model():
    """On a binary linear model the minimal L2 adversarial norm is |margin| / ||w_1 - w_0||."""
    model = linear_model(2, SHAPE)
    x = _batch(8)
    y = _labels(model, x)
    w = model.params["w"][:, 1] - model.params["w"][:, 0]
    dist = jnp.abs(jaxadv.losses.margin(model(x), y)) / jnp.linalg.norm(w)
    res = jaxadv.FMN(threat=jaxadv.L2Ball(eps=jnp.inf), num_steps=100)(
        jax.random.key(0), model, x, y
    )
    assert bool(jnp.all(res.success))
    np.testing.assert_allclose(res.norm, dist, rtol=0.05)
