"""Dense attacks on segmentation models: SegPGD, DAG, ASMA.

The target is a model returning per-pixel logits ``[B, H, W, C]``; labels are masks
``y[B, H, W]`` (class ids) and a targeted attack takes a target mask ``target[B, H, W]`` (e.g. all
background: erase the lesion). The calling convention is every attack's,
``attack(key, model, x, y, *, target=None) -> AttackResult``, with the same threat objects
(``LinfBall``, ``L2Ball``), per-example keys and :func:`jaxadv.result.finalize`, which projects the
final point and recomputes success with the attack's per-image :class:`DenseRule`
(:mod:`jaxadv.segmentation`: default ``dice_drop(0.5)`` untargeted, ``target_mask_iou(0.9)``
targeted). Every attack keeps, per image, the best iterate under that rule (a success beats a
failure, then the larger margin: the lower Dice, or the higher target IoU).

These attacks are not in :data:`jaxadv.attacks.REGISTRY`: its contract tests call every entry on
classifiers with one label per image, which a dense attack refuses. Their own contract (threat set,
recomputed success, determinism, sharding) is tested in ``tests/test_segmentation.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxadv import _validate as V
from jaxadv import segmentation as S
from jaxadv._batch import bcast
from jaxadv._struct import pytree_dataclass, static
from jaxadv.attacks.base import AbstractAttack
from jaxadv.attacks.driver import Best, Scored, iterate, keep_best
from jaxadv.attacks.gradient import loss_grad
from jaxadv.result import AttackResult, finalize
from jaxadv.threats import L2Ball, LinfBall

Array = jax.Array

_SETTINGS = {"step_size": V.positive(), "num_steps": V.at_least(1)}


def pixel_ce(logits: Array, labels: Array) -> Array:
    """Per-pixel cross-entropy ``f32[B, H, W]`` of logits ``[B, H, W, C]`` against class ids."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]


def _pick(logits: Array, labels: Array) -> Array:
    """``logits[b, h, w, labels[b, h, w]]`` -> ``[B, H, W]``."""
    return jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]


def _pixel_mean(v: Array) -> Array:
    return jnp.mean(v.reshape(v.shape[0], -1), axis=1)


def _normalized_step(threat: Any, g: Array, step: Array) -> Array:
    """``step * g / ||g||`` in the threat's norm (zero where ``g`` is zero): the scaled gradient
    step of DAG and ASMA, ``γ r / ||r||_∞`` in the L∞ case."""
    n = threat.norm(g)
    return step * g / bcast(jnp.where(n > 0, n, 1.0), g)


class AbstractDenseAttack(AbstractAttack):
    """Shared calling convention of the dense attacks (fields ``threat``, ``rule``, ``step_size``,
    ``num_steps``)."""

    oracle: ClassVar[str] = "gradient"
    budget_field: ClassVar[str | None] = "num_steps"
    restarts_field: ClassVar[str | None] = None
    threats: ClassVar[tuple[type, ...]] = (LinfBall, L2Ball)
    settings: ClassVar[Mapping[str, V.Range]] = _SETTINGS
    #: the attack needs a target mask
    needs_target: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.rule is not None and not isinstance(self.rule, S.DenseRule):
            raise TypeError(
                f"rule must be a jaxadv.segmentation.DenseRule (dice_drop(t), dice_below(t), "
                f"target_mask_iou(t)), got {type(self.rule).__name__}"
            )
        V.check_attack(self)

    def resolved_rule(self, targeted: bool) -> S.DenseRule:
        """The rule in force: the configured one, else :func:`jaxadv.segmentation.default_rule`."""
        return S.default_rule(targeted) if self.rule is None else self.rule

    def check_inputs(self, model: Any, x: Array, y: Array, target: Array | None = None) -> int:
        """Dense call checks (:func:`jaxadv.segmentation.check_inputs`) plus the rule / target
        agreement; returns the number of classes."""
        name = type(self).__name__
        if self.needs_target and target is None:
            raise ValueError(
                f"{name} is a targeted attack: pass target= a mask [B, H, W] (e.g. "
                "np.zeros_like(y) erases every foreground region)"
            )
        rule = self.resolved_rule(target is not None)
        if rule.targeted and target is None:
            raise ValueError(f"rule {rule.describe()} needs target= a mask [B, H, W]")
        if target is not None and not rule.targeted:
            raise ValueError(
                f"a targeted call (target=...) is judged by a target rule; got {rule.describe()}. "
                "Use rule=jaxadv.segmentation.target_mask_iou(t) or drop target="
            )
        return S.check_inputs(self.threat, model, x, y, target)

    def _step_size(self, dtype) -> Array:
        if self.step_size is None:
            return jnp.asarray(self.threat.eps, dtype) * (2.5 / self.num_steps)
        return jnp.asarray(self.step_size, dtype)

    def _loop(self, keys, model, x, y, target, step_fn, x0, *, done=None, spent=0) -> AttackResult:
        """Run ``step_fn(i, state, judge) -> (state, Scored)`` with the driver (``state`` is the
        point, or a ``(point, done)`` tuple with ``done``), score the last point, and finalize
        under the rule."""
        rule = self.resolved_rule(target is not None)
        b = x.shape[0]
        clean = None
        spent = jnp.full((b,), spent, jnp.int32)
        if rule.needs_clean:
            clean = S.scores(jax.lax.stop_gradient(model(x)), y)["dice"]
            spent = spent + 1

        def judge(point, logits):
            logits = jax.lax.stop_gradient(logits)
            return Scored(
                point=point,
                success=rule.success(logits, y, target, clean),
                score=rule.margin(logits, y, target, clean),
            )

        out = iterate(
            lambda i, s: step_fn(i, s, judge),
            x0,
            stop=self.num_steps,
            active=jnp.ones((b,), bool),
            queries=spent,
            best=Best.empty(x),
            done=done,
        )
        last = out.state[0] if isinstance(out.state, tuple) else out.state
        best = keep_best(out.best, judge(last, model(last)))
        q = out.queries + out.active.astype(jnp.int32)
        return finalize(self.threat, model, x, best.point, y, target=target, queries=q, rule=rule)


