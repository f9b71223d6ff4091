"""Result files, manifests, shard folders and checkpoint metadata are untrusted input.

Each case crafts a hostile file (re-sealed with a valid checksum where the point is that the
checksum alone does not help) and checks that `jaxadv report` / `jaxadv merge` / the runner / the
checkpoint loader refuse it with a clear SweepError or CheckpointError, write nothing outside their
folder, and read nothing outside it. One tiny in-process sweep (10 images, FGSM, 1 seed) serves
every case; each case works on a copy of it.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import pytest

from jaxadv import checkpoint, sweep
from jaxadv.cli import main
from jaxadv.sweep.config import config_hash
from jaxadv.sweep.storage import SweepDir, folder_lock, seal

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = {
    "name": "tiny",
    "seeds": [0],
    "batch_size": 4,
    "num_images": 2,
    "eps": [0, 8],
    "num_steps": 2,
    "models": ["small_cnn_clean"],
    "datasets": [{"data": "default", "num_examples": 10}],
    "attacks": ["fgsm"],
}
CELL = "small_cnn_clean__default__fgsm__seed0"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("tiny") / "run"
    res = sweep.run_sweep(sweep.load_config(TINY), out, devices=jax.devices()[:1])
    assert res.complete
    return out


@pytest.fixture
def work(tiny, tmp_path) -> pathlib.Path:
    """A private copy of the tiny sweep inside ``tmp_path/inside``; ``tmp_path/outside`` is a
    folder nothing may touch."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "victim.txt").write_text("untouched")
    dst = tmp_path / "inside" / "run"
    shutil.copytree(tiny, dst)
    return dst


def _outside_untouched(work: pathlib.Path) -> None:
    outside = work.parent.parent / "outside"
    assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"]
    assert (outside / "victim.txt").read_text() == "untouched"
    assert not (work.parent.parent / "etc").exists() and not pathlib.Path("/etc/x.json").exists()


def _record(work: pathlib.Path) -> dict:
    return json.loads((work / "cells" / f"{CELL}.json").read_text())


def _put_cell(work: pathlib.Path, rec: dict, name: str) -> pathlib.Path:
    p = work / "cells" / name
    p.write_text(json.dumps(seal(rec)))
    return p


def _hostile_cell(rec: dict, label: str) -> dict:
    rec = json.loads(json.dumps(rec))
    rec["cell"]["model"]["label"] = label
    rec["cell"]["id"] = f"{label}__default__fgsm__seed0"
    return rec


HOSTILE_LABELS = {
    "parent": "../../etc/x",
    "absolute": "/etc/x",
    "slash": "a/b",
    "nul": "a\x00b",
    "long": "m" * 300,
    "dot": "..",
}


@pytest.mark.parametrize("label", list(HOSTILE_LABELS.values()), ids=list(HOSTILE_LABELS))
def test_hostile_cell_labels_are_refused(work, label, capsys):
    _put_cell(work, _hostile_cell(_record(work), label), "crafted.json")
    with pytest.raises(sweep.CorruptResultsError, match="crafted.json"):
        sweep.load_sweep(work)
    assert main(["report", str(work)]) == 2
    err = capsys.readouterr().err
    assert "crafted.json" in err and "Traceback" not in err
    with pytest.raises(sweep.CorruptResultsError):
        sweep.merge([work], work.parent / "merged")
    _outside_untouched(work)


@pytest.mark.parametrize(
    "content, why",
    [
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
        (b"\x00", "invalid JSON"),
        (b"", "empty file"),
        (b'"a string"', "not a JSON object"),
    ],
)
def test_garbage_cell_and_manifest_files(work, content, why):
    (work / "cells" / "g.json").write_bytes(content)
    with pytest.raises(sweep.CorruptResultsError, match=why):
        sweep.load_sweep(work)
    (work / "cells" / "g.json").unlink()
    (work / "sweep.json").write_bytes(content)
    with pytest.raises(sweep.CorruptResultsError, match="sweep.json"):
        sweep.load_sweep(work)


def test_cell_id_that_does_not_match_its_labels(work):
    rec = _record(work)
    rec["cell"]["id"] = "../../etc/x"
    _put_cell(work, rec, "x.json")
    with pytest.raises(sweep.CorruptResultsError, match="does not match its labels"):
        SweepDir(work).load()


