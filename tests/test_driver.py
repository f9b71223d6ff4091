"""The loop driver port keeps every attack's results: each registered attack (and the PGD / APGD
variants, targeted where supported) is re-run on the fixed tiny models of
``tests/make_driver_golden.py`` and compared with ``tests/data/driver_golden.npz``, recorded from
the code before the port. ``adv``, ``success``, ``norm`` and ``queries`` must be bit for bit equal.

``res.loss`` is not compared with the recorded value: it used to be each attack's own loss (CE for
some, margin for others) and is now the library's margin on ``adv`` for every attack
(:class:`jaxadv.AttackResult`). It is checked against that definition instead, computed here from
the model on the recorded ``adv`` (so it too is pinned to the pre-port result), to float tolerance: eager here, jitted there.

The last tests exercise the driver itself (:mod:`jaxadv.attacks.driver`) on a toy step.

Run one attack with ``-k``, e.g. ``python -m pytest tests/test_driver.py -q -k PGD``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from make_driver_golden import FIELDS, cases, data, load, models, run_case

import jaxadv
from jaxadv.attacks.driver import Best, Scored, iterate, keep_best
from jaxadv.result import finalize

GOLDEN = load()
MODELS = models()
ALL_CASES = cases()
# Attacks added after the port were written on the driver: there is no pre-port result to pin.
CASES = [c for c in ALL_CASES if c[0] in GOLDEN]
EXACT = ("adv", "success", "norm", "queries")


def test_golden_covers_every_case():
    """Every recorded case is still run, and a case without a record belongs to an attack class
    with no recorded case at all (one written after the port), never to a pre-port attack."""
    assert set(GOLDEN) <= {c[0] for c in ALL_CASES}
    recorded = {type(c[2]) for c in CASES}
    unrecorded = {c[0] for c in ALL_CASES if c[0] not in GOLDEN and type(c[2]) in recorded}
    assert not unrecorded, f"re-run tests/make_driver_golden.py? no record of {sorted(unrecorded)}"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "model_name", "attack", "targeted"), CASES, ids=[c[0] for c in CASES]
)
def test_same_result_as_before_the_driver(case, model_name, attack, targeted):
    res = run_case(MODELS[model_name], attack, targeted)
    want = GOLDEN[case]
    for f in EXACT:
        np.testing.assert_array_equal(np.asarray(getattr(res, f)), want[f], err_msg=f"{case}: {f}")
    model = MODELS[model_name]
    x, y, t = data(model)
    logits = model(jnp.asarray(want["adv"]))
    margin = (
        jaxadv.losses.margin_targeted(logits, t) if targeted else jaxadv.losses.margin(logits, y)
    )
    # allclose, not equal: here the margin is computed outside jit, in finalize inside it
    np.testing.assert_allclose(res.loss, margin, rtol=1e-6, atol=1e-6, err_msg=f"{case}: loss")
    # > 0 exactly when the attack succeeded (the margin's sign convention; the golden runs are
    # all finite and have no ties at 0)
    np.testing.assert_array_equal(np.asarray(res.loss) > 0, want["success"])
    assert set(FIELDS) == {*EXACT, "loss"}


# ------------------------------------------------------------------ the driver on its own
def _count_step(i, s):
    """A toy step: every example adds 1 to its counter; example j is "done" at step j."""
    new = {"n": s["n"] + 1, "shared": s["shared"] + 1}
    idx = jnp.arange(s["n"].shape[0])
    n = s["n"].astype(jnp.float32)
    return new, Scored(point=n, success=idx == i, score=n)


def test_iterate_masks_charges_and_leaves_early():
    b = 3
    s0 = {"n": jnp.zeros((b,), jnp.int32), "shared": jnp.zeros((), jnp.int32)}
    out = iterate(
        _count_step,
        s0,
        stop=10,
        active=jnp.ones((b,), bool),
        queries=jnp.zeros((b,), jnp.int32),
        cost=2,
        done=lambda _, sc: sc.success,
        best=Best.empty(jnp.zeros((b,), jnp.float32)),
        exit_early=True,
    )
    # example j runs steps 0..j, so it is stepped j + 1 times and charged 2 per step
    np.testing.assert_array_equal(out.state["n"], [1, 2, 3])
    np.testing.assert_array_equal(out.queries, [2, 4, 6])
    assert int(out.stop) == 3  # left once every example was done, not at stop=10
    assert int(out.state["shared"]) == 3  # 0-d leaves are shared, never frozen
    assert not bool(jnp.any(out.active))
    np.testing.assert_array_equal(out.best.success, [True, True, True])
    np.testing.assert_array_equal(out.best.point, [0, 1, 2])  # the point scored when done


def test_iterate_budget_and_no_done_runs_everything():
    b = 2
    s0 = {"n": jnp.zeros((b,), jnp.int32), "shared": jnp.zeros((), jnp.int32)}
    kw = dict(stop=5, active=jnp.array([True, False]), queries=jnp.array([0, 0], jnp.int32))
    out = iterate(_count_step, s0, **kw)
    # without done there is no mask: every example steps (the fori_loop form of PGD / APGD)
    np.testing.assert_array_equal(out.state["n"], [5, 5])
    np.testing.assert_array_equal(out.queries, [5, 0])
    out = iterate(_count_step, s0, cost=2, budget=7, exit_early=True, **kw)
    # 2 + 2 + 2 = 6 and a fourth step would spend 8 > 7
    np.testing.assert_array_equal(out.state["n"], [3, 0])
    np.testing.assert_array_equal(out.queries, [6, 0])


def test_keep_best_prefers_success_then_score_and_keeps_ties():
    best = Best(
        point=jnp.array([0.0, 0.0, 0.0, 0.0]),
        success=jnp.array([False, True, True, False]),
        score=jnp.array([1.0, 1.0, 1.0, 1.0]),
    )
    cand = Scored(
        point=jnp.array([1.0, 1.0, 1.0, 1.0]),
        success=jnp.array([True, False, True, False]),
        score=jnp.array([0.0, 5.0, 1.0, jnp.nan]),
    )
    out = keep_best(best, cand)
    np.testing.assert_array_equal(out.point, [1.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(out.success, [True, True, True, False])


def test_finalize_loss_is_the_margin():
    model = MODELS["linear"]
    x, y, _ = data(model)
    threat = jaxadv.LinfBall(eps=0.1)
    res = finalize(threat, model, x, x, y)
    np.testing.assert_allclose(res.loss, jaxadv.losses.margin(model(x), y), rtol=1e-6)
    t = (y + 1) % 4
    res = finalize(threat, model, x, x, y, target=t)
    np.testing.assert_allclose(res.loss, jaxadv.losses.margin_targeted(model(x), t), rtol=1e-6)
    with pytest.raises(TypeError):
        finalize(threat, model, x, x, y, loss_fn=jaxadv.losses.ce)  # one meaning: no other loss
