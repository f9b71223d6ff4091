"""The attack calling convention and the registry every contract test runs over."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv import _validate
from jaxadv._struct import is_concrete, replace
from jaxadv.models import as_model
from jaxadv.result import AttackResult

Array = jax.Array

#: name -> attack class; every public attack registers itself (contract tests iterate over it).
REGISTRY: dict[str, type] = {}


_DECLARED = ("oracle", "budget_field", "restarts_field", "threats", "settings")
ORACLES = ("gradient", "scores", "labels")


def register(cls: type) -> type:
    """Add an attack class to :data:`REGISTRY` (apply above ``@pytree_dataclass``).

    The class must declare, on itself, every attribute of :class:`AbstractAttack`'s declaration
    (``oracle``, ``budget_field``, ``restarts_field``, ``threats``, ``settings``). Construction then
    ends with :func:`jaxadv._validate.check_attack`, after the class's own ``__post_init__``: an
    unsupported threat model raises ``TypeError``, a setting outside its declared range
    ``ValueError``.
    """
    missing = [a for a in _DECLARED if a not in vars(cls)]
    if missing:
        raise TypeError(f"{cls.__name__} must declare {', '.join(missing)} (see AbstractAttack)")
    if cls.oracle not in ORACLES:
        raise TypeError(f"{cls.__name__}.oracle must be one of {ORACLES}, got {cls.oracle!r}")
    fields = {f.name for f in dataclasses.fields(cls)}
    for attr in ("budget_field", "restarts_field"):
        name = getattr(cls, attr)
        if name is not None and name not in fields:
            raise TypeError(f"{cls.__name__}.{attr} names {name!r}, which is not a field")
    own_post = cls.__post_init__

    def __post_init__(self) -> None:
        own_post(self)
        _validate.check_attack(self)

    cls.__post_init__ = __post_init__
    REGISTRY[cls.__name__] = cls
    return cls


def example_keys(key: Array, batch: int, offset: int | Array = 0) -> Array:
    """One key per example, ``fold_in(key, example_index)``.

    Randomness then belongs to the example, not to its slot: results do not depend on the batch
    size, on how the batch is sharded, or on which examples an ensemble re-runs.
    """
    if not isinstance(key, jax.Array) or not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(jnp.asarray(key, jnp.uint32))
    idx = jnp.arange(batch, dtype=jnp.uint32) + jnp.asarray(offset, jnp.uint32)
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)


def fold_keys(keys: Array, data: Any) -> Array:
    """``fold_in`` every per-example key ``keys[B]`` with the same ``data`` (a step, a stage)."""
    return jax.vmap(lambda k: jax.random.fold_in(k, data))(keys)


def finite_eps(threat: Any, eps: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Budgets ``eps`` (host values) with every infinite norm-ball budget replaced by the box's
    diameter in that norm for inputs of ``shape`` (:meth:`~jaxadv.threats.AbstractThreat.diameter`):
    the same allowed set, so ``eps=inf`` means "anywhere in the box", but step sizes and
    projections derived from ``eps`` stay finite. L0 budgets are returned unchanged."""
    e = np.asarray(eps, np.float64)
    if threat.p == 0 or not np.any(np.isinf(e)):
        return e
    return np.where(np.isinf(e), threat.diameter(tuple(shape)), e)


def finite_budget(attack: Any, x: Any) -> Any:
    """``attack`` with an infinite norm-ball ``eps`` replaced as in :func:`finite_eps`; traced or
    finite ``eps`` is returned unchanged."""
    eps = getattr(attack.threat, "eps", None)
    if not is_concrete(eps) or np.ndim(eps) != 0 or not np.isinf(eps):
        return attack
    return attack.with_eps(float(finite_eps(attack.threat, eps, tuple(x.shape))))


