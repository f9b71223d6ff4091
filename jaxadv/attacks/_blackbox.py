"""Shared pieces of the black-box attacks (NES, Square, ZOO, HopSkipJump).

The oracles below are the *only* way these attacks look at a model, which keeps the threat model
honest:

* score-based attacks read the probability vector ``softmax(model(x))`` (:func:`probs`), its
  logarithm (:func:`log_probs`, computed stably; it carries no more information than the
  probabilities) or only its ``k`` largest entries (:func:`top_k_probs`);
* label-only attacks read the top label (:func:`labels`).

None of them differentiates the model. Every image passed to an oracle is one **query**; the
attacks charge it to its example only while that example is still active (finished examples are
frozen: their rows are still computed in the batched program, but never used or charged).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxadv._batch import bcast, bsel  # noqa: F401  (used as bb.bcast / bb.bsel)
from jaxadv._struct import replace
from jaxadv.attacks.base import fold_keys as fold  # noqa: F401  (bb.fold)
from jaxadv.losses import label_success as is_adversarial_label  # noqa: F401  (bb.*)

Array = jax.Array


def flat_norm2(d: Array) -> Array:
    """Per-example Euclidean norm ``[B]`` of ``d[B, ...]``."""
    return jnp.sqrt(jnp.sum(jnp.square(d.reshape(d.shape[0], -1)), axis=1))


# ------------------------------------------------------------------------------- oracles
def probs(model: Any, x: Array) -> Array:
    """Probability vectors ``[N, C]`` for images ``x[N, ...]`` (``N`` queries)."""
    return jax.nn.softmax(model(x), axis=-1)


def log_probs(model: Any, x: Array) -> Array:
    """``log softmax(model(x))``: the logarithm of the probability vector, computed stably."""
    return jax.nn.log_softmax(model(x), axis=-1)


def log_odds(lp: Array, label: Array) -> Array:
    """``log(p_l / (1 - p_l))`` per example, from log-probabilities ``lp[N, C]`` (what
    :func:`log_probs` returns) and labels ``label[N]``.

    The same order as ``p_l``, but it does not saturate: in float32 ``p_l`` (and ``log p_l``)
    round to exactly 1 (0) once the logit gap passes ~17, while the log-odds keep the gap."""
    own = jnp.take_along_axis(lp, label[:, None], axis=1)[:, 0]
    mask = jax.nn.one_hot(label, lp.shape[-1], dtype=bool)
    rest = jax.nn.logsumexp(jnp.where(mask, -jnp.inf, lp), axis=-1)
    return own - rest


def labels(model: Any, x: Array) -> Array:
    """Top-1 labels ``int32[N]`` (the only thing a label-only attack may read)."""
    return jnp.argmax(model(x), axis=-1).astype(jnp.int32)


def top_k_probs(model: Any, x: Array, k: int) -> Array:
    """The probability vector with everything outside the top ``k`` set to 0 (partial
    information: the attacker sees the ``k`` best classes and their scores only)."""
    p = probs(model, x)
    vals, idx = jax.lax.top_k(p, min(k, p.shape[-1]))
    return jnp.sum(jax.nn.one_hot(idx, p.shape[-1], dtype=p.dtype) * vals[..., None], axis=-2)


def over_population(fn: Callable[[Array], Any], xs: Array) -> Any:
    """Evaluate ``fn`` on candidates ``xs[B, P, ...]`` as one batch ``[B*P, ...]`` and reshape the
    result(s) back to a leading ``[B, P]``."""
    b, p = xs.shape[:2]
    out = fn(xs.reshape((b * p,) + xs.shape[2:]))
    return jax.tree_util.tree_map(lambda a: a.reshape((b, p) + a.shape[1:]), out)


# ----------------------------------------------------------------------------- geometry
def project_radius(threat: Any, x: Array, x_adv: Array, radius: Array) -> Array:
    """Project onto ``{||x' - x|| <= radius_b} ∩ box`` with a per-example radius ``[B]``.

    Norm balls are homogeneous: projecting onto the ball of radius ``r`` is ``r`` times the
    projection of ``delta / r`` onto the unit ball, so one unit-radius threat serves every radius.
    """
    unit = replace(threat, eps=1.0)
    delta = x_adv - x
    r = bcast(radius.astype(x.dtype), x)
    finite = jnp.isfinite(r) & (r > 0)
    safe = jnp.where(finite, r, jnp.ones_like(r))
    scaled = unit.project_ball(delta / safe) * safe
    delta = jnp.where(finite, scaled, jnp.where(r > 0, delta, jnp.zeros_like(delta)))
    return threat.clip_box(x + delta)
