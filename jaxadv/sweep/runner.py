"""Run the cells of a sweep: every local (or global) device, streamed batches, resumable.

Per batch, the examples' data-set indices are padded to a fixed bucket (a multiple of the device
count, so one compilation serves every batch), laid out over a 1-D device mesh with
``NamedSharding`` (each process reads only the rows its own devices hold), and the attack's whole
eps grid runs as one compiled program (``vmap`` over eps). Example ``i`` of a data set always uses
the key ``fold_in(key(seed), i)``, so per-example results do not depend on the batch size, the
device count or the number of processes. Only small per-example arrays come back to the host.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import logging
import math
import os
import platform
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxadv import losses, metrics
from jaxadv.sharding import data_mesh
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
from jaxadv.sweep.vocab import eps_label, is_black_box, load_dataset, load_model, make_attack

log = logging.getLogger("jaxadv.sweep")

#: Per-example arrays ``[E, N]`` stored for each cell, with their dtypes.
PER_EPS = {
    "success": np.bool_,
    "norm": np.float32,
    "queries": np.int32,
    "margin": np.float32,
    "l2": np.float32,
    "linf": np.float32,
    "ssim": np.float32,
}


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


# ----------------------------------------------------------------------------- device program
def _example_metrics(model, x, y, advs, ssim_win: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Margin, L2 distance and SSIM ``[E, b]`` of one device's block, one example at a time.

    Why one at a time: the arithmetic XLA emits for a batched reduction or convolution depends on
    the batch shape and on how the program around it was fused (1 device vs. several), which moved
    the last bits of SSIM and of the attacks' own loss values between device counts. Per example
    the shapes (``[E, ...]``) and the program are the same everywhere, so the stored numbers are.
    The margin ``max_{j != y} z_j - z_y`` (> 0 exactly when fooled) replaces the attacks' own
    losses, which differ between attacks anyway.
    """

    def one(xya):
        xi, yi, ai = xya  # [H, W, K], [], [E, H, W, K]
        xe = jnp.broadcast_to(xi[None], ai.shape)
        l2 = metrics.l2(xe, ai).astype(jnp.float32)
        if ssim_win:
            ss = metrics.ssim(xe, ai, win_size=ssim_win).astype(jnp.float32)
        else:  # images smaller than the SSIM window
            ss = jnp.full(l2.shape, jnp.nan, jnp.float32)
        logits = model(ai)
        m = losses.margin(logits, jnp.broadcast_to(yi, (ai.shape[0],))).astype(jnp.float32)
        return m, l2, ss

    m, l2, ss = jax.lax.map(one, (x, y, jnp.moveaxis(advs, 1, 0)))
    return m.T, l2.T, ss.T


@functools.partial(jax.jit, static_argnames=("mesh", "ssim_win"))
def _metrics_step(model, x, y, advs, *, mesh, ssim_win: int):
    axis = mesh.axis_names[0]
    per_eps = PartitionSpec(None, axis)
    return jax.shard_map(
        functools.partial(_example_metrics, ssim_win=ssim_win),
        mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec(axis), PartitionSpec(axis), per_eps),
        out_specs=(per_eps, per_eps, per_eps),
        check_vma=False,
    )(model, x, y, advs)


def _attack_block(attack, eps, seed, model, idx, x, y):
    """One device's block: the attack at every eps (``vmap``), keys ``fold_in(key(seed), index)``."""
    key = jax.random.key(seed)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)

    def one(e):
        r = attack.with_eps(e).run(keys, model, x, y, target=None)
        per = {
            "success": r.success,
            "norm": r.norm.astype(jnp.float32),
            "queries": r.queries.astype(jnp.int32),
            "linf": metrics.linf(x, r.adv).astype(jnp.float32),
        }
        return r.adv, per

    advs, per = jax.vmap(one)(eps)
    clean = jnp.argmax(model(x), axis=1) == y
    return advs, per, clean


@functools.partial(jax.jit, static_argnames=("mesh",))
def _attack_step(attack, eps, seed, model, idx, x, y, *, mesh):
    # shard_map, not a sharded jit: each device runs the program traced at its own block shape,
    # which is the configured per-device batch whatever the device or process count, so the
    # compiled arithmetic (and every last bit of the results) is the same on 1 or 256 devices.
    # check_vma=False: attacks are arbitrary per-example code (while loops whose carries start
    # replicated); nothing here communicates between devices.
    axis = mesh.axis_names[0]
    rep, bat, per_eps = PartitionSpec(), PartitionSpec(axis), PartitionSpec(None, axis)
    advs, per, clean = jax.shard_map(
        _attack_block,
        mesh=mesh,
        in_specs=(rep, rep, rep, rep, bat, bat, bat),
        out_specs=(per_eps, per_eps, bat),
        check_vma=False,
    )(attack, eps, seed, model, idx, x, y)
    return advs, {**per, "clean_correct": clean, "y": y}


