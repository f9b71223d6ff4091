"""The evaluation engine (jaxadv.evaluate): one table-driven contract over the attack registry,
padding and batching, cascades, the one summary, and the checks before any work."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attack_configs import small
from conftest import linear_model

import jaxadv
from jaxadv.attacks import REGISTRY, example_keys
from jaxadv.engine import layout, programs, summary_rows
from jaxadv.engine.layout import data_mesh

SHAPE = (4, 4, 1)


def _data(n: int, num_classes: int = 3, seed: int = 0):
    model = linear_model(num_classes, SHAPE, seed=seed)
    x = np.asarray(jax.random.uniform(jax.random.key(seed + 1), (n, *SHAPE)), np.float32)
    y = np.array(jnp.argmax(model(jnp.asarray(x)), 1), np.int32)
    y[::5] = (y[::5] + 1) % num_classes  # a few clean errors
    return model, x, y


def _grid(atk) -> list[float]:
    """Two budgets (plus 0) in the attack's own threat units."""
    name = type(atk.threat).__name__
    return [0.0, 1.0, 2.0] if name == "L0Pixels" else [0.0, 0.05, 0.2]


# ---------------------------------------------------------------------- registry contract
def test_every_registered_attack_has_a_tiny_configuration():
    from attack_configs import SMALL

    assert set(SMALL) == set(REGISTRY)
    for name in REGISTRY:
        assert type(small(name)) is REGISTRY[name]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_engine_contract_over_the_registry(name):
    """Per example, evaluate() equals a loop of direct calls over the grid (vmap over eps equals a
    loop), on 8 devices with several padded steps equals 1 device in one step, a new eps grid
    never retraces, and the cascade is the cumulative OR of the independent grid."""
    model, x, y = _data(11)
    atk = small(name)
    eps = _grid(atk)
    key = jax.random.key(5)
    ev = jaxadv.evaluate(atk, model, (x, y), eps, key=key, batch_size=1)  # 2 steps of 8
    assert ev.batches == 2 and ev.per_eps["success"].shape == (3, 11)
    for j, e in enumerate(eps):
        if e == 0:  # budget 0 is the clean evaluation: no attack runs
            np.testing.assert_array_equal(ev.per_eps["success"][j], ~ev.clean_correct)
            np.testing.assert_array_equal(ev.per_eps["queries"][j], 1)
            continue
        ref = jax.jit(lambda k, e=e: atk.with_eps(e).run(k, model, jnp.asarray(x), jnp.asarray(y)))(
            example_keys(key, 11)
        )
        np.testing.assert_array_equal(ev.per_eps["success"][j], np.asarray(ref.success), name)
        np.testing.assert_array_equal(ev.per_eps["queries"][j], np.asarray(ref.queries), name)
        np.testing.assert_allclose(ev.per_eps["norm"][j], np.asarray(ref.norm), atol=1e-5)
    one = jaxadv.evaluate(
        atk, model, (x, y), eps, key=key, batch_size=16, mesh=data_mesh(jax.devices()[:1])
    )
    np.testing.assert_array_equal(one.per_eps["success"], ev.per_eps["success"])
    np.testing.assert_array_equal(one.per_eps["queries"], ev.per_eps["queries"])
    size = programs.attack_step._cache_size()
    other = [e * 0.75 for e in eps]
    jaxadv.evaluate(atk, model, (x, y), other, key=key, batch_size=1)
    assert programs.attack_step._cache_size() == size, "a new eps grid recompiled the attack"
    cas = jaxadv.evaluate(atk, model, (x, y), eps, key=key, batch_size=1, cascade=True)
    np.testing.assert_array_equal(
        cas.per_eps["success"], np.logical_or.accumulate(ev.per_eps["success"], axis=0)
    )


# ---------------------------------------------------------------------- batching and padding
def test_batch_size_and_device_count_do_not_change_results():
    model, x, y = _data(13)
    pgd = jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.0), num_steps=4)
    eps = [0.02, 0.1]
    a = jaxadv.evaluate(pgd, model, (x, y), eps, key=0, batch_size=1)
    b = jaxadv.evaluate(pgd, model, (x, y), eps, key=0, batch_size=5)
    c = jaxadv.evaluate(pgd, model, (x, y), eps, key=0, mesh=data_mesh(jax.devices()[:1]))
    for other in (b, c):
        for k in ("success", "queries", "norm", "margin"):
            np.testing.assert_array_equal(a.per_eps[k], other.per_eps[k], k)
    assert a.summary() == b.summary() == c.summary()


def test_last_short_batch_does_not_recompile():
    model, x, y = _data(23)
    pgd = jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.0), num_steps=2)
    jaxadv.evaluate(pgd, model, (x[:16], y[:16]), [0.1], key=0, batch_size=2)
    size = programs.attack_step._cache_size()
    ev = jaxadv.evaluate(pgd, model, (x, y), [0.1], key=0, batch_size=2)  # 16 + 7 (padded)
    assert ev.batches == 2
    assert programs.attack_step._cache_size() == size


def test_indices_select_examples_and_their_keys():
    """Example i always uses fold_in(key, i): a subset gives the same per-example results."""
    model, x, y = _data(12)
    pgd = jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.0), num_steps=3)
    full = jaxadv.evaluate(pgd, model, (x, y), [0.05], key=3)
    pick = np.array([10, 2, 7])
    part = jaxadv.evaluate(pgd, model, (x, y), [0.05], key=3, indices=pick)
    np.testing.assert_array_equal(part.indices, pick)
    np.testing.assert_array_equal(part.labels, y[pick])
    for k in ("success", "margin", "l2"):
        np.testing.assert_array_equal(part.per_eps[k][0], full.per_eps[k][0][pick], k)


