"""Metrics: SSIM against scikit-image on real X-rays, norms and AUC against numpy recounts."""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import linear_model
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxadv
from jaxadv import metrics as M
from jaxadv.result import AttackResult

skm = pytest.importorskip("skimage.metrics")

SSIM_TOL = 1e-5  # the requirement is 1e-3; we measure ~2e-7 in float32


def _sk_ssim(a: np.ndarray, b: np.ndarray, **kw) -> np.ndarray:
    """skimage's Gaussian SSIM per example of NHWC batches, in float64."""
    kw = {"data_range": 1.0, "gaussian_weights": True, "sigma": 1.5, **kw}
    return np.array(
        [
            skm.structural_similarity(
                ai.astype(np.float64),
                bi.astype(np.float64),
                use_sample_covariance=False,
                channel_axis=-1,
                **kw,
            )
            for ai, bi in zip(a, b, strict=True)
        ]
    )


@pytest.fixture(scope="module")
def xrays(pneumonia_path) -> np.ndarray:
    """16 real chest X-rays, float32 NHWC [16, 28, 28, 1] in [0, 1]."""
    with np.load(pneumonia_path) as d:
        imgs = d["test_images"][::39][:16]
    return (imgs.astype(np.float32) / 255.0)[..., None]


def _perturbations(x: np.ndarray) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    sign = rng.choice(np.array([-1.0, 1.0], np.float32), size=x.shape)
    sparse = x.copy()
    idx = rng.integers(0, 28, size=(x.shape[0], 20, 2))
    for i in range(x.shape[0]):
        sparse[i, idx[i, :, 0], idx[i, :, 1], 0] = rng.random(20, dtype=np.float32)
    blur = (x + np.roll(x, 1, axis=1) + np.roll(x, 1, axis=2)) / 3.0
    out = {
        "gauss_noise": x + 0.05 * rng.standard_normal(x.shape).astype(np.float32),
        "linf_sign_8": x + (8 / 255) * sign,
        "sparse_20px": sparse,
        "blur": blur,
        "contrast": 0.5 + 0.7 * (x - 0.5),
        "heavy_noise": x + 0.3 * rng.standard_normal(x.shape).astype(np.float32),
    }
    return {k: np.clip(v, 0.0, 1.0).astype(np.float32) for k, v in out.items()}


# -- SSIM -----------------------------------------------------------------------------------------
@pytest.mark.realdata
def test_ssim_matches_skimage_on_real_xrays(xrays):
    worst, lowest = 0.0, 1.0
    for name, noisy in _perturbations(xrays).items():
        ours = np.asarray(M.ssim(jnp.asarray(xrays), jnp.asarray(noisy)))
        ref = _sk_ssim(xrays, noisy)
        assert ours.shape == (xrays.shape[0],)
        err = float(np.max(np.abs(ours - ref)))
        worst, lowest = max(worst, err), min(lowest, float(ref.min()))
        assert err < SSIM_TOL, (name, err)
    # the perturbations span a wide SSIM range, so the check is not only near 1
    assert lowest < 0.3, lowest


@pytest.mark.realdata
def test_ssim_real_pairs_of_different_xrays(xrays):
    a, b = xrays[:8], xrays[8:16]
    np.testing.assert_allclose(np.asarray(M.ssim(a, b)), _sk_ssim(a, b), atol=SSIM_TOL, rtol=0)


@pytest.mark.realdata
def test_ssim_identity_is_one(xrays):
    np.testing.assert_allclose(np.asarray(M.ssim(xrays, xrays)), 1.0, atol=1e-6, rtol=0)
    rgb = np.random.default_rng(1).random((3, 20, 17, 3), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(M.ssim(rgb, rgb)), 1.0, atol=1e-6, rtol=0)


