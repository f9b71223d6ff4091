"""Transfer attacks (MI-FGSM with NI / DI / TI, ``transfer``) and pre-processing defences (JPEG,
bit depth, median filter, Gaussian blur, random resize-and-pad, BPDA), each against an
independent reference."""

from __future__ import annotations

import io
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as nd
from conftest import linear_model
from flax import nnx
from PIL import Image
from scipy import stats

import jaxadv
from jaxadv import defences as D
from jaxadv import image_ops as T
from jaxadv.losses import ce

SHAPE = (8, 8, 1)


def _mlp(num_classes=3, shape=SHAPE, seed=0):
    d = int(np.prod(shape))
    k = jax.random.split(jax.random.key(seed), 2)
    p = {
        "w1": jax.random.normal(k[0], (d, 16), jnp.float32) / 2.0,
        "w2": jax.random.normal(k[1], (16, num_classes), jnp.float32) / 2.0,
    }
    return jaxadv.from_apply(_mlp_apply, p)


def _mlp_apply(p, x):
    return jnp.tanh(x.reshape(x.shape[0], -1) @ p["w1"]) @ p["w2"]


def _data(model, n=6, shape=SHAPE, seed=1):
    x = jax.random.uniform(jax.random.key(seed), (n, *shape), jnp.float32)
    return x, jnp.argmax(model(x), axis=1).astype(jnp.int32)


def _assert_same(a, b, *, atol=0.0):
    np.testing.assert_allclose(a.adv, b.adv, atol=atol, rtol=0)
    np.testing.assert_array_equal(a.success, b.success)
    np.testing.assert_allclose(a.loss, b.loss, atol=max(atol, 1e-6) * 100)


# ------------------------------------------------------------------------------- MI-FGSM
@pytest.mark.parametrize(
    ("threat", "targeted"), [(jaxadv.LinfBall(eps=0.1), False), (jaxadv.L2Ball(eps=0.6), True)]
)
def test_mifgsm_without_momentum_is_ifgsm(threat, targeted):
    """decay=0: the momentum is the normalised gradient, whose ascent step is I-FGSM's; the
    attack then equals PGD without a random start and with the same step, point for point."""
    model = _mlp()
    x, y = _data(model)
    tgt = (y + 1) % 3 if targeted else None
    kw = {"threat": threat, "num_steps": 5, "step_size": threat.eps / 4}
    mi = jaxadv.MIFGSM(decay=0.0, **kw)(jax.random.key(0), model, x, y, target=tgt)
    ifgsm = jaxadv.PGD(random_start=False, **kw)(jax.random.key(0), model, x, y, target=tgt)
    _assert_same(mi, ifgsm, atol=0.0 if threat.p == np.inf else 1e-6)
    np.testing.assert_array_equal(mi.queries, ifgsm.queries)
    # momentum is not a no-op on a non-linear model
    mom = jaxadv.MIFGSM(decay=1.0, **kw)(jax.random.key(0), model, x, y, target=tgt)
    assert float(jnp.max(jnp.abs(mom.adv - mi.adv))) > 1e-3


def test_ti_with_a_delta_kernel_is_the_plain_step():
    """A TI kernel whose Gaussian is far narrower than a tap is the delta: same attack as no TI
    (the smoothing path runs: 5 taps)."""
    model = _mlp()
    x, y = _data(model)
    kw = {"threat": jaxadv.LinfBall(eps=0.1), "num_steps": 4}
    plain = jaxadv.MIFGSM(**kw)(0, model, x, y)
    delta = jaxadv.MIFGSM(translation=5, translation_nsig=1e4, **kw)(0, model, x, y)
    _assert_same(plain, delta)
    smooth = jaxadv.MIFGSM(translation=5, **kw)(0, model, x, y)
    assert float(jnp.max(jnp.abs(smooth.adv - plain.adv))) > 1e-3


def test_ti_kernel_and_filter_match_the_reference():
    """TI's kernel is the reference's normalised ``norm.pdf(linspace(-nsig, nsig, size))``; the
    filter is a zero-padded per-channel correlation with its outer product."""
    size, nsig = 7, 3.0
    k1 = T.gaussian_kernel1d(size, (size - 1) / (2 * nsig))
    ref = stats.norm.pdf(np.linspace(-nsig, nsig, size))
    np.testing.assert_allclose(k1, ref / ref.sum(), rtol=1e-5)
    g = np.asarray(jax.random.normal(jax.random.key(0), (2, 9, 9, 2)))
    out = np.asarray(T.separable_filter(jnp.asarray(g), k1, mode="constant"))
    k2 = np.outer(k1, k1)[None, :, :, None]
    np.testing.assert_allclose(out, nd.correlate(g, k2, mode="constant"), atol=1e-5)


