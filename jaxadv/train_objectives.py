"""Training objectives: PGD-AT and its variants, TRADES, MART, and defensive distillation.

:func:`jaxadv.train.train` takes one of these values (``adversarial=`` or ``distill=``); the loss
functions are pure per-example functions of logits, exposed for inspection and tests.

* PGD-AT (Madry et al., 2018): ``CE(f(x_adv), y)`` with ``x_adv`` from any jaxadv attack.
* TRADES (Zhang et al., 2019): ``CE(f(x), y) + β · KL(p(x) || p(x_adv))``, where ``x_adv``
  maximises that KL by PGD from ``x + 0.001 · N(0, I)``.
* MART (Wang et al., 2020): ``BCE(p(x_adv), y) + β · KL(p(x) || p(x_adv)) · (1 − p_y(x))``, with
  ``BCE = −log p_y(x_adv) − log(1 − max_{k≠y} p_k(x_adv))`` and ``x_adv`` from the attack (PGD on
  the cross-entropy).
* Defensive distillation (Papernot et al., 2016): a teacher trained at temperature ``T``
  (``train(..., temperature=T)``), then a student trained on the teacher's soft labels
  ``softmax(z_teacher / T)`` at the same ``T`` (``train(..., distill=Distillation(teacher, T))``),
  deployed at ``T = 1`` (its plain logits).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv import losses as L
from jaxadv._struct import float32_fields, is_concrete, pytree_dataclass, static
from jaxadv.attacks.base import example_keys
from jaxadv.attacks.gradient import PGD, loss_grad

Array = jax.Array

_OBJECTIVES = ("madry", "mix", "penalty", "trades", "mart")
_PENALTY_ON = ("logits", "inputs")
_DISTANCES = ("l2sq", "l2", "kl")
# TRADES starts its inner maximisation at x + 0.001 N(0, I): at x itself the KL and its gradient
# are zero, so a start exactly at x would never move (Zhang et al.'s code uses this scale).
TRADES_START_SCALE = 0.001


@pytree_dataclass
class AdversarialTraining:
    """How to train against an attack.

    The inner maximiser ``attack`` is run on the *current* weights with the network in **eval mode**
    (batch norm uses its running statistics, dropout is off), the usual practice: crafting then
    neither updates the running statistics nor sees dropout noise, and the points are adversarial for
    the network that will be deployed. The outer loss is then computed in train mode. Gradients do
    not flow through the attack (Danskin's theorem: ``x_adv`` is treated as a constant).

    Objectives (``L`` is the cross-entropy, averaged over the batch):

    * ``'madry'`` (PGD-AT, Madry et al., 2018): ``L(f(x_adv), y)``.
    * ``'mix'`` (Goodfellow et al., 2015): ``α · L(f(x), y) + (1 − α) · L(f(x_adv), y)``.
    * ``'penalty'`` (review Eq. 1): ``L(f(x_adv), y) + λ · mean_i D_i``, with ``D`` a per-example
      distance (``distance``) between ``f(x)`` and ``f(x_adv)`` (``penalty_on='logits'``, the
      default: the logit pairing of Kannan et al., 2018) or between ``x`` and ``x_adv``
      (``penalty_on='inputs'``, Eq. 1 read literally). Note that the input-space term does not depend
      on ``θ`` once ``x_adv`` is fixed, so it changes the reported loss but not the gradient; it is
      offered for fidelity to the formula and for logging.
    * ``'trades'`` (Zhang et al., 2019): :func:`trades_loss` with weight ``beta``. The attack must be
      a :class:`jaxadv.PGD`: its threat, ``num_steps`` and step size drive the inner maximisation of
      the KL (not of its own loss), started at ``x + 0.001 · N(0, I)``, last iterate kept, as in the
      paper's code (PGD's own uniform start and best-iterate rule are not used).
    * ``'mart'`` (Wang et al., 2020): :func:`mart_loss` with weight ``beta`` on ``x_adv`` from the
      attack.

    For ``'mix'`` and ``'penalty'`` on logits the clean and adversarial halves go through the
    network as one concatenated batch, so batch norm's batch statistics are taken over both.
    ``'trades'`` and ``'mart'`` use two passes (clean, then adversarial), as both papers' code does:
    TRADES with ``beta = 0`` is then exactly clean training's loss.

    Attributes:
        attack: any jaxadv attack value, e.g. ``jaxadv.PGD(threat=jaxadv.LinfBall(eps=4/255),
            num_steps=7)``; its ``eps`` and ``step_size`` are leaves (no recompile when changed).
        objective: ``'madry'``, ``'mix'``, ``'penalty'``, ``'trades'`` or ``'mart'`` (static).
        alpha: weight of the clean loss for ``'mix'``, in ``[0, 1]``.
        lam: weight ``λ >= 0`` of the distance term for ``'penalty'``.
        beta: weight ``β >= 0`` of the KL term for ``'trades'`` and ``'mart'`` (both papers use 6
            on CIFAR-10).
        distance: ``'l2sq'`` (squared L2, the default), ``'l2'``, ``'kl'`` (logits only:
            ``KL(softmax f(x) || softmax f(x_adv))``) or a callable ``(a[B, ...], b[B, ...]) -> [B]``
            (static).
        penalty_on: ``'logits'`` or ``'inputs'`` (static).

    Example:
        >>> import jaxadv
        >>> from jaxadv.train import AdversarialTraining
        >>> pgd = jaxadv.PGD(threat=jaxadv.LinfBall(eps=4 / 255), num_steps=7)
        >>> at = AdversarialTraining(attack=pgd)  # PGD-AT
        >>> alp = AdversarialTraining(attack=pgd, objective="penalty", lam=0.5)
        >>> trades = AdversarialTraining(attack=pgd, objective="trades", beta=6.0)
        >>> at.objective, alp.distance, float(trades.beta)
        ('madry', 'l2sq', 6.0)
    """

    attack: Any
    objective: str = static(default="madry")
    alpha: float | Array = 0.5
    lam: float | Array = 0.0
    beta: float | Array = 6.0
    distance: str | Callable[[Array, Array], Array] = static(default="l2sq")
    penalty_on: str = static(default="logits")

    def __post_init__(self) -> None:
        if not hasattr(self.attack, "run"):
            raise TypeError(
                f"attack must be a jaxadv attack (with a .run method), got {type(self.attack)}"
            )
        if self.objective not in _OBJECTIVES:
            raise ValueError(f"objective must be one of {_OBJECTIVES}, got {self.objective!r}")
        if self.objective == "trades" and not isinstance(self.attack, PGD):
            raise TypeError(
                "objective='trades' maximises the KL with PGD steps: pass a jaxadv.PGD (its threat, "
                f"num_steps and step_size are used), got {type(self.attack).__name__}"
            )
        if self.penalty_on not in _PENALTY_ON:
            raise ValueError(f"penalty_on must be one of {_PENALTY_ON}, got {self.penalty_on!r}")
        if not callable(self.distance) and self.distance not in _DISTANCES:
            raise ValueError(
                f"distance must be one of {_DISTANCES} or a callable (a, b) -> [B], "
                f"got {self.distance!r}"
            )
        if self.distance == "kl" and self.penalty_on != "logits":
            raise ValueError("distance='kl' compares softmax outputs: use penalty_on='logits'")
        if is_concrete(self.alpha) and not 0.0 <= float(np.asarray(self.alpha)) <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {self.alpha}")
        if is_concrete(self.lam) and not 0.0 <= float(np.asarray(self.lam)) < np.inf:
            raise ValueError(f"lam must be >= 0 and finite, got {self.lam}")
        if is_concrete(self.beta) and not 0.0 <= float(np.asarray(self.beta)) < np.inf:
            raise ValueError(
                f"beta must be >= 0 and finite (the weight of the KL term), got {self.beta}"
            )
        # float32 leaves: a Python float and a jnp scalar give one trace, as eps does in threats
        float32_fields(self, "alpha", "lam", "beta")


@pytree_dataclass
class Distillation:
    """Defensive distillation (Papernot et al., 2016): learn a teacher's soft labels at ``T``.

    The student's loss is :func:`distillation_loss` between its logits and the teacher's on the
    same (augmented) batch; the labels only enter the reported training accuracy. Train the teacher
    first at the same temperature (``train(teacher, ..., temperature=T)``); the student is deployed
    at ``T = 1`` (``jaxadv.from_nnx(student, ...)``), where its logits are about ``T`` times
    larger than a plainly trained network's and its softmax saturates (the masked gradients that
    make naive attacks fail; margin losses such as C&W's see through it, Carlini & Wagner 2017).

    Attributes:
        teacher: a trained classifier: a Flax NNX module (run in eval mode with the student's
            ``mean``/``std``) or a ready :class:`jaxadv.Model` (its own normalisation).
        temperature: ``T > 0`` (Papernot et al. use 100 on MNIST).

    Example:
        >>> from flax import nnx
        >>> from jaxadv.nn import SmallCNN
        >>> d = Distillation(teacher=SmallCNN(2, 1, width=4, rngs=nnx.Rngs(0)), temperature=20.0)
        >>> float(d.temperature)
        20.0
    """

    teacher: Any
    temperature: float | Array = 100.0

    def __post_init__(self) -> None:
        if self.teacher is None:
            raise ValueError(
                "defensive distillation needs a teacher: train one first with "
                "train(teacher, x, y, ..., temperature=T), then Distillation(teacher=teacher, "
                "temperature=T)"
            )
        if not callable(self.teacher):
            raise TypeError(
                "Distillation.teacher must be an nnx classifier or a jaxadv.Model, got "
                f"{type(self.teacher).__name__}"
            )
        check_temperature(self.temperature)
        float32_fields(self, "temperature")


def check_temperature(t: Any) -> None:
    """Raise ``ValueError`` unless ``t`` is a finite temperature ``> 0`` (traced values pass)."""
    if is_concrete(t):
        v = float(np.asarray(t))
        if not (np.isfinite(v) and v > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {t}")


def pairwise_distance(kind: str | Callable, a: Array, b: Array) -> Array:
    """Per-example distance ``D(a_i, b_i)`` ``[B]`` between two batches of the same shape.

    ``'l2sq'``: ``||a - b||²``; ``'l2'``: ``||a - b||`` (guarded at 0, where the gradient of the square
    root is infinite); ``'kl'``: ``KL(softmax a || softmax b)`` over the last axis (logits).
    """
    if callable(kind):
        return kind(a, b)
    if kind == "kl":
        la, lb = jax.nn.log_softmax(a, axis=-1), jax.nn.log_softmax(b, axis=-1)
        return jnp.sum(jnp.exp(la) * (la - lb), axis=-1)
    sq = jnp.sum(jnp.square((a - b).reshape(a.shape[0], -1)), axis=1)
    if kind == "l2sq":
        return sq
    if kind == "l2":
        return jnp.sqrt(sq + jnp.asarray(1e-12, sq.dtype))
    raise ValueError(f"unknown distance {kind!r}")


def trades_loss(logits_clean: Array, logits_adv: Array, y: Array, beta: float | Array) -> Array:
    """TRADES per example ``[B]``: ``CE(z, y) + β · KL(softmax z || softmax z_adv)``.

    Args:
        logits_clean: ``[B, C]`` on the clean images; logits_adv: ``[B, C]`` on the adversarial ones.
        y: labels ``int[B]``; beta: ``β >= 0``.
    """
    kl = pairwise_distance("kl", logits_clean, logits_adv)
    return L.ce(logits_clean, y) + jnp.asarray(beta, kl.dtype) * kl


def mart_loss(logits_clean: Array, logits_adv: Array, y: Array, beta: float | Array) -> Array:
    """MART per example ``[B]``: ``BCE(p_adv, y) + β · KL(p || p_adv) · (1 − p_y)``.

    ``BCE(p_adv, y) = −log p_adv,y − log(1 − max_{k≠y} p_adv,k)``, the boosted cross-entropy (the
    second term pushes the strongest wrong class down). ``p``, ``p_adv``: softmax of the clean and
    adversarial logits ``[B, C]``. ``log(1 − p_k)`` is computed as ``logsumexp`` over the other
    classes minus ``logsumexp`` over all, exact where ``p_k`` rounds to 1 (the paper's code adds
    ``1e-4`` inside the log instead).
    """
    c = logits_adv.shape[1]
    mask_y = jax.nn.one_hot(y, c, dtype=jnp.bool_)
    # strongest wrong class on the adversarial point
    k = jnp.argmax(jnp.where(mask_y, -jnp.inf, logits_adv), axis=1)
    without_k = jnp.where(jax.nn.one_hot(k, c, dtype=jnp.bool_), -jnp.inf, logits_adv)
    log_not_k = jax.nn.logsumexp(without_k, axis=1) - jax.nn.logsumexp(logits_adv, axis=1)
    bce = L.ce(logits_adv, y) - log_not_k
    p_y = jnp.exp(-L.ce(logits_clean, y))
    kl = pairwise_distance("kl", logits_clean, logits_adv)
    return bce + jnp.asarray(beta, kl.dtype) * kl * (1.0 - p_y)


def distillation_loss(logits: Array, teacher_logits: Array, temperature: float | Array) -> Array:
    """Soft-label cross-entropy at temperature ``T`` per example ``[B]``:
    ``−Σ_c softmax(z_teacher / T)_c · log softmax(z / T)_c`` (Papernot et al., 2016; no ``T²``
    factor). The teacher's side carries no gradient."""
    t = jnp.asarray(temperature, logits.dtype)
    soft = jax.nn.softmax(jax.lax.stop_gradient(teacher_logits) / t, axis=1)
    return -jnp.sum(soft * jax.nn.log_softmax(logits / t, axis=1), axis=1)