def _cell_step(attack, eps, seed, adv_index, model, idx, x, y, *, mesh, ssim_win: int):
    """One padded, sharded step at every eps: per-example arrays ``[E, B]`` / ``[B]`` and the
    adversarial images ``adv[B, ...]`` at ``eps[adv_index]``, all still on the devices.

    The metrics run as a second program on purpose: fused into the attack's program, XLA's
    choices moved SSIM by an ulp between batch shapes.
    """
    advs, out = _attack_step(attack, eps, seed, model, idx, x, y, mesh=mesh)
    out["margin"], out["l2"], out["ssim"] = _metrics_step(
        model, x, y, advs, mesh=mesh, ssim_win=ssim_win
    )
    out["adv"] = advs[adv_index]
    return out


def _replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """Every array leaf replicated over ``mesh`` (works across processes: each one supplies its
    own devices' copies from its host value)."""
    rep = NamedSharding(mesh, PartitionSpec())

    def put(a):
        if not isinstance(a, (jax.Array, np.ndarray)):
            return a
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):  # e.g. RNG state kept in a model
            impl = jax.random.key_impl(a)
            data = np.asarray(jax.random.key_data(a))
            arr = jax.make_array_from_callback(data.shape, rep, lambda i: data[i])
            return jax.random.wrap_key_data(arr, impl=impl)
        host = np.asarray(a)
        return jax.make_array_from_callback(host.shape, rep, lambda i: host[i])

    return jax.tree_util.tree_map(put, tree)


def _global_batch(mesh: jax.sharding.Mesh, ds: Any, pidx: np.ndarray):
    """Index, image and label arrays of one padded batch, sharded on the batch axis. Each process
    reads from the data set only the rows that its own devices hold."""
    axis = mesh.axis_names[0]
    b = pidx.shape[0]
    h, w, k = ds.image_shape
    cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def rows(index) -> tuple[np.ndarray, np.ndarray]:
        sl = index[0]
        key = (sl.start, sl.stop)
        if key not in cache:
            x, y = ds.get(pidx[sl])
            cache[key] = (np.asarray(x, np.float32), np.asarray(y, np.int32))
        return cache[key]

    s1 = NamedSharding(mesh, PartitionSpec(axis))
    s4 = NamedSharding(mesh, PartitionSpec(axis, None, None, None))
    idx = jax.make_array_from_callback((b,), s1, lambda i: pidx[i[0]].astype(np.uint32))
    x = jax.make_array_from_callback((b, h, w, k), s4, lambda i: rows(i)[0])
    y = jax.make_array_from_callback((b,), s1, lambda i: rows(i)[1])
    return idx, x, y


def _to_host(tree: dict[str, jax.Array], keys: Sequence[str]) -> dict[str, np.ndarray]:
    sel = {k: tree[k] for k in keys}
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return {
            k: np.asarray(v) for k, v in multihost_utils.process_allgather(sel, tiled=True).items()
        }
    return {k: np.asarray(v) for k, v in jax.device_get(sel).items()}


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


def summarize_cell(
    eps: Sequence[float], res: dict[str, np.ndarray], norm: str = "linf"
) -> list[dict[str, Any]]:
    """Per-eps summary rows from a cell's per-example arrays (sizes over successful attacks: clean
    correct and fooled, as in :func:`jaxadv.metrics.summarize`)."""
    cc = np.asarray(res["clean_correct"], bool)
    rows = []
    for j, e in enumerate(eps):
        succ = np.asarray(res["success"][j], bool)
        att = succ & cc
        row: dict[str, Any] = {
            "eps": float(e),
            "eps_255": round(float(e) * 255, 3),
            "eps_label": eps_label(norm, float(e)),
            "num_examples": int(cc.size),
            "clean_accuracy": float(cc.mean()) if cc.size else math.nan,
            "robust_accuracy": float((~succ).mean()) if succ.size else math.nan,
            "attack_success_rate": float(att.sum() / cc.sum()) if cc.sum() else math.nan,
        }
        for name in ("norm", "l2", "linf", "ssim", "queries"):
            v = np.asarray(res[name][j], np.float64)[att]
            v = v[np.isfinite(v)]
            row[f"{name}_mean"] = float(v.mean()) if v.size else math.nan
            row[f"{name}_median"] = float(np.median(v)) if v.size else math.nan
        rows.append(row)
    return rows