def test_di_plumbing_and_resize_pad():
    model = _mlp()
    x, y = _data(model)
    kw = {"threat": jaxadv.LinfBall(eps=0.1), "num_steps": 4}
    plain = jaxadv.MIFGSM(**kw)(0, model, x, y)
    # probability 0 never transforms; probability 1 at ratio 1 transforms by the identity
    never = jaxadv.MIFGSM(diversity=0.0, **kw)(0, model, x, y)
    ident = jaxadv.MIFGSM(diversity=1.0, diversity_ratio=1.0, **kw)(0, model, x, y)
    _assert_same(never, plain)
    _assert_same(ident, plain, atol=1e-6)
    di = jaxadv.MIFGSM(diversity=1.0, diversity_ratio=1.5, **kw)(0, model, x, y)
    assert float(jnp.max(jnp.abs(di.adv - plain.adv))) > 1e-3
    np.testing.assert_array_equal(di.queries, 2 * 4 + 2)  # gradient + scoring per step, + 2
    # resize_pad: half size at offset (1, 1) is the 2x2-average image inside a zero frame
    img = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    out = np.asarray(T.resize_pad(jnp.asarray(img), jnp.asarray([0.5]), jnp.asarray([[1.0, 1.0]])))
    ref = np.zeros((4, 4))
    ref[1:3, 1:3] = img[0, :, :, 0].reshape(2, 2, 2, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(out[0, :, :, 0], ref, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("threat", [jaxadv.LinfBall(eps=0.05), jaxadv.L2Ball(eps=0.5)])
def test_mi_di_ti_ni_composed_is_honest(threat):
    model = _mlp()
    x, y = _data(model, n=8)
    atk = jaxadv.MIFGSM(threat=threat, num_steps=4, nesterov=True, diversity=0.7, translation=3)
    res = atk(jax.random.key(2), model, x, y)
    assert bool(jnp.all(threat.contains(x, res.adv)))
    np.testing.assert_array_equal(res.success, jnp.argmax(model(res.adv), axis=1) != y)
    again = atk(jax.random.key(2), model, x, y)
    np.testing.assert_array_equal(res.adv, again.adv)
    ni = jaxadv.MIFGSM(threat=threat, num_steps=4, nesterov=True)(0, model, x, y)
    mi = jaxadv.MIFGSM(threat=threat, num_steps=4)(0, model, x, y)
    assert float(jnp.max(jnp.abs(ni.adv - mi.adv))) > 1e-4


def test_mifgsm_settings_refused():
    with pytest.raises(ValueError, match="odd"):
        jaxadv.MIFGSM(threat=jaxadv.LinfBall(eps=0.1), translation=4)
    with pytest.raises(ValueError, match="diversity"):
        jaxadv.MIFGSM(threat=jaxadv.LinfBall(eps=0.1), diversity=1.5)
    with pytest.raises(TypeError, match="L1Ball"):
        jaxadv.MIFGSM(threat=jaxadv.L1Ball(eps=0.1))


# ------------------------------------------------------------------------------ transfer
def test_transfer_with_surrogate_equal_target_is_the_white_box_attack():
    model = _mlp()
    x, y = _data(model)
    atk = jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.05), num_steps=4)
    white = atk(jax.random.key(1), model, x, y)
    tr = jaxadv.transfer(atk, model, model, jax.random.key(1), x, y)
    _assert_same(tr, white)
    np.testing.assert_array_equal(tr.norm, white.norm)
    np.testing.assert_array_equal(tr.queries, 1)  # the target is only evaluated
    np.testing.assert_array_equal(tr.info["surrogate_success"], white.success)
    np.testing.assert_array_equal(tr.info["surrogate_queries"], white.queries)
    # an ensemble of copies has the same averaged logits
    ens = jaxadv.transfer(atk, [model, model], model, jax.random.key(1), x, y)
    _assert_same(ens, white, atol=1e-6)