@pytest.mark.parametrize(
    "path, value, why",
    [
        (("results", "success"), 5, "results.success"),
        (("results", "indices"), [10**30] * 10, "wrong type"),
        (("results", "indices"), "0,1,2", "results"),
        (("results", "norm"), [[1.0]], "results.norm"),
        (("cell", "attack", "eps"), 8, "eps must be a non-empty list"),
        (("cell", "attack", "eps"), ["a"], "eps must be a non-empty list"),
        (("cell", "seed"), "0", "seed"),
        (("cell", "attack", "norm"), "linf;rm", "norm"),
        (("samples", "clean"), "!!not base64!!", "samples"),
        (("samples",), [1, 2], "samples"),
        (("black_box",), "yes", "black_box"),
        (("run",), 3, "run"),
    ],
)
def test_wrong_types_are_corrupt_not_a_traceback(work, path, value, why, capsys):
    rec = _record(work)
    node = rec
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    victim = _put_cell(work, rec, f"{CELL}.json")  # sealed: the checksum is valid
    with pytest.raises(sweep.CorruptResultsError, match=why):
        sweep.load_sweep(work)
    assert main(["report", str(work)]) == 2
    assert "Traceback" not in capsys.readouterr().err
    # the runner sets the file aside and computes the cell again
    res = sweep.run_sweep(sweep.load_config(TINY), work, devices=jax.devices()[:1])
    assert res.computed == [CELL] and len(res.quarantined) == 1
    assert victim.exists() and SweepDir(work).load()


def _edit_manifest(work: pathlib.Path, edit) -> None:
    p = work / "sweep.json"
    m = json.loads(p.read_text())
    edit(m)
    if isinstance(m, dict) and isinstance(m.get("config"), dict):
        m["config_hash"] = config_hash(m["config"])
    p.write_text(json.dumps(m))


def _label_models(m):
    m["config"]["models"][0]["label"] = "../../etc/x"


def _seeds_number(m):
    m["config"]["seeds"] = 3


def _runs_number(m):
    m["runs"] = 5


def _inputs_list(m):
    m["inputs"] = ["x"]


@pytest.mark.parametrize(
    "edit, why",
    [
        (_label_models, "not a normalised label"),
        (_seeds_number, "seeds"),
        (_runs_number, "runs"),
        (_inputs_list, "inputs"),
    ],
)
def test_hostile_manifest_is_refused_by_report_and_merge(work, edit, why, capsys):
    _edit_manifest(work, edit)
    with pytest.raises(sweep.CorruptResultsError, match=why):
        sweep.write_report(work)
    assert main(["merge", str(work), "--out", str(work.parent / "m")]) == 2
    err = capsys.readouterr().err
    assert "sweep.json" in err and "Traceback" not in err
    assert not (work.parent / "m" / "cells").exists()
    _outside_untouched(work)


def test_edited_manifest_config_is_detected(work):
    p = work / "sweep.json"
    m = json.loads(p.read_text())
    m["config"]["models"][0]["label"] = "../../etc/x"  # config_hash left as it was
    p.write_text(json.dumps(m))
    with pytest.raises(sweep.CorruptResultsError, match="config_hash does not match"):
        sweep.load_sweep(work)
    p.write_text("[1, 2]")
    with pytest.raises(sweep.CorruptResultsError, match="not a sweep manifest"):
        sweep.load_sweep(work)


def test_links_out_of_the_folder_are_refused(work):
    outside = work.parent.parent / "outside"
    # the report folder is a link out of the sweep folder
    (work / "report").symlink_to(outside, target_is_directory=True)
    with pytest.raises(sweep.SweepError, match="outside"):
        sweep.write_report(work)
    (work / "report").unlink()
    # one report file is a link to a file outside
    (work / "report").mkdir()
    (work / "report" / "results.csv").symlink_to(outside / "victim.txt")
    with pytest.raises(sweep.SweepError, match="outside"):
        sweep.write_report(work)
    shutil.rmtree(work / "report")
    # a cell file is a link to a file elsewhere: never read through
    (work / "cells" / "zz.json").symlink_to(outside / "victim.txt")
    with pytest.raises(sweep.CorruptResultsError, match="symbolic link"):
        sweep.load_sweep(work)
    (work / "cells" / "zz.json").unlink()
    # cells/ itself is a link out
    shutil.move(work / "cells", outside / "cells")
    (work / "cells").symlink_to(outside / "cells", target_is_directory=True)
    with pytest.raises(sweep.SweepError, match="outside"):
        sweep.load_sweep(work)
    (work / "cells").unlink()
    shutil.move(outside / "cells", work / "cells")
    _outside_untouched(work)
    assert sweep.write_report(work).exists()


