"""Transfer attacks: craft on a surrogate (or an ensemble), evaluate on the target.

The realistic attacker of a hospital model has no access to it: they train their own model (same
or another architecture) and hope the adversarial examples transfer (Finlayson et al., 2019;
Bortsova et al., 2021). :func:`transfer` runs any attack on the surrogate and hands the result to
:func:`jaxadv.result.finalize` on the *target*, so success, margin and norm are the target's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxadv import _validate
from jaxadv._struct import pytree_dataclass, replace
from jaxadv.attacks.base import example_keys, finite_budget, run_jit
from jaxadv.models import as_model
from jaxadv.result import AttackResult, finalize

Array = jax.Array


@pytree_dataclass
class Ensemble:
    """The mean logits of several models (Liu et al., 2017): ``x[B, ...] -> logits[B, C]``.

    Attributes:
        models: a tuple of models with the same input shape and class count.
    """

    models: tuple

    def __call__(self, x: Array) -> Array:
        return jnp.mean(jnp.stack([m(x) for m in self.models]), axis=0)


def _out_shape(model: Any, x: Array, role: str) -> tuple[int, ...]:
    out = _validate.trace_output(
        model,
        x,
        who=f"transfer: the {role}",
        fails="cannot take inputs of",
        hint="; surrogate and target must accept the same images (resize or convert the channels "
        "in a wrapper)",
    )
    shape = tuple(getattr(out, "shape", ()))
    if len(shape) != 2 or shape[0] != x.shape[0]:
        raise ValueError(
            f"transfer: the {role} must return logits [B, C] for B={x.shape[0]} images, got {shape}"
        )
    return shape


def as_surrogate(surrogate: Any) -> Any:
    """A model from a model or a non-empty sequence of models (an :class:`Ensemble`)."""
    if isinstance(surrogate, (list, tuple)):
        if not surrogate:
            raise ValueError("transfer: the surrogate ensemble is empty; pass at least one model")
        return Ensemble(models=tuple(as_model(m) for m in surrogate))
    return as_model(surrogate)


def check_pair(surrogate: Any, target: Any, x: Any) -> None:
    """Raise a one-line ``ValueError`` unless ``surrogate`` (every member of an ensemble) and
    ``target`` take images shaped like ``x[B, H, W, K]`` and return logits with the same class
    count. Only shapes are traced (``jax.eval_shape``): nothing is computed."""
    t_shape = _out_shape(target, x, "target")
    members = surrogate.models if isinstance(surrogate, Ensemble) else (surrogate,)
    for i, m in enumerate(members):
        role = f"surrogate {i}" if isinstance(surrogate, Ensemble) else "surrogate"
        s_shape = _out_shape(m, x, role)
        if s_shape[1] != t_shape[1]:
            raise ValueError(
                f"transfer: the {role} has {s_shape[1]} classes but the target has {t_shape[1]}; "
                "a transfer attack needs the same label space (map the labels in a wrapper)"
            )


@pytree_dataclass
class Transfer:
    """An attack value that crafts on ``surrogate`` and is judged on the model it is called with.

    ``Transfer(attack, surrogate).run(keys, target, x, y)`` runs ``attack`` on the surrogate and
    hands ``adv`` to :func:`jaxadv.result.finalize` on the *target*, exactly like
    :func:`transfer`; being an attack value (``threat``, ``with_eps``, ``run``), it goes through
    :func:`jaxadv.evaluate` (padding, sharding, eps grid, cascade) unchanged: this is how
    ``jaxadv sweep`` runs its ``surrogate:`` cells. Check the pair first with :func:`check_pair`
    (:func:`jaxadv.evaluate` checks the inputs against the target only).

    Attributes:
        attack: the attack run on the surrogate (white box on it).
        surrogate: a model or an :class:`Ensemble` (see :func:`as_surrogate`).

    Example:
        >>> import jax, numpy as np, jaxadv
        >>> w = jax.random.normal(jax.random.key(0), (16, 2))
        >>> f = jaxadv.from_apply(lambda w, x: x.reshape(x.shape[0], -1) @ w, w)
        >>> x, y = np.full((4, 4, 4, 1), 0.5, np.float32), np.array([0, 1, 0, 1])
        >>> pgd = jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.0), num_steps=3)
        >>> atk = jaxadv.Transfer(attack=pgd, surrogate=f.with_params(w + 0.1))
        >>> jaxadv.evaluate(atk, f, (x, y), [0.0, 0.1], key=0).robust_accuracy.shape
        (2,)
    """

    attack: Any
    surrogate: Any

    @property
    def threat(self) -> Any:
        return self.attack.threat

    def with_eps(self, eps: Any) -> Transfer:
        """The same transfer attack with a new budget (no retrace)."""
        return replace(self, attack=self.attack.with_eps(eps))

    def run(self, keys: Array, model: Any, x: Array, y: Array, *, target=None) -> AttackResult:
        """Pure and jittable: ``adv`` from the surrogate, every other field from ``model``."""
        res = self.attack.run(keys, self.surrogate, x, y, target=target)
        out = finalize(self.attack.threat, model, x, res.adv, y, target=target)
        info = {**out.info, "surrogate_success": res.success, "surrogate_queries": res.queries}
        return replace(out, info=info)


def transfer(
    attack: Any,
    surrogate: Any | Sequence[Any],
    target: Any,
    key: Any,
    x: Any,
    y: Any,
    *,
    target_labels: Any = None,
    validate: bool = True,
    index_offset: int = 0,
) -> AttackResult:
    """Craft ``attack`` on ``surrogate`` and evaluate the adversarial images on ``target``.

    Args:
        attack: any attack value (white box on the surrogate: ``PGD``, ``MIFGSM``, ...).
        surrogate: a model, or a sequence of models attacked through their averaged logits.
        target: the model the examples are evaluated on (queried once per image).
        key: PRNG key or int seed (the attack's per-example keys, as in a direct call).
        x: images ``[B, H, W, K]``; y: true labels ``[B]``.
        target_labels: optional target classes ``[B]`` (a targeted transfer attack).
        validate: host-side input checks (run on the target here, on the surrogate by the attack).
        index_offset: data-set index of ``x[0]`` (see :meth:`AbstractAttack.__call__`).

    Returns:
        The target's :class:`~jaxadv.AttackResult`: ``adv`` crafted on the surrogate, ``success``,
        ``loss`` (margin) and ``norm`` on the target, ``queries`` 1 (the target's evaluation);
        ``info["surrogate_success"]`` and ``info["surrogate_queries"]`` (``[B]``) are the
        surrogate's. With ``surrogate is target`` every field but ``queries`` equals the white-box
        result.

    Raises:
        ValueError: surrogate and target (or ensemble members) do not take the same input shape
            or do not have the same number of classes (checked before any attack step).

    Example:
        >>> import jax, jax.numpy as jnp, jaxadv
        >>> w = jax.random.normal(jax.random.key(0), (16, 2))
        >>> f = jaxadv.from_apply(lambda w, x: x.reshape(x.shape[0], -1) @ w, w)
        >>> g = f.with_params(w + 0.1)
        >>> x = jnp.full((2, 4, 4, 1), 0.5)
        >>> y = jnp.argmax(f(x), axis=1)
        >>> res = jaxadv.transfer(jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.1)), g, f, 0, x, y)
        >>> res.info["surrogate_success"].shape
        (2,)
    """
    surrogate = as_surrogate(surrogate)
    target = as_model(target)
    key, x, y, tl = _validate.normalize_inputs(key, x, y, target_labels)
    check_pair(surrogate, target, x)
    if validate:
        _validate.check_attack_inputs(attack.threat, target, x, y, tl)
        attack.check_inputs(surrogate, x, y, tl)
    keys = example_keys(key, x.shape[0], index_offset)
    return run_jit(
        Transfer(attack=finite_budget(attack, x), surrogate=surrogate), keys, target, x, y, tl
    )