@pytest.mark.slow
def test_transfer_attack_value_through_the_engine():
    """``Transfer`` goes through ``jaxadv.evaluate`` (the sweep's path): with surrogate == target
    the per-example results equal the white-box evaluation's (queries aside), and another
    surrogate gives exactly ``transfer()`` at each eps."""
    model, other = _mlp(), _mlp(seed=5)
    x, y = _data(model, n=6)
    pgd = jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.0), num_steps=3)  # random start: keys matter
    grid = [0.0, 0.05, 0.2]
    white = jaxadv.evaluate(pgd, model, (x, y), grid, key=3, batch_size=4)
    diag = jaxadv.evaluate(jaxadv.Transfer(attack=pgd, surrogate=model), model, (x, y), grid, key=3)
    for k in ("success", "norm", "margin", "l2", "linf"):
        np.testing.assert_array_equal(diag.per_eps[k], white.per_eps[k], err_msg=k)
    np.testing.assert_array_equal(diag.per_eps["queries"][1:], 1)  # the target evaluates once
    ev = jaxadv.evaluate(jaxadv.Transfer(attack=pgd, surrogate=other), model, (x, y), grid, key=3)
    for j, e in enumerate(grid[1:], start=1):
        res = jaxadv.transfer(pgd.with_eps(e), other, model, 3, x, y)
        np.testing.assert_array_equal(ev.per_eps["success"][j], np.asarray(res.success))


@pytest.mark.slow
def test_transfer_is_judged_on_the_target():
    target = _mlp(seed=0)
    surrogate = _mlp(seed=5)
    x, y = _data(target, n=12)
    atk = jaxadv.MIFGSM(threat=jaxadv.LinfBall(eps=0.3), num_steps=5)
    res = jaxadv.transfer(atk, surrogate, target, 0, x, y)
    np.testing.assert_array_equal(res.success, jnp.argmax(target(res.adv), axis=1) != y)
    surr = np.asarray(jnp.argmax(surrogate(res.adv), axis=1) != y)
    np.testing.assert_array_equal(res.info["surrogate_success"], surr)
    assert not np.array_equal(np.asarray(res.success), surr)  # two different models
    tgt = (y + 1) % 3
    t = jaxadv.transfer(atk, target, target, 0, x, y, target_labels=tgt)
    np.testing.assert_array_equal(t.success, jnp.argmax(target(t.adv), axis=1) == tgt)


# ------------------------------------------------------------------- surrogate from queries
class _Net(nnx.Module):
    """A one-hidden-layer NNX classifier on 8x8x1 images (fast to compile)."""

    def __init__(self, num_classes=3, *, rngs):
        self.l1 = nnx.Linear(64, 32, rngs=rngs)
        self.l2 = nnx.Linear(32, num_classes, rngs=rngs)

    def __call__(self, x):
        return self.l2(jnp.tanh(self.l1(x.reshape(x.shape[0], -1))))


def _centred_apply(p, x):
    return _mlp_apply(p, x - 0.5)


@pytest.fixture(scope="module")
def queried():
    # inputs centred: the three classes are about equally frequent on uniform images
    target = jaxadv.from_apply(_centred_apply, _mlp().params)
    pool = np.asarray(jax.random.uniform(jax.random.key(3), (600, *SHAPE)))
    held = np.asarray(jax.random.uniform(jax.random.key(4), (300, *SHAPE)))
    run = {
        b: jaxadv.surrogate_from_queries(
            7, target, _Net(rngs=nnx.Rngs(0)), pool, budget=b, epochs=30, batch_size=32,
            learning_rate=3e-3, eval_x=held,
        )
        for b in (20, 500)
    }  # fmt: skip
    return target, pool, held, run


@pytest.mark.slow  # trains three small surrogates (~2 min on 2 loaded cores)
def test_surrogate_from_queries_learns_the_target_and_counts_queries(queried):
    target, pool, held, run = queried
    small, big = run[20], run[500]
    assert (small.queries, big.queries) == (20, 500)
    assert small.eval_queries == big.eval_queries == 300
    assert sum(big.label_counts) == 500 and len(big.label_counts) == 3
    # the agreement is recomputed here from the two models, not read from the result
    agree = float(np.mean(np.argmax(target(held), 1) == np.argmax(big.model(held), 1)))
    assert big.agreement == pytest.approx(agree)
    chance = max(np.bincount(np.argmax(target(held), 1), minlength=3)) / len(held)
    assert big.agreement > max(0.7, chance + 0.3), (big.agreement, chance)  # measured 0.81 vs 0.39
    assert big.agreement > small.agreement  # more queries buy a better copy
    # the surrogate is usable for a transfer attack on the target
    x, y = _data(target, n=64, seed=5)
    atk = jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.3), num_steps=10)
    res = jaxadv.transfer(atk, big.model, target, 0, x, y)
    assert float(np.mean(res.success)) > 0.5


