"""Physical and universal perturbations: the warp, EOT, the adversarial patch, the universal
perturbation and the bias field (issue 14)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndi
from conftest import linear_model

import jaxadv
from jaxadv.attacks.bias import BiasField, BiasFieldThreat, field_basis
from jaxadv.attacks.eot import EOT, RandomAffine
from jaxadv.attacks.patch import AdversarialPatch, FittedPatch, render_patch
from jaxadv.attacks.universal import UniversalPerturbation, load_fitted
from jaxadv.warp import affine_warp, place


# ----------------------------------------------------------------------------------------- warp
@pytest.mark.parametrize("angle,zoom,offset", [(0.4, 1.3, (1.2, -0.7)), (-2.0, 0.6, (3.0, 2.5))])
def test_warp_matches_scipy_affine_transform(angle, zoom, offset):
    rng = np.random.default_rng(0)
    img = rng.random((9, 11, 2)).astype(np.float32)
    c, s = np.cos(angle), np.sin(angle)
    m = np.array([[c, s], [-s, c]]) / zoom
    ref = np.stack(
        [
            ndi.affine_transform(
                img[..., k].astype(np.float64),
                m,
                np.asarray(offset),
                output_shape=(7, 12),
                order=1,
                mode="grid-constant",
            )
            for k in range(2)
        ],
        axis=-1,
    )
    out = affine_warp(jnp.asarray(img), jnp.asarray(m, jnp.float32), jnp.asarray(offset), (7, 12))
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)


def test_warp_is_identity_at_rotation_0_scale_1_and_differentiable():
    img = jax.random.uniform(jax.random.key(0), (6, 5, 3))
    centre = jnp.asarray([2.5, 2.0])
    np.testing.assert_array_equal(np.asarray(place(img, 0.0, 1.0, centre, (6, 5))), img)
    grad = jax.jit(
        jax.grad(lambda a: jnp.sum(place(img, a, jnp.float32(1.1), centre, (6, 5)) ** 2))
    )
    g = grad(jnp.float32(0.1))
    assert np.isfinite(float(g)) and float(g) != 0.0


# ------------------------------------------------------------------------------------------ EOT
def test_eot_identity_transform_equals_the_plain_attack_and_is_deterministic():
    model = linear_model(3, (4, 4, 1))
    x = jax.random.uniform(jax.random.key(1), (5, 4, 4, 1))
    y = jnp.argmax(model(x), axis=1)
    pgd = jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.05), num_steps=3, random_start=False)
    eot = EOT(attack=pgd, transform=lambda k, z: z, num_samples=3)
    a, b = eot(0, model, x, y), pgd(0, model, x, y)
    np.testing.assert_allclose(np.asarray(a.adv), np.asarray(b.adv), atol=1e-6)
    assert np.all(np.asarray(a.queries) == 1 + (np.asarray(b.queries) - 1) * 4)
    rnd = EOT(attack=pgd, transform=RandomAffine(rotation_max=20.0), num_samples=4)
    r1, r2 = rnd(7, model, x, y), rnd(7, model, x, y)
    np.testing.assert_array_equal(np.asarray(r1.adv), np.asarray(r2.adv))
    assert np.all(np.asarray(r1.norm) <= 0.05 + 1e-6)


def test_eot_attacks_the_expectation_over_a_random_flip():
    """A defence that flips its input left-right with probability 1/2. Row weights ``[2, 1, -1,
    0]`` average to ``[1, 0, 0, 1]`` under the flip: the last column matters to the defence,
    though plain PGD sees a zero gradient there; EOT moves it by the full budget."""
    w = jnp.tile(jnp.asarray([2.0, 1.0, -1.0, 0.0]), 4)

    def flip(keys, z):
        f = jax.vmap(lambda k: jax.random.bernoulli(k))(keys)
        return jnp.where(f[:, None, None, None], z[:, :, ::-1], z)

    model = jaxadv.from_apply(
        lambda w, z: jnp.stack([z.reshape(z.shape[0], -1) @ w, jnp.zeros(z.shape[0])], 1), w
    )
    x = jnp.full((4, 4, 4, 1), 0.5)
    y = jnp.zeros(4, jnp.int32)
    pgd = jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.2), num_steps=3, random_start=False)
    plain = pgd(0, model, x, y)
    res = EOT(attack=pgd, transform=flip, num_samples=8)(0, model, x, y)
    np.testing.assert_array_equal(np.asarray(plain.adv[:, :, 3]), 0.5)
    np.testing.assert_allclose(np.asarray(res.adv[:, :, 3]), 0.3, atol=1e-6)


def test_eot_gradient_is_the_mean_of_the_sampled_gradients():
    """EOTModel's gradient equals the average of per-draw gradients computed by hand, for a
    transform and for a RandomizedModel's own noise."""
    from jaxadv import losses as L
    from jaxadv._batch import input_hash
    from jaxadv.attacks.autoattack import RandomizedModel
    from jaxadv.attacks.base import example_keys, fold_keys
    from jaxadv.attacks.eot import EOTModel
    from jaxadv.attacks.gradient import loss_grad

    def apply(w, z, keys):
        noise = jax.vmap(lambda k: jax.random.normal(k, (3,)))(keys)
        return z.reshape(z.shape[0], -1) @ w + noise

    w = jax.random.normal(jax.random.key(4), (16, 3))
    rnd = RandomizedModel(apply=apply, params=w, key=jax.random.key(7))
    x = jax.random.uniform(jax.random.key(1), (3, 4, 4, 1))
    y = jnp.array([0, 1, 2])
    keys = example_keys(jax.random.key(2), 3)
    shift = lambda k, z: z + jax.vmap(lambda kk: jax.random.uniform(kk))(k)[:, None, None, None]
    m = EOTModel(
        model=rnd, transform=jaxadv.attacks.eot.as_transform(shift), keys=keys, num_samples=5
    )
    g, _, _ = jax.jit(lambda m, z: loss_grad(m, L.ce, z, y))(m, x)
    h = input_hash(x)

    def one_draw(s):  # the gradient of draw s alone
        k = jax.vmap(lambda kk, v: jax.random.fold_in(jax.random.fold_in(kk, s), v))(keys, h)
        f = lambda z: jnp.sum(L.ce(rnd.sample(shift(k, z), fold_keys(k, 1)), y))  # noqa: E731
        return jax.grad(f)(x)

    grads = jax.jit(jax.vmap(one_draw))(jnp.arange(5, dtype=jnp.uint32))
    np.testing.assert_allclose(
        np.asarray(g), np.asarray(jnp.mean(grads, axis=0)), rtol=1e-5, atol=1e-6
    )
    # the draws differ (else averaging would be a no-op)
    assert float(jnp.max(jnp.abs(grads[0] - grads[1]))) > 1e-4


