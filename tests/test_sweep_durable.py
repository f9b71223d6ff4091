"""Sweep configs with a success margin and a storage grid (issue 19): hashed, validated, run,
recorded and reported; configs without them keep the hashes they had before the keys existed."""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import pytest
import yaml
from conftest import float_images_npz

from jaxadv import sweep
from jaxadv.cli import main
from jaxadv.sweep.storage import SweepDir, decode_array, decode_images

GRID = {
    "name": "grid",
    "seeds": [0, 1],
    "batch_size": 4,
    "num_images": 2,
    "eps": [0, 8],
    "num_steps": 2,
    "models": ["small_cnn_clean"],
    "datasets": [{"data": "default", "num_examples": 10}],
    "attacks": ["fgsm", "pgd"],
}


def test_configs_without_the_keys_keep_their_hashes():
    # measured on the commit before success_margin / grid existed (7ebb19d)
    smoke = sweep.load_config("smoke")
    assert smoke.hash == "a33fa74517badfa3"
    assert [c.hash for c in smoke.cells()][:2] == ["42fe455a5dea77b8", "e64586a1f3f8c9e6"]
    plain = sweep.load_config(GRID)
    assert plain.hash == "4326a4029f4eb873"
    assert plain.cells()[0].hash == "2b3aa22d5877db91"
    # the plain argmax rule written out changes nothing
    same = sweep.load_config({**GRID, "success_margin": 0, "attacks": ["fgsm", "pgd"]})
    assert same.hash == plain.hash and "success_margin" not in same.data["attacks"][0]


def test_margin_and_grid_are_hashed_and_attack_entries_override():
    plain = sweep.load_config(GRID)
    kappa = sweep.load_config({**GRID, "success_margin": "1e-3"})  # YAML leaves 1e-3 a string
    grid = sweep.load_config({**GRID, "grid": "uint8"})
    assert len({plain.hash, kappa.hash, grid.hash}) == 3
    assert kappa.data["attacks"][1]["success_margin"] == 1e-3
    assert grid.data["attacks"][0]["grid"] == 8  # dtype names become bit depths
    assert sweep.load_config({**GRID, "grid": 8}).hash == grid.hash
    cfg = sweep.load_config(
        {
            **GRID,
            "grid": 16,
            "attacks": ["fgsm", {"attack": "fgsm", "grid": 8, "success_margin": 1}],
        }
    )
    a0, a1 = cfg.data["attacks"]
    assert a0["grid"] == 16 and "success_margin" not in a0
    assert a1["grid"] == 8 and a1["success_margin"] == 1.0
    assert a1["label"] == "fgsm-k1-8bit"  # a distinct default label, so both can be listed
    assert cfg.data["attacks"][0]["label"] == "fgsm"
    ds = sweep.load_config({**GRID, "grid": "dataset"})
    assert ds.data["attacks"][0]["grid"] == "dataset" and ds.hash != grid.hash