def test_ssim_matches_skimage_rgb_synthetic():
    rng = np.random.default_rng(2)
    # smooth-ish colour images (sums of random gradients), not white noise
    hh, ww = np.meshgrid(np.linspace(0, 1, 24), np.linspace(0, 1, 31), indexing="ij")
    coef = rng.random((4, 3, 3), dtype=np.float64)
    x = (
        coef[:, None, None, 0, :] * hh[None, :, :, None]
        + coef[:, None, None, 1, :] * ww[None, :, :, None]
    )
    x = x / x.max() * 0.8 + 0.1 * rng.random(x.shape)
    y = np.clip(x + 0.08 * rng.standard_normal(x.shape), 0, 1)
    x, y = x.astype(np.float32), y.astype(np.float32)
    ours = np.asarray(M.ssim(jnp.asarray(x), jnp.asarray(y)))
    np.testing.assert_allclose(ours, _sk_ssim(x, y), atol=SSIM_TOL, rtol=0)
    # non-default window: skimage's kernel radius int(3.5 * 0.8 + 0.5) = 3 matches win_size=7
    ours7 = np.asarray(M.ssim(jnp.asarray(x), jnp.asarray(y), win_size=7, sigma=0.8))
    np.testing.assert_allclose(ours7, _sk_ssim(x, y, win_size=7, sigma=0.8), atol=SSIM_TOL, rtol=0)


def test_ssim_symmetric_and_data_range():
    rng = np.random.default_rng(3)
    a = rng.random((2, 14, 14, 1), dtype=np.float32)
    b = np.clip(a + 0.1 * rng.standard_normal(a.shape).astype(np.float32), 0, 1)
    np.testing.assert_allclose(M.ssim(a, b), M.ssim(b, a), atol=1e-6)
    # scaling the images and the data range together leaves SSIM unchanged
    np.testing.assert_allclose(M.ssim(255 * a, 255 * b, data_range=255.0), M.ssim(a, b), atol=1e-5)


def test_ssim_jit_and_traced_hyperparameters():
    rng = np.random.default_rng(4)
    a = jnp.asarray(rng.random((3, 16, 16, 3), dtype=np.float32))
    b = jnp.clip(a + 0.05, 0.0, 1.0)
    eager = M.ssim(a, b)
    jitted = jax.jit(M.ssim, static_argnames="win_size")(a, b)
    np.testing.assert_allclose(jitted, eager, atol=1e-6)
    # sigma, data_range, k1, k2 are ordinary arguments: traced, no retrace per value
    traces = []

    @jax.jit
    def f(a, b, sigma, k2):
        traces.append(1)
        return M.ssim(a, b, sigma=sigma, k2=k2)

    np.testing.assert_allclose(f(a, b, 1.5, 0.03), eager, atol=1e-6)
    f(a, b, 1.2, 0.05)
    assert len(traces) == 1
    np.testing.assert_allclose(f(a, b, 1.2, 0.05), M.ssim(a, b, sigma=1.2, k2=0.05), atol=1e-6)


def test_ssim_half_precision_inputs_are_upcast():
    a = np.random.default_rng(5).random((1, 12, 12, 1), dtype=np.float32)
    out = M.ssim(jnp.asarray(a, jnp.bfloat16), jnp.asarray(a, jnp.bfloat16))
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, 1.0, atol=1e-6)


@pytest.mark.parametrize(
    ("shape", "kw", "match"),
    [
        ((2, 8, 28, 1), {}, "smaller than the 11x11"),
        ((2, 28, 28, 1), {"win_size": 8}, "odd"),
        ((2, 28, 28, 1), {"win_size": 11.0}, "Python int"),
        ((28, 28, 1), {}, "rank 4"),
        ((2, 28, 28, 1), {"sigma": 0.0}, "sigma"),
        ((2, 28, 28, 1), {"data_range": -1.0}, "data_range"),
    ],
)
def test_ssim_rejects_bad_input(shape, kw, match):
    a = jnp.zeros(shape, jnp.float32)
    with pytest.raises(ValueError, match=match):
        M.ssim(a, a, **kw)


