"""Sweeps with fitted detectors (issue 16, item 3): validated at config load, scored inside each
cell, stored per example, reported as AUC / TPR95 per eps equal to ``jaxadv.detect.evaluate``;
configs without ``detectors:`` keep their hashes."""

from __future__ import annotations

import copy
import json
import pathlib

import jax
import numpy as np
import pytest
import yaml

import jaxadv
import jaxadv.detect as D
from jaxadv import sweep
from jaxadv.checkpoint import reference_model
from jaxadv.detect.evaluation import _score
from jaxadv.features import with_features
from jaxadv.sweep import storage
from jaxadv.sweep.report import load_sweep
from jaxadv.vocab import load_dataset, make_attack

BASE = {
    "name": "det",
    "seeds": [0],
    "batch_size": 4,
    "num_images": 2,
    "eps": [0, 4, 8],
    "models": ["small_cnn_clean"],
    "datasets": [{"data": "default", "num_examples": 10}],
    "attacks": ["fgsm"],
}


@pytest.fixture(scope="module")
def det_dir(tmp_path_factory) -> pathlib.Path:
    """Mahalanobis and KD fitted on 40 default images (not the 10 the sweep attacks)."""
    d = tmp_path_factory.mktemp("dets")
    ds = load_dataset("default", "test", None, None)
    x, y = ds.get(np.arange(10, 50))
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
    fm = with_features(reference_model("small_cnn_clean"))
    fgsm = jaxadv.FGSM(threat=jaxadv.LinfBall(eps=8 / 255))
    adv = np.asarray(fgsm(jax.random.key(0), fm, x, y).adv)
    D.save(D.Mahalanobis(model=fm).fit(x, y, adv), d / "maha.json")
    D.save(D.KernelDensity(model=fm).fit(x, y), d / "kd.json")
    return d


def _cfg(path: pathlib.Path, **patch) -> pathlib.Path:
    path.write_text(yaml.safe_dump({**BASE, **patch}))
    return path


@pytest.mark.slow
def test_sweep_scores_and_report_equal_detect_evaluate(det_dir, tmp_path):
    dets = [{"detector": "maha.json", "label": "maha"}, "kd.json"]
    cfg = sweep.load_config(_cfg(det_dir / "sweep.yaml", detectors=dets))  # paths: config folder
    assert [d["label"] for d in cfg.data["detectors"]] == ["maha", "kd"]
    out = tmp_path / "out"
    sweep.run_sweep(cfg, out)
    (rec,) = storage.SweepDir(out).load(strict=True).values()
    stored = rec["results"]["detectors"]
    assert set(stored) == {"maha", "kd"}
    clean = storage.decode_array(stored["maha"]["clean"], np.float32)
    adv = storage.decode_array(stored["maha"]["adv"], np.float32)
    assert clean.shape == (10,) and adv.shape == (3, 10)
    np.testing.assert_array_equal(adv[0], clean)  # eps 0: the clean image itself

    # the same adversarials directly: the engine keeps them when asked (keys fold in the index)
    model = reference_model("small_cnn_clean")
    fm = with_features(model)
    ds = load_dataset("default", "test", None, None)
    x = np.asarray(ds.get(np.arange(10))[0], np.float32)
    fgsm = make_attack("fgsm", norm="linf", eps_max=8 / 255, num_steps=None, restarts=None)
    _, cells, _ = load_sweep(out)
    rows = cells[0].summary
    checked = 0
    for name in ("maha", "kd"):  # eps 0: no clean-correct example is adversarial
        assert rows[0][f"det_{name}_auc"] is None and rows[0][f"det_{name}_n_adv"] == 0
    for k, e in list(enumerate(np.asarray(BASE["eps"]) / 255))[1:]:
        ev = jaxadv.evaluate(
            fgsm, model, ds, np.asarray(BASE["eps"]) / 255, key=0, batch_size=4,
            indices=np.arange(10), num_adv=10, adv_eps=e,
        )  # fmt: skip
        cc = ev.clean_correct
        succ = ev.per_eps["success"][k][cc]
        for name in ("maha", "kd"):
            det = D.load(det_dir / f"{name}.json", fm)
            # stored scores are the detector's scores of these very images (float32
            # Mahalanobis scores move by ~4e-4 relative with the batch shape and sharding)
            np.testing.assert_allclose(
                storage.decode_array(stored[name]["adv"], np.float32)[k],
                np.asarray(_score(ev.adv, det)),
                rtol=2e-3,
                atol=1e-3,
            )
            if not succ.any():
                assert rows[k][f"det_{name}_auc"] is None and rows[k][f"det_{name}_n_adv"] == 0
                continue
            want = D.evaluate({name: det}, x[cc], ev.adv[cc], succ)[name]
            assert rows[k][f"det_{name}_auc"] == pytest.approx(want["auc"], abs=1e-9)
            assert rows[k][f"det_{name}_tpr95"] == pytest.approx(want["tpr_at_tnr95"], abs=1e-9)
            assert rows[k][f"det_{name}_n_adv"] == want["n_adv"]
            checked += 1
    assert checked >= 2  # at least one eps where FGSM succeeds, for both detectors

    page = sweep.write_report(out)
    csv_head = (page.parent / "results.csv").read_text().splitlines()[0]
    assert "det_maha_auc" in csv_head and "det_kd_tpr95" in csv_head
    md = (page.parent / "report.md").read_text()
    assert "## Detectors" in md and "detection_auc_maha_default.png" in md
    assert (page.parent / "detection_auc_kd_default.png").is_file()

    # a crafted cell file with scores of the wrong shape is refused with a clear message
    bad = copy.deepcopy(rec)
    bad["results"]["detectors"]["maha"]["adv"] = stored["maha"]["adv"][:2]
    assert (
        storage.check_cell_fields(bad) == "results.detectors.maha.adv must be 3 lists of 10 numbers"
    )
    bad = copy.deepcopy(rec)
    bad["results"]["detectors"]["kd"]["clean"] = [1.0]
    assert "results.detectors.kd.clean must be a list of 10 numbers" in storage.check_cell_fields(
        bad
    )


