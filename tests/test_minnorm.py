"""Carlini–Wagner L2, DDN and DeepFool: closed-form minimal distances on linear models, targeted
runs, confidence, budgets, jit/eager and sharding, bad settings, and the CLI / sweep vocabulary.

On an affine model ``z = W^T x + b`` (box not active) the smallest perturbation that makes class
``j`` beat the label ``y`` has norm ``(z_y - z_j) / ||w_y - w_j||_q`` (``q`` the dual norm: 2 for
L2, 1 for L∞), and the smallest misclassifying perturbation is the minimum of that over ``j``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import linear_model

import jaxadv
from jaxadv.attacks import example_keys
from jaxadv.sharding import attack_sharded

SHAPE = (4, 4, 1)
NUM_CLASSES = 4
INF_L2 = jaxadv.L2Ball(eps=math.inf)
INF_LINF = jaxadv.LinfBall(eps=math.inf)


def _setup(num_classes=NUM_CLASSES, n=8, seed=0):
    """A linear model and images in [0.4, 0.6] (far from the box for the small optima here)."""
    model = linear_model(num_classes, SHAPE, seed=seed)
    x = jax.random.uniform(jax.random.key(seed + 1), (n, *SHAPE), jnp.float32, 0.4, 0.6)
    y = jnp.argmax(model(x), axis=1).astype(jnp.int32)
    return model, x, y


def _distances(model, x, y, dual):
    """``[B, C]`` per class ``j`` the closed-form norm to beat ``y`` (inf for ``j = y``), and the
    optimal perturbation's largest pixel change to the nearest class ``[B]``."""
    w = np.asarray(model.params["w"], np.float64)  # [D, C]
    z = np.asarray(model(x), np.float64)
    yy = np.asarray(y)
    b, c = z.shape
    dist = np.full((b, c), np.inf)
    reach = np.zeros(b)
    for i in range(b):
        for j in range(c):
            if j != yy[i]:
                diff = w[:, yy[i]] - w[:, j]
                dist[i, j] = (z[i, yy[i]] - z[i, j]) / np.linalg.norm(diff, ord=dual)
        j = int(np.argmin(dist[i]))
        diff = w[:, yy[i]] - w[:, j]
        step = diff / np.linalg.norm(diff) if dual == 2 else np.sign(diff)
        reach[i] = np.max(np.abs(step)) * dist[i, j]
    return dist, reach


# ---------------------------------------------------------------------- closed forms (untargeted)
@pytest.mark.parametrize("threat", [INF_L2, INF_LINF], ids=["l2", "linf"])
def test_deepfool_reaches_the_linear_boundary_in_one_step(threat):
    """DeepFool's step is exact on an affine model: norm (1 + overshoot)(d_min + 1e-4), one
    moving iteration then one that sees the success (3 candidate gradients each)."""
    model, x, y = _setup()
    dual = 2 if threat.p == 2 else 1
    dist, reach = _distances(model, x, y, dual)
    assert np.all(reach * 1.03 < 0.4), "test set-up: the optimum must stay inside the box"
    res = jaxadv.DeepFool(threat=threat)(jax.random.key(0), model, x, y)
    assert bool(jnp.all(res.success))
    want = 1.02 * (dist.min(axis=1) + 1e-4)
    np.testing.assert_allclose(res.norm, want, rtol=2e-5)
    # clean forward + 2 iterations x (C - 1) gradients + the final re-evaluation
    np.testing.assert_array_equal(res.queries, 1 + 2 * (NUM_CLASSES - 1) + 1)


def _affine(p, x):
    return x.reshape(x.shape[0], -1) @ p["w"] + p["b"][None, :]