@pytest.mark.slow  # trains three small surrogates (~2 min on 2 loaded cores)
def test_surrogate_from_queries_is_deterministic_by_key(queried):
    target, pool, _, run = queried
    again = jaxadv.surrogate_from_queries(
        7, target, _Net(rngs=nnx.Rngs(0)), pool, budget=20, epochs=30, batch_size=32,
        learning_rate=3e-3,
    )  # fmt: skip
    x = pool[:16]
    np.testing.assert_array_equal(np.asarray(again.model(x)), np.asarray(run[20].model(x)))
    assert again.agreement is None and again.eval_queries == 0


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"budget": 1}, "budget must be an integer in (1, 600]"),
        ({"budget": 601}, "budget must be an integer in (1, 600]"),
        ({"budget": True}, "budget must be an integer"),
        ({"budget": 10, "val_fraction": 1.0}, "val_fraction must be in [0, 1)"),
        ({"budget": 10, "num_classes": 2}, "returns 2 logits but the target has 3 classes"),
    ],
)
def test_surrogate_from_queries_errors(kw, msg):
    pool = np.asarray(jax.random.uniform(jax.random.key(3), (600, *SHAPE)))
    net = _Net(num_classes=kw.pop("num_classes", 3), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=re.escape(msg)):
        jaxadv.surrogate_from_queries(0, _mlp(), net, pool, epochs=1, **kw)
    with pytest.raises(ValueError, match="x"):
        jaxadv.surrogate_from_queries(0, _mlp(), net, pool * np.nan, budget=10, epochs=1)


def test_transfer_mismatch_errors():
    target = _mlp(3)
    x, y = _data(target)
    atk = jaxadv.FGSM(threat=jaxadv.LinfBall(eps=0.1))
    with pytest.raises(ValueError, match="surrogate has 4 classes but the target has 3"):
        jaxadv.transfer(atk, _mlp(4), target, 0, x, y)
    with pytest.raises(ValueError, match="surrogate 1 has 2 classes"):
        jaxadv.transfer(atk, [_mlp(3), _mlp(2)], target, 0, x, y)
    other = linear_model(3, (4, 4, 1))  # expects 16 pixels
    with pytest.raises(ValueError, match=r"surrogate cannot take inputs of shape \(6, 8, 8, 1\)"):
        jaxadv.transfer(atk, other, target, 0, x, y)
    with pytest.raises(ValueError, match="target cannot take inputs"):
        jaxadv.transfer(atk, target, other, 0, x, y)
    with pytest.raises(ValueError, match="ensemble is empty"):
        jaxadv.transfer(atk, [], target, 0, x, y)


# ------------------------------------------------------------------------------ defences
def _images(shape, seed=0, smooth=1.5):
    rng = np.random.default_rng(seed)
    a = nd.gaussian_filter(rng.uniform(0, 1, shape), (0, smooth, smooth, 0))
    a = (a - a.min()) / (a.max() - a.min())
    return (np.round(a * 255) / 255).astype(np.float32)


def _pil_round_trip(img, quality):
    u8 = np.round(img * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(u8[..., 0] if u8.shape[-1] == 1 else u8).save(
        buf, format="JPEG", quality=quality, subsampling=0
    )
    return np.asarray(Image.open(buf), np.float32).reshape(img.shape) / 255


@pytest.mark.parametrize(("k", "quality"), [(1, 50), (3, 90)])
def test_jpeg_matches_pil(k, quality):
    x = _images((3, 20, 28, k))
    ref = np.stack([_pil_round_trip(i, quality) for i in x])
    exact = np.asarray(jax.jit(D.JPEG(quality=quality))(jnp.asarray(x)))
    np.testing.assert_array_equal(exact, ref)
    # the JAX codec: same tables, float DCT; within a grey level almost everywhere
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, "JPEG", quality=quality)
    tabs = Image.open(buf).quantization
    np.testing.assert_array_equal(D.quant_table(quality), np.reshape(tabs[0], (8, 8)))
    np.testing.assert_array_equal(D.quant_table(quality, chroma=True), np.reshape(tabs[1], (8, 8)))
    err = np.abs(np.asarray(D.jpeg_jax(jnp.asarray(x), quality)) - ref) * 255
    assert err.mean() < 0.5 and np.mean(err <= 1.01) > 0.9, (err.mean(), np.mean(err <= 1.01))
    soft = np.asarray(D.JPEG(quality=quality, differentiable=True)(jnp.asarray(x)))
    assert np.abs(soft - ref).mean() * 255 < 1.5
    g = jax.grad(lambda z: jnp.sum(D.JPEG(quality=quality, differentiable=True)(z)))(x)
    assert float(jnp.std(g)) > 0  # a usable gradient


