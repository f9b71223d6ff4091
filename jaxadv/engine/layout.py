"""Where examples go: the device mesh, the one padding rule, host <-> device placement.

Every entry point (:func:`jaxadv.evaluate`, :func:`jaxadv.sweep_eps`, the sweep runner, training's
evaluation, :func:`jaxadv.sharding.attack_sharded`) pads and places batches through these
functions, so there is one padding rule: a short batch is filled up by repeating its last row, and
padding rows are dropped afterwards. Padded sizes are fixed per run, so one compilation serves every
batch of a data set.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

Array = jax.Array


def data_mesh(devices: Any = None, axis: str = "batch") -> jax.sharding.Mesh:
    """A 1-D mesh over ``devices`` (default: every local device)."""
    devs = np.asarray(jax.local_devices() if devices is None else devices)
    return jax.sharding.Mesh(devs.reshape(-1), (axis,))


def pad_rows(a: Any, size: int) -> Any:
    """``a`` (NumPy or JAX) with its leading axis padded to ``size`` by repeating the last row."""
    extra = size - a.shape[0]
    if extra < 0:
        raise ValueError(f"cannot pad {a.shape[0]} rows down to {size}")
    if extra == 0:
        return a
    xp = np if isinstance(a, np.ndarray) else jnp
    return xp.concatenate([a, xp.repeat(a[-1:], extra, axis=0)], axis=0)


def round_up(n: int, multiple: int) -> int:
    """``n`` rounded up to a multiple of ``multiple``."""
    return -(-n // multiple) * multiple


def bucket(n: int, cap: int) -> int:
    """Padded size for ``n`` surviving rows of a block of ``cap``: ``n`` rounded up to three
    significant bits (under a quarter padding, four sizes per octave to compile), at most ``cap``.
    Used where the number of rows to attack shrinks (cascaded eps grids)."""
    shift = max(0, n.bit_length() - 3)
    return min(cap, -(-n >> shift) << shift)


def block_size(n: int, batch_size: int) -> int:
    """Examples per device per step for ``n`` examples: ``batch_size``, or ``n`` when fewer. Each
    device attacks blocks of exactly this size (the last step is padded), so the compiled shapes
    depend on the settings and the data, never on the device count."""
    return min(batch_size, n)


def num_steps(n: int, batch_size: int, ndev: int) -> int:
    """Padded steps for ``n`` examples on ``ndev`` devices (see :func:`block_size`)."""
    return -(-n // (block_size(n, batch_size) * ndev))


def chunks(n: int, size: int) -> list[np.ndarray]:
    """Positions ``0..n-1`` in consecutive chunks of ``size`` (the last one may be shorter)."""
    return [np.arange(s, min(s + size, n)) for s in range(0, n, size)]


def shard_batch(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """Place every array's leading axis across ``mesh`` (the other axes replicated)."""
    axis = mesh.axis_names[0]

    def put(a):
        if a is None:
            return None
        spec = PartitionSpec(axis, *([None] * (a.ndim - 1)))
        return jax.device_put(a, NamedSharding(mesh, spec))

    return jax.tree_util.tree_map(put, tree)


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """Every array leaf replicated over ``mesh`` (works across processes: each process supplies its
    own devices' copies from its host value). PRNG keys are moved as their raw data."""
    rep = NamedSharding(mesh, PartitionSpec())

    def put(a):
        if not isinstance(a, (jax.Array, np.ndarray)):
            return a
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            impl = jax.random.key_impl(a)
            data = np.asarray(jax.random.key_data(a))
            arr = jax.make_array_from_callback(data.shape, rep, lambda i: data[i])
            return jax.random.wrap_key_data(arr, impl=impl)
        host = np.asarray(a)
        return jax.make_array_from_callback(host.shape, rep, lambda i: host[i])

    return jax.tree_util.tree_map(put, tree)


def global_batch(mesh: jax.sharding.Mesh, ds: Any, pidx: np.ndarray, *, dense: bool = False):
    """Index, image and label arrays of one padded batch ``pidx`` (data-set indices), sharded on the
    batch axis (labels ``[b]``, multi-hot ``[b, F]`` for a multi-label data set, masks
    ``[b, H, W]`` when ``dense``). Each process reads from the data set only the rows its own
    devices hold."""
    axis = mesh.axis_names[0]
    b = pidx.shape[0]
    h, w, k = ds.image_shape
    cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def rows(index) -> tuple[np.ndarray, np.ndarray]:
        sl = index[0]
        key = (sl.start, sl.stop)
        if key not in cache:
            x, y = ds.get(pidx[sl])
            x = np.asarray(x, np.float32)
            bad = ~np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1)
            if bad.any():  # the up-front check reads only a few examples; every batch is checked
                raise ValueError(
                    f"images at data-set indices {pidx[sl][bad][:5].tolist()} hold NaN/inf; "
                    "clean or drop them before attacking"
                )
            cache[key] = (x, np.asarray(y, np.int32))
        return cache[key]

    s1 = NamedSharding(mesh, PartitionSpec(axis))
    s4 = NamedSharding(mesh, PartitionSpec(axis, None, None, None))
    idx = jax.make_array_from_callback((b,), s1, lambda i: pidx[i[0]].astype(np.uint32))
    x = jax.make_array_from_callback((b, h, w, k), s4, lambda i: rows(i)[0])
    if dense:  # masks [b, H, W]
        s3 = NamedSharding(mesh, PartitionSpec(axis, None, None))
        y = jax.make_array_from_callback((b, h, w), s3, lambda i: rows(i)[1])
    elif getattr(ds, "multi_label", False):  # multi-hot labels [b, F]
        s2 = NamedSharding(mesh, PartitionSpec(axis, None))
        y = jax.make_array_from_callback((b, ds.num_classes), s2, lambda i: rows(i)[1])
    else:
        y = jax.make_array_from_callback((b,), s1, lambda i: rows(i)[1])
    return idx, x, y


def global_masks(mesh: jax.sharding.Mesh, masks: np.ndarray, pidx: np.ndarray) -> Array:
    """Target masks of one padded batch ``pidx``, sharded like the labels: ``masks`` is one mask
    ``[H, W]`` for every image or one per data-set index ``[N, H, W]``."""
    axis = mesh.axis_names[0]
    b = pidx.shape[0]
    h, w = masks.shape[-2:]

    def rows(index) -> np.ndarray:
        sel = pidx[index[0]]
        if masks.ndim == 2:
            return np.broadcast_to(masks, (sel.shape[0], h, w)).astype(np.int32)
        return np.asarray(masks[sel], np.int32)

    s3 = NamedSharding(mesh, PartitionSpec(axis, None, None))
    return jax.make_array_from_callback((b, h, w), s3, rows)


def to_host(tree: dict[str, Array]) -> dict[str, np.ndarray]:
    """Sharded device arrays back on the host as NumPy (gathered from every process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return {
            k: np.asarray(v) for k, v in multihost_utils.process_allgather(tree, tiled=True).items()
        }
    return {k: np.asarray(v) for k, v in jax.device_get(tree).items()}
