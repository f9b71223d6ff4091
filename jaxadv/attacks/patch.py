"""Adversarial patch with Expectation over Transformation (Brown, Mané, Roy, Abadi & Gilmer, 2017,
"Adversarial Patch"; medical settings of Finlayson et al., 2019, "Adversarial attacks on medical
machine learning", Science).

A targeted, universal patch: one ``patch[P, P, K]`` that, pasted anywhere on any image at any
rotation and scale of its training range, makes the model predict ``target``. Fitting maximises
``E_{x, t, l} log p(target | A(patch, x, l, t))`` by minibatch Adam (:meth:`AbstractUniversal.fit`);
each image of a minibatch gets its own rotation, scale and location, drawn inside the jitted step,
so EOT averaging comes from the batch.

Scale is the patch's side as a fraction of the image's shorter side: a square patch at scale ``s``
covers ``s**2`` of a square image, a circle ``pi s**2 / 4``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxadv import losses as L
from jaxadv._struct import float32_fields, pytree_dataclass, replace, static
from jaxadv.attacks.base import AbstractAttack, example_keys
from jaxadv.attacks.universal import FITTED, AbstractUniversal, _check_int, save_fitted
from jaxadv.models import as_model
from jaxadv.result import AttackResult, finalize
from jaxadv.threats import L0Pixels
from jaxadv.warp import place

Array = jax.Array

__all__ = ["AdversarialPatch", "FittedPatch", "patch_mask", "render_patch"]

SHAPES = ("circle", "square")


def patch_mask(size: int, shape: str) -> np.ndarray:
    """``f32[size, size]`` mask of the patch: 1 inside the circle (or square), 0 outside."""
    if shape == "square":
        return np.ones((size, size), np.float32)
    c = (size - 1) / 2
    r, q = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    return ((r - c) ** 2 + (q - c) ** 2 <= (size / 2) ** 2).astype(np.float32)


def render_patch(
    x: Array, patch: Array, mask: Array, angle: Array, scale: Array, center: Array, lo=0.0, hi=1.0
) -> Array:
    """Paste ``patch[P, P, K]`` (where ``mask[P, P]`` is 1) onto each image of ``x[B, H, W, K]``.

    Per image: rotation ``angle[B]`` (radians), ``scale[B]`` (patch side / shorter image side),
    ``center[B, 2]`` (pixel ``(row, col)``). The warped mask blends the warped patch in
    (premultiplied, so the bilinear edges do not darken): ``x (1 - m') + (p m)'``, clipped to the box.
    """
    h, w = x.shape[1], x.shape[2]
    src = jnp.concatenate([patch * mask[..., None], mask[..., None]], axis=-1).astype(x.dtype)
    zoom = scale * min(h, w) / patch.shape[0]
    warped = jax.vmap(place, in_axes=(None, 0, 0, 0, None))(src, angle, zoom, center, (h, w))
    k = x.shape[-1]
    pm, m = warped[..., :k], warped[..., k:]
    return jnp.clip(x * (1 - m) + pm, lo, hi)


@pytree_dataclass
class AdversarialPatch(AbstractUniversal):
    """Targeted universal adversarial patch, robust to rotation, scale and placement (EOT).

    Attributes:
        target: the class the patch should force (static).
        patch_size: the patch's own resolution ``P`` in pixels (static); ``None`` means the
            image's shorter side.
        shape: ``'circle'`` or ``'square'`` mask (static).
        scale_min, scale_max: range of the patch side as a fraction of the shorter image side
            (``0 < scale_min <= scale_max <= 1``; Finlayson: 0.1 to 1.0 in training).
        rotation_max: rotations are uniform in ``[-rotation_max, rotation_max]`` degrees (22.5).
        learning_rate: Adam step on the patch's pixels (in box units).
        disguise: optional start image ``p0[P, P, K]``; with ``disguise_eps`` the patch stays within
            ``||p - p0||_inf <= disguise_eps`` (Brown et al.'s disguised patch).
        disguise_eps: the disguise bound (``inf``: the patch only starts at ``p0``).
        disguise_weight: the penalty form of the disguise: ``disguise_weight * ||p - p0||``
            (root mean square over the patch's masked pixels) is added to the loss the fit
            minimises, trading success for likeness where the bound forbids nothing; ``0``: none.
            Needs ``disguise``; combines with ``disguise_eps``.
        lo, hi: the pixel box.
        eot_samples: transforms per image per step (static): each minibatch image is tiled
            ``eot_samples`` times, each copy with its own rotation, scale and place.
        batch_size, num_epochs: minibatch size and passes over the data (static).

    Success on held-out images is "classified as ``target``"; Finlayson's ``winp`` is its rate
    over the images whose label is not the target (``info['eligible']``).
    """

    target: int = static(default=1)
    patch_size: int | None = static(default=None)
    shape: str = static(default="circle")
    scale_min: float | Array = 0.1
    scale_max: float | Array = 1.0
    rotation_max: float | Array = 22.5
    learning_rate: float | Array = 0.05
    disguise: Array | None = None
    disguise_eps: float | Array = math.inf
    disguise_weight: float | Array = 0.0
    lo: float | Array = 0.0
    hi: float | Array = 1.0
    eot_samples: int = static(default=1)
    batch_size: int = static(default=16)
    num_epochs: int = static(default=5)

    def __post_init__(self) -> None:
        float32_fields(
            self,
            "scale_min",
            "scale_max",
            "rotation_max",
            "learning_rate",
            "disguise_eps",
            "disguise_weight",
        )
        float32_fields(self, "lo", "hi")
        _check_int("target", self.target, 0)
        _check_int("batch_size", self.batch_size, 1)
        _check_int("num_epochs", self.num_epochs, 1)
        _check_int("eot_samples", self.eot_samples, 1)
        if self.patch_size is not None:
            _check_int("patch_size", self.patch_size, 2)
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}, got {self.shape!r}")
        s0, s1 = self.scale_min, self.scale_max
        if isinstance(s0, np.floating) and isinstance(s1, np.floating):
            if not 0 < s0 <= s1:
                raise ValueError(f"need 0 < scale_min <= scale_max, got {s0}, {s1}")
            if s1 > 1:
                raise ValueError(
                    f"scale_max={s1}: the patch would be larger than the image (scale is the "
                    "patch side over the image's shorter side); use scale_max <= 1"
                )
        if isinstance(self.rotation_max, np.floating) and not 0 <= self.rotation_max <= 180:
            raise ValueError(f"rotation_max must lie in [0, 180] degrees, got {self.rotation_max}")
        if isinstance(self.learning_rate, np.floating) and not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        for name in ("disguise_eps", "disguise_weight"):
            v = getattr(self, name)
            if isinstance(v, np.floating) and not v >= 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        if self.disguise is not None:
            d = self.disguise
            if np.ndim(d) != 3 or d.shape[0] != d.shape[1]:
                raise ValueError(f"disguise must be a square image [P, P, K], got {np.shape(d)}")
            if self.patch_size is not None and d.shape[0] != self.patch_size:
                raise ValueError(f"disguise is {d.shape[0]} px, patch_size={self.patch_size}")

    # -- configuration helpers ------------------------------------------------------------------
    def size(self, image_shape: tuple[int, ...]) -> int:
        if self.disguise is not None:
            return int(self.disguise.shape[0])
        return self.patch_size if self.patch_size is not None else min(image_shape[:2])

    def mask(self, size: int) -> Array:
        return jnp.asarray(patch_mask(size, self.shape))

    def check_data(self, ds: Any, num_classes: int) -> None:
        if self.target >= num_classes:
            raise ValueError(
                f"target={self.target} is out of range for a model with {num_classes} classes"
            )
        if self.disguise is None and _positive(self.disguise_weight):
            raise ValueError(
                "disguise_weight penalises the distance to a disguise image: give disguise=p0 "
                "(a [P, P, K] image) or set disguise_weight=0"
            )
        if self.disguise is not None and self.disguise.shape[-1] != ds.image_shape[-1]:
            raise ValueError(
                f"disguise has {self.disguise.shape[-1]} channels, the images {ds.image_shape[-1]}"
            )

    def draw(self, keys: Array, image_shape: tuple[int, ...]) -> dict[str, Array]:
        """Per-image transforms: ``angle[B]`` (radians), ``scale[B]``, ``center[B, 2]``; the
        location is uniform over the positions that keep the (rotated) patch inside the image."""
        h, w = image_shape[0], image_shape[1]
        side = min(h, w)
        corner = math.sqrt(2.0) if self.shape == "square" else 1.0

        def one(k):
            ka, ks, kr, kc = jax.random.split(k, 4)
            a = jax.random.uniform(ka, (), jnp.float32, -1.0, 1.0) * self.rotation_max
            s = jax.random.uniform(ks, (), jnp.float32, self.scale_min, self.scale_max)
            # a rotated square reaches further than its half side (at most sqrt 2 times)
            turn = jnp.abs(jnp.sin(2 * a * math.pi / 180))
            ext = s * side / 2 * (1 + (corner - 1) * turn)

            def pos(kk, n):
                lo_c = jnp.minimum(ext - 0.5, (n - 1) / 2)
                hi_c = jnp.maximum(n - 0.5 - ext, (n - 1) / 2)
                return jax.random.uniform(kk, (), jnp.float32, lo_c, hi_c)

            return a * (math.pi / 180), s, jnp.stack([pos(kr, h), pos(kc, w)])

        angle, scale, center = jax.vmap(one)(keys)
        return {"angle": angle, "scale": scale, "center": center}

    # -- the fit --------------------------------------------------------------------------------
    def optimizer(self) -> optax.GradientTransformation:
        return optax.adam(jnp.asarray(self.learning_rate, jnp.float32))

    def init_params(self, key: Array, image_shape: tuple[int, int, int]) -> Array:
        if self.disguise is not None:
            return jnp.asarray(self.disguise, jnp.float32)
        p = self.size(image_shape)
        return jax.random.uniform(key, (p, p, image_shape[-1]), jnp.float32, self.lo, self.hi)

    def project_params(self, patch: Array) -> Array:
        if self.disguise is not None:
            d = jnp.asarray(self.disguise, patch.dtype)
            patch = jnp.clip(patch, d - self.disguise_eps, d + self.disguise_eps)
        return jnp.clip(patch, self.lo, self.hi)

    def fit_loss(self, patch: Array, key: Array, model: Any, x: Array, y: Array) -> Array:
        if self.eot_samples > 1:
            x = jnp.repeat(x, self.eot_samples, axis=0)
        keys = example_keys(key, x.shape[0])
        t = self.draw(keys, x.shape[1:])
        adv = render_patch(
            x,
            patch,
            self.mask(patch.shape[0]),
            t["angle"],
            t["scale"],
            t["center"],
            self.lo,
            self.hi,
        )
        tgt = jnp.full((x.shape[0],), self.target, jnp.int32)
        loss = jnp.mean(L.ce(model(adv), tgt))
        if self.disguise is None:
            return loss
        return loss + self.disguise_weight * self.disguise_distance(patch)

    def disguise_distance(self, patch: Array) -> Array:
        """Root mean square of ``patch - disguise`` over the mask's pixels (0 without a disguise);
        its gradient at ``patch == disguise`` is 0, not NaN."""
        if self.disguise is None:
            return jnp.zeros((), jnp.float32)
        m = self.mask(patch.shape[0])[..., None]
        sq = jnp.sum(m * (patch - jnp.asarray(self.disguise, patch.dtype)) ** 2)
        ms = sq / (jnp.sum(m) * patch.shape[-1])
        safe = jnp.where(ms > 0, ms, 1.0)
        return jnp.where(ms > 0, jnp.sqrt(safe), 0.0)

    def fitted(self, patch: Array) -> FittedPatch:
        return FittedPatch(attack=self, patch=patch)

    def settings_dict(self) -> dict:
        return {
            "target": self.target,
            "patch_size": self.patch_size,
            "shape": self.shape,
            "scale_min": float(self.scale_min),
            "scale_max": float(self.scale_max),
            "rotation_max": float(self.rotation_max),
            "learning_rate": float(self.learning_rate),
            "disguise_eps": float(self.disguise_eps),
            "disguise_weight": float(self.disguise_weight),
            "lo": float(self.lo),
            "hi": float(self.hi),
            "eot_samples": self.eot_samples,
            "batch_size": self.batch_size,
            "num_epochs": self.num_epochs,
        }


@pytree_dataclass
class FittedPatch(AbstractAttack):
    """A fitted patch ``patch[P, P, K]`` and its attack's settings: an ordinary attack
    ``fitted(key, model, x, y) -> AttackResult`` (so :func:`jaxadv.sharding.attack_sharded` and
    per-example keys work as for every attack).

    Each image gets the patch at a random rotation, location and scale from the fit's ranges
    (``eval_scale``, or ``scale=`` in the call, fixes the scale, e.g. Finlayson's 0.4).
    ``success`` = classified as the target, recomputed by the library on the rendered ``adv``;
    ``norm`` = pixels changed. ``info``: the per-example transform ``angle`` (radians), ``scale``,
    ``center[B, 2]``, ``area`` (patch area / image area) and ``eligible`` (label is not the target:
    Finlayson's ``winp`` is the success rate there).
    """

    attack: AdversarialPatch
    patch: Array
    eval_scale: float | Array | None = None

    @staticmethod
    def attack_from_settings(s: Mapping[str, Any]) -> AdversarialPatch:
        return AdversarialPatch(**s)

    @property
    def mask(self) -> Array:
        return self.attack.mask(self.patch.shape[0])

    @property
    def threat(self) -> L0Pixels:
        """The check ``finalize`` applies: the box (``norm`` counts the changed pixels)."""
        return L0Pixels(eps=np.inf, lo=self.attack.lo, hi=self.attack.hi)

    def with_eps(self, eps: float | Array) -> FittedPatch:
        return self  # the patch has no norm budget (its size is the scale)

    def __call__(
        self,
        key: Array | int,
        model: Any,
        x: Array,
        y: Array,
        *,
        target: Array | None = None,
        scale: float | None = None,
        validate: bool = True,
        index_offset: int = 0,
    ) -> AttackResult:
        """Attack ``x[B, H, W, K]`` with labels ``y[B]`` (see the class docstring)."""
        if target is not None:
            raise ValueError(f"the patch's target is fixed at fit time ({self.attack.target})")
        model = as_model(model)
        x = jnp.asarray(x)
        n_cls = int(jax.eval_shape(model, jax.ShapeDtypeStruct(x.shape, jnp.float32)).shape[-1])
        self.attack.check_data(_Shape(x.shape[1:]), n_cls)
        fitted = self
        if scale is not None:
            if not 0 < scale <= 1:
                raise ValueError(f"scale must lie in (0, 1], got {scale}")
            fitted = replace(self, eval_scale=np.float32(scale))
        return AbstractAttack.__call__(
            fitted, key, model, x, y, validate=validate, index_offset=index_offset
        )

    def run(self, keys, model, x, y, *, target=None) -> AttackResult:
        a = self.attack
        t = a.draw(keys, x.shape[1:])
        if self.eval_scale is not None:
            t["scale"] = jnp.full_like(t["scale"], self.eval_scale)
        adv = render_patch(
            x, self.patch, self.mask, t["angle"], t["scale"], t["center"], a.lo, a.hi
        )
        tgt = jnp.full((x.shape[0],), a.target, jnp.int32)
        res = finalize(self.threat, model, x, adv, y, target=tgt)
        h, w = x.shape[1], x.shape[2]
        frac = float(np.mean(patch_mask(self.patch.shape[0], a.shape)))
        area = frac * (t["scale"] * min(h, w)) ** 2 / (h * w)
        info = {**res.info, **t, "area": area, "eligible": y != a.target}
        return replace(res, info=info)

    def save(self, path: str | os.PathLike) -> None:
        """``path`` (.npz) and a PNG of the patch (mask as the alpha channel). The settings are
        saved, the ``disguise`` start image is not (the fitted patch already satisfies it)."""
        save_fitted(self, path, np.asarray(self.patch), np.asarray(self.mask))


FITTED["FittedPatch"] = FittedPatch


def _positive(v: Any) -> bool:
    """Whether a host setting is known to be > 0 (a traced value is not inspected)."""
    return isinstance(v, (float, np.floating)) and v > 0


class _Shape:
    def __init__(self, shape):
        self.image_shape = tuple(shape)
