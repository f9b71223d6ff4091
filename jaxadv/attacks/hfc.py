"""Detector-aware attacks: HFC (Yao et al.) and the generic adaptive attack.

HFC (spec §9) keeps the adversarial features of every layer inside the *target* class's clean
feature distribution, modelled per layer and per class by a Gaussian mixture fitted with EM
(:func:`fit_gmm`, in JAX, full covariance, ``K`` static). :class:`Adaptive` adds
``-λ·detector.score(x)`` to an attack's objective, the standard way to evaluate a detector against
an attacker who knows it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv import _validate as V
from jaxadv import losses as L
from jaxadv._struct import pytree_dataclass, replace, static
from jaxadv.attacks.base import AbstractAttack
from jaxadv.attacks.momentum import momentum_step
from jaxadv.result import AttackResult, finalize
from jaxadv.threats import L1Ball, L2Ball, LinfBall

Array = jax.Array

_LOG_2PI = float(np.log(2.0 * np.pi))


# -- Gaussian mixtures ----------------------------------------------------------------------------
@pytree_dataclass
class GMM:
    """Gaussian mixtures with precision Cholesky factors (sklearn's ``precisions_cholesky_``:
    ``Σ_k^{-1} = L_k L_kᵀ``). Leading axes ``[...]`` (e.g. classes) are batch axes.

    Attributes:
        means: ``[..., K, d]``; prec_chol: ``[..., K, d, d]``; log_weights: ``[..., K]``.
    """

    means: Array
    prec_chol: Array
    log_weights: Array

    def component_log_prob(self, h: Array) -> Array:
        """``h[B, d]`` against one mixture (no leading axes) -> ``[B, K]`` ``log π_k + log N_k``."""
        z = jnp.einsum("bkd,kde->bke", h[:, None, :] - self.means[None], self.prec_chol)
        logdet = jnp.sum(jnp.log(jnp.diagonal(self.prec_chol, axis1=1, axis2=2)), axis=1)
        d = h.shape[1]
        return (
            self.log_weights[None, :]
            + logdet[None, :]
            - 0.5 * jnp.sum(z * z, axis=2)
            - 0.5 * d * _LOG_2PI
        )

    def log_prob(self, h: Array) -> Array:
        """``h[B, d] -> [B]`` mixture log density (one mixture, no leading axes)."""
        return jax.nn.logsumexp(self.component_log_prob(h), axis=1)


def _prec_chol(cov: Array) -> Array:
    c = jnp.linalg.cholesky(cov)
    eye = jnp.broadcast_to(jnp.eye(cov.shape[-1], dtype=cov.dtype), cov.shape)
    return jnp.swapaxes(jax.scipy.linalg.solve_triangular(c, eye, lower=True), -1, -2)


def fit_gmm(
    key: Array,
    h: Array,
    weights: Array | None = None,
    *,
    num_components: int,
    num_iters: int = 100,
    reg_covar: float = 1e-4,
) -> GMM:
    """EM for a full-covariance Gaussian mixture, in JAX (jittable, ``num_components`` static).

    Args:
        key: PRNG key (initial means: distinct weighted samples of ``h``).
        h: ``[N, d]`` data.
        weights: ``[N]`` non-negative sample weights (a 0/1 mask selects a class); ``None`` = 1.
        num_components: ``K``.
        num_iters: EM iterations (fixed; no tolerance test, so it vmaps over classes).
        reg_covar: added to every covariance diagonal (sklearn's default is 1e-6; features are
            float32 here).

    Returns:
        A :class:`GMM` with ``means[K, d]``, ``prec_chol[K, d, d]``, ``log_weights[K]``.
    """
    h = jnp.asarray(h, jnp.float32)
    n, d = h.shape
    w = jnp.ones((n,), jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
    total = jnp.sum(w)
    mean = jnp.sum(w[:, None] * h, axis=0) / total
    r0 = h - mean[None, :]
    cov0 = (w[:, None] * r0).T @ r0 / total + reg_covar * jnp.eye(d, dtype=jnp.float32)
    idx = jax.random.choice(key, n, (num_components,), replace=False, p=w / total)
    gmm = GMM(
        means=h[idx],
        prec_chol=_prec_chol(jnp.broadcast_to(cov0, (num_components, d, d))),
        log_weights=jnp.full((num_components,), -np.log(num_components), jnp.float32),
    )

    def em(_, g):
        resp = jax.nn.softmax(g.component_log_prob(h), axis=1) * w[:, None]  # [N, K]
        nk = jnp.maximum(jnp.sum(resp, axis=0), 1e-6)
        mu = resp.T @ h / nk[:, None]
        diff = h[None, :, :] - mu[:, None, :]  # [K, N, d]
        cov = jnp.einsum("kn,knd,kne->kde", resp.T, diff, diff) / nk[:, None, None]
        cov = cov + reg_covar * jnp.eye(d, dtype=jnp.float32)[None]
        return GMM(means=mu, prec_chol=_prec_chol(cov), log_weights=jnp.log(nk / jnp.sum(nk)))

    return jax.lax.fori_loop(0, num_iters, em, gmm)


def hfc_prior(
    key: Array,
    model: Any,
    x: Any,
    y: Any,
    *,
    num_components: int = 2,
    layers: Sequence[str] | None = None,
    max_dim: int = 512,
    num_iters: int = 100,
    batch_size: int = 256,
) -> dict[str, GMM]:
    """Per layer, per class Gaussian mixtures of clean features (HFC's offline step).

    Args:
        key: PRNG key.
        model: a :class:`jaxadv.features.FeatureModel`.
        x, y: clean training images ``[N, H, W, K]`` and labels ``[N]``.
        num_components: ``K`` per class (static).
        layers: layer names; ``None`` = the model's layers with ``d_l <= max_dim`` (the reference
            code skips layers with more than 512 channels).

    Returns:
        ``{layer: GMM}`` with leading class axis: ``means[C, K, d]`` etc.

    Raises:
        ValueError: a class with fewer than ``num_components`` examples, or no layer left.
    """
    from jaxadv.detect.common import batched

    x = np.asarray(x, np.float32)
    y = np.asarray(y).astype(np.int32).reshape(-1)
    feats_fn = jax.jit(lambda xb, m: m.features(xb))
    logits, feats = batched(feats_fn, x, model, batch_size=batch_size)
    c = logits.shape[1]
    counts = np.bincount(y, minlength=c)
    if np.any(counts < num_components):
        raise ValueError(
            f"every class needs at least num_components={num_components} examples, got counts "
            f"{counts.tolist()}"
        )
    names = tuple(layers) if layers is not None else model.layers
    names = [n for n in names if feats[n].shape[1] <= max_dim or layers is not None]
    if not names:
        raise ValueError(f"no layer with at most max_dim={max_dim} features")
    fit = jax.jit(
        jax.vmap(
            lambda k, h, w: fit_gmm(k, h, w, num_components=num_components, num_iters=num_iters),
            in_axes=(0, None, 0),
        )
    )
    out = {}
    for i, n in enumerate(names):
        keys = jax.random.split(jax.random.fold_in(key, i), c)
        masks = jnp.asarray(y[None, :] == np.arange(c)[:, None], jnp.float32)
        out[n] = fit(keys, jnp.asarray(feats[n]), masks)
    return out


def hfc_term(prior: Mapping[str, GMM], feats: Mapping[str, Array], target: Array) -> Array:
    """``Σ_l J^l_HFC`` per example ``[B]`` (spec §9): the scaled Mahalanobis distance of ``h^l`` to
    the most likely component ``k*`` (chosen without gradient) of the target class's mixture."""
    total = jnp.zeros(target.shape, jnp.float32)
    for n, g in prior.items():
        h = feats[n]
        mu, lc, lw = g.means[target], g.prec_chol[target], g.log_weights[target]
        z = jnp.einsum("bkd,bkde->bke", h[:, None, :] - mu, lc)  # [B, K, d]
        maha = jnp.sum(z * z, axis=2)  # [B, K]
        logdet = jnp.sum(jnp.log(jnp.diagonal(lc, axis1=2, axis2=3)), axis=2)
        kstar = jnp.argmax(jax.lax.stop_gradient(lw + logdet - 0.5 * maha), axis=1)
        j = jnp.take_along_axis(maha, kstar[:, None], axis=1)[:, 0] / h.shape[1]
        total = total + j
    return total


