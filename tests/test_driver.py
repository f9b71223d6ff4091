"""The loop driver port keeps every attack's results: each registered attack (and the PGD / APGD
variants, targeted where supported) is re-run on the fixed tiny models of
``tests/make_driver_golden.py`` and compared with ``tests/data/driver_golden.npz``, recorded from
the code before the port. ``adv``, ``success``, ``norm`` and ``queries`` must be bit for bit equal.

Run one attack with ``-k``, e.g. ``python -m pytest tests/test_driver.py -q -k PGD``.
"""

from __future__ import annotations

import numpy as np
import pytest
from make_driver_golden import FIELDS, cases, load, models, run_case

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
    np.testing.assert_array_equal(np.asarray(res.loss), want["loss"], err_msg=f"{case}: loss")
    assert set(FIELDS) == {*EXACT, "loss"}
