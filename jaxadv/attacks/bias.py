"""Adversarial bias field (after Tian et al., 2021, "Bias field poses a threat to DNN-based X-ray
recognition", ICME): a smooth multiplicative intensity field, the artefact scanners produce.

The threat is *parametric*: :class:`BiasFieldThreat` holds the allowed set of parameters (a
log-space polynomial field of degree ``d`` whose amplitude ``max |B|`` is at most ``eps``, plus
optional additive noise ``|n| <= noise_eps``) and renders an image from them,

    ``adv = clip(x * exp(B) + n, lo, hi)``,   ``B(u, v) = sum_{i + j <= d} a_ij u^i v^j``

on ``(u, v) in [-1, 1]^2`` (``x * exp(B)`` is ``exp(log x + B)`` without the log of 0: zero
coefficients give ``x`` exactly). The attack :class:`BiasField` returns parameters only; the
library projects them into the threat set, renders ``adv`` from them and recomputes success
(:func:`finalize_field`), so no image outside the set can be reported.

The reference code's optional coarse spatial warp of the field is not implemented.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv import _validate as V
from jaxadv import losses as L
from jaxadv._batch import bcast, bsel
from jaxadv._struct import float32_fields, pytree_dataclass, replace, static
from jaxadv._xla_cpu import canonical_convs
from jaxadv.attacks.base import AbstractAttack
from jaxadv.metrics import ssim
from jaxadv.result import AttackResult, finalize
from jaxadv.threats import L0Pixels

Array = jax.Array

__all__ = ["BiasField", "BiasFieldThreat", "field_basis", "finalize_field"]


def field_metric(degree: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """The Gram matrix ``G = Phi Phi^T / (H W)`` of :func:`field_basis` (``f32[M, M]``) and its
    inverse: coefficients ``c`` give a field of mean square ``c^T G c``, and ``G^-1 g`` turns a
    gradient ``g`` with respect to the coefficients into the steepest direction of the field
    itself (basis-independent). Computed in float64; a 1-pixel axis makes the monomials in its
    variable vanish, so the pseudo-inverse is used."""
    phi = field_basis(degree, h, w).astype(np.float64).reshape(-1, h * w)
    gram = phi @ phi.T / (h * w)
    return gram.astype(np.float32), np.linalg.pinv(gram, hermitian=True).astype(np.float32)


def field_basis(degree: int, h: int, w: int) -> np.ndarray:
    """``f32[M, H, W]`` monomials ``u^i v^j`` (``i + j <= degree``, ``M = (d+1)(d+2)/2``) on the
    pixel grid mapped to ``[-1, 1]^2`` (rows ``u``, columns ``v``; a 1-pixel axis sits at 0)."""
    u = np.linspace(-1, 1, h) if h > 1 else np.zeros(1)
    v = np.linspace(-1, 1, w) if w > 1 else np.zeros(1)
    uu, vv = np.meshgrid(u, v, indexing="ij")
    terms = [uu**i * vv**j for i in range(degree + 1) for j in range(degree + 1 - i)]
    return np.stack(terms).astype(np.float32)


@pytree_dataclass
class BiasFieldThreat:
    """The set of smooth multiplicative fields of degree ``degree`` with ``max |B| <= eps`` (in
    log space: intensities scale by a factor within ``[e^-eps, e^eps]``), plus additive noise
    ``|n| <= noise_eps`` (0: none), inside the box ``[lo, hi]``.

    Parameters are a dict ``{"coef": f32[B, M], "noise": f32[B, H, W, K]}``.

    Example:
        >>> import jax.numpy as jnp
        >>> t = BiasFieldThreat(degree=2, eps=0.3)
        >>> x = jnp.full((1, 4, 4, 1), 0.5)
        >>> p = t.zeros(x.shape)
        >>> bool(jnp.all(t.render(x, p) == x))
        True
    """

    p: ClassVar[str] = "bias"
    eps: float | Array = 0.3
    noise_eps: float | Array = 0.0
    lo: float | Array = 0.0
    hi: float | Array = 1.0
    degree: int = static(default=3)

    def __post_init__(self) -> None:
        float32_fields(self, "eps", "noise_eps", "lo", "hi")
        d = self.degree
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 0:
            raise ValueError(f"BiasFieldThreat: degree must be an int >= 0, got {d!r}")
        for name in ("eps", "noise_eps"):
            v = getattr(self, name)
            if isinstance(v, np.floating) and not v >= 0:
                raise ValueError(f"BiasFieldThreat: {name} must be >= 0, got {v}")
        if isinstance(self.lo, np.floating) and isinstance(self.hi, np.floating):
            if not self.lo < self.hi:
                raise ValueError(f"BiasFieldThreat: need lo < hi, got {self.lo}, {self.hi}")

    @property
    def num_coefs(self) -> int:
        return (self.degree + 1) * (self.degree + 2) // 2

    def basis(self, shape: tuple[int, ...]) -> Array:
        """``[M, H, W]`` for images of ``shape`` ``[B, H, W, K]``."""
        return jnp.asarray(field_basis(self.degree, shape[1], shape[2]))

    def zeros(self, shape: tuple[int, ...]) -> dict[str, Array]:
        """Identity parameters for images of ``shape``."""
        return {
            "coef": jnp.zeros((shape[0], self.num_coefs), jnp.float32),
            "noise": jnp.zeros(shape, jnp.float32),
        }

    def field(self, params: Mapping[str, Array], shape: tuple[int, ...]) -> Array:
        """The log-space field ``B[B, H, W]``."""
        return jnp.einsum("bm,mhw->bhw", params["coef"], self.basis(shape))

    def amplitude(self, params: Mapping[str, Array], shape: tuple[int, ...]) -> Array:
        """``f32[B]``: ``max |B|`` over the pixel grid (the threat's norm)."""
        return jnp.max(jnp.abs(self.field(params, shape)).reshape(shape[0], -1), axis=1)

    def project_params(self, params: Mapping[str, Array], shape: tuple[int, ...]) -> dict:
        """Scale each field down to amplitude ``eps`` (the field is linear in its coefficients) and
        clip the noise to ``noise_eps``. Non-finite coefficients become 0 (the identity)."""
        coef = jnp.asarray(params["coef"], jnp.float32)
        coef = jnp.where(jnp.all(jnp.isfinite(coef), axis=1, keepdims=True), coef, 0.0)
        amp = self.amplitude({"coef": coef}, shape)
        eps = jnp.asarray(self.eps, jnp.float32)
        scale = jnp.minimum(1.0, eps / jnp.maximum(amp, 1e-12))
        noise = jnp.nan_to_num(jnp.asarray(params["noise"], jnp.float32))
        ne = jnp.asarray(self.noise_eps, jnp.float32)
        return {"coef": coef * scale[:, None], "noise": jnp.clip(noise, -ne, ne)}

    def render(self, x: Array, params: Mapping[str, Array]) -> Array:
        """``clip(x * exp(B) + n, lo, hi)`` for ``x[B, H, W, K]`` (parameters as given)."""
        f = jnp.exp(self.field(params, x.shape))[..., None].astype(x.dtype)
        return jnp.clip(x * f + params["noise"].astype(x.dtype), self.lo, self.hi)


def finalize_field(threat, model, x, params, y, *, target=None, queries=None) -> AttackResult:
    """The honest exit of a bias-field attack: project ``params`` into ``threat``, render ``adv``
    from them, re-evaluate the model there (:func:`jaxadv.result.finalize`).

    ``norm`` is the field's amplitude ``max |B|``; ``info`` adds ``ssim`` (``f32[B]``, against
    ``x``), the projected ``coef[B, M]``, ``noise_max[B]`` and ``field[B, H, W]``.
    """
    params = threat.project_params(params, x.shape)
    adv = threat.render(x, params)
    res = finalize(
        L0Pixels(eps=jnp.inf, lo=threat.lo, hi=threat.hi),
        model,
        x,
        adv,
        y,
        target=target,
        queries=queries,
    )
    # a row finalize reset to x (non-finite adv) is reported with the identity field
    ok = ~res.info["nonfinite"]
    coef = jnp.where(ok[:, None], params["coef"], 0.0)
    noise = bsel(ok, params["noise"], jnp.zeros_like(params["noise"]))
    p = {"coef": coef, "noise": noise}
    info = {
        **res.info,
        "ssim": field_ssim(x, res.adv, threat),
        "coef": coef,
        "noise_max": jnp.max(jnp.abs(noise).reshape(x.shape[0], -1), axis=1),
        "field": threat.field(p, x.shape),
    }
    return replace(res, norm=threat.amplitude(p, x.shape), info=info)


def field_ssim(x: Array, adv: Array, threat: BiasFieldThreat) -> Array:
    """``f32[B]`` SSIM of ``adv`` against ``x`` over the threat's box (window 11, or the largest
    odd size that fits a smaller image)."""
    win = min(11, x.shape[1], x.shape[2])
    win -= 1 - win % 2
    data_range = jnp.max(jnp.asarray(threat.hi)) - jnp.min(jnp.asarray(threat.lo))
    return ssim(x, adv, data_range=data_range, win_size=win)


@pytree_dataclass
class BiasField(AbstractAttack):
    """Adversarial bias field by MI-FGSM on the field's coefficients (and the noise).

    Per step and example the gradient of the loss with respect to the coefficients is
    L1-normalised and accumulated with momentum ``decay``; the coefficients move by
    ``step_size * sign(momentum)`` and are projected to amplitude ``eps`` (the noise likewise with
    ``noise_step``). The best parameters per example (success first, then loss) are returned to
    :func:`finalize_field`. Parameters start at zero (the identity field), as in the reference.

    Attributes:
        threat: a :class:`BiasFieldThreat`.
        num_steps: MI-FGSM steps (static).
        step_size: coefficient step; ``None`` means ``2.5 * eps / num_steps``.
        noise_step: noise step; ``None`` means ``2.5 * noise_eps / num_steps``.
        decay: momentum decay (1.0 in the reference).
        loss: ``'ce'``, ``'margin'`` or a callable ``(logits, y) -> [B]`` (static; maximised).

    Example:
        >>> import jax, jax.numpy as jnp, jaxadv
        >>> model = jaxadv.from_apply(lambda w, x: x.reshape(x.shape[0], -1) @ w, jnp.eye(16, 2))
        >>> atk = BiasField(threat=BiasFieldThreat(degree=2, eps=0.2), num_steps=3)
        >>> res = atk(jax.random.key(0), model, jnp.full((2, 4, 4, 1), 0.5), jnp.array([0, 1]))
        >>> bool(jnp.all(res.norm <= 0.2 + 1e-6))
        True
    """

    oracle: ClassVar[str] = "gradient"
    budget_field: ClassVar[str | None] = "num_steps"
    restarts_field: ClassVar[str | None] = None
    settings: ClassVar[Mapping[str, V.Range]] = {}

    threat: Any
    num_steps: int = static(default=20)
    step_size: float | Array | None = None
    noise_step: float | Array | None = None
    decay: float | Array = 1.0
    loss: str | Callable = static(default="ce")

    def __post_init__(self) -> None:
        if not isinstance(self.threat, BiasFieldThreat):
            raise TypeError(
                f"BiasField needs threat=BiasFieldThreat(...), got {type(self.threat).__name__}"
            )
        n = self.num_steps
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"BiasField num_steps must be an int >= 1, got {n!r}")
        float32_fields(self, "step_size", "noise_step", "decay")
        for name in ("step_size", "noise_step"):
            v = getattr(self, name)
            if isinstance(v, np.floating) and not v > 0:
                raise ValueError(f"BiasField {name} must be > 0, got {v}")
        if isinstance(self.decay, np.floating) and not self.decay >= 0:
            raise ValueError(f"BiasField decay must be >= 0, got {self.decay}")

    def with_eps(self, eps: float | Array) -> BiasField:
        return replace(self, threat=replace(self.threat, eps=eps))

    def _steps(self) -> tuple[Array, Array]:
        t, n = self.threat, 2.5 / self.num_steps
        s = t.eps * n if self.step_size is None else self.step_size
        ns = t.noise_eps * n if self.noise_step is None else self.noise_step
        return jnp.asarray(s, jnp.float32), jnp.asarray(ns, jnp.float32)

    def run(self, keys, model, x, y, *, target=None) -> AttackResult:
        threat = self.threat
        loss_fn = L.resolve(self.loss, target is not None)
        lbl = y if target is None else target
        step, nstep = self._steps()
        b = x.shape[0]

        def total(params):
            logits = model(threat.render(x, params))
            per = loss_fn(logits, lbl)
            return jnp.sum(per), (per, logits)

        grad_fn = canonical_convs(jax.grad(total, has_aux=True))

        def l1n(g):
            n = jnp.sum(jnp.abs(g.reshape(b, -1)), axis=1)
            return g / bcast(jnp.maximum(n, 1e-12), g)

        # The coefficients move along the steepest ascent of the *field* (G^-1 g, unit root mean
        # square over the pixels), not sign(g): the monomials are strongly correlated, and sign
        # steps on M of them make a degree-d field take erratic steps that grow with M, so a
        # higher degree (a superset threat) did worse than a lower one.
        gram, gram_inv = (jnp.asarray(a) for a in field_metric(threat.degree, *x.shape[1:3]))

        def rms(c):
            return jnp.sqrt(jnp.maximum(jnp.einsum("bm,mn,bn->b", c, gram, c), 1e-24))

        def field_dir(g):
            d = g @ gram_inv
            return d / rms(d)[:, None]

        def body(_, c):
            params, mom, best, best_ok, best_score = c
            g, (per, logits) = grad_fn(params)
            ok = L.is_adversarial(logits, y, target)
            better = (ok & ~best_ok) | ((ok == best_ok) & (per > best_score))
            best = jax.tree.map(lambda n, o: bsel(better, n, o), params, best)
            best_ok, best_score = best_ok | ok, jnp.where(better, per, best_score)
            mom = {
                "coef": self.decay * mom["coef"] + field_dir(g["coef"]),
                "noise": self.decay * mom["noise"] + l1n(g["noise"]),
            }
            new = {
                "coef": params["coef"] + step * mom["coef"] / rms(mom["coef"])[:, None],
                "noise": params["noise"] + nstep * jnp.sign(mom["noise"]),
            }
            return threat.project_params(new, x.shape), mom, best, best_ok, best_score

        p0 = threat.zeros(x.shape)
        init = (p0, p0, p0, jnp.zeros((b,), bool), jnp.full((b,), -jnp.inf, jnp.float32))
        params, _, best, best_ok, best_score = jax.lax.fori_loop(0, self.num_steps, body, init)
        # the last iterate has not been scored yet
        logits = model(threat.render(x, params))
        ok, per = L.is_adversarial(logits, y, target), loss_fn(logits, lbl)
        better = (ok & ~best_ok) | ((ok == best_ok) & (per > best_score))
        best = jax.tree.map(lambda n, o: bsel(better, n, o), params, best)
        queries = jnp.full((b,), self.num_steps + 1, jnp.int32)
        return finalize_field(threat, model, x, best, y, target=target, queries=queries)
