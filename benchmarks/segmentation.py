"""Dense attacks on the reference U-Net (``unet_isic``) on the ISIC 2017 test split (64×64).

    python benchmarks/segmentation.py [--num-examples 92] [--steps 10] [--eps 1 2 4 8]
    python benchmarks/segmentation.py --norm l2 --eps 0.25 0.5 1 2


For each attack (SegPGD and DAG untargeted, ASMA targeted at the all-skin mask: "erase the
lesion") and each eps (L∞: in 1/255; ``--norm l2``: the L2 radius in pixel units ``[0, 1]``): mean lesion Dice / IoU at the returned adversarial images,
success rate under the attack's default rule, ASMA's target-mask IoU, the attack's wall time and
its limit ratio (attack time / (queries per image x the time of one forward+backward pass of the
batch); every query counted as a forward+backward pass). eps is a leaf of the attack, so only the first eps of each attack compiles;
its time is reported apart. Writes ``benchmarks/segmentation.json``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxadv  # noqa: E402
from jaxadv import segmentation as S  # noqa: E402
from jaxadv.checkpoint import reference_model  # noqa: E402
from jaxadv.data import load_segmentation  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default=str(HERE.parents[1] / "shared" / "data" / "isic2017_seg.npz"))
    p.add_argument("--num-examples", type=int, default=92)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--eps", type=float, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--attacks", nargs="+", default=["SegPGD", "DAG", "ASMA"])
    p.add_argument("--norm", choices=["linf", "l2"], default="linf")
    p.add_argument("--out", default=str(HERE / "segmentation.json"))
    args = p.parse_args(argv)

    model = reference_model("unet_isic")
    x, y = load_segmentation(args.data, split="test").take(args.num_examples)
    x, y = jnp.asarray(x), jnp.asarray(y)
    fwd = jax.jit(lambda m, v: m(v))
    clean = {k: float(v.mean()) for k, v in S.scores(fwd(model, x), y).items()}

    def ce(m, v, lbl):
        from jaxadv.attacks.dense import pixel_ce

        return jnp.sum(pixel_ce(m(v), lbl))

    grad = jax.jit(jax.grad(ce, argnums=1))
    jax.block_until_ready(grad(model, x, y))
    fb = []
    for _ in range(3):
        t0 = time.perf_counter()
        jax.block_until_ready(grad(model, x, y))
        fb.append(time.perf_counter() - t0)
    t_fb = statistics.median(fb)

    erase = jnp.zeros_like(y)
    ball = jaxadv.LinfBall(eps=1.0) if args.norm == "linf" else jaxadv.L2Ball(eps=1.0)
    scale = 255.0 if args.norm == "linf" else 1.0  # --eps in 1/255 for L-inf, as is for L2
    attacks = {
        "SegPGD": (jaxadv.SegPGD(threat=ball, num_steps=args.steps), None),
        "DAG": (jaxadv.DAG(threat=ball, num_steps=args.steps), None),
        "ASMA": (jaxadv.ASMA(threat=ball, num_steps=args.steps), erase),
    }
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    out = {
        "model": "unet_isic",
        "data": "isic2017_seg.npz test split",
        "num_examples": int(x.shape[0]),
        "steps": args.steps,
        "norm": args.norm,
        "clean": clean,
        "forward_backward_s": t_fb,
        "rows": [],
        "jax": jax.__version__,
        "device": f"{jax.devices()[0].platform} ({jax.devices()[0].device_kind})",
        "commit": commit,
    }
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}), flush=True)
    for name in args.attacks:
        atk, target = attacks[name]
        for i, e in enumerate(args.eps):
            a = atk.with_eps(e / scale)
            t0 = time.perf_counter()
            res = a(0, model, x, y, target=target)
            jax.block_until_ready(res.adv)
            dt = time.perf_counter() - t0
            # every query counted as one forward+backward pass (a few are forward only), so the
            # ratio slightly flatters the attack
            q = float(np.mean(np.asarray(res.queries)))
            row = {
                "attack": name,
                "norm": args.norm,
                "eps" if args.norm == "l2" else "eps_255": e,
                "dice": float(res.info["dice"].mean()),
                "iou": float(res.info["iou"].mean()),
                "pixel_accuracy": float(res.info["pixel_accuracy"].mean()),
                "success_rate": float(np.mean(np.asarray(res.success))),
                "norm_mean": float(np.mean(np.asarray(res.norm))),
                "rule": atk.resolved_rule(target is not None).describe(),
                "seconds": dt,
                "includes_compile": i == 0,
                "mean_queries": float(np.mean(np.asarray(res.queries))),
                "limit_ratio": None if i == 0 else dt / (q * t_fb),
            }
            if target is not None:
                row["target_iou"] = float(res.info["target_iou"].mean())
            out["rows"].append(row)
            print(json.dumps(row), flush=True)
            # written after every row: a run stopped early keeps what it measured
            pathlib.Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
