"""Physical and universal medical perturbations on the shipped PneumoniaMNIST reference models.

* Adversarial patch (target: class 0, "normal"): a circle patch fitted on ``--train`` training
  images at a fixed scale (patch area 2, 5, 10, 20 % of the image), rotations up to 22.5 degrees,
  random placement; targeted success on the test images labelled pneumonia (Finlayson's ``winp``),
  white-box and transferred to the other reference model.
* Bias field: success rate and SSIM vs the field's degree and amplitude bound (log space), beside
  L∞ PGD, on the first ``--test`` test images.

Writes ``benchmarks/medical.json`` and prints Markdown tables (copied into MEDICAL.md).

Usage: ``python benchmarks/medical.py [--train 512] [--test 200]``.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # this checkout's jaxadv, never a stale installed copy

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxadv  # noqa: E402
from jaxadv.checkpoint import reference_model  # noqa: E402
from jaxadv.data.medmnist import load_medmnist  # noqa: E402

DATA = HERE.parent.parent / "shared" / "data" / "pneumoniamnist.npz"
MODELS = ("small_cnn_clean", "small_cnn_pgdat")
AREAS = (0.02, 0.05, 0.10, 0.20)


def patch_table(models, train, test, epochs):
    xt, yt = test
    rows = []
    for m in MODELS:
        pred = np.asarray(jnp.argmax(models[m](xt), axis=1))
        print(
            f"{m}: pneumonia test images already read as normal: {np.mean(pred[np.asarray(yt) != 0] == 0):.3f}"
        )
    for src in MODELS:
        for area in AREAS:
            s = math.sqrt(4 * area / math.pi)  # circle of diameter s * 28 covers `area`
            atk = jaxadv.AdversarialPatch(
                target=0,
                shape="circle",
                scale_min=s,
                scale_max=s,
                rotation_max=22.5,
                learning_rate=0.05,
                batch_size=32,
                num_epochs=epochs,
            )
            t0 = time.perf_counter()
            fitted = atk.fit(jax.random.key(0), models[src], train)
            fit_s = time.perf_counter() - t0
            row = {"model": src, "area": area, "scale": s, "fit_s": round(fit_s, 1)}
            # baseline: a random (unfitted) patch of the same size on the same model
            noise = jax.random.uniform(jax.random.key(9), fitted.patch.shape)
            rand = jaxadv.FittedPatch(attack=atk, patch=noise)(
                jax.random.key(1), models[src], xt, yt
            )
            elig = np.asarray(rand.info["eligible"])
            row["random_patch"] = float(np.mean(np.asarray(rand.success)[elig]))
            for dst in MODELS:
                res = fitted(jax.random.key(1), models[dst], xt, yt)
                elig = np.asarray(res.info["eligible"])
                row[dst] = float(np.mean(np.asarray(res.success)[elig]))
            rows.append(row)
            print(row, flush=True)
    return rows


def bias_table(models, test, num_steps):
    x, y = test
    rows = []
    for name in MODELS:
        model = models[name]
        clean_ok = np.asarray(jnp.argmax(model(x), axis=1) == y)
        for degree in (1, 3, 6):
            for eps in (0.2, 0.4):
                atk = jaxadv.BiasField(
                    threat=jaxadv.BiasFieldThreat(degree=degree, eps=eps), num_steps=num_steps
                )
                res = atk(jax.random.key(0), model, x, y)
                ok = clean_ok
                rows.append(
                    {
                        "model": name,
                        "attack": f"bias field d={degree}",
                        "budget": f"max|B| <= {eps}",
                        "success": float(np.mean(np.asarray(res.success)[ok])),
                        "ssim": float(np.mean(np.asarray(res.info["ssim"])[ok])),
                    }
                )
                print(rows[-1], flush=True)
        for e in (2, 4):
            pgd = jaxadv.PGD(threat=jaxadv.LinfBall(eps=e / 255), num_steps=num_steps)
            res = pgd(jax.random.key(0), model, x, y)
            ss = np.asarray(jaxadv.ssim(x, res.adv, win_size=11))
            rows.append(
                {
                    "model": name,
                    "attack": "PGD L∞",
                    "budget": f"eps = {e}/255",
                    "success": float(np.mean(np.asarray(res.success)[clean_ok])),
                    "ssim": float(np.mean(ss[clean_ok])),
                }
            )
            print(rows[-1], flush=True)
    return rows


def uap_table(models, train, test):
    xt, yt = test
    rows = []
    for src in MODELS:
        for e in (2, 4, 8):
            uap = jaxadv.UniversalPerturbation(
                threat=jaxadv.LinfBall(eps=e / 255), batch_size=32, num_epochs=2
            )
            fitted = uap.fit(jax.random.key(0), models[src], train)
            row = {"model": src, "eps": f"{e}/255"}
            for dst in MODELS:
                res = fitted(jax.random.key(1), models[dst], xt, yt)
                row[dst] = float(np.mean(np.asarray(res.info["fooled"])))
            rows.append(row)
            print(row, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--train", type=int, default=512)
    ap.add_argument("--test", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--sections", default="patch,bias,uap", help="comma list: patch, bias, uap")
    args = ap.parse_args()
    if not DATA.exists():
        raise SystemExit(f"{DATA} is absent: this benchmark needs the shared PneumoniaMNIST file")
    models = {m: reference_model(m) for m in MODELS}
    train = load_medmnist(DATA, "train").take(args.train)
    test_all = load_medmnist(DATA, "test").arrays()
    test = (jnp.asarray(test_all[0]), jnp.asarray(test_all[1]))
    sub = (test[0][: args.test], test[1][: args.test])
    t0 = time.perf_counter()
    sections = set(args.sections.split(","))
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    path = HERE / "medical.json"
    out = json.loads(path.read_text()) if path.exists() else {}
    run = {
        "device": f"CPU ({jax.devices()[0].platform}), 2 cores shared with other jobs",
        "jax": jax.__version__,
        "commit": commit,
        "settings": vars(args),
    }
    patch = patch_table(models, train, test, args.epochs) if "patch" in sections else []
    bias = bias_table(models, sub, args.steps) if "bias" in sections else []
    uap = uap_table(models, train, test) if "uap" in sections else []
    for name, rows in (("patch", patch), ("bias", bias), ("uap", uap)):
        if name in sections:
            out[name] = {**run, "wall_s": round(time.perf_counter() - t0, 1), "rows": rows}
    path.write_text(json.dumps(out, indent=1) + "\n")
    print("\n| fitted on | L∞ eps | fooling rate (white-box) | fooling rate (transferred) |")
    print("|---|---|---|---|")
    for r in uap:
        other = [m for m in MODELS if m != r["model"]][0]
        print(f"| {r['model']} | {r['eps']} | {r[r['model']]:.3f} | {r[other]:.3f} ({other}) |")
    print(
        "\n| fitted on | patch area | white-box winp | random patch | transferred winp | fit (s) |"
    )
    print("|---|---|---|---|---|---|")
    for r in patch:
        other = [m for m in MODELS if m != r["model"]][0]
        print(
            f"| {r['model']} | {r['area']:.0%} | {r[r['model']]:.3f} | {r['random_patch']:.3f} | "
            f"{r[other]:.3f} "
            f"({other}) | {r['fit_s']} |"
        )
    print("\n| model | attack | budget | success (clean-correct) | mean SSIM |")
    print("|---|---|---|---|---|")
    for r in bias:
        print(
            f"| {r['model']} | {r['attack']} | {r['budget']} | {r['success']:.3f} | "
            f"{r['ssim']:.3f} |"
        )


if __name__ == "__main__":
    main()
