"""The loop driver port keeps every attack's results: each registered attack (and the PGD / APGD
variants, targeted where supported) is re-run on the fixed tiny models of
``tests/make_driver_golden.py`` and compared with ``tests/data/driver_golden.npz``, recorded from
the code before the port. ``adv``, ``success``, ``norm`` and ``queries`` must be bit for bit equal.

``res.loss`` is not compared with the recorded value: it used to be each attack's own loss (CE for
some, margin for others) and is now the library's margin on ``adv`` for every attack
(:class:`jaxadv.AttackResult`). It is checked against that definition instead, computed here from
the model on the recorded ``adv`` (so it too is pinned to the pre-port result), to float tolerance: eager here, jitted there.

Run one attack with ``-k``, e.g. ``python -m pytest tests/test_driver.py -q -k PGD``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from make_driver_golden import FIELDS, cases, data, load, models, run_case

import jaxadv

GOLDEN = load()
MODELS = models()
CASES = cases()
EXACT = ("adv", "success", "norm", "queries")


def test_golden_covers_every_case():
    assert sorted(GOLDEN) == sorted(c[0] for c in CASES)


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