def test_detector_entries_are_checked_at_config_load(det_dir):
    (det_dir / "notdet.json").write_text(json.dumps({"hello": 1}))
    two = ["small_cnn_clean", "small_cnn_pgdat"]
    cases = [
        (["missing.json"], {}, "detectors[0]: detector file"),
        (["notdet.json"], {}, "detectors[0]: " + str(det_dir / "notdet.json") + " is not a jaxadv"),
        (["maha.json"], {"models": two}, "detectors[0] (maha.json): say which model"),
        ([{"detector": "maha.json", "model": "nope"}], {}, "detectors[0].model: 'nope' is not"),
        ([{"detector": "maha.json", "colour": 1}], {}, "detectors[0]: unknown key(s) colour"),
        (["maha.json", "maha.json"], {}, "detectors[1] and detectors[0] share the label 'maha'"),
    ]
    for i, (dets, patch, msg) in enumerate(cases):
        with pytest.raises(sweep.ConfigError) as e:
            sweep.load_config(_cfg(det_dir / f"bad{i}.yaml", detectors=dets, **patch))
        assert msg in str(e.value), (msg, str(e.value))


def test_detector_that_does_not_fit_its_model_is_refused_before_any_cell(det_dir, tmp_path):
    text = (det_dir / "kd.json").read_text()
    assert '"drop"' in text
    (det_dir / "kd_nope.json").write_text(text.replace('"drop"', '"nope"'))
    cfg = sweep.load_config(_cfg(det_dir / "nofit.yaml", detectors=["kd_nope.json"]))
    with pytest.raises(sweep.SweepError) as e:
        sweep.run_sweep(cfg, tmp_path / "out")
    msg = str(e.value)
    assert "detector 'kd_nope' (kd_nope.json) on model 'small_cnn_clean'" in msg
    assert "does not fit this model" in msg
    assert not list((tmp_path / "out" / "cells").glob("*.json"))
    # a layer the model has, but statistics of another size (KD fitted on 128-d 'drop')
    (det_dir / "kd_bn1.json").write_text(text.replace('"drop"', '"bn1"'))
    cfg = sweep.load_config(_cfg(det_dir / "nofit2.yaml", detectors=["kd_bn1.json"]))
    with pytest.raises(sweep.SweepError, match="'kd_bn1' .* does not fit this model"):
        sweep.run_sweep(cfg, tmp_path / "out2")


def test_hashes_without_detectors_are_kept_and_detector_content_is_hashed(det_dir):
    plain = sweep.load_config(_cfg(det_dir / "plain.yaml"))
    assert "detectors" not in plain.data
    assert not any("detectors" in c.spec() for c in plain.cells())
    two = ["small_cnn_clean", "small_cnn_pgdat"]
    both = sweep.load_config(_cfg(det_dir / "two.yaml", models=two))
    dets = [{"detector": "kd.json", "model": "small_cnn_clean"}]
    withd = sweep.load_config(_cfg(det_dir / "twod.yaml", models=two, detectors=dets))
    assert withd.hash != both.hash
    a, b = both.cells(), withd.cells()
    assert a[0].hash != b[0].hash  # the clean model's cell has a detector now
    assert a[1].hash == b[1].hash  # the other model's cell is unchanged
    # a refitted detector (other content, same path) recomputes its cells
    src = det_dir / "kd.json"
    keep = src.read_text()
    try:
        src.write_text((det_dir / "maha.json").read_text())
        again = sweep.load_config(det_dir / "twod.yaml")
        assert again.cells()[0].hash != b[0].hash
    finally:
        src.write_text(keep)
