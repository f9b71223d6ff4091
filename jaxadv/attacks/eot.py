"""Expectation over Transformation (Athalye et al., 2018) for gradient attacks.

``EOT(attack, transform, num_samples)`` runs ``attack`` unchanged except for its loss gradient:
every gradient evaluation averages the gradients of the loss over ``num_samples`` random draws of
a differentiable ``transform`` (and of a :class:`~jaxadv.attacks.autoattack.RandomizedModel`'s
own randomness, when the model is one). The gradient attacks get their gradient in one place,
:func:`jaxadv.attacks.gradient.loss_grad`; it defers to the model's ``expected_loss_grad`` when the
model has one, and :class:`EOTModel` is that model.

Success is judged by the library as for any attack: on the untransformed ``adv`` with one plain
forward pass of the model (:func:`jaxadv.result.finalize`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv._batch import input_hash
from jaxadv._struct import float32_fields, pytree_dataclass, replace, static
from jaxadv._xla_cpu import canonical_convs
from jaxadv.attacks.apgd import APGD, APGDT
from jaxadv.attacks.autoattack import RandomizedModel
from jaxadv.attacks.base import AbstractAttack, fold_keys
from jaxadv.attacks.fmn import FMN
from jaxadv.attacks.gradient import FGSM, PGD
from jaxadv.attacks.minnorm import DDN
from jaxadv.result import AttackResult
from jaxadv.warp import place

Array = jax.Array

__all__ = ["EOT", "EOTModel", "FunctionTransform", "RandomAffine"]

#: the attacks whose every gradient comes from :func:`jaxadv.attacks.gradient.loss_grad`.
EOT_ATTACKS: tuple[type, ...] = (FGSM, PGD, APGD, APGDT, FMN, DDN)


@pytree_dataclass
class FunctionTransform:
    """A plain function ``fn(keys[B], x[B, H, W, K]) -> x'[B, H, W, K]`` as a transform (static)."""

    fn: Callable = static()

    def __call__(self, keys: Array, x: Array) -> Array:
        return self.fn(keys, x)


@pytree_dataclass
class RandomAffine:
    """Random rotation, zoom and shift of each image (bilinear, zero outside the image).

    Per image: angle uniform in ``[-rotation_max, rotation_max]`` degrees, zoom uniform in
    ``[scale_min, scale_max]`` (about the image centre), shift uniform in
    ``[-translate_max, translate_max]`` times the image side, per axis.
    """

    rotation_max: float | Array = 22.5
    scale_min: float | Array = 0.9
    scale_max: float | Array = 1.1
    translate_max: float | Array = 0.05

    def __post_init__(self) -> None:
        float32_fields(self, "rotation_max", "scale_min", "scale_max", "translate_max")
        vals = (self.rotation_max, self.scale_min, self.scale_max, self.translate_max)
        if all(isinstance(v, np.floating) for v in vals):
            if not 0 < self.scale_min <= self.scale_max:
                raise ValueError(
                    f"RandomAffine needs 0 < scale_min <= scale_max, got {self.scale_min}, "
                    f"{self.scale_max}"
                )
            if self.rotation_max < 0 or self.translate_max < 0:
                raise ValueError("RandomAffine: rotation_max and translate_max must be >= 0")

    def params(self, keys: Array, shape: tuple[int, ...]) -> dict[str, Array]:
        """Per-image draws: ``angle[B]`` (radians), ``zoom[B]``, ``center[B, 2]`` (pixels)."""
        h, w = shape[1], shape[2]

        def one(k):
            ka, kz, ks = jax.random.split(k, 3)
            a = jax.random.uniform(ka, (), jnp.float32, -1.0, 1.0) * self.rotation_max
            z = jax.random.uniform(kz, (), jnp.float32, self.scale_min, self.scale_max)
            s = jax.random.uniform(ks, (2,), jnp.float32, -1.0, 1.0) * self.translate_max
            c = jnp.asarray([(h - 1) / 2, (w - 1) / 2], jnp.float32) + s * jnp.asarray(
                [h, w], jnp.float32
            )
            return a * (math.pi / 180), z, c

        angle, zoom, center = jax.vmap(one)(keys)
        return {"angle": angle, "zoom": zoom, "center": center}

    def __call__(self, keys: Array, x: Array) -> Array:
        p = self.params(keys, x.shape)
        out = jax.vmap(place, in_axes=(0, 0, 0, 0, None))
        return out(x, p["angle"], p["zoom"], p["center"], x.shape[1:3]).astype(x.dtype)


def as_transform(transform: Any) -> Any:
    """A pytree transform as given; a plain function wrapped in :class:`FunctionTransform`."""
    leaves = jax.tree_util.tree_leaves(transform)
    if len(leaves) == 1 and leaves[0] is transform:
        if not callable(transform):
            raise TypeError(
                "transform must be callable as transform(keys[B], x[B, H, W, K]) -> x', got "
                f"{type(transform).__name__}"
            )
        return FunctionTransform(fn=transform)
    return transform


