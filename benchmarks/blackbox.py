"""Score-based black-box attacks on the shipped PneumoniaMNIST reference CNN: success versus query
budget for NES and Square (L∞), with white-box PGD-20 on the same images as the yardstick.

One run per attack and eps with the largest budget; every example stops at its first success, so
the success rate within ``Q`` queries is the fraction of examples whose reported query count
(``res.queries``: the clean check, the attack's queries and the library's final re-evaluation) is
at most ``Q``. Square's p-schedule depends on the total budget, so the points of its curve below
the maximum are those of the long run, not of a shorter run; ``--budgets`` also runs Square with
smaller budgets of its own, reported separately.

Writes ``benchmarks/blackbox.json``, ``benchmarks/blackbox_linf.png`` and
``benchmarks/BLACKBOX.md`` (device, JAX version and commit beside the numbers).

    python benchmarks/blackbox.py            # 64 images, a few minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # this checkout's jaxadv

import jaxadv  # noqa: E402
from jaxadv import report  # noqa: E402
from jaxadv.checkpoint import reference_model  # noqa: E402
from jaxadv.data import load_default  # noqa: E402
from jaxadv.demo import stratified_subset  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent


def _curve(res, grid):
    q = np.asarray(res.queries)
    s = np.asarray(res.success)
    return [float(np.mean(s & (q <= g))) for g in grid]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=64, help="images (class-stratified subset, seed 0)")
    p.add_argument("--model", default="small_cnn_clean")
    p.add_argument("--eps", type=float, nargs="*", default=[4.0, 8.0], help="in 1/255 units")
    p.add_argument("--square-queries", type=int, default=5000)
    p.add_argument("--nes-queries", type=int, default=10000)
    p.add_argument("--budgets", type=int, nargs="*", default=[100, 1000])
    p.add_argument("--out", default=str(HERE))
    args = p.parse_args(argv)
    out = pathlib.Path(args.out)

    xs, ys = load_default().arrays()
    pick = stratified_subset(ys, args.n, 0)
    x = jnp.asarray(xs[pick])
    y = jnp.asarray(ys[pick], jnp.int32)
    model = reference_model(args.model)
    correct = np.asarray(jnp.argmax(model(x), axis=1) == y)
    clean_acc = float(correct.mean())
    key = jax.random.key(0)
    top = max(args.square_queries, args.nes_queries) + 1
    grid = np.unique(np.round(np.logspace(0, np.log10(top), 40))).astype(int).tolist()
    grid = sorted(set(grid) | {10, 100, 1000, 5000, 10000})

    rows, curves, per_example = [], [], {}
    for e255 in args.eps:
        t = jaxadv.LinfBall(eps=e255 / 255)
        runs = {
            "PGD-20 (white-box)": (jaxadv.PGD(threat=t, num_steps=20), None),
            f"Square-{args.square_queries}": (
                jaxadv.Square(threat=t, num_queries=args.square_queries),
                args.square_queries,
            ),
            f"NES-{args.nes_queries}": (
                jaxadv.NES(threat=t, num_queries=args.nes_queries, population_size=50),
                args.nes_queries,
            ),
        }
        for b in args.budgets:
            if b < args.square_queries:
                runs[f"Square-{b}"] = (jaxadv.Square(threat=t, num_queries=b), b)
        for name, (atk, budget) in runs.items():
            t0 = time.perf_counter()
            res = atk(key, model, x, y)
            jax.block_until_ready(res.adv)
            dt = time.perf_counter() - t0
            succ = np.asarray(res.success)
            q = np.asarray(res.queries)
            row = {
                "attack": name,
                "eps_255": e255,
                "budget": budget,
                "robust_accuracy": round(1 - float(succ.mean()), 4),
                "success_rate": round(float(succ.mean()), 4),
                # over the examples the attack broke (clean errors left out)
                "median_queries_broken": (
                    float(np.median(q[succ & correct])) if (succ & correct).any() else None
                ),
                "mean_queries": round(float(q.mean()), 1),
                "linf_max": round(float(np.asarray(res.norm).max()) * 255, 3),
                "seconds": round(dt, 1),
            }
            rows.append(row)
            per_example[f"{name} eps {e255:g}"] = {"success": succ.tolist(), "queries": q.tolist()}
            print(row, flush=True)
            if name in (f"Square-{args.square_queries}", f"NES-{args.nes_queries}"):
                curves.append((name, e255, _curve(res, grid)))

    man = report.manifest(
        seed=0,
        benchmark="black-box success vs queries",
        model=args.model,
        num_examples=int(x.shape[0]),
        example_indices=pick.tolist(),
        clean_accuracy=clean_acc,
    )
    report.write_json(
        out / "blackbox.json",
        {"manifest": man, "rows": rows, "grid": grid, "per_example": per_example},
    )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colours = {"Square": "tab:blue", "NES": "tab:orange"}
    for name, e255, c in curves:
        kind = name.split("-")[0]
        ls = "-" if e255 == max(args.eps) else "--"
        ax.plot(grid, c, ls=ls, c=colours.get(kind), label=f"{name}  eps {e255:g}/255")
    for r in rows:
        if r["attack"].startswith("PGD"):
            ax.axhline(r["success_rate"], ls=":", c="grey", lw=1)
            ax.text(1.2, r["success_rate"] + 0.01, f"PGD-20 {r['eps_255']:g}/255", fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("queries per image")
    ax.set_ylabel("success rate (clean errors count)")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{args.model}, PneumoniaMNIST 28×28, {x.shape[0]} images, L∞")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "blackbox_linf.png", dpi=120)

    cols = list(rows[0])
    table = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    table += "".join("| " + " | ".join(str(r[c]) for c in cols) + " |\n" for r in rows)
    at = {g: i for i, g in enumerate(grid)}
    picks = [g for g in (10, 100, 1000, 5000, 10000) if g in at]
    ctab = "| attack | eps/255 | " + " | ".join(f"≤{g}" for g in picks) + " |\n"
    ctab += "|---|---|" + "---|" * len(picks) + "\n"
    for name, e255, c in curves:
        ctab += f"| {name} | {e255:g} | " + " | ".join(f"{c[at[g]]:.3f}" for g in picks) + " |\n"
    md = (
        "# Black-box attacks: success versus queries\n\n"
        "Generated by `python benchmarks/blackbox.py`; edit only the Notes section (kept when the"
        " script rewrites this file).\n\n"
        f"- model `{args.model}` (clean accuracy on these images {clean_acc:.3f}), PneumoniaMNIST"
        f" test split 28×28, {x.shape[0]} images (class-stratified subset, seed 0)\n"
        f"- device: {man['backend']} ({man['devices'][0]}, {man['device_count']} JAX device),"
        " 2 CPU cores shared with other jobs (timings are noisy), jax"
        f" {man['jax']}, commit {man['git_commit']}, {time.strftime('%Y-%m-%d')}\n"
        "- success counts clean errors; queries include the clean check and the library's final"
        " re-evaluation\n\n"
        "## Runs\n\n"
        + table
        + "\n## Success rate within Q queries (from the longest run)\n\n"
        + ctab
        + "\n![success vs queries](blackbox_linf.png)\n"
    )
    # Hand-written notes (from a "## Notes" heading on) survive regeneration.
    prev = out / "BLACKBOX.md"
    if prev.exists() and "\n## Notes" in prev.read_text():
        md += "\n" + prev.read_text()[prev.read_text().index("\n## Notes") + 1 :]
    prev.write_text(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
