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


def input_hash(x: Array) -> Array:
    """``uint32[B]``: a per-example fingerprint of ``x[B, ...]``, so that randomness keyed by it
    is new at every new point (fresh draws per call, as a randomised model or EOT needs) while the
    computation stays a pure function (the same point, the same draws)."""
    bits = jax.lax.bitcast_convert_type(
        jax.lax.stop_gradient(x).astype(jnp.float32).reshape(x.shape[0], -1), jnp.uint32
    )
    return jnp.sum(bits * jnp.uint32(2654435761), axis=1, dtype=jnp.uint32)