def test_ssim_small_window_accepts_small_images():
    a = jnp.full((1, 7, 7, 1), 0.5, jnp.float32)
    np.testing.assert_allclose(M.ssim(a, a, win_size=7, sigma=0.8), 1.0, atol=1e-6)


def test_ssim_shape_mismatch_and_int_dtype():
    a = jnp.zeros((1, 12, 12, 1), jnp.float32)
    with pytest.raises(ValueError, match="same shape"):
        M.ssim(a, jnp.zeros((1, 12, 13, 1), jnp.float32))
    with pytest.raises(TypeError, match="255"):
        M.ssim(jnp.zeros((1, 12, 12, 1), jnp.uint8), a)


# -- norms ----------------------------------------------------------------------------------------
def _sparse_pair(seed: int, shape=(5, 9, 7, 3)):
    rng = np.random.default_rng(seed)
    x = rng.random(shape, dtype=np.float32)
    mask = rng.random(shape) < 0.1
    adv = np.where(mask, rng.random(shape, dtype=np.float32), x).astype(np.float32)
    return x, adv


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_norms_match_numpy(seed):
    x, adv = _sparse_pair(seed)
    d = adv.astype(np.float64) - x
    l0_ref = np.sum(np.any(np.abs(d) > 0, axis=-1), axis=(1, 2))
    l0 = M.l0_pixels(x, adv)
    assert l0.dtype == jnp.int32 and l0.shape == (5,)
    np.testing.assert_array_equal(np.asarray(l0), l0_ref)
    np.testing.assert_allclose(M.l2(x, adv), np.sqrt(np.sum(d * d, axis=(1, 2, 3))), rtol=1e-6)
    np.testing.assert_allclose(M.linf(x, adv), np.max(np.abs(d), axis=(1, 2, 3)), rtol=1e-6)
    # tolerance: only changes larger than tol count
    tol = 0.3
    l0_tol_ref = np.sum(np.any(np.abs(d) > tol, axis=-1), axis=(1, 2))
    np.testing.assert_array_equal(np.asarray(M.l0_pixels(x, adv, tol=tol)), l0_tol_ref)


def test_l0_counts_locations_not_channels():
    x = np.zeros((2, 4, 4, 3), np.float32)
    adv = x.copy()
    adv[0, 1, 2, :] = 1.0  # all three channels of one pixel
    adv[0, 3, 3, 1] = 0.5  # one channel of another pixel
    adv[1, 0, 0, 2] = 0.01  # below tol in the second call
    np.testing.assert_array_equal(np.asarray(M.l0_pixels(x, adv)), [2, 1])
    np.testing.assert_array_equal(np.asarray(M.l0_pixels(x, adv, tol=0.05)), [2, 0])
    np.testing.assert_array_equal(np.asarray(M.l0_pixels(x, x)), [0, 0])
    np.testing.assert_array_equal(np.asarray(M.l2(x, x)), [0.0, 0.0])
    np.testing.assert_array_equal(np.asarray(M.linf(x, x)), [0.0, 0.0])


def test_norms_jit_and_errors():
    x, adv = _sparse_pair(7)
    for fn in (M.l0_pixels, M.l2, M.linf):
        np.testing.assert_array_equal(jax.jit(fn)(x, adv), fn(x, adv))
    with pytest.raises(ValueError, match="same shape"):
        M.l2(x, adv[:, :-1])
    with pytest.raises(ValueError, match="rank 4"):
        M.l0_pixels(x[0], adv[0])


# -- AUC ------------------------------------------------------------------------------------------
def _brute_auc(scores, labels) -> float:
    s = np.asarray(scores, np.float64)
    lab = np.asarray(labels).astype(bool)
    wins = 0.0
    for p, n in itertools.product(s[lab], s[~lab]):
        wins += 1.0 if p > n else 0.5 if p == n else 0.0
    return wins / (lab.sum() * (~lab).sum())