# -- the shared loop ------------------------------------------------------------------------------
def momentum_pgd(
    threat: Any,
    keys: Array,
    x: Array,
    objective: Callable[[Array], tuple[Array, Array]],
    *,
    step_size: Array,
    num_steps: int,
    momentum: Array,
    random_start: bool,
) -> tuple[Array, Array]:
    """``num_steps`` of ascent on ``objective(x_adv) -> (value[B], aux[B])`` by MI-FGSM's update
    (:func:`jaxadv.attacks.momentum.momentum_step`; ``momentum = 0`` is BIM / PGD), projected to
    the threat set each step.

    Returns the last iterate and ``aux`` recorded before every step, ``[B, num_steps]``.
    """

    def grad(xa):
        def total(xa):
            v, aux = objective(xa)
            return jnp.sum(v), aux

        return jax.grad(total, has_aux=True)(xa)

    def step(carry, _):
        xa, g = carry
        d, aux = grad(xa)
        xa, g = momentum_step(threat, x, xa, g, d, decay=momentum, step_size=step_size)
        return (xa, g), aux

    x0 = threat.random_init(keys, x) if random_start else x
    (xa, _), trace = jax.lax.scan(step, (x0, jnp.zeros_like(x)), None, length=num_steps)
    return xa, trace.T


