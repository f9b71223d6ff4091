"""Data parallelism over every local device: shard the batch axis with ``NamedSharding``.

Attacks are per-example computations, so sharding the batch is all it takes: ``jit`` propagates
the sharding through the attack. Uneven batches are padded to a multiple of the device count and
un-padded afterwards; per-example keys come from the original example index, so results do not
depend on the number of devices.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxadv import _validate
from jaxadv.attacks.base import _bound, _run_jit, example_keys
from jaxadv.models import as_model
from jaxadv.result import AttackResult

Array = jax.Array


def data_mesh(devices: Any = None, axis: str = "batch") -> jax.sharding.Mesh:
    """A 1-D mesh over ``devices`` (default: every local device)."""
    devs = np.asarray(jax.local_devices() if devices is None else devices)
    return jax.sharding.Mesh(devs.reshape(-1), (axis,))


def pad_to_multiple(a: Array, n: int) -> Array:
    """Pad the leading axis of ``a`` to a multiple of ``n`` by repeating the last row."""
    b = a.shape[0]
    extra = (-b) % n
    if extra == 0:
        return a
    return jnp.concatenate([a, jnp.repeat(a[-1:], extra, axis=0)], axis=0)


def shard_batch(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """Place every array's leading axis across the mesh (others replicated)."""
    axis = mesh.axis_names[0]

    def put(a):
        spec = PartitionSpec(axis, *([None] * (a.ndim - 1)))
        return jax.device_put(a, NamedSharding(mesh, spec))

    return jax.tree_util.tree_map(put, tree)


def attack_sharded(
    attack: Any,
    key: Array,
    model: Any,
    x: Array,
    y: Array,
    *,
    target: Array | None = None,
    mesh: jax.sharding.Mesh | None = None,
    validate: bool = True,
) -> AttackResult:
    """``attack(key, model, x, y)`` with the batch sharded over ``mesh`` (default: all devices).

    Any batch size works; the result equals the unsharded call example by example.
    """
    model = as_model(model)
    if validate:
        _validate.check_inputs(
            model,
            x,
            y,
            lo=_bound(attack.threat.lo, min),
            hi=_bound(attack.threat.hi, max),
            target=target,
        )
    mesh = mesh or data_mesh()
    n = mesh.devices.size
    b = x.shape[0]
    keys = example_keys(key, b + ((-b) % n))  # padded rows get their own (unused) keys
    xs, ys = pad_to_multiple(x, n), pad_to_multiple(y, n)
    ts = None if target is None else pad_to_multiple(target, n)
    keys, xs, ys, ts = shard_batch((keys, xs, ys, ts), mesh)
    res = _run_jit(attack, keys, model, xs, ys, ts)
    return jax.tree_util.tree_map(lambda a: a[:b], res)