def test_auc_hand_made():
    assert M.auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert M.auc([1.0, 2.0], [False, True]) == 1.0
    assert M.auc([2.0, 1.0], [False, True]) == 0.0
    assert M.auc([3.0, 3.0, 3.0, 3.0], [0, 1, 0, 1]) == 0.5  # all tied
    # one tie between a positive and a negative: 3 wins + 1 half out of 4 pairs
    assert M.auc([0.1, 0.5, 0.5, 0.9], [0, 0, 1, 1]) == pytest.approx(0.875)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 4), st.booleans()), min_size=2, max_size=40).filter(
        lambda v: 0 < sum(b for _, b in v) < len(v)
    )
)
def test_auc_equals_brute_force_with_ties(pairs):
    scores = np.array([s for s, _ in pairs], np.float64) / 4.0  # few values: many ties
    labels = np.array([b for _, b in pairs])
    assert M.auc(scores, labels) == pytest.approx(_brute_auc(scores, labels), abs=1e-12)
    assert M.auc(scores, labels.astype(np.int32)) == pytest.approx(_brute_auc(scores, labels))
    # flipping both scores and labels leaves the AUC unchanged
    assert M.auc(-scores, ~labels) == pytest.approx(M.auc(scores, labels), abs=1e-12)


def test_auc_random_large_against_brute_force_and_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.random(300) < 0.4
    scores = np.round(rng.standard_normal(300) + labels, 1)  # rounding creates ties
    ref = _brute_auc(scores, labels)
    assert M.auc(jnp.asarray(scores, jnp.float32), jnp.asarray(labels)) == pytest.approx(
        _brute_auc(np.asarray(jnp.asarray(scores, jnp.float32)), labels), abs=1e-12
    )
    assert M.auc(scores, labels) == pytest.approx(ref, abs=1e-12)
    try:
        from sklearn.metrics import roc_auc_score
    except ImportError:
        return  # scikit-learn is optional; the brute force above is the oracle
    assert M.auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


@pytest.mark.parametrize(
    ("scores", "labels", "match"),
    [
        ([0.1, 0.2, 0.3], [1, 1, 1], "both classes"),
        ([0.1, 0.2], [False, False], "both classes"),
        ([0.1, 0.2, 0.3], [0, 1, 2], "binary"),
        ([0.1, 0.2], [0, 1, 1], "shape"),
        ([0.1, math.nan], [0, 1], "NaN"),
        ([[0.1, 0.2]], [[0, 1]], "shape"),
    ],
)
def test_auc_rejects_bad_input(scores, labels, match):
    with pytest.raises(ValueError, match=match):
        M.auc(scores, labels)


def test_auc_under_attack_uses_positive_class_probability():
    model = linear_model(num_classes=2, shape=(4, 4, 1), seed=3)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.random((40, 4, 4, 1), dtype=np.float32))
    y = jnp.asarray(rng.integers(0, 2, 40), jnp.int32)
    logits = np.asarray(model(x), np.float64)
    p1 = np.exp(logits[:, 1]) / np.exp(logits).sum(axis=1)
    ref = _brute_auc(p1, np.asarray(y) == 1)
    assert M.auc_under_attack(model, x, y) == pytest.approx(ref, abs=1e-12)
    # binary task: class 0 as positive gives the same AUC
    assert M.auc_under_attack(model, x, y, positive_class=0) == pytest.approx(ref, abs=1e-12)
    with pytest.raises(ValueError, match="positive_class"):
        M.auc_under_attack(model, x, y, positive_class=2)
    with pytest.raises(ValueError, match="both classes"):
        M.auc_under_attack(model, x, jnp.zeros((40,), jnp.int32))


def test_auc_under_attack_confident_model_has_no_spurious_ties():
    # logits so large that float32 softmax rounds every probability to 0 or 1
    def apply(w, x):
        z = 200.0 * w * x.reshape(x.shape[0], -1)[:, :1]
        return jnp.concatenate([-z, z], axis=1)

    model = jaxadv.from_apply(apply, jnp.ones((), jnp.float32))
    x = jnp.asarray(np.linspace(0.2, 0.9, 8, dtype=np.float32).reshape(8, 1, 1, 1))
    y = jnp.array([0, 0, 1, 0, 1, 1, 1, 1], jnp.int32)
    # ranks follow x exactly: one inversion (x[2] positive below x[3] negative) out of 15 pairs
    assert M.auc_under_attack(model, x, y) == pytest.approx(14 / 15)