def test_squeezers_match_numpy_and_scipy():
    x = _images((2, 11, 13, 3), smooth=0.5)
    for bits in (1, 3, 5):
        lv = 2**bits - 1
        np.testing.assert_allclose(D.BitDepth(bits=bits)(x), np.round(x * lv) / lv, atol=1e-7)
    for size in (3, 5):
        ref = nd.median_filter(x, size=(1, size, size, 1), mode="reflect")
        np.testing.assert_array_equal(D.MedianFilter(size=size)(x), ref)
    for sigma in (0.6, 1.5):
        ref = nd.gaussian_filter(x, sigma=(0, sigma, sigma, 0), mode="reflect")
        np.testing.assert_allclose(D.GaussianBlur(sigma=sigma)(x), ref, atol=1e-6)
    for bad in (
        lambda: D.MedianFilter(size=4),
        lambda: D.JPEG(quality=0),
        lambda: D.BitDepth(bits=0),
    ):
        with pytest.raises(ValueError):
            bad()


@pytest.mark.parametrize("stage", [D.JPEG(quality=60), D.BitDepth(bits=3), D.MedianFilter()])
def test_bpda_gradient_is_the_identity_on_the_wrapped_stage(stage):
    model = _mlp()
    x, y = _data(model)

    def loss(m, z):
        return jnp.sum(ce(m(z), y))

    g = jax.grad(lambda z: loss(D.BPDA(stage=stage).wrap(model), z))(x)
    ref = jax.grad(lambda u: loss(model, u))(stage(x))  # identity backward through the stage
    np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-6)
    # with an approximation, its vector-Jacobian product instead
    approx = D.GaussianBlur(sigma=1.0)
    g2 = jax.grad(lambda z: loss(D.BPDA(stage=stage, approx=approx).wrap(model), z))(x)
    _, vjp = jax.vjp(approx, x)
    np.testing.assert_allclose(g2, vjp(ref)[0], rtol=1e-5, atol=1e-6)
    # the forward pass is the stage's
    np.testing.assert_allclose(D.BPDA(stage=stage).wrap(model)(x), model(stage(x)), atol=1e-6)


def test_masked_defences_are_flagged_and_bpda_sees_through():
    """Exact JPEG and bit depth have zero input gradient: naive PGD cannot move, check_model
    names BPDA, and PGD through BPDA breaks the defended model."""
    model = _mlp()
    x, y = _data(model, n=8)
    defended = D.BitDepth(bits=4).wrap(model)
    y = jnp.argmax(defended(x), axis=1).astype(jnp.int32)
    with pytest.warns(jaxadv.SanityWarning, match="BPDA"):
        problems = jaxadv.check_model(defended, x, y)
    assert any("zero" in p for p in problems)
    with pytest.warns(jaxadv.SanityWarning, match="BPDA"):
        jaxadv.check_model(D.JPEG(quality=50).wrap(model), x, y)
    pgd = jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.15), num_steps=6, random_start=False)
    naive = pgd(0, defended, x, y)
    np.testing.assert_array_equal(naive.adv, x)  # sign(0) = 0: the attack never moves
    bpda = pgd(0, D.BPDA(stage=D.BitDepth(bits=4)).wrap(model), x, y)
    # BPDA's examples are judged on the defended model itself
    np.testing.assert_array_equal(bpda.success, jnp.argmax(defended(bpda.adv), axis=1) != y)
    assert int(jnp.sum(bpda.success)) > int(jnp.sum(naive.success))


