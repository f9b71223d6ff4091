"""Evolutionary sparse attacks: engine timing against evosax, and a small real-data reproduction.

Two parts, both on the shipped PneumoniaMNIST reference CNN (28x28 grey, 2 classes):

* ``engine``: one DE generation (DE/rand/1, F = 0.5, no crossover, greedy selection, as One Pixel
  uses it) for a batch of ``B`` independent populations ``[B, P, D]``, done by our fused kernel
  (:func:`jaxadv.attacks.population.rand1_bin` + :func:`greedy_select`) and by
  ``evosax.algorithms.DifferentialEvolution`` (``ask``/``tell`` vmapped over ``B``). Both run
  ``G`` generations inside one ``lax.scan`` in one ``jit``; timed twice: the operator alone (a cheap
  quadratic fitness) and a full One Pixel generation (render ``B·P`` images, one model call).
* ``reproduce``: DGDE (spec defaults) on correctly classified positives (pneumonia, the paper's
  positive-to-negative direction) and One Pixel for ``k = 1, 3, 5`` on correctly classified images.

Writes ``benchmarks/evolution.json`` (device, JAX version and commit beside every number) and prints
Markdown tables; ``benchmarks/EVOLUTION.md`` records a run.

    python benchmarks/evolution.py                # both parts, a few minutes on 2 CPU cores
    python benchmarks/evolution.py --part engine
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # this checkout's jaxadv

import jaxadv  # noqa: E402
from jaxadv import report  # noqa: E402
from jaxadv.attacks import population as pop_lib  # noqa: E402
from jaxadv.checkpoint import reference_model  # noqa: E402
from jaxadv.data import load_default  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent


def _median_time(fn, repeats: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t0)
    return first, statistics.median(ts)


# ------------------------------------------------------------------------------------ engine
def _ours(fitness, lower, upper, generations):
    def run(keys, pop, fit):
        def gen(carry, g):
            pop, fit = carry
            gk = jax.vmap(lambda k: jax.random.fold_in(k, g))(keys)
            trial = jax.vmap(
                lambda k, p: pop_lib.rand1_bin(
                    k,
                    p,
                    mutation_factor=0.5,
                    crossover_rate=1.0,
                    lower=lower,
                    upper=upper,
                )
            )(gk, pop)
            pop, fit = pop_lib.greedy_select(pop, fit, trial, fitness(trial))
            return (pop, fit), None

        (pop, fit), _ = jax.lax.scan(gen, (pop, fit), jnp.arange(generations))
        return pop, fit

    return jax.jit(run)


def _evosax(fitness, lower, upper, generations, population, dims):
    from evosax.algorithms import DifferentialEvolution

    es = DifferentialEvolution(population_size=population, solution=jnp.zeros((dims,)))
    params = es.default_params.replace(elitism=False, crossover_rate=1.0, differential_weight=0.5)

    def run(keys, pop, fit):
        state = jax.vmap(lambda k, p, f: es.init(k, p, f, params))(keys, pop, fit)

        def gen(state, g):
            gk = jax.vmap(lambda k: jax.random.fold_in(k, g))(keys)
            trial, state = jax.vmap(lambda k, s: es.ask(k, s, params))(gk, state)
            trial = jnp.clip(trial, lower, upper)  # evosax does not bound; One Pixel clips
            state, _ = jax.vmap(lambda k, t, f, s: es.tell(k, t, f, s, params))(
                gk, trial, fitness(trial), state
            )
            return state, None

        state, _ = jax.lax.scan(gen, state, jnp.arange(generations))
        return state.population, state.fitness

    return jax.jit(run)


def engine(args) -> list[dict]:
    model = reference_model("small_cnn_clean")
    xs, ys = load_default().take(args.batch)
    x = jnp.asarray(xs)
    y = jnp.asarray(ys, jnp.int32)
    rows = []
    for k in args.pixels:
        atk = jaxadv.OnePixel(num_pixels=k, population_size=args.population)
        keys = jaxadv.attacks.example_keys(jax.random.key(0), x.shape[0])
        pop0 = atk.init_population(keys, x)
        lower, upper = atk.bounds(x)
        dims = pop0.shape[-1]

        def cheap(pop, upper=upper):
            return jnp.sum((pop / upper - 0.3) ** 2, axis=-1)

        def full(pop, atk=atk):
            probs = pop_lib.probabilities(model, atk.render(x, pop))
            return pop_lib.fitness(probs, y)[0]

        for kind, fn in (("operator", cheap), ("one-pixel generation", full)):
            fit0 = fn(pop0)
            timings = {}
            for impl in ("jaxadv", "evosax"):
                if impl == "jaxadv":
                    run = _ours(fn, lower, upper, args.generations)
                else:
                    run = _evosax(fn, lower, upper, args.generations, args.population, dims)
                first, steady = _median_time(
                    lambda run=run, a=(keys, pop0, fit0): run(*a), args.repeats
                )
                timings[impl] = steady
                rows.append(
                    {
                        "part": "engine",
                        "what": kind,
                        "impl": impl,
                        "batch": int(x.shape[0]),
                        "population": args.population,
                        "genes": int(dims),
                        "pixels": k,
                        "generations": args.generations,
                        "compile_s": round(first - steady, 3),
                        "ms_per_generation": round(1e3 * steady / args.generations, 3),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
            rows[-1]["evosax_over_jaxadv"] = round(timings["evosax"] / timings["jaxadv"], 2)
            print(f"  ratio evosax/jaxadv = {rows[-1]['evosax_over_jaxadv']}", flush=True)
    return rows


# --------------------------------------------------------------------------------- reproduce
def _select(model, x, y, n, positives_only):
    pred = np.asarray(jnp.argmax(model(jnp.asarray(x)), axis=1))
    pool = (y == 1) if positives_only else np.ones_like(y, bool)
    idx = np.where(pool & (pred == y))[0][:n]
    skipped = int(np.sum(pool[: idx[-1] + 1] & (pred[: idx[-1] + 1] != y[: idx[-1] + 1])))
    return idx, skipped


def _stats(v: np.ndarray) -> dict:
    if v.size == 0:
        return {}
    return {
        "min": int(v.min()),
        "max": int(v.max()),
        "mean": round(float(v.mean()), 2),
        "std_ddof0": round(float(v.std(ddof=0)), 2),
        "std_ddof1": round(float(v.std(ddof=1)), 2) if v.size > 1 else None,
        "pct_of_image": round(100 * float(v.mean()) / 784, 3),
    }


def reproduce(args) -> list[dict]:
    x_all, y_all = load_default().arrays()
    rows = []
    for name in args.models:
        model = reference_model(name)
        # ---- DGDE, positives -> negative
        idx, skipped = _select(model, x_all, y_all, args.dgde_images, positives_only=True)
        x, y = jnp.asarray(x_all[idx]), jnp.asarray(y_all[idx], jnp.int32)
        atk = jaxadv.DGDE()
        t0 = time.perf_counter()
        res = atk(jax.random.key(args.seed), model, x, y)
        jax.block_until_ready(res.adv)
        wall = time.perf_counter() - t0
        ok = np.asarray(res.info["phase0_success"])
        norm = np.asarray(res.norm)[ok].astype(int)
        hist_n = np.asarray(res.info["history_pixels"])[ok]
        hist_p = np.asarray(res.info["history_prob"])[ok]
        marks = [g for g in (0, 9, 49, 99, 199, 399, 999) if g < hist_n.shape[1]]
        rows.append(
            {
                "part": "reproduce",
                "attack": "DGDE (defaults: replace noise, T0=100, G=1000, F=0.5, CR=0.7, "
                "patience=100)",
                "model": name,
                "images": int(len(idx)),
                "misclassified_positives_skipped": skipped,
                "phase0_success_rate": round(float(ok.mean()), 4),
                "final_success_rate": round(float(np.asarray(res.success).mean()), 4),
                "pixels": _stats(norm),
                "tries_used_mean": round(float(np.asarray(res.info["tries_used"])[ok].mean()), 2),
                "generations_mean": round(float(np.asarray(res.info["generations"])[ok].mean()), 1),
                "queries_mean": round(float(np.asarray(res.queries)[ok].mean()), 1),
                "queries_median": float(np.median(np.asarray(res.queries)[ok])),
                "history_median_pixels": {
                    str(g + 1): float(np.median(hist_n[:, g])) for g in marks
                },
                "history_mean_p_true": {
                    str(g + 1): round(float(hist_p[:, g].mean()), 4) for g in marks
                },
                "wall_s_incl_compile": round(wall, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        if name != args.models[0]:
            continue  # One Pixel only on the first model (it is the slow one)
        # ---- One Pixel, k = 1, 3, 5, untargeted, correctly classified images
        idx, skipped = _select(model, x_all, y_all, args.onepixel_images, positives_only=False)
        x, y = jnp.asarray(x_all[idx]), jnp.asarray(y_all[idx], jnp.int32)
        for k in args.pixels:
            atk = jaxadv.OnePixel(num_pixels=k)
            t0 = time.perf_counter()
            res = atk(jax.random.key(args.seed), model, x, y)
            jax.block_until_ready(res.adv)
            wall = time.perf_counter() - t0
            s = np.asarray(res.success)
            rows.append(
                {
                    "part": "reproduce",
                    "attack": f"OnePixel k={k} (P=400, G=100, F=0.5, no crossover, stop p_true<0.05)",
                    "model": name,
                    "images": int(len(idx)),
                    "misclassified_skipped": skipped,
                    "success_rate": round(float(s.mean()), 4),
                    "success_rate_class0": round(float(s[np.asarray(y) == 0].mean()), 4),
                    "success_rate_class1": round(float(s[np.asarray(y) == 1].mean()), 4),
                    "pixels_changed_mean_successful": round(
                        float(np.asarray(res.norm)[s].mean()), 2
                    )
                    if s.any()
                    else None,
                    "queries_mean": round(float(np.asarray(res.queries).mean()), 1),
                    "wall_s_incl_compile": round(wall, 1),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("engine", "reproduce", "all"), default="all")
    p.add_argument("--batch", type=int, default=8, help="engine: populations per batch")
    p.add_argument("--population", type=int, default=400)
    p.add_argument("--generations", type=int, default=20, help="engine: generations timed")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--pixels", type=int, nargs="*", default=[1, 3, 5])
    p.add_argument("--models", nargs="*", default=["small_cnn_clean", "small_cnn_pgdat"])
    p.add_argument("--dgde-images", type=int, default=64)
    p.add_argument("--onepixel-images", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(HERE / "evolution.json"))
    args = p.parse_args(argv)
    rows = []
    if args.part in ("engine", "all"):
        rows += engine(args)
    if args.part in ("reproduce", "all"):
        rows += reproduce(args)
    man = report.manifest(seed=args.seed, benchmark="evolutionary attacks", argv=vars(args))
    report.write_json(args.out, {"manifest": man, "rows": rows})
    print(
        f"device {man['backend']} {man['devices'][0]} x{man['device_count']} · jax {man['jax']} · "
        f"commit {man['git_commit']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
