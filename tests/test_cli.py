"""The command line: demo on a reduced setting, attack and train, bad flags and missing files."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from jaxadv.cli import main


def test_demo_reduced(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(
        [
            "demo",
            "--out",
            str(out),
            "--num-examples",
            "16",
            "--eps",
            "0,8",
            "--attacks",
            "FGSM,PGD",
            "--models",
            "small_cnn_clean",
            "--num-steps",
            "5",
            "--quiet",
        ]
    )
    assert rc == 0
    for f in ("results.json", "results.csv", "robust_accuracy.png", "examples.png"):
        assert (out / f).stat().st_size > 0, f
    res = json.loads((out / "results.json").read_text())
    rows = res["rows"]
    assert {r["attack"] for r in rows} == {"FGSM", "PGD"}
    assert res["manifest"]["jax"] and res["manifest"]["num_examples"] == 16
    zero = [r for r in rows if r["eps"] == 0]
    assert all(r["robust_accuracy"] == r["clean_accuracy"] for r in zero)
    pgd8 = next(r for r in rows if r["attack"] == "PGD" and r["eps"] > 0)
    assert pgd8["robust_accuracy"] < pgd8["clean_accuracy"]
    assert (out / "robust_accuracy.png").read_bytes()[:4] == b"\x89PNG"
    table = capsys.readouterr().out
    assert "robust_accuracy" in table and "PGD" in table


def test_demo_config_file(tmp_path):
    cfg = tmp_path / "demo.yaml"
    cfg.write_text(
        "num_examples: 8\neps: '0,2'\nattacks: FGSM\nmodels: small_cnn_pgdat\nquiet: true\n"
    )
    out = tmp_path / "o"
    assert main(["demo", "--out", str(out), "--config", str(cfg)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {r["model"] for r in rows} == {"small_cnn_pgdat"} and len(rows) == 2


def test_attack_on_default(tmp_path):
    out = tmp_path / "a"
    rc = main(
        [
            "attack",
            "--attack",
            "pgd",
            "--eps",
            "0,4",
            "--num-examples",
            "20",
            "--batch-size",
            "8",
            "--num-steps",
            "3",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    rows = res["rows"]
    assert [r["eps_255"] for r in rows] == [0.0, 4.0]
    assert rows[0]["robust_accuracy"] >= rows[1]["robust_accuracy"]
    cfg = res["manifest"]["attack_config"]  # the attack value actually run, every field
    assert cfg["type"] == "PGD" and cfg["num_steps"] == 3 and cfg["num_restarts"] == 1
    assert cfg["threat"]["type"] == "LinfBall"
    assert cfg["threat"]["eps"] == pytest.approx([0.0, 4 / 255])
    assert {"queries_mean", "queries_median", "linf_median"} <= set(rows[1])


def test_attack_over_many_batches_equals_one_batch(tmp_path):
    """Summaries come from the per-example arrays of the whole set: means over successful attacks
    (not averages of batch means weighted by batch size), medians kept, and the last short batch
    is padded (no second compilation)."""
    rows = {}
    for bs in (3, 64):
        out = tmp_path / f"b{bs}"
        argv = ["attack", "--eps", "0,2,8/255", "--num-examples", "20", "--num-steps", "3"]
        assert main([*argv, "--batch-size", str(bs), "--out", str(out), "--quiet"]) == 0
        rows[bs] = json.loads((out / "results.json").read_text())["rows"]
    for a, b in zip(rows[3], rows[64], strict=True):
        for k in ("robust_accuracy", "linf_mean", "l2_mean", "ssim_mean", "l2_median"):
            if a[k] is None or b[k] is None:  # NaN (no successful attack) is null in JSON
                assert a[k] is None and b[k] is None, k
            else:
                assert a[k] == pytest.approx(b[k], rel=1e-6), k
    assert rows[3][2]["eps_label"] == "8/255"


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["--attack", "square", "--num-steps", "5"], "its budget is num_queries"),
        (["--attack", "apgdt", "--restarts", "3", "--num-steps", "2"], None),
        (["--attack", "fmn", "--restarts", "2"], "has no restarts"),
        (["--attack", "fgsm", "--num-steps", "2"], "has no iteration budget"),
        (["--attack", "square", "--norm", "l1"], "supports norm linf, l2"),
        (["--attack", "onepixel", "--norm", "l0", "--eps", "2/255"], None),
        (["--attack", "pgd", "--eps", "3px"], "l0 only"),
        (["--attack", "pgd", "--option", "num_steps"], "KEY=VALUE"),
    ],
)
def test_options_map_through_the_declaration_or_are_refused(argv, msg, tmp_path, capsys):
    base = ["attack", "--num-examples", "2", "--eps", "0", "--quiet", "--out", str(tmp_path)]
    rc = main([*base, *argv])
    if msg is None:
        assert rc == 0, capsys.readouterr().err
    else:
        assert rc == 2 and msg in capsys.readouterr().err


def test_option_sets_the_budget_and_case_does_not_matter(tmp_path):
    out = tmp_path / "sq"
    argv = ["attack", "--attack", "SQUARE", "--norm", "LINF", "--model", "Small_CNN_Clean"]
    argv += ["--option", "num_queries=7", "--eps", "0,8", "--num-examples", "4", "--quiet"]
    assert main([*argv, "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["manifest"]["attack_config"]["num_queries"] == 7
    q = res["rows"][1]["queries_median"]  # over successful attacks; None when there is none
    assert q is None or q <= 8


def test_attack_cascade_is_the_worst_case_over_the_grid(tmp_path):
    """--cascade: robust accuracy never above the independent run's at any budget, monotone, and
    equal at the smallest budget (nothing has been carried yet)."""
    acc = {}
    for flag in ([], ["--cascade"]):
        out = tmp_path / ("c" if flag else "i")
        argv = ["attack", "--eps", "0,2,4", "--num-examples", "24", "--batch-size", "12"]
        assert main([*argv, "--num-steps", "3", "--out", str(out), "--quiet", *flag]) == 0
        rows = json.loads((out / "results.json").read_text())["rows"]
        acc[bool(flag)] = [r["robust_accuracy"] for r in rows]
    ind, cas = np.array(acc[False]), np.array(acc[True])
    assert cas[0] == ind[0] and np.all(cas <= ind + 1e-9) and np.all(np.diff(cas) <= 1e-9)


def test_train_then_attack_checkpoint(tmp_path, pneumonia_path):
    ckpt = tmp_path / "m.msgpack"
    rc = main(
        [
            "train",
            "--data",
            str(pneumonia_path),
            "--epochs",
            "1",
            "--num-examples",
            "256",
            "--batch-size",
            "64",
            "--out",
            str(ckpt),
            "--quiet",
        ]
    )
    assert rc == 0 and ckpt.exists()
    rc = main(
        [
            "attack",
            "--model",
            str(ckpt),
            "--attack",
            "fgsm",
            "--eps",
            "2",
            "--num-examples",
            "8",
            "--out",
            str(tmp_path / "a"),
            "--quiet",
        ]
    )
    assert rc == 0


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["attack", "--attack", "nope", "--num-examples", "2"], "unknown attack"),
        (["attack", "--eps", "a,b"], "cannot read eps"),
        (["attack", "--eps", "-1"], ">= 0"),
        (["attack", "--eps", ""], "empty"),
        (["attack", "--data", "/nonexistent/x.npz"], "no such file"),
        (["attack", "--model", "/nonexistent/m.msgpack"], "not found"),
        (["attack", "--norm", "l7", "--num-examples", "2"], "norm must be one of"),
        (["demo", "--out", "/tmp/x", "--config", "/nonexistent.yaml"], "config file not found"),
        (["train", "--out", "/tmp/m.msgpack"], "only the 624 test images"),
    ],
)
def test_bad_input_exits_2(argv, msg, capsys, tmp_path):
    if "--out" not in argv:
        argv = [*argv, "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert msg in capsys.readouterr().err


def test_unknown_config_key(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text('{"num_exampels": 3}')
    assert main(["demo", "--out", str(tmp_path / "o"), "--config", str(cfg)]) == 2
    assert "num_exampels" in capsys.readouterr().err


def test_bad_flag_and_module_entry_point():
    r = subprocess.run([sys.executable, "-m", "jaxadv", "demo"], capture_output=True, text=True)
    assert r.returncode == 2 and "--out" in r.stderr
    r = subprocess.run([sys.executable, "-m", "jaxadv", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "demo" in r.stdout


def test_attack_defaults_are_resolved_and_recorded(tmp_path):
    """Without --norm / --eps the attack's own defaults run, and the manifest records them (not
    None): linf and 0,1,2,4,8 for PGD."""
    out = tmp_path / "d"
    assert (
        main(["attack", "--num-examples", "4", "--num-steps", "1", "--quiet", "--out", str(out)])
        == 0
    )
    res = json.loads((out / "results.json").read_text())
    args = res["manifest"]["args"]
    assert (args["norm"], args["eps"]) == ("linf", "0,1,2,4,8")
    assert [r["eps_label"] for r in res["rows"]] == ["0/255", "1/255", "2/255", "4/255", "8/255"]