# -- accuracy, robust accuracy, ASR ---------------------------------------------------------------
def _result(success) -> AttackResult:
    s = jnp.asarray(success)
    b = s.shape[0]
    return AttackResult(
        adv=jnp.zeros((b, 2, 2, 1), jnp.float32),
        success=s,
        loss=jnp.zeros((b,), jnp.float32),
        norm=jnp.zeros((b,), jnp.float32),
        queries=jnp.ones((b,), jnp.int32),
    )


def test_accuracy_hand_made():
    logits = jnp.array([[2.0, 0.0, 1.0], [0.0, 3.0, 1.0], [0.0, 0.0, 5.0], [1.0, 0.0, 0.0]])
    assert float(M.accuracy(logits, jnp.array([0, 1, 2, 2]))) == 0.75
    assert float(M.accuracy(logits, np.array([0, 1, 2, 0], np.uint8))) == 1.0
    assert float(jax.jit(M.accuracy)(logits, jnp.array([1, 0, 0, 1]))) == 0.0
    with pytest.raises(ValueError, match=r"\[B\]"):
        M.accuracy(logits, jnp.zeros((4, 1), jnp.int32))
    with pytest.raises(ValueError, match="outside"):
        M.accuracy(logits, jnp.array([0, 1, 2, 3]))


def test_clean_accuracy_matches_argmax():
    model = linear_model(num_classes=3, shape=(4, 4, 1), seed=1)
    x = jnp.asarray(np.random.default_rng(0).random((10, 4, 4, 1), dtype=np.float32))
    pred = np.asarray(jnp.argmax(model(x), axis=1))
    y = jnp.asarray(np.where(np.arange(10) < 7, pred, (pred + 1) % 3), jnp.int32)
    assert float(M.clean_accuracy(model, x, y)) == pytest.approx(0.7)


def test_robust_accuracy_and_asr_hand_made():
    success = jnp.array([True, False, True, True, False])
    clean_correct = jnp.array([False, True, True, True, True])  # example 0 was a clean error
    assert float(M.robust_accuracy(success)) == pytest.approx(0.4)
    assert float(M.robust_accuracy(_result(success))) == pytest.approx(0.4)
    # 2 fooled out of 4 clean-correct; the clean error counts for neither side
    assert float(M.attack_success_rate(success, clean_correct)) == pytest.approx(0.5)
    assert float(M.attack_success_rate(_result(success), clean_correct)) == pytest.approx(0.5)
    assert float(jax.jit(M.attack_success_rate)(success, clean_correct)) == pytest.approx(0.5)
    # robust accuracy == clean accuracy * (1 - ASR) when clean errors count as successes
    clean_acc = float(jnp.mean(clean_correct.astype(jnp.float32)))
    assert float(M.robust_accuracy(success)) == pytest.approx(clean_acc * (1 - 0.5))
    assert math.isnan(float(M.attack_success_rate(success, jnp.zeros((5,), bool))))
    assert float(M.attack_success_rate(jnp.zeros((5,), bool), clean_correct)) == 0.0


def test_robust_accuracy_rejects_non_bool():
    with pytest.raises(TypeError, match="bool"):
        M.robust_accuracy(jnp.array([1, 0, 1]))
    with pytest.raises(ValueError, match="shape"):
        M.attack_success_rate(jnp.array([True, False]), jnp.array([True, False, True]))


# -- summarize ------------------------------------------------------------------------------------
@functools.cache
def _summary_setup(num_classes: int):
    shape = (12, 12, 1)
    model = linear_model(num_classes=num_classes, shape=shape, seed=5)
    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.random((16,) + shape, dtype=np.float32))
    y = jnp.asarray(np.asarray(jnp.argmax(model(x), axis=1)), jnp.int32)
    y = y.at[:3].set((y[:3] + 1) % num_classes)  # three clean errors
    return model, x, y


