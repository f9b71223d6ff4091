"""Transfer attacks: craft on a surrogate (or an ensemble), evaluate on the target.

The realistic attacker of a hospital model has no access to it: they train their own model (same
or another architecture) and hope the adversarial examples transfer (Finlayson et al., 2019;
Bortsova et al., 2021). :func:`transfer` runs any attack on the surrogate and hands the result to
:func:`jaxadv.result.finalize` on the *target*, so success, margin and norm are the target's.
:func:`surrogate_from_queries` builds such a surrogate from the target's answers alone (Papernot et
al., 2017: label-only queries on unlabelled images, with a query budget).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

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


@dataclasses.dataclass(frozen=True)
class QueriedSurrogate:
    """The result of :func:`surrogate_from_queries`.

    Attributes:
        model: the trained surrogate as a :class:`jaxadv.Model` (eval mode, its normalisation).
        queries: target queries spent on training labels (= the budget).
        agreement: fraction of ``eval_x`` on which surrogate and target predict the same class
            (``None`` without ``eval_x``); ``eval_queries`` target queries were spent measuring it.
        eval_queries: target queries spent on ``eval_x`` (0 without it).
        label_counts: how many training images the target put in each class (``[C]``): a target
            that answers one class only gives a useless surrogate.
        history: :func:`jaxadv.train.train`'s per-epoch records.
    """

    model: Any
    queries: int
    agreement: float | None
    eval_queries: int
    label_counts: tuple[int, ...]
    history: list


def _target_labels(target: Any, x: np.ndarray, batch_size: int) -> np.ndarray:
    """The target's top-1 class of every image (one query each), in fixed-size blocks."""
    from jaxadv.detect.common import batched

    fn = jax.jit(lambda xb: jnp.argmax(target(xb), axis=1))
    return np.asarray(batched(fn, x, batch_size=batch_size), np.int32)


def surrogate_from_queries(
    key: Any,
    target: Any,
    module: Any,
    x: Any,
    *,
    budget: int,
    epochs: int = 10,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    val_fraction: float = 0.1,
    eval_x: Any = None,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
    query_batch_size: int = 256,
) -> QueriedSurrogate:
    """Train ``module`` on the labels a black-box ``target`` gives to unlabelled images.

    The attacker holds a pool of unlabelled images ``x`` (e.g. the train split without its labels,
    or images from another hospital), queries the target's top-1 class on ``budget`` of them (a
    seeded random choice: one query per image, the target's logits are never read beyond their
    argmax) and trains ``module`` on those answers with :func:`jaxadv.train.train` (plain
    cross-entropy, Adam; ``val_fraction`` of the queried images select the best epoch by
    agreement, so no true label and no extra query is used). Use the result with
    :func:`transfer`.

    Args:
        key: PRNG key or int seed: the choice of queried images, the hold-out and training.
        target: the black-box model ``x -> logits[B, C]`` (only its argmax is used).
        module: a fresh Flax NNX classifier of the attacker's chosen architecture, trained in place
            (pixel input after ``(x - mean) / std``), returning ``C`` logits like the target.
        x: the unlabelled pool ``[N, H, W, K]`` float in ``[0, 1]`` (NumPy or JAX).
        budget: target queries for training labels, ``1 < budget <= N``.
        epochs, batch_size, learning_rate: of the training (see :func:`jaxadv.train.train`).
        val_fraction: share of the queried images held out for model selection, in ``[0, 1)``.
        eval_x: optional images (not in ``x``) on which to measure agreement with the target; each
            costs one more query, reported as ``eval_queries``, never counted in ``queries``.
        mean, std: the module's input normalisation (recorded in the returned model).
        query_batch_size: images per target call.

    Returns:
        A :class:`QueriedSurrogate`.

    Raises:
        ValueError: a budget outside ``(1, N]``, a bad ``val_fraction``, images that are not float
            in ``[0, 1]``, or a module whose class count differs from the target's (all before any
            query).

    Example:
        >>> import jax, jax.numpy as jnp, jaxadv
        >>> from flax import nnx
        >>> from jaxadv.nn import SmallCNN
        >>> w = jax.random.normal(jax.random.key(0), (784, 2))
        >>> target = jaxadv.from_apply(lambda w, x: x.reshape(x.shape[0], -1) @ w, w)
        >>> pool = jax.random.uniform(jax.random.key(1), (40, 28, 28, 1))
        >>> sur = jaxadv.surrogate_from_queries(
        ...     0, target, SmallCNN(2, 1, width=4, rngs=nnx.Rngs(0)), pool, budget=32, epochs=1,
        ...     batch_size=16)
        >>> sur.queries, sum(sur.label_counts)
        (32, 32)
    """
    from jaxadv.models import from_nnx
    from jaxadv.train import train

    target = as_model(target)
    key = _validate.normalize_key(key)
    x = np.asarray(x)
    _validate.check_images(x, name="x")
    n = x.shape[0]
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or not 1 < budget <= n:
        raise ValueError(
            f"surrogate_from_queries: budget must be an integer in (1, {n}] (the pool has {n} "
            f"images), got {budget!r}"
        )
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(
            f"surrogate_from_queries: val_fraction must be in [0, 1), got {val_fraction}"
        )
    if eval_x is not None:
        eval_x = np.asarray(eval_x)
        _validate.check_images(eval_x, name="eval_x")
    t_classes = _out_shape(target, jnp.asarray(x[:1]), "target")[1]
    probe = from_nnx(module, mean=mean, std=std)
    s_classes = _out_shape(probe, jnp.asarray(x[:1]), "surrogate")[1]
    if s_classes != t_classes:
        raise ValueError(
            f"surrogate_from_queries: the module returns {s_classes} logits but the target has "
            f"{t_classes} classes; build the surrogate with num_classes={t_classes}"
        )
    k_pick, k_split, k_train = jax.random.split(key, 3)
    pick = np.asarray(jax.random.permutation(k_pick, n))[:budget]
    xq = x[np.sort(pick)]
    yq = _target_labels(target, xq, query_batch_size)
    counts = np.bincount(yq, minlength=t_classes)  # every answer, before the hold-out split
    n_val = int(round(float(val_fraction) * budget))
    order = np.asarray(jax.random.permutation(k_split, budget))
    val = None
    if n_val > 0 and budget - n_val > 0:
        v, t = order[:n_val], order[n_val:]
        val = (xq[v], yq[v])
        xq, yq = xq[t], yq[t]
    history = train(
        module, xq, yq, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
        key=k_train, val=val, mean=mean, std=std, monitor="accuracy",
    )  # fmt: skip
    model = from_nnx(module, mean=mean, std=std)
    agreement = None
    if eval_x is not None:
        want = _target_labels(target, eval_x, query_batch_size)
        got = _target_labels(model, eval_x, query_batch_size)
        agreement = float(np.mean(want == got))
    return QueriedSurrogate(
        model=model,
        queries=int(budget),
        agreement=agreement,
        eval_queries=0 if eval_x is None else int(eval_x.shape[0]),
        label_counts=tuple(int(c) for c in counts),
        history=history,
    )
