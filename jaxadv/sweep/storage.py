"""The on-disk layout of a sweep folder, written so that no interruption loses or duplicates work.

::

    DIR/sweep.json            run manifest: format, normalised config and its hash, versions, runs
    DIR/cells/<cell id>.json  one file per finished cell, written whole (temporary file, fsync,
                              rename, fsync of the folder) and carrying its own SHA-256 checksum

A cell is finished exactly when its file exists, so a process killed at any moment leaves every
finished cell once and no partial one (at worst a stray ``.*.tmp`` file, ignored and cleaned up). A
cell file that fails to parse, to match its checksum or to have the expected fields and types is
*corrupt*: readers raise :class:`CorruptResultsError` naming it; the runner moves it aside to
``<name>.corrupt`` (never deleting it) and computes the cell again.

Everything read from these files is untrusted: cell ids and labels are checked to be normalised
labels before any file name is built from them, and every path is checked to stay inside the folder
(symbolic links included).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import json
import math
import os
import pathlib
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from jaxadv._io import UnsafePathError, check_inside, fsync_dir, path_inside, write_atomic
from jaxadv.engine.summary import PER_EXAMPLE
from jaxadv.sweep import detection, recheck
from jaxadv.sweep import segmentation as seg
from jaxadv.sweep.config import (
    ConfigError,
    SweepConfig,
    canonical_json,
    config_hash,
    expand,
    is_label,
    sha256,
)
from jaxadv.vocab import NORMS

__all__ = ["fsync_dir", "write_atomic"]  # re-exported for older imports

MANIFEST = "sweep.json"
CELLS = "cells"
CELL_FORMAT = "jaxadv-sweep-cell/1"
_MANIFEST_HINT = (
    "Restore it from a copy, or re-run `jaxadv sweep` with the config that made this folder and "
    "the same --out: it sets the damaged sweep.json aside as sweep.json.corrupt, writes a new one "
    "and keeps the finished cells"
)


class SweepError(ValueError):
    """A sweep folder cannot be used as asked (different config, wrong layout, ...)."""


class CorruptResultsError(SweepError):
    """One or more result files are corrupt or truncated.

    Attributes:
        problems: ``[(path, reason)]``.
    """

    def __init__(self, problems: list[tuple[str, str]], hint: str | None = None):
        self.problems = problems
        lines = "; ".join(f"{p}: {r}" for p, r in problems)
        if hint is None:
            hint = (
                "Re-run `jaxadv sweep` with the same config and --out to recompute those cells "
                "(the damaged files are kept, renamed *.corrupt)"
            )
        super().__init__(f"{len(problems)} corrupt or truncated result file(s): {lines}. {hint}")


# ----------------------------------------------------------------------------- the folder lock
@contextlib.contextmanager
def folder_lock(root: str | os.PathLike, *, what: str = "jaxadv sweep") -> Iterator[None]:
    """One writer per sweep folder (``jaxadv sweep`` or ``jaxadv merge``): an OS lock on
    ``root/.lock``, released by the OS when the process dies.

    Raises:
        SweepError: another process holds the lock.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    path = os.path.join(root, ".lock")
    try:
        os.makedirs(root, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as e:
        raise SweepError(
            f"cannot create the lock file {path} ({e.strerror or e}); is the folder writable? "
            "Choose a writable --out"
        ) from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            raise SweepError(
                f"another `jaxadv sweep` or `jaxadv merge` is writing to {root}; wait for it to "
                "finish, or give each process its own --out (then `jaxadv merge`)"
            ) from e
        yield
    finally:
        os.close(fd)


def lock_is_free(root: str | os.PathLike) -> bool:
    """True when no process holds the folder lock of ``root`` (checked without taking it)."""
    try:
        with folder_lock(root):
            return True
    except SweepError:
        return False


# ----------------------------------------------------------------------------- atomic files


# ----------------------------------------------------------------------------- arrays <-> JSON
def encode_array(a: np.ndarray) -> Any:
    """Nested lists; booleans as 0/1, non-finite floats as null (JSON has no NaN)."""
    a = np.asarray(a)
    if a.dtype == np.bool_:
        return a.astype(np.int8).tolist()
    if np.issubdtype(a.dtype, np.integer):
        return a.astype(np.int64).tolist()
    f = a.astype(np.float64)
    obj = f.astype(object)
    obj[~np.isfinite(f)] = None
    return obj.tolist()


def decode_array(v: Any, dtype: Any) -> np.ndarray:
    if np.dtype(dtype) == np.bool_:
        return np.asarray(v, np.int8).astype(bool)
    if np.issubdtype(np.dtype(dtype), np.integer):
        return np.asarray(v, dtype)
    arr = np.asarray(v, dtype=object)
    arr[arr == None] = np.nan  # noqa: E711 - elementwise comparison on an object array
    return arr.astype(dtype)


def _encode_u8(a: np.ndarray) -> str:
    """A uint8 array as base64 of its ``.npy`` buffer."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(a, np.uint8), allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode()


def _decode_u8(s: Any, what: str, ndim: int, shape: str) -> np.ndarray:
    """The uint8 array of rank ``ndim`` that :func:`_encode_u8` wrote (``what`` and ``shape``
    name it in errors)."""
    if not isinstance(s, str):
        raise ValueError(f"{what} must be a base64 string, got {type(s).__name__}")
    try:
        arr = np.load(io.BytesIO(base64.b64decode(s, validate=True)), allow_pickle=False)
    except (binascii.Error, ValueError, OSError, EOFError) as e:
        raise ValueError(f"unreadable {what} ({e})") from e
    if arr.dtype != np.uint8 or arr.ndim != ndim:
        raise ValueError(f"{what} must be uint8 {shape}, got {arr.dtype}{list(arr.shape)}")
    return arr


def encode_images(a: np.ndarray) -> str:
    """uint8 images as base64 of an ``.npy`` buffer (compact, exact for display)."""
    return _encode_u8(np.clip(np.round(np.asarray(a, np.float32) * 255), 0, 255))


def decode_images(s: str) -> np.ndarray:
    """Images ``[n, H, W, K]`` in ``[0, 1]`` from :func:`encode_images`.

    Raises:
        ValueError: not base64 of a ``uint8`` ``.npy`` array of rank 4.
    """
    return _decode_u8(s, "images", 4, "[n, H, W, K]").astype(np.float32) / 255.0


def encode_masks(m: np.ndarray) -> str:
    """Masks ``[n, H, W]`` of class ids (< 256) as base64 of a uint8 ``.npy`` buffer."""
    a = np.asarray(m)
    if a.ndim != 3 or (a.size and (a.min() < 0 or a.max() > 255)):
        raise ValueError(f"masks must be [n, H, W] class ids in [0, 255], got shape {a.shape}")
    return _encode_u8(a)


def decode_masks(s: Any) -> np.ndarray:
    """Masks ``int32[n, H, W]`` from :func:`encode_masks`.

    Raises:
        ValueError: not base64 of a ``uint8`` ``.npy`` array of rank 3.
    """
    return _decode_u8(s, "masks", 3, "[n, H, W]").astype(np.int32)


# ----------------------------------------------------------------------------- cell records
def seal(record: dict[str, Any]) -> dict[str, Any]:
    """Add the checksums: ``results_sha256`` (the per-example results only: equal across runs,
    batch sizes and device counts) and ``sha256`` (the whole record)."""
    rec = {k: v for k, v in record.items() if k not in ("sha256", "results_sha256")}
    rec["results_sha256"] = sha256(rec["results"])
    rec["sha256"] = sha256(rec)
    return rec


def check_record(rec: Any) -> str | None:
    """``None`` when ``rec`` is a well-formed, untampered cell record, else the reason."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    if rec.get("format") != CELL_FORMAT:
        return f"unknown format {rec.get('format')!r} (expected {CELL_FORMAT})"
    for k in ("cell", "results", "sha256", "results_sha256"):
        if k not in rec:
            return f"missing field {k!r}"
    body = {k: v for k, v in rec.items() if k != "sha256"}
    try:
        if sha256(body) != rec["sha256"]:
            return "checksum mismatch (the file was modified or damaged)"
        if sha256(rec["results"]) != rec["results_sha256"]:
            return "results checksum mismatch"
    except (TypeError, ValueError, RecursionError) as e:
        return f"unreadable content ({e})"
    # A checksum only proves the record was not changed after sealing; a crafted file can be
    # sealed too, so its shape and types are checked as well.
    return check_cell_fields(rec)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_cell_fields(rec: dict[str, Any]) -> str | None:
    """``None`` when the fields of a cell record have the types and shapes readers rely on."""
    c, r = rec.get("cell"), rec.get("results")
    if not isinstance(c, dict) or not isinstance(r, dict):
        return "fields 'cell' and 'results' must be objects"
    for k in ("model", "dataset", "attack"):
        if not isinstance(c.get(k), dict) or not is_label(c[k].get("label")):
            return f"cell.{k}.label is missing or not a normalised label"
    if not _is_int(c.get("seed")) or c["seed"] < 0:
        return f"cell.seed must be an integer >= 0, got {c.get('seed')!r}"
    from jaxadv.sweep import transfer

    bad = transfer.check_record(c)
    if bad:
        return bad
    labels = (c["model"]["label"], c["dataset"]["label"], c["attack"]["label"], c["seed"])
    want = transfer.cell_id(*labels, c.get("surrogate"))
    if c.get("id") != want:
        return f"cell.id {c.get('id')!r} does not match its labels and seed ({want!r})"
    if not isinstance(c.get("hash"), str):
        return "cell.hash must be a string"
    a = c["attack"]
    dense = seg.is_dense(a)
    eps = a.get("eps")
    if not isinstance(eps, list) or not eps or not all(_is_num(e) for e in eps):
        return f"cell.attack.eps must be a non-empty list of numbers, got {eps!r}"
    if a.get("norm") not in NORMS:
        return f"cell.attack.norm must be one of {', '.join(NORMS)}, got {a.get('norm')!r}"
    try:
        n = decode_array(r.get("indices"), np.int64)
        if n.ndim != 1:
            return "results.indices must be a list of integers"
        for k in ("labels", "clean_correct"):
            v = decode_array(r.get(k), np.int64)
            # labels of a multi-label cell are multi-hot rows [N, F]
            multi = k == "labels" and v.ndim == 2 and bool(c["attack"].get("multilabel"))
            if v.shape[:1] != n.shape or (v.ndim != 1 and not multi):
                return f"results.{k} must be a list of {n.size} integers"
        if decode_array(r.get("clean_score"), np.float32).shape != n.shape:
            return f"results.clean_score must be a list of {n.size} numbers"
        for k, dt in PER_EXAMPLE.items():
            v = decode_array(r.get(k), dt)
            if v.shape != (len(eps), n.size):
                return f"results.{k} must be {len(eps)} lists of {n.size} numbers"
        why = seg.check_fields(r, dense, len(eps), n.size)  # per-image Dice, IoU, ...
        if why is None:  # detector scores: clean [N], adversarial [E, N]
            why = detection.check_fields(r, len(eps), n.size)
        if why is None:  # re-checked flips [E, N]
            why = recheck.check_fields(r, len(eps), n.size)
        if why is not None:
            return why
        lab = decode_array(r.get("labels"), np.int64)
        if "logits" in r or "clean_logits" in r:  # per-finding / per-class logits
            cl = decode_array(r.get("clean_logits"), np.float32)
            # one logit per finding of a multi-label cell, else one per class
            f = lab.shape[1] if lab.ndim == 2 else (cl.shape[1] if cl.ndim == 2 else 0)
            if f < 1 or cl.shape != (n.size, f):
                return f"results.clean_logits must be {n.size} lists of {max(f, 1)} numbers"
            if decode_array(r.get("logits"), np.float32).shape != (len(eps), n.size, f):
                return f"results.logits must be [{len(eps)}, {n.size}, {f}] numbers"
    except (TypeError, ValueError, OverflowError) as e:
        return f"results hold a value of the wrong type ({e})"
    if not isinstance(rec.get("black_box", False), bool):
        return "black_box must be true or false"
    if not isinstance(rec.get("run") or {}, dict):
        return "run must be an object"
    smp = rec.get("samples")
    if smp is not None:
        if not isinstance(smp, dict) or not _is_num(smp.get("eps")):
            return "samples must be an object with a number 'eps'"
        try:
            clean, adv = decode_images(smp.get("clean")), decode_images(smp.get("adv"))
            idx = decode_array(smp.get("indices"), np.int64)
        except (TypeError, ValueError, OverflowError) as e:
            return f"samples: {e}"
        if clean.shape != adv.shape or idx.shape != (clean.shape[0],):
            return "samples: clean images, adversarial images and indices do not match"
        why = seg.check_samples(smp, dense, clean.shape)  # true and predicted masks
        if why is not None:
            return why
    return None


def check_manifest(m: Any) -> str | None:
    """``None`` when ``m`` has the fields and types of a sweep manifest, else the reason."""
    if not isinstance(m, dict):
        return "not a sweep manifest (not a JSON object)"
    if not isinstance(m.get("config"), dict) or not isinstance(m.get("config_hash"), str):
        return "not a sweep manifest (no config and config_hash)"
    try:
        if config_hash(m["config"]) != m["config_hash"]:
            return "its config_hash does not match its config (the file was edited or damaged)"
    except (TypeError, ValueError) as e:
        return f"unreadable config ({e})"
    runs = m.get("runs", [])
    if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
        return "'runs' must be a list of objects"
    for k in ("environment", "inputs"):
        if not isinstance(m.get(k) or {}, dict):
            return f"{k!r} must be an object"
    return None


def read_record(path: pathlib.Path) -> tuple[dict | None, str | None]:
    """``(record, None)`` or ``(None, reason)``."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        return None, f"cannot read ({e})"
    except UnicodeDecodeError as e:
        return None, f"not UTF-8 text (byte {e.start}): not a cell file"
    if not text.strip():
        return None, "empty file"
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as e:
        return None, f"truncated or invalid JSON ({e.msg} at char {e.pos} of {len(text)})"
    except RecursionError:
        return None, "JSON nested too deeply: not a cell file"
    reason = check_record(rec)
    if reason is None and rec["cell"].get("id") != path.stem:
        reason = f"holds cell {rec['cell'].get('id')!r}, not {path.stem!r}"
    return (None, reason) if reason else (rec, None)


def _safe(fn, *args: Any) -> Any:
    try:
        return fn(*args)
    except UnsafePathError as e:
        raise SweepError(str(e)) from e


class SweepDir:
    """A sweep output folder (see the module docstring for the layout)."""

    def __init__(self, root: str | os.PathLike):
        self.root = pathlib.Path(root)
        self.cells_dir = self.root / CELLS

    @property
    def manifest_path(self) -> pathlib.Path:
        return self.root / MANIFEST

    def exists(self) -> bool:
        return self.manifest_path.exists()

    def read_manifest(self, *, missing_ok: bool = False) -> dict[str, Any] | None:
        """The manifest, or ``None`` when there is none (and no cell files, unless
        ``missing_ok``).

        Raises:
            SweepError: cell files but no manifest (without ``missing_ok``).
            CorruptResultsError: the manifest is unreadable or malformed.
        """
        path = self.manifest_path
        if not path.exists() and not path.is_symlink():
            if not missing_ok and self.cell_files():
                raise SweepError(
                    f"{self.root} holds cell results but no {MANIFEST} (deleted?). Re-run "
                    "`jaxadv sweep` with the config that made them and the same --out: it writes "
                    "a new manifest and keeps the finished cells"
                )
            return None
        try:
            _safe(check_inside, self.root, path)
            m = json.loads(path.read_bytes().decode("utf-8"))
        except (OSError, ValueError, RecursionError, SweepError) as e:
            raise CorruptResultsError(
                [(str(path), f"unreadable manifest ({e})")], _MANIFEST_HINT
            ) from e
        reason = check_manifest(m)
        if reason is not None:
            raise CorruptResultsError([(str(path), reason)], _MANIFEST_HINT)
        return m

    def grid(self, manifest: dict[str, Any]) -> list[Any]:
        """The cells of the config recorded in ``manifest`` (with its content fingerprints).

        Raises:
            CorruptResultsError: the recorded config is not a valid normalised config.
        """
        cfg = SweepConfig(
            data=manifest["config"],
            base_dir="",
            source=str(self.manifest_path),
            inputs=manifest.get("inputs") or {},
        )
        try:
            return expand(cfg)
        except (ConfigError, KeyError, TypeError, ValueError) as e:
            raise CorruptResultsError(
                [(str(self.manifest_path), f"invalid config ({e})")], _MANIFEST_HINT
            ) from e

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        from jaxadv.report import jsonable

        write_atomic(self.manifest_path, json.dumps(jsonable(manifest), indent=2) + "\n")

    def cell_path(self, cell_id: str) -> pathlib.Path:
        """``cells/<cell_id>.json``, checked to be a plain name inside the folder.

        Raises:
            SweepError: an unsafe id, or ``cells`` or the file is a link out of the folder.
        """
        if self.cells_dir.exists() or self.cells_dir.is_symlink():
            _safe(check_inside, self.root, self.cells_dir)
        return _safe(path_inside, self.cells_dir, f"{cell_id}.json")

    def write_cell(self, record: dict[str, Any]) -> pathlib.Path:
        from jaxadv.report import jsonable  # NaN -> null: JSON has no NaN

        rec = seal(jsonable(record))
        path = self.cell_path(rec["cell"]["id"])
        write_atomic(path, canonical_json(rec) + "\n")
        return path

    def cell_files(self) -> list[pathlib.Path]:
        if not self.cells_dir.is_dir():
            return []
        _safe(check_inside, self.root, self.cells_dir)
        return sorted(p for p in self.cells_dir.glob("*.json") if not p.name.startswith("."))

    def scan(self) -> tuple[dict[str, dict], list[tuple[str, str]]]:
        """Every readable cell record by id, and the problems ``[(path, reason)]`` found."""
        records, problems = {}, []
        for p in self.cell_files():
            if p.is_symlink():  # never read a file elsewhere through a link
                problems.append((str(p), f"is a symbolic link (to {os.readlink(p)}), not a file"))
                continue
            rec, why = read_record(p)
            if rec is None:
                problems.append((str(p), why or "unknown problem"))
            else:
                records[rec["cell"]["id"]] = rec
        return records, problems

    def load(self, *, strict: bool = True) -> dict[str, dict]:
        """The cell records; with ``strict`` any corrupt file raises :class:`CorruptResultsError`."""
        records, problems = self.scan()
        if problems and strict:
            raise CorruptResultsError(problems)
        return records

    def set_aside(self, path: str | os.PathLike, suffix: str) -> pathlib.Path:
        """Rename ``path`` to ``path.<suffix>`` (``.<suffix>.1``, ... if taken); never deletes."""
        src = pathlib.Path(path)
        dst = src.with_name(f"{src.name}.{suffix}")
        n = 0
        while dst.exists():
            n += 1
            dst = src.with_name(f"{src.name}.{suffix}.{n}")
        os.replace(src, dst)
        fsync_dir(src.parent)
        return dst

    def clean_tmp(self) -> int:
        """Remove temporary files left by a killed writer (they never held a finished cell)."""
        n = 0
        for d in (self.root, self.cells_dir):
            if d.is_dir():
                for p in d.glob(".*.tmp"):
                    p.unlink(missing_ok=True)
                    n += 1
        return n


def records_by_id(records: Iterable[dict]) -> dict[str, dict]:
    return {r["cell"]["id"]: r for r in records}
