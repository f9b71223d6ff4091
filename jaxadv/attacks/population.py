"""A batched, score-based population engine for evolutionary attacks.

Every array is batch-first: a population is ``pop[B, P, D]`` (``B`` examples, ``P`` individuals,
``D`` genes). One generation renders all ``B·P`` candidate images and sends them through the model in
**one** call (or one ``lax.map`` over static chunks of the population axis when ``B·P·D`` is large,
a fixed element budget); the batch axis is never split, so a batch sharded over devices stays sharded.

The engine only ever looks at ``softmax(model(images))`` (score-based black box): no gradients. Every
image whose score an example may use is charged to that example as one query, and an example stops
being charged as soon as it has finished (per-example early exit by mask, P1). Fitness is
*minimised*; NaN fitness counts as the worst possible value.

Building blocks:

* :func:`probabilities` — P3 population evaluation.
* :func:`fitness` — true-class probability (untargeted) or ``1 - p_target`` (targeted).
* :func:`rand1_donors` — three distinct DE donors, all different from the individual, among ``n``
  live individuals with a traced ``n`` (P6).
* :func:`rand1_bin` — DE/rand/1/bin trial vectors for one population.
* :func:`greedy_select` — the DE survivor selection as one ``jnp.where``.
* :func:`minimize` — the batched DE driver with per-example early exit and exact query counts.

Why not ``evosax.algorithms.DifferentialEvolution``: its donor draw costs O(P) per individual
(``random.choice`` with a mask), ours O(1) (6-18x faster per DE step at ``P = 400``, see
``benchmarks/EVOLUTION.md``), and DGDE needs a traced, shrinking number of live individuals, which
an evosax strategy fixes at construction.

Reference: R. Storn and K. Price, "Differential evolution — a simple and efficient heuristic for
global optimization over continuous spaces", J. Global Optim. 11 (1997).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxadv._struct import pytree_dataclass
from jaxadv.attacks.base import fold_keys
from jaxadv.attacks.driver import Best, Scored, iterate
from jaxadv.losses import label_success

Array = jax.Array

#: Float elements of one population evaluation before it is split into ``lax.map`` chunks.
DEFAULT_EVAL_BUDGET = 2**24


def quantize(v: Array, lo: Array, hi: Array, levels: int | None) -> Array:
    """Round ``v`` to ``levels + 1`` equally spaced values of ``[lo, hi]`` (8-bit: ``levels=255``)."""
    if levels is None:
        return v
    step = (hi - lo) / levels
    return jnp.round((v - lo) / step) * step + lo


def box(threat, dtype) -> tuple[Array, Array]:
    """The threat's box bounds ``(lo, hi)`` as arrays of ``dtype`` (colour-gene range)."""
    return jnp.asarray(threat.lo, dtype), jnp.asarray(threat.hi, dtype)