def test_eot_rejects_bad_settings():
    pgd = jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.1))
    with pytest.raises(ValueError, match="num_samples"):
        EOT(attack=pgd, transform=RandomAffine(), num_samples=0)
    with pytest.raises(TypeError, match="gradient attack"):
        EOT(attack=jaxadv.Square(threat=jaxadv.LinfBall(eps=0.1)), transform=RandomAffine())
    with pytest.raises(ValueError, match="scale_min"):
        RandomAffine(scale_min=1.2, scale_max=1.1)


# ---------------------------------------------------------------------------------------- patch
# A planted trigger: the model answers class 1 when a 2x2-block checkerboard (8x8 pixels) appears
# anywhere (max over positions of its correlation with the image), class 0 on smooth images.
TRIGGER = np.kron(np.indices((4, 4)).sum(0) % 2 * 2 - 1, np.ones((2, 2))).astype(np.float32)


def _trigger_apply(w, x):
    r = jax.lax.conv_general_dilated(
        x, w[:, :, None, None], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    s = jnp.max(r.reshape(x.shape[0], -1), axis=1)
    return jnp.stack([jnp.zeros_like(s), 0.5 * (s - 9.0)], axis=1)


def _smooth_images(n, seed):
    z = np.random.default_rng(seed).random((n, 4, 4, 1)).astype(np.float32)
    return np.kron(z, np.ones((1, 4, 4, 1), np.float32))


@pytest.fixture(scope="module")
def trigger_fit():
    model = jaxadv.from_apply(_trigger_apply, jnp.asarray(TRIGGER))
    x = _smooth_images(256, 0)
    y = np.zeros(256, np.int32)
    attack = AdversarialPatch(
        target=1,
        patch_size=8,
        shape="square",
        scale_min=0.5,
        scale_max=0.5,
        rotation_max=10.0,
        learning_rate=0.1,
        batch_size=32,
        num_epochs=4,
    )
    fitted = attack.fit(jax.random.key(0), model, (x[:192], y[:192]))
    return model, attack, fitted, x[192:], y[192:]


@pytest.mark.slow
def test_patch_finds_a_planted_trigger(trigger_fit):
    model, attack, fitted, x, y = trigger_fit
    assert not np.any(np.asarray(jnp.argmax(model(x), axis=1)))  # clean: all class 0
    res = fitted(jax.random.key(1), model, x, y)
    assert float(jnp.mean(res.success)) >= 0.9
    # an unfitted (random) patch does not trigger it: the fit found the pattern
    rand = FittedPatch(attack=attack, patch=jax.random.uniform(jax.random.key(5), (8, 8, 1)))
    assert float(jnp.mean(rand(jax.random.key(1), model, x, y).success)) < 0.1
    # success recomputed on adv, with the per-example transform in info
    np.testing.assert_array_equal(
        np.asarray(res.success), np.asarray(jnp.argmax(model(res.adv), axis=1) == 1)
    )
    assert res.info["angle"].shape == (64,) and res.info["center"].shape == (64, 2)
    np.testing.assert_allclose(np.asarray(res.info["area"]), 0.25, rtol=1e-6)
    assert float(jnp.max(jnp.abs(res.info["angle"]))) <= np.deg2rad(10.0) + 1e-6
    # adv is exactly the library's rendering of the patch with those parameters, in the box
    again = render_patch(
        jnp.asarray(x),
        fitted.patch,
        fitted.mask,
        res.info["angle"],
        res.info["scale"],
        res.info["center"],
    )
    np.testing.assert_allclose(np.asarray(res.adv), np.asarray(again), atol=1e-5)
    assert float(res.adv.min()) >= 0.0 and float(res.adv.max()) <= 1.0


@pytest.mark.slow
def test_patch_is_deterministic_by_key_and_saves(trigger_fit, tmp_path):
    model, attack, fitted, x, y = trigger_fit
    a = fitted(3, model, x[:8], y[:8])
    b = fitted(3, model, x[:8], y[:8])
    np.testing.assert_array_equal(np.asarray(a.adv), np.asarray(b.adv))
    # an ordinary attack: sharded over the 8 fake devices (batch 13 pads) equals unsharded
    from jaxadv.sharding import attack_sharded

    c = attack_sharded(fitted, jax.random.key(3), model, jnp.asarray(x[:13]), jnp.asarray(y[:13]))
    np.testing.assert_allclose(np.asarray(c.adv), np.asarray(fitted(3, model, x[:13], y[:13]).adv))
    fixed = fitted(3, model, x[:8], y[:8], scale=0.25)
    np.testing.assert_allclose(np.asarray(fixed.info["scale"]), 0.25)
    fitted.save(tmp_path / "patch")
    assert (tmp_path / "patch.png").exists()
    back = load_fitted(tmp_path / "patch.npz")
    assert isinstance(back, FittedPatch) and back.attack == attack
    np.testing.assert_array_equal(np.asarray(back.patch), np.asarray(fitted.patch))


@pytest.mark.slow
def test_patch_fit_same_key_same_patch_and_sharded_equals_unsharded():
    model = jaxadv.from_apply(_trigger_apply, jnp.asarray(TRIGGER))
    x, y = _smooth_images(32, 1), np.zeros(32, np.int32)
    attack = AdversarialPatch(target=1, patch_size=6, batch_size=16, num_epochs=1, scale_max=0.5)
    one_dev = jax.make_mesh((1,), ("batch",), devices=jax.devices()[:1])
    a = attack.fit(0, model, (x, y), mesh=one_dev)
    b = attack.fit(0, model, (x, y))  # 8 fake devices: the batch of 16 is sharded
    c = attack.fit(0, model, (x, y), mesh=one_dev)
    np.testing.assert_array_equal(np.asarray(a.patch), np.asarray(c.patch))
    np.testing.assert_allclose(np.asarray(a.patch), np.asarray(b.patch), atol=1e-5)
    assert float(a.patch.min()) >= 0.0 and float(a.patch.max()) <= 1.0


def test_patch_disguise_bound_holds():
    model = jaxadv.from_apply(_trigger_apply, jnp.asarray(TRIGGER))
    x, y = _smooth_images(16, 2), np.zeros(16, np.int32)
    p0 = jnp.full((6, 6, 1), 0.5)
    attack = AdversarialPatch(
        target=1,
        disguise=p0,
        disguise_eps=0.1,
        batch_size=8,
        num_epochs=1,
        scale_max=0.5,
        eot_samples=2,
    )
    seen = []
    fitted = attack.fit(0, model, (x, y), progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 2), (2, 2)]
    assert float(jnp.max(jnp.abs(fitted.patch - p0))) <= 0.1 + 1e-6


