"""Per-example attack losses on logits.

One sign convention for the whole library: **attacks maximise** these losses. Every loss maps
``logits[B, C]`` and labels ``y[B]`` (the true label, or the target label for the targeted variants) to
a per-example value ``[B]``. For the margin losses, the attack has succeeded exactly when the loss is
positive.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
LossFn = Callable[[Array, Array], Array]

_BIG = 1e30


def _onehot(y: Array, c: int, dtype) -> Array:
    return jax.nn.one_hot(y, c, dtype=dtype)


def _true_logit(logits: Array, y: Array) -> Array:
    return jnp.take_along_axis(logits, y[:, None].astype(jnp.int32), axis=1)[:, 0]


def _max_other(logits: Array, y: Array) -> Array:
    mask = _onehot(y, logits.shape[1], jnp.bool_)
    return jnp.max(jnp.where(mask, -_BIG, logits), axis=1)


def ce(logits: Array, y: Array) -> Array:
    """Cross-entropy of the true label (untargeted: maximise it)."""
    return -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=1), y[:, None], axis=1)[:, 0]


def ce_targeted(logits: Array, target: Array) -> Array:
    """Negative cross-entropy of the target label (targeted: maximise it)."""
    return -ce(logits, target)


def margin(logits: Array, y: Array) -> Array:
    """Carlini–Wagner margin ``max_{j != y} z_j - z_y``; > 0 exactly when misclassified."""
    return _max_other(logits, y) - _true_logit(logits, y)


def margin_targeted(logits: Array, target: Array) -> Array:
    """Targeted margin ``z_t - max_{j != t} z_j``; > 0 exactly when classified as the target."""
    return -margin(logits, target)


def dlr(logits: Array, y: Array) -> Array:
    """Difference of logits ratio (Croce & Hein, 2020), scale invariant.

    ``-(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3)``. It needs at least 3 classes; with 2 classes the
    denominator does not exist and we fall back to the plain margin (documented deviation).
    """
    c = logits.shape[1]
    if c < 3:
        return margin(logits, y)
    srt = jnp.sort(logits, axis=1)
    denom = srt[:, -1] - srt[:, -3] + 1e-12
    return margin(logits, y) / denom


def dlr_targeted(logits: Array, target: Array, y: Array | None = None) -> Array:
    """Targeted DLR: ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)`` (needs 4 classes).

    ``y`` is the true label. With fewer than 4 classes we fall back to the targeted margin.
    """
    c = logits.shape[1]
    if c < 4 or y is None:
        return margin_targeted(logits, target)
    srt = jnp.sort(logits, axis=1)
    denom = srt[:, -1] - 0.5 * (srt[:, -3] + srt[:, -4]) + 1e-12
    return -(_true_logit(logits, y) - _true_logit(logits, target)) / denom


def label_success(pred: Array, y: Array, target: Array | None = None) -> Array:
    """The success rule on predicted labels: ``pred != y`` (untargeted) or ``pred == target``."""
    if target is None:
        return pred != y
    return pred == target


def is_adversarial(
    logits: Array,
    y: Array,
    target: Array | None = None,
    *,
    success_margin: float = 0.0,
    overshoot: float | Array | None = None,
) -> Array:
    """Success criterion ``[B]``: misclassified (untargeted) or classified as ``target``.

    ``success_margin`` κ (a threat's static setting, issue 19): above 0, success is instead
    ``margin > κ`` on finite logits (:func:`margin`, or :func:`margin_targeted` with ``target``),
    the rule :func:`jaxadv.result.finalize` applies; at 0 it is exactly the argmax rule.

    ``overshoot`` (a minimum-norm attack's leaf, may be traced): the search-time rule of FMN, FAB,
    CW and DDN, which count a point only when its margin exceeds ``κ + overshoot`` so that the
    point they return lies strictly past the boundary; when ``κ + overshoot`` is 0 it is the
    argmax rule, bit for bit. ``None`` (the default) is :func:`finalize`'s rule above.
    """
    if overshoot is None:
        if success_margin == 0:
            return label_success(jnp.argmax(logits, axis=1), y, target)
        thr = success_margin
    else:
        # f32 whatever the logits' dtype: the threshold the verdicts compare against is the one
        # finalize uses for kappa, so a margin just past it here is past it there
        thr = jnp.asarray(success_margin, jnp.float32) + jnp.asarray(overshoot)
        thr = thr.astype(jnp.float32)
    m = margin(logits, y) if target is None else margin_targeted(logits, target)
    finite = jnp.all(jnp.isfinite(logits), axis=1)
    by_margin = (m.astype(jnp.float32) > thr) & finite
    if overshoot is None:
        return by_margin
    return jnp.where(thr > 0, by_margin, label_success(jnp.argmax(logits, axis=1), y, target))


LOSSES: dict[str, tuple[LossFn, LossFn]] = {
    "ce": (ce, ce_targeted),
    "margin": (margin, margin_targeted),
    "dlr": (dlr, margin_targeted),
}


def resolve(loss: str | LossFn, targeted: bool) -> LossFn:
    """Turn a loss name (``'ce'``, ``'margin'``, ``'dlr'``) or callable into a loss function."""
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise ValueError(
            f"unknown loss {loss!r}; choose one of {sorted(LOSSES)} or pass a callable"
        )
    return LOSSES[loss][1 if targeted else 0]