def auto_chunk(batch: int, population: int, size: int, budget: int = DEFAULT_EVAL_BUDGET) -> int:
    """Population members per model call so that one call holds at most ``budget`` floats."""
    return int(max(1, min(population, budget // max(1, batch * size))))


def probabilities(model: Callable, images: Array, *, chunk: int | None = None) -> Array:
    """Class probabilities ``f32[B, P, C]`` of the candidate images ``images[B, P, H, W, K]``.

    With ``chunk=None`` the chunk size follows :data:`DEFAULT_EVAL_BUDGET`. When all ``P``
    candidates fit, this is a single model call on ``B·P`` images; otherwise the population axis is
    cut into ``ceil(P / chunk)`` static chunks evaluated by ``lax.map`` (the last chunk is padded
    with copies of the last candidate; their scores are dropped).
    """
    b, p = images.shape[:2]
    rest = images.shape[2:]
    size = 1
    for s in rest:
        size *= s
    chunk = auto_chunk(b, p, size) if chunk is None else max(1, min(int(chunk), p))

    def call(imgs: Array) -> Array:
        m = imgs.shape[1]
        logits = model(imgs.reshape(b * m, *rest))
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1).reshape(b, m, -1)

    if chunk >= p:
        return call(images)
    n = -(-p // chunk)
    pad = n * chunk - p
    if pad:
        images = jnp.concatenate([images, jnp.repeat(images[:, -1:], pad, axis=1)], axis=1)
    chunks = jnp.moveaxis(images.reshape(b, n, chunk, *rest), 1, 0)
    out = jax.lax.map(call, chunks)  # [n, B, chunk, C]
    return jnp.moveaxis(out, 0, 1).reshape(b, n * chunk, -1)[:, :p]


def fitness(probs: Array, y: Array, target: Array | None = None) -> tuple[Array, Array]:
    """``(fitness, p_true)``, both ``f32[B, P]``, from ``probs[B, P, C]``.

    Untargeted: the fitness is the true-class probability ``p_y``. Targeted: ``1 - p_t``. Lower is
    better in both cases. NaN probabilities become ``+inf`` fitness (worst).
    """
    p_true = jnp.take_along_axis(probs, y[:, None, None].astype(jnp.int32), axis=2)[..., 0]
    if target is None:
        fit = p_true
    else:
        p_t = jnp.take_along_axis(probs, target[:, None, None].astype(jnp.int32), axis=2)[..., 0]
        fit = 1.0 - p_t
    return jnp.where(jnp.isnan(fit), jnp.inf, fit), p_true


def is_adversarial(probs: Array, y: Array, target: Array | None = None) -> Array:
    """``bool[B, P]``: argmax differs from ``y`` (untargeted) or equals ``target`` (targeted)."""
    return label_success(
        jnp.argmax(probs, axis=-1), y[:, None], None if target is None else target[:, None]
    )


def _skip(v: Array, used: list[Array]) -> Array:
    """Map ``v`` (an index into the set with ``used`` removed) back to an index of the full set."""
    srt = jnp.sort(jnp.stack(used, axis=0), axis=0) if len(used) > 1 else used[0][None]
    for j in range(srt.shape[0]):
        v = v + (v >= srt[j]).astype(v.dtype)
    return v


def rand1_donors(key: Array, rank: Array, n: Array | int) -> tuple[Array, Array, Array]:
    """Three mutually distinct donor ranks, all different from ``rank``, in ``[0, n)`` (P6).

    Args:
        key: PRNG key.
        rank: ``int32[M]`` rank of each individual among the ``n`` live ones.
        n: number of live individuals (static or traced). Meaningful only for ``n >= 4``; for
            smaller ``n`` the draws are clamped (the caller must not use them).

    Returns:
        ``(r1, r2, r3)``, each ``int32[M]``.
    """
    n = jnp.asarray(n, jnp.int32)
    ka, kb, kc = jax.random.split(key, 3)
    m = rank.shape
    a = jax.random.randint(ka, m, 0, jnp.maximum(n - 1, 1), jnp.int32)
    b = jax.random.randint(kb, m, 0, jnp.maximum(n - 2, 1), jnp.int32)
    c = jax.random.randint(kc, m, 0, jnp.maximum(n - 3, 1), jnp.int32)
    rank = rank.astype(jnp.int32)
    r1 = _skip(a, [rank])
    r2 = _skip(b, [rank, r1])
    r3 = _skip(c, [rank, r1, r2])
    return r1, r2, r3


def binomial_crossover(key: Array, parent: Array, mutant: Array, crossover_rate: Array) -> Array:
    """DE binomial crossover of ``parent[M, D]`` and ``mutant[M, D]``: each gene comes from the
    mutant with probability ``crossover_rate``, and gene ``j_rand`` always does."""
    kc, kj = jax.random.split(key)
    m, d = parent.shape
    jr = jax.random.randint(kj, (m, 1), 0, d)
    cross = (jax.random.uniform(kc, (m, d)) < crossover_rate) | (
        jnp.arange(d, dtype=jr.dtype)[None, :] == jr
    )
    return jnp.where(cross, mutant, parent)


def rand1_bin(
    key: Array,
    pop: Array,
    *,
    mutation_factor: Array | float,
    crossover_rate: Array | float,
    lower: Array | float,
    upper: Array | float,
) -> Array:
    """DE/rand/1/bin trial vectors ``[P, D]`` for one population ``pop[P, D]`` (``P >= 4``).

    ``v_i = x_r1 + F (x_r2 - x_r3)`` with ``r1, r2, r3`` distinct and different from ``i``, then
    binomial crossover with the parent, then clipping to ``[lower, upper]`` (per gene ``[D]`` or
    scalars). ``crossover_rate = 1`` gives Su et al.'s no-crossover variant.
    """
    kd, kc = jax.random.split(key)
    p = pop.shape[0]
    r1, r2, r3 = rand1_donors(kd, jnp.arange(p, dtype=jnp.int32), p)
    f = jnp.asarray(mutation_factor, pop.dtype)
    mutant = pop[r1] + f * (pop[r2] - pop[r3])
    trial = binomial_crossover(kc, pop, mutant, jnp.asarray(crossover_rate, pop.dtype))
    lower = jnp.broadcast_to(jnp.asarray(lower, pop.dtype), trial.shape)
    upper = jnp.broadcast_to(jnp.asarray(upper, pop.dtype), trial.shape)
    return jnp.clip(trial, lower, upper)


def greedy_select(pop: Array, fit: Array, trial: Array, trial_fit: Array) -> tuple[Array, Array]:
    """DE survivor selection: the trial replaces its parent iff ``trial_fit <= fit``.

    Works on any leading shape (``pop[..., P, D]``, ``fit[..., P]``). NaN fitness is the worst value:
    a NaN trial never wins, and any trial replaces a NaN parent.
    """
    trial_fit = jnp.where(jnp.isnan(trial_fit), jnp.inf, trial_fit)
    fit = jnp.where(jnp.isnan(fit), jnp.inf, fit)
    better = trial_fit <= fit
    return jnp.where(better[..., None], trial, pop), jnp.where(better, trial_fit, fit)


@pytree_dataclass
class DEState:
    """Per-example state of :func:`minimize` (every field has a leading ``B`` axis).

    Attributes:
        pop: ``[B, P, D]`` current population.
        fit: ``[B, P]`` its fitness.
        best: ``[B, D]`` best individual seen (a finished one first, then the lowest fitness).
        best_fit: ``[B]`` its fitness.
        done: ``[B]`` the early-stop criterion was met (the example is frozen).
        active: ``[B]`` still evolving.
        generations: ``[B]`` generations run.
        queries: ``[B]`` images scored for this example.
    """

    pop: Array
    fit: Array
    best: Array
    best_fit: Array
    done: Array
    active: Array
    generations: Array
    queries: Array


def _pick_best(pop: Array, fit: Array, done: Array) -> tuple[Array, Array, Array]:
    """Per example the best individual of ``pop[B, P, D]``: a finished one first, then lowest fit."""
    fit = jnp.where(jnp.isnan(fit), jnp.inf, fit)
    i_done = jnp.argmin(jnp.where(done, fit, jnp.inf), axis=1)
    i = jnp.where(jnp.any(done, axis=1), i_done, jnp.argmin(fit, axis=1))
    take = jax.vmap(lambda a, j: a[j])
    return take(pop, i), take(fit, i), take(done, i)


#: A generation's new trials are scored in chunks of ``ceil(B·P / ROW_CHUNKS)`` rows (see
#: :func:`minimize`): padding is under one chunk. 32 measured fastest of 8 / 32 / 128 for a
#: one-pixel attack on the reference CNN on a 2-core CPU (mid-sized model calls use its caches best).
ROW_CHUNKS = 32


def _hash(codes: Array) -> Array:
    """FNV-1a over the 32-bit words of ``codes[..., m]``: ``uint32[...]`` (collisions are checked)."""
    h = jnp.full(codes.shape[:-1], 2166136261, jnp.uint32)
    for j in range(codes.shape[-1]):
        h = (h ^ codes[..., j].astype(jnp.uint32)) * jnp.uint32(16777619)
    return h


def _leaders(pop_codes: Array, trial_codes: Array) -> Array:
    """For one example: where each trial's score can be read, as an index into ``[pop; trials]``.

    A trial whose codes equal a population member's points at that member; else one equal to an
    earlier trial points at the first such trial; else (or on a hash collision) at itself.
    """
    p = pop_codes.shape[0]
    codes = jnp.concatenate([pop_codes, trial_codes], axis=0)  # [2P, m]
    n = codes.shape[0]
    h = _hash(codes)
    order = jnp.argsort(h, stable=True)  # population members first within equal hashes
    hs = h[order]
    start = jnp.concatenate([jnp.ones((1,), bool), hs[1:] != hs[:-1]])
    lead = order[jax.lax.cummax(jnp.where(start, jnp.arange(n), 0))]
    same = jnp.all(codes[order] == codes[lead], axis=-1)
    ref = jnp.zeros((n,), jnp.int32).at[order].set(jnp.where(same, lead, order).astype(jnp.int32))
    return ref[p:]


def _score_new(evaluate_rows, codes, pop, fit, trial, active):
    """Score only the trials whose image has not been scored: ``(fit[B, P], fin[B, P], n[B])``.

    Trials that repeat a population member's image (or an earlier trial's) reuse its score; trials
    of inactive examples are not scored. The rest are gathered in order and scored in chunks of
    ``ceil(B·P / ROW_CHUNKS)`` rows, as many chunks as they fill (a loop with a traced trip count:
    under ``vmap``, e.g. ``sweep_eps`` over budgets, it runs the largest count, never more than
    all ``B·P`` rows).
    """
    b, p, d = trial.shape
    ref = jax.vmap(_leaders)(codes(pop), codes(trial))  # [B, P] index into [pop; trials]
    own = ref == (jnp.arange(p, dtype=jnp.int32) + p)[None, :]
    need = (own & active[:, None]).reshape(-1)
    u = jnp.sum(need.astype(jnp.int32))
    total = b * p
    chunk = max(1, math.ceil(total / ROW_CHUNKS))
    n_chunks = -(-total // chunk)
    # rows to score, then padding that repeats the last of them (it lies in the last chunk)
    last = total - 1 - jnp.argmax(need[::-1])
    pos = jnp.nonzero(need, size=n_chunks * chunk, fill_value=last)[0].astype(jnp.int32)
    flat_trial = trial.reshape(total, d)

    def body(i, acc):
        f_acc, fin_acc = acc
        rows = jax.lax.dynamic_slice(pos, (i * chunk,), (chunk,))
        f, fin = evaluate_rows(rows // p, flat_trial[rows])
        dest = jnp.where(i * chunk + jnp.arange(chunk) < u, rows, total)  # padding is dropped
        return f_acc.at[dest].set(f, mode="drop"), fin_acc.at[dest].set(fin, mode="drop")

    init = (jnp.full((total,), jnp.inf, jnp.float32), jnp.zeros((total,), bool))
    f_new, fin_new = jax.lax.fori_loop(0, -(-u // chunk), body, init)
    f_new, fin_new = f_new.reshape(b, p), fin_new.reshape(b, p)
    from_pop = ref < p
    j = jnp.where(from_pop, ref, ref - p)
    take = jax.vmap(lambda a, i: a[i])
    tfit = jnp.where(from_pop, take(fit, j), take(f_new, j))
    tfin = jnp.where(from_pop, False, take(fin_new, j))
    return tfit, tfin, jnp.sum(need.reshape(b, p), axis=1, dtype=jnp.int32)


def minimize(
    keys: Array,
    evaluate: Callable[[Array], tuple[Array, Array]],
    pop0: Array,
    *,
    num_generations: int,
    mutation_factor: Array | float,
    crossover_rate: Array | float,
    lower: Array | float,
    upper: Array | float,
    codes: Callable[[Array], Array] | None = None,
    evaluate_rows: Callable[[Array, Array], tuple[Array, Array]] | None = None,
) -> DEState:
    """Batched DE/rand/1/bin minimisation with per-example early exit.

    With ``codes`` and ``evaluate_rows`` each generation scores only new images: a trial whose
    codes equal a population member's (or an earlier trial's of the same generation) reuses that
    score, finished examples are not scored at all, and the remaining trials go through the model
    compacted, in as many chunks of ``B·P /`` :data:`ROW_CHUNKS` rows as they fill. On a device whose
    time is spent in model evaluations (a CPU) that is the saving: late in a run most DE trials
    repeat an image already scored (Su et al.'s settings: about 79 %, ``benchmarks/EVOLUTION.md``).

    Args:
        keys: per-example PRNG keys ``[B]``; generation ``g`` of example ``i`` uses
            ``fold_in(keys[i], g)``, so results do not depend on the batch composition.
        evaluate: ``pop[B, P, D] -> (fitness f32[B, P], finished bool[B, P])``; it must score all
            ``B·P`` candidates in one model call (:func:`probabilities`). An example stops once any
            of its individuals is finished.
        pop0: ``[B, P, D]`` initial population (``P >= 4``).
        num_generations: maximum number of generations (static).
        mutation_factor, crossover_rate: DE ``F`` and ``CR`` (leaves; traced is fine).
        lower, upper: gene bounds, scalars or ``[D]``; trials are clipped to them.
        codes: ``pop[B, P, D] -> int32[B, P, m]``, equal exactly when two individuals make the same
            image (so their scores are equal); optional.
        evaluate_rows: ``(example int32[S], genes[S, D]) -> (fitness f32[S], finished bool[S])``,
            scoring single individuals of the given examples in one model call; with ``codes``.

    Returns:
        The final :class:`DEState`. ``queries`` counts the images scored for each example:
        ``P * (generations + 1)`` without ``codes``, at most that with them.
    """
    b, p, _ = pop0.shape
    if (codes is None) != (evaluate_rows is None):
        raise ValueError("minimize: pass both codes and evaluate_rows, or neither")
    if p < 4:
        raise ValueError(f"differential evolution needs a population of at least 4, got {p}")
    fit, fin = evaluate(pop0)
    fit = jnp.where(jnp.isnan(fit), jnp.inf, fit)
    best, best_fit, done = _pick_best(pop0, fit, fin)
    state = DEState(
        pop=pop0,
        fit=fit,
        best=best,
        best_fit=best_fit,
        done=done,
        active=~done,
        generations=jnp.zeros((b,), jnp.int32),
        queries=jnp.full((b,), p, jnp.int32),
    )

    def trials(key, pop):
        return rand1_bin(
            key,
            pop,
            mutation_factor=mutation_factor,
            crossover_rate=crossover_rate,
            lower=lower,
            upper=upper,
        )

    def de_step(g, s, active):
        gkeys = fold_keys(keys, g)
        trial = jax.vmap(trials)(gkeys, s.pop)
        if codes is None:
            tfit, tfin = evaluate(trial)
            scored = p * active.astype(jnp.int32)
        else:
            tfit, tfin, scored = _score_new(evaluate_rows, codes, s.pop, s.fit, trial, active)
        pop, fit = greedy_select(s.pop, s.fit, trial, tfit)
        cand, cand_fit, cand_done = _pick_best(
            trial, jnp.where(jnp.isnan(tfit), jnp.inf, tfit), tfin
        )
        # The driver keeps the best individual: finished beats unfinished, then the lower
        # fitness (score = -fitness; the negations are exact).
        new = _Generation(pop=pop, fit=fit, generations=s.generations + 1)
        return new, Scored(point=cand, success=cand_done, score=-cand_fit), scored

    out = iterate(
        de_step,
        _Generation(pop=state.pop, fit=state.fit, generations=state.generations),
        stop=num_generations,
        active=state.active,
        queries=state.queries,
        cost=None,
        done=lambda _, scored: scored.success,
        best=Best(point=state.best, success=state.done, score=-state.best_fit),
        exit_early=True,
    )
    return DEState(
        pop=out.state.pop,
        fit=out.state.fit,
        best=out.best.point,
        best_fit=-out.best.score,
        done=out.best.success,
        active=out.active,
        generations=out.state.generations,
        queries=out.queries,
    )


@pytree_dataclass
class _Generation:
    """What one DE generation changes (the driver owns the mask, queries and best individual)."""

    pop: Array
    fit: Array
    generations: Array


__all__ = [
    "DEFAULT_EVAL_BUDGET",
    "DEState",
    "ROW_CHUNKS",
    "auto_chunk",
    "binomial_crossover",
    "fitness",
    "greedy_select",
    "is_adversarial",
    "minimize",
    "probabilities",
    "rand1_bin",
    "rand1_donors",
]
