"""Combine the folders of independently run shards (``--num-shards N --shard-index I``) into one.

Source folders are untrusted input: every manifest and cell file is checked (format, checksums,
types, normalised ids) before anything is written, and every file is written inside ``out``.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import pathlib
from collections.abc import Sequence

from jaxadv.sweep.config import canonical_json
from jaxadv.sweep.storage import SweepDir, SweepError, folder_lock, write_atomic


@dataclasses.dataclass
class MergeOutcome:
    """Attributes: ``out``; ``written`` cell ids copied; ``total`` cells in the grid; ``missing``
    cell ids found in no source (the merged sweep is then incomplete)."""

    out: str
    written: list[str]
    total: int
    missing: list[str]

    @property
    def complete(self) -> bool:
        return not self.missing


def merge(
    sources: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    allow_identical: bool = False,
) -> MergeOutcome:
    """Merge sweep folders of the same config into ``out``.

    Every source must hold a manifest with the same config hash and the same model and data file
    content (fingerprints), and only intact cell files. A cell found in two sources is refused: as
    a *conflict* when the two results differ, as a *duplicate* (overlapping shards) when they are
    identical, which ``allow_identical=True`` accepts (one copy is kept). ``out`` must be new or
    empty, or be one of the sources (merge into it). ``out`` is locked like a running sweep's
    folder: a merge into a folder that `jaxadv sweep` is writing is refused.

    Raises:
        SweepError: no sources, a folder without a manifest, different configs or input files,
            duplicates or conflicts, a non-empty ``out`` that is not a source, ``out`` locked by
            another process, or ``out`` not writable.
        CorruptResultsError: a source holds a damaged manifest or damaged cell files.
    """
    if not sources:
        raise SweepError("merge needs at least one sweep folder")
    dirs = [SweepDir(s) for s in sources]
    roots = [d.root.resolve() for d in dirs]
    if len(set(roots)) != len(roots):
        raise SweepError("the same folder is listed twice")
    target = SweepDir(out)
    into_source = target.root.resolve() in roots
    if (
        not into_source
        and target.root.is_dir()
        and any(p.name != ".lock" for p in target.root.iterdir())
    ):
        raise SweepError(
            f"--out {target.root} is not empty; merge into a new folder (or list it as a source)"
        )
    if target.root.exists() and not target.root.is_dir():
        raise SweepError(f"--out {target.root} is a file; give a folder")
    with folder_lock(target.root):
        return _merge(dirs, target, allow_identical)


def _merge(dirs: list[SweepDir], target: SweepDir, allow_identical: bool) -> MergeOutcome:
    manifests = []
    for d in dirs:
        m = d.read_manifest()
        if m is None:
            raise SweepError(f"{d.root} is not a sweep folder (no sweep.json)")
        manifests.append(m)
    hashes = {str(d.root): m["config_hash"] for d, m in zip(dirs, manifests, strict=True)}
    if len(set(hashes.values())) != 1:
        detail = ", ".join(f"{k}: {v}" for k, v in hashes.items())
        raise SweepError(
            f"cannot merge sweeps of different configs (config hashes {detail}); run every shard "
            "with the same config file"
        )
    inputs = [m.get("inputs") or {} for m in manifests]
    for d, inp in zip(dirs[1:], inputs[1:], strict=True):
        differ = sorted(k for k in set(inp) | set(inputs[0]) if inp.get(k) != inputs[0].get(k))
        if differ:
            raise SweepError(
                f"{dirs[0].root} and {d.root} were run on different model or data file content "
                f"({', '.join(differ)}); re-run the shards whose files differ with the same files"
            )
    base = manifests[0]
    cells = dirs[0].grid(base)
    expected = {c.id: c.hash for c in cells}

    chosen: dict[str, tuple[dict, pathlib.Path]] = {}
    problems = []
    for d in dirs:
        for cid, rec in sorted(d.load(strict=True).items()):
            if expected.get(cid) != rec["cell"].get("hash"):
                problems.append(
                    f"{d.cell_path(cid)}: cell {cid} does not belong to this config or its input "
                    "files (stale); move that file out of the folder"
                )
                continue
            if cid in chosen:
                other, where = chosen[cid]
                if other["results_sha256"] != rec["results_sha256"]:
                    problems.append(
                        f"conflict: cell {cid} has different results in {where} and {d.root}"
                    )
                elif not allow_identical:
                    problems.append(
                        f"duplicate: cell {cid} is in both {where} and {d.root} (identical "
                        "results: overlapping shards?); pass --allow-duplicates to keep one copy"
                    )
                continue
            chosen[cid] = (rec, d.root)
    if problems:
        raise SweepError(f"{len(problems)} problem(s) merging: " + "; ".join(problems))

    merged = dict(base)
    merged["runs"] = [
        {**r, "source": str(d.root)}
        for d, m in zip(dirs, manifests, strict=True)
        for r in m.get("runs", [])
    ]
    merged["merged_from"] = [
        {
            "path": str(d.root),
            "cells": sum(1 for _, w in chosen.values() if w == d.root),
            "environment": m.get("environment"),
        }
        for d, m in zip(dirs, manifests, strict=True)
    ]
    merged["merged"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    written = []
    try:
        for cid, (rec, where) in sorted(chosen.items()):
            if where.resolve() != target.root.resolve():
                write_atomic(target.cell_path(cid), canonical_json(rec) + "\n")
                written.append(cid)
        target.write_manifest(merged)
    except OSError as e:
        raise SweepError(
            f"cannot write the merged sweep to {target.root} ({e.strerror or e}: "
            f"{e.filename or target.root}); choose a writable --out"
        ) from e
    missing = [c.id for c in cells if c.id not in chosen]
    return MergeOutcome(out=str(target.root), written=written, total=len(cells), missing=missing)
