"""Feature-space detectors against PGD, MI-FGSM and HFC on PneumoniaMNIST (issue 16).

For each model (a shipped reference name or a checkpoint path, as ``jaxadv attack --model``
takes) and each eps: the detectors (KD, BU, LID, Mahalanobis, DNN)
are fitted on ``--n-train`` training images (a seeded random subset) and their PGD adversarial examples (the reference
attack, same eps); HFC's per-class GMMs are fitted on the same clean training images. Then, on the
clean-correct test images, targeted PGD (target = the other class; on 2 classes this is the
untargeted attack), MI-FGSM (decay 1) and HFC (same steps, same step size) are run, and every detector is evaluated
on each attack's *successful* examples (AUC, TPR at TNR 90/95 %, denominators given).

    python benchmarks/detection.py --models small_cnn_clean --eps 2 4

Writes ``benchmarks/detection.json`` and prints a Markdown table; ``benchmarks/DETECTION.md``
records a run. Needs ``../shared/data/pneumoniamnist.npz``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # this checkout's jaxadv

import jaxadv  # noqa: E402
import jaxadv.detect as D  # noqa: E402
from jaxadv.attacks.hfc import HFC, Adaptive, hfc_prior  # noqa: E402
from jaxadv.features import with_features  # noqa: E402
from jaxadv.vocab import load_model  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "pneumoniamnist.npz"


def _images(d, split):
    x = (d[f"{split}_images"][..., None] / 255.0).astype(np.float32)
    return x, d[f"{split}_labels"][:, 0].astype(np.int32)


def _has_dropout(fm) -> bool:
    has = getattr(fm.feature_fn, "has_dropout", None)  # BU's own test
    return has is not None and bool(has(fm.params))


def run(name: str, eps255: float, n_train: int, steps: int, data, adaptive: bool) -> dict:
    fm = with_features(load_model(name))
    xtr, ytr = _images(data, "train")
    idx = np.random.default_rng(0).permutation(len(ytr))[:n_train]  # the split is sorted by class
    xtr, ytr = xtr[idx], ytr[idx]
    xte, yte = _images(data, "test")
    correct = np.asarray(jax.numpy.argmax(fm(xte), 1)) == yte
    xte, yte = xte[correct], yte[correct]
    eps = eps255 / 255.0
    threat = jaxadv.LinfBall(eps=eps)
    step = 2.0 * eps / steps  # HFC's default; PGD gets the same
    pgd = jaxadv.PGD(threat=threat, num_steps=steps, step_size=step)
    out = {"model": name, "eps_255": eps255, "n_train": n_train, "n_test_correct": int(len(yte))}

    t = time.perf_counter()
    ref = pgd(jax.random.key(0), fm, xtr, ytr, target=1 - ytr)
    ok = np.asarray(ref.success)
    adv_tr = np.asarray(ref.adv)[ok]
    out["reference_attack_success_train"] = float(ok.mean())
    timings = {"reference_pgd_s": time.perf_counter() - t}
    dets = {
        "KD": D.KernelDensity(model=fm),
        # a model without dropout (ResNet) gets BU's dropout head on its last feature layer
        "BU": D.BayesianUncertainty(
            model=fm, head_layer=None if _has_dropout(fm) else fm.layers[-1]
        ),
        "LID": D.LID(model=fm),
        "MAHA": D.Mahalanobis(model=fm),
        "DNN": D.DNNDetector(model=fm),
    }
    for k, det in dets.items():
        t = time.perf_counter()
        dets[k] = det.fit(xtr, ytr, adv_tr)
        timings[f"fit_{k}_s"] = time.perf_counter() - t
    t = time.perf_counter()
    prior = hfc_prior(jax.random.key(1), fm, xtr, ytr, num_components=2)
    timings["fit_hfc_gmm_s"] = time.perf_counter() - t

    attacks = {
        "PGD": pgd,
        "MI-FGSM": jaxadv.MIFGSM(threat=threat, num_steps=steps, step_size=step, decay=1.0),
        "HFC": HFC(threat=threat, prior=prior, lam=1.0, num_steps=steps, step_size=step),
    }
    out["attacks"] = {}
    for a, atk in attacks.items():
        t = time.perf_counter()
        res = atk(jax.random.key(2), fm, xte, yte, target=1 - yte)
        succ = np.asarray(res.success)
        timings[f"attack_{a}_s"] = time.perf_counter() - t
        row = {"success": float(succ.mean()), "n_success": int(succ.sum())}
        if succ.any():
            t = time.perf_counter()
            row["detectors"] = D.evaluate(dets, xte, np.asarray(res.adv), succ)
            timings[f"evaluate_{a}_s"] = time.perf_counter() - t
        out["attacks"][a] = row
    if adaptive:
        # the attacker knows the detector: PGD on CE - lam * score (BU left out: 20 MC passes
        # per step); evaluated against that detector only
        out["adaptive"] = {}
        for k in ("KD", "LID", "MAHA", "DNN"):
            atk = Adaptive(
                threat=threat, detector=dets[k], lam=1.0, num_steps=steps, step_size=step
            )
            t = time.perf_counter()
            res = atk(jax.random.key(2), fm, xte, yte, target=1 - yte)
            succ = np.asarray(res.success)
            timings[f"attack_adaptive_{k}_s"] = time.perf_counter() - t
            row = {"success": float(succ.mean()), "n_success": int(succ.sum())}
            if succ.any():
                row["detector"] = D.evaluate({k: dets[k]}, xte, np.asarray(res.adv), succ)[k]
            out["adaptive"][k] = row
    out["timings_s"] = timings
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["small_cnn_clean", "small_cnn_pgdat"])
    ap.add_argument("--eps", nargs="+", type=float, default=[2.0, 4.0], help="in /255")
    ap.add_argument("--n-train", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--adaptive", action="store_true", help="also the adaptive attack per detector")
    ap.add_argument("--out", default=str(HERE / "detection.json"))
    args = ap.parse_args()
    if not DATA.exists():
        raise SystemExit(f"{DATA} is absent (see ../shared/data/README.md)")
    data = np.load(DATA)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    rows = [
        run(m, e, args.n_train, args.steps, data, args.adaptive)
        for m in args.models
        for e in args.eps
    ]
    meta = {"device": str(jax.devices()[0]), "jax": jax.__version__, "commit": commit}
    pathlib.Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"device {meta['device']}, JAX {meta['jax']}, commit {commit}\n")
    names = ["KD", "BU", "LID", "MAHA", "DNN"]
    print(
        "| model | eps | attack | success | " + " | ".join(f"{n} AUC / TPR95" for n in names) + " |"
    )
    print("|---" * (4 + len(names)) + "|")
    for r in rows:
        for a, row in r["attacks"].items():
            det = row.get("detectors", {})
            cells = [
                f"{det[n]['auc']:.3f} / {det[n]['tpr_at_tnr95']:.2f}" if n in det else "-"
                for n in names
            ]
            print(
                f"| {r['model']} | {r['eps_255']:g}/255 | {a} | {row['success']:.3f} "
                f"({row['n_success']}/{r['n_test_correct']}) | " + " | ".join(cells) + " |"
            )
        for k, row in r.get("adaptive", {}).items():
            det = row.get("detector")
            cell = f"{det['auc']:.3f} / {det['tpr_at_tnr95']:.2f}" if det else "-"
            cells = [cell if n == k else "" for n in names]
            print(
                f"| {r['model']} | {r['eps_255']:g}/255 | adaptive vs {k} | {row['success']:.3f} "
                f"({row['n_success']}/{r['n_test_correct']}) | " + " | ".join(cells) + " |"
            )


if __name__ == "__main__":
    main()