def _make_result(model, x, y, adv) -> AttackResult:
    success = jnp.argmax(model(adv), axis=1) != y
    b = x.shape[0]
    z = jnp.zeros((b,), jnp.float32)
    return AttackResult(adv=adv, success=success, loss=z, norm=z, queries=jnp.ones((b,), jnp.int32))


@pytest.mark.parametrize("num_classes", [2, 3])
def test_summarize_matches_the_pieces(num_classes):
    model, x, y = _summary_setup(num_classes)
    res = jaxadv.FGSM(threat=jaxadv.LinfBall(eps=0.1))(jax.random.key(0), model, x, y)
    out = M.summarize(model, x, y, res)
    assert all(isinstance(v, float) for v in out.values())
    cc = np.asarray(jnp.argmax(model(x), axis=1)) == np.asarray(y)
    succ = np.asarray(res.success)
    attacked = succ & cc
    assert out["num_examples"] == 16.0 and out["num_clean_correct"] == 13.0
    assert out["clean_accuracy"] == pytest.approx(13 / 16)
    assert out["robust_accuracy"] == pytest.approx(np.mean(~succ))
    assert out["attack_success_rate"] == pytest.approx(attacked.sum() / cc.sum())
    assert out["num_successful"] == float(attacked.sum())
    assert attacked.any(), "test set-up: FGSM should fool some examples"
    l2 = np.asarray(M.l2(x, res.adv))[attacked]
    assert out["l2_mean"] == pytest.approx(float(np.mean(l2)), rel=1e-6)
    assert out["l2_median"] == pytest.approx(float(np.median(l2)), rel=1e-6)
    assert out["linf_median"] == pytest.approx(0.1, abs=1e-6)
    assert out["l0_pixels_mean"] <= 144
    ss = np.asarray(M.ssim(x, res.adv))[attacked]
    assert out["ssim_mean"] == pytest.approx(float(np.mean(ss)), rel=1e-6)
    if num_classes == 2:
        assert out["auc"] == pytest.approx(M.auc_under_attack(model, x, y))
        assert out["auc_under_attack"] == pytest.approx(M.auc_under_attack(model, res.adv, y))
        assert out["auc_under_attack"] <= out["auc"]
    else:
        assert "auc" not in out and "auc_under_attack" not in out


def test_summarize_nan_safe_without_successes():
    model, x, y = _summary_setup(2)
    res = _make_result(model, x, y, x)  # no perturbation: successes are the clean errors only
    out = M.summarize(model, x, y, res)
    assert out["num_successful"] == 0.0
    assert out["attack_success_rate"] == 0.0
    assert out["robust_accuracy"] == pytest.approx(13 / 16)
    for k in ("l0_pixels", "l2", "linf"):
        assert math.isnan(out[f"{k}_mean"]) and math.isnan(out[f"{k}_median"])
    assert math.isnan(out["ssim_mean"])
    assert out["auc"] == out["auc_under_attack"]


def test_summarize_single_class_and_small_images():
    model = linear_model(num_classes=2, shape=(4, 4, 1), seed=0)
    x = jnp.asarray(np.random.default_rng(0).random((6, 4, 4, 1), dtype=np.float32))
    y = jnp.ones((6,), jnp.int32)
    adv = jnp.clip(x + 0.2, 0.0, 1.0)
    out = M.summarize(model, x, y, _make_result(model, x, y, adv))
    assert math.isnan(out["auc"]) and math.isnan(out["auc_under_attack"])
    assert math.isnan(out["ssim_mean"])  # 4x4 images are smaller than the 11x11 window
    with pytest.raises(ValueError, match="shape"):
        M.summarize(model, x, y, _make_result(model, x[:3], y[:3], adv[:3]))
