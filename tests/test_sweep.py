"""`jaxadv sweep` / `merge` / `report`: configs, device and batch independence, shards, multi-process,
resuming after SIGINT and SIGKILL, corrupt files, reports.

Subprocess tests run the real command line with their own device count (``XLA_FLAGS``) and a
timeout; in-process tests use the 8 fake CPU devices of ``conftest.py``. Everything runs on a tiny
grid (10 shipped PneumoniaMNIST images, FGSM and 2-step PGD) so the whole file stays near a minute
or two on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import pytest
import yaml

from jaxadv import sweep
from jaxadv.cli import main
from jaxadv.sweep.config import shard_cells
from jaxadv.sweep.storage import SweepDir

ROOT = pathlib.Path(__file__).resolve().parents[1]

#: 12 cells (2 attacks x 6 seeds): the first compiles for seconds, the others take ~0.1 s each, so
#: a signal sent once the first cell file exists lands mid-sweep.
GRID = {
    "name": "grid",
    "seeds": [0, 1, 2, 3, 4, 5],
    "batch_size": 4,
    "num_images": 2,
    "eps": [0, 8],
    "num_steps": 2,
    "models": ["small_cnn_clean"],
    "datasets": [{"data": "default", "num_examples": 10}],
    "attacks": ["fgsm", "pgd"],
}
#: A cheaper grid for in-process tests (FGSM only: one compilation per mesh).
SMALL = {**GRID, "seeds": [0, 1], "attacks": ["fgsm"], "num_images": 2}
TIMEOUT = 240


def _write(path: pathlib.Path, cfg: dict) -> pathlib.Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env(num_devices: int) -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("JAX_NUM_CPU_DEVICES", None)
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "jaxadv", *args]


def _run(args: list[str], num_devices: int = 1, timeout: int = TIMEOUT):
    return subprocess.run(
        _cli(*args),
        env=_env(num_devices),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def _results(out: pathlib.Path) -> dict[str, str]:
    """cell id -> checksum of its per-example results (raises on any corrupt file)."""
    return {cid: r["results_sha256"] for cid, r in SweepDir(out).load(strict=True).items()}


def _cell_files(out: pathlib.Path) -> list[pathlib.Path]:
    d = out / "cells"
    return sorted(p for p in d.glob("*.json") if not p.name.startswith(".")) if d.is_dir() else []


def _wait_for_cells(proc: subprocess.Popen, out: pathlib.Path, more_than: int) -> int:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        n = len(_cell_files(out))
        if n > more_than:
            return n
        if proc.poll() is not None:
            pytest.fail(
                f"sweep ended (rc {proc.returncode}) before writing a cell:\n"
                f"{proc.stderr.read() if proc.stderr else ''}"
            )
        time.sleep(0.02)
    proc.kill()
    pytest.fail("timed out waiting for a cell file")


@pytest.fixture(scope="module")
def grid_cfg(tmp_path_factory) -> pathlib.Path:
    return _write(tmp_path_factory.mktemp("cfg") / "grid.yaml", GRID)


@pytest.fixture(scope="module")
def reference(grid_cfg, tmp_path_factory) -> dict[str, str]:
    """The grid on ONE device with batch size 4 (per-example results to compare against)."""
    out = tmp_path_factory.mktemp("ref") / "ref"
    r = _run(["sweep", str(grid_cfg), "--out", str(out), "--quiet", "--no-report"], 1)
    assert r.returncode == 0, r.stderr
    res = _results(out)
    assert len(res) == 12
    return res


# ----------------------------------------------------------------------------- configs
def test_builtin_configs_ship_and_validate(monkeypatch):
    assert {"smoke", "pneumonia", "isic_seg"} <= set(sweep.builtin_names())
    cfg = sweep.load_config("smoke")
    assert cfg.source == "builtin:smoke" and len(cfg.cells()) == 8
    # shipped with the wheel: package-data must name the configs folder
    assert '"configs/*"' in (ROOT / "pyproject.toml").read_text()
    monkeypatch.chdir(ROOT)  # isic_seg reads ../shared/data/isic2017_seg.npz from the project root
    isic = (ROOT / ".." / "shared" / "data" / "isic2017_seg.npz").is_file()
    for name in sweep.builtin_names():
        if name == "isic_seg" and not isic:  # the data is not shipped: a one-line pointer
            with pytest.raises(sweep.ConfigError, match=r"datasets\[0\]\.data: no file or folder"):
                sweep.load_config(name)
            continue
        assert sweep.load_config(name).cells()


@pytest.mark.parametrize(
    "patch, msg",
    [
        ({"colour": 1}, "unknown key(s) in sweep config: colour"),
        ({"attacks": ["nope"]}, "attacks[0]: unknown attack 'nope'"),
        ({"attacks": [{"attack": "pgd", "stepz": 1}]}, "attacks[0]: unknown key(s) stepz"),
        ({"attacks": [{"attack": "fgsm", "options": {"bogus": 1}}]}, "does not accept"),
        ({"eps": [0, -1]}, "eps values must be finite and >= 0"),
        ({"eps": [1, 1]}, "repeated values"),
        ({"eps": None}, "no eps grid"),
        ({"seeds": [0, 0]}, "seeds: repeated"),
        ({"batch_size": 0}, "batch_size: must be an integer >= 1"),
        ({"models": ["/nonexistent/m.msgpack"]}, "models[0]: model '/nonexistent/m.msgpack' not"),
        ({"datasets": ["/nonexistent.npz"]}, "datasets[0]: data '/nonexistent.npz' not found"),
        ({"attacks": ["fgsm", "fgsm"]}, "share the label 'fgsm'"),
        ({"norm": "l7"}, "norm: must be one of linf, l2, l1"),
    ],
)
def test_config_errors_name_the_entry(patch, msg):
    cfg = {**GRID, **patch}
    with pytest.raises(sweep.ConfigError) as e:
        sweep.load_config(cfg)
    assert msg in str(e.value)


def test_config_eps_units_hash_and_shards():
    a = sweep.load_config({**GRID, "eps": [0, 8]})
    b = sweep.load_config({**GRID, "eps": "0, 8/255", "batch_size": 7, "name": "other"})
    assert (
        a.data["attacks"][0]["eps"] == b.data["attacks"][0]["eps"] == [0.0, float(f"{8 / 255:.9g}")]
    )
    assert a.hash == b.hash  # batch size and name do not change results
    assert [c.hash for c in a.cells()] == [c.hash for c in b.cells()]
    assert sweep.load_config({**GRID, "num_steps": 3}).hash != a.hash
    cells = a.cells()
    shards = [shard_cells(cells, 5, i) for i in range(5)]
    ids = [c.id for s in shards for c in s]
    assert sorted(ids) == sorted(c.id for c in cells) and len(set(ids)) == len(cells)
    with pytest.raises(sweep.ConfigError, match="--shard-index"):
        shard_cells(cells, 2, 2)
    with pytest.raises(sweep.ConfigError, match="neither a file nor a built-in config.*smoke"):
        sweep.load_config("no_such_config")


def test_registered_attacks_by_name_and_l0_budgets():
    from jaxadv.attacks import REGISTRY
    from jaxadv.vocab import attack_names, eps_label, make_attack

    assert {"fgsm", "pgd", "autoattack"} <= set(attack_names())
    assert {n.lower() for n in REGISTRY} <= {n.lower() for n in attack_names()}
    assert type(make_attack("APGDT", num_steps=3)).__name__ == "APGDT"
    assert [eps_label(n, e) for n, e in [("linf", 8 / 255), ("l2", 0.5), ("l0", 3.0)]] == [
        "8/255",
        "0.5",
        "3 px",
    ]
    if "OnePixel" not in REGISTRY:
        pytest.skip("OnePixel is not registered in this checkout")
    entry = {"attack": "onepixel", "norm": "l0", "eps": [1, 3], "options": {"num_generations": 2}}
    cfg = sweep.load_config({**GRID, "attacks": [entry]})
    a = cfg.data["attacks"][0]
    assert a["label"] == "onepixel-l0" and a["eps"] == [1.0, 3.0]  # pixel counts, not 1/255
    with pytest.raises(sweep.ConfigError, match="attacks\\[0\\]: attack 'onepixel'"):
        sweep.load_config({**GRID, "attacks": [{**entry, "options": {"num_pixels": 0}}]})
    # OnePixel is built with room for the largest budget; each budget uses floor(eps) pixels
    assert sweep.load_config({**GRID, "attacks": [{**entry, "eps": [0, 5]}]}).data["attacks"]


def test_attack_default_norms_and_bias_field_budgets(tmp_path):
    """Without a norm, an attack runs under its own default (as on the command line): linf where
    supported, l0 for OnePixel, bias for the bias field, whose log-amplitudes are read as written
    (not in 1/255); universal attacks need a train split (tests/test_sweep_universal.py); a
    bias-field cell runs."""
    bias = {"attack": "bias-field", "eps": [0, 0.4], "options": {"degree": 2}}
    cfg = sweep.load_config({**GRID, "seeds": [0], "attacks": ["fgsm", bias]})
    fg, bf = cfg.data["attacks"]
    assert (fg["norm"], fg["label"]) == ("linf", "fgsm")
    assert bf["norm"] == "bias" and bf["eps"] == [0.0, 0.4]
    assert (
        sweep.load_config({**GRID, "attacks": ["fgsm"]}).hash
        == sweep.load_config({**GRID, "attacks": ["fgsm"], "norm": "linf"}).hash
    )  # configs that named the old default keep their hash
    one = {"attack": "onepixel", "eps": [1], "options": {"num_generations": 2}}
    assert sweep.load_config({**GRID, "attacks": [one]}).data["attacks"][0]["norm"] == "l0"
    # universal attacks are fitted on a train split, which the embedded default lacks
    with pytest.raises(sweep.ConfigError, match=r"attacks\[0\]\.fit\.split: .*test split only"):
        sweep.load_config({**GRID, "attacks": ["uap"]})
    with pytest.raises(sweep.ConfigError, match=r"attacks\[0\]\.eps: .*fractions of the image"):
        sweep.load_config({**GRID, "attacks": ["patch"]})
    with pytest.raises(sweep.ConfigError, match="log-amplitudes"):
        sweep.load_config({**GRID, "attacks": [{**bias, "eps": [0, 8]}]})
    with pytest.raises(sweep.ConfigError, match="supports norm bias"):
        sweep.load_config({**GRID, "norm": "linf", "attacks": [bias]})
    small = {**GRID, "seeds": [0], "num_steps": 3, "attacks": [bias]}
    small["datasets"] = [{"data": "default", "num_examples": 8}]
    out = tmp_path / "bias"
    res = sweep.run_sweep(sweep.load_config(small), out, batch_size=8)
    assert res.complete and len(res.computed) == 1
    assert main(["report", str(out)]) == 0
    rep = out / "report"
    rows = [json.loads(line) for line in (rep / "results.jsonl").read_text().splitlines()]
    assert [r["eps"] for r in rows] == [0.0, pytest.approx(0.4)]  # not 0.4/255
    assert rows[0]["robust_accuracy"] == rows[0]["clean_accuracy"]
    assert not rows[1]["norm_mean"] > 0.4 + 1e-6  # the field's amplitude (NaN: none broken)


# ----------------------------------------------------------------------------- in process
@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> tuple[sweep.SweepConfig, pathlib.Path]:
    """SMALL on all 8 in-process devices, 3 examples per device (10 examples: one step of 24,
    14 of them padding, dropped on the host)."""
    cfg = sweep.load_config(SMALL)
    out = tmp_path_factory.mktemp("small") / "all"
    res = sweep.run_sweep(cfg, out, batch_size=3)
    assert res.complete and len(res.computed) == 2
    return cfg, out


def test_device_count_and_batch_size_do_not_change_results(small_run, tmp_path):
    cfg, out = small_run
    assert jax.device_count() == 8
    one = sweep.run_sweep(cfg, tmp_path / "one", batch_size=10, devices=jax.devices()[:1])
    assert one.complete
    a, b = _results(out), _results(tmp_path / "one")
    assert a == b and len(a) == 2
    recs = SweepDir(out).load()
    run = next(iter(recs.values()))["run"]
    assert run["devices"] == 8 and run["batch_size"] == 3 and run["step"] == 24


def test_data_is_read_in_batches(monkeypatch, tmp_path):
    """The runner asks the data set for one batch at a time (plus a 16-example input check and
    the few images kept for the report), never for the whole evaluated subset."""
    from jaxadv.sweep import runner

    sizes: list[int] = []

    class Spy:
        def __init__(self, ds):
            self._ds = ds

        def __getattr__(self, name):
            return getattr(self._ds, name)

        def __len__(self):
            return len(self._ds)

        def get(self, idx):
            sizes.append(len(idx))
            return self._ds.get(idx)

    real = runner.load_dataset
    monkeypatch.setattr(runner, "load_dataset", lambda *a, **k: Spy(real(*a, **k)))
    cfg = sweep.load_config(
        {**SMALL, "seeds": [0], "datasets": [{"data": "default", "num_examples": 40}]}
    )
    sweep.run_sweep(cfg, tmp_path / "o", batch_size=4, devices=jax.devices()[:2])
    # 40 examples in steps of 2 devices x 4, each device's 4 rows read on their own
    assert max(sizes) == 16 and sizes.count(4) >= 10
    assert sum(sizes) <= 40 + 16 + 2


def test_rerun_skips_and_changed_config_is_refused(small_run, tmp_path):
    cfg, out = small_run
    again = sweep.run_sweep(cfg, out)
    assert again.computed == [] and len(again.skipped) == 2
    changed = sweep.load_config({**SMALL, "seeds": [0, 1, 2]})
    with pytest.raises(sweep.SweepError, match=r"different sweep config.*changed: seeds.*--force"):
        sweep.run_sweep(changed, out)
    rc = main(
        [
            "sweep",
            str(_write(tmp_path / "c.yaml", {**SMALL, "seeds": [0, 1, 2]})),
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 2
    before = _results(out)
    forced = sweep.run_sweep(changed, out, force=True)
    assert forced.computed == ["small_cnn_clean__default__fgsm__seed2"]
    assert len(forced.skipped) == 2
    after = _results(out)
    assert {k: after[k] for k in before} == before and len(after) == 3
    # back to the original config: the extra cell is moved aside, never deleted
    sweep.run_sweep(cfg, out, force=True)
    assert len(_results(out)) == 2
    assert list((out / "cells").glob("*seed2.json.stale"))


def test_corrupt_file_is_reported_then_recomputed(small_run, tmp_path, capsys):
    cfg, out = small_run
    work = tmp_path / "w"
    shutil.copytree(out, work)
    victim = _cell_files(work)[0]
    text = victim.read_text()
    victim.write_text(text[: len(text) // 2])  # truncated, as by a crash without atomic writes
    (work / "cells" / f".{victim.name}.abc.tmp").write_text("{")  # a killed writer's leftover
    with pytest.raises(sweep.CorruptResultsError, match=victim.name) as e:
        sweep.load_sweep(work)
    assert "truncated or invalid JSON" in str(e.value)
    assert main(["report", str(work)]) == 2
    assert victim.name in capsys.readouterr().err
    # a flipped value (valid JSON) is caught by the checksum
    other = _cell_files(work)[1]
    rec = json.loads(other.read_text())
    rec["results"]["success"][1][0] = 1 - rec["results"]["success"][1][0]
    other.write_text(json.dumps(rec))
    with pytest.raises(sweep.CorruptResultsError, match="checksum mismatch"):
        SweepDir(work).load()
    res = sweep.run_sweep(cfg, work)
    assert len(res.quarantined) == 2 and sorted(res.computed) == sorted(_results(out))
    assert _results(work) == _results(out)
    assert len(list((work / "cells").glob("*.corrupt"))) == 2
    assert not list((work / "cells").glob(".*.tmp"))


def test_shards_then_merge(small_run, tmp_path, capsys):
    cfg, out = small_run
    s0, s1 = tmp_path / "s0", tmp_path / "s1"
    for i, d in enumerate((s0, s1)):
        r = sweep.run_sweep(cfg, d, num_shards=2, shard_index=i)
        assert len(r.computed) == 1
    assert main(["merge", str(s0), "--out", str(tmp_path / "part"), "--no-report"]) == 0
    assert "1 cells missing" in capsys.readouterr().err
    # a partial merge is an ordinary sweep folder: running the config there fills the gap
    fill = sweep.run_sweep(cfg, tmp_path / "part")
    assert len(fill.skipped) == 1 and len(fill.computed) == 1
    assert _results(tmp_path / "part") == _results(out)
    merged = tmp_path / "merged"
    assert main(["merge", str(s0), str(s1), "--out", str(merged)]) == 0
    assert _results(merged) == _results(out)
    assert (merged / "report" / "report.html").exists()
    m = json.loads((merged / "sweep.json").read_text())
    assert [r["shard_index"] for r in m["runs"]] == [0, 1]
    # overlapping shards and different configs are refused, not silently combined
    with pytest.raises(sweep.SweepError, match="duplicate"):
        sweep.merge([s0, s1, out], tmp_path / "dup")
    sweep.merge([s0, s1, out], tmp_path / "dup2", allow_identical=True)
    other = tmp_path / "other"
    sweep.run_sweep(sweep.load_config({**SMALL, "seeds": [7]}), other)
    assert main(["merge", str(s0), str(other), "--out", str(tmp_path / "x")]) == 2
    assert "different configs" in capsys.readouterr().err


def test_report_contents(tmp_path):
    cfg = sweep.load_config(
        {
            **SMALL,
            "seeds": [0],
            "attacks": ["fgsm", {"attack": "fgsm", "label": "fgsm-bb", "black_box": True}],
        }
    )
    out = tmp_path / "r"
    sweep.run_sweep(cfg, out, devices=jax.devices()[:2], progress=True)  # rich display on
    assert main(["report", str(out)]) == 0
    rep = out / "report"
    page = (rep / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 4  # curves, queries, two image grids
    assert "src='http" not in page and "<link" not in page  # self-contained
    for s in ("Success vs queries", "Worst case over attacks", "SSIM", cfg.hash, jax.__version__):
        assert s in page, s
    md = (rep / "report.md").read_text()
    assert "robust_accuracy_default.png" in md and "success_vs_queries_default.png" in md
    rows = [json.loads(line) for line in (rep / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2  # cells x eps
    assert {r["attack"] for r in rows} == {"fgsm", "fgsm-bb"}
    zero = [r for r in rows if r["eps"] == 0]
    assert all(r["robust_accuracy"] == r["clean_accuracy"] for r in zero)
    csv_lines = (rep / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 4 and "ssim_mean" in csv_lines[0]
    ex = [json.loads(line) for line in (rep / "examples.jsonl").read_text().splitlines()]
    assert len(ex) == 2 * 10 and len(ex[0]["success"]) == 2
    wc = (rep / "worst_case.csv").read_text().splitlines()
    assert wc[0].startswith("model,dataset,norm,eps") and len(wc) == 1 + 2


def test_cli_sweep_user_errors(tmp_path, capsys):
    assert main(["sweep", "no_such_config", "--out", str(tmp_path / "o")]) == 2
    assert "built-in configs" in capsys.readouterr().err
    cfg = str(_write(tmp_path / "g.yaml", SMALL))
    assert (
        main(
            ["sweep", cfg, "--out", str(tmp_path / "o"), "--num-shards", "2", "--shard-index", "5"]
        )
        == 2
    )
    assert "--shard-index" in capsys.readouterr().err
    assert main(["sweep", cfg, "--out", str(tmp_path / "o"), "--coordinator", "127.0.0.1:1"]) == 2
    assert "--coordinator needs --num-processes and --process-id" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "not a sweep folder" in capsys.readouterr().err


def test_labels_that_would_share_an_id_are_refused():
    models = [
        {"model": "small_cnn_clean", "label": "Net"},
        {"model": "small_cnn_pgdat", "label": "net"},
    ]
    with pytest.raises(sweep.ConfigError, match="share the label.*ignoring case"):
        sweep.load_config({**SMALL, "models": models})
    models = [{**models[0], "label": "a b"}, {**models[1], "label": "a-b"}]
    with pytest.raises(sweep.ConfigError, match="share the label"):
        sweep.load_config({**SMALL, "models": models})
    # '__' separates the parts of an id: a label cannot contain it
    cfg = sweep.load_config({**SMALL, "models": [{**models[0], "label": "a__b"}]})
    assert cfg.cells()[0].id.startswith("a_b__default__")
    # long labels are shortened, and stay distinct
    long = [{**models[0], "label": "x" * 100 + "1"}, {**models[1], "label": "x" * 100 + "2"}]
    ids = [c.id for c in sweep.load_config({**SMALL, "models": long}).cells()]
    assert len(set(ids)) == len(ids) and max(len(i) for i in ids) < 120


def test_stored_summary_equals_the_one_recomputed_from_the_file(small_run):
    """The runner stores the engine's summary; the report recomputes it from the per-example
    arrays of the file (one summary function, one file format: jaxadv.engine.summary)."""
    from jaxadv.report import jsonable
    from jaxadv.sweep.report import decode
    from jaxadv.sweep.storage import SweepDir

    _, out = small_run
    recs = SweepDir(out).load(strict=True)
    assert recs
    for rec in recs.values():
        again = decode(rec).summary
        assert json.dumps(jsonable(again), sort_keys=True) == json.dumps(
            rec["summary"], sort_keys=True
        )


def _save_tiny_net(path: pathlib.Path, seed: int) -> None:
    from flax import nnx

    from jaxadv import checkpoint
    from jaxadv.nn import SmallCNN

    net = SmallCNN(2, 1, width=4, rngs=nnx.Rngs(seed))
    checkpoint.save(path, net, {"architecture": "small_cnn", "kwargs": {"width": 4}})


def test_retrained_checkpoint_or_new_data_file_recomputes_cells(tmp_path):
    ck = tmp_path / "net.msgpack"
    _save_tiny_net(ck, 0)
    raw = {**SMALL, "seeds": [0], "models": [{"model": str(ck), "label": "mine"}]}
    out = tmp_path / "o"
    first = sweep.run_sweep(sweep.load_config(raw), out, devices=jax.devices()[:1])
    assert len(first.computed) == 1
    again = sweep.run_sweep(sweep.load_config(raw), out, devices=jax.devices()[:1])
    assert again.computed == [] and len(again.skipped) == 1
    before = _results(out)
    _save_tiny_net(ck, 1)  # retrained in place: same path, other weights
    msgs: list[str] = []
    redo = sweep.run_sweep(sweep.load_config(raw), out, devices=jax.devices()[:1], say=msgs.append)
    assert len(redo.computed) == 1 and redo.skipped == []
    assert any("other model/data file content" in m for m in msgs), msgs
    assert list((out / "cells").glob("*.stale")) and _results(out) != before
    # the data file's content is covered too (hash only: no run needed)
    data = tmp_path / "d.npz"
    shutil.copy(ROOT / "jaxadv" / "assets" / "pneumoniamnist_test.npz", data)
    draw = {**SMALL, "datasets": [{"data": str(data), "num_examples": 10}]}
    h1 = sweep.load_config(draw).cells()[0].hash
    with open(data, "ab") as f:
        f.write(b"changed")
    assert sweep.load_config(draw).cells()[0].hash != h1
    m = json.loads((out / "sweep.json").read_text())
    assert m["inputs"][str(ck)]  # the fingerprint is recorded (merge and report use it)


def test_recovery_hints_work_as_written(small_run, tmp_path):
    cfg, out = small_run
    # deleted manifest: the hint says to re-run the sweep with the same --out; doing so keeps cells
    work = tmp_path / "deleted"
    shutil.copytree(out, work)
    (work / "sweep.json").unlink()
    with pytest.raises(sweep.SweepError, match="Re-run `jaxadv sweep` with the config") as e:
        sweep.write_report(work)
    assert "same --out" in str(e.value)
    res = sweep.run_sweep(cfg, work)
    assert res.computed == [] and len(res.skipped) == 2
    assert sweep.write_report(work).exists()
    # damaged manifest: same hint; the damaged file is kept as sweep.json.corrupt
    work = tmp_path / "damaged"
    shutil.copytree(out, work)
    (work / "sweep.json").write_text('{"config": ')
    with pytest.raises(sweep.CorruptResultsError, match="re-run `jaxadv sweep`") as e:
        sweep.load_sweep(work)
    assert "sweep.json.corrupt" in str(e.value)
    assert main(["merge", str(work), "--out", str(tmp_path / "m0")]) == 2
    msgs: list[str] = []
    res = sweep.run_sweep(cfg, work, say=msgs.append)
    assert res.computed == [] and (work / "sweep.json.corrupt").exists()
    assert sweep.write_report(work).exists()
    # a run record left 'running' (its process was killed) is marked on the next start
    m = json.loads((work / "sweep.json").read_text())
    m["runs"][-1]["status"] = "running"
    (work / "sweep.json").write_text(json.dumps(m))
    msgs.clear()
    sweep.run_sweep(cfg, work, say=msgs.append)
    runs = json.loads((work / "sweep.json").read_text())["runs"]
    assert runs[-2]["status"] == "killed" and runs[-1]["status"] == "finished"
    assert any("died without finishing" in x for x in msgs), msgs
    # merge of a folder holding a stale cell: the hint names the file to move out
    work = tmp_path / "stale"
    shutil.copytree(out, work)
    victim = _cell_files(work)[0]
    from jaxadv.sweep.storage import seal

    rec = json.loads(victim.read_text())
    rec["cell"]["hash"] = "0" * 16
    victim.write_text(json.dumps(seal(rec)))
    with pytest.raises(sweep.SweepError, match="move that file out of the folder") as e:
        sweep.merge([work], tmp_path / "m1")
    assert str(victim) in str(e.value)
    shutil.move(victim, tmp_path / victim.name)
    assert len(sweep.merge([work], tmp_path / "m2").missing) == 1
    # a non-empty --out: "merge into a new folder (or list it as a source)"
    with pytest.raises(sweep.SweepError, match="list it as a source"):
        sweep.merge([out], tmp_path / "m2")
    assert sweep.merge([out, tmp_path / "m2"], tmp_path / "m2", allow_identical=True).complete
    # shards run on other file content: "re-run the shards whose files differ with the same files"
    s0, s1 = tmp_path / "s0", tmp_path / "s1"
    for i, d in enumerate((s0, s1)):
        sweep.run_sweep(cfg, d, num_shards=2, shard_index=i)
    m = json.loads((s1 / "sweep.json").read_text())
    m["inputs"] = {"small_cnn_clean": "0" * 16}
    (s1 / "sweep.json").write_text(json.dumps(m))
    with pytest.raises(sweep.SweepError, match="re-run the shards whose files differ"):
        sweep.merge([s0, s1], tmp_path / "m3")
    sweep.run_sweep(cfg, s1, num_shards=2, shard_index=1)
    assert sweep.merge([s0, s1], tmp_path / "m3").complete
    # an unwritable report folder: "pass --out with a writable folder"
    (tmp_path / "file").write_text("")
    with pytest.raises(sweep.SweepError, match="pass --out with a writable folder"):
        sweep.write_report(tmp_path / "m3", tmp_path / "file" / "rep")
    assert sweep.write_report(tmp_path / "m3", tmp_path / "rep").exists()


# ----------------------------------------------------------------------------- subprocesses
@pytest.mark.slow
def test_sigint_then_sigkill_then_resume_on_8_devices(grid_cfg, reference, tmp_path):
    """Ctrl-C stops cleanly (exit 130, finished cells kept); SIGKILL at a random moment loses
    nothing finished; re-running completes every cell exactly once, with the per-example results
    of the 1-device batch-4 reference although this runs on 8 devices with batch size 3."""
    out = tmp_path / "k"
    args = ["sweep", str(grid_cfg), "--out", str(out), "--batch-size", "3", "--no-report"]

    p = subprocess.Popen(
        _cli(*args),
        env=_env(8),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    n = _wait_for_cells(p, out, 0)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=TIMEOUT)
    assert p.returncode == 130, stderr
    assert "interrupt" in stderr and "Run the same command again to resume" in stderr
    # not a terminal: one plain line per cell with an ETA, no rich control codes
    assert "[1/12] small_cnn_clean__default__fgsm__seed0" in stderr and "ETA" in stderr
    assert "\x1b[" not in stderr
    saved = _results(out)  # every file intact
    assert n <= len(saved) < 12
    m = json.loads((out / "sweep.json").read_text())
    assert m["runs"][-1]["status"] == "interrupted"

    p = subprocess.Popen(
        _cli(*args, "--quiet"),
        env=_env(8),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_cells(p, out, len(saved))
    p.send_signal(signal.SIGKILL)
    _, stderr = p.communicate(timeout=TIMEOUT)
    assert p.returncode == -signal.SIGKILL
    assert "ETA" not in stderr, stderr  # --quiet: no progress lines
    killed = _results(out)
    assert len(saved) < len(killed) < 12, "the kill should land mid-sweep"

    r = _run(args, 8)
    assert r.returncode == 0, r.stderr
    assert f"{12 - len(killed)} cells computed, {len(killed)} resumed" in r.stdout
    assert [p.name for p in _cell_files(out)] == sorted(f"{c}.json" for c in reference)
    assert _results(out) == reference
    assert not list((out / "cells").glob(".*")) and not list((out / "cells").glob("*.corrupt"))
    # the SIGKILLed run could not record its end: the next start marks it and says so
    assert "died without finishing" in r.stderr
    runs = json.loads((out / "sweep.json").read_text())["runs"]
    assert [r["status"] for r in runs] == ["interrupted", "killed", "finished"]
    assert runs[-1]["devices"] == 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_with_jax_distributed(grid_cfg, reference, tmp_path):
    """One computation over 2 processes x 2 CPU devices (gloo collectives), coordinated on
    127.0.0.1: process 0 writes, and the results equal the 1-device reference."""
    out = tmp_path / "dist"
    port = _free_port()
    procs = [
        subprocess.Popen(
            _cli(
                "sweep",
                str(grid_cfg),
                "--out",
                str(out),
                "--quiet",
                "--no-report",
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(i),
            ),
            env=_env(2),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=TIMEOUT))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert _results(out) == reference
    rec = SweepDir(out).load()
    run = next(iter(rec.values()))["run"]
    assert run["process_count"] == 2 and run["devices"] == 4
    # only process 0 reports (gloo itself prints connection lines on both)
    assert "12 cells computed" in outs[0][0] and "cells computed" not in outs[1][0]
