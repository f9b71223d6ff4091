"""Transfer matrix and defence table on the shipped PneumoniaMNIST reference models.

    python benchmarks/transfer.py [--num-images 200] [--out benchmarks/transfer.json]

1. Transfer matrix: adversarial images crafted on one reference model (row: surrogate) and
   evaluated on the other (column: target), PGD vs MI-DI-TI, L∞ eps 4/255 and 8/255; the diagonal
   is the white-box attack. Entries are the target's robust accuracy (lower = stronger attack).
2. Defence table (Athalye et al., 2018, on medical data): robust accuracy of the clean reference
   model behind each pre-processing defence under naive PGD (the defended model's own gradient),
   BPDA-PGD (identity backward through the stage; examples judged on the real defended model) and
   EOT-PGD (mean logits of several draws, for the randomised defence). A randomised defence is
   judged on fresh draws the attacker never saw (the mean over ``--eot-draws`` deployment keys).
3. Surrogates from queries (``--queries``): a SmallCNN (width 16, the reference architecture)
   trained by :func:`jaxadv.surrogate_from_queries` on the clean reference model's top-1 answers
   for ``budget`` unlabelled PneumoniaMNIST train images (true labels never used); its agreement
   with the target on the evaluation images and the target's robust accuracy under PGD crafted on
   it, per budget.

Every number is measured by this script; the JSON records device, JAX version and commit.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's jaxadv, not an installed copy

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxadv  # noqa: E402
from jaxadv import defences as D  # noqa: E402
from jaxadv.checkpoint import reference_model  # noqa: E402
from jaxadv.data import load_default  # noqa: E402

MODELS = ("small_cnn_clean", "small_cnn_pgdat")


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _data(n: int, seed: int = 0):
    x, y = load_default().arrays()
    idx = np.sort(np.random.default_rng(seed).choice(len(x), size=min(n, len(x)), replace=False))
    return jnp.asarray(x[idx]), jnp.asarray(y[idx], jnp.int32)


def _acc(model, x, y) -> float:
    return float(jnp.mean(jnp.argmax(model(x), axis=1) == y))


def _robust(res) -> float:
    return float(jnp.mean(~res.success))


def transfer_matrix(x, y, steps: int) -> list[dict]:
    models = {m: reference_model(m) for m in MODELS}
    rows = []
    for eps in (4, 8):
        threat = jaxadv.LinfBall(eps=eps / 255)
        attacks = {
            "PGD": jaxadv.PGD(threat=threat, num_steps=steps, random_start=False),
            "MI-DI-TI": jaxadv.MIFGSM(
                threat=threat, num_steps=steps, diversity=0.5, diversity_ratio=1.1, translation=5
            ),
        }
        for aname, atk in attacks.items():
            for s in MODELS:
                for t in MODELS:
                    t0 = time.perf_counter()
                    res = jaxadv.transfer(atk, models[s], models[t], 0, x, y)
                    rows.append(
                        {
                            "eps": f"{eps}/255",
                            "attack": aname,
                            "surrogate": s,
                            "target": t,
                            "target_clean_acc": _acc(models[t], x, y),
                            "target_robust_acc": _robust(res),
                            "surrogate_robust_acc": float(jnp.mean(~res.info["surrogate_success"])),
                            "seconds": round(time.perf_counter() - t0, 1),
                        }
                    )
                    print(rows[-1], flush=True)
    return rows


def defence_table(x, y, steps: int, eps: float, draws: int) -> list[dict]:
    model = reference_model("small_cnn_clean")
    threat = jaxadv.LinfBall(eps=eps)
    pgd = jaxadv.PGD(threat=threat, num_steps=steps, random_start=False)
    stages = {
        "none": None,
        "JPEG q=75 (exact, PIL)": D.JPEG(quality=75),
        "bit depth 3": D.BitDepth(bits=3),
        "median 3x3": D.MedianFilter(size=3),
        "Gaussian blur sigma=1": D.GaussianBlur(sigma=1.0),
        "random resize-pad 1.2": D.RandomResizePad(ratio=1.2),
    }
    rows = []
    for name, stage in stages.items():
        t0 = time.perf_counter()
        if stage is None:
            defended = model
        elif stage.randomised:
            defended = stage.wrap(model, jax.random.key(1))
        else:
            defended = stage.wrap(model)
        if stage is not None and stage.randomised:
            # A deployed randomised defence draws fresh noise per query. RandomizedModel keys its
            # draw by the input, so judging an attack on the very instance it attacked would let
            # it keep a lucky draw; judge on instances with keys the attacker never saw (mean).
            judges = [stage.wrap(model, jax.random.key(100 + i)) for i in range(draws)]
        else:
            judges = [defended]

        def judged(attack, crafted_on, judges=judges):
            res = jaxadv.transfer(attack, crafted_on, judges[0], 0, x, y)  # adv: in the ball
            accs = [_robust(res)] + [_acc(j, res.adv, y) for j in judges[1:]]
            return float(np.mean(accs))

        row = {"defence": name, "clean_acc": float(np.mean([_acc(j, x, y) for j in judges]))}
        row["naive_pgd"] = judged(pgd, defended)
        if stage is not None and not stage.randomised:
            row["bpda_pgd"] = judged(pgd, D.BPDA(stage=stage).wrap(model))
        if isinstance(stage, D.JPEG):
            approx = D.JPEG(quality=stage.quality, differentiable=True)
            row["bpda_approx_pgd"] = judged(pgd, D.BPDA(stage=stage, approx=approx).wrap(model))
        if stage is not None and stage.randomised:
            row["eot_pgd"] = judged(pgd, jaxadv.EOTLogits(model=defended, num_draws=draws))
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(row, flush=True)
    return rows


def query_surrogates(x, y, budgets, steps: int, eps: float, epochs: int) -> list[dict]:
    from flax import nnx

    from jaxadv.nn import SmallCNN

    path = ROOT.parent / "shared" / "data" / "pneumoniamnist.npz"
    if not path.is_file():
        raise SystemExit(f"--queries needs the unlabelled pool {path} (../shared/data/README.md)")
    with np.load(path) as z:
        pool = (z["train_images"][..., None] / 255.0).astype(np.float32)  # labels never read
    mu, sd = float(pool.mean()), float(pool.std())  # the attacker's own normalisation
    target = reference_model("small_cnn_clean")
    pgd = jaxadv.PGD(threat=jaxadv.LinfBall(eps=eps), num_steps=steps, random_start=False)
    rows = []
    for b in budgets:
        t = time.perf_counter()
        sur = jaxadv.surrogate_from_queries(
            0, target, SmallCNN(2, 1, width=16, rngs=nnx.Rngs(0)), pool, budget=b,
            epochs=epochs, batch_size=64, eval_x=np.asarray(x), mean=mu, std=sd,
        )  # fmt: skip
        fit_s = time.perf_counter() - t
        res = jaxadv.transfer(pgd, sur.model, target, jax.random.key(0), x, y)
        rows.append(
            {
                "budget": b,
                "queries": sur.queries,
                "eval_queries": sur.eval_queries,
                "label_counts": list(sur.label_counts),
                "agreement": sur.agreement,
                "surrogate_clean_acc": _acc(sur.model, x, y),
                "target_robust_acc": _robust(res),
                "fit_seconds": round(fit_s, 1),
            }
        )
        print(rows[-1], flush=True)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-images", type=int, default=200)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--defence-eps", type=float, default=2.0, help="in 1/255 units")
    p.add_argument("--eot-draws", type=int, default=8)
    p.add_argument("--skip-matrix", action="store_true")
    p.add_argument("--skip-defences", action="store_true")
    p.add_argument("--queries", type=int, nargs="*", default=None, help="surrogate budgets")
    p.add_argument("--query-epochs", type=int, default=10)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "transfer.json"))
    a = p.parse_args(argv)
    x, y = _data(a.num_images)
    out = {
        "device": f"{jax.devices()[0].platform} ({platform.processor() or platform.machine()})",
        "jax": jax.__version__,
        "commit": _commit(),
        "num_images": int(x.shape[0]),
        "steps": a.steps,
    }
    if not a.skip_matrix:
        out["transfer_matrix"] = transfer_matrix(x, y, a.steps)
    if not a.skip_defences:
        out["defence_eps"] = f"{a.defence_eps:g}/255"
        out["eot_draws"] = a.eot_draws
        out["defences"] = defence_table(x, y, a.steps, a.defence_eps / 255, a.eot_draws)
    if a.queries:
        out["query_eps"] = "8/255"
        out["query_surrogates"] = query_surrogates(
            x, y, a.queries, a.steps, 8 / 255, a.query_epochs
        )
    pathlib.Path(a.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
