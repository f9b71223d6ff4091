"""The on-disk layout of a sweep folder, written so that no interruption loses or duplicates work.

::

    DIR/sweep.json            run manifest: format, normalised config and its hash, versions, runs
    DIR/cells/<cell id>.json  one file per finished cell, written whole (temporary file, fsync,
                              rename, fsync of the folder) and carrying its own SHA-256 checksum

A cell is finished exactly when its file exists, so a process killed at any moment leaves every
finished cell once and no partial one (at worst a stray ``.*.tmp`` file, ignored and cleaned up). A
cell file that fails to parse or to match its checksum is *corrupt*: readers raise
:class:`CorruptResultsError` naming it; the runner moves it aside to ``<name>.corrupt`` (never
deleting it) and computes the cell again.
"""

from __future__ import annotations

import base64
import io
import json
import os
import pathlib
from collections.abc import Iterable
from typing import Any

import numpy as np

from jaxadv._io import fsync_dir, write_atomic  # noqa: F401  (re-exported)
from jaxadv.sweep.config import canonical_json, sha256

MANIFEST = "sweep.json"
CELLS = "cells"
CELL_FORMAT = "jaxadv-sweep-cell/1"
_MANIFEST_HINT = (
    "The cell files are intact; restore the manifest from a copy, or move the cells/ folder into "
    "a fresh --out and re-run the sweep there (finished cells are kept)"
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


def encode_images(a: np.ndarray) -> str:
    """uint8 images as base64 of an ``.npy`` buffer (compact, exact for display)."""
    buf = io.BytesIO()
    u8 = np.clip(np.round(np.asarray(a, np.float32) * 255), 0, 255).astype(np.uint8)
    np.save(buf, u8, allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode()


def decode_images(s: str) -> np.ndarray:
    arr = np.load(io.BytesIO(base64.b64decode(s)), allow_pickle=False)
    return arr.astype(np.float32) / 255.0


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
    except (TypeError, ValueError) as e:
        return f"unreadable content ({e})"
    return None


def read_record(path: pathlib.Path) -> tuple[dict | None, str | None]:
    """``(record, None)`` or ``(None, reason)``."""
    try:
        text = path.read_text()
    except OSError as e:
        return None, f"cannot read ({e})"
    if not text.strip():
        return None, "empty file"
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as e:
        return None, f"truncated or invalid JSON ({e.msg} at char {e.pos} of {len(text)})"
    reason = check_record(rec)
    if reason is None and rec["cell"].get("id") != path.stem:
        reason = f"holds cell {rec['cell'].get('id')!r}, not {path.stem!r}"
    return (None, reason) if reason else (rec, None)


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

    def read_manifest(self) -> dict[str, Any] | None:
        if not self.manifest_path.exists():
            if self.cells_dir.is_dir() and any(self.cells_dir.glob("*.json")):
                raise SweepError(
                    f"{self.root} holds cell results but no {MANIFEST}; it was not written by "
                    "`jaxadv sweep` or the manifest was deleted"
                )
            return None
        try:
            m = json.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CorruptResultsError(
                [(str(self.manifest_path), f"unreadable manifest ({e})")], _MANIFEST_HINT
            ) from e
        if not isinstance(m, dict) or "config_hash" not in m or "config" not in m:
            raise CorruptResultsError(
                [(str(self.manifest_path), "not a sweep manifest")], _MANIFEST_HINT
            )
        return m

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        from jaxadv.report import _jsonable

        write_atomic(self.manifest_path, json.dumps(_jsonable(manifest), indent=2) + "\n")

    def cell_path(self, cell_id: str) -> pathlib.Path:
        return self.cells_dir / f"{cell_id}.json"

    def write_cell(self, record: dict[str, Any]) -> pathlib.Path:
        from jaxadv.report import _jsonable  # NaN -> null: JSON has no NaN

        rec = seal(_jsonable(record))
        path = self.cell_path(rec["cell"]["id"])
        write_atomic(path, canonical_json(rec) + "\n")
        return path

    def cell_files(self) -> list[pathlib.Path]:
        if not self.cells_dir.is_dir():
            return []
        return sorted(p for p in self.cells_dir.glob("*.json") if not p.name.startswith("."))

    def scan(self) -> tuple[dict[str, dict], list[tuple[str, str]]]:
        """Every readable cell record by id, and the problems ``[(path, reason)]`` found."""
        records, problems = {}, []
        for p in self.cell_files():
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
