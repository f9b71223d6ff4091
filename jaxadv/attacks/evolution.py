"""Sparse evolutionary attacks (score-based black box): One Pixel and DGDE.

Both attacks look only at ``softmax(model(x))`` (no gradients), count every image they score as one
query of the example it belongs to, and report ``res.norm`` as the number of changed spatial pixels
(:class:`~jaxadv.attacks.sparse_threat.L0Pixels`). Populations are evaluated batch-first with the
engine of :mod:`jaxadv.attacks.population`: one model call on all ``B·P`` candidates per generation.

Both *minimise* a fitness: the true-class probability (untargeted) or ``1 - p_target`` (targeted).
This is the library's "attacks maximise their loss" convention with the sign flipped inside the
population engine; ``res.loss`` is the usual margin (success ⇔ margin > 0).

References:
    J. Su, D. V. Vargas, K. Sakurai, "One pixel attack for fooling deep neural networks",
    IEEE TEVC 23(5), 2019 (arXiv:1710.08864).
    Y. Wang, M. Wildgruber, X. Wang, "Attacking medical images with minimal noise" (DGDE),
    Quant Imaging Med Surg 14(12):9374-9384, 2024 (doi:10.21037/qims-24-1764).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv._batch import bcast as _bcast
from jaxadv._struct import is_concrete, pytree_dataclass, replace, static
from jaxadv.attacks import population as pop_lib
from jaxadv.attacks.base import AbstractAttack, fold_keys, register
from jaxadv.attacks.sparse_threat import L0Pixels
from jaxadv.result import AttackResult, finalize

Array = jax.Array


def _f32(obj: Any, *names: str) -> None:
    """Python numbers become float32 scalars (one trace whatever the literal type)."""
    for name in names:
        v = getattr(obj, name)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            object.__setattr__(obj, name, np.float32(v))


def _check_range(obj: Any, name: str, lo: float, hi: float) -> None:
    v = getattr(obj, name)
    if v is not None and is_concrete(v):
        a = np.asarray(v)
        if np.any(np.isnan(a)) or np.any(a < lo) or np.any(a > hi):
            raise ValueError(f"{type(obj).__name__}: {name} must lie in [{lo}, {hi}], got {v!r}")


def _quantize(v: Array, lo: Array, hi: Array, levels: int | None) -> Array:
    """Round ``v`` to ``levels + 1`` equally spaced values of ``[lo, hi]`` (8-bit: ``levels=255``)."""
    if levels is None:
        return v
    step = (hi - lo) / levels
    return jnp.round((v - lo) / step) * step + lo


def _box(threat: Any, dtype) -> tuple[Array, Array]:
    return jnp.asarray(threat.lo, dtype), jnp.asarray(threat.hi, dtype)


# ==================================================================================== One Pixel
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
        >>> from jaxadv.attacks.evolution import OnePixel
        >>> w = jnp.zeros((16, 2)).at[5, 1].set(10.0)  # class 1 iff pixel 5 is bright
        >>> model = jaxadv.from_apply(lambda w, x: x.reshape(x.shape[0], -1) @ w - jnp.array([[0., 7.]]), w)
        >>> x, y = jnp.full((1, 4, 4, 1), 0.2), jnp.array([0])
        >>> res = OnePixel(population_size=20, num_generations=10)(jax.random.key(0), model, x, y)
        >>> bool(res.success[0]), float(res.norm[0])
        (True, 1.0)
    """

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
        if self.num_pixels < 1:
            raise ValueError(f"OnePixel: num_pixels must be >= 1, got {self.num_pixels}")
        if self.population_size < 4:
            raise ValueError(
                f"OnePixel: population_size must be >= 4 (DE needs 3 donors), got {self.population_size}"
            )
        if self.num_generations < 0:
            raise ValueError(f"OnePixel: num_generations must be >= 0, got {self.num_generations}")
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
        _f32(
            self, "mutation_factor", "crossover_rate", "stop_prob_untargeted", "stop_prob_targeted"
        )
        _check_range(self, "crossover_rate", 0.0, 1.0)

    @classmethod
    def small(cls) -> OnePixel:
        """A tiny configuration for contract tests and smoke runs."""
        return cls(num_pixels=1, population_size=8, num_generations=3)

    # -- genotype -> image ----------------------------------------------------------------------
    def _pixels(self, x: Array, pop: Array, eps: Array | None = None) -> tuple[Array, Array]:
        """Flat pixel indices ``int32[B, P, k]`` (``H·W`` for pixels beyond the live count: dropped)
        and their colours ``[B, P, k, K]`` for ``pop[B, P, D]``; ``eps`` (scalar or ``[B]``)
        overrides the threat's budget, e.g. with the budgets of gathered rows."""
        b, h, w, c = x.shape
        p = pop.shape[1]
        lo, hi = _box(self.threat, x.dtype)
        genes = pop.reshape(b, p, self.num_pixels, 2 + c)
        rows = jnp.clip(jnp.floor(genes[..., 0]), 0, h - 1).astype(jnp.int32)
        cols = jnp.clip(jnp.floor(genes[..., 1]), 0, w - 1).astype(jnp.int32)
        colour = _quantize(jnp.clip(genes[..., 2:], lo, hi), lo, hi, self.quantize)
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
        lo, hi = _box(self.threat, jnp.float32)
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
        lo, hi = _box(self.threat, jnp.float32)
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
        return replace(res, info=info)


