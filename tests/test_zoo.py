"""The model zoo: registry, deterministic builds, loading by name, and the `jaxadv zoo` CLI."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from jaxadv import checkpoint, zoo
from jaxadv.cli import main
from jaxadv.train import evaluate


def _tiny(seed: int = 0) -> zoo.ZooEntry:
    """A short-budget entry: a narrow SmallCNN, 1 epoch on 128 training images, clean."""
    return dataclasses.replace(
        zoo.ZOO["cnn_clean"],
        name=f"tiny_{seed}",
        kwargs={"num_classes": 2, "in_channels": 1, "width": 4},
        epochs=1,
        seed=seed,
        num_examples=128,
    )


def test_registry_covers_the_issue():
    archs = {e.architecture for e in zoo.ZOO.values()}
    assert {"small_cnn", "resnet18", "vgg", "densenet"} <= archs
    for objective in ("madry", "trades", "mart"):
        assert len({e.architecture for e in zoo.ZOO.values() if e.objective == objective}) >= 2
    assert all(name == e.name for name, e in zoo.ZOO.items())


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXADV_CACHE", str(tmp_path / "a"))
    assert zoo.cache_dir() == tmp_path / "a" / "zoo"
    monkeypatch.delenv("JAXADV_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert zoo.cache_dir() == tmp_path / "x" / "jaxadv" / "zoo"


def test_load_unbuilt_and_unknown_names(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo, "_shipped", lambda name: tmp_path / "none" / f"{name}.msgpack")
    with pytest.raises(FileNotFoundError, match="run `jaxadv zoo build cnn_clean"):
        zoo.load("cnn_clean", tmp_path)
    with pytest.raises(ValueError, match="unknown zoo model 'nope'"):
        zoo.load("nope", tmp_path)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["zoo", "build", "nope", "--data", "x.npz"], "unknown zoo model 'nope'"),
        (
            ["zoo", "build", "cnn_clean", "--force", "--data", "missing.npz"],
            "missing.npz not found",
        ),
    ],
)
def test_cli_user_errors_are_one_line(argv, message, tmp_path, capsys):
    assert main([*argv, "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_shipped_zoo_matches_the_registry_and_loads():
    for name, e in zoo.ZOO.items():
        module, meta = zoo.load(name, "/nonexistent-zoo-cache")
        assert meta["zoo"]["epochs"] == e.epochs and meta["zoo"]["objective"] == e.objective
        assert meta["architecture"] == e.architecture and meta["kwargs"] == dict(e.kwargs)
    m = zoo.model("cnn_clean", "/nonexistent-zoo-cache")
    assert m(np.zeros((2, 28, 28, 1), np.float32)).shape == (2, 2)


def test_cli_list(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(zoo, "_shipped", lambda name: tmp_path / "none" / f"{name}.msgpack")
    assert main(["zoo", "list", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in zoo.ZOO:
        assert f"{name} " in out
    assert "not built" in out


@pytest.mark.slow  # three short trainings: ~2 min on the loaded 2-core CI machine
def test_build_is_deterministic_by_seed_and_loads(pneumonia_path, tmp_path):
    metas = []
    for sub, seed in (("a", 0), ("b", 0), ("c", 1)):
        e = dataclasses.replace(_tiny(seed), name="tiny")
        p = zoo.build(e, pneumonia_path, tmp_path / sub, robust_steps=0)
        metas.append(json.loads(p.read_text()))
    assert metas[0]["sha256"] == metas[1]["sha256"], "same seed, different weights"
    assert metas[0]["sha256"] != metas[2]["sha256"], "the seed does not reach the weights"
    # the recorded test accuracy is that of the saved model
    module, meta = checkpoint.load(tmp_path / "a" / "tiny.msgpack")
    with np.load(pneumonia_path) as d:
        xt = d["test_images"][..., None].astype(np.float32) / 255
        yt = d["test_labels"].reshape(-1).astype(np.int32)
    acc = evaluate(module, xt, yt, mean=meta["mean"], std=meta["std"])
    assert acc == pytest.approx(meta["test_accuracy"])
    # loading by name: a cache holding cnn_clean's files gives a ready model with the same accuracy
    cache = tmp_path / "cache"
    cache.mkdir()
    for suffix in (".msgpack", ".json"):
        (cache / f"cnn_clean{suffix}").write_bytes((tmp_path / "a" / f"tiny{suffix}").read_bytes())
    assert zoo.is_built("cnn_clean", cache)
    assert evaluate(zoo.model("cnn_clean", cache), xt, yt) == pytest.approx(acc)


def test_zoo_names_are_model_specs(tmp_path, capsys, monkeypatch):
    """``zoo:NAME`` works wherever a model is named: `jaxadv attack --model`, sweep configs."""
    from jaxadv import sweep, vocab

    monkeypatch.setenv("JAXADV_CACHE", str(tmp_path / "empty"))  # the shipped copies only
    m = vocab.load_model("zoo:cnn_clean")
    want = zoo.model("cnn_clean")
    x = np.full((2, 28, 28, 1), 0.5, np.float32)
    np.testing.assert_array_equal(np.asarray(m(x)), np.asarray(want(x)))
    cfg = sweep.load_config(
        {"models": ["zoo:vgg_clean"], "datasets": ["default"], "attacks": ["fgsm"], "eps": [0]}
    )
    assert cfg.data["models"][0]["label"] == "zoo-vgg_clean"
    assert cfg.input_fingerprints()["zoo:vgg_clean"] is not None  # a rebuilt model: new hash
    with pytest.raises(sweep.ConfigError, match="unknown zoo model 'nope'; the zoo has cnn_clean"):
        sweep.load_config(
            {"models": ["zoo:nope"], "datasets": ["default"], "attacks": ["fgsm"], "eps": [0]}
        )
    argv = ["attack", "--model", "zoo:nope", "--eps", "0", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown zoo model 'nope'" in err and "\n" not in err