class _Progress:
    """Overall and per-cell progress: a rich display on a terminal, else one line per cell."""

    def __init__(self, enabled: bool, say: Callable[[str], None] | None):
        self.say = say
        self.p = None
        self.t0 = time.perf_counter()
        self.done_batches = 0
        self.total_batches = 0
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.p = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self.p.start()
        self.overall = None
        self.cell = None

    def start(self, num_cells: int, total_batches: int) -> None:
        self.total_batches = total_batches
        self.num_cells = num_cells
        self.cells_done = 0
        if self.p is not None:
            self.overall = self.p.add_task(f"all cells (0/{num_cells})", total=total_batches)

    def start_cell(self, cell: Cell, n_batches: int) -> None:
        if self.p is not None:
            if self.cell is not None:
                self.p.remove_task(self.cell)
            self.cell = self.p.add_task(f"  {cell.id}", total=n_batches)

    def batch(self) -> None:
        self.done_batches += 1
        if self.p is not None:
            self.p.advance(self.cell)
            self.p.advance(self.overall)

    def end_cell(self, cell: Cell, rows: list[dict[str, Any]], seconds: float) -> None:
        self.cells_done += 1
        if self.p is not None:
            self.p.update(
                self.overall, description=f"all cells ({self.cells_done}/{self.num_cells})"
            )
            return
        if self.say is None:
            return
        el = time.perf_counter() - self.t0
        left = self.total_batches - self.done_batches
        eta = el / max(self.done_batches, 1) * left
        accs = " ".join(f"{r['robust_accuracy']:.3f}" for r in rows)
        self.say(
            f"[{self.cells_done}/{self.num_cells}] {cell.id}: robust accuracy {accs} "
            f"({seconds:.1f}s; elapsed {el:.0f}s, ETA {eta:.0f}s)"
        )

    def close(self) -> None:
        if self.p is not None:
            self.p.stop()


class _StopOnSigint:
    """The first Ctrl-C asks the loop to stop after the current batch; a second one aborts."""

    def __init__(self, say: Callable[[str], None] | None):
        self.requested = False
        self.say = say
        self._old = None

    def __enter__(self) -> _StopOnSigint:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.say is not None:
            self.say("interrupt: stopping after the current batch (Ctrl-C again to abort now)")

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- the runner
class _Resources:
    """Keeps the current model and data set loaded (cells are ordered model-major)."""

    def __init__(self, cfg: SweepConfig, mesh: jax.sharding.Mesh):
        self.cfg = cfg
        self.mesh = mesh
        self._model: tuple[str, Any, Any] | None = None
        self._data: tuple[str, Any] | None = None

    def model(self, entry: dict) -> tuple[Any, Any]:
        spec = self.cfg.resolve(entry["model"])
        if self._model is None or self._model[0] != spec:
            m = load_model(spec)
            self._model = (spec, m, _replicate(m, self.mesh))
        return self._model[1], self._model[2]

    def dataset(self, entry: dict) -> Any:
        key = repr(sorted(entry.items()))
        if self._data is None or self._data[0] != key:
            ds = load_dataset(
                self.cfg.resolve(entry["data"]),
                entry["split"],
                entry.get("image_size"),
                entry.get("channels"),
            )
            if ds.multi_label:
                raise SweepError(
                    f"data set {entry['label']!r} is multi-label; sweeps need one integer label "
                    "per example (reduce it with jaxadv.data.select_finding first)"
                )
            self._data = (key, ds)
        return self._data[1]


