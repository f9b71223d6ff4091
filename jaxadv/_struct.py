"""A tiny frozen-dataclass-as-pytree helper (what equinox.Module does, without the dependency).

Fields marked ``static()`` become part of the tree structure (they decide shapes and control flow:
changing them retraces); every other field is a leaf (changing it never retraces, and it can be
vmapped, e.g. ``eps``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import jax
import numpy as np

T = TypeVar("T")


def static(default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A dataclass field that is static (part of the pytree structure, hashed by jit)."""
    return dataclasses.field(default=default, metadata={"static": True}, **kwargs)


def pytree_dataclass(cls: type[T]) -> type[T]:
    """Make ``cls`` a frozen, keyword-only dataclass registered as a pytree.

    Registered as a custom node (leaves: the non-static fields in order; aux data: the static
    fields' values), not with ``jax.tree_util.register_dataclass``: in jax 0.10 the tree
    structures of two *different* classes registered that way compare equal when their fields
    match (``LinfBall`` / ``L2Ball``, hence ``APGD(threat=LinfBall(...))`` /
    ``APGD(threat=L2Ball(...))``; only their hashes differ), so a jit cache keyed by tree
    structure could run one class's compiled program for the other on a hash collision, as seen
    in one process running AutoAttack under L∞ and then L2. A custom node's structure compares its
    class.
    """
    cls = dataclasses.dataclass(frozen=True, kw_only=True)(cls)
    data, meta = [], []
    for f in dataclasses.fields(cls):
        (meta if f.metadata.get("static", False) else data).append(f.name)
    keys = tuple(jax.tree_util.GetAttrKey(n) for n in data)

    def flatten_with_keys(obj):
        children = tuple((k, getattr(obj, n)) for k, n in zip(keys, data, strict=True))
        return children, tuple(getattr(obj, n) for n in meta)

    def flatten(obj):
        return tuple(getattr(obj, n) for n in data), tuple(getattr(obj, n) for n in meta)

    def unflatten(aux, children):
        # the constructor, as register_dataclass does (so __post_init__ runs on rebuilt values)
        return cls(**dict(zip(meta, aux, strict=True)), **dict(zip(data, children, strict=True)))

    jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)
    return cls


def replace(obj: T, **changes: Any) -> T:
    """``dataclasses.replace`` for our frozen pytrees."""
    return dataclasses.replace(obj, **changes)  # type: ignore[type-var]


def is_concrete(x: Any) -> bool:
    """True when ``x`` holds a value we can inspect on the host (not a tracer, not a sentinel)."""
    if isinstance(x, jax.core.Tracer):
        return False
    return isinstance(x, (int, float)) or hasattr(x, "__array__")


def float32_fields(obj: Any, *names: str) -> None:
    """Python numbers in fields ``names`` of a frozen ``obj`` become float32 scalars (one trace
    whatever the literal type); call from ``__post_init__``."""
    for name in names:
        v = getattr(obj, name)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            object.__setattr__(obj, name, np.float32(v))
