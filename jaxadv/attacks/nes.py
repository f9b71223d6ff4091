"""NES attacks (Ilyas, Engstrom, Athalye, Lin, ICML 2018; arXiv 1804.08598): projected gradient
ascent on a natural-evolution-strategies gradient estimate, in the query-limited,
partial-information and label-only settings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxadv import _validate as V
from jaxadv import losses as L
from jaxadv._struct import pytree_dataclass, static
from jaxadv.attacks import _blackbox as bb
from jaxadv.attacks.base import AbstractAttack, register
from jaxadv.attacks.driver import iterate
from jaxadv.result import AttackResult, finalize
from jaxadv.threats import L2Ball, LinfBall

Array = jax.Array

_MODES = ("query_limited", "partial_info", "label_only")
_TINY = 1e-12
#: Below this ``delta_eps`` the partial-information line search takes a plain NES step (no
#: eps decay), as the reference does once its halved decay drops under 2e-3.
_DE_FLOOR = 2e-3


def nes_gradient(
    keys: Array,
    f: Callable[[Array], Array],
    x: Array,
    *,
    population_size: int,
    sigma: float | Array,
) -> tuple[Array, Array]:
    """Antithetic NES estimate of ``grad f`` at every ``x[b]`` (Ilyas et al., 2018, eq. 2).

    ``g = 1/(n sigma) sum_i delta_i f(x + sigma delta_i)`` with ``delta_i ~ N(0, I)`` drawn in pairs
    ``±delta`` (``n = population_size``, even). ``f`` maps candidates ``[B, n, ...]`` to scores
    ``[B, n]`` (``n`` queries per example); ``keys`` holds one key per example.

    Returns:
        ``(g[B, ...], mean score [B])``; the mean score over the population is the loss estimate
        the reference code uses for plateau detection (no extra query).
    """
    half = population_size // 2
    dt = x.dtype
    noise = jax.vmap(lambda k: jax.random.normal(k, (half,) + x.shape[1:], dt))(keys)
    noise = jnp.concatenate([noise, -noise], axis=1)  # [B, n, ...]
    sig = jnp.asarray(sigma, dt)
    scores = f(x[:, None] + sig * noise).astype(dt)  # [B, n]
    g = jnp.sum(bb.bcast(scores, noise) * noise, axis=1) / (population_size * sig)
    return g, jnp.mean(scores, axis=1)


@register
@pytree_dataclass
class NES(AbstractAttack):
    """NES black-box attack (Ilyas et al., 2018): PGD on an antithetic NES gradient estimate.

    Every iteration estimates the gradient of the loss from ``population_size`` queries
    (:func:`nes_gradient`), smooths it with momentum, anneals the step when the loss plateaus, and
    takes a projected steepest-ascent step in the threat model's norm (sign step for L∞, normalised
    step for L2). Attacks maximise: the untargeted loss is the cross-entropy of the true class, the
    targeted one the log-probability of the target.

    Modes (static ``mode``):

    * ``'query_limited'``: the loss reads the full probability vector. ``population_size + 1``
      queries per iteration (the extra one checks the new iterate).
    * ``'partial_info'``: only the ``top_k`` probabilities are visible (the rest read as 0). The
      search starts from an image that already satisfies the criterion (target in the top ``k``;
      untargeted: top label ``!= y``), found by uniform noise (``init_tries`` queries at most),
      inside a ball of radius ``starting_eps``; each iteration tries to shrink the radius by
      ``delta_eps`` toward ``threat.eps`` with a ladder of ``line_search_steps`` step sizes
      ``lr * 2^-j`` (one query each), keeping the criterion; ``delta_eps`` is halved after a failed
      ladder and reset to at least ``min_delta_eps`` after a success. Without a start (none found)
      it runs from ``x`` at radius ``threat.eps``.
    * ``'label_only'``: as ``'partial_info'`` with the score replaced by the paper's proxy: the
      fraction of ``label_only_samples`` uniform perturbations of radius ``label_only_sigma`` that
      satisfy the criterion (top label only). ``population_size * label_only_samples`` queries per
      estimate.

    An example stops when it is adversarial at radius ``threat.eps`` (the goal), or when the next
    iteration would exceed ``num_queries``. Deviation: the reference backtracks sequentially; we
    evaluate the ladder in one batch and charge all of it.

    Attributes:
        threat: ``LinfBall`` or ``L2Ball`` (the goal radius is ``threat.eps``).
        num_queries: budget per example (static).
        population_size: ``n``, samples per estimate (even; 50).
        sigma: NES search radius (1e-3).
        step_size: the maximal step (``max_lr``); ``None`` means ``eps / 5`` (0.01 at eps 0.05).
        min_step_size: the floor of the plateau annealing; ``None`` means ``step_size / 200``.
        momentum: 0.9.
        plateau_length, plateau_drop: halve the step when the loss has not risen over the last
            ``plateau_length`` iterations (5, 2.0).
        loss: ``'ce'`` (default) or ``'margin'`` on log-probabilities (query-limited mode).
        mode: ``'query_limited'``, ``'partial_info'`` or ``'label_only'`` (static).
        top_k: visible classes in partial-information mode (static, 1).
        starting_eps, starting_delta_eps, min_delta_eps: 1.0, 0.5, 0.1 as in the reference.
        line_search_steps: ladder length in the partial-information modes (static, 4).
        init_tries: uniform noise images tried for a start (static, 100).
        label_only_samples, label_only_sigma: ``m`` and ``mu`` of the proxy (static 50; 1e-3).

    Example:
        >>> import jax, jax.numpy as jnp, jaxadv
        >>> from jaxadv.attacks.nes import NES
        >>> model = jaxadv.from_apply(lambda w, x: x.reshape(x.shape[0], -1) @ w, jnp.eye(4, 2))
        >>> nes = NES(threat=jaxadv.LinfBall(eps=0.1), num_queries=200, population_size=10)
        >>> res = nes(jax.random.key(0), model, jnp.full((2, 2, 2, 1), 0.5), jnp.array([0, 1]))
        >>> res.adv.shape
        (2, 2, 2, 1)
    """

    # The default mode reads probabilities; mode='label_only' reads only the top-1 label (the
    # paper's label-only setting): configuration layers filtering by oracle should check `mode`.
    oracle: ClassVar[str] = "scores"
    budget_field: ClassVar[str | None] = "num_queries"
    restarts_field: ClassVar[str | None] = None
    threats: ClassVar[tuple[type, ...]] = (LinfBall, L2Ball)
    settings: ClassVar[Mapping[str, V.Range]] = {
        "num_queries": V.at_least(1),
        "population_size": V.at_least(2),
        "sigma": V.positive(),
        "step_size": V.positive(),
        "min_step_size": V.positive(),
        "momentum": V.unit(hi_open=True),
        "plateau_length": V.at_least(1),
        "plateau_drop": V.Range(1.0),
        "top_k": V.at_least(1),
        "starting_eps": V.positive(),
        "starting_delta_eps": V.positive(),
        "min_delta_eps": V.positive(),
        "line_search_steps": V.at_least(1),
        "init_tries": V.at_least(1),
        "label_only_samples": V.at_least(1),
        "label_only_sigma": V.positive(),
    }

    threat: Any
    num_queries: int = static(default=10000)
    population_size: int = static(default=50)
    sigma: float | Array = 1e-3
    step_size: float | Array | None = None
    min_step_size: float | Array | None = None
    momentum: float | Array = 0.9
    plateau_length: int = static(default=5)
    plateau_drop: float | Array = 2.0
    loss: str | Callable = static(default="ce")
    mode: str = static(default="query_limited")
    top_k: int = static(default=1)
    starting_eps: float | Array = 1.0
    starting_delta_eps: float | Array = 0.5
    min_delta_eps: float | Array = 0.1
    line_search_steps: int = static(default=4)
    init_tries: int = static(default=100)
    label_only_samples: int = static(default=50)
    label_only_sigma: float | Array = 1e-3

    def __post_init__(self):
        if self.mode not in _MODES:
            raise ValueError(f"NES mode must be one of {_MODES}, got {self.mode!r}")
        if self.population_size < 2 or self.population_size % 2:
            raise ValueError("NES population_size must be even and >= 2 (antithetic pairs)")

    # ------------------------------------------------------------------------------ costs
    @property
    def _ladder(self) -> int:
        return 1 if self.mode == "query_limited" else self.line_search_steps

    @property
    def _cost(self) -> int:
        """Queries per iteration and example."""
        per = self.label_only_samples if self.mode == "label_only" else 1
        return self.population_size * per + self._ladder

    # ------------------------------------------------------------------------------- run
    def run(self, keys, model, x, y, *, target=None) -> AttackResult:
        threat = self.threat
        b = x.shape[0]
        dt = x.dtype
        targeted = target is not None
        lbl = target if targeted else y
        goal = jnp.broadcast_to(jnp.asarray(threat.eps, dt), (b,))
        lr0 = (
            goal / 5
            if self.step_size is None
            else jnp.asarray(self.step_size, dt) * jnp.ones_like(goal)
        )
        min_lr = lr0 / 200 if self.min_step_size is None else jnp.asarray(self.min_step_size, dt)
        mom = jnp.asarray(self.momentum, dt)
        loss_fn = L.resolve(self.loss, targeted)
        mode = self.mode

        def observe(xs):
            """Query ``xs[N, ...]`` (N = B*P): (score to maximise, criterion, adversarial)."""
            reps = xs.shape[0] // b
            yl = jnp.repeat(lbl, reps)
            if mode == "query_limited":
                lp = bb.log_probs(model, xs)
                pred = jnp.argmax(lp, axis=-1).astype(jnp.int32)
                adv = bb.is_adversarial_label(pred, jnp.repeat(y, reps), _rep(target, reps))
                return loss_fn(lp, yl).astype(dt), adv, adv
            if mode == "partial_info":
                p = bb.top_k_probs(model, xs, self.top_k)
                top_idx = jax.lax.top_k(p, min(self.top_k, p.shape[-1]))[1]
                pred = top_idx[:, 0].astype(jnp.int32)
                p_l = jnp.take_along_axis(p, yl[:, None], axis=1)[:, 0]
                score = jnp.log(p_l + _TINY)
                score = score if targeted else -score
                adv = bb.is_adversarial_label(pred, jnp.repeat(y, reps), _rep(target, reps))
                if targeted:
                    crit = jnp.any(top_idx == yl[:, None], axis=-1)
                else:
                    crit = adv
                return score.astype(dt), crit, adv
            pred = bb.labels(model, xs)
            adv = bb.is_adversarial_label(pred, jnp.repeat(y, reps), _rep(target, reps))
            return adv.astype(dt), adv, adv

        # -- clean check (1 query)
        _, crit0, succ0 = observe(x)
        queries = jnp.ones((b,), jnp.int32)
        active = ~succ0
        xa = x
        eps_b = goal
        crit = crit0

        # -- start point for the partial-information modes: uniform noise that meets the criterion
        if mode != "query_limited":
            lo = jnp.asarray(threat.lo, dt)
            hi = jnp.asarray(threat.hi, dt)

            def s_step(t, s):
                found, start = s
                u = jax.vmap(lambda kk: jax.random.uniform(kk, x.shape[1:], dt))(
                    bb.fold(bb.fold(keys, 1), t)
                )
                u = lo + (hi - lo) * u
                _, c_u, _ = observe(u)
                # still searching means not found yet: found becomes c_u (the driver freezes the
                # examples that stopped searching)
                return (found | c_u, bb.bsel(c_u, u, start)), None

            search = iterate(
                s_step,
                (jnp.zeros((b,), bool), x),
                stop=min(self.init_tries, self.num_queries - 1),
                active=active & ~crit0,
                queries=queries,
                done=lambda s, _: s[0],
                exit_early=True,
            )
            (found, start), queries = search.state, search.queries
            xa = bb.bsel(found, start, x)
            dist = threat.norm(start - x)
            eps_b = jnp.where(found, jnp.maximum(jnp.asarray(self.starting_eps, dt), dist), goal)
            crit = crit0 | found

        cost = self._cost
        active = active & (queries + cost <= self.num_queries)

        def sample_scores(ks_lo):
            def f(cands):  # [B, n, ...] -> [B, n]
                if mode != "label_only":
                    return bb.over_population(lambda z: observe(z)[0], cands)
                m = self.label_only_samples
                mu = jnp.asarray(self.label_only_sigma, dt)
                per = jnp.swapaxes(cands, 0, 1)  # [n, B, ...]
                kk = jax.vmap(lambda i: bb.fold(ks_lo, i))(jnp.arange(per.shape[0]))  # [n, B]

                def proxy(args):
                    xi, ki = args  # [B, ...], [B]
                    u = jax.vmap(
                        lambda q: jax.random.uniform(q, (m,) + x.shape[1:], dt, -1.0, 1.0)
                    )(ki)
                    _, c_u, _ = bb.over_population(observe, xi[:, None] + mu * u)
                    return jnp.mean(c_u.astype(dt), axis=1)

                return jnp.swapaxes(jax.lax.map(proxy, (per, kk)), 0, 1)

            return f

        ladder = self._ladder

        def nes_step(it, s):
            # The driver freezes finished examples and charges only active ones.
            ks = bb.fold(keys, it + 2)
            k_grad, k_lo = jax.vmap(lambda kk: jax.random.split(kk))(ks).swapaxes(0, 1)
            g_hat, loss_now = nes_gradient(
                k_grad,
                sample_scores(k_lo),
                s["xa"],
                population_size=self.population_size,
                sigma=self.sigma,
            )
            g = mom * s["g"] + (1 - mom) * g_hat

            # plateau annealing on a ring buffer of the last losses
            p_len = self.plateau_length
            slot = s["n_hist"] % p_len
            hist = s["hist"].at[jnp.arange(b), slot].set(loss_now)
            n_hist = s["n_hist"] + 1
            oldest = hist[jnp.arange(b), n_hist % p_len]
            stalled = (n_hist >= p_len) & (loss_now < oldest)
            lr = jnp.where(stalled, jnp.maximum(s["lr"] / self.plateau_drop, min_lr), s["lr"])
            n_hist = jnp.where(stalled, 0, n_hist)

            # proposals: a ladder of step sizes at the (possibly decayed) radius
            if mode == "query_limited":
                eps_p = s["eps"]
                de_eff = jnp.zeros_like(eps_p)
                decay_try = jnp.zeros((b,), bool)
            else:
                decay_try = s["crit"] & (s["eps"] > goal)
                de_eff = jnp.where(s["de"] < _DE_FLOOR, 0.0, s["de"])
                eps_p = jnp.where(decay_try, jnp.maximum(s["eps"] - de_eff, goal), s["eps"])
            scales = jnp.exp2(-jnp.arange(ladder, dtype=dt))  # [L]
            steps = threat.ascent_step(g, 1.0)
            lrs = lr[:, None] * scales[None, :]  # [B, L]
            cands = s["xa"][:, None] + lrs.reshape(lrs.shape + (1,) * (x.ndim - 1)) * steps[:, None]
            cands = jax.vmap(
                lambda cj: bb.project_radius(threat, x, cj, eps_p), in_axes=1, out_axes=1
            )(cands)
            _, c_j, adv_j = bb.over_population(observe, cands)  # [B, L]
            ok = c_j | ~s["crit"][:, None] if mode != "query_limited" else jnp.ones_like(c_j)
            any_ok = jnp.any(ok, axis=1)
            first = jnp.argmax(ok, axis=1)
            pick = cands[jnp.arange(b), first]
            moved = any_ok
            xa = bb.bsel(moved, pick, s["xa"])
            eps_new = jnp.where(moved, eps_p, s["eps"])
            crit_new = jnp.where(moved, c_j[jnp.arange(b), first], s["crit"])
            adv_new = jnp.where(moved, adv_j[jnp.arange(b), first], s["adv"])
            if mode == "query_limited":
                de = s["de"]
            else:
                de = jnp.where(
                    decay_try & moved & (de_eff > 0),
                    jnp.maximum(de_eff, jnp.asarray(self.min_delta_eps, dt)),
                    s["de"],
                )
                failed = decay_try & ~any_ok
                de = jnp.where(failed, s["de"] / 2, de)
                de = jnp.where(decay_try & (de_eff == 0), jnp.asarray(self.min_delta_eps, dt), de)
            new = dict(
                xa=xa,
                g=g,
                lr=lr,
                hist=hist,
                n_hist=n_hist,
                eps=eps_new,
                de=de,
                crit=crit_new,
                adv=adv_new,
            )
            return new, None

        state = dict(
            xa=xa,
            g=jnp.zeros_like(x),
            lr=lr0,
            hist=jnp.zeros((b, self.plateau_length), dt),
            n_hist=jnp.zeros((b,), jnp.int32),
            eps=eps_b,
            de=jnp.broadcast_to(jnp.asarray(self.starting_delta_eps, dt), (b,)),
            crit=crit,
            adv=succ0,
        )
        out = iterate(
            nes_step,
            state,
            # Never reached (the query budget stops every example first); the loop needs a bound.
            stop=max(self.num_queries // cost, 1),
            active=active,
            queries=queries,
            cost=cost,
            done=lambda s, _: s["adv"] & (s["eps"] <= goal),
            budget=self.num_queries,
            exit_early=True,
        )
        return finalize(threat, model, x, out.state["xa"], y, target=target, queries=out.queries)


def _rep(target: Array | None, reps: int) -> Array | None:
    return None if target is None else jnp.repeat(target, reps)