def _run_cell(
    cell: Cell,
    res: _Resources,
    *,
    batch_size: int,
    num_images: int,
    progress: _Progress,
    stop: Callable[[], bool],
) -> dict[str, Any] | None:
    """Compute one cell; ``None`` when stopped before it finished."""
    from jaxadv import _validate
    from jaxadv.attacks.base import _bound

    t0 = time.perf_counter()
    model_host, model = res.model(cell.model)
    ds = res.dataset(cell.dataset)
    idx = example_indices(ds, cell.dataset)
    a = cell.attack
    attack = make_attack(
        a["attack"],
        max(a["eps"]),  # a valid budget to build with; every eps of the grid is swept below
        norm=a["norm"],
        num_steps=a["num_steps"],
        restarts=a["restarts"],
        options=a["options"],
    )
    black_box = a["black_box"] if a["black_box"] is not None else is_black_box(a["attack"], attack)
    eps = np.asarray(a["eps"], np.float32)
    adv_index = np.int32(int(np.argmax(eps)))
    n = idx.shape[0]
    ndev = res.mesh.devices.size
    # Each device attacks blocks of exactly `per_dev` examples (the last step is padded), so the
    # compiled shapes depend on the config and the data, never on the device count.
    per_dev = min(batch_size, n)
    bucket = per_dev * ndev
    bs = min(bucket, n)
    h, w, _ = ds.image_shape
    ssim_win = 11 if min(h, w) >= 11 else 0
    # host-side input checks on a few examples (range, NaN, labels vs. the model's classes)
    xv, yv = ds.get(idx[: min(n, 16)])
    _validate.check_inputs(
        model_host,
        jnp.asarray(xv),
        jnp.asarray(yv, jnp.int32),
        lo=_bound(attack.threat.lo, min),
        hi=_bound(attack.threat.hi, max),
        target=None,
    )
    attack_r = _replicate(attack, res.mesh)
    seed = np.uint32(cell.seed)
    starts = list(range(0, n, bs))
    progress.start_cell(cell, len(starts))
    parts: dict[str, list[np.ndarray]] = {}
    adv_sample = None
    keys = [*PER_EPS, "clean_correct", "y"]
    for start in starts:
        chunk = idx[start : start + bs]
        b = chunk.shape[0]
        pidx = np.concatenate([chunk, np.repeat(chunk[-1:], bucket - b)])
        gi, gx, gy = _global_batch(res.mesh, ds, pidx)
        out = _cell_step(
            attack_r, eps, seed, adv_index, model, gi, gx, gy, mesh=res.mesh, ssim_win=ssim_win
        )
        want = keys + (["adv"] if adv_sample is None and num_images else [])
        host = _to_host(out, want)
        for k in keys:
            v = host[k]
            parts.setdefault(k, []).append(v[..., :b] if v.ndim == 2 else v[:b])
        if "adv" in host:
            adv_sample = host["adv"][: min(num_images, b)]
        progress.batch()
        if start != starts[-1] and stop():  # a finished cell is kept: the caller saves it
            return None
    cat = {k: np.concatenate(v, axis=-1 if k in PER_EPS else 0) for k, v in parts.items()}
    results: dict[str, Any] = {
        "indices": encode_array(idx),
        "labels": encode_array(cat["y"]),
        "clean_correct": encode_array(cat["clean_correct"]),
    }
    for k, dt in PER_EPS.items():
        results[k] = encode_array(cat[k].astype(dt))
    samples = None
    if adv_sample is not None and adv_sample.shape[0]:
        k = adv_sample.shape[0]
        clean, _ = ds.get(idx[:k])
        samples = {
            "indices": encode_array(idx[:k]),
            "eps": float(eps[int(adv_index)]),
            "clean": encode_images(clean),
            "adv": encode_images(adv_sample),
        }
    dt = time.perf_counter() - t0
    rows = summarize_cell(a["eps"], cat, a["norm"])
    return {
        "format": CELL_FORMAT,
        "cell": cell.spec(),
        "black_box": bool(black_box),
        "results": results,
        "summary": rows,
        "samples": samples,
        "run": {
            "seconds": round(dt, 3),
            "finished": _now(),
            "host": platform.node(),
            "process_count": jax.process_count(),
            "devices": int(ndev),
            "device_kind": str(res.mesh.devices.flat[0].device_kind),
            "batch_size": int(per_dev),
            "step": int(bucket),
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
    handle_sigint: bool = True,
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
        handle_sigint: on SIGINT stop after the current batch, keeping finished cells.

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
    bs = int(batch_size or cfg.batch_size)
    if bs < 1:
        raise SweepError(f"--batch-size must be positive, got {bs}")

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
        ui = _Progress(progress and writer, say_ if writer else None)
        computed: list[str] = []
        interrupted = False
        sigint = _StopOnSigint(say_) if handle_sigint else contextlib.nullcontext()
        with sigint as flag:

            def stop() -> bool:
                local = bool(getattr(flag, "requested", False))
                if not multi:
                    return local
                from jax.experimental import multihost_utils

                return bool(np.any(multihost_utils.process_allgather(np.int32(local))))

            try:
                ui.start(len(pending), _total_batches(pending, resources, bs))
                for cell in pending:
                    rec = _run_cell(
                        cell,
                        resources,
                        batch_size=bs,
                        num_images=cfg.num_images,
                        progress=ui,
                        stop=stop,
                    )
                    if rec is None:
                        interrupted = True
                        break
                    if writer:
                        store.write_cell(rec)
                    computed.append(cell.id)
                    ui.end_cell(cell, rec["summary"], rec["run"]["seconds"])
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
    """Batches over all pending cells (for the overall ETA); data set sizes are read cheaply."""
    total = 0
    sizes: dict[str, int] = {}
    for c in cells:
        key = repr(sorted(c.dataset.items()))
        if key not in sizes:
            sizes[key] = int(example_indices(res.dataset(c.dataset), c.dataset).shape[0])
        n = max(sizes[key], 1)
        total += -(-n // (min(bs, n) * res.mesh.devices.size))
    return total