@jax.jit
def run_jit(attack, keys, model, x, y, target):
    """``attack.run`` compiled (attack, model and arrays are jit arguments: no retrace for new
    leaves)."""
    return attack.run(keys, model, x, y, target=target)


class AbstractAttack:
    """Base class. Subclasses are ``@pytree_dataclass`` values with a ``threat`` field and implement
    ``run(keys, model, x, y, *, target=None) -> AttackResult`` (pure, jittable, per-example keys).

    Every registered class declares what it needs and what it accepts (read by the command line
    and configuration layer, checked at construction by :func:`register`):

    Attributes:
        oracle: what the attack reads from the model: ``"gradient"`` (white box), ``"scores"``
            (probabilities / logits only) or ``"labels"`` (the top-1 label only).
        budget_field: the field setting the iteration / query budget (``"num_steps"``,
            ``"num_queries"``, ...), ``None`` when the attack has none.
        restarts_field: the field setting random restarts, ``None`` when the attack has none.
        threats: the threat-model classes the attack supports.
        settings: field name (dotted for nested values) -> :class:`jaxadv._validate.Range` of its
            valid values, for every numeric setting.
    """

    oracle: ClassVar[str]
    budget_field: ClassVar[str | None]
    restarts_field: ClassVar[str | None]
    threats: ClassVar[tuple[type, ...]]
    settings: ClassVar[Mapping[str, _validate.Range]]

    threat: Any

    def __post_init__(self) -> None:
        """Subclasses normalise their fields here; :func:`register` appends the shared checks."""

    def run(self, keys: Array, model: Any, x: Array, y: Array, *, target: Array | None = None):
        raise NotImplementedError

    def __call__(
        self,
        key: Array,
        model: Any,
        x: Array,
        y: Array,
        *,
        target: Array | None = None,
        validate: bool = True,
        index_offset: int = 0,
    ) -> AttackResult:
        """Attack the batch ``x[B, H, W, K]`` (pixels in the threat's box) with labels ``y[B]``.

        Inputs are normalised first by :func:`jaxadv._validate.normalize_inputs`, the same rule
        for every attack: NumPy arrays and lists are accepted; images of any float dtype are
        attacked in float32 (bfloat16 / float16 upcast; float64 cast down unless
        ``jax_enable_x64`` is on) and ``res.adv`` is returned in that dtype; labels become int32;
        ``key`` may be an int seed. An infinite norm-ball ``eps`` means anywhere in the box.

        Args:
            key: a JAX PRNG key (typed or raw) or an int seed; per-example keys are derived as
                ``fold_in(key, i)``.
            model: a :class:`jaxadv.Model` (``from_nnx`` / ``from_linen`` / ``from_apply``), an NNX
                module, or any callable ``x -> logits[B, C]``.
            x: images, float, NHWC.
            y: true integer labels ``[B]``.
            target: optional target labels ``[B]``: the attack is then targeted.
            validate: run the host-side input checks first (shape, dtype, range, NaN, labels).
            index_offset: data-set index of ``x[0]`` when a data set is attacked in batches, so each
                example keeps its own key ``fold_in(key, index)`` whatever the batching.
        """
        model = as_model(model)
        key, x, y, target = _validate.normalize_inputs(key, x, y, target)
        if validate:
            self.check_inputs(model, x, y, target)
        keys = example_keys(key, x.shape[0], index_offset)
        return run_jit(finite_budget(self, x), keys, model, x, y, target)

    def check_inputs(self, model: Any, x: Array, y: Array, target: Array | None = None) -> int:
        """The host-side checks of a call (images, labels, target, finite clean logits); returns
        the number of classes. Dense attacks check masks instead
        (:func:`jaxadv.segmentation.check_inputs`)."""
        return _validate.check_attack_inputs(self.threat, model, x, y, target)

    def with_eps(self, eps: float | Array):
        """The same attack with a new budget (no retrace: ``eps`` is a leaf)."""
        return replace(self, threat=replace(self.threat, eps=eps))