def test_kept_adversarials_match_the_grid_point():
    model, x, y = _data(10)
    pgd = jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.0), num_steps=3)
    for cascade in (False, True):
        ev = jaxadv.evaluate(
            pgd, model, (x, y), [0.0, 0.05, 0.1], key=0, num_adv=4, batch_size=1, cascade=cascade
        )
        assert ev.adv.shape == (4, *SHAPE) and ev.adv_index == 2
        linf = np.abs(ev.adv - x[:4]).reshape(4, -1).max(1)
        np.testing.assert_allclose(linf, ev.per_eps["linf"][2][:4], atol=1e-6)
        pred = np.asarray(jnp.argmax(model(jnp.asarray(ev.adv)), 1))
        np.testing.assert_array_equal(pred != y[:4], ev.per_eps["success"][2][:4])


def test_dataset_and_arrays_agree_and_float_dtypes_are_attacked_in_float32():
    from jaxadv.data import from_arrays

    model, x, y = _data(9)
    pgd = jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.0), num_steps=2)
    a = jaxadv.evaluate(pgd, model, from_arrays(x, y, num_classes=3), [0.1], key=1)
    b = jaxadv.evaluate(pgd, model, (x.astype(np.float64), y.tolist()), [0.1], key=1)
    np.testing.assert_array_equal(a.per_eps["success"], b.per_eps["success"])


# ---------------------------------------------------------------------- the one summary
def test_summary_means_are_over_successful_attacks_of_the_whole_set():
    eps = [0.0, 0.1]
    cc = np.array([True, True, True, False])
    per = {
        "success": np.array([[False, False, False, True], [True, True, False, True]]),
        "linf": np.array([[0, 0, 0, 0], [0.1, 0.05, 0.09, 0.0]], np.float32),
        "queries": np.array([[1, 1, 1, 1], [3, 5, 9, 1]], np.int32),
    }
    rows = summary_rows(eps, per, cc)
    assert rows[1]["robust_accuracy"] == 0.25 and rows[1]["num_successful"] == 2
    assert rows[1]["attack_success_rate"] == pytest.approx(2 / 3)
    assert rows[1]["linf_mean"] == pytest.approx(0.075) and rows[1]["queries_median"] == 4.0
    assert np.isnan(rows[0]["linf_mean"]) and rows[0]["robust_accuracy"] == 0.75


def test_metrics_summarize_uses_the_engine_summary():
    model, x, y = _data(8, num_classes=2)
    pgd = jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.1), num_steps=3)
    res = pgd(jax.random.key(0), model, x, y)
    s = jaxadv.metrics.summarize(model, x, y, res)
    ev = jaxadv.evaluate(pgd, model, (x, y), [0.1], key=0)
    row = ev.summary()[0]
    for k in ("robust_accuracy", "clean_accuracy", "attack_success_rate", "auc_under_attack"):
        assert s[k] == pytest.approx(row[k], nan_ok=True), k
    assert s["linf_mean"] == pytest.approx(row["linf_mean"], rel=1e-5, nan_ok=True)


# ---------------------------------------------------------------------- checks first
@pytest.mark.parametrize(
    "kwargs, msg",
    [
        ({"eps": []}, "non-empty"),
        ({"eps": [0.1, float("nan")]}, "NaN"),
        ({"eps": [-0.1]}, ">= 0"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": -3}, "batch_size"),
        ({"indices": [0, 99]}, "indices"),
        ({"num_adv": -1}, "num_adv"),
        ({"adv_eps": 0.3}, "adv_eps"),
        ({"attack": None}, "attack=None"),
    ],
)
def test_bad_arguments_raise_before_any_work(kwargs, msg):
    model, x, y = _data(4)
    args = {
        "attack": jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.0), num_steps=2),
        "eps": [0.1],
        **kwargs,
    }
    attack, eps = args.pop("attack"), args.pop("eps")
    with pytest.raises(ValueError, match=msg):
        jaxadv.evaluate(attack, model, (x, y), eps, key=0, **args)


def test_nan_image_beyond_the_first_checked_examples_is_refused():
    model, x, y = _data(40)
    x = x.copy()
    x[33, 1, 2, 0] = np.nan
    pgd = jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.0), num_steps=2)
    with pytest.raises(ValueError, match=r"indices \[33\] hold NaN/inf"):
        jaxadv.evaluate(pgd, model, (x, y), [0.1], key=0, batch_size=2)


def test_clean_evaluation_without_an_attack():
    model, x, y = _data(7)
    ev = jaxadv.evaluate(None, model, (x, y), [0.0], key=0)
    np.testing.assert_allclose(ev.robust_accuracy, [ev.clean_correct.mean()])


def test_one_padding_rule():
    a = np.arange(5)
    np.testing.assert_array_equal(layout.pad_rows(a, 8), [0, 1, 2, 3, 4, 4, 4, 4])
    assert layout.bucket(5, 64) == 5 and layout.bucket(9, 64) == 10 and layout.bucket(70, 64) == 64
    with pytest.raises(ValueError):
        layout.pad_rows(a, 3)
