"""Dense (segmentation) targets: per-pixel metrics, per-image success rules, input checks.

A segmentation model maps images ``x[B, H, W, K]`` to per-pixel logits ``[B, H, W, C]``; the
prediction is ``argmax`` over the last axis. Masks are integer class ids ``[B, H, W]`` in
``0..C-1`` (class 0 is the background by convention).

**Metrics** (``../shared/specs/algorithms.md`` §11), per image and class, from integer label maps:
``Dice(P, G) = 2|P ∩ G| / (|P| + |G|)``, ``IoU(P, G) = |P ∩ G| / |P ∪ G|``, both 1 when ``P`` and
``G`` are both empty; pixel accuracy is the fraction of pixels whose class equals the mask's.
The *image* Dice (:func:`image_dice`) is the mean of the per-class Dice over the foreground classes
``1..C-1`` (for a binary lesion mask: the lesion Dice); the *target IoU* (:func:`target_iou`) is the
mean per-class IoU between the prediction and a target mask over all classes ``0..C-1``.

**Success rules** (:class:`DenseRule`), stated per image and recomputed by the library on the
final, projected ``adv`` (:func:`jaxadv.result.finalize` with ``rule=``). Each has a margin ``m``
that is ``>= 0`` exactly when the rule holds (``res.loss``):

* ``dice_drop(t)`` (untargeted default, ``t = 0.5``): the image Dice fell by at least ``t``,
  ``m = (Dice_clean - Dice_adv) - t``;
* ``dice_below(t)``: the image Dice is at most ``t``, ``m = t - Dice_adv`` (an image the model
  already segments badly counts, like a clean error for a classifier);
* ``target_iou(t)`` (targeted default, ``t = 0.9``): the prediction matches the target mask with
  mean IoU at least ``t``, ``m = IoU(pred, target) - t``.

The dense rules count ``m = 0`` as a success (``>=``), where a classifier's margin needs ``> 0``:
Dice and IoU take finitely many values, and a threshold of 1 (exactly the target mask) must be
reachable.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv import _validate
from jaxadv._struct import float32_fields, is_concrete, pytree_dataclass, static

Array = jax.Array

#: Rule kinds: Dice drop, Dice below a level, IoU with a target mask.
RULE_KINDS = ("dice_drop", "dice_below", "target_iou")


# ----------------------------------------------------------------------------- metrics
def predict(logits: Array) -> Array:
    """Per-pixel class ``int32[B, H, W]`` from logits ``[B, H, W, C]``."""
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def _counts(pred: Array, mask: Array, num_classes: int) -> tuple[Array, Array, Array]:
    """Per image and class: ``|P ∩ G|``, ``|P|``, ``|G|`` as float32 ``[B, C]``."""
    pred, mask = jnp.asarray(pred), jnp.asarray(mask)
    c = jnp.arange(num_classes, dtype=pred.dtype).reshape((1,) * pred.ndim + (num_classes,))
    p = (pred[..., None] == c).reshape(pred.shape[0], -1, num_classes)
    g = (mask[..., None] == c.astype(mask.dtype)).reshape(mask.shape[0], -1, num_classes)
    f = jnp.float32
    inter = jnp.sum((p & g).astype(f), axis=1)
    return inter, jnp.sum(p.astype(f), axis=1), jnp.sum(g.astype(f), axis=1)


def dice(pred: Array, mask: Array, num_classes: int) -> Array:
    """Dice per image and class ``f32[B, C]``; 1 where the class is absent from both.

    Args:
        pred: predicted class ids ``int[B, H, W]`` (e.g. :func:`predict` of the logits).
        mask: ground-truth class ids ``int[B, H, W]``.
        num_classes: ``C``.

    Example:
        >>> import jax.numpy as jnp
        >>> p = jnp.array([[[1, 1], [0, 0]]]); g = jnp.array([[[1, 0], [0, 0]]])
        >>> [round(float(v), 3) for v in dice(p, g, 2)[0]]
        [0.8, 0.667]
    """
    inter, sp, sg = _counts(pred, mask, num_classes)
    den = sp + sg
    return jnp.where(den > 0, 2 * inter / jnp.maximum(den, 1), 1.0)


def iou(pred: Array, mask: Array, num_classes: int) -> Array:
    """IoU (Jaccard) per image and class ``f32[B, C]``; 1 where the class is absent from both.

    Args:
        pred: predicted class ids ``int[B, H, W]``.
        mask: ground-truth class ids ``int[B, H, W]``.
        num_classes: ``C``.
    """
    inter, sp, sg = _counts(pred, mask, num_classes)
    union = sp + sg - inter
    return jnp.where(union > 0, inter / jnp.maximum(union, 1), 1.0)


def pixel_accuracy(pred: Array, mask: Array) -> Array:
    """Fraction of pixels whose predicted class equals the mask's, ``f32[B]``."""
    eq = (jnp.asarray(pred) == jnp.asarray(mask)).reshape(pred.shape[0], -1)
    return jnp.mean(eq.astype(jnp.float32), axis=1)