def _momentum_attack(attack, keys, model, x, y, target, objective, default_scale, info_key):
    """``attack``'s momentum ascent on ``objective`` (:func:`momentum_pgd`) and the library's
    exit (:func:`finalize`), with the objective's per-step ``aux`` as ``info[info_key]``.
    ``step_size=None`` means ``default_scale·eps / num_steps``."""
    step = (
        jnp.asarray(attack.threat.eps, x.dtype) * (default_scale / attack.num_steps)
        if attack.step_size is None
        else jnp.asarray(attack.step_size, x.dtype)
    )
    adv, trace = momentum_pgd(
        attack.threat,
        keys,
        x,
        objective,
        step_size=step,
        num_steps=attack.num_steps,
        momentum=jnp.asarray(attack.momentum, x.dtype),
        random_start=attack.random_start,
    )
    res = finalize(
        attack.threat,
        model,
        x,
        adv,
        y,
        target=target,
        queries=jnp.full((x.shape[0],), attack.num_steps, jnp.int32),
    )
    return replace(res, info={**res.info, info_key: trace})


_SETTINGS = {"step_size": V.positive(), "num_steps": V.at_least(1)}


@pytree_dataclass
class HFC(AbstractAttack):
    """Hierarchical Feature Constraint attack (Yao et al., MICCAI 2021; spec §9).

    Targeted: descends ``CE(f(x*), t) + λ·Σ_l J^l_HFC(x*)`` by BIM / MI-FGSM and needs
    ``target``. The model must be a :class:`jaxadv.features.FeatureModel` exposing the prior's
    layers. ``info["hfc"]`` holds ``Σ_l J_HFC`` per example before every step ``[B, num_steps]``.
    Not in the attack registry (it needs a fitted prior and a feature model).

    Attributes:
        prior: ``{layer: GMM}`` from :func:`hfc_prior` (leaves).
        lam: ``λ`` (the reference uses 1).
        step_size: ``None`` means ``2·eps / num_steps`` (the reference's ``steps = 2·⌊ε/α⌋``).
        num_steps: static. momentum: 0 = BIM, 0.5 = the reference's MI-FGSM.
        random_start: symmetric uniform start in the ball (static; the reference's BIM has none).

    Example:
        >>> import jax, jax.numpy as jnp, jaxadv
        >>> w = jnp.array([[1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, 1.0]])
        >>> fn = lambda w, x, key: (x.reshape(len(x), -1) @ w, {"pixels": x})
        >>> fm = jaxadv.from_feature_fn(fn, w, ["pixels"])
        >>> x = jax.random.uniform(jax.random.key(0), (64, 2, 2, 1))
        >>> y = jnp.argmax(fm(x), axis=1)
        >>> prior = hfc_prior(jax.random.key(1), fm, x, y, num_components=1)
        >>> hfc = HFC(threat=jaxadv.LinfBall(eps=0.5), prior=prior, num_steps=10)
        >>> res = hfc(jax.random.key(2), fm, x[:4], y[:4], target=1 - y[:4])
        >>> res.info["hfc"].shape
        (4, 10)
    """

    oracle: ClassVar[str] = "gradient"
    budget_field: ClassVar[str | None] = "num_steps"
    restarts_field: ClassVar[str | None] = None
    threats: ClassVar[tuple[type, ...]] = (LinfBall, L2Ball, L1Ball)
    settings: ClassVar[Mapping[str, V.Range]] = _SETTINGS

    threat: Any
    prior: dict
    lam: float | Array = 1.0
    step_size: float | Array | None = None
    num_steps: int = static(default=20)
    momentum: float | Array = 0.0
    random_start: bool = static(default=False)

    def run(self, keys, model, x, y, *, target=None) -> AttackResult:
        if target is None:
            raise ValueError("HFC is a targeted attack: pass target=[B] labels")
        missing = [n for n in self.prior if n not in getattr(model, "layers", ())]
        if missing:
            raise ValueError(
                f"HFC's prior has layers {missing} that the model does not expose; attack a "
                "with_features(...) model with those layers"
            )

        def objective(xa):
            logits, feats = model.features(xa)
            j = hfc_term(self.prior, feats, target)
            # maximised: ce_targeted is -CE(f(x), t) (the library's ascent convention)
            return L.ce_targeted(logits, target) - self.lam * j, j

        return _momentum_attack(self, keys, model, x, y, target, objective, 2.0, "hfc")


