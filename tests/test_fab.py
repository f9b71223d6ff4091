"""FAB: the boundary projections against LP / bisection solvers, the analytic minimal distance on
linear models (L∞, L2, L1; untargeted, targeted, FAB-T), the reference implementation
(pyautoattack) step for step, and the eps / clean-error / argument rules."""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxadv
from jaxadv.attacks.fab import boundary_step

NORMS = [(jaxadv.LinfBall, 1.0), (jaxadv.L2Ball, 2.0), (jaxadv.L1Ball, np.inf)]  # threat, dual


def _linear(d=12, c=4, seed=0, dead=()):
    """A linear model whose clean margins are small (the box never binds), with classes ``dead``
    pushed far below (so a targeted attack only meets the target's hyperplane)."""
    rng = np.random.default_rng(seed)
    w = (5 * rng.normal(size=(d, c))).astype(np.float32)
    bias = -0.5 * w.sum(0)
    for k in dead:
        bias[k] -= 100.0
    model = jaxadv.from_apply(
        lambda p, x: x.reshape(x.shape[0], -1) @ p[0] + p[1][None],
        (jnp.asarray(w), jnp.asarray(bias.astype(np.float32))),
    )
    x = (0.5 + 0.02 * rng.normal(size=(5, 2, 2, 3))).astype(np.float32)
    z = np.asarray(model(jnp.asarray(x)))
    return model, (w, bias.astype(np.float32)), jnp.asarray(x), z, z.argmax(1)


def _pair_distance(wb, z, y, j, dual):
    w = wb[0]
    return (z[y] - z[j]) / np.linalg.norm(w[:, y] - w[:, j], ord=dual)