def foreground_mean(per_class: Array) -> Array:
    """Mean over the foreground classes ``1..C-1`` of a per-class score ``[B, C]`` -> ``[B]``."""
    return jnp.mean(per_class[:, 1:], axis=1)


def image_dice(pred: Array, mask: Array, num_classes: int) -> Array:
    """Per-image Dice ``f32[B]``: mean foreground-class Dice (the lesion Dice for a binary mask)."""
    return foreground_mean(dice(pred, mask, num_classes))


def image_iou(pred: Array, mask: Array, num_classes: int) -> Array:
    """Per-image IoU ``f32[B]``: mean foreground-class IoU (the lesion IoU for a binary mask)."""
    return foreground_mean(iou(pred, mask, num_classes))


def target_iou(pred: Array, target: Array, num_classes: int) -> Array:
    """Mean IoU over all classes between the prediction and a target mask, ``f32[B]``.

    All classes count (the background too), so an all-background target ("erase the lesion") is
    reached exactly when nothing is predicted as lesion (then every IoU is 1).
    """
    return jnp.mean(iou(pred, target, num_classes), axis=1)


def scores(logits: Array, mask: Array, *, target: Array | None = None) -> dict[str, Array]:
    """Per-image ``dice``, ``iou``, ``pixel_accuracy`` (and ``target_iou`` when a target mask is
    given) ``f32[B]`` of logits ``[B, H, W, C]`` against ``mask[B, H, W]``."""
    c = logits.shape[-1]
    p = predict(logits)
    out = {
        "dice": image_dice(p, mask, c),
        "iou": image_iou(p, mask, c),
        "pixel_accuracy": pixel_accuracy(p, mask),
    }
    if target is not None:
        out["target_iou"] = target_iou(p, target, c)
    return out


# ----------------------------------------------------------------------------- rules
@pytree_dataclass
class DenseRule:
    """A per-image success rule of a dense attack (see the module docstring).

    Attributes:
        kind: ``'dice_drop'``, ``'dice_below'`` or ``'target_iou'`` (static).
        threshold: the rule's threshold in ``[0, 1]`` (a leaf: a new threshold never retraces).
    """

    kind: str = static()
    threshold: Any = 0.5

    def __post_init__(self) -> None:
        if self.kind not in RULE_KINDS:
            raise ValueError(f"dense rule must be one of {RULE_KINDS}, got {self.kind!r}")
        if is_concrete(self.threshold):
            t = np.asarray(self.threshold)
            if t.ndim != 0 or not (0.0 <= float(t) <= 1.0):
                raise ValueError(
                    f"the {self.kind} threshold must be a number in [0, 1], got {self.threshold!r}"
                )
        float32_fields(self, "threshold")

    @property
    def targeted(self) -> bool:
        """The rule needs a target mask."""
        return self.kind == "target_iou"

    @property
    def needs_clean(self) -> bool:
        """The rule compares with the clean prediction (one more forward pass)."""
        return self.kind == "dice_drop"

    def describe(self) -> str:
        """``dice_drop>=0.5`` style (threshold shown when concrete)."""
        t = f"{float(self.threshold):g}" if is_concrete(self.threshold) else "t"
        return {"dice_drop": "dice_drop>=", "dice_below": "dice<=", "target_iou": "target_iou>="}[
            self.kind
        ] + t

    def margin(
        self, logits: Array, y: Array, target: Array | None = None, clean: Array | None = None
    ) -> Array:
        """The rule's margin ``f32[B]`` (``>= 0`` exactly when it holds).

        Args:
            logits: ``[B, H, W, C]`` at the point judged.
            y: true masks ``int[B, H, W]``.
            target: target masks ``int[B, H, W]`` (``target_iou`` only).
            clean: image Dice of the clean prediction ``[B]`` (``dice_drop`` only).
        """
        c = logits.shape[-1]
        pred = predict(logits)
        t = jnp.asarray(self.threshold, jnp.float32)
        if self.kind == "target_iou":
            if target is None:
                raise ValueError(
                    "rule target_iou needs a target mask: call the attack with target="
                )
            return target_iou(pred, target, c) - t
        d = image_dice(pred, y, c)
        if self.kind == "dice_below":
            return t - d
        if clean is None:
            raise ValueError("rule dice_drop needs the clean image Dice (clean=)")
        return (clean - d) - t

    def success(
        self, logits: Array, y: Array, target: Array | None = None, clean: Array | None = None
    ) -> Array:
        """``bool[B]``: the rule holds (never where a logit is NaN/inf)."""
        finite = jnp.all(jnp.isfinite(logits.reshape(logits.shape[0], -1)), axis=1)
        return (self.margin(logits, y, target, clean) >= 0) & finite