@pytest.mark.slow
def test_random_resize_pad_draws_eot_and_check_model():
    model = _mlp()
    x, y = _data(model)
    stage = D.RandomResizePad(ratio=1.3)
    rnd = stage.wrap(model, jax.random.key(0))
    assert isinstance(rnd, jaxadv.RandomizedModel)
    a = stage.sample(jaxadv.attacks.example_keys(jax.random.key(0), 6), x)
    b = stage.sample(jaxadv.attacks.example_keys(jax.random.key(1), 6), x)
    assert float(jnp.max(jnp.abs(a - b))) > 1e-2
    np.testing.assert_array_equal(rnd(x), rnd(x))  # pure: the same input, the same draw
    keys = jaxadv.attacks.example_keys(jax.random.key(0), 6)
    np.testing.assert_allclose(
        D.RandomResizePad(ratio=1.0).sample(keys, x), x, atol=1e-6
    )  # ratio 1 is the identity
    eot = jaxadv.EOTLogits(model=rnd, num_draws=4)
    assert eot(x).shape == (6, 3)
    with pytest.warns(jaxadv.SanityWarning, match="EOT"):
        jaxadv.check_model(rnd, x, y)
    assert not any("EOT" in p for p in jaxadv.check_model(eot, x, y))
    res = jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.05), num_steps=3)(0, eot, x, y)
    # crafted on the mean logits, judged on one fresh draw (as the deployed defence answers)
    judge = jaxadv.result.judging_view(rnd)
    np.testing.assert_array_equal(res.success, jnp.argmax(judge(res.adv), axis=1) != y)
    with pytest.raises(TypeError, match="key"):
        stage.wrap(model)
    with pytest.raises(TypeError, match="EOT"):
        D.BPDA(stage=stage)


@pytest.mark.slow
def test_defended_model_is_a_pytree_target():
    """A defended model's leaves are jit arguments: new weights behind the same defence reuse the
    compiled attack, and an eps sweep (vmap) runs through the host JPEG callback."""
    traces = []

    def apply(p, x):
        traces.append(1)
        return x.reshape(x.shape[0], -1) @ p

    w = jax.random.normal(jax.random.key(0), (64, 3))
    x = jax.random.uniform(jax.random.key(1), (4, *SHAPE))
    y = jnp.zeros((4,), jnp.int32)
    stage = D.BPDA(stage=D.JPEG(quality=70))
    pgd = jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.1), num_steps=2)
    pgd(0, stage.wrap(jaxadv.from_apply(apply, w)), x, y, validate=False)
    n = len(traces)
    pgd(0, stage.wrap(jaxadv.from_apply(apply, 2 * w)), x, y, validate=False)
    assert len(traces) == n
    curve = jaxadv.sweep_eps(
        pgd,
        [0.0, 0.1],
        key=jax.random.key(0),
        model=stage.wrap(jaxadv.from_apply(apply, w)),
        x=x,
        y=y,
    )
    assert curve.result.adv.shape == (2, *x.shape)


# ----------------------------------------------------------------------------------- CLI
@pytest.mark.parametrize(
    ("argv", "msg"),
    [
        (["--defence", "jpg:75"], "unknown defence 'jpg:75'; choose one of jpeg:<quality"),
        (["--defence", "jpeg:high"], "'high' is not a number"),
        (["--defence", "median:4"], "odd"),
        (["--bpda"], "need --defence"),
        (["--defence", "resize-pad:1.2", "--bpda"], "use --eot-draws"),
        (["--defence", "jpeg:75", "--eot-draws", "4"], "deterministic"),
    ],
)
def test_cli_defence_errors(argv, msg, tmp_path, capsys):
    from jaxadv.cli import main

    rc = main(["attack", "--eps", "0,2", "--out", str(tmp_path / "o"), "--quiet", *argv])
    assert rc == 2
    assert msg in capsys.readouterr().err


@pytest.mark.slow
def test_cli_defence_naive_vs_bpda(tmp_path):
    import json

    from jaxadv.cli import main

    rows = {}
    for tag, extra in (("naive", []), ("bpda", ["--bpda"])):
        out = tmp_path / tag
        argv = ["attack", "--eps", "0,8", "--num-examples", "24", "--num-steps", "5"]
        argv += ["--defence", "bitdepth:3", *extra, "--out", str(out), "--quiet"]
        assert main(argv) == 0
        rows[tag] = json.loads((out / "results.json").read_text())["rows"]
    naive, bpda = rows["naive"], rows["bpda"]
    assert naive[0]["clean_accuracy"] == bpda[0]["clean_accuracy"]  # same forward pass
    # masked: only PGD's random start moves the naive attack (0.875 vs BPDA's 0.25 when written)
    assert bpda[1]["robust_accuracy"] < naive[1]["robust_accuracy"] - 0.3