# ------------------------------------------------------------------------- projections
@pytest.mark.parametrize("p", [np.inf, 2.0, 1.0])
def test_boundary_step_is_the_minimal_box_constrained_projection(p):
    linprog = pytest.importorskip("scipy.optimize").linprog
    rng = np.random.default_rng(1)
    b, d = 8, 7
    t = rng.uniform(0, 1, (b, d)).astype(np.float32)
    w = rng.normal(size=(b, d)).astype(np.float32)
    w[0, :3] = 0.0  # coordinates the hyperplane ignores
    c = rng.normal(size=b).astype(np.float32)
    c[1] = 30.0  # out of the box's reach
    out = np.asarray(boundary_step(p, jnp.asarray(t), jnp.asarray(w), jnp.asarray(c), 0.0, 1.0))
    for i in range(b):
        ti, wi, ci, di = t[i], w[i], c[i], out[i]
        assert np.all(ti + di >= -1e-6) and np.all(ti + di <= 1 + 1e-6)
        s = np.sign(ci)
        reach = np.sum(np.where(s * wi > 0, s * wi * ti, -s * wi * (1 - ti)))
        if reach < abs(ci):  # unreachable: every useful coordinate at its bound
            corner = np.where(s * wi > 0, -ti, np.where(s * wi < 0, 1 - ti, 0.0))
            np.testing.assert_allclose(di, corner, atol=1e-6)
            continue
        np.testing.assert_allclose(wi @ di + ci, 0.0, atol=1e-5)
        box = [(-ti[j], 1 - ti[j]) for j in range(d)]
        if p == 2.0:
            # bisection on the multiplier of d = clip(-lam * s * w, box)
            lo, hi = 0.0, 1e6
            for _ in range(200):
                m = (lo + hi) / 2
                val = wi @ np.clip(-m * s * wi, -ti, 1 - ti) + ci
                lo, hi = (m, hi) if np.sign(val) == s else (lo, m)
            ref = np.linalg.norm(np.clip(-hi * s * wi, -ti, 1 - ti))
            np.testing.assert_allclose(np.linalg.norm(di), ref, rtol=1e-4)
            continue
        eye, zeros = np.eye(d), np.zeros(d)
        if p == np.inf:  # min r  s.t. |d_j| <= r
            a_ub = np.block([[eye, -np.ones((d, 1))], [-eye, -np.ones((d, 1))]])
            cost, a_eq, extra = np.r_[zeros, 1.0], np.r_[wi, 0.0][None], [(0, None)]
            mine = np.abs(di).max()
        else:  # min sum u  s.t. |d_j| <= u_j
            a_ub = np.block([[eye, -eye], [-eye, -eye]])
            cost, a_eq, extra = np.r_[zeros, np.ones(d)], np.r_[wi, zeros][None], [(0, None)] * d
            mine = np.abs(di).sum()
        lp = linprog(
            cost, A_ub=a_ub, b_ub=np.zeros(2 * d), A_eq=a_eq, b_eq=[-ci], bounds=box + extra
        )
        assert lp.success
        np.testing.assert_allclose(mine, lp.fun, rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------------- linear optimum
@pytest.mark.parametrize(("threat_cls", "dual"), NORMS)
def test_untargeted_reaches_the_analytic_minimal_distance(threat_cls, dual):
    model, w, x, z, y = _linear()
    # overshoot 0: the paper's rule, whose fixed point is the analytic distance (the default
    # 1e-3 logit headroom adds 1e-3 / ||w_j - w_y|| to these tiny distances)
    fab = jaxadv.FAB(threat=threat_cls(eps=jnp.inf), num_steps=30, overshoot=0.0)
    res = fab(jax.random.key(0), model, x, y)
    best = [
        min(_pair_distance(w, z[i], y[i], j, dual) for j in range(4) if j != y[i]) for i in range(5)
    ]
    assert bool(jnp.all(res.success))
    # FAB's fixed point overshoots the boundary by eta and steps back by beta: within 1 %.
    np.testing.assert_array_less(np.array(best) * (1 - 1e-5), res.norm)
    np.testing.assert_array_less(res.norm, np.array(best) * 1.01)
    np.testing.assert_allclose(res.info["min_norm"], res.norm, rtol=1e-5)


@pytest.mark.parametrize(("threat_cls", "dual"), NORMS)
def test_targeted_hits_the_target_at_the_analytic_distance(threat_cls, dual):
    model, w, x, z, y = _linear(c=3, dead=(2,))  # class 2 never competes
    target = 1 - jnp.asarray(y)
    res = jaxadv.FAB(threat=threat_cls(eps=jnp.inf), num_steps=30, overshoot=0.0)(
        jax.random.key(0), model, x, y, target=target
    )
    np.testing.assert_array_equal(jnp.argmax(model(res.adv), axis=1), target)
    assert bool(jnp.all(res.success))
    best = np.array([_pair_distance(w, z[i], y[i], 1 - y[i], dual) for i in range(5)])
    np.testing.assert_array_less(best * (1 - 1e-5), res.norm)
    np.testing.assert_array_less(res.norm, best * 1.01)


@pytest.mark.parametrize(("threat_cls", "dual"), NORMS)
def test_fab_t_finds_the_closest_of_its_targets(threat_cls, dual):
    """FAB-T with every wrong class as a target reaches the closest class's hyperplane."""
    model, w, x, z, y = _linear()
    fab_t = jaxadv.FAB(
        threat=threat_cls(eps=jnp.inf), num_steps=30, num_target_classes=3, overshoot=0.0
    )
    res = fab_t(jax.random.key(0), model, x, y)
    assert bool(jnp.all(res.success))
    # the first target (runner-up logit) already succeeds; its distance bounds the result
    runner = np.argsort(z, axis=1)[:, -2]
    first = np.array([_pair_distance(w, z[i], y[i], runner[i], dual) for i in range(5)])
    np.testing.assert_array_less(res.norm, first * 1.01)
    # done after the first target: clean logits, 30 steps of 2, the final check
    assert np.all(np.asarray(res.queries) == 1 + 2 * 30 + 1)


# ------------------------------------------------------------------------- reference
@pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or importlib.util.find_spec("pyautoattack") is None,
    reason="the reference comparison needs torch and pyautoattack (the official FAB code)",
)
@pytest.mark.parametrize(
    ("norm", "targeted"),
    [
        ("Linf", False),
        ("L1", True),
        pytest.param("L2", False, marks=pytest.mark.slow),
        pytest.param("Linf", True, marks=pytest.mark.slow),
        pytest.param("L2", True, marks=pytest.mark.slow),
        pytest.param("L1", False, marks=pytest.mark.slow),
    ],
)
def test_matches_the_reference_implementation(norm, targeted):
    """Run 0 has no randomness: our FAB and the official one (pyautoattack 0.2.0's FABAttack_PT)
    return the same points on the same linear model, untargeted and FAB-T."""
    import torch
    from pyautoattack.fab_pt import FABAttack_PT

    model, (w, bias), x, z, y = _linear()
    wt, bt = torch.from_numpy(w), torch.from_numpy(bias)

    def torch_model(xt):
        return xt.permute(0, 2, 3, 1).reshape(xt.shape[0], -1) @ wt + bt

    ref = FABAttack_PT(
        torch_model,
        norm=norm,
        n_restarts=1,
        n_iter=30,
        eps=10.0,
        targeted=targeted,
        n_target_classes=3,
        device="cpu",
    )
    xt = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2)
    ref_adv = ref.perturb(xt, torch.from_numpy(y)).permute(0, 2, 3, 1).numpy()
    threat = {"Linf": jaxadv.LinfBall, "L2": jaxadv.L2Ball, "L1": jaxadv.L1Ball}[norm](eps=10.0)
    ours = jaxadv.FAB(
        threat=threat,
        num_steps=30,
        num_target_classes=3 if targeted else None,
        overshoot=0.0,  # the reference has none
    )
    res = ours(jax.random.key(0), model, x, y)
    np.testing.assert_allclose(res.adv, ref_adv, atol=1e-5)