@pytree_dataclass
class SegPGD(AbstractDenseAttack):
    """PGD on the per-pixel cross-entropy of a segmentation model (SegPGD, Gu et al., ECCV 2022).

    Each step ascends the mean per-pixel loss ``(1 - λ_t) CE`` over pixels the attack has not
    yet turned and ``λ_t CE`` over those it has, with ``λ_t = t / (2 T)`` (``t = 0..T-1``), so the
    early steps concentrate on pixels still correct (Gu et al.'s schedule); ``weighted=False``
    gives plain PGD on the mean per-pixel CE. Untargeted the loss is ``CE(y)`` (a pixel is turned
    when its class differs from ``y``); targeted it is ``-CE(target)`` (turned: equal to the
    target). Steps are the threat's steepest-ascent step (sign for L∞), then projection.

    Attributes:
        threat: ``LinfBall`` or ``L2Ball``.
        step_size: step length in the threat's norm; ``None``: ``2.5 * eps / num_steps``.
        num_steps: gradient steps ``T`` (static).
        random_start: start from a uniform point of the ball (static).
        weighted: use SegPGD's pixel weighting (static); ``False``: plain per-pixel CE.
        rule: the per-image success rule (``None``: ``dice_drop(0.5)`` / ``target_mask_iou(0.9)``).

    Example:
        >>> import jax.numpy as jnp, jaxadv
        >>> model = jaxadv.from_apply(lambda w, x: jnp.concatenate([w - x, x - w], -1), 0.5)
        >>> x, y = jnp.full((1, 4, 4, 1), 0.7), jnp.ones((1, 4, 4), jnp.int32)
        >>> res = jaxadv.SegPGD(threat=jaxadv.LinfBall(eps=0.3), num_steps=5)(0, model, x, y)
        >>> bool(res.success[0]), float(res.info["dice"][0])
        (True, 0.0)
    """

    threat: Any
    step_size: float | Array | None = None
    num_steps: int = static(default=10)
    random_start: bool = static(default=True)
    weighted: bool = static(default=True)
    rule: S.DenseRule | None = None

    def run(self, keys, model, x, y, *, target=None) -> AttackResult:
        threat = self.threat
        step = self._step_size(x.dtype)
        lbl = y if target is None else target
        sign = -1.0 if target is not None else 1.0
        t_total = self.num_steps

        def step_fn(i, xa, judge):
            lam = jnp.asarray(i, jnp.float32) / (2.0 * t_total)

            def loss_fn(logits, lbl):
                ce = sign * pixel_ce(logits, lbl)
                if not self.weighted:
                    return _pixel_mean(ce)
                pred = S.predict(jax.lax.stop_gradient(logits))
                turned = (pred != y) if target is None else (pred == target)
                w = jnp.where(turned, lam, 1.0 - lam)
                return _pixel_mean(w * ce)

            g, _, logits = loss_grad(model, loss_fn, xa, lbl)
            xn = threat.project(x, xa + threat.ascent_step(g, step))
            return xn, judge(xa, logits)

        x0 = threat.random_init(keys, x) if self.random_start else x
        return self._loop(keys, model, x, y, target, step_fn, x0)


