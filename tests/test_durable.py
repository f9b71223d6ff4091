"""Durable successes (issue 19): the success margin κ, FMN's overshoot, results quantised to a
storage grid, exact save / load round trips, and the re-check outside the attack's program."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import UlpModel as _Wrap
from conftest import float_images_npz, linear_model
from conftest import ulp_model as _ulp_model

import jaxadv
from jaxadv import durable
from jaxadv.result import finalize
from jaxadv.threats import grid_bits

SHAPE = (4, 4, 1)


def _setup(num_classes=3, n=8, seed=0, grid=None):
    """A linear model and clean images (on the ``grid``-bit grid when set) in [0.3, 0.7]."""
    model = linear_model(num_classes, SHAPE, seed=seed)
    x = jax.random.uniform(jax.random.key(seed + 1), (n, *SHAPE), jnp.float32, 0.3, 0.7)
    if grid:  # as the loaders read stored files (NumPy's division is correctly rounded)
        top = np.float32(2**grid - 1)
        x = jnp.asarray(np.round(np.asarray(x) * top).astype(np.float32) / top)
    y = jnp.argmax(model(x), axis=1).astype(jnp.int32)
    return model, x, y


# ------------------------------------------------------------------ margin κ and overshoot
@pytest.mark.parametrize(
    "threat_cls", [jaxadv.L2Ball, pytest.param(jaxadv.LinfBall, marks=pytest.mark.slow)]
)
def test_fmn_overshoot_puts_points_strictly_past_the_boundary(threat_cls):
    model, x, y = _setup()
    over = 0.05
    plain = jaxadv.FMN(threat=threat_cls(eps=math.inf), num_steps=60, overshoot=0.0)(0, model, x, y)
    durable_ = jaxadv.FMN(threat=threat_cls(eps=math.inf), num_steps=60, overshoot=over)(
        0, model, x, y
    )
    assert bool(jnp.all(plain.success)) and bool(jnp.all(durable_.success))
    # the margin recomputed by finalize on the returned point clears the overshoot
    assert float(jnp.min(durable_.loss)) > over
    # ... and the plain search ends much closer to the boundary (the boundary points)
    assert float(jnp.median(plain.loss)) < over
    # the overshoot costs a little norm, not a different point
    assert bool(jnp.all(durable_.norm >= plain.norm * (1 - 1e-3)))
    assert bool(jnp.all(durable_.norm <= plain.norm * 1.5 + 0.05))


_OVERSHOOT = {
    "cw": lambda o: jaxadv.CW(
        threat=jaxadv.L2Ball(eps=math.inf), num_steps=100, num_binary_steps=6, overshoot=o
    ),
    "ddn": lambda o: jaxadv.DDN(threat=jaxadv.L2Ball(eps=math.inf), num_steps=100, overshoot=o),
}


@pytest.mark.parametrize("name", sorted(_OVERSHOOT))
def test_cw_and_ddn_overshoot_puts_points_strictly_past_the_boundary(name):
    """CW and DDN take FMN's and FAB's ``overshoot`` (same name, default, rule)."""
    model, x, y = _setup()
    over = 0.05
    plain = _OVERSHOOT[name](0.0)(0, model, x, y)
    durable_ = _OVERSHOOT[name](over)(0, model, x, y)
    assert bool(jnp.all(plain.success)) and bool(jnp.all(durable_.success))
    # the per-example margin finalize recomputes on the returned point clears the overshoot
    assert float(jnp.min(durable_.loss)) > over
    # ... where the paper's rule stops closer to the boundary
    assert float(jnp.median(plain.loss)) < over
    assert bool(jnp.all(durable_.norm <= plain.norm * 1.5 + 0.05))
    # the default is FMN's and FAB's, and it already keeps every point off the boundary
    t = jaxadv.L2Ball(eps=math.inf)
    default = {"cw": jaxadv.CW, "ddn": jaxadv.DDN}[name](threat=t).overshoot
    assert float(default) == pytest.approx(jaxadv.FMN(threat=t).overshoot)
    assert float(default) == pytest.approx(jaxadv.FAB(threat=t).overshoot) == 1e-3
    default = dataclasses.replace(_OVERSHOOT[name](0.0), overshoot=default)(0, model, x, y)
    assert bool(jnp.all(default.success)) and float(jnp.min(default.loss)) > 1e-3


@pytest.mark.parametrize("targeted", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_success_margin_is_the_success_rule(targeted):
    model, x, y = _setup()
    t = (y + 1) % 3 if targeted else None
    kappa = 0.2
    pgd = jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.05, success_margin=kappa), num_steps=10)
    res = pgd(0, model, x, y, target=t)
    m = jaxadv.losses.margin_targeted(model(res.adv), t) if targeted else None
    m = jaxadv.losses.margin(model(res.adv), y) if m is None else m
    np.testing.assert_array_equal(np.asarray(res.success), np.asarray(m) > kappa)
    # κ = 0 is the argmax rule, and a κ between the margins changes some verdicts
    res0 = jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.05), num_steps=10)(0, model, x, y, target=t)
    np.testing.assert_array_equal(res0.adv, res.adv)
    assert bool(jnp.all(res.success <= res0.success))


_MINNORM = {
    "fmn": lambda t: jaxadv.FMN(threat=t, num_steps=60),
    "ddn": lambda t: jaxadv.DDN(threat=t, num_steps=60),
    "cw": lambda t: jaxadv.CW(threat=t, num_steps=100, num_binary_steps=6),
    "deepfool": lambda t: jaxadv.DeepFool(threat=t, overshoot=0.0),
    "fab": lambda t: jaxadv.FAB(threat=t, num_steps=30),
}


@pytest.mark.parametrize("name", sorted(_MINNORM))
def test_minimum_norm_attacks_aim_at_the_success_margin(name):
    model, x, y = _setup()
    kappa = 0.1
    res = _MINNORM[name](jaxadv.L2Ball(eps=math.inf, success_margin=kappa))(0, model, x, y)
    assert bool(jnp.all(res.success)) and float(jnp.min(res.loss)) > kappa


@pytest.mark.parametrize(
    "threat_cls",
    [jaxadv.L2Ball, jaxadv.LinfBall, pytest.param(jaxadv.L1Ball, marks=pytest.mark.slow)],
)
def test_fab_searches_past_kappa_and_overshoot(threat_cls):
    model, x, y = _setup()
    kappa, over = 0.1, 0.05
    fab = lambda t, o: jaxadv.FAB(threat=t, num_steps=30, overshoot=o)  # noqa: E731
    plain = fab(threat_cls(eps=math.inf), 0.0)(0, model, x, y)
    # κ = 0 and no overshoot: the reference's rule, points on the boundary (from above)
    assert bool(jnp.all(plain.success)) and float(jnp.median(plain.loss)) < over
    # with κ, a point found at a margin <= κ would be rejected by finalize; FAB's are past it
    res = fab(threat_cls(eps=math.inf, success_margin=kappa), 0.0)(0, model, x, y)
    assert bool(jnp.all(res.success)) and float(jnp.min(res.loss)) > kappa
    # the overshoot: strictly past the boundary by at least the headroom, at a little more norm
    res = fab(threat_cls(eps=math.inf), over)(0, model, x, y)
    assert bool(jnp.all(res.success)) and float(jnp.min(res.loss)) > over
    assert bool(jnp.all(res.norm >= plain.norm * (1 - 1e-3)))
    assert bool(jnp.all(res.norm <= plain.norm * 1.5 + 0.05))
    # FAB-T and targeted searches obey the same threshold (targeted FAB only follows the
    # target's hyperplane, so it gets a 2-class model where no third class gets in the way)
    m2, x2, y2 = _setup(num_classes=2)
    t_res = fab(threat_cls(eps=math.inf, success_margin=kappa), 0.0)(0, m2, x2, y2, target=1 - y2)
    assert bool(jnp.all(t_res.success)) and float(jnp.min(t_res.loss)) > kappa
    fab_t = jaxadv.FAB(
        threat=threat_cls(eps=math.inf, success_margin=kappa), num_steps=30, num_target_classes=2
    )
    ft_res = fab_t(0, model, x, y)
    assert bool(jnp.all(ft_res.success)) and float(jnp.min(ft_res.loss)) > kappa


@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf, "0.1", True])
def test_bad_success_margin_is_refused(bad):
    with pytest.raises(ValueError, match="success_margin"):
        jaxadv.LinfBall(eps=0.1, success_margin=bad)


@pytest.mark.parametrize("bad", [0, 17, "float32", 8.0, True])
def test_bad_grid_is_refused(bad):
    with pytest.raises(ValueError, match="grid"):
        jaxadv.L2Ball(eps=0.1, grid=bad)


def test_grid_names():
    assert grid_bits("uint8") == 8 and grid_bits("UINT16") == 16 and grid_bits(12) == 12
    assert jaxadv.LinfBall(eps=0.1, grid="uint8").grid == 8


# ------------------------------------------------------------------ quantised results
_ATTACKS = {
    "pgd-linf": lambda g: jaxadv.PGD(threat=jaxadv.LinfBall(eps=6 / 255, grid=g), num_steps=8),
    # eps not a multiple of the grid step: rounding to nearest can leave the ball
    "pgd-l2": lambda g: jaxadv.PGD(threat=jaxadv.L2Ball(eps=0.1234, grid=g), num_steps=8),
    "pgd-l1": lambda g: jaxadv.PGD(threat=jaxadv.L1Ball(eps=0.53, grid=g), num_steps=8),
    "fmn-l2": lambda g: jaxadv.FMN(
        threat=jaxadv.L2Ball(eps=math.inf, grid=g, success_margin=1e-3), num_steps=40
    ),
}


_GRID_CASES = [(n, 8) for n in sorted(_ATTACKS)] + [("pgd-l2", 12), ("pgd-linf", 16)]


@pytest.mark.slow
def test_quantised_pixel_attack_on_the_grid():
    model, x, y = _setup(grid=8)
    threat = jaxadv.L0Pixels(eps=2, grid=8)
    res = jaxadv.OnePixel(threat=threat, num_pixels=2, population_size=20, num_generations=3)(
        0, model, x, y
    )
    adv = np.asarray(res.adv)
    np.testing.assert_array_equal(durable.decode(np.round(adv * 255), 8), adv)
    assert bool(jnp.all(threat.contains(x, res.adv))) and bool(jnp.any(res.adv != x))


@pytest.mark.parametrize(("name", "bits"), _GRID_CASES, ids=[f"{n}-{b}" for n, b in _GRID_CASES])
def test_quantised_results_lie_on_the_grid_in_the_set(name, bits):
    model, x, y = _setup(grid=bits)
    attack = _ATTACKS[name](bits)
    res = attack(0, model, x, y)
    adv = np.asarray(res.adv)
    top = 2**bits - 1
    np.testing.assert_array_equal(durable.decode(np.round(adv * top), bits), adv)
    assert bool(jnp.all(attack.threat.contains(x, res.adv)))
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    # success is the verdict on the quantised image itself
    np.testing.assert_array_equal(
        res.success,
        jaxadv.losses.is_adversarial(model(res.adv), y) & (res.loss > 0)
        if attack.threat.success_margin == 0
        else res.loss > attack.threat.success_margin,
    )
    assert bool(jnp.any(res.adv != x))  # the attack did move some images


def test_snap_keeps_unchanged_pixels_and_off_grid_clean_images():
    t = jaxadv.LinfBall(eps=0.1, grid=8)
    x = jnp.full((1, 2, 2, 1), 0.3)  # 0.3 is not k/255
    adv = x.at[0, 0, 0, 0].set(0.35).at[0, 1, 1, 0].set(0.3001)
    s = np.asarray(t.snap(x, adv))
    assert s[0, 0, 1, 0] == np.float32(0.3)  # unchanged: x bit for bit
    # nearest grid values (round(0.35 * 255) = 89, round(0.3001 * 255) = 77): still in the ball
    assert s[0, 0, 0, 0] == np.float32(89) / np.float32(255)
    assert s[0, 1, 1, 0] == np.float32(77) / np.float32(255)
    # a ball too small for the nearest value: towards x, and no grid value between: stays x
    tiny = jaxadv.LinfBall(eps=0.0005, grid=8)
    s = np.asarray(tiny.snap(x, x.at[0, 1, 1, 0].set(0.3001)))
    np.testing.assert_array_equal(s, np.asarray(x))


# ------------------------------------------------------------------ save / load round trip
@pytest.mark.parametrize("fmt", ["npz", "png", "npz16"])
def test_saved_examples_round_trip_exactly_and_keep_success(tmp_path, fmt):
    bits = 16 if fmt == "npz16" else 8
    model, x, y = _setup(grid=bits, n=6)
    threat = jaxadv.LinfBall(eps=8 / 255, grid=bits, success_margin=1e-3)
    res = jaxadv.PGD(threat=threat, num_steps=10)(0, model, x, y)
    assert bool(jnp.any(res.success)) and bool(jnp.any(~res.success))
    path = tmp_path / ("ex.npz" if fmt != "png" else "pngs")
    durable.save_examples(path, x, res.adv, y, threat=threat, success=res.success)
    back = durable.load_examples(path)
    np.testing.assert_array_equal(back["adv"], np.asarray(res.adv))
    np.testing.assert_array_equal(back["clean"], np.asarray(x))
    np.testing.assert_array_equal(back["label"], np.asarray(y))
    np.testing.assert_array_equal(back["success"], np.asarray(res.success))
    again = finalize(threat, model, x, jnp.asarray(back["adv"]), jnp.asarray(back["label"]))
    np.testing.assert_array_equal(again.success, res.success)


def test_save_refuses_off_grid_images(tmp_path):
    model, x, y = _setup(grid=8, n=2)
    with pytest.raises(ValueError, match="grid=8"):
        durable.save_examples(tmp_path / "a.npz", x, x, y, threat=jaxadv.LinfBall(eps=0.1))
    with pytest.raises(ValueError, match="off the 8-bit grid"):
        durable.save_examples(
            tmp_path / "a.npz", x, x + 1e-4, y, threat=jaxadv.LinfBall(eps=0.1, grid=8)
        )
    with pytest.raises(ValueError, match="PNG"):
        durable.save_examples(tmp_path / "p", x, x, y, threat=jaxadv.LinfBall(eps=0.1, grid=12))


# ------------------------------------------------------------------ jit vs eager by an ulp
def test_ulp_model_flips_without_margin_and_not_with_it():
    model = _ulp_model()
    x = jnp.full((1, *SHAPE), 0.2)
    y = jnp.zeros((1,), jnp.int32)
    on_boundary = jnp.full((1, *SHAPE), 0.5)  # eager logits tie at 0.5: not adversarial
    plain = jax.jit(finalize)(jaxadv.L2Ball(eps=math.inf), model, x, on_boundary, y)
    check = durable.recheck(model, plain.adv, y, plain.success)
    assert bool(plain.success[0]) and check["num_flipped"] == 1  # the bug, reproduced
    kappa = jaxadv.L2Ball(eps=math.inf, success_margin=1e-4)
    safe = jax.jit(finalize)(kappa, model, x, on_boundary, y)
    assert not bool(safe.success[0])


@pytest.mark.parametrize("overshoot", [0.0, 1e-3])
def test_with_margin_no_reported_success_is_rejected_eagerly(overshoot):
    model = _ulp_model()
    x = jax.random.uniform(jax.random.key(3), (16, *SHAPE), jnp.float32, 0.1, 0.4)
    y = jnp.zeros((16,), jnp.int32)
    threat = jaxadv.L2Ball(eps=math.inf, success_margin=1e-4)
    res = jaxadv.FMN(threat=threat, num_steps=40, overshoot=overshoot)(0, model, x, y)
    assert bool(jnp.all(res.success))
    for mode in ("eager", "jit"):  # float64 casts model leaves; this wrapper is opaque to it
        assert durable.recheck(model, res.adv, y, res.success, mode=mode)["num_flipped"] == 0


def test_recheck_reports_modes_and_refuses_unknown():
    model, x, y = _setup(n=4)
    res = jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.05), num_steps=5)(0, model, x, y)
    out = durable.recheck(model, res.adv, y, res.success, mode="float64")
    assert out["margin"].dtype == np.float64 and out["mode"] == "float64"
    np.testing.assert_array_equal(out["success"], res.success)
    with pytest.raises(ValueError, match="mode"):
        durable.recheck(model, res.adv, y, res.success, mode="xla")


# ------------------------------------------------------------------ command line
@pytest.mark.slow
def test_cli_success_margin_grid_and_recheck(tmp_path, capsys):
    import json

    from jaxadv.cli import main

    out = tmp_path / "run"
    argv = ["attack", "--num-examples", "8", "--num-steps", "3", "--eps", "0,8", "--quiet"]
    flags = ["--success-margin", "0.5", "--grid", "uint8", "--recheck", "jit"]
    assert main([*argv, *flags, "--out", str(out)]) == 0
    assert "successes flip" in capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    threat = res["manifest"]["attack_config"]["threat"]
    assert threat["success_margin"] == 0.5 and threat["grid"] == 8
    assert res["recheck"]["mode"] == "jit" and res["recheck"]["num_flipped"] == 0
    assert [r["recheck_flips"] for r in res["rows"]] == [0, 0]  # every eps, every example
    assert main([*argv, "--success-margin", "-1", "--out", str(out)]) == 2
    assert "success_margin must be" in capsys.readouterr().err


def test_grid_rounds_away_from_x_when_nearest_loses_the_success():
    """A perturbation below half a grid step rounds back to ``x``; finalize then keeps the
    rounding away from ``x`` (the same direction, one grid step) where that is a success."""
    w = jnp.zeros((16, 2), jnp.float32).at[:, 1].set(1.0 / 16)
    model = _Wrap(params={"w": w, "b": jnp.array([0.4995, 0.0], jnp.float32)})
    x = jnp.full((1, *SHAPE), np.float32(127) / np.float32(255))
    y = jnp.zeros((1,), jnp.int32)
    adv = x + 0.0019  # margin > 0, but every change is below half a step (1/510)
    threat = jaxadv.LinfBall(eps=8 / 255, grid=8)
    np.testing.assert_array_equal(threat.snap(x, adv), x)  # nearest: the attack is undone
    res = jax.jit(finalize)(threat, model, x, adv, y)
    assert bool(res.success[0]) and int(res.queries[0]) == 2
    np.testing.assert_array_equal(res.adv, jnp.full_like(x, np.float32(128) / np.float32(255)))
    # away from x would leave a ball smaller than one step: the nearest result is kept
    small = jaxadv.LinfBall(eps=0.003, grid=8)
    res = jax.jit(finalize)(small, model, x, adv, y)
    assert not bool(res.success[0])
    np.testing.assert_array_equal(res.adv, x)


def test_cli_grid_dataset_is_the_data_sets_bit_depth(tmp_path, capsys):
    """``--grid dataset`` (as a sweep's ``grid: dataset``): the stored images' bit depth; data
    stored as floats give a one-line error."""
    import json

    from jaxadv.cli import main

    out = tmp_path / "run"
    argv = ["attack", "--attack", "fgsm", "--num-examples", "4", "--eps", "8", "--quiet"]
    assert main([*argv, "--grid", "dataset", "--out", str(out)]) == 0
    threat = json.loads((out / "results.json").read_text())["manifest"]["attack_config"]["threat"]
    assert threat["grid"] == 8  # the embedded PneumoniaMNIST images are stored as uint8
    float_images_npz(tmp_path / "floats.npz")
    floats = ["--data", str(tmp_path / "floats.npz"), "--grid", "dataset"]
    assert main([*argv, *floats, "--out", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert "not stored as uint8/uint16 images (float32)" in err and "Traceback" not in err
    assert main([*argv, "--grid", "float32", "--out", str(tmp_path / "g")]) == 2
    assert "or 'dataset'" in capsys.readouterr().err


# ------------------------------------------------------------------ re-check inside evaluate
@pytest.mark.parametrize("cascade", [False, True])
def test_evaluate_recheck_counts_every_flip_and_none_with_margin(cascade):
    """FGSM steps 0.375 -> 0.5 exactly, where only the jitted logits of the ulp model say
    class 1: every reported success flips when re-checked eagerly, none under a margin."""
    model = _ulp_model()
    x, y = np.full((6, *SHAPE), 0.375, np.float32), np.zeros(6, np.int32)

    def run(kappa, mode):
        attack = jaxadv.FGSM(threat=jaxadv.LinfBall(eps=0.0, success_margin=kappa))
        kw = {"key": 0, "batch_size": 4, "cascade": cascade, "recheck": mode}
        return jaxadv.evaluate(attack, model, (x, y), [0.0, 0.125], **kw)

    ev = run(0.0, "eager")
    assert ev.recheck == "eager" and ev.per_eps["recheck_flipped"].shape == (2, 6)
    assert ev.per_eps["success"][1].all()  # reported inside the attack's program
    assert [r["recheck_flips"] for r in ev.summary()] == [0, 6]
    assert [r["recheck_flips"] for r in run(0.0, "jit").summary()] == [0, 0]  # traced: ulp too
    safe = run(1e-4, "eager")
    assert not safe.per_eps["success"].any()
    assert [r["recheck_flips"] for r in safe.summary()] == [0, 0]
    plain = jaxadv.evaluate(
        jaxadv.FGSM(threat=jaxadv.LinfBall(eps=0.0)), model, (x, y), [0.1], key=0
    )
    assert plain.recheck is None and "recheck_flips" not in plain.summary()[0]


def test_evaluate_refuses_an_unknown_recheck_mode():
    model, x, y = _setup(n=2)
    with pytest.raises(ValueError, match="recheck must be one of eager, jit, float64"):
        jaxadv.evaluate(None, model, (x, y), [0.0], key=0, recheck="xla")