# ------------------------------------------------------------------------- rules
def test_outside_eps_is_returned_clean_and_restarts_only_the_unbroken():
    model, w, x, z, y = _linear()
    full = jaxadv.FAB(threat=jaxadv.L2Ball(eps=jnp.inf), num_steps=20)(
        jax.random.key(0), model, x, y
    )
    eps = float(np.median(np.asarray(full.norm)))
    fab = jaxadv.FAB(threat=jaxadv.L2Ball(eps=eps), num_steps=20, num_restarts=3)
    res = fab(jax.random.key(0), model, x, y)
    inside = np.asarray(full.norm) <= eps
    np.testing.assert_array_equal(res.success, inside)
    np.testing.assert_array_equal(np.asarray(res.adv)[~inside], np.asarray(x)[~inside])
    # broken by run 0: charged once; the others ran all three restarts
    expected = np.where(inside, 1 + 2 * 20, 1 + 3 * 2 * 20) + 1
    np.testing.assert_array_equal(res.queries, expected)
    assert np.all(np.isfinite(np.asarray(res.info["min_norm"])))


def test_clean_errors_are_not_attacked():
    model, w, x, z, y = _linear()
    wrong = jnp.asarray(np.argsort(z, axis=1)[:, 0])  # the lowest logit: misclassified already
    res = jaxadv.FAB(threat=jaxadv.LinfBall(eps=0.1), num_steps=5)(
        jax.random.key(0), model, x, wrong
    )
    np.testing.assert_array_equal(res.adv, x)
    assert bool(jnp.all(res.success))


def test_bad_arguments_raise():
    model, w, x, z, y = _linear()
    fab_t = jaxadv.FAB(threat=jaxadv.LinfBall(eps=0.1), num_steps=2, num_target_classes=2)
    with pytest.raises(ValueError, match="num_target_classes"):
        fab_t(jax.random.key(0), model, x, y, target=(jnp.asarray(y) + 1) % 4)
    for bad in ({"num_steps": 0}, {"alpha_max": 1.5}, {"beta": -0.1}, {"num_target_classes": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            jaxadv.FAB(threat=jaxadv.LinfBall(eps=0.1), **bad)
    with pytest.raises(TypeError):
        jaxadv.FAB(threat=jaxadv.L0Pixels(eps=1))
