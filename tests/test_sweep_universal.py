"""Universal attacks in sweeps (issue 14, item 6): a patch / UAP fitted per budget on the train
split and applied to the test split, stored like other cells, resumed without refitting, reported
(table, success vs budget, the fitted images); config errors at load, before anything runs."""

from __future__ import annotations

import copy
import pathlib

import numpy as np
import pytest

from jaxadv import sweep
from jaxadv.attacks.universal import AbstractUniversal, load_fitted
from jaxadv.sweep import storage
from jaxadv.sweep.report import load_sweep, write_report

FIT = {"epochs": 1, "batch_size": 8}
PATCH = {"attack": "patch", "eps": [0.05, 0.2], "options": {"target": 1}, "fit": FIT}
UAP = {"attack": "uap", "eps": [0, 8], "fit": FIT}


def _data(path: pathlib.Path, n_train: int = 16, n_test: int = 12) -> pathlib.Path:
    """A MedMNIST-layout file of noise images, two classes, train/val/test."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("val", 4), ("test", n_test)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2)[:, None]
    np.savez(path, **arrays)
    return path


def _cfg(tmp_path: pathlib.Path, attacks: list, **top) -> dict:
    data = _data(tmp_path / "syn.npz")
    return {
        "name": "uni",
        "seeds": [0],
        "batch_size": 8,
        "num_images": 2,
        "models": ["small_cnn_clean"],
        "datasets": [{"data": str(data)}],
        "attacks": attacks,
        **top,
    }


def test_config_entries_and_errors(tmp_path):
    cfg = sweep.load_config(_cfg(tmp_path, [PATCH, {**UAP, "norm": "l2", "eps": ["1/2"]}]))
    patch, uap = cfg.data["attacks"]
    assert (patch["label"], patch["norm"], patch["eps"]) == ("patch", "patch", [0.05, 0.2])
    assert patch["fit"] == {"split": "train", "epochs": 1, "batch_size": 8, "num_examples": None}
    assert (uap["label"], uap["norm"], uap["eps"]) == ("uap-l2", "l2", [0.5])
    # a per-image attack's entry (and so its cells' hashes) is unchanged by the new key
    assert "fit" not in sweep.load_config(_cfg(tmp_path, ["fgsm"], eps=[8])).data["attacks"][0]

    bad = [
        ({**PATCH, "eps": [-0.1]}, r"attacks\[0\]\.eps: eps values must be finite and >= 0"),
        (
            {**PATCH, "eps": [0, 0.1]},
            r"attacks\[0\]\.eps: .*fractions of the image area in \(0, 1\)",
        ),
        ({**PATCH, "eps": [0.9]}, r"attacks\[0\]: a patch of area 0.9 is larger than the image"),
        ({**PATCH, "options": {"target": 1, "scale_max": 0.5}}, r"options\.scale_max: set by"),
        ({**PATCH, "norm": "linf"}, r"attacks\[0\]\.norm: the universal patch's budget"),
        ({**PATCH, "num_steps": 5}, r"attacks\[0\]\.num_steps: does not apply"),
        ({**PATCH, "fit": {"steps": 5}}, r"attacks\[0\]\.fit: unknown key\(s\) steps"),
        ({**PATCH, "fit": {"epochs": 0}}, r"attacks\[0\]\.fit\.epochs: must be an integer >= 1"),
        ({**PATCH, "fit": {"num_examples": 4}}, r"fit: num_examples=4 is below batch_size=32"),
        ({**PATCH, "fit": {"split": "test"}}, r"fit split 'test' is the split evaluated"),
        (
            {**PATCH, "fit": {"split": "extra"}},
            r"has no 'extra' split \(it holds test, train, val\)",
        ),
        ({**PATCH, "options": {"target": 1, "shape": "hexagon"}}, r"attacks\[0\]: shape must be"),
        ({**UAP, "norm": "l1"}, r"attacks\[0\]\.norm: uap supports linf and l2"),
        ({"attack": "fgsm", "eps": [8], "fit": FIT}, r"attacks\[0\]\.fit: only universal"),
    ]
    for entry, msg in bad:
        with pytest.raises(sweep.ConfigError, match=msg):
            sweep.load_config(_cfg(tmp_path, [entry]))
    no_train = _cfg(tmp_path, [UAP])
    no_train["datasets"] = ["default"]
    with pytest.raises(sweep.ConfigError, match=r"fit\.split: .* holds the test split only"):
        sweep.load_config(no_train)
    seg = _cfg(tmp_path, [UAP])
    seg["models"] = ["unet_isic"]
    with pytest.raises(sweep.ConfigError, match=r"'uap' is a classifier attack but models\[0\]"):
        sweep.load_config(seg)
    sur = _cfg(tmp_path, [UAP, {"attack": "fgsm", "eps": [8]}])
    sur["surrogate"] = "all"
    with pytest.raises(sweep.ConfigError, match=r"is fitted on its target, not crafted on a"):
        sweep.load_config(sur)
    own = _cfg(tmp_path, [{**UAP, "surrogate": "all"}])
    with pytest.raises(sweep.ConfigError, match=r"attacks\[0\]\.surrogate: does not apply"):
        sweep.load_config(own)


@pytest.mark.slow
def test_fit_apply_resume_and_report(tmp_path, monkeypatch):
    """Two cells (patch at 5 % and 20 % of the area, UAP at eps 0 and 8/255) fitted on the train
    split and evaluated on the test split; deleting the cell files and running again reloads the
    saved fits (fitting is made to fail) and reproduces the per-example results exactly."""
    cfg = sweep.load_config(_cfg(tmp_path, [PATCH, UAP]))
    out = tmp_path / "out"
    res = sweep.run_sweep(cfg, out)
    assert res.complete and len(res.computed) == 2
    recs = storage.SweepDir(out).load(strict=True)
    patch = next(r for r in recs.values() if r["cell"]["attack"]["attack"] == "patch")
    uap = next(r for r in recs.values() if r["cell"]["attack"]["attack"] == "uap")
    # the patch cell evaluates the test images whose label is not the target (Finlayson's rule)
    idx = storage.decode_array(patch["results"]["indices"], np.int64)
    labels = storage.decode_array(patch["results"]["labels"], np.int64)
    assert idx.tolist() == list(range(0, 12, 2)) and not labels.any()
    assert storage.decode_array(uap["results"]["indices"], np.int64).tolist() == list(range(12))
    u = patch["universal"]
    assert (u["fit_split"], u["fit_examples"], u["target"]) == ("train", 16, 1)
    assert [f["fitted"] for f in u["fits"]] == [True, True]
    assert [f["fitted"] for f in uap["universal"]["fits"]] == [False, True]  # eps 0: no fit
    # the saved fit is the one applied: its scale covers the budget's area of a 28 x 28 image
    fitted = load_fitted(out / u["fits"][1]["file"])
    assert fitted.attack.target == 1
    area = np.pi / 4 * (fitted.attack.scale_min * 28) ** 2 / 28**2
    assert area == pytest.approx(0.2, rel=1e-5)
    assert (out / u["fits"][1]["file"]).with_suffix(".png").is_file()
    assert not list((out / "fits").glob("*.ckpt.npz"))  # checkpoints removed after a fit
    uap_eps = storage.decode_array(uap["results"]["linf"], np.float32)
    assert uap_eps[0].max() == 0 and uap_eps[1].max() <= 8 / 255 + 1e-6

    before = {k: r["results_sha256"] for k, r in recs.items()}
    for p in storage.SweepDir(out).cell_files():
        p.unlink()

    def no_fit(*a, **k):
        raise AssertionError("a saved fit was refitted")

    monkeypatch.setattr(AbstractUniversal, "fit", no_fit)
    again = sweep.run_sweep(cfg, out)
    assert len(again.computed) == 2
    recs = storage.SweepDir(out).load(strict=True)
    assert {k: r["results_sha256"] for k, r in recs.items()} == before
    assert all(not f["fitted"] for r in recs.values() for f in r["universal"]["fits"])

    # a damaged fit file is fitted again (the same fit: deterministic by key), the others loaded
    monkeypatch.undo()
    (out / u["fits"][0]["file"]).write_bytes(b"truncated")
    for p in storage.SweepDir(out).cell_files():
        if "__patch__" in p.name:
            p.unlink()
    sweep.run_sweep(cfg, out)
    recs = storage.SweepDir(out).load(strict=True)
    patch = next(r for r in recs.values() if r["cell"]["attack"]["attack"] == "patch")
    assert [f["fitted"] for f in patch["universal"]["fits"]] == [True, False]
    assert {k: r["results_sha256"] for k, r in recs.items()} == before

    html = write_report(out)
    md = (html.parent / "report.md").read_text()
    assert "## Universal attacks (fitted on a training split)" in md
    assert "targeted_success" in md and "| 5% area |" in md and "| 20% area |" in md
    names = {p.name for p in html.parent.glob("*.png")}
    assert any(n.startswith("universal_success_") for n in names)
    assert any(n.startswith("universal_fitted_") and "patch" in n for n in names)
    _, cells, missing = load_sweep(out)
    assert not missing
    pc = next(c for c in cells if c.attack == "patch")
    succ = pc.per_eps["success"]
    assert [r["targeted_success"] for r in pc.summary] == pytest.approx(succ.mean(1).tolist())


def test_config_hash_tracks_fit_settings(tmp_path):
    a = sweep.load_config(_cfg(tmp_path, [PATCH]))
    more = copy.deepcopy(PATCH)
    more["fit"]["epochs"] = 2
    b = sweep.load_config(_cfg(tmp_path, [more]))
    assert a.cells()[0].id == b.cells()[0].id and a.cells()[0].hash != b.cells()[0].hash


def test_bias_field_examples_draw_the_field():
    """The report's bias-field examples draw log(adv / clean): the field itself where the clean
    pixel is lit, blank (NaN) where it is dark."""
    from jaxadv.report import image_grid_png, log_field

    rng = np.random.default_rng(0)
    clean = rng.uniform(0.1, 0.6, (2, 8, 8, 3))
    clean[0, 0, 0, 1] = 0.0  # a dark pixel: no ratio there
    r, c = np.meshgrid(np.linspace(-1, 1, 8), np.linspace(-1, 1, 8), indexing="ij")
    f = 0.3 * r - 0.2 * c * r  # a smooth log-field, |f| <= 0.5
    adv = clean * np.exp(f)[None, ..., None]
    got = log_field(clean, adv)
    assert np.isnan(got[0, 0, 0]) and np.isfinite(got).sum() == 2 * 64 - 1
    np.testing.assert_allclose(got[1], f, atol=1e-12)
    np.testing.assert_allclose(got[0][np.isfinite(got[0])], f[np.isfinite(got[0])], atol=1e-12)
    png = image_grid_png(clean, adv, field=True)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
