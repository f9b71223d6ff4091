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
    """Make ``cls`` a frozen, keyword-only dataclass registered as a pytree."""
    cls = dataclasses.dataclass(frozen=True, kw_only=True)(cls)
    data, meta = [], []
    for f in dataclasses.fields(cls):
        (meta if f.metadata.get("static", False) else data).append(f.name)
    jax.tree_util.register_dataclass(cls, data_fields=data, meta_fields=meta)
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