@pytest.mark.parametrize(
    "patch, msg",
    [
        ({"success_margin": -1}, "success_margin must be a finite number >= 0"),
        ({"success_margin": "abc"}, "success_margin must be a finite number >= 0"),
        ({"success_margin": float("inf")}, "success_margin must be"),
        ({"success_margin": True}, "success_margin must be"),
        ({"grid": 17}, "grid must be a bit depth 1..16"),
        ({"grid": "float32"}, "or 'dataset'"),
        ({"grid": 7.5}, "grid must be a bit depth"),
        ({"attacks": [{"attack": "pgd", "grid": 0}]}, "attacks[0]: grid must be"),
        ({"attacks": [{"attack": "pgd", "success_margin": -0.1}]}, "attacks[0]: success_margin"),
        ({"recheck": "xla"}, "recheck: must be one of eager, jit, float64"),
        ({"recheck": "eager", "attacks": [{"attack": "pgd", "multilabel": "any"}]}, "multi-label"),
    ],
)
def test_bad_margin_or_grid_is_one_clear_error(patch, msg, tmp_path, capsys):
    with pytest.raises(sweep.ConfigError) as e:
        sweep.load_config({**GRID, **patch})
    assert msg in str(e.value)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**GRID, **patch}, allow_nan=True))
    assert main(["sweep", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert msg.split(":")[-1].strip() in err and "Traceback" not in err


def test_grid_dataset_on_float_images_fails_before_any_cell(tmp_path, capsys):
    float_images_npz(tmp_path / "floats.npz")
    cfg = {
        **GRID,
        "seeds": [0],
        "attacks": ["fgsm"],
        "grid": "dataset",
        "datasets": [{"data": str(tmp_path / "floats.npz")}],
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "o"
    assert main(["sweep", str(tmp_path / "c.yaml"), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "not stored as uint8/uint16 images (float32)" in err and "Traceback" not in err
    assert not SweepDir(out).cell_files()


def test_run_records_and_reports_margin_and_grid(tmp_path):
    cfg = sweep.load_config(
        {
            **GRID,
            "seeds": [0],
            "attacks": ["fgsm", {"attack": "fgsm", "grid": "dataset", "success_margin": 0.5}],
        }
    )
    out = tmp_path / "r"
    res = sweep.run_sweep(cfg, out, devices=jax.devices()[:2])
    assert res.complete
    recs = SweepDir(out).load()
    plain, durable = (recs[c.id] for c in cfg.cells())
    threat = durable["attack_config"]["threat"]
    assert threat["grid"] == 8 and threat["success_margin"] == 0.5  # shipped data is uint8
    assert plain["attack_config"]["threat"]["grid"] is None
    adv = decode_images(durable["samples"]["adv"])
    np.testing.assert_array_equal(adv * 255, np.round(adv * 255))  # on the 8-bit grid
    # success is decided with the margin: every reported success clears kappa
    success = decode_array(durable["results"]["success"], np.bool_)
    margin = decode_array(durable["results"]["margin"], np.float32)
    assert success.any() and (margin[success] > 0.5).all()
    plain_margin = decode_array(plain["results"]["margin"], np.float32)
    plain_success = decode_array(plain["results"]["success"], np.bool_)
    assert (plain_success & (plain_margin <= 0.5)).any(), "kappa=0.5 should matter here"
    assert main(["report", str(out)]) == 0
    rows = [
        json.loads(line) for line in (out / "report" / "results.jsonl").read_text().splitlines()
    ]
    dur = [r for r in rows if r["attack"] == "fgsm-k0.5-dataset"]
    assert dur and all(r["grid"] == 8 and r["success_margin"] == 0.5 for r in dur)
    assert all("grid" not in r for r in rows if r["attack"] == "fgsm")
    md = (out / "report" / "report.md").read_text()
    assert "| model | dataset | attack | success_margin | grid | seed |" in md
    cfg_resumed = sweep.run_sweep(cfg, out, devices=jax.devices()[:1])
    assert cfg_resumed.computed == [] and len(cfg_resumed.skipped) == 2
    assert pathlib.Path(out / "report" / "report.html").is_file()


# ------------------------------------------------------------------ recheck
def test_configs_without_recheck_keep_their_hashes():
    plain = sweep.load_config(GRID)
    assert plain.hash == "4326a4029f4eb873" and plain.cells()[0].hash == "2b3aa22d5877db91"
    eager = sweep.load_config({**GRID, "recheck": "eager"})
    assert eager.hash != plain.hash and eager.cells()[0].hash != plain.cells()[0].hash
    assert eager.cells()[0].id == plain.cells()[0].id and eager.cells()[0].recheck == "eager"
    from jaxadv.sweep import recheck
    from jaxadv.sweep.storage import encode_array

    short = {"recheck_flipped": encode_array(np.zeros((1, 6), np.bool_))}  # one eps of two
    assert "must be 2 lists of 6 booleans" in recheck.check_fields(short, 2, 6)


def test_sweep_recheck_flips_without_margin_and_not_with_it(tmp_path, monkeypatch):
    """The ulp model (jitted logits one ulp apart from eager ones): FGSM steps 0.375 -> 0.5,
    where only the attack's program calls it class 1. Every such success flips when re-checked
    eagerly; with a success margin none is reported, so none flips. Class-1 images are clean
    errors, successes by a wide margin that no re-check rejects."""
    from conftest import ulp_model

    import jaxadv.sweep.runner as runner

    monkeypatch.setattr(runner, "load_model", lambda spec: ulp_model())
    arrays = {}
    for split in ("train", "val", "test"):
        arrays[f"{split}_images"] = np.full((6, 4, 4), 0.375, np.float32)
        arrays[f"{split}_labels"] = np.array([[0], [0], [0], [0], [1], [1]], np.int64)
    np.savez(tmp_path / "half.npz", **arrays)
    cfg = sweep.load_config(
        {
            **GRID,
            "seeds": [0],
            "eps": [0, 1],
            "eps_scale": 8,  # eps 1/8: 0.375 + 0.125 is exactly 0.5
            "datasets": [str(tmp_path / "half.npz")],
            "attacks": ["fgsm", {"attack": "fgsm", "success_margin": 1e-4}],
            "recheck": "eager",
        }
    )
    out = tmp_path / "r"
    assert sweep.run_sweep(cfg, out, devices=jax.devices()[:2]).complete
    recs = SweepDir(out).load()
    plain, kappa = (recs[c.id] for c in cfg.cells())
    assert plain["cell"]["recheck"] == "eager"
    flips = decode_array(plain["results"]["recheck_flipped"], np.bool_)
    success = decode_array(plain["results"]["success"], np.bool_)
    assert success[1].all() and success[0].tolist() == [False] * 4 + [True] * 2
    assert flips.tolist() == [[False] * 6, [True] * 4 + [False] * 2]
    assert decode_array(kappa["results"]["success"], np.bool_)[:, 4:].all()
    assert not decode_array(kappa["results"]["recheck_flipped"], np.bool_).any()
    assert main(["report", str(out)]) == 0
    rows = [
        json.loads(line) for line in (out / "report" / "results.jsonl").read_text().splitlines()
    ]
    got = {(r["attack"], r["eps"]): r["recheck_flips"] for r in rows}
    assert got == {
        ("fgsm", 0.0): 0,
        ("fgsm", 0.125): 4,
        ("fgsm-k0.0001", 0.0): 0,
        ("fgsm-k0.0001", 0.125): 0,
    }
    assert all(r["recheck"] == "eager" for r in rows)
    md = (out / "report" / "report.md").read_text()
    assert "| recheck |" in md and "recheck_flips |" in md
