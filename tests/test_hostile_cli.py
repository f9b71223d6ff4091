"""The command line as a careless or hostile user drives it: every user error exits with status 2
and one line that says what to fix, before any long computation; no traceback; names are
case-insensitive in every command; config values mean what the same flag means."""

from __future__ import annotations

import json
import pathlib

import pytest

from jaxadv.cli import main


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if an attack or a sweep cell starts: errors must come before any work."""

    import jaxadv.demo
    import jaxadv.engine
    import jaxadv.sweep.runner  # imported before patching: it binds evaluate at import time

    def boom(*a, **k):
        raise AssertionError("work started before the user error was reported")

    monkeypatch.setattr(jaxadv, "evaluate", boom)
    monkeypatch.setattr("jaxadv.engine.evaluate", boom)
    monkeypatch.setattr("jaxadv.sweep.runner.evaluate", boom)
    monkeypatch.setattr("jaxadv.demo.run_demo", boom)


def _file(tmp_path: pathlib.Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


CASES = [
    # (argv, expected message); OUT is replaced by a fresh folder, FILE by an existing file
    (["attack", "--out", "FILE"], "is an existing file"),
    (["attack", "--out", "FILE/sub"], "cannot create --out folder"),
    (["demo", "--out", "FILE"], "is an existing file"),
    (["train", "--data", "x.npz", "--out", "DIR"], "is a folder"),
    (["train", "--data", "x.npz", "--out", "FILE/m.msgpack"], "is an existing file"),
    (["attack", "--batch-size", "0", "--out", "OUT"], "--batch-size must be a positive"),
    (["attack", "--batch-size", "-4", "--out", "OUT"], "--batch-size must be a positive"),
    (["attack", "--num-examples", "0", "--out", "OUT"], "--num-examples must be a positive"),
    (["attack", "--num-examples", "-1", "--out", "OUT"], "--num-examples must be a positive"),
    (["demo", "--num-examples", "-3", "--out", "OUT"], "--num-examples must be"),
    (["demo", "--num-steps", "0", "--out", "OUT"], "--num-steps must be"),
    (["train", "--data", "x.npz", "--batch-size", "0", "--out", "OUT/m"], "--batch-size"),
    (["train", "--data", "x.npz", "--epochs", "0", "--out", "OUT/m"], "--epochs"),
    (["train", "--data", "x.npz", "--arch", "alexnet", "--out", "OUT/m"], "unknown --arch"),
    (["train", "--data", "x.npz", "--arch", "vgg", "--out", "OUT/m"], "at least 32x32"),
    (["sweep", "smoke", "--batch-size", "0", "--out", "OUT"], "--batch-size must be a positive"),
    (["sweep", "smoke", "--num-shards", "0", "--out", "OUT"], "--num-shards"),
    (["sweep", "smoke", "--shard-index", "3", "--num-shards", "2", "--out", "OUT"], "shard"),
    (["sweep", "no_such_config", "--out", "OUT"], "no_such_config"),
    (["attack", "--split", "train", "--out", "OUT"], "test split only"),
    (["attack", "--data", "PNEU", "--split", "validation", "--out", "OUT"], "unknown split"),
    (["attack", "--data", "tfds:no_such_dataset_xyz", "--out", "OUT"], "no_such_dataset_xyz"),
    (["attack", "--model", "CKPT", "--out", "OUT"], "checkpoint"),
    (["attack", "--eps", "8/0", "--out", "OUT"], "cannot read eps"),
    (["attack", "--eps", "inf", "--out", "OUT"], "finite"),
    (["attack", "--eps", "nan", "--out", "OUT"], "finite"),
    (["attack", "--eps", "2,2", "--out", "OUT"], "repeated"),
    (["attack", "--eps-scale", "0", "--out", "OUT"], "eps_scale"),
    (["attack", "--option", "=3", "--out", "OUT"], "KEY=VALUE"),
    (["attack", "--option", "nonsense_field=3", "--out", "OUT"], "does not accept"),
    (["attack", "--option", "step_size=-1", "--out", "OUT"], "step_size"),
    (["attack", "--attack", "onepixel", "--norm", "linf", "--out", "OUT"], "supports norm l0"),
    (["attack", "--attack", "bias-field", "--eps", "nan", "--out", "OUT"], "finite"),
    (["attack", "--attack", "bias-field", "--eps", "-0.1", "--out", "OUT"], ">= 0"),
    (["attack", "--attack", "bias-field", "--eps", "0,8", "--out", "OUT"], "log-amplitudes"),
    (["attack", "--attack", "bias-field", "--norm", "linf", "--out", "OUT"], "supports norm bias"),
    (["attack", "--attack", "bias-field", "--norm", "l7", "--out", "OUT"], "l7"),
    (["attack", "--attack", "patch", "--out", "OUT"], "is universal"),
    (["attack", "--attack", "uap", "--out", "OUT"], ".fit(key, model, train_data)"),
    (["attack", "--attack", "no_such_attack", "--out", "OUT"], "no_such_attack"),
    (["attack", "--config", "CFG_BAD_INT", "--out", "OUT"], "expected int"),
    (["attack", "--config", "CFG_BAD_BOOL", "--out", "OUT"], "expected true or false"),
    (["attack", "--config", "CFG_LIST", "--out", "OUT"], "must be a mapping"),
    (["merge", "MISSING", "--out", "OUT"], "not a sweep folder"),
    (["report", "MISSING"], "not a sweep folder"),
]


@pytest.mark.parametrize("argv, msg", CASES, ids=[" ".join(c[0][:3]) for c in CASES])
def test_user_errors_exit_2_with_one_line_before_any_work(
    argv, msg, tmp_path, capsys, no_work, pneumonia_path
):
    ckpt = tmp_path / "bad.msgpack"
    ckpt.write_bytes(b"not a checkpoint")
    (tmp_path / "bad.json").write_text('{"architecture": "small_cnn", "kwargs": 5}')
    subs = {
        "OUT": str(tmp_path / "out"),
        "DIR": str(tmp_path),
        "FILE": _file(tmp_path, "a_file", "x"),
        "CKPT": str(ckpt),
        "PNEU": str(pneumonia_path),
        "MISSING": str(tmp_path / "missing"),
        "CFG_BAD_INT": _file(tmp_path, "c1.yaml", "num_examples: lots\n"),
        "CFG_BAD_BOOL": _file(tmp_path, "c2.yaml", "cascade: sometimes\n"),
        "CFG_LIST": _file(tmp_path, "c3.yaml", "- 1\n- 2\n"),
    }
    if "x.npz" in argv:
        subs["x.npz"] = str(pneumonia_path)
    args = []
    for a in argv:
        for k, v in subs.items():
            a = a.replace(k, v) if a.startswith(k) or a == k else a
        args.append(a)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert msg in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_names_are_case_insensitive_in_every_command(tmp_path):
    out = tmp_path / "a"
    argv = ["attack", "--attack", "PGD", "--norm", "LinF", "--model", "SMALL_CNN_CLEAN"]
    argv += ["--data", "DEFAULT", "--split", "TEST", "--eps", "0,2", "--num-examples", "4"]
    assert main([*argv, "--num-steps", "2", "--out", str(out), "--quiet"]) == 0
    argv = ["demo", "--attacks", "fgsm", "--models", "Small_Cnn_Clean", "--eps", "0,2"]
    assert main([*argv, "--num-examples", "4", "--out", str(tmp_path / "d"), "--quiet"]) == 0
    rows = json.loads((tmp_path / "d" / "results.json").read_text())["rows"]
    assert {r["attack"] for r in rows} == {"FGSM"} and {r["model"] for r in rows} == {
        "small_cnn_clean"
    }


def test_config_values_mean_what_the_flags_mean(tmp_path):
    """An eps list in a config is in 1/255 like the flag; numbers given as strings are read with
    the flag's type."""
    cfg = _file(tmp_path, "c.yaml", "eps: [0, 8]\nnum_examples: '4'\nnum_steps: 2\nquiet: true\n")
    assert main(["attack", "--config", cfg, "--out", str(tmp_path / "c")]) == 0
    assert main(["attack", "--eps", "0,8", "--num-examples", "4", "--num-steps", "2", "--quiet",
                 "--out", str(tmp_path / "f")]) == 0  # fmt: skip
    a = json.loads((tmp_path / "c" / "results.json").read_text())["rows"]
    b = json.loads((tmp_path / "f" / "results.json").read_text())["rows"]
    assert [r["eps"] for r in a] == [r["eps"] for r in b] == [0.0, pytest.approx(8 / 255)]
    assert [r["robust_accuracy"] for r in a] == [r["robust_accuracy"] for r in b]
