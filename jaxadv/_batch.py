"""Per-example values against batched arrays: the two broadcasting helpers every attack needs."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def bcast(v: Array, x: Array) -> Array:
    """Per-example values ``v[B]`` (or ``[B, P]``) reshaped to broadcast against ``x[B, ...]``
    (explicit rank: the project runs with ``jax_numpy_rank_promotion='raise'`` in tests)."""
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def bsel(mask: Array, a: Array, b: Array) -> Array:
    """``where(mask[B], a, b)`` broadcast over the trailing axes."""
    return jnp.where(bcast(mask, a), a, b)