def test_patch_disguise_penalty_pulls_the_patch_towards_p0():
    model = jaxadv.from_apply(_trigger_apply, jnp.asarray(TRIGGER))
    x, y = _smooth_images(16, 2), np.zeros(16, np.int32)
    p0 = jnp.full((6, 6, 1), 0.5)

    def fit(weight):
        attack = AdversarialPatch(
            target=1,
            disguise=p0,
            disguise_weight=weight,
            batch_size=8,
            num_epochs=2,
            scale_max=0.5,
            learning_rate=0.1,
        )
        return attack, attack.fit(0, model, (x, y))

    free_atk, free = fit(0.0)
    tied_atk, tied = fit(50.0)
    d_free = float(free_atk.disguise_distance(free.patch))
    d_tied = float(tied_atk.disguise_distance(tied.patch))
    assert np.all(np.isfinite(np.asarray(tied.patch)))  # no NaN gradient at p == p0
    assert d_free > 0.05 and d_tied < 0.5 * d_free
    assert float(tied_atk.disguise_distance(p0)) == 0.0
    # the penalty needs a disguise image, and is >= 0
    with pytest.raises(ValueError, match="disguise_weight"):
        AdversarialPatch(disguise_weight=1.0, batch_size=8, num_epochs=1).fit(0, model, (x, y))
    with pytest.raises(ValueError, match="disguise_weight"):
        AdversarialPatch(disguise=p0, disguise_weight=-1.0)