def test_unwritable_output_gives_a_clear_error(work, capsys):
    blocker = work.parent / "a_file"
    blocker.write_text("")
    assert main(["report", str(work), "--out", str(blocker / "rep")]) == 2
    assert "cannot write the report" in capsys.readouterr().err
    assert main(["merge", str(work), "--out", str(blocker / "m"), "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "choose a writable --out" in err.lower() or "writable" in err
    if os.geteuid() != 0:  # root ignores permissions
        ro = work.parent / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            assert main(["report", str(work), "--out", str(ro)]) == 2
            assert "cannot write the report" in capsys.readouterr().err
        finally:
            ro.chmod(0o700)


def test_merge_into_a_folder_being_written_is_refused(work):
    target = work.parent / "busy"
    with folder_lock(target):  # as a running `jaxadv sweep` holds it
        with pytest.raises(sweep.SweepError, match="is writing to"):
            sweep.merge([work], target)
    assert sweep.merge([work], target).complete


def test_report_imports_no_device_code_and_keeps_the_matplotlib_backend(work):
    code = (
        "import sys, matplotlib\n"
        "from jaxadv.sweep.report import write_report\n"
        f"p = write_report({str(work)!r})\n"
        "bad = [m for m in ('jaxadv.sweep.runner', 'jaxadv.sharding', 'matplotlib.pyplot') "
        "if m in sys.modules]\n"
        "assert not bad, bad\n"
        "assert matplotlib.get_backend().lower() == 'pdf', matplotlib.get_backend()\n"
    )
    env = {**os.environ, "MPLBACKEND": "pdf", "JAX_PLATFORMS": "cpu"}
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr


def test_report_leads_with_results_ends_with_manifest_and_tables_scroll(work):
    page = sweep.write_report(work).read_text()
    heads = [page.index(h) for h in ("<h2>Robust accuracy</h2>", "<h2>Run manifest</h2>")]
    assert heads == sorted(heads) and page.index("<h2>") == heads[0]
    assert page.rindex("<h2>") == heads[1]  # nothing after the manifest but its sub-sections
    assert page.count("<table") == page.count("<div class='scroll'><table") > 0
    assert ".scroll{max-width:100%;overflow-x:auto" in page


def _tiny_checkpoint(d: pathlib.Path, fmt: str = "msgpack") -> pathlib.Path:
    from flax import nnx

    from jaxadv.nn import SmallCNN

    net = SmallCNN(2, 1, width=4, rngs=nnx.Rngs(0))
    path = d / ("net.msgpack" if fmt == "msgpack" else "net.orbax")
    checkpoint.save(path, net, {"architecture": "small_cnn", "kwargs": {"width": 4}})
    return path


@pytest.mark.parametrize(
    "field, value, why",
    [
        ("file", "../../outside/victim.txt", "plain file name"),
        ("file", "/etc/passwd", "plain file name"),
        ("file", "a\x00b", "plain file name"),
        ("file", 5, "plain file name"),
        ("kwargs", 5, "'kwargs' must be an object"),
        ("kwargs", {"no_such_arg": 1}, "cannot build"),
        ("format", "pickle", "'format' must be"),
        ("mean", "abc", "'mean' must be"),
        ("architecture", ["x"], "'architecture' must be a string"),
    ],
)
def test_hostile_checkpoint_metadata(tmp_path, field, value, why):
    path = _tiny_checkpoint(tmp_path)
    meta_path = checkpoint.metadata_path(path)
    meta = json.loads(meta_path.read_text())
    meta[field] = value
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(checkpoint.CheckpointError, match=why):
        checkpoint.load(meta_path)


def test_checkpoint_links_out_of_its_folder(tmp_path):
    (tmp_path / "outside").mkdir()
    ck = tmp_path / "ck"
    ck.mkdir()
    path = _tiny_checkpoint(ck)
    # the weights named by the metadata are a link to a file elsewhere
    os.replace(path, tmp_path / "outside" / "w.msgpack")
    path.symlink_to(tmp_path / "outside" / "w.msgpack")
    with pytest.raises(checkpoint.CheckpointError, match="outside"):
        checkpoint.load(checkpoint.metadata_path(path))
    # an orbax directory holding a link out
    opath = _tiny_checkpoint(ck, "orbax")
    (opath / "evil").symlink_to(tmp_path / "outside")
    with pytest.raises(checkpoint.CheckpointError, match="outside"):
        checkpoint.load(opath)