# ========================================================================================= DGDE
def exact_subset(key: Array, mask: Array, k: Array) -> Array:
    """A uniformly random subset of exactly ``min(k, mask.sum())`` of the ``True`` entries of
    ``mask`` (any shape; ``k`` may be traced). One sort (spec §0.4 P5)."""
    flat = mask.reshape(-1)
    score = jnp.where(flat, jax.random.uniform(key, flat.shape), 2.0)
    order = jnp.argsort(score)
    rank = jnp.zeros(flat.shape, jnp.int32).at[order].set(jnp.arange(flat.size, dtype=jnp.int32))
    return ((rank < k) & flat).reshape(mask.shape)


@register
@pytree_dataclass
class DGDE(AbstractAttack):
    """Decrease Group Differential Evolution (Wang, Wildgruber & Wang, QIMS 2024): a minimal-pixel
    score-based attack, reconstructed as in spec §1.4 (the paper's pseudocode is unavailable).

    **Phase 0** (random-noise attack, the paper's Table 1): up to ``num_tries`` (``T0``) full-image
    noise matrices, ``tries_per_call`` per model call; the first adversarial one is kept. An example
    with no adversarial noise fails and returns ``x``. An image already misclassified returns ``x``
    after one query.

    **Phase 1** (decrease group): the perturbed pixels form the group; each generation proposes
    ``n' = max(n - Δ, min_pixels)`` pixels chosen uniformly from the current support (``num_subsets``
    independent subsets), each both with its current colours and with a DE/rand/1/bin trial on the
    colours of the reduced group (``F``, ``CR``, donors among the group, ``n' >= 4``), plus a DE trial
    on the whole current group: ``2·num_subsets + 1`` images in one call. The adversarial reduced
    candidate with the lowest fitness is accepted (``Δ ← min(Δ, n'/2)``); otherwise the current-group
    trial replaces the colours if it is adversarial and not worse (greedy DE step), ``Δ`` halves and,
    at ``Δ = 1``, a failure is counted. The pixel count never increases and the support at
    ``g + 1`` is a subset of the support at ``g`` (``variant="block"``); every accepted state is
    adversarial. An example stops after ``num_generations``, at ``min_pixels``, at ``l0_target``
    or after ``patience`` consecutive failures at ``Δ = 1``.

    ``variant="individual"`` (spec §1.4): once the group has at most ``compact_size`` pixels each
    pixel is a 5-gene DE individual ``(row, col, colours)``: every live pixel gets a trial (positions
    mutated when ``evolve_positions``; a trial landing on another live pixel is discarded), scored
    cooperatively (current perturbation with that one pixel replaced), accepted per pixel when it is
    adversarial and not worse; the winners are merged and checked by one more query, falling back
    to the best single winner. Cost ``n + 2`` (``+1``) queries per generation instead of 3.

    Spec ambiguity switches (§1.6) and their defaults: A1 ``noise_mode="replace"`` (``U(lo, hi)``
    per pixel and channel; ``"additive"``: ``x + U(-noise_amp, noise_amp)``, clipped); A2
    ``num_tries=100``; A4 fitness = true-class probability (targeted ``1 - p_t``); A5 accept iff
    ``child <= parent``; A6 three distinct donors; A7 ``F=0.5, CR=0.7, G=1000``; A8 individual = a
    pixel (``num_subsets > 1`` gives reading (b)); A9 ``variant="block"`` (colours only);
    A10 hard acceptance, ``keep_close_tol`` optional; A11 adaptive halving of ``Δ`` from
    ``initial_removal · n0``; A12 ``patience=100``, ``min_pixels=1``, optional
    ``minimality_sweep``; A13 ``l0_target=None``; A17 per-channel colours, ``grey=True`` ties
    them; A22 ``quantize=255``.

    Success rule ``success_rule``: ``"argmax"`` (misclassified / classified as the target; equals
    ``p_true < 0.5`` with two classes) or ``"prob_threshold"`` (fitness below ``tau``). The final
    ``res.success`` is always the library's argmax check on ``res.adv``.

    Attributes:
        threat: an :class:`L0Pixels` (default ``eps=inf``: no budget; the library projects the
            result onto it, so use ``l0_target`` to make the attack aim for the budget).
        num_tries: ``T0`` noise attempts in Phase 0 (static).
        tries_per_call: ``T0_batch`` attempts per model call (static).
        num_generations: ``G`` (static; also the length of the recorded history).
        mutation_factor, crossover_rate: DE ``F`` and ``CR``.
        tau: probability threshold of ``success_rule="prob_threshold"``.
        success_rule: ``"argmax"`` or ``"prob_threshold"`` (static).
        noise_mode: ``"replace"`` or ``"additive"`` (static); noise_amp: additive half-width.
        initial_removal: ``Δ0 = floor(initial_removal · n0)``.
        num_subsets: random subsets per generation (static).
        patience: consecutive failed single-pixel removals before stopping (static).
        min_pixels: smallest support (``n_min``, static).
        variant: ``"block"`` or ``"individual"`` (static); compact_size: ``K`` of the latter.
        evolve_positions: mutate row/col genes (``None``: True for ``individual``; ``block`` needs
            False) (static).
        quantize: colour levels (255 = 8-bit; ``None`` = continuous) (static).
        grey: one colour for all channels (static).
        keep_close_tol: optionally also require ``p_child - p_parent <= keep_close_tol``.
        minimality_sweep: finally remove single pixels while the image stays adversarial
            (extension; needs ``n <= compact_size``) (static).
        record_history: record ``info["history_pixels"]`` / ``info["history_prob"]`` ``[B, G]``
            (static).
        l0_target: stop an example once ``n <= l0_target`` (static).
        eval_chunk: population members per model call (static; ``None`` = automatic).

    ``res.info`` (leading axis ``B``): ``phase0_success``, ``tries_used``, ``generations``,
    ``support_size`` (``n``), ``prob`` (final true-class probability), ``clean_prob``,
    ``pct_pixels`` (``100 · norm / (H·W)``), ``mask`` ``bool[B, H, W]`` and, with
    ``record_history``, ``history_pixels`` ``int32[B, G]`` and ``history_prob`` ``f32[B, G]`` (the
    state after each generation; frozen values after an example stops).

    Example:
        >>> import jax, jax.numpy as jnp, jaxadv
        >>> from jaxadv.attacks.evolution import DGDE
        >>> def apply(t, x):  # class 0 once 2 pixels are bright, else class 1
        ...     top = jax.lax.top_k(x.reshape(x.shape[0], -1), 2)[0].mean(1)
        ...     return jnp.stack([t * (top - 0.8), jnp.zeros_like(top)], 1)
        >>> model = jaxadv.from_apply(apply, jnp.float32(50.0))
        >>> x, y = jnp.full((2, 6, 6, 1), 0.3), jnp.array([1, 1])
        >>> res = DGDE(num_generations=60, patience=20)(jax.random.key(0), model, x, y)
        >>> res.success.tolist(), res.norm.tolist()
        ([True, True], [2.0, 2.0])
    """

    threat: Any = None
    num_tries: int = static(default=100)
    tries_per_call: int = static(default=10)
    num_generations: int = static(default=1000)
    mutation_factor: float | Array = 0.5
    crossover_rate: float | Array = 0.7
    tau: float | Array = 0.5
    success_rule: str = static(default="argmax")
    noise_mode: str = static(default="replace")
    noise_amp: float | Array = 1.0
    initial_removal: float | Array = 0.5
    num_subsets: int = static(default=1)
    patience: int = static(default=100)
    min_pixels: int = static(default=1)
    variant: str = static(default="block")
    compact_size: int = static(default=256)
    evolve_positions: bool | None = static(default=None)
    quantize: int | None = static(default=255)
    grey: bool = static(default=False)
    keep_close_tol: float | Array | None = None
    minimality_sweep: bool = static(default=False)
    record_history: bool = static(default=True)
    l0_target: int | None = static(default=None)
    eval_chunk: int | None = static(default=None)

    def __post_init__(self) -> None:
        if self.threat is None:
            object.__setattr__(self, "threat", L0Pixels(eps=math.inf))
        elif not isinstance(self.threat, L0Pixels):
            raise TypeError(
                f"DGDE needs an L0Pixels threat model, got {type(self.threat).__name__}"
            )
        for name in ("num_tries", "tries_per_call", "num_subsets", "min_pixels", "compact_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"DGDE: {name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_generations", "patience"):
            if getattr(self, name) < 0:
                raise ValueError(f"DGDE: {name} must be >= 0, got {getattr(self, name)}")
        choices = {
            "success_rule": ("argmax", "prob_threshold"),
            "noise_mode": ("replace", "additive"),
            "variant": ("block", "individual"),
        }
        for name, ok in choices.items():
            if getattr(self, name) not in ok:
                raise ValueError(f"DGDE: {name} must be one of {ok}, got {getattr(self, name)!r}")
        if self.variant == "block" and self.evolve_positions:
            raise ValueError(
                "DGDE: variant='block' evolves colours only (the support must shrink as a subset); "
                "use variant='individual' to mutate pixel positions"
            )
        _f32(
            self,
            "mutation_factor",
            "crossover_rate",
            "tau",
            "noise_amp",
            "initial_removal",
            "keep_close_tol",
        )
        _check_range(self, "crossover_rate", 0.0, 1.0)
        _check_range(self, "initial_removal", 0.0, 1.0)

    @classmethod
    def small(cls) -> DGDE:
        """A tiny configuration for contract tests and smoke runs."""
        return cls(num_tries=4, tries_per_call=2, num_generations=6, patience=3)

    @property
    def _positions(self) -> bool:
        return (
            self.variant == "individual" if self.evolve_positions is None else self.evolve_positions
        )

    # -- helpers --------------------------------------------------------------------------------
    def _gene_bounds(self, dtype) -> tuple[Array, Array]:
        lo, hi = _box(self.threat, dtype)
        if self.noise_mode == "replace":
            return lo, hi
        a = jnp.asarray(self.noise_amp, dtype) * (hi - lo)
        return -a, a

    def _clean_genes(self, v: Array) -> Array:
        """Clip colour genes to their bounds and quantise them."""
        lo, hi = _box(self.threat, v.dtype)
        g_lo, g_hi = self._gene_bounds(v.dtype)
        v = jnp.clip(v, g_lo, g_hi)
        if self.quantize is None:
            return v
        if self.noise_mode == "replace":
            return _quantize(v, lo, hi, self.quantize)
        step = (hi - lo) / self.quantize
        return jnp.round(v / step) * step

    def apply(self, x: Array, mask: Array, vals: Array) -> Array:
        """``A(x; S, v)``: ``x[..., H, W, K]`` with the pixels of ``mask[..., H, W]`` replaced by
        ``vals`` (``replace``) or shifted by ``vals`` and clipped (``additive``)."""
        lo, hi = _box(self.threat, x.dtype)
        x = jnp.broadcast_to(x, vals.shape)
        new = vals if self.noise_mode == "replace" else jnp.clip(x + vals, lo, hi)
        return jnp.where(mask[..., None], new, x)

    def _noise(self, key: Array, shape: tuple[int, ...], dtype) -> Array:
        g_lo, g_hi = self._gene_bounds(dtype)
        if self.grey:
            v = jax.random.uniform(key, (*shape[:-1], 1), dtype)
            v = jnp.broadcast_to(v, shape)
        else:
            v = jax.random.uniform(key, shape, dtype)
        return self._clean_genes(v * (g_hi - g_lo) + g_lo)

    def _de_colours(self, key: Array, mask: Array, n: Array, vals: Array) -> Array:
        """DE/rand/1/bin on the colour genes of the live pixels of one group (``mask[H, W]``,
        ``n`` live, ``vals[H, W, K]``); donors are drawn among the group. No change when ``n < 4``."""
        h, w, c = vals.shape
        kd, kc = jax.random.split(key)
        flat = mask.reshape(-1)
        idx = jnp.nonzero(flat, size=h * w, fill_value=0)[0]
        rank = jnp.cumsum(flat.astype(jnp.int32)) - 1
        r1, r2, r3 = pop_lib.rand1_donors(kd, jnp.maximum(rank, 0), n)
        v = vals.reshape(h * w, c)
        f = jnp.asarray(self.mutation_factor, v.dtype)
        mutant = v[idx[r1]] + f * (v[idx[r2]] - v[idx[r3]])
        cr = jnp.asarray(self.crossover_rate, v.dtype)
        if self.grey:
            trial = pop_lib.binomial_crossover(kc, v[:, :1], mutant[:, :1], cr)
            trial = jnp.broadcast_to(trial, v.shape)
        else:
            trial = pop_lib.binomial_crossover(kc, v, mutant, cr)
        trial = self._clean_genes(trial)
        use = flat[:, None] & (n >= 4)
        return jnp.where(use, trial, v).reshape(h, w, c)

    def _score(self, model, images, y, target):
        """``(fitness, p_true, adversarial)`` each ``[B, M]`` for ``images[B, M, H, W, K]``."""
        probs = pop_lib.probabilities(model, images, chunk=self.eval_chunk)
        fit, p_true = pop_lib.fitness(probs, y, target)
        if self.success_rule == "argmax":
            adv = pop_lib.is_adversarial(probs, y, target)
        else:
            adv = fit < self.tau
        return fit, p_true, adv

    # -- phase 0 --------------------------------------------------------------------------------
    def _phase0(self, keys, model, x, y, target):
        b = x.shape[0]
        t0, tb = self.num_tries, self.tries_per_call
        n_calls = -(-t0 // tb)
        shape = (tb, *x.shape[1:])
        slot = jnp.arange(tb, dtype=jnp.int32)

        def cond(s):
            t, found = s[0], s[1]
            return jnp.any(~found) & (t < n_calls)

        def body(s):
            t, found, vals, fit, ptrue, tries, q = s
            tkeys = fold_keys(keys, t)
            noise = jax.vmap(lambda k: self._noise(k, shape, x.dtype))(tkeys)  # [B, tb, H, W, K]
            full = jnp.ones(noise.shape[:-1], bool)
            f, p, ok = self._score(model, self.apply(x[:, None], full, noise), y, target)
            # padded tries of the last call are neither used nor charged
            valid = (t * tb + slot) < t0
            ok = ok & valid[None, :]
            first = jnp.argmax(ok, axis=1)
            hit = jnp.any(ok, axis=1) & ~found
            take = jax.vmap(lambda a, i: a[i])
            return (
                t + 1,
                found | hit,
                pop_lib._bsel(hit, take(noise, first), vals),
                jnp.where(hit, take(f, first), fit),
                jnp.where(hit, take(p, first), ptrue),
                jnp.where(hit, t * tb + first.astype(jnp.int32) + 1, tries),
                q + jnp.where(found, 0, jnp.minimum(tb, t0 - t * tb)).astype(jnp.int32),
            )

        s0 = (
            jnp.zeros((), jnp.int32),
            jnp.zeros((b,), bool),
            jnp.zeros(x.shape, x.dtype),
            jnp.full((b,), jnp.inf, jnp.float32),
            jnp.full((b,), jnp.nan, jnp.float32),
            jnp.full((b,), t0, jnp.int32),
            jnp.zeros((b,), jnp.int32),
        )
        return s0, cond, body

    # -- phase 1 proposals ----------------------------------------------------------------------
    def _block_candidates(self, key, mask, vals, n, delta):
        """Per example: ``2·NS + 1`` candidate (mask, vals) pairs and the proposed size ``n'``."""
        ns = self.num_subsets
        n_new = jnp.maximum(n - delta, self.min_pixels)
        ks = jax.random.split(key, 2 * ns + 1)
        masks, valss = [], []
        for s in range(ns):
            keep = exact_subset(ks[2 * s], mask, n_new)
            u = self._de_colours(ks[2 * s + 1], keep, n_new, vals)
            masks += [keep, keep]
            valss += [vals, u]
        masks.append(mask)
        valss.append(self._de_colours(ks[-1], mask, n, vals))
        return jnp.stack(masks), jnp.stack(valss), n_new

    def _individual_candidates(self, key, mask, vals, n):
        """Per example (``variant='individual'``): per-pixel 5-gene trials on the current group,
        scored cooperatively. Returns ``masks[K]``, ``vals[K]``, ``live[K]`` (slot holds a pixel)
        and the trial (flat index, colour) per slot."""
        h, w, c = vals.shape
        kc = self.compact_size
        kd, kx = jax.random.split(key)
        flat = mask.reshape(-1)
        idx = jnp.nonzero(flat, size=kc, fill_value=0)[0]
        live = jnp.arange(kc) < n
        v = vals.reshape(h * w, c)
        genes = jnp.concatenate(
            [(idx // w).astype(v.dtype)[:, None], (idx % w).astype(v.dtype)[:, None], v[idx]],
            axis=1,
        )
        r1, r2, r3 = pop_lib.rand1_donors(kd, jnp.arange(kc, dtype=jnp.int32), n)
        f = jnp.asarray(self.mutation_factor, v.dtype)
        mutant = genes[r1] + f * (genes[r2] - genes[r3])
        if not self._positions:
            mutant = mutant.at[:, :2].set(genes[:, :2])
        if self.grey:
            mutant = mutant.at[:, 2:].set(jnp.broadcast_to(mutant[:, 2:3], (kc, c)))
        cr = jnp.asarray(self.crossover_rate, v.dtype)
        trial = pop_lib.binomial_crossover(kx, genes, mutant, cr)
        if self.grey:
            trial = trial.at[:, 2:].set(jnp.broadcast_to(trial[:, 2:3], (kc, c)))
        row = jnp.clip(jnp.round(trial[:, 0]), 0, h - 1).astype(jnp.int32)
        col = jnp.clip(jnp.round(trial[:, 1]), 0, w - 1).astype(jnp.int32)
        new_idx = row * w + col
        colour = self._clean_genes(trial[:, 2:])
        # A trial landing on another live pixel is discarded (the parent is kept).
        collide = flat[new_idx] & (new_idx != idx)
        new_idx = jnp.where(collide, idx, new_idx)
        colour = jnp.where(collide[:, None], v[idx], colour)
        de_ok = live & (n >= 4)
        new_idx = jnp.where(de_ok, new_idx, idx)
        colour = jnp.where(de_ok[:, None], colour, v[idx])

        def coop(i_old, i_new, col_new):
            m = flat.at[i_old].set(False).at[i_new].set(True)
            return m.reshape(h, w), v.at[i_new].set(col_new).reshape(h, w, c)

        masks, valss = jax.vmap(coop)(idx, new_idx, colour)
        return masks, valss, live, idx, new_idx, colour

    # -- the attack -----------------------------------------------------------------------------
    def run(self, keys, model, x, y, *, target=None) -> AttackResult:
        b, h, w, c = x.shape
        hw = h * w
        g_max = self.num_generations
        k0 = fold_keys(keys, 0)
        k1 = fold_keys(keys, 1)

        # Clean check (one query): an image the model already gets wrong needs no perturbation.
        f_clean, p_clean, adv_clean = self._score(model, x[:, None], y, target)
        f_clean, p_clean, adv_clean = f_clean[:, 0], p_clean[:, 0], adv_clean[:, 0]

        # ---- Phase 0: random noise over the full image.
        s0, cond0, body0 = self._phase0(k0, model, x, y, target)
        s0 = (s0[0], adv_clean, *s0[2:])  # clean errors count as found and spend no tries
        _, found, vals0, fit0, pt0, tries, q0 = jax.lax.while_loop(cond0, body0, s0)
        found_noise = found & ~adv_clean
        tries = jnp.where(adv_clean, 0, tries)
        queries = 1 + q0

        n0 = jnp.where(found_noise, hw, 0).astype(jnp.int32)
        state = dict(
            mask=jnp.broadcast_to(found_noise[:, None, None], (b, h, w)),
            vals=vals0,
            n=n0,
            fit=jnp.where(found_noise, fit0, f_clean),
            p=jnp.where(found_noise, pt0, p_clean),
            delta=jnp.maximum(
                1, jnp.floor(self.initial_removal * n0.astype(jnp.float32)).astype(jnp.int32)
            ),
            fails=jnp.zeros((b,), jnp.int32),
            gens=jnp.zeros((b,), jnp.int32),
            queries=queries,
        )
        state["active"] = found_noise & self._keep_going(state)
        if self.record_history:
            state["hist_n"] = jnp.zeros((b, g_max), jnp.int32)
            state["hist_p"] = jnp.zeros((b, g_max), jnp.float32)

        # ---- Phase 1: decrease group DE.
        def cond1(carry):
            g, s = carry
            return jnp.any(s["active"]) & (g < g_max)

        def body1(carry):
            g, s = carry
            gk = fold_keys(k1, g)
            s_new = self._generation(gk, model, x, y, target, s)
            act = s["active"]
            out = {
                name: pop_lib._bsel(act, s_new[name], s[name])
                for name in ("mask", "vals", "n", "fit", "p", "delta", "fails")
            }
            out["gens"] = s["gens"] + act.astype(jnp.int32)
            out["queries"] = jnp.where(act, s_new["queries"], s["queries"])
            out["active"] = act & self._keep_going(out)
            if self.record_history:
                out["hist_n"] = s["hist_n"].at[:, g].set(out["n"])
                out["hist_p"] = s["hist_p"].at[:, g].set(out["p"])
            return g + 1, out

        g_run, state = jax.lax.while_loop(cond1, body1, (jnp.zeros((), jnp.int32), state))

        if self.minimality_sweep:
            state = self._sweep(k1, model, x, y, target, state)

        adv = jnp.where(
            found_noise[:, None, None, None], self.apply(x, state["mask"], state["vals"]), x
        )
        res = finalize(self.threat, model, x, adv, y, target=target, queries=state["queries"])
        info = {
            "phase0_success": found_noise,
            "tries_used": tries,
            "generations": state["gens"],
            "support_size": state["n"],
            "prob": state["p"],
            "clean_prob": p_clean,
            "pct_pixels": 100.0 * res.norm / hw,
            "mask": state["mask"] & found_noise[:, None, None],
        }
        if self.record_history:
            later = jnp.arange(g_max)[None, :] >= g_run
            info["history_pixels"] = jnp.where(later, state["n"][:, None], state["hist_n"])
            info["history_prob"] = jnp.where(later, state["p"][:, None], state["hist_p"])
        return replace(res, info=info)

    def _keep_going(self, s) -> Array:
        go = (s["gens"] < self.num_generations) & (s["n"] > self.min_pixels)
        go = go & (s["fails"] < self.patience)
        if self.l0_target is not None:
            go = go & (s["n"] > self.l0_target)
        return go

    def _generation(self, gkeys, model, x, y, target, s):
        """One generation for every example (the caller merges it under the active mask)."""
        ns = self.num_subsets
        kb = fold_keys(gkeys, 0)
        masks, valss, n_new = jax.vmap(self._block_candidates)(
            kb, s["mask"], s["vals"], s["n"], s["delta"]
        )  # [B, 2NS+1, H, W(, K)]
        n_red = 2 * ns
        individual = self.variant == "individual"
        if individual:
            ki = fold_keys(gkeys, 1)
            im, iv, live, idx, new_idx, colour = jax.vmap(self._individual_candidates)(
                ki, s["mask"], s["vals"], s["n"]
            )
            masks = jnp.concatenate([masks, im], axis=1)
            valss = jnp.concatenate([valss, iv], axis=1)
        fit, p_true, adv = self._score(model, self.apply(x[:, None], masks, valss), y, target)

        # (d) reduction: the adversarial reduced candidate with the lowest fitness.
        ok = adv[:, :n_red]
        if self.keep_close_tol is not None:
            ok = ok & (fit[:, :n_red] - s["fit"][:, None] <= self.keep_close_tol)
        red = jnp.where(ok, fit[:, :n_red], jnp.inf)
        j = jnp.argmin(red, axis=1)
        accept = jnp.any(ok, axis=1)
        take = jax.vmap(lambda a, i: a[i])
        delta_acc = jnp.minimum(s["delta"], jnp.maximum(1, n_new // 2))

        # Otherwise a greedy DE step on the current group (A5: child <= parent, and adversarial).
        block_mode = jnp.ones_like(accept) if not individual else s["n"] > self.compact_size
        imp = adv[:, n_red] & (fit[:, n_red] <= s["fit"])
        cur_vals = jnp.where(_bcast(imp, s["vals"]), valss[:, n_red], s["vals"])
        cur_mask = s["mask"]
        cur_fit = jnp.where(imp, fit[:, n_red], s["fit"])
        cur_p = jnp.where(imp, p_true[:, n_red], s["p"])
        q_gen = jnp.full(accept.shape, n_red + 1, jnp.int32)
        if individual:
            (i_mask, i_vals, i_fit, i_p, i_q) = self._individual_select(
                model,
                x,
                y,
                target,
                s,
                fit[:, n_red + 1 :],
                p_true[:, n_red + 1 :],
                adv[:, n_red + 1 :],
                im,
                iv,
                live,
                idx,
                new_idx,
                colour,
            )
            cur_mask = jnp.where(_bcast(block_mode, cur_mask), cur_mask, i_mask)
            cur_vals = jnp.where(_bcast(block_mode, cur_vals), cur_vals, i_vals)
            cur_fit = jnp.where(block_mode, cur_fit, i_fit)
            cur_p = jnp.where(block_mode, cur_p, i_p)
            q_gen = jnp.where(block_mode, q_gen, n_red + i_q)

        rej_fails = s["fails"] + (s["delta"] == 1).astype(jnp.int32)
        rej_delta = jnp.maximum(1, s["delta"] // 2)
        cur_n = s["n"] if not individual else jnp.sum(cur_mask, axis=(1, 2)).astype(jnp.int32)
        return dict(
            mask=jnp.where(_bcast(accept, cur_mask), take(masks, j), cur_mask),
            vals=jnp.where(_bcast(accept, cur_vals), take(valss, j), cur_vals),
            n=jnp.where(accept, n_new, cur_n),
            fit=jnp.where(accept, take(fit, j), cur_fit),
            p=jnp.where(accept, take(p_true, j), cur_p),
            delta=jnp.where(accept, delta_acc, rej_delta),
            fails=jnp.where(accept, 0, rej_fails),
            queries=s["queries"] + q_gen,
        )

    def _individual_select(
        self, model, x, y, target, s, fit, p_true, adv, im, iv, live, idx, new_idx, colour
    ):
        """Per-pixel greedy selection of the cooperative trials, then the synchronous merge
        (one more query when two or more pixels won). Returns the new group, its fitness and the
        queries spent on the individual part (``n`` trials + the merge)."""
        b, h, w, c = x.shape
        win = live & adv & (fit <= s["fit"][:, None])
        n_win = jnp.sum(win, axis=1)
        bf = jnp.where(win, fit, jnp.inf)
        jb = jnp.argmin(bf, axis=1)
        take = jax.vmap(lambda a, i: a[i])

        def merge(mask, vals, win, idx, new_idx, colour):
            flat = mask.reshape(-1)
            v = vals.reshape(h * w, c)
            old = jnp.where(win, idx, h * w)  # out of range: dropped
            new = jnp.where(win, new_idx, h * w)
            flat = flat.at[old].set(False, mode="drop").at[new].set(True, mode="drop")
            v = v.at[new].set(colour, mode="drop")
            return flat.reshape(h, w), v.reshape(h, w, c)

        m_mask, m_vals = jax.vmap(merge)(s["mask"], s["vals"], win, idx, new_idx, colour)
        mf, mp, madv = self._score(
            model, self.apply(x[:, None], m_mask[:, None], m_vals[:, None]), y, target
        )
        mf, mp, madv = mf[:, 0], mp[:, 0], madv[:, 0]
        use_merge = (n_win >= 2) & madv & (mf <= take(bf, jb))
        use_single = (n_win >= 1) & ~use_merge
        out_mask = jnp.where(
            _bcast(use_merge, s["mask"]),
            m_mask,
            jnp.where(_bcast(use_single, s["mask"]), take(im, jb), s["mask"]),
        )
        out_vals = jnp.where(
            _bcast(use_merge, s["vals"]),
            m_vals,
            jnp.where(_bcast(use_single, s["vals"]), take(iv, jb), s["vals"]),
        )
        out_fit = jnp.where(use_merge, mf, jnp.where(use_single, take(fit, jb), s["fit"]))
        out_p = jnp.where(use_merge, mp, jnp.where(use_single, take(p_true, jb), s["p"]))
        q = jnp.minimum(s["n"], self.compact_size) + (n_win >= 2).astype(jnp.int32)
        return out_mask, out_vals, out_fit, out_p, q.astype(jnp.int32)

    def _sweep(self, keys, model, x, y, target, s):
        """1-minimality: repeatedly drop the single pixel whose removal keeps the image
        adversarial with the lowest fitness, until none can go (groups of at most
        ``compact_size`` pixels; larger groups are left as they are)."""
        b, h, w, c = x.shape
        kc = self.compact_size

        def cands(mask, n):
            flat = mask.reshape(-1)
            idx = jnp.nonzero(flat, size=kc, fill_value=0)[0]
            live = jnp.arange(kc) < n
            m = jax.vmap(lambda i: flat.at[i].set(False).reshape(h, w))(idx)
            return m, live

        def cond(carry):
            r, _, act = carry
            return jnp.any(act) & (r < kc)

        def body(carry):
            r, st, act = carry
            m, live = jax.vmap(cands)(st["mask"], st["n"])
            vals = jnp.broadcast_to(st["vals"][:, None], (b, kc, h, w, c))
            fit, p, adv = self._score(model, self.apply(x[:, None], m, vals), y, target)
            ok = live & adv
            j = jnp.argmin(jnp.where(ok, fit, jnp.inf), axis=1)
            go = act & jnp.any(ok, axis=1)
            take = jax.vmap(lambda a, i: a[i])
            st = dict(st)
            st["queries"] = st["queries"] + jnp.where(act, st["n"], 0).astype(jnp.int32)
            st["mask"] = jnp.where(_bcast(go, st["mask"]), take(m, j), st["mask"])
            st["n"] = st["n"] - go.astype(jnp.int32)
            st["fit"] = jnp.where(go, take(fit, j), st["fit"])
            st["p"] = jnp.where(go, take(p, j), st["p"])
            return r + 1, st, go & (st["n"] > self.min_pixels)

        act = (s["n"] > self.min_pixels) & (s["n"] <= kc) & (s["n"] > 0)
        _, s, _ = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), s, act))
        return s


__all__ = ["DGDE", "OnePixel", "exact_subset"]