def test_patch_bad_settings_raise_before_fitting():
    model = jaxadv.from_apply(_trigger_apply, jnp.asarray(TRIGGER))
    x, y = _smooth_images(16, 3), np.zeros(16, np.int32)
    with pytest.raises(ValueError, match="out of range"):
        AdversarialPatch(target=2, batch_size=8, num_epochs=1).fit(0, model, (x, y))
    with pytest.raises(ValueError, match="larger than the image"):
        AdversarialPatch(scale_max=1.5)
    with pytest.raises(ValueError, match="shape"):
        AdversarialPatch(shape="triangle")
    with pytest.raises(ValueError, match="batch_size"):
        AdversarialPatch(batch_size=64).fit(0, model, (x, y))
    with pytest.raises(TypeError, match="Dataset"):
        AdversarialPatch(batch_size=8).fit(0, model, x)


# ---------------------------------------------------------------------------------------- UAP
@pytest.mark.parametrize("threat", [jaxadv.LinfBall(eps=0.1), jaxadv.L2Ball(eps=0.8)])
def test_universal_perturbation_in_ball_fools_and_resumes(threat, tmp_path):
    model = linear_model(3, (6, 6, 1))
    x = np.asarray(jax.random.uniform(jax.random.key(2), (96, 6, 6, 1)))
    y = np.asarray(jnp.argmax(model(x), axis=1))
    uap = UniversalPerturbation(threat=threat, batch_size=32, num_epochs=2)
    fitted = uap.fit(0, model, (x[:64], y[:64]))
    res = fitted(0, model, x[64:], y[64:])
    assert np.all(np.asarray(threat.contains(jnp.asarray(x[64:]), res.adv)))
    assert float(jnp.max(res.norm)) <= float(threat.eps) * (1 + 1e-5)
    # held-out fooling rate beats the zero perturbation (0 by construction: y = clean prediction)
    assert float(jnp.mean(res.info["fooled"])) > 0.0
    np.testing.assert_array_equal(np.asarray(res.success), np.asarray(res.info["fooled"]))
    # resume: one epoch checkpointed, a second call finishes the fit identically
    ck = tmp_path / "uap.npz"
    UniversalPerturbation(threat=threat, batch_size=32, num_epochs=1).fit(
        0, model, (x[:64], y[:64]), checkpoint=ck
    )
    resumed = uap.fit(0, model, (x[:64], y[:64]), checkpoint=ck)
    np.testing.assert_allclose(np.asarray(resumed.delta), np.asarray(fitted.delta), atol=1e-6)
    fitted.save(tmp_path / "uap")
    back = load_fitted(tmp_path / "uap.npz")
    np.testing.assert_array_equal(np.asarray(back.delta), np.asarray(fitted.delta))