@pytree_dataclass
class Adaptive(AbstractAttack):
    """Adaptive attack on a detector: maximise ``loss(f(x*), y) - λ·detector.score(x*)``
    (untargeted; with ``target``, ``-CE(f(x*), t) - λ·score``) by PGD / MI-FGSM.

    ``info["detector"]`` holds the detector score before every step ``[B, num_steps]``.

    Attributes:
        detector: any fitted detector of :mod:`jaxadv.detect` (a pytree leaf: refitting never
            retraces); its ``score`` must be differentiable.
        lam: ``λ``. step_size: ``None`` = ``2.5·eps / num_steps``. num_steps: static.
        momentum: 0 = PGD (with L1-normalised gradients), 0.5 / 1 = MI-FGSM.
        loss: ``'ce'``, ``'margin'``, ... as for :class:`jaxadv.PGD` (static).
    """

    oracle: ClassVar[str] = "gradient"
    budget_field: ClassVar[str | None] = "num_steps"
    restarts_field: ClassVar[str | None] = None
    threats: ClassVar[tuple[type, ...]] = (LinfBall, L2Ball, L1Ball)
    settings: ClassVar[Mapping[str, V.Range]] = _SETTINGS

    threat: Any
    detector: Any
    lam: float | Array = 1.0
    step_size: float | Array | None = None
    num_steps: int = static(default=20)
    momentum: float | Array = 0.0
    random_start: bool = static(default=True)
    loss: str | Callable = static(default="ce")

    def run(self, keys, model, x, y, *, target=None) -> AttackResult:
        from jaxadv.detect.common import check_fitted

        check_fitted(self.detector)
        loss_fn = L.resolve(self.loss, target is not None)
        lbl = y if target is None else target

        def objective(xa):
            s = self.detector.score(xa)
            return loss_fn(model(xa), lbl) - self.lam * s, s

        return _momentum_attack(self, keys, model, x, y, target, objective, 2.5, "detector")
