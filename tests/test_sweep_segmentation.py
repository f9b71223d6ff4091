"""Segmentation sweeps (issue 17 item 4): a config with a segmentation model, a segmentation
``.npz`` and dense attacks runs through ``jaxadv.evaluate``, resumes, stores the per-image Dice /
IoU fields (checked on read), and reports the rows ``jaxadv.evaluate(...).summary()`` gives;
configs mixing segmentation and classification are refused at load, naming the entry.

Everything is tiny: 6 synthetic 8x8 images and a 2-level UNet of width 2 saved as a checkpoint
with ``"task": "segmentation"`` (the path the command line takes for a trained model)."""

from __future__ import annotations

import copy
import json
import re

import jax
import numpy as np
import pytest
import yaml
from flax import nnx
from test_segmentation import blur_model

import jaxadv
from jaxadv import checkpoint, cli_segmentation, sweep
from jaxadv.cli import main
from jaxadv.data import load_segmentation, synthetic_segmentation
from jaxadv.nn import UNet
from jaxadv.sweep import storage
from jaxadv.sweep.storage import SweepDir, decode_images, decode_masks

_KW = {"num_classes": 2, "in_channels": 3, "width": 2, "depth": 2}


def _save_unet(path):
    net = UNet(**_KW, rngs=nnx.Rngs(0))
    meta = {"architecture": "unet", "kwargs": _KW, "task": "segmentation"}
    checkpoint.save(path, net, meta)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The data file, and a checkpoint whose metadata says ``"task": "segmentation"``: the
    in-process tests stub its loading with a one-layer model (initialising and compiling the UNet
    takes tens of seconds on 2 cores; ``test_a_real_unet_checkpoint_end_to_end`` loads one)."""
    d = tmp_path_factory.mktemp("segsweep")
    x, y = synthetic_segmentation(6, size=8, num_classes=2, channels=3, seed=1).take(6)
    imgs = np.round(np.asarray(x) * 255).astype(np.uint8)
    np.savez(d / "seg.npz", test_images=imgs, test_masks=np.asarray(y, np.uint8))
    checkpoint.save(
        d / "unet.msgpack", nnx.Linear(1, 1, rngs=nnx.Rngs(0)), {"task": "segmentation"}
    )
    return d


def _cfg(files, **over):
    cfg = {
        "name": "seg",
        "seeds": [0],
        "batch_size": 2,
        "num_images": 2,
        "eps": [0, 16],
        "num_steps": 2,
        "models": [str(files / "unet.msgpack")],
        "datasets": [{"data": str(files / "seg.npz"), "num_examples": 5}],
        "attacks": ["segpgd", "asma"],
    }
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def ran(files):
    """The sweep, run once (8 fake devices, batch size 2: padded blocks), with a one-layer
    segmentation model standing in for the checkpoint."""
    model = blur_model(1, classes=2)
    cfg = sweep.load_config(_cfg(files))
    out = files / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli_segmentation, "load_model", lambda spec: model)
        first = sweep.run_sweep(cfg, out)
    return cfg, out, first, model


def _same_rows(got, want, name):
    assert len(got) == len(want) == 2
    for g, w in zip(got, want, strict=True):
        assert set(w) <= set(g), set(w) - set(g)
        for k, v in w.items():
            if isinstance(v, float):  # NaN is null in JSON
                g_k = np.nan if g[k] is None else g[k]
                assert g_k == pytest.approx(v, abs=1e-6, nan_ok=True), (name, k)
            else:
                assert g[k] == v, (name, k)


def _engine_rows(model, files, name, eps=(0.0, 16 / 255)):
    attack = cli_segmentation.make_attack(name, "linf", 2, {})
    target = np.zeros((8, 8), np.int32) if name == "asma" else None
    ds = load_segmentation(files / "seg.npz")
    return jaxadv.evaluate(
        attack, model, ds, list(eps), key=jax.random.key(0), indices=range(5), batch_size=2,
        target=target,
    ).summary()  # fmt: skip


def test_segmentation_sweep_runs_and_resumes(ran):
    cfg, out, first, _ = ran
    assert first.complete and len(first.computed) == 2 and not first.skipped
    again = sweep.run_sweep(cfg, out)  # a rerun skips the finished cells
    assert again.complete and not again.computed and sorted(again.skipped) == sorted(first.cells)
    rec = SweepDir(out).load()["unet__seg-test__asma__seed0"]
    r = rec["results"]
    assert np.shape(r["dice"]) == (2, 5) and np.shape(r["clean_dice"]) == (5,)
    assert (
        np.shape(r["target_iou"]) == (2, 5)
        and "target_iou" not in SweepDir(out).load()["unet__seg-test__segpgd__seed0"]["results"]
    )
    assert rec["rule"].startswith("target_iou")


def test_segmentation_shards_merge_to_the_same_results(ran, tmp_path):
    cfg, out, _, model = ran
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli_segmentation, "load_model", lambda spec: model)
        for i in (0, 1):
            assert (
                len(sweep.run_sweep(cfg, tmp_path / f"s{i}", num_shards=2, shard_index=i).computed)
                == 1
            )
    sweep.merge([tmp_path / "s0", tmp_path / "s1"], tmp_path / "m")

    def sums(d):
        return {k: r["results_sha256"] for k, r in SweepDir(d).load().items()}

    assert sums(tmp_path / "m") == sums(out) and len(sums(out)) == 2


def test_segmentation_report_rows_equal_the_engine_summary(ran, files):
    _, out, _, model = ran
    html = sweep.write_report(out)
    rows = [json.loads(line) for line in (html.parent / "results.jsonl").read_text().splitlines()]
    for name in ("segpgd", "asma"):
        got = [r for r in rows if r["attack"] == name]
        _same_rows(got, _engine_rows(model, files, name), name)
        assert ("target_iou" in got[1]) == (name == "asma")
        assert got[1]["norm_mean_all"] > 0  # the attack moved the images: the test can fail
    # the attacks did their work: SegPGD lowers Dice, ASMA raises the IoU with its target
    seg_rows = [r for r in rows if r["attack"] == "segpgd"]
    assert seg_rows[1]["dice"] < seg_rows[1]["clean_dice"]
    asma = [r for r in rows if r["attack"] == "asma"]
    assert asma[1]["target_iou"] > asma[1]["clean_target_iou"]
    names = {p.name for p in html.parent.iterdir()}
    assert "robust_dice_seg-test.png" in names
    assert {"examples_unet__seg-test__segpgd.png", "examples_unet__seg-test__asma.png"} <= names
    md = (html.parent / "report.md").read_text()
    assert "Segmentation: Dice and IoU vs eps" in md and "Robust Dice vs eps" in md


def _png_folders(files, root):
    """The ``.npz`` test split written as an image folder and a mask folder (same stems)."""
    from PIL import Image

    with np.load(files / "seg.npz") as z:
        imgs, masks = z["test_images"], z["test_masks"]
    (root / "img").mkdir()
    (root / "msk").mkdir()
    for i, (im, m) in enumerate(zip(imgs, masks, strict=True)):
        Image.fromarray(im).save(root / "img" / f"case{i}.png")
        Image.fromarray(m).save(root / "msk" / f"case{i}_mask.png")
    return root / "img", root / "msk"


def test_image_and_mask_folders_give_the_npz_rows(ran, files, tmp_path):
    """``datasets: [{data: IMAGES, masks: MASKS}]`` reads PNG folders through the one loader
    (``load_segmentation``); the same pixels give the same rows as the ``.npz``."""
    _, out, _, model = ran
    img, msk = _png_folders(files, tmp_path)
    raw = _cfg(files, attacks=["segpgd"])
    raw["datasets"] = [{"data": str(img), "masks": str(msk), "num_examples": 5, "label": "pngs"}]
    cfg = sweep.load_config(raw)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli_segmentation, "load_model", lambda spec: model)
        assert sweep.run_sweep(cfg, tmp_path / "o").complete
    got = SweepDir(tmp_path / "o").load()["unet__pngs__segpgd__seed0"]["results"]
    want = SweepDir(out).load()["unet__seg-test__segpgd__seed0"]["results"]
    for k in ("dice", "clean_dice", "iou", "success"):
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]), err_msg=k)
    # a config without masks: keeps its hash (the key is only stored when given)
    assert "masks" not in sweep.load_config(_cfg(files)).data["datasets"][0]


def test_mask_folder_content_is_part_of_the_cell_hash(files, tmp_path):
    """Re-exported masks in the same folder must not resume stale Dice / IoU cells."""
    from PIL import Image

    img, msk = _png_folders(files, tmp_path)
    raw = _cfg(files, attacks=["segpgd"])
    raw["datasets"] = [{"data": str(img), "masks": str(msk)}]
    before = sweep.load_config(raw).cells()[0].hash
    m = np.asarray(Image.open(msk / "case0_mask.png"))
    Image.fromarray((1 - m).astype(np.uint8)).save(msk / "case0_mask.png")
    assert sweep.load_config(raw).cells()[0].hash != before


def test_bad_mask_folder_entries_are_refused(files, tmp_path):
    img, msk = _png_folders(files, tmp_path)
    bad = [
        ({"data": str(img), "masks": str(tmp_path / "nope")}, "datasets[0].masks: with masks:"),
        ({"data": str(files / "seg.npz"), "masks": str(msk)}, "datasets[0].data: with masks:"),
        ({"data": str(img)}, "datasets[0]: a segmentation model needs a segmentation .npz"),
        ({"data": str(files / "seg.npz"), "image_size": 4}, "image_size resizes image + mask"),
    ]
    for entry, msg in bad:
        with pytest.raises(sweep.ConfigError, match=re.escape(msg)):
            sweep.load_config(_cfg(files, datasets=[entry]))
    with pytest.raises(sweep.ConfigError, match=re.escape("datasets[0].masks: only segmentation")):
        sweep.load_config(
            _cfg(files, models=["small_cnn_clean"], attacks=["fgsm"],
                 datasets=[{"data": "default", "masks": str(msk)}])
        )  # fmt: skip


@pytest.mark.slow
def test_a_real_unet_checkpoint_end_to_end(files, tmp_path):
    _save_unet(tmp_path / "unet.msgpack")
    cfg = sweep.load_config(
        _cfg(files, attacks=["segpgd"], models=[str(tmp_path / "unet.msgpack")])
    )
    assert sweep.run_sweep(cfg, tmp_path / "o").complete
    html = sweep.write_report(tmp_path / "o")
    rows = [json.loads(line) for line in (html.parent / "results.jsonl").read_text().splitlines()]
    model = cli_segmentation.load_model(str(tmp_path / "unet.msgpack"))
    _same_rows(rows, _engine_rows(model, files, "segpgd"), "segpgd")


def test_segmentation_samples_hold_the_masks_and_predictions(ran, files):
    _, out, _, model = ran
    smp = SweepDir(out).load()["unet__seg-test__segpgd__seed0"]["samples"]
    _, y = load_segmentation(files / "seg.npz").take(2)
    np.testing.assert_array_equal(decode_masks(smp["masks"]), np.asarray(y))
    clean = decode_images(smp["clean"])  # the images are stored as uint8, as the data file is
    pred = np.argmax(np.asarray(model(clean)), -1)
    np.testing.assert_array_equal(decode_masks(smp["clean_pred"]), pred)
    assert decode_masks(smp["adv_pred"]).shape == (2, 8, 8)


@pytest.mark.parametrize(
    ("edit", "msg"),
    [
        (lambda r, s: r.__setitem__("dice", r["dice"][:1]), "results.dice must be 2 lists of 5"),
        (lambda r, s: r.__setitem__("clean_iou", r["clean_iou"][:3]), "results.clean_iou must be"),
        (lambda r, s: r.pop("pixel_accuracy"), "results.pixel_accuracy is missing"),
        (lambda r, s: s.__setitem__("adv_pred", s["masks"][:8]), "samples.adv_pred"),
        (
            lambda r, s: s.__setitem__("masks", storage.encode_masks(np.zeros((2, 4, 8), int))),
            "samples.masks must be masks [2, 8, 8]",
        ),
    ],
)
def test_crafted_segmentation_cells_are_refused(ran, tmp_path, edit, msg):
    _, out, _, _ = ran
    rec = copy.deepcopy(SweepDir(out).load()["unet__seg-test__segpgd__seed0"])
    assert storage.check_record(rec) is None
    edit(rec["results"], rec["samples"])
    store = SweepDir(tmp_path)
    store.write_cell(rec)  # sealed: only the field checks can catch it
    with pytest.raises(sweep.CorruptResultsError, match=re.escape(msg)):
        store.load()


def test_a_classifier_cell_with_dense_fields_is_refused(ran):
    _, out, _, _ = ran
    rec = copy.deepcopy(SweepDir(out).load()["unet__seg-test__segpgd__seed0"])
    rec["cell"]["attack"]["attack"] = "pgd"
    assert "belongs to a segmentation cell" in storage.check_record(storage.seal(rec))


def test_unet_isic_is_a_name_not_a_path(files):
    cfg = sweep.load_config(_cfg(files, models=["unet_isic"]))
    assert cfg.resolve("unet_isic") == "unet_isic"
    assert cfg.cells()[0].id.startswith("unet_isic__seg-test__segpgd")
    assert cfg.input_fingerprints()["unet_isic"] is None


@pytest.mark.parametrize(
    ("over", "msg"),
    [
        ({"attacks": ["segpgd", "pgd"]}, "attacks[1]: 'pgd' is a classifier attack but models[0]"),
        (
            {"models": ["small_cnn_clean"], "datasets": ["default"]},
            "attacks[0]: 'segpgd' is a segmentation attack but models[0] ('small_cnn_clean')",
        ),
        (
            {"models": ["unet_isic", "small_cnn_clean"]},
            "attacks[0]: 'segpgd' is a segmentation attack but models[1]",
        ),
        ({"datasets": ["default"]}, "datasets[0]: a segmentation model needs a segmentation .npz"),
        ({"attacks": [{"attack": "segpgd", "restarts": 2}]}, "attacks[0].restarts: does not apply"),
        ({"attacks": [{"attack": "dag", "norm": "l1"}]}, "attacks[0]: segmentation attacks take"),
        ({"attacks": [{"attack": "asma", "cascade": True}]}, "attacks[0].cascade"),
        ({"attacks": [{"attack": "segpgd", "options": {"bogus": 1}}]}, "no setting named"),
        ({"attacks": [{"attack": "segpgd", "options": {"rule": "x"}}]}, "rule= must be one of"),
        ({"success_margin": 0.5}, "attacks[0]: the top-level success_margin does not apply"),
        ({"attacks": [{"attack": "segpgd", "num_steps": 0}]}, "attacks[0].num_steps: must be"),
    ],
)
def test_bad_segmentation_configs_are_refused_at_load(files, over, msg):
    with pytest.raises(sweep.ConfigError, match=re.escape(msg)):
        sweep.load_config(_cfg(files, **over))


def test_segmentation_data_without_masks_is_refused(files, tmp_path):
    np.savez(tmp_path / "cls.npz", test_images=np.zeros((2, 8, 8, 3), np.uint8), test_labels=[0, 1])
    with pytest.raises(sweep.ConfigError, match="datasets.0.: .* has no test_images / test_masks"):
        sweep.load_config(_cfg(files, datasets=[str(tmp_path / "cls.npz")]))


def test_cli_mixed_config_gets_one_line(files, tmp_path, capsys):
    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump(_cfg(files, attacks=["pgd"])))
    assert main(["sweep", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "is a classifier attack but models[0]" in err and "\n" not in err
    assert not (tmp_path / "o").exists()
