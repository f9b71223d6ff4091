"""Opt-in, host-side sanity checks on a target model (the AutoAttack idea).

A robustness number is only as honest as the model it was measured on. These checks catch the
common ways an evaluation silently goes wrong: the model returns probabilities (softmax saturates and
gradients vanish), the model is random at inference (dropout left on: gradient masking by noise),
or its input gradients are zero or NaN on the batch (masking, non-differentiable preprocessing).
They warn with :class:`SanityWarning`; they never change the attack.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv import losses as L
from jaxadv.models import as_model

log = logging.getLogger(__name__)


class SanityWarning(UserWarning):
    """A model property that can make robustness numbers misleading."""


def _randomised(model: Any) -> bool:
    """A :class:`~jaxadv.RandomizedModel` inside ``model`` that no :class:`~jaxadv.EOTLogits` averages."""
    from jaxadv.attacks.autoattack import EOTLogits, RandomizedModel

    nodes = jax.tree_util.tree_leaves(
        model, is_leaf=lambda n: isinstance(n, (EOTLogits, RandomizedModel))
    )
    return any(isinstance(n, RandomizedModel) for n in nodes)


def check_model(model: Any, x: Any, y: Any, *, num_repeats: int = 2) -> list[str]:
    """Run the checks on a batch; warn for each problem found and return the messages.

    Args:
        model: a jaxadv target or a callable ``x -> logits``.
        x: images ``[B, H, W, K]``; y: labels ``[B]``.
        num_repeats: forward passes compared for the determinism check.

    Example:
        >>> import jax.numpy as jnp, jaxadv
        >>> model = jaxadv.from_apply(lambda w, x: x.reshape(x.shape[0], -1) @ w, 3 * jnp.eye(4, 2))
        >>> jaxadv.check_model(model, jnp.full((2, 2, 2, 1), 0.5), jnp.array([0, 1]))
        []
    """
    model = as_model(model)
    problems: list[str] = []
    outs = [np.asarray(model(x)) for _ in range(max(2, num_repeats))]
    z = outs[0]
    if not np.all(np.isfinite(z)):
        problems.append("the model returns NaN/inf logits on this batch")
    rows = z.sum(axis=1)
    if np.all(z >= -1e-6) and np.all(z <= 1 + 1e-6) and np.allclose(rows, 1.0, atol=1e-3):
        problems.append(
            "the model seems to return probabilities (rows in [0, 1] summing to 1), not logits; "
            "remove the final softmax: attacks on probabilities suffer vanishing gradients"
        )
    if any(not np.array_equal(z, o, equal_nan=True) for o in outs[1:]):
        diff = max(float(np.nanmax(np.abs(z - o))) for o in outs[1:])
        problems.append(
            f"the model is not deterministic (outputs differ by up to {diff:.3g} between two "
            "identical calls); switch it to eval mode (dropout off) or use EOT-aware attacks"
        )

    def total(xa):
        return jnp.sum(L.ce(model(xa), y))

    g = np.asarray(jax.grad(total)(x)).reshape(x.shape[0], -1)
    if not np.all(np.isfinite(g)):
        n = int(np.sum(~np.all(np.isfinite(g), axis=1)))
        problems.append(f"input gradients are NaN/inf for {n} of {x.shape[0]} examples")
    zero = np.all(g == 0, axis=1)
    if np.any(zero):
        problems.append(
            f"input gradients are exactly zero for {int(zero.sum())} of {x.shape[0]} examples "
            "(gradient masking or non-differentiable preprocessing): wrap the non-differentiable "
            "stage in jaxadv.defences.BPDA (identity or a differentiable approximation) and use "
            "black-box attacks too"
        )
    if _randomised(model):
        problems.append(
            "the model draws randomness at inference (a jaxadv.RandomizedModel, e.g. "
            "RandomResizePad): a single draw gives random gradients and over-rates it; attack "
            "jaxadv.EOTLogits(model=..., num_draws=n) instead"
        )
    for p in problems:
        warnings.warn(p, SanityWarning, stacklevel=2)
        log.warning(p)
    return problems