def trades_adversary(attack: PGD, key: Array, model: Any, x: Array) -> Array:
    """TRADES's inner maximiser: ``x_adv`` ``[B, ...]`` maximising ``KL(p(x) || p(x_adv))`` over
    the attack's threat set by ``attack.num_steps`` steepest-ascent steps of its step length, from
    ``x + 0.001 · N(0, I)`` (projected); the last iterate is returned. Per-example keys
    (``fold_in(key, i)``), so the start does not depend on the batch size."""
    threat = attack.threat
    noise = jax.vmap(lambda k: jax.random.normal(k, x.shape[1:], x.dtype))(
        example_keys(key, x.shape[0])
    )
    x0 = threat.project(x, x + jnp.asarray(TRADES_START_SCALE, x.dtype) * noise)
    p_clean = jax.lax.stop_gradient(model(x))
    step = attack.step_length(x.dtype)

    def kl(logits, ref):
        return pairwise_distance("kl", ref, logits)

    def body(_, xa):
        g, _, _ = loss_grad(model, kl, xa, p_clean)
        return threat.project(x, xa + threat.ascent_step(g, step))

    return jax.lax.fori_loop(0, attack.num_steps, body, x0)


__all__ = [
    "AdversarialTraining",
    "Distillation",
    "check_temperature",
    "distillation_loss",
    "mart_loss",
    "pairwise_distance",
    "trades_adversary",
    "trades_loss",
]
