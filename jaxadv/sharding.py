"""Data parallelism over every local device for one in-memory batch.

Attacks are per-example computations, so sharding the batch is all it takes: ``jit`` propagates
the sharding through the attack. The batch is padded with the engine's one padding rule
(:mod:`jaxadv.engine.layout`) to a multiple of the device count and un-padded afterwards;
per-example keys come from the original example index, so results do not depend on the number of
devices. To stream a whole data set, use :func:`jaxadv.evaluate`.
"""

from __future__ import annotations

from typing import Any

import jax

from jaxadv import _validate
from jaxadv.attacks.base import example_keys, finite_budget, run_jit
from jaxadv.engine.layout import data_mesh, pad_rows, round_up, shard_batch
from jaxadv.models import as_model
from jaxadv.result import AttackResult

Array = jax.Array

__all__ = ["attack_sharded", "data_mesh", "shard_batch"]


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
        check = getattr(attack, "check_inputs", None)
        if check is not None:
            check(model, x, y, target)
        else:
            _validate.check_attack_inputs(attack.threat, model, x, y, target)
    mesh = mesh or data_mesh()
    b = x.shape[0]
    size = round_up(b, mesh.devices.size)
    keys = example_keys(key, size)  # padded rows get their own (unused) keys
    xs, ys = pad_rows(x, size), pad_rows(y, size)
    ts = None if target is None else pad_rows(target, size)
    keys, xs, ys, ts = shard_batch((keys, xs, ys, ts), mesh)
    res = run_jit(finite_budget(attack, x), keys, model, xs, ys, ts)
    return jax.tree_util.tree_map(lambda a: a[:b], res)