def test_universal_perturbation_rejects_other_threats():
    with pytest.raises(TypeError, match="LinfBall"):
        UniversalPerturbation(threat=jaxadv.L1Ball(eps=1.0))
    with pytest.raises(ValueError, match="num_epochs"):
        UniversalPerturbation(threat=jaxadv.LinfBall(eps=0.1), num_epochs=0)


# ---------------------------------------------------------------------------------- bias field
def _brightness_model():
    w = jnp.linspace(0.0, 2.0, 64)

    def apply(w, x):
        m = jnp.mean(x.reshape(x.shape[0], -1) * w[None, :], axis=1)
        return jnp.stack([m - 0.5, 0.5 - m], 1) * 10.0

    return jaxadv.from_apply(apply, w)


def test_bias_field_zero_coefficients_are_the_identity():
    t = BiasFieldThreat(degree=4, eps=0.3, noise_eps=0.05)
    x = jax.random.uniform(jax.random.key(0), (3, 5, 7, 2))
    np.testing.assert_array_equal(np.asarray(t.render(x, t.zeros(x.shape))), np.asarray(x))
    assert field_basis(4, 5, 7).shape == (15, 5, 7)
    x = jnp.full((2, 8, 8, 1), 0.4)
    res = BiasField(threat=BiasFieldThreat(degree=2, eps=0.0), num_steps=2)(
        0, _brightness_model(), x, jnp.array([0, 1])
    )
    np.testing.assert_array_equal(np.asarray(res.adv), np.asarray(x))


