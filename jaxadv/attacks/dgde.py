"""Decrease Group Differential Evolution (DGDE), a minimal-pixel score-based black-box attack.

It looks only at ``softmax(model(x))`` (no gradients), counts every image it scores as one query of
the example it belongs to, and reports ``res.norm`` as the number of changed spatial pixels
(:class:`~jaxadv.threats.L0Pixels`). Candidate images are scored batch-first with the engine of
:mod:`jaxadv.attacks.population`.

It *minimises* a fitness: the true-class probability (untargeted) or ``1 - p_target`` (targeted);
``res.loss`` is the usual margin (success ⇔ margin > 0).

Reference:
    Y. Wang, M. Wildgruber, X. Wang, "Attacking medical images with minimal noise" (DGDE),
    Quant Imaging Med Surg 14(12):9374-9384, 2024 (doi:10.21037/qims-24-1764).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxadv import _validate as V
from jaxadv._batch import bcast, bsel
from jaxadv._struct import float32_fields, pytree_dataclass, replace, static
from jaxadv.attacks import population as pop_lib
from jaxadv.attacks.base import AbstractAttack, fold_keys, register
from jaxadv.attacks.driver import Scored, iterate
from jaxadv.result import AttackResult, finalize
from jaxadv.threats import L0Pixels

Array = jax.Array


def exact_subset(key: Array, mask: Array, k: Array) -> Array:
    """A uniformly random subset of exactly ``min(k, mask.sum())`` of the ``True`` entries of
    ``mask`` (any shape; ``k`` may be traced). One sort, whatever ``k``."""
    flat = mask.reshape(-1)
    score = jnp.where(flat, jax.random.uniform(key, flat.shape), 2.0)
    order = jnp.argsort(score)
    rank = jnp.zeros(flat.shape, jnp.int32).at[order].set(jnp.arange(flat.size, dtype=jnp.int32))
    return ((rank < k) & flat).reshape(mask.shape)


@pytree_dataclass
class DGDEOptions:
    """The choices Wang, Wildgruber & Wang (2024), "Attacking medical images with minimal noise",
    leave open, in one frozen value; the defaults are our reading of the paper.

    Shape- and control-deciding choices are static; the three continuous ones (``noise_amp``,
    ``tau``, ``keep_close_tol``) are leaves, so changing them never retraces.

    Attributes:
        noise_mode: Phase 0 noise: ``"replace"`` (``U(lo, hi)`` per pixel and channel, default) or
            ``"additive"`` (``x + U(-noise_amp, noise_amp)``, clipped) (static).
        noise_amp: half-width of the additive noise, in units of the box range.
        success_rule: when a candidate counts as adversarial during the search: ``"argmax"``
            (misclassified / classified as the target; default) or ``"prob_threshold"`` (fitness
            below ``tau``) (static). The final ``res.success`` is always the library's argmax check.
        tau: probability threshold of ``success_rule="prob_threshold"``.
        variant: ``"block"`` (colours of a shrinking subset, default) or ``"individual"`` (each
            pixel a 5-gene DE individual once the group has at most ``compact_size`` pixels)
            (static).
        compact_size: ``K``, the group size below which ``"individual"`` and the minimality
            sweep act (static).
        evolve_positions: mutate row/col genes (``None``: True for ``"individual"``; ``"block"``
            needs False) (static).
        num_subsets: random reduced subsets proposed per generation (1 = an individual is a pixel;
            more gives the alternative reading where an individual is a subset) (static).
        grey: one colour for all channels (default: per-channel colours) (static).
        quantize: colour levels (255 = 8-bit, default; ``None`` = continuous) (static).
        keep_close_tol: optionally also require ``p_child - p_parent <= keep_close_tol`` to accept a
            reduction (default ``None``: hard acceptance, child adversarial and not worse).
        minimality_sweep: finally remove single pixels while the image stays adversarial (an
            extension beyond the paper; needs ``n <= compact_size``) (static).
        l0_target: stop an example once ``n <= l0_target`` (default ``None``) (static).
    """

    noise_mode: str = static(default="replace")
    noise_amp: float | Array = 1.0
    success_rule: str = static(default="argmax")
    tau: float | Array = 0.5
    variant: str = static(default="block")
    compact_size: int = static(default=256)
    evolve_positions: bool | None = static(default=None)
    num_subsets: int = static(default=1)
    grey: bool = static(default=False)
    quantize: int | None = static(default=255)
    keep_close_tol: float | Array | None = None
    minimality_sweep: bool = static(default=False)
    l0_target: int | None = static(default=None)

    def __post_init__(self) -> None:
        choices = {
            "success_rule": ("argmax", "prob_threshold"),
            "noise_mode": ("replace", "additive"),
            "variant": ("block", "individual"),
        }
        for name, ok in choices.items():
            if getattr(self, name) not in ok:
                raise ValueError(
                    f"DGDEOptions: {name} must be one of {ok}, got {getattr(self, name)!r}"
                )
        if self.variant == "block" and self.evolve_positions:
            raise ValueError(
                "DGDEOptions: variant='block' evolves colours only (the support must shrink as a "
                "subset); use variant='individual' to mutate pixel positions"
            )
        float32_fields(self, "tau", "noise_amp", "keep_close_tol")

    @property
    def positions(self) -> bool:
        """Whether row/col genes are mutated."""
        return (
            self.variant == "individual" if self.evolve_positions is None else self.evolve_positions
        )


@register
@pytree_dataclass
class DGDE(AbstractAttack):
    """Decrease Group Differential Evolution (Wang, Wildgruber & Wang, 2024, "Attacking medical
    images with minimal noise"): a minimal-pixel score-based attack, reconstructed from the paper's
    text (its pseudocode is unavailable); the open choices are the fields of :class:`DGDEOptions`.

    **Phase 0** (random-noise attack, the paper's Table 1): up to ``num_tries`` (``T0``) full-image
    noise matrices, ``tries_per_call`` per model call; the first adversarial one is kept. An example
    with no adversarial noise fails and returns ``x``. An image already misclassified returns ``x``
    after one query.

    **Phase 1** (decrease group): the perturbed pixels form the group; each generation proposes
    ``n' = max(n - Δ, min_pixels)`` pixels chosen uniformly from the current support
    (``options.num_subsets`` independent subsets), each both with its current colours and with a
    DE/rand/1/bin trial on the colours of the reduced group (``F``, ``CR``, donors among the group,
    ``n' >= 4``), plus a DE trial on the whole current group: ``2·num_subsets + 1`` images in one
    call. The adversarial reduced candidate with the lowest fitness is accepted
    (``Δ ← min(Δ, n'/2)``); otherwise the current-group trial replaces the colours if it is
    adversarial and not worse (greedy DE step), ``Δ`` halves and, at ``Δ = 1``, a failure is
    counted. The pixel count never increases and the support at ``g + 1`` is a subset of the
    support at ``g`` (``variant="block"``); every accepted state is adversarial. An example stops
    after ``num_generations``, at ``min_pixels``, at ``options.l0_target`` or after ``patience``
    consecutive failures at ``Δ = 1``.

    ``options.variant="individual"``: once the group has at most ``compact_size`` pixels each
    pixel is a 5-gene DE individual ``(row, col, colours)``: every live pixel gets a trial (positions
    mutated when ``evolve_positions``; a trial landing on another live pixel is discarded), scored
    cooperatively (current perturbation with that one pixel replaced), accepted per pixel when it is
    adversarial and not worse; the winners are merged and checked by one more query, falling back
    to the best single winner. Cost ``n + 2`` (``+1``) queries per generation instead of 3.

    Fixed readings of the paper: fitness = true-class probability (targeted ``1 - p_t``); accept iff
    ``child <= parent``; three distinct donors; ``F=0.5, CR=0.7, G=1000``; ``T0=100``; adaptive
    halving of ``Δ`` from ``initial_removal · n0``; ``patience=100``, ``min_pixels=1``.

    Attributes:
        threat: an :class:`L0Pixels` (default ``eps=inf``: no budget; the library projects the
            result onto it, so use ``options.l0_target`` to make the attack aim for the budget).
        num_tries: ``T0`` noise attempts in Phase 0 (static).
        tries_per_call: ``T0_batch`` attempts per model call (static).
        num_generations: ``G`` (static; also the length of the recorded history).
        mutation_factor, crossover_rate: DE ``F`` and ``CR``.
        initial_removal: ``Δ0 = floor(initial_removal · n0)``.
        patience: consecutive failed single-pixel removals before stopping (static).
        min_pixels: smallest support (``n_min``, static).
        record_history: record ``info["history_pixels"]`` / ``info["history_prob"]`` ``[B, G]``
            (static).
        eval_chunk: population members per model call (static; ``None`` = automatic).
        options: the paper's open choices, a :class:`DGDEOptions`.

    ``res.info`` (leading axis ``B``): ``phase0_success``, ``tries_used``, ``generations``,
    ``support_size`` (``n``), ``prob`` (final true-class probability), ``clean_prob``,
    ``pct_pixels`` (``100 · norm / (H·W)``), ``mask`` ``bool[B, H, W]`` and, with
    ``record_history``, ``history_pixels`` ``int32[B, G]`` and ``history_prob`` ``f32[B, G]`` (the
    state after each generation; frozen values after an example stops).

    Example:
        >>> import jax, jax.numpy as jnp, jaxadv
        >>> from jaxadv.attacks.dgde import DGDE
        >>> def apply(t, x):  # class 0 once 2 pixels are bright, else class 1
        ...     top = jax.lax.top_k(x.reshape(x.shape[0], -1), 2)[0].mean(1)
        ...     return jnp.stack([t * (top - 0.8), jnp.zeros_like(top)], 1)
        >>> model = jaxadv.from_apply(apply, jnp.float32(50.0))
        >>> x, y = jnp.full((2, 6, 6, 1), 0.3), jnp.array([1, 1])
        >>> res = DGDE(num_generations=60, patience=20)(jax.random.key(0), model, x, y)
        >>> res.success.tolist(), res.norm.tolist()
        ([True, True], [2.0, 2.0])
    """

    oracle: ClassVar[str] = "scores"
    budget_field: ClassVar[str | None] = "num_generations"
    restarts_field: ClassVar[str | None] = None
    threats: ClassVar[tuple[type, ...]] = (L0Pixels,)
    settings: ClassVar[Mapping[str, V.Range]] = {
        "num_tries": V.at_least(1),
        "tries_per_call": V.at_least(1),
        "num_generations": V.at_least(1),
        "mutation_factor": V.Range(0.0, 2.0, lo_open=True),
        "crossover_rate": V.unit(),
        "initial_removal": V.unit(),
        "patience": V.at_least(0),
        "min_pixels": V.at_least(1),
        "eval_chunk": V.at_least(1),
        "options.noise_amp": V.unit(lo_open=True),
        "options.tau": V.unit(),
        "options.compact_size": V.at_least(1),
        "options.num_subsets": V.at_least(1),
        "options.quantize": V.at_least(1),
        "options.keep_close_tol": V.Range(0.0),
        "options.l0_target": V.at_least(0),
    }

    threat: Any = None
    num_tries: int = static(default=100)
    tries_per_call: int = static(default=10)
    num_generations: int = static(default=1000)
    mutation_factor: float | Array = 0.5
    crossover_rate: float | Array = 0.7
    initial_removal: float | Array = 0.5
    patience: int = static(default=100)
    min_pixels: int = static(default=1)
    record_history: bool = static(default=True)
    eval_chunk: int | None = static(default=None)
    options: DGDEOptions = dataclasses.field(default_factory=DGDEOptions)

    def __post_init__(self) -> None:
        if self.threat is None:
            object.__setattr__(self, "threat", L0Pixels(eps=math.inf))
        elif not isinstance(self.threat, L0Pixels):
            raise TypeError(
                f"DGDE needs an L0Pixels threat model, got {type(self.threat).__name__}"
            )
        if not isinstance(self.options, DGDEOptions):
            raise TypeError(
                f"DGDE: options must be a DGDEOptions, got {type(self.options).__name__}"
            )
        float32_fields(self, "mutation_factor", "crossover_rate", "initial_removal")

    # -- helpers --------------------------------------------------------------------------------
    def _gene_bounds(self, dtype) -> tuple[Array, Array]:
        lo, hi = pop_lib.box(self.threat, dtype)
        if self.options.noise_mode == "replace":
            return lo, hi
        a = jnp.asarray(self.options.noise_amp, dtype) * (hi - lo)
        return -a, a

    def _clean_genes(self, v: Array) -> Array:
        """Clip colour genes to their bounds and quantise them."""
        lo, hi = pop_lib.box(self.threat, v.dtype)
        g_lo, g_hi = self._gene_bounds(v.dtype)
        v = jnp.clip(v, g_lo, g_hi)
        if self.options.quantize is None:
            return v
        if self.options.noise_mode == "replace":
            return pop_lib.quantize(v, lo, hi, self.options.quantize)
        step = (hi - lo) / self.options.quantize
        return jnp.round(v / step) * step

    def apply(self, x: Array, mask: Array, vals: Array) -> Array:
        """``A(x; S, v)``: ``x[..., H, W, K]`` with the pixels of ``mask[..., H, W]`` replaced by
        ``vals`` (``replace``) or shifted by ``vals`` and clipped (``additive``)."""
        lo, hi = pop_lib.box(self.threat, x.dtype)
        x = jnp.broadcast_to(x, vals.shape)
        new = vals if self.options.noise_mode == "replace" else jnp.clip(x + vals, lo, hi)
        return jnp.where(mask[..., None], new, x)

    def _noise(self, key: Array, shape: tuple[int, ...], dtype) -> Array:
        g_lo, g_hi = self._gene_bounds(dtype)
        if self.options.grey:
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
        if self.options.grey:
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
        if self.options.success_rule == "argmax":
            adv = pop_lib.is_adversarial(probs, y, target)
        else:
            adv = fit < self.options.tau
        return fit, p_true, adv

    # -- phase 0 --------------------------------------------------------------------------------
    def _phase0(self, keys, model, x, y, target, found):
        """Noise over the full image, ``tries_per_call`` tries per example per call, until one
        fools the model or ``num_tries`` are spent. ``found`` examples (clean errors) try nothing.

        Returns ``(found, vals, fit, p_true, tries, queries)``, the last three ``[B]``.
        """
        b = x.shape[0]
        t0, tb = self.num_tries, self.tries_per_call
        shape = (tb, *x.shape[1:])
        slot = jnp.arange(tb, dtype=jnp.int32)

        def step(t, s, act):
            tkeys = fold_keys(keys, t)
            noise = jax.vmap(lambda k: self._noise(k, shape, x.dtype))(tkeys)  # [B, tb, H, W, K]
            full = jnp.ones(noise.shape[:-1], bool)
            f, p, ok = self._score(model, self.apply(x[:, None], full, noise), y, target)
            # padded tries of the last call are neither used nor charged
            valid = (t * tb + slot) < t0
            ok = ok & valid[None, :]
            first = jnp.argmax(ok, axis=1)
            hit = jnp.any(ok, axis=1)
            take = jax.vmap(lambda a, i: a[i])
            new = dict(
                found=hit,
                vals=bsel(hit, take(noise, first), s["vals"]),
                fit=jnp.where(hit, take(f, first), s["fit"]),
                p=jnp.where(hit, take(p, first), s["p"]),
                tries=jnp.where(hit, t * tb + first.astype(jnp.int32) + 1, s["tries"]),
            )
            spent = jnp.where(act, jnp.minimum(tb, t0 - t * tb), 0).astype(jnp.int32)
            return new, None, spent

        state = dict(
            found=found,
            vals=jnp.zeros(x.shape, x.dtype),
            fit=jnp.full((b,), jnp.inf, jnp.float32),
            p=jnp.full((b,), jnp.nan, jnp.float32),
            tries=jnp.full((b,), t0, jnp.int32),
        )
        loop = iterate(
            step,
            state,
            stop=-(-t0 // tb),
            active=~found,
            queries=jnp.zeros((b,), jnp.int32),
            cost=None,
            done=lambda s, _: s["found"],
            exit_early=True,
        )
        s = loop.state
        return s["found"], s["vals"], s["fit"], s["p"], s["tries"], loop.queries

    # -- phase 1 proposals ----------------------------------------------------------------------
    def _block_candidates(self, key, mask, vals, n, delta):
        """Per example: ``2·NS + 1`` candidate (mask, vals) pairs and the proposed size ``n'``."""
        ns = self.options.num_subsets
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
        kc = self.options.compact_size
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
        if not self.options.positions:
            mutant = mutant.at[:, :2].set(genes[:, :2])
        if self.options.grey:
            mutant = mutant.at[:, 2:].set(jnp.broadcast_to(mutant[:, 2:3], (kc, c)))
        cr = jnp.asarray(self.crossover_rate, v.dtype)
        trial = pop_lib.binomial_crossover(kx, genes, mutant, cr)
        if self.options.grey:
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
        # Clean errors count as found and spend no tries.
        found, vals0, fit0, pt0, tries, q0 = self._phase0(k0, model, x, y, target, adv_clean)
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
        )
        active = found_noise & self._keep_going(state)
        if self.record_history:
            state["hist_n"] = jnp.zeros((b, g_max), jnp.int32)
            state["hist_p"] = jnp.zeros((b, g_max), jnp.float32)

        # ---- Phase 1: decrease group DE, on the loop driver. The step masks its own state
        # (the history is written for every example) and reports its per-example queries.
        def phase1_step(g, s, act):
            gk = fold_keys(k1, g)
            # _generation adds its queries to s["queries"]: from zero, that is this step's cost.
            s_new = self._generation(gk, model, x, y, target, {**s, "queries": jnp.zeros_like(n0)})
            out = {
                name: bsel(act, s_new[name], s[name])
                for name in ("mask", "vals", "n", "fit", "p", "delta", "fails")
            }
            out["gens"] = s["gens"] + act.astype(jnp.int32)
            if self.record_history:
                out["hist_n"] = s["hist_n"].at[:, g].set(out["n"])
                out["hist_p"] = s["hist_p"].at[:, g].set(out["p"])
            return out, None, jnp.where(act, s_new["queries"], 0)

        loop = iterate(
            phase1_step,
            state,
            stop=g_max,
            active=active,
            queries=queries,
            cost=None,
            done=lambda s, _: ~self._keep_going(s),
            exit_early=True,
            freeze_state=False,
        )
        g_run = loop.stop
        state = {**loop.state, "queries": loop.queries}

        if self.options.minimality_sweep:
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
        return replace(res, info={**res.info, **info})

    def _keep_going(self, s) -> Array:
        go = (s["gens"] < self.num_generations) & (s["n"] > self.min_pixels)
        go = go & (s["fails"] < self.patience)
        if self.options.l0_target is not None:
            go = go & (s["n"] > self.options.l0_target)
        return go

    def _generation(self, gkeys, model, x, y, target, s):
        """One generation for every example (the caller merges it under the active mask)."""
        ns = self.options.num_subsets
        kb = fold_keys(gkeys, 0)
        masks, valss, n_new = jax.vmap(self._block_candidates)(
            kb, s["mask"], s["vals"], s["n"], s["delta"]
        )  # [B, 2NS+1, H, W(, K)]
        n_red = 2 * ns
        individual = self.options.variant == "individual"
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
        if self.options.keep_close_tol is not None:
            ok = ok & (fit[:, :n_red] - s["fit"][:, None] <= self.options.keep_close_tol)
        red = jnp.where(ok, fit[:, :n_red], jnp.inf)
        j = jnp.argmin(red, axis=1)
        accept = jnp.any(ok, axis=1)
        take = jax.vmap(lambda a, i: a[i])
        delta_acc = jnp.minimum(s["delta"], jnp.maximum(1, n_new // 2))

        # Otherwise a greedy DE step on the current group (A5: child <= parent, and adversarial).
        block_mode = jnp.ones_like(accept) if not individual else s["n"] > self.options.compact_size
        imp = adv[:, n_red] & (fit[:, n_red] <= s["fit"])
        cur_vals = jnp.where(bcast(imp, s["vals"]), valss[:, n_red], s["vals"])
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
            cur_mask = jnp.where(bcast(block_mode, cur_mask), cur_mask, i_mask)
            cur_vals = jnp.where(bcast(block_mode, cur_vals), cur_vals, i_vals)
            cur_fit = jnp.where(block_mode, cur_fit, i_fit)
            cur_p = jnp.where(block_mode, cur_p, i_p)
            q_gen = jnp.where(block_mode, q_gen, n_red + i_q)

        rej_fails = s["fails"] + (s["delta"] == 1).astype(jnp.int32)
        rej_delta = jnp.maximum(1, s["delta"] // 2)
        cur_n = s["n"] if not individual else jnp.sum(cur_mask, axis=(1, 2)).astype(jnp.int32)
        return dict(
            mask=jnp.where(bcast(accept, cur_mask), take(masks, j), cur_mask),
            vals=jnp.where(bcast(accept, cur_vals), take(valss, j), cur_vals),
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
            bcast(use_merge, s["mask"]),
            m_mask,
            jnp.where(bcast(use_single, s["mask"]), take(im, jb), s["mask"]),
        )
        out_vals = jnp.where(
            bcast(use_merge, s["vals"]),
            m_vals,
            jnp.where(bcast(use_single, s["vals"]), take(iv, jb), s["vals"]),
        )
        out_fit = jnp.where(use_merge, mf, jnp.where(use_single, take(fit, jb), s["fit"]))
        out_p = jnp.where(use_merge, mp, jnp.where(use_single, take(p_true, jb), s["p"]))
        q = jnp.minimum(s["n"], self.options.compact_size) + (n_win >= 2).astype(jnp.int32)
        return out_mask, out_vals, out_fit, out_p, q.astype(jnp.int32)

    def _sweep(self, keys, model, x, y, target, s):
        """1-minimality: repeatedly drop the single pixel whose removal keeps the image
        adversarial with the lowest fitness, until none can go (groups of at most
        ``compact_size`` pixels; larger groups are left as they are)."""
        b, h, w, c = x.shape
        kc = self.options.compact_size

        def cands(mask, n):
            flat = mask.reshape(-1)
            idx = jnp.nonzero(flat, size=kc, fill_value=0)[0]
            live = jnp.arange(kc) < n
            m = jax.vmap(lambda i: flat.at[i].set(False).reshape(h, w))(idx)
            return m, live

        def sweep_step(_, st, act):
            m, live = jax.vmap(cands)(st["mask"], st["n"])
            vals = jnp.broadcast_to(st["vals"][:, None], (b, kc, h, w, c))
            fit, p, adv = self._score(model, self.apply(x[:, None], m, vals), y, target)
            ok = live & adv
            j = jnp.argmin(jnp.where(ok, fit, jnp.inf), axis=1)
            go = jnp.any(ok, axis=1)  # the driver freezes inactive examples
            take = jax.vmap(lambda a, i: a[i])
            spent = jnp.where(act, st["n"], 0).astype(jnp.int32)  # one image per live pixel
            st = dict(st)
            st["mask"] = jnp.where(bcast(go, st["mask"]), take(m, j), st["mask"])
            st["n"] = st["n"] - go.astype(jnp.int32)
            st["fit"] = jnp.where(go, take(fit, j), st["fit"])
            st["p"] = jnp.where(go, take(p, j), st["p"])
            return st, Scored(point=st["mask"], success=go, score=-st["fit"]), spent

        act = (s["n"] > self.min_pixels) & (s["n"] <= kc) & (s["n"] > 0)
        state = {k: v for k, v in s.items() if k != "queries"}
        loop = iterate(
            sweep_step,
            state,
            stop=kc,
            active=act,
            queries=s["queries"],
            cost=None,
            # an example stops once no pixel can go or it is down to min_pixels
            done=lambda st, sc: ~(sc.success & (st["n"] > self.min_pixels)),
            exit_early=True,
        )
        return {**loop.state, "queries": loop.queries}


__all__ = ["DGDE", "DGDEOptions", "exact_subset"]
