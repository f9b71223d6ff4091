"""Combine the folders of independently run shards (``--num-shards N --shard-index I``) into one."""

from __future__ import annotations

import dataclasses
import datetime
import os
import pathlib
from collections.abc import Sequence

from jaxadv.sweep.config import SweepConfig, canonical_json, expand
from jaxadv.sweep.storage import SweepDir, SweepError, write_atomic


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

    Every source must hold a manifest with the same config hash and only intact cell files. A cell
    found in two sources is refused: as a *conflict* when the two results differ, as a *duplicate*
    (overlapping shards) when they are identical, which ``allow_identical=True`` accepts (one copy
    is kept). ``out`` must be new or empty, or be one of the sources (merge into it).

    Raises:
        SweepError: no sources, a folder without a manifest, different configs, duplicates or
            conflicts, or a non-empty ``out`` that is not a source.
        CorruptResultsError: a source holds corrupt or truncated cell files.
    """
    if not sources:
        raise SweepError("merge needs at least one sweep folder")
    dirs = [SweepDir(s) for s in sources]
    roots = [d.root.resolve() for d in dirs]
    if len(set(roots)) != len(roots):
        raise SweepError("the same folder is listed twice")
    target = SweepDir(out)
    if target.root.resolve() not in roots and target.root.exists() and any(target.root.iterdir()):
        raise SweepError(
            f"--out {target.root} is not empty; merge into a new folder (or list it as a source)"
        )
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
    base = manifests[0]
    cells = expand(SweepConfig(data=base["config"], base_dir="", source="merge"))
    expected = {c.id: c.hash for c in cells}

    chosen: dict[str, tuple[dict, pathlib.Path]] = {}
    problems = []
    for d in dirs:
        for cid, rec in sorted(d.load(strict=True).items()):
            if expected.get(cid) != rec["cell"].get("hash"):
                problems.append(
                    f"{d.root}: cell {cid} does not belong to this config (stale); remove it"
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
        for r in m["runs"]
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
    for cid, (rec, where) in sorted(chosen.items()):
        if where.resolve() != target.root.resolve():
            write_atomic(target.cell_path(cid), canonical_json(rec) + "\n")
            written.append(cid)
    target.write_manifest(merged)
    missing = [c.id for c in cells if c.id not in chosen]
    return MergeOutcome(out=str(target.root), written=written, total=len(cells), missing=missing)