@pytree_dataclass
class DAG(AbstractDenseAttack):
    """Dense adversary generation (Xie et al., ICCV 2017), under a norm ball.

    Each step takes ``r = ∇ Σ_{n ∈ T} (z_{l'_n} - z_{l_n})`` over the target pixel set ``T``
    and moves by ``step_size · r / ||r||`` in the threat's norm (Xie et al.'s ``γ r / ||r||_∞`` for
    L∞), then projects. Untargeted, ``l`` is the true mask ``y``, the adversarial label ``l'`` is
    each pixel's highest-scoring other class at the clean image, and ``T`` the pixels still
    predicted as ``y``; targeted, ``l' = target``, ``l`` the current prediction and ``T`` the
    pixels not yet at the target. An image stops once ``T`` is empty (Xie et al.'s stopping rule).
    Deviations from the paper: no random label permutation (the runner-up class is deterministic
    and, for two classes, the only choice), and the projection onto the threat set (DAG itself is
    unconstrained; ``eps = inf`` recovers that).

    Attributes:
        threat: ``LinfBall`` or ``L2Ball``.
        step_size: ``γ``, the step length in the threat's norm; ``None``: ``2.5 * eps / num_steps``.
        num_steps: the maximum number of iterations (static; the paper uses 200).
        rule: the per-image success rule (``None``: the default of :mod:`jaxadv.segmentation`).
    """

    threat: Any
    step_size: float | Array | None = None
    num_steps: int = static(default=50)
    rule: S.DenseRule | None = None

    def run(self, keys, model, x, y, *, target=None) -> AttackResult:
        threat = self.threat
        step = self._step_size(x.dtype)
        if target is None:
            z0 = jax.lax.stop_gradient(model(x))
            others = jnp.where(jax.nn.one_hot(y, z0.shape[-1], dtype=bool), -jnp.inf, z0)
            adv_lbl = S.predict(others)
        else:
            adv_lbl = target

        def step_fn(i, state, judge):
            xa, _ = state

            def loss_fn(logits, lbl):
                pred = S.predict(jax.lax.stop_gradient(logits))
                if target is None:
                    in_t, orig = pred == y, y
                else:
                    in_t, orig = pred != target, pred
                diff = _pick(logits, adv_lbl) - _pick(logits, orig)
                return jnp.sum(jnp.where(in_t, diff, 0.0).reshape(diff.shape[0], -1), axis=1)

            g, _, logits = loss_grad(model, loss_fn, xa, adv_lbl)
            pred = S.predict(logits)
            in_t = (pred == y) if target is None else (pred != target)
            empty = ~jnp.any(in_t.reshape(in_t.shape[0], -1), axis=1)
            xn = threat.project(x, xa + _normalized_step(threat, g, step))
            return (xn, empty), judge(xa, logits)

        b = x.shape[0]
        out = self._loop(
            keys,
            model,
            x,
            y,
            target,
            lambda i, s, judge: step_fn(i, s, judge),
            (x, jnp.zeros((b,), bool)),
            done=lambda s, _: s[1],
            spent=1 if target is None else 0,  # the clean forward pass choosing l'
        )
        return out


@pytree_dataclass
class ASMA(AbstractDenseAttack):
    """Adaptive segmentation mask attack (Ozbulak, Van Messem and De Neve, MICCAI 2019): targeted.

    Each step takes ``r = ∇ Σ_c Σ_n 1[target_n = c] · 1[pred_n ≠ target_n] · z_{n,c}``: the
    target class's logit, summed over the pixels whose prediction is not yet the target (the
    *adaptive mask*, recomputed every step), and moves by ``step_size · r / ||r||`` in the threat's
    norm, then projects. An image stops once its prediction equals the target mask. Deviations
    from the paper: the update is normalised in the threat's norm and projected onto the threat
    set (the paper adds ``τ r`` unconstrained, with a perturbation multiplier ``τ``); ``eps=inf``
    with a small ``step_size`` is closest to it.

    Attributes:
        threat: ``LinfBall`` or ``L2Ball``.
        step_size: the step length in the threat's norm; ``None``: ``2.5 * eps / num_steps``.
        num_steps: the maximum number of iterations (static).
        rule: the per-image success rule (``None``: ``target_mask_iou(0.9)``).
    """

    needs_target: ClassVar[bool] = True

    threat: Any
    step_size: float | Array | None = None
    num_steps: int = static(default=50)
    rule: S.DenseRule | None = None

    def run(self, keys, model, x, y, *, target=None) -> AttackResult:
        if target is None:
            raise ValueError("ASMA is a targeted attack: pass target= a mask [B, H, W]")
        threat = self.threat
        step = self._step_size(x.dtype)

        def step_fn(i, state, judge):
            xa, _ = state

            def loss_fn(logits, lbl):
                pred = S.predict(jax.lax.stop_gradient(logits))
                zt = jnp.where(pred != lbl, _pick(logits, lbl), 0.0)
                return jnp.sum(zt.reshape(zt.shape[0], -1), axis=1)

            g, _, logits = loss_grad(model, loss_fn, xa, target)
            miss = S.predict(logits) != target
            reached = ~jnp.any(miss.reshape(miss.shape[0], -1), axis=1)
            xn = threat.project(x, xa + _normalized_step(threat, g, step))
            return (xn, reached), judge(xa, logits)

        b = x.shape[0]
        return self._loop(
            keys, model, x, y, target, step_fn, (x, jnp.zeros((b,), bool)), done=lambda s, _: s[1]
        )


__all__ = ["ASMA", "DAG", "AbstractDenseAttack", "SegPGD", "pixel_ce"]
