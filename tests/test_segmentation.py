"""Segmentation targets: metrics against NumPy, dense attacks on planted models, the threat set and
recomputed success, sharding, data loaders and the errors users meet."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SHARED_DATA, linear_model
from flax import nnx

import jaxadv
from jaxadv import segmentation as S
from jaxadv.attacks.dense import ASMA, DAG, SegPGD
from jaxadv.data import load_segmentation, synthetic_segmentation
from jaxadv.nn import UNet
from jaxadv.sharding import attack_sharded

ISIC = SHARED_DATA / "isic2017_seg.npz"


# ----------------------------------------------------------------------------- models
def _threshold_apply(b, x):
    """Per pixel: class 1 iff the channel mean exceeds ``b`` (logits ``[b - m, m - b]``, x4)."""
    m = jnp.mean(x, axis=-1, keepdims=True)
    return 4.0 * jnp.concatenate([b - m, m - b], axis=-1)


def threshold_model(b=0.5):
    return jaxadv.from_apply(_threshold_apply, jnp.float32(b))


def _blur_apply(p, x):
    """A 3x3 conv mixing neighbours, then per-pixel logits (spatial coupling for sharding)."""
    k = jnp.broadcast_to(p["k"][:, :, None, None], (3, 3, x.shape[-1], 3))
    h = jax.lax.conv_general_dilated(
        x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return h @ p["w"]


def blur_model(seed=0, classes=3):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return jaxadv.from_apply(
        _blur_apply,
        {"k": jax.random.normal(k1, (3, 3)), "w": jax.random.normal(k2, (3, classes))},
    )


def planted(b=2, size=8):
    """All-lesion masks; the left half at 0.6 (reachable with eps 0.15 in L∞), the right at 0.95
    (not): the best untargeted attack leaves Dice 2 * 0.5 / 1.5 = 2/3."""
    x = np.full((b, size, size, 1), 0.95, np.float32)
    x[:, :, : size // 2] = 0.6
    y = np.ones((b, size, size), np.int32)
    return jnp.asarray(x), jnp.asarray(y)


# ----------------------------------------------------------------------------- metrics
def _np_scores(p, g, c):
    d = np.zeros((p.shape[0], c))
    j = np.zeros((p.shape[0], c))
    for i in range(p.shape[0]):
        for k in range(c):
            a, b = p[i] == k, g[i] == k
            inter, sa, sb, union = (a & b).sum(), a.sum(), b.sum(), (a | b).sum()
            d[i, k] = 1.0 if sa + sb == 0 else 2 * inter / (sa + sb)
            j[i, k] = 1.0 if union == 0 else inter / union
    return d, j


def test_dice_iou_pixel_accuracy_equal_numpy_including_empty_masks():
    rng = np.random.default_rng(0)
    c = 4
    p = rng.integers(0, c, (6, 5, 7))
    g = rng.integers(0, c, (6, 5, 7))
    g[0] = 0  # classes 1..3 absent from the mask
    p[0] = 0  # ... and from the prediction: empty-empty = 1
    p[1] = 2  # class 2 everywhere predicted, class 0, 1, 3 absent from the prediction
    g[2] = 3
    d_ref, j_ref = _np_scores(p, g, c)
    d = np.asarray(S.dice(jnp.asarray(p), jnp.asarray(g), c))
    j = np.asarray(S.iou(jnp.asarray(p), jnp.asarray(g), c))
    np.testing.assert_allclose(d, d_ref, rtol=1e-6)
    np.testing.assert_allclose(j, j_ref, rtol=1e-6)
    assert d[0].tolist() == [1.0, 1.0, 1.0, 1.0]
    np.testing.assert_allclose(
        np.asarray(S.pixel_accuracy(jnp.asarray(p), jnp.asarray(g))),
        (p == g).reshape(6, -1).mean(1),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        np.asarray(S.image_dice(jnp.asarray(p), jnp.asarray(g), c)), d_ref[:, 1:].mean(1), 1e-6
    )
    np.testing.assert_allclose(
        np.asarray(S.target_iou(jnp.asarray(p), jnp.asarray(g), c)), j_ref.mean(1), 1e-6
    )
    # re-exported where the other metrics live
    assert jaxadv.metrics.dice is S.dice and jaxadv.iou is S.iou


def test_rule_thresholds_are_checked():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        S.dice_drop(1.5)
    with pytest.raises(ValueError, match="must be one of"):
        S.DenseRule(kind="accuracy")


# ----------------------------------------------------------------------------- attacks
@pytest.mark.parametrize(
    "attack",
    [
        SegPGD(threat=jaxadv.LinfBall(eps=0.15), num_steps=8),
        pytest.param(
            SegPGD(threat=jaxadv.LinfBall(eps=0.15), num_steps=8, weighted=False),
            marks=pytest.mark.slow,
        ),
        DAG(threat=jaxadv.LinfBall(eps=0.15), num_steps=8),
    ],
    ids=["segpgd", "pgd-ce", "dag"],
)
def test_untargeted_attack_finds_the_planted_response(attack):
    model = threshold_model()
    x, y = planted()
    res = attack(0, model, x, y)
    # exactly the reachable pixels flip: Dice 1 -> 2/3 (a drop of 1/3 < 0.5: no success)
    np.testing.assert_allclose(np.asarray(res.info["dice"]), 2 / 3, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(res.info["dice_clean"]), 1.0)
    assert not np.any(np.asarray(res.success))
    np.testing.assert_allclose(np.asarray(res.loss), 1 / 3 - 0.5, atol=1e-5)
    # the same attack under a rule the planted response meets succeeds
    easy = jaxadv._struct.replace(attack, rule=S.dice_drop(0.3))
    assert np.all(np.asarray(easy(0, model, x, y).success))


def test_asma_reaches_a_reachable_target_mask_and_not_an_unreachable_one():
    model = threshold_model()
    x, y = planted()
    reach = np.array(y)
    reach[:, :, :4] = 0  # erase the reachable half
    atk = ASMA(threat=jaxadv.LinfBall(eps=0.15), num_steps=10, rule=S.target_mask_iou(1.0))
    res = atk(0, model, x, y, target=jnp.asarray(reach))
    assert np.all(np.asarray(res.success))
    np.testing.assert_allclose(np.asarray(res.info["target_iou"]), 1.0)
    # erasing the whole lesion is out of reach: half the pixels stay lesion
    res = atk(0, model, x, y, target=jnp.zeros_like(y))
    assert not np.any(np.asarray(res.success))
    np.testing.assert_allclose(np.asarray(res.info["target_iou"]), 0.25, rtol=1e-5)


@pytest.mark.parametrize("cls", [SegPGD, DAG, ASMA])
@pytest.mark.parametrize(
    "threat",
    [jaxadv.LinfBall(eps=0.05), pytest.param(jaxadv.L2Ball(eps=0.3), marks=pytest.mark.slow)],
    ids=["linf", "l2"],
)
def test_result_in_threat_set_with_success_recomputed(cls, threat):
    ds = synthetic_segmentation(5, size=8, num_classes=3, seed=1)
    x, y = (jnp.asarray(a) for a in ds.take(5))
    model = blur_model()
    target = jnp.zeros_like(y) if cls is ASMA else None
    rule = S.target_mask_iou(0.5) if cls is ASMA else S.dice_below(0.6)
    res = cls(threat=threat, num_steps=4, rule=rule)(jax.random.key(3), model, x, y, target=target)
    assert np.all(np.asarray(threat.norm(res.adv - x)) <= threat.eps + 1e-5)
    assert float(res.adv.min()) >= 0.0 and float(res.adv.max()) <= 1.0
    # success recomputed from the model on adv, with NumPy metrics
    pred = np.asarray(jnp.argmax(model(res.adv), -1))
    d, j = _np_scores(pred, np.asarray(y), 3)
    if cls is ASMA:
        ti = _np_scores(pred, np.zeros_like(pred), 3)[1].mean(1)
        np.testing.assert_allclose(np.asarray(res.info["target_iou"]), ti, rtol=1e-5)
        want = ti >= 0.5
    else:
        want = d[:, 1:].mean(1) <= 0.6
    np.testing.assert_array_equal(np.asarray(res.success), want)
    np.testing.assert_allclose(np.asarray(res.info["dice"]), d[:, 1:].mean(1), rtol=1e-5)


@pytest.mark.parametrize("cls", [SegPGD, DAG])
def test_same_key_same_result_and_sharded_equals_unsharded(cls):
    ds = synthetic_segmentation(5, size=8, num_classes=3, seed=2)  # 5 rows on 8 devices
    x, y = (jnp.asarray(a) for a in ds.take(5))
    model = blur_model(1)
    atk = cls(threat=jaxadv.LinfBall(eps=0.05), num_steps=3, rule=S.dice_below(0.5))
    a = atk(jax.random.key(0), model, x, y)
    b = atk(jax.random.key(0), model, x, y)
    sh = attack_sharded(atk, jax.random.key(0), model, x, y)
    assert len(jax.devices()) == 8
    for r in (b, sh):
        np.testing.assert_allclose(np.asarray(r.adv), np.asarray(a.adv), atol=1e-6)
        np.testing.assert_array_equal(np.asarray(r.success), np.asarray(a.success))
        np.testing.assert_array_equal(np.asarray(r.queries), np.asarray(a.queries))


def test_eps_zero_leaves_x_and_new_eps_reuses_the_program():
    model = threshold_model()
    x, y = planted()
    atk = SegPGD(threat=jaxadv.LinfBall(eps=0.0), num_steps=2)
    res = atk(0, model, x, y)
    np.testing.assert_array_equal(np.asarray(res.adv), np.asarray(x))
    assert not np.any(np.asarray(res.success))
    from jaxadv.attacks.base import run_jit

    size = run_jit._cache_size()
    np.testing.assert_allclose(np.asarray(atk.with_eps(0.15)(0, model, x, y).info["dice"]), 2 / 3)
    atk.with_eps(0.1)(1, model, x, y)  # new eps, new key: the same compiled program
    assert run_jit._cache_size() == size


# ----------------------------------------------------------------------------- errors
def test_clear_errors_for_bad_masks_and_the_wrong_kind_of_model():
    model = threshold_model()
    x, y = planted()
    atk = SegPGD(threat=jaxadv.LinfBall(eps=0.1), num_steps=2)
    with pytest.raises(ValueError, match=r"masks \[B, H, W\]"):
        atk(0, model, x, y[:, :4])
    with pytest.raises(ValueError, match="model predicts 2 classes"):
        atk(0, model, x, y * 2)
    with pytest.raises(ValueError, match="one label per image"):
        atk(0, model, x, y[:, 0, 0])
    with pytest.raises(ValueError, match="returns one label per image"):  # a classifier
        atk(0, linear_model(2, shape=(8, 8, 1)), x, y)
    with pytest.raises(ValueError, match="segmentation model"):  # and the reverse
        jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.1))(0, model, x, jnp.zeros((2,), jnp.int32))
    with pytest.raises(ValueError, match="targeted attack"):
        ASMA(threat=jaxadv.LinfBall(eps=0.1))(0, model, x, y)
    with pytest.raises(ValueError, match="target rule"):
        DAG(threat=jaxadv.LinfBall(eps=0.1), rule=S.dice_drop(0.5))(0, model, x, y, target=y * 0)
    with pytest.raises(TypeError, match="supports the threat models"):
        SegPGD(threat=jaxadv.L0Pixels(eps=3))
    with pytest.raises(TypeError, match="DenseRule"):
        SegPGD(threat=jaxadv.LinfBall(eps=0.1), rule="dice")


# ----------------------------------------------------------------------------- models and data
def test_unet_returns_pixel_logits_through_the_adapters():
    # abstract init then zero weights: eager NNX initialisers compile per shape (slow on CPU)
    abstract = nnx.eval_shape(
        lambda: UNet(num_classes=3, in_channels=1, width=4, depth=3, rngs=nnx.Rngs(0))
    )
    gd, state = nnx.split(abstract)
    net = nnx.merge(gd, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), state))
    model = jaxadv.from_nnx(net, mean=0.5, std=0.25)
    out = jax.eval_shape(model, jax.ShapeDtypeStruct((2, 16, 16, 1), jnp.float32))
    assert out.shape == (2, 16, 16, 3)
    with pytest.raises(ValueError, match="divisible by 4"):
        net(jnp.zeros((1, 10, 10, 1)))
    assert S.num_classes(model, jnp.zeros((2, 16, 16, 1))) == 3


def test_synthetic_segmentation_is_deterministic():
    a = synthetic_segmentation(6, size=12, num_classes=3, seed=4).take(6)
    b = synthetic_segmentation(6, size=12, num_classes=3, seed=4).take(6)
    c = synthetic_segmentation(6, size=12, num_classes=3, seed=5).take(6)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    assert a[1].dtype == np.int32 and set(np.unique(a[1])) <= {0, 1, 2}


def test_load_segmentation_npz_and_errors(tmp_path):
    p = tmp_path / "seg.npz"
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    masks = rng.integers(0, 2, (5, 8, 8)).astype(np.uint8)
    np.savez(p, train_images=imgs, train_masks=masks, test_images=imgs, test_masks=masks[:, :4])
    ds = load_segmentation(p, split="train")
    batches = list(ds.batches(2))
    assert [b[1].shape for b in batches] == [(2, 8, 8), (2, 8, 8), (1, 8, 8)]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), masks)
    np.testing.assert_allclose(batches[0][0], imgs[:2] / 255, rtol=1e-6)
    assert ds.num_classes == 2 and ds.image_shape == (8, 8, 3)
    with pytest.raises(ValueError, match=r"masks \[N, H, W\]"):
        load_segmentation(p, split="test")
    with pytest.raises(ValueError, match="val_images"):
        load_segmentation(p, split="val")
    with pytest.raises(ValueError, match="class id 1 but num_classes=1"):
        load_segmentation(p, split="train", num_classes=1)
    np.savez(p, test_images=imgs, test_masks=masks * 255)
    with pytest.raises(ValueError, match="255"):
        load_segmentation(p)


def test_load_segmentation_png_folders(tmp_path):
    from PIL import Image

    (tmp_path / "img").mkdir()
    (tmp_path / "mask").mkdir()
    rng = np.random.default_rng(1)
    ms = []
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
            tmp_path / "img" / f"case{i}.png"
        )
        m = (rng.random((8, 8)) > 0.5).astype(np.uint8)
        ms.append(m)
        Image.fromarray(m * 255).save(tmp_path / "mask" / f"case{i}_mask.png")
    ds = load_segmentation(tmp_path / "img", masks=tmp_path / "mask")
    x, y = ds.take(3)
    assert x.shape == (3, 8, 8, 3) and ds.num_classes == 2
    np.testing.assert_array_equal(y, np.stack(ms))
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(tmp_path / "mask" / "case0_mask.png")
    with pytest.raises(ValueError, match="image's size"):
        load_segmentation(tmp_path / "img", masks=tmp_path / "mask")
    (tmp_path / "mask" / "case1_mask.png").unlink()
    with pytest.raises(ValueError, match="no mask"):
        load_segmentation(tmp_path / "img", masks=tmp_path / "mask")


# ----------------------------------------------------------------------------- real data
@pytest.mark.slow
@pytest.mark.skipif(not ISIC.exists(), reason=f"real-data test: {ISIC} is absent")
def test_reference_unet_reaches_recorded_dice_and_segpgd_lowers_it():
    from jaxadv.checkpoint import load_reference, reference_model

    _, meta = load_reference("unet_isic")
    model = reference_model("unet_isic")
    x, y = (jnp.asarray(a) for a in load_segmentation(ISIC, split="test").arrays())
    clean = S.scores(jax.jit(lambda m, v: m(v))(model, x), y)["dice"]
    assert abs(float(clean.mean()) - meta["test_dice"]) < 2e-3
    assert meta["test_dice"] > 0.85 and meta["bytes"] < 1_000_000
    res = SegPGD(threat=jaxadv.LinfBall(eps=4 / 255), num_steps=5)(0, model, x[:32], y[:32])
    assert float(res.info["dice"].mean()) < float(clean[:32].mean()) - 0.1


# ----------------------------------------------------------------------------- command line
def test_cli_refuses_bad_segmentation_requests_before_loading(capsys):
    from jaxadv.cli import main

    assert main(["attack", "--model", "unet_isic", "--attack", "square", "--data", "x.npz"]) == 2
    assert "not a segmentation attack" in capsys.readouterr().err
    assert main(["attack", "--model", "unet_isic", "--attack", "dag", "--norm", "l1"]) == 2
    assert "linf or l2" in capsys.readouterr().err
    assert main(["attack", "--model", "unet_isic", "--attack", "dag"]) == 2
    assert "segmentation data" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not ISIC.exists(), reason=f"real-data test: {ISIC} is absent")
def test_cli_attacks_the_reference_unet(tmp_path, capsys):
    import json

    from jaxadv.cli import main

    argv = ["attack", "--model", "unet_isic", "--data", str(ISIC), "--num-examples", "4"]
    argv += ["--attack", "segpgd", "--eps", "0,8", "--num-steps", "3", "--out", str(tmp_path)]
    assert main(argv) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["eps_255"] for r in rows] == pytest.approx([0.0, 8.0])
    assert rows[0]["dice"] == pytest.approx(rows[0]["clean_dice"], abs=1e-6)
    assert rows[1]["dice"] < rows[0]["dice"]
    assert "clean_dice" in capsys.readouterr().out
