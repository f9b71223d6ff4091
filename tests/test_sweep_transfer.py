"""Transfer sweeps (issue 15, item 2): ``surrogate:`` turns a grid into transfer matrices; the
diagonal equals the white-box cell; configs without it keep their hashes; mismatched pairs and
meaningless combinations are refused with one line before anything runs."""

from __future__ import annotations

import csv
import json
import pathlib

import jax
import numpy as np
import pytest
import yaml

import jaxadv
from jaxadv import sweep
from jaxadv.sweep.report import load_sweep

TWO = ["small_cnn_clean", "small_cnn_pgdat"]
BASE = {
    "name": "tr",
    "seeds": [0],
    "batch_size": 4,
    "num_images": 2,
    "eps": [0, 8],
    "models": TWO,
    "datasets": [{"data": "default", "num_examples": 8}],
    "attacks": ["fgsm"],
}


def _cfg(**patch):
    return sweep.load_config({**BASE, **patch})


def test_surrogate_expands_into_a_matrix_of_cells():
    cfg = _cfg(surrogate="all")
    ids = [c.id for c in cfg.cells()]
    assert ids == [
        f"{t}__default__fgsm__from-{s}__seed0" for t in TWO for s in TWO
    ]  # targets x surrogates
    assert all(
        c.surrogate["models"][0]["label"] == c.id.split("from-")[1][:-7] for c in cfg.cells()
    )
    # per attack, an ensemble (nested list or mapping), mixed with a white-box attack
    ens = {"ensemble": TWO, "label": "both"}
    cfg = _cfg(
        attacks=["fgsm", {"attack": "pgd", "num_steps": 2, "surrogate": [TWO, ens]}],
        eps=[8],
    )
    ids = [c.id for c in cfg.cells() if c.model["label"] == TWO[0]]
    assert ids == [
        "small_cnn_clean__default__fgsm__seed0",
        "small_cnn_clean__default__pgd__from-ens-small_cnn_clean-small_cnn_pgdat__seed0",
        "small_cnn_clean__default__pgd__from-both__seed0",
    ]
    c = cfg.cells()[1]
    assert [m["label"] for m in c.surrogate["models"]] == TWO and "surrogate" not in c.attack
    assert c.spec()["surrogate"] == c.surrogate


def test_config_without_surrogate_keeps_its_hashes():
    # computed by the code before surrogate: existed (commit 5107f0d): old sweep folders resume
    raw = {
        **BASE,
        "seeds": [0, 1],
        "attacks": ["fgsm", {"attack": "pgd", "num_steps": 2}],
    }
    raw.pop("num_images")
    cfg = sweep.load_config(raw)
    assert cfg.hash == "620ef9d82acca0a4"
    assert [c.hash for c in cfg.cells()] == [
        "607c3a214b5b1fd6",
        "6298b09c2f1b8fb5",
        "0a05a68340f6c1b9",
        "3166728e068fe1b2",
        "f8ee5a7d3ca9e49b",
        "8edca245ba8a9ad3",
        "f7b0c633a4bac8da",
        "724b1ca7cc451e46",
    ]
    assert cfg.cells()[0].id == "small_cnn_clean__default__fgsm__seed0"
    # adding a surrogate row leaves the hashes of the other transfer cells alone
    one = {c.id: c.hash for c in _cfg(attacks=[{"attack": "fgsm", "surrogate": TWO[:1]}]).cells()}
    both = {c.id: c.hash for c in _cfg(attacks=[{"attack": "fgsm", "surrogate": TWO}]).cells()}
    assert all(both[k] == h for k, h in one.items()) and len(both) == 2 * len(one)
    top = {c.id: c.hash for c in _cfg(surrogate=TWO).cells()}
    assert top == both  # the top level and the attack entry mean the same cells


@pytest.mark.parametrize(
    ("patch", "msg"),
    [
        ({"surrogate": "nope"}, r"surrogate\[0\]: 'nope' is not a model label of this config"),
        ({"surrogate": []}, "surrogate: must be a model label, 'all', or a non-empty list"),
        ({"surrogate": [{"models": TWO}]}, r"surrogate\[0\]: an ensemble is a mapping"),
        ({"surrogate": [[TWO[0], TWO[0]]]}, "the ensemble repeats a model"),
        ({"surrogate": [TWO[0], TWO[0]]}, "share the label 'small_cnn_clean'"),
        (
            {"surrogate": "all", "attacks": ["fgsm", "square"]},
            r"attacks\[1\] \(square\) with the top-level surrogate: a black-box attack",
        ),
        (
            {"attacks": [{"attack": "square", "surrogate": "all"}]},
            r"attacks\[0\] \(square\): a black-box attack reads only the target's outputs",
        ),
        (
            {"attacks": [{"attack": "fgsm", "surrogate": "x"}]},
            r"attacks\[0\]\.surrogate\[0\]: 'x' is not a model label",
        ),
    ],
)
def test_config_errors(patch, msg):
    with pytest.raises(sweep.ConfigError, match=msg):
        _cfg(**patch)