def dice_drop(threshold: float = 0.5) -> DenseRule:
    """Success when the image Dice drops by at least ``threshold`` from clean to adversarial."""
    return DenseRule(kind="dice_drop", threshold=threshold)


def dice_below(threshold: float = 0.5) -> DenseRule:
    """Success when the adversarial image Dice is at most ``threshold``."""
    return DenseRule(kind="dice_below", threshold=threshold)


def target_mask_iou(threshold: float = 0.9) -> DenseRule:
    """Success when the prediction matches the target mask with mean IoU at least ``threshold``."""
    return DenseRule(kind="target_iou", threshold=threshold)


def default_rule(targeted: bool) -> DenseRule:
    """``target_mask_iou(0.9)`` for a targeted attack, else ``dice_drop(0.5)``."""
    return target_mask_iou(0.9) if targeted else dice_drop(0.5)


# ----------------------------------------------------------------------------- input checks
def num_classes(model: Any, x: Any) -> int:
    """Trace (no compile) ``model`` on ``x``'s shape: it must return per-pixel logits
    ``[B, H, W, C]`` matching the image size; returns ``C``."""
    out = _validate.trace_output(model, x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if len(out.shape) == 2:
        raise ValueError(
            f"this is a segmentation attack, but the model returns one label per image (logits "
            f"{tuple(out.shape)}); use a classification attack (jaxadv.PGD, ...) for a classifier, "
            "or a model that returns per-pixel logits [B, H, W, C]"
        )
    if len(out.shape) != 4 or tuple(out.shape[:3]) != tuple(x.shape[:3]):
        raise ValueError(
            f"a segmentation model must return per-pixel logits [B, H, W, C] with the image's "
            f"B, H, W {tuple(x.shape[:3])}; it returned shape {tuple(out.shape)}"
        )
    if out.shape[3] < 2:
        raise ValueError(
            "the model returns one logit per pixel; wrap a sigmoid model as logits [0, z] "
            "(jnp.concatenate([jnp.zeros_like(z), z], -1))"
        )
    return int(out.shape[3])


def check_masks(m: Any, x_shape: tuple[int, ...], num_classes: int, *, name: str = "y") -> None:
    """Masks ``int[B, H, W]`` matching the images ``x_shape`` with class ids in ``0..C-1``."""
    shape = getattr(m, "shape", None)
    if shape is None:
        raise TypeError(f"{name} must be an integer mask array [B, H, W], got {type(m).__name__}")
    want = tuple(x_shape[:3])
    if len(shape) == 1:
        raise ValueError(
            f"{name} holds one label per image (shape {tuple(shape)}) but a segmentation attack "
            f"needs a mask per image [B, H, W] = {list(want)}"
        )
    if tuple(shape) != want:
        raise ValueError(
            f"{name} has shape {tuple(shape)} but the images need masks [B, H, W] = {list(want)}; "
            "give one class id per pixel (drop a trailing channel axis with m[..., 0])"
        )
    if not jnp.issubdtype(m.dtype, jnp.integer):
        raise TypeError(f"{name} must hold integer class ids, got dtype {m.dtype}")
    if is_concrete(m):
        v = np.asarray(m)
        if v.size and (v.min() < 0 or v.max() >= num_classes):
            raise ValueError(
                f"{name} has class ids {int(v.min())}..{int(v.max())} but the model predicts "
                f"{num_classes} classes (0..{num_classes - 1}); for 0/255 masks use m // 255"
            )


def check_inputs(threat: Any, model: Any, x: Any, y: Any, target: Any = None) -> int:
    """Every call-time check of a dense attack: images in the threat's box, a per-pixel model,
    masks (and target masks) matching the images, finite clean logits. Returns ``C``."""
    lo = 0.0 if threat is None else float(np.min(np.asarray(threat.lo)))
    hi = 1.0 if threat is None else float(np.max(np.asarray(threat.hi)))
    _validate.check_images(x, lo=lo, hi=hi)
    c = num_classes(model, x)
    check_masks(y, x.shape, c)
    if target is not None:
        check_masks(target, x.shape, c, name="target")
    _validate.check_logits(model, x)
    return c


__all__ = [
    "RULE_KINDS",
    "DenseRule",
    "check_inputs",
    "check_masks",
    "default_rule",
    "dice",
    "dice_below",
    "dice_drop",
    "foreground_mean",
    "image_dice",
    "image_iou",
    "iou",
    "num_classes",
    "pixel_accuracy",
    "predict",
    "scores",
    "target_iou",
    "target_mask_iou",
]