def test_deepfool_candidates_limit_the_classes():
    """With 2 candidates only the class of the second-largest clean logit is considered: one step
    to its boundary although class 2 is five times nearer (a small logit behind a steep slope)."""
    d = int(np.prod(SHAPE))
    w1 = jnp.full((d,), 0.1 / 4, jnp.float32)  # ||w_1 - w_0|| = 0.1, z_1 = z_0 - 0.1 at x = 0.5
    w2 = jnp.tile(jnp.asarray([1.25, -1.25], jnp.float32), d // 2)  # ||w_2 - w_0|| = 5
    w = jnp.stack([jnp.zeros((d,), jnp.float32), w1, w2], axis=1)
    model = jaxadv.from_apply(_affine, {"w": w, "b": jnp.asarray([1.0, 0.7, 0.0], jnp.float32)})
    x = jax.random.uniform(jax.random.key(2), (6, *SHAPE), jnp.float32, 0.45, 0.55)
    y = jnp.zeros((6,), jnp.int32)
    dist, _ = _distances(model, x, y, 2)
    assert np.all(np.argmin(dist, axis=1) == 2) and np.all(np.argsort(-model(x), 1)[:, 1] == 1)
    res = jaxadv.DeepFool(threat=INF_L2, num_candidates=2)(jax.random.key(0), model, x, y)
    assert bool(jnp.all(res.success))
    np.testing.assert_allclose(res.norm, 1.02 * (dist[:, 1] + 1e-4), rtol=2e-5)
    np.testing.assert_array_equal(res.queries, 1 + 2 * 1 + 1)
    full = jaxadv.DeepFool(threat=INF_L2)(jax.random.key(0), model, x, y)
    np.testing.assert_allclose(full.norm, 1.02 * (dist[:, 2] + 1e-4), rtol=2e-5)
    np.testing.assert_array_equal(full.queries, 1 + 2 * 2 + 1)


@pytest.mark.parametrize(
    "attack, rtol, atol",
    [
        # Adam's steps do not shrink: near the boundary CW moves in steps of about
        # step_size * (hi - lo) / 2 per pixel, which bounds its precision absolutely
        (jaxadv.CW(threat=INF_L2, num_steps=200, num_binary_steps=9), 0.01, 2e-3),
        # DDN's norm moves by factors 1 +- gamma: once aligned it is at most (1 + gamma) d
        (jaxadv.DDN(threat=INF_L2, num_steps=200), 0.05, 0.0),
    ],
    ids=["CW", "DDN"],
)
def test_cw_and_ddn_reach_the_linear_minimum(attack, rtol, atol):
    model, x, y = _setup()
    dist, reach = _distances(model, x, y, 2)
    assert np.all(reach * 1.05 < 0.4)
    dmin = dist.min(axis=1)
    res = attack(jax.random.key(0), model, x, y)
    assert bool(jnp.all(res.success))
    norm = np.asarray(res.norm)
    assert np.all(norm >= dmin * (1 - 1e-4)), (norm, dmin)  # nothing beats the optimum
    assert np.all(norm <= dmin * (1 + rtol) + atol), (norm / dmin, norm - dmin)


def test_cw_confidence_moves_past_the_boundary_by_kappa():
    """Two classes: the smallest perturbation with margin >= kappa has norm (m0 + kappa) / ||w||."""
    model, x, y = _setup(num_classes=2, seed=4)
    w = np.asarray(model.params["w"][:, 1] - model.params["w"][:, 0])
    m0 = -np.asarray(jaxadv.losses.margin(model(x), y))
    kappa = 0.5
    res = jaxadv.CW(threat=INF_L2, num_steps=200, confidence=kappa)(jax.random.key(0), model, x, y)
    assert np.all(np.asarray(res.loss) >= kappa - 1e-5)
    np.testing.assert_allclose(res.norm, (m0 + kappa) / np.linalg.norm(w), rtol=0.02)


# ---------------------------------------------------------------------------------- targeted
@pytest.mark.parametrize(
    "attack",
    [
        jaxadv.CW(threat=INF_L2, num_steps=100, num_binary_steps=6),
        jaxadv.DDN(threat=INF_L2, num_steps=100),
    ],
    ids=["CW", "DDN"],
)
def test_targeted_runs_hit_the_target(attack):
    model, x, y = _setup()
    # the class with the smallest clean logit: the hardest target
    target = jnp.argmin(model(x), axis=1).astype(jnp.int32)
    res = attack(jax.random.key(0), model, x, y, target=target)
    np.testing.assert_array_equal(jnp.argmax(model(res.adv), axis=1), target)
    assert bool(jnp.all(res.success)) and bool(jnp.all(res.loss > 0))
    # beating y alone is a lower bound on the distance to the target's region
    dist, _ = _distances(model, x, y, 2)
    lower = dist[np.arange(x.shape[0]), np.asarray(target)]
    assert np.all(np.asarray(res.norm) >= lower * (1 - 1e-4))


def test_deepfool_refuses_a_target():
    model, x, y = _setup(n=2)
    with pytest.raises(ValueError, match="DeepFool is untargeted"):
        jaxadv.DeepFool(threat=INF_L2)(jax.random.key(0), model, x, y, target=(y + 1) % 4)


# ----------------------------------------------------------------------------------- budgets
@pytest.mark.parametrize(
    "attack",
    [jaxadv.DeepFool(threat=jaxadv.L2Ball(eps=0.0)), jaxadv.DDN(threat=INF_L2, num_steps=50)],
    ids=["DeepFool", "DDN"],
)
def test_eps_only_decides_success(attack):
    """The search ignores eps: where the norm found is within eps the point is the same as with
    eps = inf and a success; a success is always within eps."""
    model, x, y = _setup(n=12)
    free = attack.with_eps(math.inf)(jax.random.key(0), model, x, y)
    eps = float(np.median(np.asarray(free.norm)))
    res = attack.with_eps(eps)(jax.random.key(0), model, x, y)
    inside = np.asarray(free.norm) <= eps
    assert 0 < inside.sum() < len(inside)
    assert np.all(np.asarray(res.success)[inside])
    np.testing.assert_array_equal(np.asarray(res.adv)[inside], np.asarray(free.adv)[inside])
    assert np.all(np.asarray(res.norm)[np.asarray(res.success)] <= eps * (1 + 1e-5))


# ------------------------------------------------------------------- jit, eager and sharding
ATTACKS = {
    "CW": lambda: jaxadv.CW(threat=jaxadv.L2Ball(eps=0.3), num_steps=4, num_binary_steps=2),
    "DDN": lambda: jaxadv.DDN(threat=jaxadv.L2Ball(eps=0.3), num_steps=5),
    "DeepFool-l2": lambda: jaxadv.DeepFool(threat=jaxadv.L2Ball(eps=0.3), num_steps=3),
    "DeepFool-linf": lambda: jaxadv.DeepFool(threat=jaxadv.LinfBall(eps=0.05), num_steps=3),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_jit_equals_eager(name):
    model, x, y = _setup(n=3)
    atk = ATTACKS[name]()
    keys = example_keys(jax.random.key(0), 3)
    jitted = jax.jit(lambda k: atk.run(k, model, x, y))(keys)
    with jax.disable_jit():
        eager = atk.run(keys, model, x, y)
    np.testing.assert_allclose(jitted.adv, eager.adv, atol=1e-5)
    np.testing.assert_array_equal(jitted.success, eager.success)
    np.testing.assert_array_equal(jitted.queries, eager.queries)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_sharded_equals_unsharded(name):
    """13 examples on 8 devices (uneven): per-example early aborts and exits do not depend on
    the other examples of the shard."""
    model, x, y = _setup(n=13)
    atk = ATTACKS[name]()
    ref = atk(jax.random.key(0), model, x, y)
    sh = attack_sharded(atk, jax.random.key(0), model, x, y)
    np.testing.assert_allclose(sh.adv, ref.adv, atol=1e-6)
    np.testing.assert_array_equal(sh.success, ref.success)
    np.testing.assert_array_equal(sh.queries, ref.queries)


def test_cw_early_abort_is_per_example():
    """An example's CW run does not depend on the batch it is in (foolbox aborts on the summed
    loss of the batch)."""
    model, x, y = _setup(n=6)
    cw = jaxadv.CW(threat=INF_L2, num_steps=30, num_binary_steps=2)
    full = cw(jax.random.key(0), model, x, y)
    part = cw(jax.random.key(0), model, x[2:4], y[2:4], index_offset=2)
    np.testing.assert_allclose(part.adv, full.adv[2:4], atol=1e-6)
    np.testing.assert_array_equal(part.queries, full.queries[2:4])
    off = dataclasses.replace(cw, abort_early=False)(jax.random.key(0), model, x, y)
    np.testing.assert_array_equal(off.queries, 2 * 30 + 1)
    assert np.all(np.asarray(full.queries) < np.asarray(off.queries))


# ----------------------------------------------------------------------------- bad settings
@pytest.mark.parametrize(
    "make, err, match",
    [
        (lambda: jaxadv.CW(threat=INF_L2, num_binary_steps=0), ValueError, "num_binary_steps"),
        (lambda: jaxadv.CW(threat=INF_L2, confidence=-1.0), ValueError, "confidence"),
        (lambda: jaxadv.CW(threat=INF_L2, initial_const=0.0), ValueError, "initial_const"),
        (lambda: jaxadv.CW(threat=INF_L2, step_size=float("nan")), ValueError, "step_size"),
        (lambda: jaxadv.CW(threat=INF_LINF), TypeError, "L2Ball"),
        (lambda: jaxadv.DDN(threat=INF_L2, gamma=1.0), ValueError, "gamma"),
        (lambda: jaxadv.DDN(threat=INF_L2, init_norm=0.0), ValueError, "init_norm"),
        (lambda: jaxadv.DDN(threat=INF_L2, num_steps=0), ValueError, "num_steps"),
        (lambda: jaxadv.DDN(threat=jaxadv.L1Ball(eps=1.0)), TypeError, "L2Ball"),
        (lambda: jaxadv.DeepFool(threat=INF_L2, num_candidates=1), ValueError, "num_candidates"),
        (lambda: jaxadv.DeepFool(threat=INF_L2, overshoot=-0.1), ValueError, "overshoot"),
        (lambda: jaxadv.DeepFool(threat=INF_L2, num_steps=2.5), ValueError, "num_steps"),
    ],
)
def test_bad_settings_raise(make, err, match):
    with pytest.raises(err, match=match):
        make()


# ------------------------------------------------------------------------ CLI and sweeps
def test_names_and_num_steps_map_onto_each_budget():
    from jaxadv.vocab import SpecError, make_attack

    cw = make_attack("cw", norm="l2", num_steps=7, options={"num_binary_steps": 2})
    assert type(cw) is jaxadv.CW and cw.num_steps == 7 and cw.num_binary_steps == 2
    assert make_attack("DDN", norm="l2", num_steps=9).num_steps == 9
    df = make_attack("deepfool", norm="linf", num_steps=11)
    assert type(df) is jaxadv.DeepFool and df.num_steps == 11
    assert isinstance(df.threat, jaxadv.LinfBall)
    with pytest.raises(SpecError, match="supports norm l2"):
        make_attack("cw", norm="linf")
    with pytest.raises(SpecError, match="has no restarts"):
        make_attack("ddn", norm="l2", restarts=2)
    with pytest.raises(SpecError, match="num_candidates"):
        make_attack("deepfool", norm="l2", options={"num_candidates": 1})


def test_sweep_config_builds_the_three():
    from jaxadv import sweep

    cfg = sweep.load_config(
        {
            "models": ["small_cnn_clean"],
            "datasets": [{"data": "default", "num_examples": 4}],
            "eps": [0, 64],
            "num_steps": 5,
            "attacks": [
                {"attack": "cw", "norm": "l2", "options": {"num_binary_steps": 2}},
                {"attack": "ddn", "norm": "l2", "num_steps": 7},
                {"attack": "deepfool", "norm": "linf"},
            ],
        }
    )
    got = {a["label"]: a["num_steps"] for a in cfg.data["attacks"]}
    assert got == {"cw-l2": 5, "ddn-l2": 7, "deepfool": 5}


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv",
    [
        ["--attack", "cw", "--norm", "l2", "--option", "num_binary_steps=2"],
        ["--attack", "ddn", "--norm", "l2"],
        ["--attack", "deepfool", "--norm", "linf"],
    ],
    ids=["cw", "ddn", "deepfool"],
)
def test_cli_attack(argv, tmp_path):
    import json

    from jaxadv.cli import main

    out = tmp_path / "a"
    base = ["attack", "--eps", "0,64", "--num-examples", "4", "--num-steps", "3", "--quiet"]
    assert main([*base, *argv, "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    cfg = res["manifest"]["attack_config"]
    assert cfg["type"] == {"cw": "CW", "ddn": "DDN", "deepfool": "DeepFool"}[argv[1]]
    assert cfg["num_steps"] == 3
    rows = res["rows"]
    assert rows[0]["robust_accuracy"] >= rows[1]["robust_accuracy"]
