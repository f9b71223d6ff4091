"""Training options: class-weighted loss, balanced sampling, optimiser schedules, augmentation.

Everything here is deterministic by key and off by default; :func:`jaxadv.train.train` and the
``jaxadv train`` command use these pieces, and record the settings in the checkpoint metadata.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxadv import losses as L

Array = jax.Array


def weighted_ce(logits: Array, y: Array, class_weights: Array | None = None) -> Array:
    """Mean cross-entropy of a batch, optionally class weighted: ``Σ_i w_{y_i} CE_i / Σ_i w_{y_i}``.

    The weighted mean is normalised by the weights of the batch's own labels (PyTorch's
    ``CrossEntropyLoss(weight=w)`` convention), so uniform weights give the plain mean whatever their
    scale, and a batch of one class is not down-weighted as a whole.

    Args:
        logits: ``[B, C]``; y: labels ``int[B]``.
        class_weights: ``[C]`` non-negative weights, or ``None`` for the plain mean.

    Returns:
        The scalar loss.
    """
    return weighted_mean(L.ce(logits, y), y, class_weights)


def weighted_mean(per: Array, y: Array, class_weights: Array | None = None) -> Array:
    """Mean of a per-example loss ``per[B]``, optionally weighted by its label's class weight, with
    the normalisation of :func:`weighted_ce` (every training objective averages this way)."""
    if class_weights is None:
        return jnp.mean(per)
    w = jnp.asarray(class_weights, per.dtype)[y]
    return jnp.sum(w * per) / jnp.maximum(jnp.sum(w), jnp.finfo(per.dtype).tiny)


_SCHEDULES = ("constant", "cosine")


def class_weight_vector(spec: Sequence[float] | str | None, y: Any) -> np.ndarray | None:
    """Class weights ``f32[C]`` for :func:`weighted_ce` from a user setting.

    Args:
        spec: ``None`` (no weighting), ``'balanced'`` (``N / (C · N_c)``, sklearn's rule, from the
            labels ``y``; a class absent from ``y`` gets 0) or one non-negative weight per class.
        y: training labels ``int[N]``.

    Returns:
        ``f32[C]`` or ``None``.

    Example:
        >>> [round(float(w), 4) for w in class_weight_vector("balanced", [0, 1, 1, 1])]
        [2.0, 0.6667]
    """
    if spec is None:
        return None
    y = np.asarray(y).reshape(-1)
    if isinstance(spec, str):
        if spec != "balanced":
            raise ValueError(
                f"class_weights must be 'balanced' or one weight per class, got {spec!r}"
            )
        counts = np.bincount(y).astype(np.float64)
        c = counts.shape[0]
        w = np.where(counts > 0, y.shape[0] / (c * np.maximum(counts, 1)), 0.0)
        return w.astype(np.float32)
    w = np.asarray(spec, np.float32).reshape(-1)
    need = int(y.max()) + 1 if y.size else 0
    if w.shape[0] < need or np.any(~np.isfinite(w)) or np.any(w < 0) or not np.any(w > 0):
        raise ValueError(
            f"class_weights must give a finite weight >= 0 to each of the {need} classes (not all "
            f"zero), got {np.asarray(spec).tolist()}"
        )
    return w


# Cached: equal arguments give the same object, so train()'s compiled step (static on the optimiser)
# is reused instead of recompiled.
@functools.lru_cache(maxsize=64)
def make_optimizer(
    learning_rate: float = 1e-3,
    *,
    total_steps: int,
    warmup_steps: int = 0,
    schedule: str = "constant",
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """Adam (``weight_decay = 0``) or AdamW (decoupled weight decay) with a linear warm-up from 0
    over ``warmup_steps`` to ``learning_rate``, then constant or cosine decay to 0 at
    ``total_steps``.

    Example:
        >>> tx = make_optimizer(1e-3, total_steps=100, warmup_steps=10, schedule="cosine")
    """
    if schedule not in _SCHEDULES:
        raise ValueError(f"schedule must be one of {_SCHEDULES}, got {schedule!r}")
    if learning_rate <= 0 or weight_decay < 0 or warmup_steps < 0 or total_steps < 1:
        raise ValueError(
            "need learning_rate > 0, weight_decay >= 0, warmup_steps >= 0 and total_steps >= 1, "
            f"got {learning_rate}, {weight_decay}, {warmup_steps}, {total_steps}"
        )
    warm = min(warmup_steps, total_steps)
    if schedule == "cosine":
        lr = optax.warmup_cosine_decay_schedule(
            0.0, learning_rate, warm, max(total_steps, warm + 1), end_value=0.0
        )
    elif warm:
        lr = optax.join_schedules(
            [
                optax.linear_schedule(0.0, learning_rate, warm),
                optax.constant_schedule(learning_rate),
            ],
            [warm],
        )
    else:
        lr = learning_rate
    if weight_decay:
        return optax.adamw(lr, weight_decay=weight_decay)
    return optax.adam(lr)


def epoch_order(key: Array, y: np.ndarray, balanced: bool) -> np.ndarray:
    """One epoch's example order ``int[N]``: a permutation, or (balanced sampling) ``N`` draws with
    replacement, each class equally likely."""
    n = y.shape[0]
    if not balanced:
        return np.asarray(jax.random.permutation(key, n))
    counts = np.bincount(y)
    p = 1.0 / counts[y]
    p = jnp.asarray(p / p.sum(), jnp.float32)
    return np.asarray(jax.random.choice(key, n, (n,), replace=True, p=p))


@dataclasses.dataclass(frozen=True)
class Augment:
    """Random data augmentation ``augment(key, x[B, H, W, K]) -> x`` for :func:`jaxadv.train.train`.

    Every transform is off by default, and with all off the call returns ``x`` itself (the
    identity). Each example gets its own draw from ``key``, so the result is deterministic by key.
    Flips are off by default because anatomy is not always mirror-symmetric (a chest X-ray's heart
    is on the left: horizontal flips invent situs inversus); dermoscopy tolerates both flips and
    any rotation.

    Attributes:
        hflip: flip left-right with probability 1/2.
        vflip: flip up-down with probability 1/2.
        rotate: maximum rotation in degrees (uniform in ``[-rotate, rotate]``, bilinear, edge
            pixels repeated).
        crop: maximum translation in pixels per axis (a random crop of the edge-padded image).
        brightness: additive intensity jitter, uniform in ``[-brightness, brightness]``.
        contrast: multiplicative jitter around each image's mean, factor in
            ``[1 - contrast, 1 + contrast]``.

    Results are clipped to ``[0, 1]``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> aug = Augment(hflip=True, rotate=10.0, brightness=0.05)
        >>> x = jnp.zeros((2, 8, 8, 1))
        >>> aug(jax.random.key(0), x).shape
        (2, 8, 8, 1)
        >>> Augment()(jax.random.key(0), x) is x
        True
    """

    hflip: bool = False
    vflip: bool = False
    rotate: float = 0.0
    crop: int = 0
    brightness: float = 0.0
    contrast: float = 0.0

    def __post_init__(self) -> None:
        for name in ("rotate", "crop", "brightness", "contrast"):
            v = getattr(self, name)
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"Augment.{name} must be a finite number >= 0, got {v!r}")
        if self.contrast >= 1:
            raise ValueError(f"Augment.contrast must be < 1, got {self.contrast}")
        if int(self.crop) != self.crop:
            raise ValueError(f"Augment.crop is a number of pixels, got {self.crop!r}")

    @property
    def enabled(self) -> bool:
        """Whether any transform is on."""
        return bool(
            self.hflip or self.vflip or self.rotate or self.crop or self.brightness or self.contrast
        )

    def describe(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict (for checkpoint metadata)."""
        return dataclasses.asdict(self)

    def __call__(self, key: Array, x: Array) -> Array:
        if not self.enabled:
            return x
        keys = jax.random.split(key, x.shape[0])
        return jnp.clip(jax.vmap(self._one)(keys, x), 0.0, 1.0).astype(x.dtype)

    def _one(self, key: Array, img: Array) -> Array:
        k = jax.random.split(key, 6)
        h, w = img.shape[0], img.shape[1]
        if self.hflip:
            img = jnp.where(jax.random.bernoulli(k[0]), img[:, ::-1], img)
        if self.vflip:
            img = jnp.where(jax.random.bernoulli(k[1]), img[::-1], img)
        if self.rotate or self.crop:
            img = self._warp(k[2], k[3], img, h, w)
        if self.contrast:
            f = jax.random.uniform(k[4], (), img.dtype, 1 - self.contrast, 1 + self.contrast)
            m = jnp.mean(img)
            img = (img - m) * f + m
        if self.brightness:
            img = img + jax.random.uniform(k[5], (), img.dtype, -self.brightness, self.brightness)
        return img

    def _warp(self, k_rot: Array, k_shift: Array, img: Array, h: int, w: int) -> Array:
        """Rotation about the centre and integer translation, by bilinear resampling with the
        nearest edge pixel outside the image."""
        theta = jnp.deg2rad(jax.random.uniform(k_rot, (), img.dtype, -self.rotate, self.rotate))
        c = int(self.crop)
        shift = jax.random.randint(k_shift, (2,), -c, c + 1).astype(img.dtype)
        yy, xx = jnp.meshgrid(
            jnp.arange(h, dtype=img.dtype), jnp.arange(w, dtype=img.dtype), indexing="ij"
        )
        cy, cx = (h - 1) / 2, (w - 1) / 2
        dy, dx = yy - cy, xx - cx
        sy = jnp.cos(theta) * dy - jnp.sin(theta) * dx + cy + shift[0]
        sx = jnp.sin(theta) * dy + jnp.cos(theta) * dx + cx + shift[1]

        def channel(ch: Array) -> Array:
            return jax.scipy.ndimage.map_coordinates(ch, [sy, sx], order=1, mode="nearest")

        return jax.vmap(channel, in_axes=2, out_axes=2)(img)
