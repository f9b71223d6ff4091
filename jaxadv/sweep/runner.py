"""Run the cells of a sweep: every local (or global) device, resumable, one cell at a time.

Each cell is one call of the evaluation engine (:func:`jaxadv.evaluate`: padded fixed batches,
``shard_map`` over a 1-D device mesh, each process reading only the rows its own devices hold, the
eps grid vmapped or cascaded). Example ``i`` of a data set always uses the key
``fold_in(key(seed), i)``, so per-example results do not depend on the batch size, the device count
or the number of processes. This module orchestrates: which cells to run, resume, locks, signals,
progress and the run records in the manifest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from jaxadv import cli_segmentation
from jaxadv._progress import Progress, StopOnSigint
from jaxadv.engine import EvaluationStopped, evaluate
from jaxadv.engine.layout import block_size, data_mesh, num_steps
from jaxadv.engine.summary import PER_EXAMPLE
from jaxadv.surrogate import Transfer
from jaxadv.sweep import detection, recheck, transfer
from jaxadv.sweep import segmentation as seg
from jaxadv.sweep import universal as univ
from jaxadv.sweep.config import Cell, SweepConfig, diff_keys, expand, shard_cells
from jaxadv.sweep.storage import (
    CELL_FORMAT,
    CorruptResultsError,
    SweepDir,
    SweepError,
    encode_array,
    encode_images,
    folder_lock,
)
from jaxadv.vocab import (
    GRID_FROM_DATA,
    SpecError,
    dataset_grid,
    is_black_box,
    load_dataset,
    load_model,
    make_attack,
    with_durable,
)
from jaxadv.vocab_rules import check_model_fits, make_rule

log = logging.getLogger("jaxadv.sweep")


@dataclasses.dataclass
class SweepOutcome:
    """What a call to :func:`run_sweep` did.

    Attributes:
        out: the sweep folder.
        cells: ids of this shard's cells.
        computed: ids computed by this call.
        skipped: ids already finished before this call (resumed).
        quarantined: corrupt result files moved aside (their cells were recomputed).
        interrupted: stopped early by SIGINT (finished cells are saved).
        seconds: wall time.
    """

    out: str
    cells: list[str]
    computed: list[str]
    skipped: list[str]
    quarantined: list[str]
    interrupted: bool
    seconds: float

    @property
    def complete(self) -> bool:
        return not self.interrupted and len(self.computed) + len(self.skipped) == len(self.cells)


# ----------------------------------------------------------------------------- host helpers
def example_indices(ds: Any, entry: dict) -> np.ndarray:
    """The data-set indices a cell evaluates (sorted): the first ``num_examples`` or a seeded random
    subset of that size."""
    n = len(ds)
    k = n if entry.get("num_examples") is None else min(int(entry["num_examples"]), n)
    if entry.get("subset", "first") == "random" and k < n:
        rng = np.random.default_rng(int(entry.get("subset_seed", 0)))
        return np.sort(rng.permutation(n)[:k]).astype(np.int64)
    return np.arange(k, dtype=np.int64)


def durable_settings(entry: dict, ds: Any) -> dict[str, Any]:
    """The success margin and storage grid of an attack entry (``grid: dataset`` resolved to the
    bit depth of ``ds``'s stored images); empty for entries without them."""
    out = {k: entry[k] for k in ("success_margin", "grid") if entry.get(k) is not None}
    if out.get("grid") == GRID_FROM_DATA:
        out["grid"] = dataset_grid(ds)
    return out


def _check_data_grids(cells: Sequence[Cell], res: _Resources) -> None:
    """``grid: dataset`` on a data set stored as floats fails before any cell runs."""
    for c in cells:
        if c.attack.get("grid") == GRID_FROM_DATA:
            try:
                dataset_grid(res.dataset(c.dataset, seg.is_dense(c.attack)))
            except SpecError as e:
                raise SweepError(f"cell {c.id}: attack {c.attack['label']!r}: {e}") from e


def _check_detectors(cells: Sequence[Cell], res: _Resources) -> None:
    """Every detector loads onto its model's features and scores one image, before any cell runs."""
    for c in cells:
        if c.detectors:
            res.detectors(c)


def _check_surrogates(cells: Sequence[Cell], res: _Resources) -> None:
    """Every transfer cell's surrogate and target take the data set's images and agree on the class
    count, before any cell runs (shapes only)."""
    for c in cells:
        if c.surrogate:
            shape = res.dataset(c.dataset).image_shape
            bad = transfer.check_pair(c, res.surrogate(c), res.model(c.model), shape)
            if bad:
                raise SweepError(bad)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- the runner
class _Resources:
    """Keeps the current model and data set loaded (cells are ordered model-major)."""

    def __init__(self, cfg: SweepConfig, mesh: jax.sharding.Mesh):
        self.cfg = cfg
        self.mesh = mesh
        self._model: tuple[str, Any] | None = None
        self._data: tuple[str, Any] | None = None
        self._detectors: dict[str, dict[str, Any]] = {}  # by model label
        self._surrogates: dict[str, Any] = {}  # surrogate models by file

    def surrogate(self, cell: Cell) -> Any:
        """The surrogate of a transfer cell (an ensemble for several models)."""
        return transfer.load(
            cell.surrogate, lambda m: load_model(self.cfg.resolve(m["model"])), self._surrogates
        )

    def detectors(self, cell: Cell) -> dict[str, Any] | None:
        """The fitted detectors of the cell's model (``None`` without any), checked to fit it."""
        if not cell.detectors:
            return None
        key = cell.model["label"]
        if key not in self._detectors:
            ds = self.dataset(cell.dataset)
            self._detectors[key] = detection.load_for_model(
                cell.detectors,
                self.model(cell.model),
                ds.image_shape,
                self.cfg.resolve,
                error=SweepError,
            )
        return self._detectors[key]

    def model(self, entry: dict, dense: bool = False) -> Any:
        spec = self.cfg.resolve(entry["model"])
        if self._model is None or self._model[0] != spec:
            self._model = (spec, cli_segmentation.load_model(spec) if dense else load_model(spec))
        return self._model[1]

    def dataset(self, entry: dict, dense: bool = False) -> Any:
        """The data set of ``entry``; ``dense``: read as segmentation data (images and masks)."""
        key = repr((dense, sorted(entry.items())))
        if self._data is None or self._data[0] != key:
            spec = self.cfg.resolve(entry["data"])
            if dense:
                try:
                    masks = entry.get("masks")
                    ds = seg.load_data(spec, entry, masks and self.cfg.resolve(masks))
                except (OSError, ValueError) as e:
                    raise SweepError(f"data set {entry['label']!r}: {e}") from e
            else:
                ds = load_dataset(
                    spec, entry["split"], entry.get("image_size"), entry.get("channels")
                )
            self._data = (key, ds)
        return self._data[1]


def _run_cell(
    cell: Cell,
    res: _Resources,
    *,
    batch_size: int,
    num_images: int,
    progress: Progress,
    stop: Callable[[], bool],
    fits_dir: Any = None,
) -> dict[str, Any] | None:
    """Compute one cell; ``None`` when stopped before it finished."""
    from jaxadv.vocab import attack_config

    t0 = time.perf_counter()
    a = cell.attack
    dense = seg.is_dense(a)  # a segmentation cell: jaxadv/sweep/segmentation.py
    model = res.model(cell.model, dense)
    ds = res.dataset(cell.dataset, dense)
    idx = example_indices(ds, cell.dataset)
    rule, target, extra = None, None, {}
    universal = univ.is_universal(a)  # fitted on a training split: jaxadv/sweep/universal.py
    if dense:
        attack, target = seg.build(a, ds)
    elif universal:
        try:
            attack, idx = univ.build(a, max(a["eps"]), ds.image_shape[:2]), univ.indices(a, ds, idx)
        except ValueError as e:  # e.g. a patch area too large for these images
            raise SweepError(f"cell {cell.id}: {e}") from e
    else:
        attack = make_attack(
            a["attack"],
            norm=a["norm"],
            eps_max=max(a["eps"]),
            num_steps=a["num_steps"],
            restarts=a["restarts"],
            options=a["options"],
        )
    try:  # a multi-label data set needs a rule (attack keys multilabel, finding, target_set)
        if not dense:
            attack = with_durable(attack, durable_settings(a, ds))
            rule = make_rule(a.get("multilabel"), a.get("finding"), a.get("target_set"), ds)
            check_model_fits(model, ds, rule, f"model {cell.model['label']!r}")
    except SpecError as e:
        raise SweepError(
            f"cell {cell.id}: {e} (data set {cell.dataset['label']!r}, attack {a['label']!r})"
        ) from e
    black_box = a["black_box"] if a["black_box"] is not None else is_black_box(attack)
    crafted = attack  # recorded in the cell; a transfer cell runs it on the surrogate
    if cell.surrogate:
        attack = Transfer(attack=attack, surrogate=res.surrogate(cell))
    ndev = res.mesh.devices.size
    evals = len(a["eps"]) if universal else 1  # a universal cell: one evaluation per budget
    progress.start_cell(cell.id, num_steps(idx.shape[0], batch_size, ndev) * evals)
    try:
        if universal:
            ev, extra = univ.evaluate_cell(
                cell,
                model,
                ds,
                idx,
                resolve=res.cfg.resolve,
                fits_dir=fits_dir,
                mesh=res.mesh,
                batch_size=batch_size,
                num_adv=num_images,
                progress=lambda done, total: progress.batch(),
                stop=stop,
            )
        else:
            ev = evaluate(
                attack,
                model,
                ds,
                a["eps"],
                key=jax.random.key(cell.seed),
                mesh=res.mesh,
                cascade=bool(a.get("cascade", False)),
                batch_size=batch_size,
                indices=idx,
                num_adv=num_images,
                progress=lambda done, total: progress.batch(),
                stop=stop,
                rule=rule,
                target=target,
                detectors=res.detectors(cell),
                recheck=cell.recheck,
            )
    except EvaluationStopped:
        return None
    except ValueError as e:  # a segmentation model meeting data it cannot take; a patch too large
        if not (dense or universal):
            raise
        raise SweepError(f"cell {cell.id}: {e}") from e
    results: dict[str, Any] = {
        "indices": encode_array(idx),
        "labels": encode_array(ev.labels),
        "clean_correct": encode_array(ev.clean_correct),
        "clean_score": encode_array(ev.clean_score.astype(np.float32)),
    }
    for k, dt in PER_EXAMPLE.items():
        results[k] = encode_array(ev.per_eps[k].astype(dt))
    if ev.clean_logits is not None:  # per-finding / per-class logits, for the macro AUCs
        results["clean_logits"] = encode_array(ev.clean_logits.astype(np.float32))
        results["logits"] = encode_array(ev.per_eps["logits"].astype(np.float32))
    if dense:  # per-image Dice, IoU, ...; labels: foreground pixels of the true masks
        results.update(seg.results(ev))
    results.update(detection.results(ev))  # detector scores: clean [N], adversarial [E, N]
    results.update(recheck.results(ev))  # reported successes a re-check rejects [E, N]
    samples = None
    if ev.adv.shape[0]:
        k = ev.adv.shape[0]
        samples = {
            "indices": encode_array(idx[:k]),
            "eps": float(ev.eps[ev.adv_index]),
            "clean": encode_images(ev.clean),
            "adv": encode_images(ev.adv),
        }
        if dense:  # true and predicted masks: the report draws overlays without the model
            samples.update(seg.sample_masks(ev, model, ds, idx[:k]))
    return {
        "format": CELL_FORMAT,
        "cell": cell.spec(),
        "black_box": bool(black_box),
        "num_classes": int(ev.num_classes),
        # the multi-label rule, or a segmentation attack's per-image rule
        **({"rule": ev.rule.describe()} if ev.rule is not None else {}),
        "attack_config": attack_config(crafted, a["eps"]),
        **extra,  # a universal cell's fits and rule
        "results": results,
        "summary": ev.summary(),
        "samples": samples,
        "run": {
            "seconds": round(time.perf_counter() - t0, 3),
            "finished": _now(),
            "host": platform.node(),
            "process_count": jax.process_count(),
            "devices": int(ndev),
            "device_kind": str(res.mesh.devices.flat[0].device_kind),
            "batch_size": int(block_size(idx.shape[0], batch_size)),
            "step": int(block_size(idx.shape[0], batch_size) * ndev),
        },
    }


def _prepare(
    store: SweepDir, cfg: SweepConfig, all_cells: list[Cell], force: bool, say
) -> tuple[dict[str, Any], list[str]]:
    """Check (or create) the manifest; move aside stale and corrupt cell files; mark earlier runs
    that died without finishing. Runs under the folder lock. Returns the manifest and the list of
    corrupt files moved aside."""
    from jaxadv import report

    store.clean_tmp()
    try:
        m = store.read_manifest(missing_ok=True)  # cells without a manifest are adopted below
    except CorruptResultsError as e:
        dst = store.set_aside(store.manifest_path, "corrupt")
        say(
            f"warning: {e.problems[0][1]} in {store.manifest_path}; moved to {dst.name} and "
            "writing a new manifest (the finished cells are checked and kept; the record of "
            "earlier runs is in the moved file)"
        )
        m = None
    if m is None and store.cell_files():
        say(f"{store.root} has cell files but no manifest: writing a new one, keeping intact cells")
    if m is not None and m.get("config_hash") != cfg.hash:
        changed = diff_keys(m.get("config", {}), cfg.data)
        if not force:
            raise SweepError(
                f"{store.root} holds results of a different sweep config (hash "
                f"{m.get('config_hash')}, this config {cfg.hash}; changed: "
                f"{', '.join(changed) or 'unknown'}). Use a new --out, or pass --force to keep "
                "the finished cells that are unchanged and recompute the rest"
            )
        say(f"--force: config changed ({', '.join(changed)}); unchanged finished cells are kept")
    # We hold the folder lock, so a run still marked "running" is not running: it was killed
    # (SIGKILL, out of memory, power cut) before it could record how it ended.
    for r in (m or {}).get("runs", []):
        if r.get("status") == "running":
            r["status"] = "killed"
            say(
                f"note: the run started {r.get('started', '?')} on {r.get('host', '?')} (pid "
                f"{r.get('pid', '?')}) died without finishing (killed, crashed or power lost); "
                "its finished cells are kept, its run record now says 'killed'"
            )
    expected = {c.id: c.hash for c in all_cells}
    records, problems = store.scan()
    quarantined = []
    for path, why in problems:
        dst = store.set_aside(path, "corrupt")
        quarantined.append(str(dst))
        say(f"warning: corrupt result file {path} ({why}); moved to {dst.name}, recomputing")
        log.warning("corrupt result file %s (%s) moved to %s", path, why, dst)
    for cid, rec in records.items():
        if expected.get(cid) != rec["cell"].get("hash"):
            dst = store.set_aside(store.cell_path(cid), "stale")
            why = (
                "is not part of this config"
                if cid not in expected
                else "was computed from other settings or other model/data file content"
            )
            say(f"cell {cid} {why}: moved to {dst.name}, recomputing if part of this config")
    if m is None:
        m = {
            "format": cfg.data["format"],
            "name": cfg.name,
            "created": _now(),
            "environment": report.manifest(seed=cfg.data["seeds"]),
            "runs": [],
        }
    m.update(
        config=cfg.data,
        config_hash=cfg.hash,
        config_source=cfg.source,
        inputs=cfg.input_fingerprints(),
        cells=[c.id for c in all_cells],
        num_cells=len(all_cells),
    )
    return m, quarantined


def run_sweep(
    cfg: SweepConfig,
    out: str | os.PathLike,
    *,
    num_shards: int = 1,
    shard_index: int = 0,
    force: bool = False,
    batch_size: int | None = None,
    devices: Sequence[Any] | None = None,
    progress: bool = False,
    say: Callable[[str], None] | None = None,
    handle_sigint: bool = False,
) -> SweepOutcome:
    """Run (or resume) the cells of ``cfg`` that belong to this shard and write them to ``out``.

    Args:
        cfg: a validated config (:func:`jaxadv.sweep.load_config`).
        out: the sweep folder (created). Finished cells found there are skipped.
        num_shards: split the grid's cells round robin into this many independent shards...
        shard_index: ...and run this one (each shard writes its own folder; ``jaxadv merge``).
        force: resume even though ``out`` holds results of a different config (unchanged finished
            cells are kept, the others moved aside as ``*.stale``).
        batch_size: examples per device per step; overrides the config's (does not change
            which examples are attacked with which keys; see docs/sweeps.md on last bits).
        devices: devices of the 1-D data mesh (default: all local devices; with several processes
            after ``jax.distributed.initialize``, all global devices).
        progress: show a rich progress display (overall and per cell, with ETA) on stderr.
        say: called with one-line progress messages when the rich display is off.
        handle_sigint: on SIGINT stop after the current batch, keeping finished cells (the
            command line asks for this; library calls leave the process's handler alone).

    Returns:
        A :class:`SweepOutcome`.

    Raises:
        SweepError: ``out`` holds another config's results (without ``force``), or is locked.
    """
    t0 = time.perf_counter()
    say_ = say or (lambda msg: log.info(msg))
    multi = jax.process_count() > 1
    writer = jax.process_index() == 0
    if devices is None:
        devices = jax.devices() if multi else jax.local_devices()
    mesh = data_mesh(devices)
    all_cells = expand(cfg)
    cells = shard_cells(all_cells, num_shards, shard_index)
    store = SweepDir(out)
    bs = cfg.batch_size if batch_size is None else batch_size
    if isinstance(bs, bool) or not isinstance(bs, (int, np.integer)) or bs < 1:
        raise SweepError(f"--batch-size must be a positive integer, got {bs!r}")

    lock = folder_lock(store.root) if writer else contextlib.nullcontext()
    with lock:
        status = np.zeros((len(cells) + 1,), np.int32)
        manifest, quarantined, done = None, [], set()
        err: Exception | None = None
        if writer:
            try:
                manifest, quarantined = _prepare(store, cfg, all_cells, force, say_)
                done = set(store.load(strict=False))
                status[1:] = [c.id in done for c in cells]
            except Exception as e:  # noqa: BLE001 - re-raised below, after telling the others
                err = e
                status[0] = 1
        if multi:
            from jax.experimental import multihost_utils

            status = np.asarray(multihost_utils.broadcast_one_to_all(status))
        if err is not None:
            raise err
        if status[0]:
            raise SweepError("process 0 refused to run the sweep (see its error message)")
        skipped = [c.id for c, d in zip(cells, status[1:], strict=True) if d]
        pending = [c for c, d in zip(cells, status[1:], strict=True) if not d]

        run_info = {
            "started": _now(),
            "host": platform.node(),
            "pid": os.getpid(),
            "num_shards": num_shards,
            "shard_index": shard_index,
            "process_count": jax.process_count(),
            "devices": len(devices),
            "device_kind": str(devices[0].device_kind),
            "batch_size": bs,
            "forced": bool(force),
            "resumed_cells": len(skipped),
            "quarantined": quarantined,
            "status": "running",
        }
        if writer:
            manifest["runs"].append(run_info)
            store.write_manifest(manifest)
            store.cells_dir.mkdir(parents=True, exist_ok=True)

        if skipped:
            say_(f"resuming: {len(skipped)} of {len(cells)} cells already finished in {out}")
        resources = _Resources(cfg, mesh)
        ui = Progress(progress and writer, say_ if writer else None)
        computed: list[str] = []
        interrupted = False
        sigint = StopOnSigint(say_) if handle_sigint else contextlib.nullcontext()
        with sigint as flag:

            def stop() -> bool:
                local = bool(getattr(flag, "requested", False))
                if not multi:
                    return local
                from jax.experimental import multihost_utils

                return bool(np.any(multihost_utils.process_allgather(np.int32(local))))

            try:
                _check_data_grids(pending, resources)
                _check_detectors(pending, resources)
                _check_surrogates(pending, resources)
                ui.start(len(pending), _total_batches(pending, resources, bs))
                for cell in pending:
                    rec = _run_cell(
                        cell,
                        resources,
                        batch_size=bs,
                        num_images=cfg.num_images,
                        progress=ui,
                        stop=stop,
                        fits_dir=store.root / "fits",
                    )
                    if rec is None:
                        interrupted = True
                        break
                    if writer:
                        store.write_cell(rec)
                    computed.append(cell.id)
                    ui.end_cell(cell.id, rec["summary"], rec["run"]["seconds"])
                    if stop():
                        interrupted = len(computed) < len(pending)
                        break
                status_word = "interrupted" if interrupted else "finished"
            except KeyboardInterrupt:  # a second Ctrl-C: finished cells are on disk already
                status_word = "aborted"
                raise
            except BaseException:
                status_word = "failed"
                raise
            finally:
                ui.close()
                if writer:
                    run_info.update(
                        finished=_now(), computed_cells=len(computed), status=status_word
                    )
                    store.write_manifest(manifest)
    return SweepOutcome(
        out=str(out),
        cells=[c.id for c in cells],
        computed=computed,
        skipped=skipped,
        quarantined=quarantined,
        interrupted=interrupted,
        seconds=time.perf_counter() - t0,
    )


def _total_batches(cells: Sequence[Cell], res: _Resources, bs: int) -> int:
    """Steps over all pending cells (for the overall ETA); data set sizes are read cheaply."""
    total = 0
    sizes: dict[str, int] = {}
    for c in cells:
        key = repr(sorted(c.dataset.items()))
        if key not in sizes:
            ds = res.dataset(c.dataset, seg.is_dense(c.attack))
            sizes[key] = int(example_indices(ds, c.dataset).shape[0])
        evals = len(c.attack["eps"]) if univ.is_universal(c.attack) else 1  # one per budget
        total += num_steps(max(sizes[key], 1), bs, res.mesh.devices.size) * evals
    return total
