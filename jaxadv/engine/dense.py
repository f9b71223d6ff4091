"""What :func:`jaxadv.evaluate` adds for dense (segmentation) targets: the checks of a dense call,
the target masks, and the per-image drops.

A dense evaluation runs a dense attack (:mod:`jaxadv.attacks.dense`) on a model returning
per-pixel logits ``[B, H, W, C]`` over a data set of masks ``[N, H, W]``, through the same padding,
batching, sharding and per-example keys as a classifier. Success is the attack's per-image
:class:`~jaxadv.segmentation.DenseRule`, recomputed by :func:`jaxadv.result.finalize` on the
projected result; the per-image Dice / IoU / pixel accuracy (and target IoU) come from there too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxadv import segmentation as S
from jaxadv.engine.programs import DENSE_FIELDS


def is_dense(attack: Any, data: Any) -> bool:
    """The evaluation is dense: a dense attack, or no attack (clean only) on masks (a mask data
    set, or ``(x, masks[N, H, W])``)."""
    from jaxadv.attacks.dense import AbstractDenseAttack

    if attack is not None:
        return isinstance(attack, AbstractDenseAttack)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return np.ndim(data[1]) == 3
    return hasattr(data, "masks")


def resolve(attack: Any, model: Any, ds: Any, rule: Any, target: Any) -> tuple[Any, Any]:
    """Checks of a dense evaluation that hold whatever ``validate`` says (a per-pixel model, mask
    data, no multi-label rule, a well-shaped target). Returns the rule in force and the target
    masks (``int32[H, W]`` or ``int32[N, H, W]``, or ``None``)."""
    name = type(attack).__name__ if attack is not None else "a clean dense evaluation"
    if rule is not None:
        raise ValueError(
            f"rule= is the multi-label rule; {name} states its per-image rule itself, e.g. "
            "jaxadv.SegPGD(..., rule=jaxadv.segmentation.dice_below(0.5))"
        )
    h, w, k = ds.image_shape
    S.num_classes(model, np.zeros((1, h, w, k), np.float32))  # per-pixel logits, else a clear error
    _, y = ds.get(np.zeros(1, np.int64))
    if np.ndim(y) != 3:
        raise ValueError(
            f"{name} needs masks [N, H, W] (one class id per pixel); the data set has labels of "
            f"shape {tuple(np.shape(y))[1:] or '()'} per example. Load masks with "
            "jaxadv.data.load_segmentation or pass (x, masks)"
        )
    if target is not None:
        t = np.asarray(target)
        if not np.issubdtype(t.dtype, np.integer):
            raise TypeError(f"target must hold integer class ids, got dtype {t.dtype}")
        if t.shape not in ((h, w), (len(ds), h, w)):
            raise ValueError(
                f"target has shape {t.shape}; give one mask [H, W] = {[h, w]} for every image or "
                f"one per data-set example [N, H, W] = {[len(ds), h, w]}"
            )
        target = t.astype(np.int32)
    if attack is None:
        return S.default_rule(target is not None), target
    if attack.needs_target and target is None:
        raise ValueError(
            f"{name} is a targeted attack: pass target= a mask [H, W] or masks [N, H, W] "
            "(np.zeros((H, W), int) erases every foreground region)"
        )
    return attack.resolved_rule(target is not None), target


def target_rows(target: np.ndarray | None, rows: np.ndarray) -> np.ndarray | None:
    """The target masks ``[b, H, W]`` of data-set indices ``rows``."""
    if target is None:
        return None
    if target.ndim == 2:
        return np.broadcast_to(target, (rows.shape[0], *target.shape))
    return target[rows]


def unattacked(clean: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The per-image scores of the clean image as its own adversarial (budget 0)."""
    return {k: clean[f"clean_{k}"] for k in DENSE_FIELDS if f"clean_{k}" in clean}


def split_clean(cat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Pop the clean per-image scores ``clean_<field>[N]`` out of ``cat`` (keys without the
    prefix) and add the per-image drops ``<field>_drop[E, N]`` (clean minus adversarial; for
    ``target_iou`` a negative drop is a gain) to ``cat``."""
    clean = {k: cat.pop(f"clean_{k}") for k in DENSE_FIELDS if f"clean_{k}" in cat}
    for k, v in clean.items():
        cat[f"{k}_drop"] = (v[None] - cat[k]).astype(np.float32)
    return clean


__all__ = ["is_dense", "resolve", "split_clean", "target_rows", "unattacked"]