def test_cli_config_error_is_one_line(tmp_path, capsys):
    from jaxadv.cli import main

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**BASE, "surrogate": "nope"}))
    rc = main(["sweep", str(path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and "'nope' is not a model label" in err


def _save_net(path: pathlib.Path, classes: int, channels: int) -> None:
    from flax import nnx

    from jaxadv import checkpoint
    from jaxadv.nn import SmallCNN

    net = SmallCNN(classes, channels, width=4, rngs=nnx.Rngs(0))
    kwargs = {"width": 4, "num_classes": classes, "in_channels": channels}
    checkpoint.save(path, net, {"architecture": "small_cnn", "kwargs": kwargs})


@pytest.mark.parametrize(
    ("classes", "channels", "msg"),
    [
        (3, 1, "surrogate has 3 classes but the target has 2"),
        (2, 3, r"surrogate cannot take inputs of shape \(1, 28, 28, 1\)"),
    ],
)
def test_mismatched_surrogate_is_refused_before_any_cell(tmp_path, classes, channels, msg):
    ck = tmp_path / "odd.msgpack"
    _save_net(ck, classes, channels)
    raw = {
        **BASE,
        "models": [TWO[0], {"model": str(ck), "label": "odd"}],
        "attacks": [{"attack": "fgsm", "surrogate": "odd"}],
    }
    out = tmp_path / "o"
    with pytest.raises(
        sweep.SweepError, match=f"surrogate 'odd' and target 'small_cnn_clean'.*{msg}"
    ):
        sweep.run_sweep(sweep.load_config(raw), out, devices=jax.devices()[:1])
    assert not list((out / "cells").glob("*.json"))  # nothing was computed


@pytest.mark.slow
def test_sweep_matrix_diagonal_is_white_box_report_resume_and_merge(tmp_path):
    pgd = {"attack": "pgd", "num_steps": 2}  # random start: the keys must match too
    raw = {**BASE, "attacks": [pgd, {**pgd, "label": "tr", "surrogate": "all"}]}
    cfg = sweep.load_config(raw)
    out = tmp_path / "o"
    first = sweep.run_sweep(cfg, out, devices=jax.devices()[:1])
    assert len(first.computed) == 6
    _, cells, missing = load_sweep(out)
    assert not missing
    by = {c.id: c for c in cells}
    for t in TWO:  # the diagonal equals the white-box cell, but for the queries
        white, diag = by[f"{t}__default__pgd__seed0"], by[f"{t}__default__tr__from-{t}__seed0"]
        for k in ("success", "norm", "margin", "l2", "linf", "score"):
            np.testing.assert_array_equal(diag.per_eps[k], white.per_eps[k], err_msg=k)
        np.testing.assert_array_equal(diag.clean_correct, white.clean_correct)
        assert diag.surrogate == t and white.surrogate == ""
    # an off-diagonal cell is the library's transfer() on the same images
    x, y = jaxadv.data.load_default().get(np.arange(8))
    from jaxadv.checkpoint import reference_model
    from jaxadv.vocab import make_attack

    res = jaxadv.transfer(
        make_attack(
            "pgd", norm="linf", eps_max=8 / 255, num_steps=2, restarts=1, options={}
        ).with_eps(8 / 255),  # the sweep passes each eps at run time
        reference_model(TWO[1]),
        reference_model(TWO[0]),
        jax.random.key(0),  # the cell's seed
        np.asarray(x, np.float32),
        np.asarray(y, np.int32),
    )
    off = by[f"{TWO[0]}__default__tr__from-{TWO[1]}__seed0"]
    np.testing.assert_array_equal(off.per_eps["success"][1], np.asarray(res.success))
    # the report: a matrix table and heat map, and the long-form CSV from the cells
    rep = sweep.write_report(out)
    md = (rep.parent / "report.md").read_text()
    assert "## Transfer matrix: tr at 8/255 on default" in md
    assert "| surrogate \\ target | small_cnn_clean | small_cnn_pgdat |" in md
    assert (rep.parent / "transfer__tr__default.png").is_file()
    with open(rep.parent / "transfer_matrix.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4  # eps 0 (clean accuracy) is left out
    for r in rows:
        c = by[f"{r['target']}__default__tr__from-{r['surrogate']}__seed0"]
        assert float(r["robust_accuracy"]) == pytest.approx(
            float((~c.per_eps["success"][1]).mean())
        )
    # resume computes nothing; two shards merge into the same cells
    again = sweep.run_sweep(sweep.load_config(raw), out, devices=jax.devices()[:1])
    assert again.computed == [] and len(again.skipped) == 6
    shards = [tmp_path / "s0", tmp_path / "s1"]
    for i, s in enumerate(shards):
        sweep.run_sweep(
            sweep.load_config(raw), s, num_shards=2, shard_index=i, devices=jax.devices()[:1]
        )
    merged = tmp_path / "m"
    sweep.merge([str(s) for s in shards], merged)
    _, mcells, mmissing = load_sweep(merged)
    assert not mmissing
    for c in mcells:
        np.testing.assert_array_equal(c.per_eps["success"], by[c.id].per_eps["success"])
    rec = json.loads(next((merged / "cells").glob("*from-*.json")).read_text())
    assert rec["cell"]["surrogate"]["label"] in TWO
