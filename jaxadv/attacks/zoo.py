"""ZOO: zeroth-order optimisation attack (Chen, Zhang, Sharma, Yi, Hsieh, AISec 2017;
arXiv 1708.03999), the ZOO-ADAM variant: coordinate-wise symmetric-difference gradient estimates and
per-coordinate Adam on a random batch of coordinates per iteration.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv import _validate as V
from jaxadv import losses as L
from jaxadv._struct import pytree_dataclass, static
from jaxadv.attacks import _blackbox as bb
from jaxadv.attacks.base import AbstractAttack, register
from jaxadv.attacks.driver import Scored, iterate
from jaxadv.result import AttackResult, finalize
from jaxadv.threats import L2Ball, LinfBall

Array = jax.Array


def zoo_coordinate_grad(
    f: Callable[[Array], Array], x: Array, idx: Array, h: float | Array
) -> tuple[Array, Array]:
    """Symmetric-difference estimates ``(f(x + h e_i) - f(x - h e_i)) / 2h`` (Chen et al., eq. 6).

    Args:
        f: scores of candidates ``[B, P, ...] -> [B, P]`` (``P = 2k + 1`` queries per example).
        x: points ``[B, ...]``.
        idx: flat coordinate indices ``int32[B, k]`` per example.
        h: the finite-difference step (1e-4 in the paper).

    Returns:
        ``(g[B, k], f(x)[B])``. The divisor is the realised float difference
        ``(x_i + h) - (x_i - h)`` rather than ``2h``, which removes the rounding of ``x_i ± h``
        from the estimate.
    """
    b = x.shape[0]
    xf = x.reshape(b, -1)
    d = xf.shape[1]
    hh = jnp.asarray(h, x.dtype)
    onehot = jax.nn.one_hot(idx, d, dtype=x.dtype)  # [B, k, D]
    plus = xf[:, None] + hh * onehot
    minus = xf[:, None] - hh * onehot
    cands = jnp.concatenate([xf[:, None], plus, minus], axis=1)
    fv = f(cands.reshape((b, cands.shape[1]) + x.shape[1:]))
    xi = jnp.take_along_axis(xf, idx, axis=1)
    den = (xi + hh) - (xi - hh)
    k = idx.shape[1]
    g = (fv[:, 1 : k + 1] - fv[:, k + 1 :]) / den
    return g, fv[:, 0]


@register
@pytree_dataclass
class ZOO(AbstractAttack):
    """ZOO-ADAM (Chen et al., 2017): black-box C&W with coordinate-wise gradient estimates.

    Minimises ``||x' - x||_2^2 + c * f(x')`` with the C&W hinge on log-probabilities
    ``f = max(log p_y - max_{j != y} log p_j, -confidence)`` (targeted:
    ``max(max_{j != t} log p_j - log p_t, -confidence)``). Every iteration draws ``num_coords``
    coordinates without replacement per example, estimates the objective's partial derivatives from
    ``2 * num_coords + 1`` queries (:func:`zoo_coordinate_grad`, step ``fd_step``) and takes a
    per-coordinate Adam step with per-coordinate bias correction. The constant ``c`` is refined by
    ``num_binary_steps`` rounds of binary search (restarting from ``x``), as in C&W.

    jaxadv adaptation: every iterate is projected onto the threat set (``eps = inf`` gives the
    paper's unconstrained attack); per example the smallest-norm adversarial point seen is returned
    (else the point with the lowest hinge). With ``early_stop`` (default) an example stops at its
    first adversarial point; otherwise it keeps reducing the distortion. A binary-search round also
    ends for an example when the objective has not improved by a relative ``1e-4`` for ``patience``
    iterations (ZOO's abort-early). Queries: 1 (clean check) + ``2 num_coords + 1`` per iteration
    while active. ``num_coords`` is capped at the input size.

    Attributes:
        threat: ``L2Ball`` (natural) or ``LinfBall``.
        num_steps: iterations per binary-search round (static; MNIST 3000, CIFAR 1000 in the paper).
        num_coords: coordinates per iteration (static; 128).
        num_binary_steps: rounds of the binary search on ``c`` (static; 1).
        initial_const: the first ``c`` (10.0).
        step_size: Adam learning rate (1e-2).
        fd_step: finite-difference step ``h`` (1e-4).
        confidence: ``kappa`` (0).
        beta1, beta2: Adam moments (0.9, 0.999).
        patience: abort-early window (static; 100; 0 disables).
        early_stop: stop an example at its first success (static).

    Example:
        >>> import jax, jax.numpy as jnp, jaxadv
        >>> from jaxadv.attacks.zoo import ZOO
        >>> model = jaxadv.from_apply(lambda w, x: x.reshape(x.shape[0], -1) @ w, jnp.eye(4, 2))
        >>> zoo = ZOO(threat=jaxadv.L2Ball(eps=1.0), num_steps=20, num_coords=2)
        >>> zoo(jax.random.key(0), model, jnp.full((2, 2, 2, 1), 0.5), jnp.array([0, 1])).adv.shape
        (2, 2, 2, 1)
    """

    oracle: ClassVar[str] = "scores"
    budget_field: ClassVar[str | None] = "num_steps"
    restarts_field: ClassVar[str | None] = None
    threats: ClassVar[tuple[type, ...]] = (LinfBall, L2Ball)
    settings: ClassVar[Mapping[str, V.Range]] = {
        "num_steps": V.at_least(1),
        "num_coords": V.at_least(1),
        "num_binary_steps": V.at_least(1),
        "initial_const": V.positive(),
        "step_size": V.positive(),
        "fd_step": V.positive(),
        "confidence": V.Range(0.0),
        "beta1": V.unit(hi_open=True),
        "beta2": V.unit(hi_open=True),
        "patience": V.at_least(0),
    }

    threat: Any
    num_steps: int = static(default=1000)
    num_coords: int = static(default=128)
    num_binary_steps: int = static(default=1)
    initial_const: float | Array = 10.0
    step_size: float | Array = 1e-2
    fd_step: float | Array = 1e-4
    confidence: float | Array = 0.0
    beta1: float | Array = 0.9
    beta2: float | Array = 0.999
    patience: int = static(default=100)
    early_stop: bool = static(default=True)

    def run(self, keys, model, x, y, *, target=None) -> AttackResult:
        threat = self.threat
        b = x.shape[0]
        dt = x.dtype
        d = int(np.prod(x.shape[1:]))
        k = min(self.num_coords, d)
        cost = 2 * k + 1
        targeted = target is not None
        lbl = target if targeted else y
        kappa = jnp.asarray(self.confidence, dt)
        lr = jnp.asarray(self.step_size, dt)
        b1 = jnp.asarray(self.beta1, dt)
        b2 = jnp.asarray(self.beta2, dt)
        rows = jnp.arange(b)[:, None]

        def hinge(lp, yl):
            m = L.margin_targeted(lp, yl) if targeted else L.margin(lp, yl)
            return jnp.maximum(-m, -kappa)  # >= -kappa; below 0 exactly when adversarial

        def observe(cands):  # [B, P, ...] -> hinge [B, P], adversarial [B, P]
            def flat(z):
                reps = z.shape[0] // b
                lp = bb.log_probs(model, z)
                pred = jnp.argmax(lp, axis=-1).astype(jnp.int32)
                t = None if target is None else jnp.repeat(target, reps)
                adv = bb.is_adversarial_label(pred, jnp.repeat(y, reps), t)
                return hinge(lp, jnp.repeat(lbl, reps)).astype(dt), adv

            return bb.over_population(flat, cands)

        f0, adv0 = observe(x[:, None])
        queries = jnp.ones((b,), jnp.int32)
        done = adv0[:, 0]
        best = dict(
            adv=x,
            found=done,
            norm=jnp.where(done, 0.0, jnp.inf).astype(dt),
            hinge=f0[:, 0],
        )

        def binary_step(r, carry):
            best, done, queries, const, lower, upper = carry

            def objective(cands):
                h_, adv_ = observe(cands)
                l2 = jnp.sum(
                    jnp.square((cands - x[:, None]).reshape(b, cands.shape[1], -1)), axis=2
                )
                return l2 + bb.bcast(const, h_) * h_, (h_, adv_)

            def zoo_step(it, s):
                # The driver freezes examples that are no longer active (and charges only the
                # active ones), so nothing here needs the active mask.
                ks = bb.fold(bb.fold(keys, r), it)
                idx = jax.vmap(lambda kk: jax.random.choice(kk, d, (k,), replace=False))(ks)
                idx = idx.astype(jnp.int32)
                aux = {}

                def f(c):
                    obj, (h_, adv_) = objective(c)
                    aux["h"], aux["adv"] = h_[:, 0], adv_[:, 0]
                    return obj

                g, obj0 = zoo_coordinate_grad(f, s["xa"], idx, self.fd_step)
                h_base, adv_base = aux["h"], aux["adv"]

                # bookkeeping at the evaluated (current) point
                nrm = threat.norm(s["xa"] - x)
                bst = s["best"]
                better = adv_base & (~bst["found"] | (nrm < bst["norm"]))
                closer = ~bst["found"] & ~adv_base & (h_base < bst["hinge"])
                take = better | closer
                bst = dict(
                    adv=bb.bsel(take, s["xa"], bst["adv"]),
                    found=bst["found"] | better,
                    norm=jnp.where(better, nrm, bst["norm"]),
                    hinge=jnp.where(take, h_base, bst["hinge"]),
                )
                upd = ~adv_base if self.early_stop else jnp.ones((b,), bool)

                # per-coordinate Adam on the sampled coordinates
                m_sel = b1 * jnp.take_along_axis(s["m"], idx, 1) + (1 - b1) * g
                v_sel = b2 * jnp.take_along_axis(s["v"], idx, 1) + (1 - b2) * g * g
                t_sel = jnp.take_along_axis(s["t"], idx, 1) + 1
                tf = t_sel.astype(dt)
                corr = jnp.sqrt(1 - b2**tf) / (1 - b1**tf)
                step = lr * corr * m_sel / (jnp.sqrt(v_sel) + 1e-8)
                xf = s["xa"].reshape(b, -1)
                xn = threat.project(x, xf.at[rows, idx].add(-step).reshape(x.shape))
                m = s["m"].at[rows, idx].set(m_sel)
                v = s["v"].at[rows, idx].set(v_sel)
                t = s["t"].at[rows, idx].set(t_sel)

                improved = obj0 < s["obj_best"] * (1 - 1e-4 * jnp.sign(s["obj_best"]))
                new = dict(
                    xa=bb.bsel(upd, xn, s["xa"]),
                    m=bb.bsel(upd, m, s["m"]),
                    v=bb.bsel(upd, v, s["v"]),
                    t=bb.bsel(upd, t, s["t"]),
                    obj_best=jnp.where(improved, obj0, s["obj_best"]),
                    since=jnp.where(improved, 0, s["since"] + 1),
                    best=bst,
                    succ_round=s["succ_round"] | adv_base,
                    done=s["done"] | (adv_base & self.early_stop),
                )
                return new, Scored(point=s["xa"], success=adv_base, score=-h_base)

            def finished(s, scored):
                out = scored.success if self.early_stop else jnp.zeros((b,), bool)
                if self.patience > 0:
                    out = out | (s["since"] >= self.patience)
                return out

            zeros = jnp.zeros((b, d), dt)
            state = dict(
                xa=x,
                m=zeros,
                v=zeros,
                t=jnp.zeros((b, d), jnp.int32),
                obj_best=jnp.full((b,), jnp.inf, dt),
                since=jnp.zeros((b,), jnp.int32),
                best=best,
                succ_round=jnp.zeros((b,), bool),
                done=done,
            )
            out = iterate(
                zoo_step,
                state,
                stop=self.num_steps,
                active=~done,
                queries=queries,
                cost=cost,
                done=finished,
                exit_early=True,
            )
            s = out.state
            ok = s["succ_round"]
            upper = jnp.where(ok, jnp.minimum(upper, const), upper)
            lower = jnp.where(ok, lower, jnp.maximum(lower, const))
            const = jnp.where(upper < 1e9, (lower + upper) / 2, const * 10)
            return s["best"], s["done"], out.queries, const, lower, upper

        const = jnp.broadcast_to(jnp.asarray(self.initial_const, dt), (b,))
        carry = (best, done, queries, const, jnp.zeros((b,), dt), jnp.full((b,), 1e10, dt))
        best, _, queries, *_ = jax.lax.fori_loop(0, self.num_binary_steps, binary_step, carry)
        return finalize(threat, model, x, best["adv"], y, target=target, queries=queries)
