"""Dense attacks through the one engine: ``jaxadv.evaluate`` equals a direct attack call, sharded
equals unsharded, and ``jaxadv attack`` on a segmentation model writes what the engine computes
and refuses bad requests with one line."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from test_segmentation import blur_model

import jaxadv
from jaxadv import segmentation as S
from jaxadv.cli import main
from jaxadv.data import synthetic_segmentation
from jaxadv.engine.layout import data_mesh

_DENSE = ("dice", "iou", "pixel_accuracy")


def _attack(name):
    ball = jaxadv.LinfBall(eps=0.0)
    if name == "asma":
        return jaxadv.ASMA(threat=ball, num_steps=3)
    return jaxadv.SegPGD(threat=ball, num_steps=3, rule=S.dice_below(0.5))


# ----------------------------------------------------------------------------- engine
@pytest.mark.parametrize("name", ["segpgd", "asma"])
def test_engine_equals_a_direct_attack_call(name):
    ds = synthetic_segmentation(5, size=8, num_classes=3, seed=2)
    x, y = ds.take(5)
    model, atk = blur_model(1), _attack(name)
    target = np.zeros((8, 8), np.int32) if name == "asma" else None
    eps = [0.0, 0.08]
    ev = jaxadv.evaluate(atk, model, ds, eps, key=3, num_adv=5, target=target)
    direct = atk.with_eps(0.08)(
        jax.random.key(3), model, x, y, target=None if target is None else np.zeros_like(y)
    )
    np.testing.assert_allclose(ev.adv, np.asarray(direct.adv), atol=1e-6)
    np.testing.assert_array_equal(ev.per_eps["success"][1], np.asarray(direct.success))
    np.testing.assert_array_equal(ev.per_eps["queries"][1], np.asarray(direct.queries))
    fields = _DENSE + (("target_iou",) if target is not None else ())
    for f in fields:
        np.testing.assert_allclose(ev.per_eps[f][1], np.asarray(direct.info[f]), atol=1e-6)
    # budget 0 is the clean image: the clean scores, no drop
    clean = S.scores(model(x), y, target=None if target is None else np.zeros_like(y))
    for f in fields:
        np.testing.assert_allclose(ev.clean_dense[f], np.asarray(clean[f]), atol=1e-6)
        np.testing.assert_allclose(ev.per_eps[f][0], ev.clean_dense[f])
        np.testing.assert_allclose(ev.per_eps[f"{f}_drop"][1], ev.clean_dense[f] - ev.per_eps[f][1])


def test_sharded_equals_unsharded_through_the_engine():
    assert len(jax.devices()) == 8  # tests/conftest.py: 8 fake CPU devices
    ds = synthetic_segmentation(13, size=8, num_classes=3, seed=5)  # 13 rows: padded blocks
    model = blur_model(2)
    atk = jaxadv.DAG(threat=jaxadv.L2Ball(eps=0.0), num_steps=3, rule=S.dice_below(0.6))
    eps = [0.0, 0.3, 1.0]
    a = jaxadv.evaluate(atk, model, ds, eps, key=1, batch_size=1)  # 8 devices, 2 steps
    b = jaxadv.evaluate(atk, model, ds, eps, key=1, mesh=data_mesh(jax.devices()[:1]))
    assert a.batches == 2 and b.batches == 1
    assert set(a.per_eps) == set(b.per_eps) and "dice_drop" in a.per_eps
    for k in a.per_eps:
        np.testing.assert_allclose(a.per_eps[k], b.per_eps[k], atol=1e-5, err_msg=k)
    np.testing.assert_array_equal(a.per_eps["success"], b.per_eps["success"])
    assert a.per_eps["success"][2].any()  # the test can fail: some image is broken
    for f in _DENSE:
        np.testing.assert_allclose(a.clean_dense[f], b.clean_dense[f], atol=1e-6)
    ra, rb = a.summary(), b.summary()
    assert [r["success_rate"] for r in ra] == [r["success_rate"] for r in rb]
    np.testing.assert_allclose([r["dice"] for r in ra], [r["dice"] for r in rb], atol=1e-6)


# ----------------------------------------------------------------------------- command line
def _seg_npz(path, n=6, size=8, classes=3):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    masks = rng.integers(0, classes, (n, size, size)).astype(np.uint8)
    np.savez(path, test_images=imgs, test_masks=masks)
    return path


@pytest.mark.parametrize("name", ["segpgd", "asma"])
def test_cli_writes_what_the_engine_computes(tmp_path, monkeypatch, capsys, name):
    from jaxadv import cli_segmentation
    from jaxadv.data import load_segmentation

    model = blur_model(1)
    monkeypatch.setattr(cli_segmentation, "load_model", lambda spec: model)  # a tiny stand-in
    data = _seg_npz(tmp_path / "seg.npz")
    out = tmp_path / "out"
    argv = ["attack", "--model", "unet_isic", "--data", str(data), "--attack", name]
    argv += ["--eps", "0,20", "--num-steps", "3", "--num-examples", "5", "--batch-size", "2"]
    argv += ["--seed", "4", "--out", str(out), "--quiet"]
    if name == "segpgd":
        argv += ["--option", "rule=dice_below", "--option", "threshold=0.5"]
    assert main(argv) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    # the same evaluation through the library: the rows are the engine's summary
    atk = _attack(name)
    target = np.zeros((8, 8), np.int32) if name == "asma" else None
    ds = load_segmentation(data)
    ev = jaxadv.evaluate(
        atk, model, ds, [0.0, 20 / 255], key=jax.random.key(4), indices=range(5), target=target
    )
    want = ev.summary()
    assert len(rows) == 2
    for got, w in zip(rows, want, strict=True):
        assert got["attack"] == name and got["num_images"] == 5 and got["norm"] == "linf"
        assert got["rule"] == atk.resolved_rule(target is not None).describe()
        for k in ("success_rate", "dice", "iou", "clean_dice", "dice_drop", "norm_mean_all"):
            assert got[k] == pytest.approx(w[k], abs=1e-6, nan_ok=True), k
    assert rows[0]["dice"] == pytest.approx(rows[0]["clean_dice"])
    assert ("target_iou" in rows[1]) == (name == "asma")
    assert (out / "results.csv").is_file()
    assert "clean_dice" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "msg"),
    [
        (["--attack", "segpgd", "--eps", "nan"], "finite and >= 0"),
        (["--attack", "segpgd", "--eps=-1"], "finite and >= 0"),
        (["--attack", "segpgd", "--norm", "l3"], "norm must be one of"),
        (["--attack", "dag", "--norm", "l1"], "linf or l2"),
        (["--attack", "pgd"], "not a segmentation attack"),
        (["--attack", "apgd"], "not a segmentation attack"),
        (["--attack", "segpgd", "--option", "rule=foo"], "rule= must be one of"),
        (["--attack", "segpgd", "--option", "bogus=1"], "no setting named"),
        (["--attack", "segpgd", "--recheck", "eager"], "--recheck is not supported"),
        (["--attack", "segpgd", "--cascade"], "do not apply to segmentation"),
        (["--attack", "segpgd", "--restarts", "2"], "no --restarts"),
    ],
)
def test_cli_hostile_segmentation_requests_get_one_line(tmp_path, capsys, extra, msg):
    data = _seg_npz(tmp_path / "seg.npz")
    argv = ["attack", "--model", "unet_isic", "--data", str(data), "--out", str(tmp_path / "o")]
    assert main(argv + extra) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # refused before any output or loading


@pytest.mark.parametrize(
    "case",
    [
        "masks_to_classifier",
        "labels_to_segmenter",
        pytest.param("wrong_classes", marks=pytest.mark.slow),
    ],
)
def test_cli_wrong_kind_of_data_gets_one_line(tmp_path, capsys, case):
    seg = _seg_npz(tmp_path / "seg.npz")  # 3 mask classes; unet_isic predicts 2
    labels = tmp_path / "cls.npz"
    np.savez(labels, test_images=np.zeros((4, 8, 8, 1), np.uint8), test_labels=np.zeros(4))
    model, data, msg = {
        "masks_to_classifier": ("small_cnn_clean", seg, "segmentation masks"),
        "labels_to_segmenter": ("unet_isic", labels, "no test_masks"),
        "wrong_classes": ("unet_isic", seg, "model predicts 2 classes"),
    }[case]
    argv = ["attack", "--model", model, "--data", str(data), "--out", str(tmp_path / "o")]
    assert main([*argv, "--attack", "segpgd" if model == "unet_isic" else "pgd"]) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and "\n" not in err and "Traceback" not in err