@pytest.mark.parametrize("eps,noise_eps", [(0.2, 0.0), (0.5, 0.02)])
def test_bias_field_results_lie_in_the_threat_and_success_is_recomputed(eps, noise_eps):
    model = _brightness_model()
    x = jax.random.uniform(jax.random.key(2), (16, 8, 8, 1), minval=0.3, maxval=0.7)
    y = jnp.argmax(model(x), axis=1)
    threat = BiasFieldThreat(degree=3, eps=eps, noise_eps=noise_eps)
    atk = BiasField(threat=threat, num_steps=10)
    res = atk(0, model, x, y)
    assert float(jnp.mean(res.success)) >= 0.5
    # smoothness bound: the rendered field's amplitude is within eps for every example
    amp = jnp.max(jnp.abs(res.info["field"]).reshape(16, -1), axis=1)
    assert np.all(np.asarray(amp) <= eps * (1 + 1e-5))
    np.testing.assert_allclose(np.asarray(res.norm), np.asarray(amp), rtol=1e-6)
    assert np.all(np.asarray(res.info["noise_max"]) <= noise_eps + 1e-7)
    assert float(res.adv.min()) >= 0.0 and float(res.adv.max()) <= 1.0
    # adv is the rendering of the reported parameters (the attack cannot report another image)
    assert np.all(np.asarray(res.info["ssim"]) <= 1.0 + 1e-6)
    if noise_eps == 0.0:
        params = {"coef": res.info["coef"], "noise": jnp.zeros_like(x)}
        np.testing.assert_allclose(np.asarray(threat.render(x, params)), np.asarray(res.adv))
    np.testing.assert_array_equal(
        np.asarray(res.success), np.asarray(jnp.argmax(model(res.adv), axis=1) != y)
    )
    again = atk(0, model, x, y)
    np.testing.assert_array_equal(np.asarray(res.adv), np.asarray(again.adv))


@pytest.mark.slow
def test_bias_field_sharded_equals_unsharded():
    from jaxadv.sharding import attack_sharded

    model = _brightness_model()
    x = jax.random.uniform(jax.random.key(3), (10, 8, 8, 1), minval=0.3, maxval=0.7)
    y = jnp.argmax(model(x), axis=1)
    atk = BiasField(threat=BiasFieldThreat(degree=2, eps=0.3), num_steps=4)
    a, b = atk(0, model, x, y), attack_sharded(atk, jax.random.key(0), model, x, y)
    np.testing.assert_allclose(np.asarray(a.adv), np.asarray(b.adv), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(a.success), np.asarray(b.success))


def test_bias_field_bad_settings():
    with pytest.raises(ValueError, match="degree"):
        BiasFieldThreat(degree=-1)
    with pytest.raises(ValueError, match="eps"):
        BiasFieldThreat(eps=-0.1)
    with pytest.raises(TypeError, match="BiasFieldThreat"):
        BiasField(threat=jaxadv.LinfBall(eps=0.1))
    with pytest.raises(ValueError, match="num_steps"):
        BiasField(threat=BiasFieldThreat(), num_steps=0)


# ---------------------------------------------------------------------------------- command line
@pytest.mark.slow
def test_cli_attack_bias_field(tmp_path, capsys):
    import json

    from jaxadv.cli import main

    base = ["attack", "--attack", "bias-field", "--num-examples", "32", "--batch-size", "32"]
    out = tmp_path / "run"
    argv = [*base, "--num-steps", "5", "--eps", "0,0.4", "--option", "degree=2", "--out", str(out)]
    assert main([*argv, "--quiet"]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["eps"] for r in rows] == [0.0, 0.4]
    assert rows[1]["robust_accuracy"] < rows[0]["robust_accuracy"]  # the field breaks some
    assert rows[1]["norm_mean"] <= 0.4 + 1e-6 and rows[1]["ssim_mean"] < 1.0
    for bad, msg in [
        (["--eps", "0,8"], "log-amplitudes"),
        (["--option", "degree=-1"], "degree"),
        (["--restarts", "2"], "has no restarts"),
        (["--norm", "linf"], "supports norm bias"),
    ]:
        assert main([*base, *bad, "--quiet", "--out", str(tmp_path / "x")]) == 2
        assert msg in capsys.readouterr().err
