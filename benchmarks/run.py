"""Throughput of the gradient attacks against the cost of the gradients they cannot avoid.

For each attack: compile time (first call) apart from steady-state time (median of repeats,
``block_until_ready``), images/s, and the **limit ratio** = attack time / time of the same number of
jitted forward+backward passes of the same model and batch, measured in the same process.
Writes JSON (device, JAX version, commit beside every number) and appends a Markdown table to
``benchmarks/RESULTS.md``.

    python benchmarks/run.py --quick
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp

import jaxadv
from jaxadv import report
from jaxadv.checkpoint import reference_model
from jaxadv.data import load_default

HERE = pathlib.Path(__file__).resolve().parent


def _time(fn, repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t0)
    return first, statistics.median(ts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick", action="store_true", help="small batch, few repeats (about 2 min on CPU)"
    )
    p.add_argument("--batch", type=int, nargs="*", default=None)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--out", default=str(HERE / "results.json"))
    args = p.parse_args(argv)
    batches = args.batch or ([64] if args.quick else [16, 64, 256])
    repeats = args.repeats or (3 if args.quick else 5)

    model = reference_model("small_cnn_clean")
    xs, ys = load_default().arrays()
    rows = []
    for b in batches:
        x = jnp.asarray(xs[:b])
        y = jnp.asarray(ys[:b], jnp.int32)
        grad = jax.jit(
            lambda xx, yy: jax.grad(lambda z: jnp.sum(jaxadv.losses.ce(model(z), yy)))(xx)
        )
        t = jaxadv.LinfBall(eps=8 / 255)
        attacks = {
            f"PGD-{args.steps}": (jaxadv.PGD(threat=t, num_steps=args.steps), args.steps + 1),
            f"PGD-{args.steps}-unrolled": (
                jaxadv.PGD(threat=t, num_steps=args.steps, unroll=args.steps),
                args.steps + 1,
            ),
            f"APGD-{args.steps}": (jaxadv.APGD(threat=t, num_steps=args.steps), args.steps + 1),
            "FGSM": (jaxadv.FGSM(threat=t), 1),
        }
        for name, (atk, n_grads) in attacks.items():

            def grads(n=n_grads, x=x, y=y, grad=grad):
                out = x
                for _ in range(n):
                    out = grad(x, y)
                return out

            _, t_limit = _time(grads, repeats)
            first, steady = _time(
                lambda atk=atk, x=x, y=y: atk(jax.random.key(0), model, x, y).adv, repeats
            )
            rows.append(
                {
                    "model": "small_cnn_clean 28x28",
                    "attack": name,
                    "batch": b,
                    "compile_s": round(first - steady, 3),
                    "steady_s": round(steady, 4),
                    "images_per_s": round(b / steady, 1),
                    "grad_passes": n_grads,
                    "limit_s": round(t_limit, 4),
                    "limit_ratio": round(steady / t_limit, 3),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    man = report.manifest(seed=0, benchmark="gradient attacks vs gradient limit")
    report.write_json(args.out, {"manifest": man, "rows": rows})
    cols = ("model", "attack", "batch", "compile_s", "steady_s", "images_per_s", "limit_ratio")
    md = (
        f"\n## {time.strftime('%Y-%m-%d')} · {man['backend']} {man['devices'][0]} · "
        f"jax {man['jax']} · commit {man['git_commit']}\n\n"
        "| "
        + " | ".join(cols)
        + " |\n|"
        + "---|" * len(cols)
        + "\n"
        + "".join("| " + " | ".join(str(r[c]) for c in cols) + " |\n" for r in rows)
    )
    with open(HERE / "RESULTS.md", "a") as f:
        f.write(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
