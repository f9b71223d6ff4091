"""One Pixel attack (score-based black box): differential evolution over ``k`` pixel replacements.

It looks only at ``softmax(model(x))`` (no gradients), counts every image it scores as one query of
the example it belongs to, and reports ``res.norm`` as the number of changed spatial pixels
(:class:`~jaxadv.threats.L0Pixels`). Populations are evaluated batch-first with the engine of
:mod:`jaxadv.attacks.population`: one model call on all ``B·P`` candidates per generation.

It *minimises* a fitness: the true-class probability (untargeted) or ``1 - p_target`` (targeted).
This is the library's "attacks maximise their loss" convention with the sign flipped inside the
population engine; ``res.loss`` is the usual margin (success ⇔ margin > 0).

Reference:
    J. Su, D. V. Vargas, K. Sakurai, "One pixel attack for fooling deep neural networks",
    IEEE TEVC 23(5), 2019 (arXiv:1710.08864).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxadv import _validate as V
from jaxadv._struct import float32_fields, pytree_dataclass, replace, static
from jaxadv.attacks import population as pop_lib
from jaxadv.attacks.base import AbstractAttack, fold_keys, register
from jaxadv.result import AttackResult, finalize
from jaxadv.threats import L0Pixels

Array = jax.Array


@register
@pytree_dataclass
class OnePixel(AbstractAttack):
    """One Pixel attack (Su, Vargas & Sakurai, IEEE TEVC 2019): differential evolution over ``k``
    pixel replacements.

    An individual is ``k`` tuples ``(row, col, v_1..v_K)`` (``D = k (2 + K)`` genes); its image is
    ``x`` with those pixels replaced by the colours (positions floored, colours clipped to the box
    and rounded to ``quantize`` levels, as the reference code casts genes to 8-bit integers).
    DE/rand/1 with ``F = 0.5`` and no crossover (``crossover_rate = 1``), greedy parent-vs-child
    selection, population 400, 100 generations, positions ``U(0, H) x U(0, W)`` and colours
    ``N(mid, 127/255 · range)`` clipped to the box (the paper's ``N(128, 127)`` on 0..255).

    Fitness (minimised): the true-class probability (untargeted) or ``1 - p_target`` (targeted).
    Early stop per example (``early_stop``):

    * ``"threshold"`` (the paper's rules): untargeted stops when ``p_true < stop_prob_untargeted``
      (0.05, Su et al.'s ImageNet rule); targeted when ``p_target > stop_prob_targeted`` (0.5, their
      CIFAR-10 rule).
    * ``"success"``: as soon as some individual is misclassified (or classified as the target),
      the callback of the public reference implementations.
    * ``"none"``: always run ``num_generations``.

    The result is the best individual seen (a finished one first, then the lowest fitness) even
    when the attack fails, so ``res.norm <= num_pixels`` always; ``res.success`` is recomputed by the
    library. Queries: the images scored for the example plus the final check, at most
    ``population_size · (generations + 1) + 1`` (repeated images are scored once). Su et al.'s CIFAR
    "at least one target class" success is the union of ``C - 1`` targeted runs (run them with
    ``target=`` and OR the successes).

    Attributes:
        threat: an :class:`L0Pixels`; ``None`` means ``L0Pixels(eps=num_pixels)`` (its box gives the
            colour range). Its budget ``eps`` sets the live pixel count ``min(floor(eps),
            num_pixels)``, so one compiled attack serves a whole ``sweep_eps`` grid of pixel counts.
        num_pixels: pixels per individual ``k`` (static; 1, 3, 5 in the paper): the most pixels any
            budget can use.
        population_size: DE population (static; 400).
        num_generations: maximum generations (static; 100).
        mutation_factor: DE ``F`` (0.5).
        crossover_rate: probability a gene comes from the mutant (1.0 = no crossover, as published).
        early_stop: ``"threshold"``, ``"success"`` or ``"none"`` (static).
        stop_prob_untargeted, stop_prob_targeted: thresholds of the ``"threshold"`` rule.
        quantize: colour levels (``255`` = 8-bit; ``None`` = continuous) (static).
        eval_chunk: population members per model call (static; ``None`` = automatic, see
            :func:`jaxadv.attacks.population.probabilities`).
        reuse_scores: score each distinct image once (static; default on): a trial that makes
            the same image as a population member or an earlier trial of its generation reuses
            that score, finished examples are not scored, and the rest go through the model as
            compacted chunks. Same search, fewer model calls (see
            :func:`jaxadv.attacks.population.minimize`); ``False`` scores all ``B·P`` trials.

    Example:
        >>> import jax, jax.numpy as jnp, jaxadv
        >>> from jaxadv.attacks.onepixel import OnePixel
        >>> w = jnp.zeros((16, 2)).at[5, 1].set(10.0)  # class 1 iff pixel 5 is bright
        >>> model = jaxadv.from_apply(lambda w, x: x.reshape(x.shape[0], -1) @ w - jnp.array([[0., 7.]]), w)
        >>> x, y = jnp.full((1, 4, 4, 1), 0.2), jnp.array([0])
        >>> res = OnePixel(population_size=20, num_generations=10)(jax.random.key(0), model, x, y)
        >>> bool(res.success[0]), float(res.norm[0])
        (True, 1.0)
    """

    oracle: ClassVar[str] = "scores"
    budget_field: ClassVar[str | None] = "num_generations"
    restarts_field: ClassVar[str | None] = None
    threats: ClassVar[tuple[type, ...]] = (L0Pixels,)
    settings: ClassVar[Mapping[str, V.Range]] = {
        "num_pixels": V.at_least(1),
        "population_size": V.at_least(4),  # DE/rand/1 draws 3 donors besides the parent
        "num_generations": V.at_least(0),
        "mutation_factor": V.Range(0.0, 2.0, lo_open=True),
        "crossover_rate": V.unit(),
        "stop_prob_untargeted": V.unit(),
        "stop_prob_targeted": V.unit(),
        "quantize": V.at_least(1),
        "eval_chunk": V.at_least(1),
    }

    threat: Any = None
    num_pixels: int = static(default=1)
    population_size: int = static(default=400)
    num_generations: int = static(default=100)
    mutation_factor: float | Array = 0.5
    crossover_rate: float | Array = 1.0
    early_stop: str = static(default="threshold")
    stop_prob_untargeted: float | Array = 0.05
    stop_prob_targeted: float | Array = 0.5
    quantize: int | None = static(default=255)
    eval_chunk: int | None = static(default=None)
    reuse_scores: bool = static(default=True)

    def __post_init__(self) -> None:
        if self.early_stop not in ("threshold", "success", "none"):
            raise ValueError(
                f"OnePixel: early_stop must be 'threshold', 'success' or 'none', got {self.early_stop!r}"
            )
        if self.threat is None:
            object.__setattr__(self, "threat", L0Pixels(eps=self.num_pixels))
        elif not isinstance(self.threat, L0Pixels):
            raise TypeError(
                f"OnePixel needs an L0Pixels threat model, got {type(self.threat).__name__}"
            )
        float32_fields(
            self, "mutation_factor", "crossover_rate", "stop_prob_untargeted", "stop_prob_targeted"
        )

    # -- genotype -> image ----------------------------------------------------------------------
    def _pixels(self, x: Array, pop: Array, eps: Array | None = None) -> tuple[Array, Array]:
        """Flat pixel indices ``int32[B, P, k]`` (``H·W`` for pixels beyond the live count: dropped)
        and their colours ``[B, P, k, K]`` for ``pop[B, P, D]``; ``eps`` (scalar or ``[B]``)
        overrides the threat's budget, e.g. with the budgets of gathered rows."""
        b, h, w, c = x.shape
        p = pop.shape[1]
        lo, hi = pop_lib.box(self.threat, x.dtype)
        genes = pop.reshape(b, p, self.num_pixels, 2 + c)
        rows = jnp.clip(jnp.floor(genes[..., 0]), 0, h - 1).astype(jnp.int32)
        cols = jnp.clip(jnp.floor(genes[..., 1]), 0, w - 1).astype(jnp.int32)
        colour = pop_lib.quantize(jnp.clip(genes[..., 2:], lo, hi), lo, hi, self.quantize)
        flat = rows * w + cols  # [B, P, k]
        # pixels beyond the budget's live count go to an out-of-range index and are dropped
        eps = self.threat.eps if eps is None else eps
        live = jnp.clip(jnp.floor(eps), 0, self.num_pixels).astype(jnp.int32)
        live = jnp.broadcast_to(jnp.reshape(live, (-1, 1, 1)), (b, 1, 1))
        flat = jnp.where(jnp.arange(self.num_pixels)[None, None, :] < live, flat, h * w)
        return flat, colour.astype(x.dtype)

    def render(self, x: Array, pop: Array, eps: Array | None = None) -> Array:
        """Images ``[B, P, H, W, K]`` of ``pop[B, P, D]`` applied to ``x[B, H, W, K]``."""
        b, h, w, c = x.shape
        p = pop.shape[1]
        flat, colour = self._pixels(x, pop, eps)

        def one(xi, idx, col):  # xi [HW, K], idx [k], col [k, K]
            return xi.at[idx].set(col, mode="drop")

        xf = x.reshape(b, 1, h * w, c)
        xf = jnp.broadcast_to(xf, (b, p, h * w, c))
        out = jax.vmap(jax.vmap(one))(xf, flat, colour)
        return out.reshape(b, p, h, w, c)

    def codes(self, x: Array, pop: Array) -> Array:
        """``int32[B, P, m]``: equal exactly when two individuals render the same pixel writes
        (positions and the bytes of the colours they write, in genome order; any float dtype)."""
        flat, colour = self._pixels(x, pop)
        b, p, k = flat.shape
        dropped = (flat == x.shape[1] * x.shape[2])[..., None]
        raw = jax.lax.bitcast_convert_type(colour, jnp.uint8).reshape(b, p, k, -1)
        raw = jnp.where(dropped, 0, raw.astype(jnp.int32))
        return jnp.concatenate([flat[..., None], raw], axis=-1).reshape(b, p, -1)

    def init_population(self, keys: Array, x: Array) -> Array:
        """The published initialisation ``[B, P, D]`` (one key per example)."""
        _, h, w, c = x.shape
        lo, hi = pop_lib.box(self.threat, jnp.float32)
        shape = (self.population_size, self.num_pixels)

        def one(key):
            kr, kc, kv = jax.random.split(key, 3)
            r = jax.random.uniform(kr, shape, jnp.float32, 0.0, h)
            q = jax.random.uniform(kc, shape, jnp.float32, 0.0, w)
            mid, sd = (lo + hi) / 2, (hi - lo) * (127.0 / 255.0)
            v = jnp.clip(mid + sd * jax.random.normal(kv, (*shape, c), jnp.float32), lo, hi)
            genes = jnp.concatenate([r[..., None], q[..., None], v], axis=-1)
            return genes.reshape(self.population_size, -1)

        return jax.vmap(one)(keys)

    def bounds(self, x: Array) -> tuple[Array, Array]:
        """Per-gene lower and upper bounds ``[D]``."""
        _, h, w, c = x.shape
        lo, hi = pop_lib.box(self.threat, jnp.float32)
        lower = jnp.concatenate([jnp.zeros((2,), jnp.float32), jnp.broadcast_to(lo, (c,))])
        upper = jnp.concatenate([jnp.asarray([h, w], jnp.float32), jnp.broadcast_to(hi, (c,))])
        return jnp.tile(lower, self.num_pixels), jnp.tile(upper, self.num_pixels)

    def run(self, keys, model, x, y, *, target=None) -> AttackResult:
        targeted = target is not None

        def score(probs, yy, tt):  # probs [B', P', C] -> (fitness, finished) [B', P']
            fit, p_true = pop_lib.fitness(probs, yy, tt)
            if self.early_stop == "threshold":
                if targeted:
                    fin = (1.0 - fit) > self.stop_prob_targeted
                else:
                    fin = p_true < self.stop_prob_untargeted
            elif self.early_stop == "success":
                fin = pop_lib.is_adversarial(probs, yy, tt)
            else:
                fin = jnp.zeros(fit.shape, bool)
            return fit, fin

        def evaluate(pop):
            probs = pop_lib.probabilities(model, self.render(x, pop), chunk=self.eval_chunk)
            return score(probs, y, target)

        eps_b = jnp.broadcast_to(jnp.asarray(self.threat.eps), (x.shape[0],))

        def evaluate_rows(ex, genes):  # one individual each of the examples ex[S]
            imgs = self.render(x[ex], genes[:, None], eps_b[ex])[:, 0]  # [S, H, W, K]
            # eval_chunk counts population members of the whole batch: B of them per model call
            rows = None if self.eval_chunk is None else self.eval_chunk * x.shape[0]
            probs = pop_lib.probabilities(model, imgs[None], chunk=rows)[0]
            fit, fin = score(probs[:, None], y[ex], None if target is None else target[ex])
            return fit[:, 0], fin[:, 0]

        pkeys = fold_keys(keys, 0)
        gkeys = fold_keys(keys, 1)
        lower, upper = self.bounds(x)
        reuse = {}
        if self.reuse_scores:
            reuse = {"codes": lambda pop: self.codes(x, pop), "evaluate_rows": evaluate_rows}
        state = pop_lib.minimize(
            gkeys,
            evaluate,
            self.init_population(pkeys, x),
            num_generations=self.num_generations,
            mutation_factor=self.mutation_factor,
            crossover_rate=self.crossover_rate,
            lower=lower,
            upper=upper,
            **reuse,
        )
        adv = self.render(x, state.best[:, None])[:, 0]
        res = finalize(self.threat, model, x, adv, y, target=target, queries=state.queries)
        info = {
            "generations": state.generations,
            "fitness": state.best_fit,
            "early_stopped": state.done,
        }
        return replace(res, info={**res.info, **info})


__all__ = ["OnePixel"]
