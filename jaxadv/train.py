"""Training of Flax NNX classifiers with optax: standard and adversarial training.

The model sees pixels in ``[0, 1]`` (NHWC); normalisation ``(x - mean) / std`` is applied by the
library, exactly as :func:`jaxadv.from_nnx` does at attack time, so ``eps`` is always measured in
pixel units.

Adversarial training (:class:`AdversarialTraining`) solves the saddle-point problem of Madry et al.
(2018), ``min_θ E[max_{x' ∈ S(x)} L(f_θ(x'), y)]``, with any jaxadv attack as the inner maximiser,
and optionally the weighted objective of the review (Eq. 1)

    ``min_θ E[L(f_θ(x_adv), y)] + λ · D(·, ·)``

or Goodfellow et al.'s (2015) mix ``α · L(f_θ(x), y) + (1 − α) · L(f_θ(x_adv), y)``.

Example:
    >>> import numpy as np, jaxadv
    >>> from flax import nnx
    >>> from jaxadv.nn import SmallCNN
    >>> from jaxadv.train import train, evaluate
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 2, 64).astype(np.int32)
    >>> x = (rng.random((64, 28, 28, 1)) * 0.2 + 0.6 * y[:, None, None, None]).astype(np.float32)
    >>> net = SmallCNN(2, 1, width=4, rngs=nnx.Rngs(0))
    >>> hist = train(net, x, y, epochs=2, batch_size=32, key=0, mean=0.5, std=0.3)
    >>> evaluate(net, x, y, mean=0.5, std=0.3) > 0.9
    True
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxadv import losses as L
from jaxadv.attacks.base import example_keys
from jaxadv.models import Model, from_apply
from jaxadv.train_objectives import (
    AdversarialTraining,
    Distillation,
    check_temperature,
    distillation_loss,
    mart_loss,
    pairwise_distance,
    trades_adversary,
    trades_loss,
)
from jaxadv.train_options import class_weight_vector, epoch_order, weighted_ce, weighted_mean

Array = jax.Array
logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# Pure pieces (graphdefs are static, states are jit arguments)
# --------------------------------------------------------------------------------------------------


class _EvalApply:
    """Hashable static apply ``(state, x) -> logits`` for an eval-mode NNX graphdef, normalising
    pixels first (done here, with explicit broadcasting, rather than by the adapter)."""

    def __init__(self, graphdef, mean, std):
        self.graphdef = graphdef
        self.mean, self.std = mean, std

    def _key(self):
        norm = tuple(
            None if v is None else tuple(np.ravel(v).tolist()) for v in (self.mean, self.std)
        )
        return (self.graphdef, norm)

    def __call__(self, state, x):
        return nnx.merge(self.graphdef, *state, copy=True)(_normalise(x, self.mean, self.std))

    def __hash__(self):
        return hash(self._key())

    def __eq__(self, other):
        return isinstance(other, _EvalApply) and self._key() == other._key()


def _channelwise(v, x: Array) -> Array:
    """``v`` (scalar or per channel ``[K]``) shaped to broadcast against ``x[B, H, W, K]``
    explicitly (rank promotion may be set to 'raise')."""
    v = jnp.asarray(v, x.dtype)
    return v.reshape((1,) * (x.ndim - 1) + (-1,)) if v.ndim == 1 else v


def _normalise(x: Array, mean, std) -> Array:
    if mean is not None:
        x = x - _channelwise(mean, x)
    if std is not None:
        x = x / _channelwise(std, x)
    return x


def _objective(
    gd_train,
    gd_eval,
    mean,
    std,
    params,
    rest,
    adversarial,
    distill,
    temperature,
    x,
    y,
    key,
    cw=None,
):
    """Batch loss in train mode. Returns ``(loss, (new_rest, logits_for_accuracy, x_adv))``.
    ``cw``: optional class weights ``[C]`` for every per-example term; ``distill``: a
    :class:`Distillation` whose teacher is a model; ``temperature``: divides the logits of clean
    training (a distillation teacher)."""
    obj = None if adversarial is None else adversarial.objective
    x_adv = x
    if adversarial is not None:
        target = from_apply(_EvalApply(gd_eval, mean, std), (params, rest))
        if obj == "trades":
            x_adv = trades_adversary(adversarial.attack, key, target, x)
        else:
            x_adv = adversarial.attack.run(example_keys(key, x.shape[0]), target, x, y).adv
        x_adv = jax.lax.stop_gradient(x_adv)

    module = nnx.merge(gd_train, params, rest, copy=True)
    b = x.shape[0]
    if adversarial is None:
        logits = module(_normalise(x, mean, std))
        logits_acc = logits
        if distill is not None:
            per = distillation_loss(logits, distill.teacher(x), distill.temperature)
            loss = weighted_mean(per, y, cw)
        else:
            loss = weighted_ce(logits / jnp.asarray(temperature, logits.dtype), y, cw)
    elif obj in ("trades", "mart"):
        # two passes, clean first, as both papers' code does (see AdversarialTraining)
        logits_clean = module(_normalise(x, mean, std))
        logits_acc = module(_normalise(x_adv, mean, std))
        fn = trades_loss if obj == "trades" else mart_loss
        loss = weighted_mean(fn(logits_clean, logits_acc, y, adversarial.beta), y, cw)
    elif obj == "madry" or (obj == "penalty" and adversarial.penalty_on == "inputs"):
        logits_acc = module(_normalise(x_adv, mean, std))
        loss = weighted_ce(logits_acc, y, cw)
        if obj == "penalty":
            d = pairwise_distance(adversarial.distance, x, x_adv)
            loss = loss + jnp.asarray(adversarial.lam, loss.dtype) * jnp.mean(d)
    else:
        both = module(_normalise(jnp.concatenate([x, x_adv], axis=0), mean, std))
        logits_clean, logits_acc = both[:b], both[b:]
        loss_adv = weighted_ce(logits_acc, y, cw)
        if obj == "mix":
            alpha = jnp.asarray(adversarial.alpha, loss_adv.dtype)
            loss = alpha * weighted_ce(logits_clean, y, cw) + (1 - alpha) * loss_adv
        else:
            d = pairwise_distance(adversarial.distance, logits_clean, logits_acc)
            loss = loss_adv + jnp.asarray(adversarial.lam, loss_adv.dtype) * jnp.mean(d)
    _, _, new_rest = nnx.split(module, nnx.Param, ...)
    return loss, (new_rest, logits_acc, x_adv)


# One module-level jit with the configuration static: jax caches the compiled step on (graphdef,
# optimiser, normalisation, augmentation), so a second train() with the same model structure and
# settings reuses it instead of retracing (a fresh jit per call cost 7-12 s each time).
def _step(
    gd_train,
    gd_eval,
    tx,
    mean,
    std,
    augment,
    params,
    rest,
    opt_state,
    adversarial,
    distill,
    temperature,
    x,
    y,
    key,
    cw,
):
    if augment is not None:
        k_aug, key = jax.random.split(key)
        x = augment(k_aug, x)
    grad_fn = jax.value_and_grad(
        functools.partial(_objective, gd_train, gd_eval, mean, std), has_aux=True
    )
    (loss, (rest, logits, _)), grads = grad_fn(
        params, rest, adversarial, distill, temperature, x, y, key, cw
    )
    # optax mixes Python floats with int32 step counts (e.g. Adam's bias correction ``b1 ** count``),
    # which fails under ``jax_numpy_dtype_promotion='strict'``; standard promotion is scoped to the
    # optimiser only, so our own code stays checked.
    with jax.numpy_dtype_promotion("standard"):
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    correct = jnp.sum(jnp.argmax(logits, axis=1) == y)
    return params, rest, opt_state, loss, correct


_train_step = jax.jit(_step, static_argnums=(0, 1, 2, 3, 4, 5))


def _hashable(*vs: Any) -> bool:
    try:
        for v in vs:
            hash(v)
    except TypeError:
        return False
    return True


def _as_key(key: Array | int) -> Array:
    if isinstance(key, (int, np.integer)):
        return jax.random.key(int(key))
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    raise TypeError(f"key must be an int seed or a jax.random.key, got {type(key).__name__}")


def _reseed_streams(module: nnx.Module, key: Array) -> None:
    """Give every RNG stream (dropout) of ``module`` a key derived from ``key``: training randomness
    then belongs to the training seed, not to the seed the module was built with."""
    i = 0
    for _, node in nnx.iter_graph(module):
        if isinstance(node, nnx.RngStream):
            new = jax.random.fold_in(key, i)
            if node.key.shape:
                new = jax.random.split(new, node.key.shape)
            node.key.set_value(new)
            node.count.set_value(jnp.zeros(node.key.shape, jnp.uint32))
            i += 1


def _check_xy(x, y, name: str = "x") -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim < 2 or not np.issubdtype(x.dtype, np.floating):
        raise ValueError(
            f"{name} must be float images [N, H, W, K] in [0, 1], got {x.dtype} {x.shape}; "
            "convert uint8 with x.astype(np.float32) / 255"
        )
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != x.shape[0] or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"labels must be integers [N] matching {name} (N={x.shape[0]}), got {y.dtype} {y.shape}"
        )
    return x, y.astype(np.int32)


def _norm_arg(v) -> np.ndarray | None:
    return None if v is None else np.asarray(v, np.float32)


def _static_norm(v) -> float | tuple[float, ...] | None:
    """``mean``/``std`` as a hashable value (a static argument of the cached step): ``None``, a
    float, or a tuple of per-channel floats."""
    if v is None:
        return None
    a = np.asarray(v, np.float32)
    return float(a) if a.ndim == 0 else tuple(float(t) for t in a.ravel())


@functools.lru_cache(maxsize=32)
def _default_optimizer(learning_rate: float) -> optax.GradientTransformation:
    # One object per learning rate: the optimiser is a static argument of the cached step, and
    # optax builds new (unequal) functions on every call.
    return optax.adam(learning_rate)


def _check_objective(adversarial, distill, temperature, mean, std):
    """Validate the objective options; returns ``(distill with its teacher as a jaxadv model or
    None, temperature as an f32 scalar)``."""
    if adversarial is not None and not isinstance(adversarial, AdversarialTraining):
        raise TypeError(
            "adversarial must be a jaxadv.train.AdversarialTraining (e.g. "
            "AdversarialTraining(attack=jaxadv.PGD(threat=jaxadv.LinfBall(eps=4/255))))"
        )
    if distill is not None and not isinstance(distill, Distillation):
        raise TypeError(
            "distill must be a jaxadv.train.Distillation(teacher=..., temperature=T), got "
            f"{type(distill).__name__}"
        )
    check_temperature(temperature)
    if float(np.asarray(temperature)) != 1.0 and (distill is not None or adversarial is not None):
        raise ValueError(
            "temperature trains a distillation teacher with the clean loss; a student takes its "
            "temperature from Distillation(temperature=T), and adversarial objectives run at T = 1"
        )
    if distill is not None and adversarial is not None:
        raise ValueError("distill and adversarial are separate objectives: pass one of them")
    if distill is not None and isinstance(distill.teacher, nnx.Module):
        work = nnx.clone(distill.teacher)
        work.eval()
        gd, params, rest = nnx.split(work, nnx.Param, ...)
        teacher = from_apply(_EvalApply(gd, _norm_arg(mean), _norm_arg(std)), (params, rest))
        distill = Distillation(teacher=teacher, temperature=distill.temperature)
    return distill, jnp.asarray(temperature, jnp.float32)


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def batch_loss(
    module: nnx.Module,
    x: Array,
    y: Array,
    *,
    key: Array | int = 0,
    adversarial: AdversarialTraining | None = None,
    distill: Distillation | None = None,
    temperature: float = 1.0,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
    class_weights: Sequence[float] | str | None = None,
) -> tuple[Array, dict[str, Array]]:
    """The training loss of one batch, in train mode, without updating anything.

    What :func:`train` differentiates; exposed for inspection and tests. The module is not modified
    (it is evaluated on a copy).

    Args:
        module: an NNX classifier ``x[B, H, W, K] -> logits[B, C]``.
        x: images ``[B, H, W, K]`` in ``[0, 1]``; y: labels ``int[B]``.
        key: key (or int seed) of the attack's random start.
        adversarial: the adversarial objective, or ``None`` for the clean loss.
        distill, temperature: as in :func:`train`.
        mean, std: normalisation applied before the module (pixel units).
        class_weights: as in :func:`train` (``'balanced'`` weights come from this batch's labels).

    Returns:
        ``(loss, {'logits': logits[B, C], 'x_adv': x_adv[B, H, W, K]})`` (``x_adv`` is ``x`` when
        ``adversarial`` is ``None``; ``logits`` are those of the points the loss is computed on).
    """
    distill, temperature = _check_objective(adversarial, distill, temperature, mean, std)
    work = nnx.clone(module)
    work.train()
    gd_train, params, rest = nnx.split(work, nnx.Param, ...)
    work.eval()
    gd_eval, _, _ = nnx.split(work, nnx.Param, ...)
    # Run eagerly: a one-off jit would compile a program used once (slower, measured).
    loss, (_, logits, x_adv) = _objective(
        gd_train,
        gd_eval,
        _norm_arg(mean),
        _norm_arg(std),
        params,
        rest,
        adversarial,
        distill,
        temperature,
        jnp.asarray(x),
        jnp.asarray(y, jnp.int32),
        _as_key(key),
        class_weight_vector(class_weights, np.asarray(y)),
    )
    return loss, {"logits": logits, "x_adv": x_adv}


_MONITORS = {"balanced_accuracy": 1.0, "auc": 1.0, "macro_auc": 1.0, "accuracy": 1.0, "loss": -1.0}


def predict_logits(
    module: nnx.Module,
    x: Any,
    *,
    batch_size: int = 256,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
) -> np.ndarray:
    """Logits ``f32[N, C]`` of an NNX classifier in eval mode (on a copy), after ``(x-mean)/std``.

    Fixed-size batches (the engine's padding rule: the last batch repeats its last row), so one
    program is compiled.
    """
    from jaxadv.engine.layout import chunks, pad_rows

    x = np.asarray(x)
    work = nnx.clone(module)
    work.eval()
    gd, params, rest = nnx.split(work, nnx.Param, ...)
    apply = jax.jit(_EvalApply(gd, _norm_arg(mean), _norm_arg(std)))
    bs = min(batch_size, x.shape[0])
    out = []
    for idx in chunks(x.shape[0], bs):
        out.append(np.asarray(apply((params, rest), jnp.asarray(pad_rows(x[idx], bs))))[: len(idx)])
    return np.concatenate(out).astype(np.float32)


def _val_metrics(module, val, mean, std) -> dict[str, Any]:
    from jaxadv.classmetrics import classification_metrics

    logits = predict_logits(module, val[0], mean=mean, std=std)
    m = classification_metrics(logits, val[1])
    m["loss"] = float(np.mean(np.asarray(L.ce(jnp.asarray(logits), jnp.asarray(val[1])))))
    return m


def train(
    module: nnx.Module,
    x: Any,
    y: Any,
    *,
    epochs: int,
    batch_size: int = 128,
    optimizer: optax.GradientTransformation | None = None,
    learning_rate: float = 1e-3,
    key: Array | int = 0,
    adversarial: AdversarialTraining | None = None,
    distill: Distillation | None = None,
    temperature: float = 1.0,
    val: tuple[Any, Any] | None = None,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
    augment: Callable[[Array, Array], Array] | None = None,
    callback: Callable[[nnx.Module, dict[str, Any]], bool | None] | None = None,
    class_weights: Sequence[float] | str | None = None,
    balanced_sampling: bool = False,
    monitor: str = "balanced_accuracy",
    patience: int | None = None,
    restore_best: bool = True,
) -> list[dict[str, Any]]:
    """Train an NNX classifier in place with optax; optionally adversarially.

    Each step runs in train mode (batch norm updates its running statistics, dropout is on) under one
    ``jax.jit`` (graphdef static, state and optimiser state as arguments); evaluation is in eval
    mode. The compiled step is cached across calls on the model's structure, the optimiser object,
    ``mean``/``std``, ``augment`` and the batch shape: a second call with the same settings (the
    same ``optimizer`` object, or the default one; :func:`jaxadv.train_options.make_optimizer` and
    :func:`random_shift` return equal values for equal arguments) does not recompile. With ``adversarial``, the inner attack is run in eval mode on the current weights (see
    :class:`AdversarialTraining`).

    Model selection uses ``val`` only (a validation split, or a hold-out of the training data:
    :func:`jaxadv.splits.training_splits`); never pass the test split here. After each epoch the
    imbalance-aware metrics of :func:`jaxadv.classmetrics.classification_metrics` are computed on
    ``val``; the epoch with the best ``monitor`` value is kept (``restore_best``), training stops
    after ``patience`` epochs without improvement, and a warning is logged when the kept model
    does not beat the majority baseline on ``val``.

    Deterministic: the key fixes the shuffling (or balanced sampling), the augmentation, the dropout
    masks (every RNG stream of the module is re-seeded from it) and the attack's random starts, so
    the same key and data give bit-identical weights on CPU. Batches of exactly ``batch_size`` are
    used (the remainder of each shuffled epoch is dropped, so one program is compiled); if
    ``N < batch_size`` the batch is the whole set.

    Args:
        module: the NNX classifier (pixel input after normalisation), updated in place. Its RNG
            streams are left as they were; its Param and BatchStat state is replaced after each
            epoch (and by the best epoch's at the end when ``restore_best``).
        x: training images ``[N, H, W, K]`` float in ``[0, 1]`` (numpy or jax); y: labels ``int[N]``
            (``[N, 1]`` is accepted).
        epochs: passes over the data.
        batch_size: examples per step.
        optimizer: an optax transformation; default ``optax.adam(learning_rate)`` (see
            :func:`jaxadv.train_options.make_optimizer` for warm-up, cosine decay and weight decay).
        learning_rate: used only when ``optimizer`` is ``None``.
        key: ``jax.random.key`` or int seed.
        adversarial: an :class:`AdversarialTraining` (PGD-AT, TRADES, MART, ...), or ``None``.
        distill: a :class:`Distillation` (defensive distillation: learn the teacher's soft labels at
            its temperature), or ``None``; not with ``adversarial``.
        temperature: ``T > 0`` dividing the logits of the clean cross-entropy: train a
            distillation teacher at ``T`` (only for clean training; 1 is plain training).
        val: optional ``(x_val, y_val)`` validation data for per-epoch metrics and selection.
        mean, std: normalisation ``(x - mean) / std`` applied before the module; use the same values
            in ``jaxadv.from_nnx(module, mean=..., std=...)`` afterwards.
        augment: optional jittable data augmentation ``augment(key, x[B, H, W, K]) -> x`` applied
            to each batch inside the step, before the attack (e.g. :class:`jaxadv.train_options.Augment`,
            :func:`random_shift`).
        callback: ``callback(module, metrics)`` after each epoch (the module already holds the
            epoch's weights); return ``True`` to stop early.
        class_weights: ``None``, ``'balanced'`` or ``[C]`` weights of the cross-entropy
            (:func:`jaxadv.train_options.weighted_ce`).
        balanced_sampling: draw each epoch's ``N`` examples with replacement, every class equally
            likely, instead of a permutation.
        monitor: the ``val`` metric that selects the epoch: ``'balanced_accuracy'`` (default),
            ``'auc'`` (binary), ``'macro_auc'``, ``'accuracy'`` (all maximised) or ``'loss'``
            (minimised).
        patience: stop after this many epochs without a strict improvement of ``monitor``
            (``None``: run every epoch). Needs ``val``.
        restore_best: leave the best epoch's weights in ``module`` (needs ``val``).

    Returns:
        One dict per epoch: ``epoch``, ``loss`` (mean training objective), ``train_accuracy`` (on the
        points the loss is computed on: adversarial ones under adversarial training), ``seconds``,
        and with ``val`` every metric as ``val_<name>`` (``val_accuracy``,
        ``val_majority_baseline``, ``val_balanced_accuracy``, ``val_recall_per_class``,
        ``val_auc`` / ``val_macro_auc``, ``val_loss`` (plain mean cross-entropy, unweighted), ...) and ``best`` (the epoch is the best so
        far).
    """
    if not isinstance(module, nnx.Module):
        raise TypeError(f"train needs a flax.nnx.Module, got {type(module).__name__}")
    if epochs < 0 or batch_size < 1:
        raise ValueError(f"need epochs >= 0 and batch_size >= 1, got {epochs}, {batch_size}")
    distill, temperature = _check_objective(adversarial, distill, temperature, mean, std)
    if monitor not in _MONITORS:
        raise ValueError(f"monitor must be one of {sorted(_MONITORS)}, got {monitor!r}")
    if patience is not None and (val is None or patience < 1):
        raise ValueError("patience needs val data and must be >= 1 (or None)")
    x, y = _check_xy(x, y)
    if val is not None:
        val = _check_xy(*val, name="val x")
    cw = class_weight_vector(class_weights, y)
    cw = None if cw is None else jnp.asarray(cw)
    n = x.shape[0]
    if n == 0:
        raise ValueError("empty training set")
    bs = min(batch_size, n)
    steps = n // bs
    mean_a, std_a = _static_norm(mean), _static_norm(std)
    if optimizer is not None:
        tx = optimizer
    elif callable(learning_rate):  # an optax schedule: its own Adam (compiled per call)
        tx = optax.adam(learning_rate)
    else:
        tx = _default_optimizer(float(learning_rate))

    key = _as_key(key)
    k_rng, k_shuffle, k_step = jax.random.split(key, 3)
    work = nnx.clone(module)
    _reseed_streams(work, k_rng)
    work.eval()
    gd_eval, _, _ = nnx.split(work, nnx.Param, ...)
    work.train()
    gd_train, params, rest = nnx.split(work, nnx.Param, ...)
    opt_state = tx.init(params)
    if _hashable(tx, augment):  # the cached step (see the docstring)
        step_fn = functools.partial(_train_step, gd_train, gd_eval, tx, mean_a, std_a, augment)
    else:  # an unhashable optimiser or augmentation: a step compiled for this call only
        step_fn = jax.jit(functools.partial(_step, gd_train, gd_eval, tx, mean_a, std_a, augment))

    logger.info(
        "training %s on %d examples: %d epochs x %d steps of %d%s%s",
        type(module).__name__,
        n,
        epochs,
        steps,
        bs,
        "" if adversarial is None else f", adversarial objective {adversarial.objective!r}",
        "" if distill is None else f", distilled at T={float(distill.temperature):g}",
    )
    history: list[dict[str, Any]] = []
    best: tuple[float, int, Any, dict[str, Any]] | None = None  # (score, epoch, state, metrics)
    sign = _MONITORS[monitor]
    for epoch in range(epochs):
        t0 = time.perf_counter()
        order = epoch_order(jax.random.fold_in(k_shuffle, epoch), y, balanced_sampling)
        loss_sum = jnp.zeros((), jnp.float32)
        correct = jnp.zeros((), jnp.int32)
        for s in range(steps):
            idx = order[s * bs : (s + 1) * bs]
            skey = jax.random.fold_in(k_step, epoch * steps + s)
            params, rest, opt_state, loss, c = step_fn(
                params, rest, opt_state, adversarial, distill, temperature, x[idx], y[idx], skey, cw
            )
            loss_sum = loss_sum + loss
            correct = correct + c
        nnx.update(module, nnx.state(nnx.merge(gd_train, params, rest), nnx.Not(nnx.RngState)))
        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": float(loss_sum) / max(steps, 1),
            "train_accuracy": int(correct) / max(steps * bs, 1),
        }
        if val is not None:
            vm = _val_metrics(module, val, mean, std)
            if monitor not in vm:
                raise ValueError(
                    f"monitor {monitor!r} is not defined for this task (val metrics: "
                    f"{sorted(k for k in vm if k != 'recall_per_class')})"
                )
            metrics.update({f"val_{k}": v for k, v in vm.items()})
            score = sign * vm[monitor]
            metrics["best"] = best is None or score > best[0]
            if metrics["best"]:
                best = (score, epoch + 1, (params, rest), vm)
        metrics["seconds"] = time.perf_counter() - t0
        history.append(metrics)
        logger.info(
            "epoch %d/%d  loss %.4f  train acc %.4f%s  (%.1fs)",
            epoch + 1,
            epochs,
            metrics["loss"],
            metrics["train_accuracy"],
            ""
            if val is None
            else f"  val acc {metrics['val_accuracy']:.4f} (majority "
            f"{metrics['val_majority_baseline']:.4f})  val bal acc "
            f"{metrics['val_balanced_accuracy']:.4f}  val {monitor} {vm[monitor]:.4f}",
            metrics["seconds"],
        )
        if callback is not None and callback(module, metrics):
            logger.info("callback asked to stop after epoch %d", epoch + 1)
            break
        if patience is not None and best is not None and epoch + 1 - best[1] >= patience:
            logger.info("early stop: val %s has not improved for %d epochs", monitor, patience)
            break
    if best is not None:
        if restore_best:
            state = nnx.state(nnx.merge(gd_train, *best[2]), nnx.Not(nnx.RngState))
            nnx.update(module, state)
            logger.info("kept epoch %d (best val %s %.4f)", best[1], monitor, sign * best[0])
        from jaxadv.classmetrics import warn_if_trivial

        chosen = best[3] if restore_best else history[-1]
        if not restore_best:
            chosen = {k[4:]: v for k, v in chosen.items() if k.startswith("val_")}
        warn_if_trivial(chosen, "val")
    return history


@dataclasses.dataclass(frozen=True)
class _RandomShift:
    """The augmentation of :func:`random_shift`; a frozen value (equal for equal ``max_shift``), so
    :func:`train`'s compiled step is reused across calls."""

    max_shift: int

    def __call__(self, key: Array, x: Array) -> Array:
        m = self.max_shift
        b, h, w = x.shape[0], x.shape[1], x.shape[2]
        pad = ((m, m), (m, m), (0, 0))
        offs = jax.random.randint(key, (b, 2), 0, 2 * m + 1)

        def one(img, off):
            padded = jnp.pad(img, pad, mode="edge")
            return jax.lax.dynamic_slice(padded, (off[0], off[1], 0), (h, w, img.shape[-1]))

        return jax.vmap(one)(x, offs)


def random_shift(max_shift: int = 2) -> Callable[[Array, Array], Array]:
    """Augmentation: translate each image by an integer offset in ``[-max_shift, max_shift]`` per
    axis (edge padding), independently per example. Returns ``augment(key, x) -> x`` for
    :func:`train`.
    """
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    return _RandomShift(int(max_shift))


def evaluate(
    model: nnx.Module | Model,
    x: Any,
    y: Any,
    *,
    batch_size: int = 256,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
    attack: Any = None,
    key: Array | int = 0,
) -> float:
    """Accuracy in eval mode: clean, or robust under ``attack``.

    Runs through :func:`jaxadv.evaluate` (padded fixed batches over every local device); the
    attack's per-example keys are ``fold_in(key, example_index)`` over the whole set, so the result
    does not depend on ``batch_size``.

    Args:
        model: an NNX module (evaluated in eval mode on a copy, after ``(x - mean) / std``) or a
            ready :class:`jaxadv.Model` (``mean``/``std`` must then be ``None``).
        x: images ``[N, H, W, K]`` in ``[0, 1]``; y: labels ``int[N]``.
        batch_size: examples per device per step.
        attack: optional jaxadv attack: the fraction of examples it does *not* fool is returned.
        key: key or int seed for the attack.

    Returns:
        Accuracy in ``[0, 1]`` as a Python float (host code, outside any jit).
    """
    if isinstance(model, Model):
        if mean is not None or std is not None:
            raise ValueError("mean/std are baked into a jaxadv.Model already; pass them as None")
        target = model
    elif isinstance(model, nnx.Module):
        work = nnx.clone(model)
        work.eval()
        gd, params, rest = nnx.split(work, nnx.Param, ...)
        target = from_apply(_EvalApply(gd, _norm_arg(mean), _norm_arg(std)), (params, rest))
    else:
        raise TypeError(
            f"model must be an nnx.Module or a jaxadv.Model, got {type(model).__name__}"
        )
    x, y = _check_xy(x, y)
    if x.shape[0] == 0:
        raise ValueError("empty evaluation set")
    from jaxadv.engine import evaluate as run

    if attack is None:
        ev = run(None, target, (x, y), [0.0], key=0, batch_size=batch_size, validate=False)
    else:
        eps = float(np.asarray(attack.threat.eps))
        ev = run(attack, target, (x, y), [eps], key=_as_key(key), batch_size=batch_size)
    return float(ev.robust_accuracy[0])


__all__ = [
    "AdversarialTraining",
    "Distillation",
    "batch_loss",
    "evaluate",
    "pairwise_distance",
    "predict_logits",
    "random_shift",
    "train",
]
