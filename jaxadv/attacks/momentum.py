"""Transfer-boosting gradient attacks: MI-FGSM with the NI, DI and TI options (composable)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxadv import _validate as V
from jaxadv import image_ops as T
from jaxadv import losses as L
from jaxadv._batch import bcast
from jaxadv._struct import float32_fields, pytree_dataclass, static
from jaxadv.attacks.base import AbstractAttack, fold_keys, register
from jaxadv.attacks.driver import Best, Scored, iterate, keep_best
from jaxadv.attacks.gradient import loss_grad
from jaxadv.result import AttackResult, finalize
from jaxadv.threats import L2Ball, LinfBall

Array = jax.Array
_TINY = 1e-12


def momentum_step(
    threat: Any, x: Array, xa: Array, m: Array, g: Array, *, decay: Array, step_size: Array
) -> tuple[Array, Array]:
    """The MI-FGSM update, the one momentum rule of the library (:class:`MIFGSM`, and HFC /
    the adaptive attack of :mod:`jaxadv.attacks.hfc`): ``m ← decay·m + g / ‖g‖_1`` (the paper's
    L1 normalisation, per example; the TF reference divides by ``mean|g|``, which scales ``m`` by
    ``D`` and, the ascent steps being scale invariant, moves nothing but rounding), then
    ``xa ← proj(xa + ascent_step(m, step_size))`` in the threat's norm. ``decay = 0`` is BIM /
    I-FGSM. Returns ``(xa, m)``."""
    b = g.shape[0]
    l1 = jnp.sum(jnp.abs(g.reshape(b, -1)), axis=1)
    m = decay * m + g / bcast(jnp.maximum(l1, _TINY), g)
    return threat.project(x, xa + threat.ascent_step(m, step_size)), m


@register
@pytree_dataclass
class MIFGSM(AbstractAttack):
    """Momentum iterative FGSM (Dong et al., 2018) with the transfer-boosting options, composable
    (MI-DI-TI, NI-DI-TI, ...):

    * ``nesterov`` (NI-FGSM, Lin et al., 2020): the gradient is taken at the look-ahead point
      ``x_t + decay * ascent_step(g_t, step_size)``;
    * ``diversity`` (DI, Xie et al., 2019): with probability ``diversity`` per example and step the
      gradient is taken through a random resize-and-pad of the input
      (:func:`jaxadv.image_ops.random_resize_pad`, canvas ``diversity_ratio`` times the image);
    * ``translation`` (TI, Dong et al., 2019): the gradient is smoothed by a ``translation x
      translation`` Gaussian kernel (``translation_nsig`` standard deviations across it, as the
      reference ``norm.pdf(linspace(-nsig, nsig, size))``; zero borders); ``1`` is the delta kernel.

    One step: ``g = TI(grad)``, ``m = decay * m + g / ||g||_1`` (:func:`momentum_step`),
    ``x = proj(x + ascent_step(m, step_size))`` in the threat model's norm (the sign step under L∞, the normalised step under
    L2). With ``decay=0`` and no option this is I-FGSM: :class:`~jaxadv.PGD` without a random
    start and with the same step. As in PGD the best iterate is kept (a success beats a failure,
    then the higher loss); when the gradient is not taken at the iterate itself (NI or DI) the
    iterate is scored by one more forward pass, and ``queries`` count both.

    Deviations: DI resizes to a continuous size and position (bilinear) and back to the input size,
    so any fixed-input classifier takes it; NI's look-ahead is the momentum's own ascent step
    (``decay * step_size * sign(m)`` under L∞, the reference uses ``decay * step_size * m``), the
    same rule under every norm.

    Attributes:
        threat: ``LinfBall`` or ``L2Ball``.
        step_size: step length; ``None`` means ``eps / num_steps`` (the papers' choice).
        num_steps: iterations (static).
        decay: momentum decay ``mu`` (1.0 in the papers; 0 turns momentum off).
        nesterov: NI look-ahead (static).
        diversity: DI probability per example and step; ``None`` turns DI off (static choice).
        diversity_ratio: DI canvas / image size (``1.1`` as 330/299 in Xie et al.).
        translation: TI kernel size, odd (static; 1 is off; 15 in Dong et al. 2019 on 299 px).
        translation_nsig: TI kernel width in standard deviations (static).
        loss: ``'ce'``, ``'margin'``, ``'dlr'`` or a callable ``(logits, y) -> [B]`` (static).

    Example:
        >>> import jax, jax.numpy as jnp, jaxadv
        >>> model = jaxadv.from_apply(lambda w, x: x.reshape(x.shape[0], -1) @ w, jnp.eye(16, 2))
        >>> atk = jaxadv.MIFGSM(threat=jaxadv.LinfBall(eps=0.1), num_steps=4, diversity=0.5,
        ...                     translation=3)
        >>> res = atk(jax.random.key(0), model, jnp.full((2, 4, 4, 1), 0.5), jnp.array([0, 1]))
        >>> bool(jnp.all(res.norm <= 0.1 + 1e-6))
        True
    """

    oracle: ClassVar[str] = "gradient"
    budget_field: ClassVar[str | None] = "num_steps"
    restarts_field: ClassVar[str | None] = None
    threats: ClassVar[tuple[type, ...]] = (LinfBall, L2Ball)
    settings: ClassVar[Mapping[str, V.Range]] = {
        "step_size": V.positive(),
        "num_steps": V.at_least(1),
        "decay": V.Range(0.0, math.inf),
        "diversity": V.unit(),
        "diversity_ratio": V.Range(1.0, math.inf),
        "translation": V.at_least(1),
        "translation_nsig": V.positive(),
    }

    threat: Any
    step_size: float | Array | None = None
    num_steps: int = static(default=10)
    decay: float | Array = 1.0
    nesterov: bool = static(default=False)
    diversity: float | Array | None = None
    diversity_ratio: float | Array = 1.1
    translation: int = static(default=1)
    translation_nsig: float = static(default=3.0)
    loss: str | Callable = static(default="ce")

    def __post_init__(self):
        float32_fields(self, "step_size", "decay", "diversity", "diversity_ratio")
        if isinstance(self.translation, int) and self.translation % 2 != 1:
            raise ValueError(
                f"MIFGSM: translation (the TI kernel size) must be odd, got {self.translation}; "
                "use 1 to turn TI off"
            )

    def _step_size(self, dtype):
        if self.step_size is None:
            return jnp.asarray(self.threat.eps, dtype) / self.num_steps
        return jnp.asarray(self.step_size, dtype)

    def run(self, keys, model, x, y, *, target=None) -> AttackResult:
        threat = self.threat
        loss_fn = L.resolve(self.loss, target is not None)
        lbl = y if target is None else target
        step = self._step_size(x.dtype)
        decay = jnp.asarray(self.decay, x.dtype)
        b = x.shape[0]
        di = self.diversity is not None
        # The gradient point differs from the iterate under NI or DI: score the iterate apart.
        rescore = self.nesterov or di
        kernel = None
        if self.translation > 1:
            sigma = (self.translation - 1) / (2.0 * self.translation_nsig)
            kernel = T.gaussian_kernel1d(self.translation, sigma)

        def view(i, xg):
            if not di:
                return xg
            ks = fold_keys(keys, i)
            pick = jax.vmap(
                lambda k: (
                    jax.random.uniform(jax.random.fold_in(k, 1), (), x.dtype)
                    < jnp.asarray(self.diversity, x.dtype)
                )
            )(ks)
            moved = T.random_resize_pad(ks, xg, self.diversity_ratio)
            return jnp.where(bcast(pick, xg), moved, xg)

        def mi_step(i, state):
            xa, m = state
            xg = xa + decay * threat.ascent_step(m, step) if self.nesterov else xa
            g, per, logits = loss_grad(lambda z: model(view(i, z)), loss_fn, xg, lbl)
            if kernel is not None:
                g = T.separable_filter(g, kernel, mode="constant")
            xn, m = momentum_step(threat, x, xa, m, g, decay=decay, step_size=step)
            if rescore:
                logits = model(xa)
                per = loss_fn(logits, lbl)
            succ = L.is_adversarial(logits, y, target)
            return (xn, m), Scored(point=xa, success=succ, score=per)

        out = iterate(
            mi_step,
            (x, jnp.zeros_like(x)),
            stop=self.num_steps,
            active=jnp.ones((b,), bool),
            queries=jnp.zeros((b,), jnp.int32),
            cost=2 if rescore else 1,
            best=Best.empty(x),
        )
        xa = out.state[0]
        logits = model(xa)
        last = Scored(
            point=xa, success=L.is_adversarial(logits, y, target), score=loss_fn(logits, lbl)
        )
        best = keep_best(out.best, last)
        return finalize(threat, model, x, best.point, y, target=target, queries=out.queries + 1)
