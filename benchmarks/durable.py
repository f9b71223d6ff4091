"""Boundary points of FMN (or FAB, ``--attack fab``) on the shipped reference models, with and without the overshoot
(issue 19): how many successes sit within ``|margin| < 1e-4`` of the decision boundary, how many
an eager re-evaluation (and a float64 one) rejects, and how many survive 8-bit quantisation.

Targets: ``small_cnn_clean`` and ``small_cnn_pgdat`` on the embedded PneumoniaMNIST test images
(``--n`` of them, first in data-set order). FMN runs unbounded (L2 and L∞, ``eps=inf``) with
``--steps`` iterations; the same key for every row.

    python benchmarks/durable.py --n 624 --steps 100      # a few minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import subprocess
import sys

import jax
import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # this checkout's jaxadv, not an installed one

import jaxadv  # noqa: E402
from jaxadv import durable  # noqa: E402
from jaxadv.vocab import load_dataset, load_model  # noqa: E402

NEAR = 1e-4


def run(
    model_name: str,
    norm: str,
    n: int,
    steps: int,
    overshoot: float,
    grid: int | None,
    attack: str = "fmn",
):
    ds = load_dataset("default", "test", None, None)
    x, y = ds.take(n)
    model = load_model(model_name)
    cls = jaxadv.L2Ball if norm == "l2" else jaxadv.LinfBall
    threat = cls(eps=math.inf, grid=grid)
    attack_cls = jaxadv.FAB if attack == "fab" else jaxadv.FMN
    res = attack_cls(threat=threat, num_steps=steps, overshoot=overshoot)(0, model, x, y)
    succ = np.asarray(res.success)
    m = np.asarray(res.loss)
    eager = durable.recheck(model, res.adv, y, succ, mode="eager")
    f64 = durable.recheck(model, res.adv, y, succ, mode="float64")
    return {
        "attack": attack,
        "model": model_name,
        "norm": norm,
        "overshoot": overshoot,
        "grid": grid,
        "n": n,
        "successes": int(succ.sum()),
        "near_boundary": int((succ & (np.abs(m) < NEAR)).sum()),
        "min_margin": float(m[succ].min()) if succ.any() else None,
        "median_norm": float(np.median(np.asarray(res.norm)[succ])) if succ.any() else None,
        "eager_flips": eager["num_flipped"],
        "float64_flips": f64["num_flipped"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=624)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--overshoot", type=float, default=1e-3)
    ap.add_argument("--out", default=str(HERE / "durable.json"))
    ap.add_argument("--attack", choices=("fmn", "fab"), default="fmn")
    ap.add_argument("--no-grid", action="store_true", help="skip the 8-bit rows")
    ap.add_argument("--grid-only", action="store_true", help="only the 8-bit rows")
    a = ap.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    rows = []
    for model_name in ("small_cnn_clean", "small_cnn_pgdat"):
        for norm in ("l2", "linf"):
            todo = ((0.0, None), (a.overshoot, None), (a.overshoot, 8))
            todo = todo[2:] if a.grid_only else todo[:2] if a.no_grid else todo
            for over, grid in todo:
                r = run(model_name, norm, a.n, a.steps, over, grid, a.attack)
                rows.append(r)
                print(json.dumps(r), flush=True)
    meta = {
        "device": f"{jax.devices()[0].platform} ({jax.device_count()} devices), shared 2-core",
        "jax": jax.__version__,
        "commit": commit,
        "steps": a.steps,
        "attack": a.attack,
    }
    pathlib.Path(a.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