@pytree_dataclass
class EOTModel:
    """``model`` whose loss gradient is the mean over ``num_samples`` transformed draws.

    Called as ``m(x)`` it is the plain ``model`` (no transform): success is judged there. Draw
    ``s`` of example ``i`` is keyed by ``keys[i]``, ``s`` and a fingerprint of the current input,
    so every new iterate gets new draws and the run stays a pure function of the key.
    """

    model: Any
    transform: Any
    keys: Array
    num_samples: int = static(default=8)

    def __call__(self, x: Array) -> Array:
        return self.model(x)

    def _draw(self, keys: Array, xt: Array) -> Array:
        if isinstance(self.model, RandomizedModel):
            return self.model.sample(xt, fold_keys(keys, 1))
        return self.model(xt)

    def expected_loss_grad(self, loss_fn: Callable, x: Array, lbl: Array):
        """Mean per-example loss ``[B]`` over the draws, its input gradient ``[B, ...]`` and the
        plain logits at ``x`` (the signature of :func:`jaxadv.attacks.gradient.loss_grad`)."""
        if self.keys.shape[0] != x.shape[0]:
            raise ValueError(
                f"EOTModel holds {self.keys.shape[0]} example keys for a batch of {x.shape[0]}"
            )
        h = input_hash(x)

        def total(xa):
            def one(s):
                k = jax.vmap(lambda kk, v: jax.random.fold_in(jax.random.fold_in(kk, s), v))(
                    self.keys, h
                )
                return loss_fn(self._draw(k, self.transform(k, xa)), lbl)

            per = jnp.mean(jax.vmap(one)(jnp.arange(self.num_samples, dtype=jnp.uint32)), axis=0)
            return jnp.sum(per), per

        g, per = canonical_convs(jax.grad(total, has_aux=True))(x)
        return g, per, self.model(x)


@pytree_dataclass
class EOT(AbstractAttack):
    """Expectation over Transformation: ``attack`` with every loss gradient averaged over
    ``num_samples`` random draws of ``transform`` (Athalye, Engstrom, Ilyas & Kwok, 2018).

    ``transform(keys[B], x[B, H, W, K]) -> x'`` must be differentiable in ``x`` (e.g.
    :class:`RandomAffine`, or any function). Against a
    :class:`~jaxadv.attacks.autoattack.RandomizedModel` the model's own randomness is drawn per
    sample too (use ``FunctionTransform(fn=lambda k, x: x)`` for EOT over the model alone).

    ``queries`` counts every model evaluation: ``num_samples`` per gradient plus the plain
    evaluations the attack and the library make.

    Attributes:
        attack: a gradient attack (:data:`EOT_ATTACKS`: FGSM, PGD, APGD, APGDT, FMN, DDN).
        transform: the random differentiable transform (pytree or plain function).
        num_samples: draws per gradient (static).

    Example:
        >>> import jax, jax.numpy as jnp, jaxadv
        >>> from jaxadv.attacks.eot import EOT, RandomAffine
        >>> model = jaxadv.from_apply(lambda w, x: x.reshape(x.shape[0], -1) @ w, jnp.ones((16, 2)))
        >>> eot = EOT(attack=jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.1), num_steps=2),
        ...           transform=RandomAffine(), num_samples=4)
        >>> res = eot(jax.random.key(0), model, jnp.full((2, 4, 4, 1), 0.5), jnp.array([0, 1]))
        >>> res.adv.shape
        (2, 4, 4, 1)
    """

    attack: Any
    transform: Any = None
    num_samples: int = static(default=8)

    def __post_init__(self) -> None:
        if not isinstance(self.attack, EOT_ATTACKS):
            names = ", ".join(c.__name__ for c in EOT_ATTACKS)
            raise TypeError(
                f"EOT wraps a gradient attack whose gradients it can average ({names}); got "
                f"{type(self.attack).__name__}"
            )
        if self.transform is None:
            raise ValueError("EOT needs transform=..., e.g. RandomAffine() or a function")
        object.__setattr__(self, "transform", as_transform(self.transform))
        n = self.num_samples
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"EOT num_samples must be an int >= 1, got {n!r}")

    @property
    def threat(self) -> Any:
        return self.attack.threat

    def with_eps(self, eps: float | Array) -> EOT:
        return replace(self, attack=self.attack.with_eps(eps))

    def run(self, keys, model, x, y, *, target=None) -> AttackResult:
        m = EOTModel(
            model=model,
            transform=self.transform,
            keys=fold_keys(keys, 0xE07),
            num_samples=self.num_samples,
        )
        res = self.attack.run(keys, m, x, y, target=target)
        # the attacks count one query per gradient plus the library's final forward; a gradient
        # here costs num_samples transformed forwards plus one plain forward
        q = 1 + (res.queries - 1) * (self.num_samples + 1)
        return replace(res, queries=q.astype(jnp.int32))
