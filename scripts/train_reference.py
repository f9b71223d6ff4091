"""Train the reference models shipped in ``jaxadv/assets`` (deterministic by seed).

    python scripts/train_reference.py --data ../shared/data/pneumoniamnist.npz

trains on PneumoniaMNIST (28×28 grey, 2 classes):

* ``small_cnn_clean``: SmallCNN(width=16), standard training;
* ``small_cnn_pgdat``: the same architecture, PGD adversarial training (Madry et al., 2018) at
  L∞ ``eps`` (default 4/255, PGD-5 inner maximiser),

and writes ``<name>.msgpack`` + ``<name>.json`` (test accuracy, PGD-20 robust accuracy at the training
eps, normalisation, seed, versions, device, git commit, command) and ``MODELS.md`` into ``--out``.
The same seed gives bit-identical weights on CPU (the SHA-256 in the metadata is reproducible).
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import platform
import shlex
import subprocess
import sys
import time

import jax
import numpy as np
import optax
from flax import nnx

import jaxadv
from jaxadv import checkpoint
from jaxadv.nn import SmallCNN
from jaxadv.train import AdversarialTraining, evaluate, random_shift, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
log = logging.getLogger("train_reference")


def load_split(path: pathlib.Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as d:
        x = d[f"{name}_images"][..., None].astype(np.float32) / 255
        y = d[f"{name}_labels"].reshape(-1).astype(np.int32)
    return x, y


def git_commit() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def device_string() -> str:
    d = jax.devices()[0]
    cpu = platform.processor() or platform.machine()
    return f"{d.platform}:{d.device_kind} ({cpu}, {os.cpu_count()} cores)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--data", type=pathlib.Path, default=ROOT.parent / "shared" / "data" / "pneumoniamnist.npz"
    )
    p.add_argument("--out", type=pathlib.Path, default=ROOT / "jaxadv" / "assets")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-2)
    p.add_argument("--shift", type=int, default=2, help="random-shift augmentation, pixels")
    p.add_argument("--epochs-clean", type=int, default=15)
    p.add_argument("--epochs-at", type=int, default=8)
    p.add_argument("--eps", type=float, default=4.0, help="L∞ training radius, in 1/255 units")
    p.add_argument("--at-steps", type=int, default=5, help="PGD steps of the inner maximiser")
    p.add_argument("--eval-steps", type=int, default=20, help="PGD steps of the robust evaluation")
    p.add_argument("--only", choices=("clean", "pgdat"), default=None)
    args = p.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("jax").setLevel(logging.WARNING)
    command = "python " + " ".join(
        shlex.quote(a)
        for a in ["scripts/train_reference.py", *(sys.argv[1:] if argv is None else argv)]
    )

    xtr, ytr = load_split(args.data, "train")
    xva, yva = load_split(args.data, "val")
    xte, yte = load_split(args.data, "test")
    # Normalisation from the training split; stored in the metadata and baked into the adapter.
    mean, std = [float(xtr.mean())], [float(xtr.std())]
    eps = args.eps / 255
    kwargs = {"num_classes": 2, "in_channels": 1, "width": args.width}
    pgd_eval = jaxadv.PGD(
        threat=jaxadv.LinfBall(eps=eps), num_steps=args.eval_steps, step_size=eps / 4
    )
    commit, device = git_commit(), device_string()
    log.info(
        "data %s: train %d, val %d, test %d; mean %.4f std %.4f; device %s; commit %s",
        args.data,
        len(ytr),
        len(yva),
        len(yte),
        mean[0],
        std[0],
        device,
        commit,
    )

    runs = {
        "small_cnn_clean": None,
        "small_cnn_pgdat": AdversarialTraining(
            attack=jaxadv.PGD(
                threat=jaxadv.LinfBall(eps=eps), num_steps=args.at_steps, step_size=eps / 2
            )
        ),
    }
    if args.only is not None:
        runs = {k: v for k, v in runs.items() if k.endswith(args.only)}

    args.out.mkdir(parents=True, exist_ok=True)
    for name, adversarial in runs.items():
        epochs = args.epochs_clean if adversarial is None else args.epochs_at
        steps = len(ytr) // args.batch_size
        tx = optax.adamw(
            optax.cosine_decay_schedule(args.lr, epochs * steps), weight_decay=args.weight_decay
        )
        net = SmallCNN(**kwargs, rngs=nnx.Rngs(args.seed))
        t0 = time.perf_counter()
        hist = train(
            net,
            xtr,
            ytr,
            epochs=epochs,
            batch_size=args.batch_size,
            optimizer=tx,
            key=args.seed,
            adversarial=adversarial,
            val=(xva, yva),
            mean=mean,
            std=std,
            augment=random_shift(args.shift) if args.shift else None,
            # the shipped weights are the last epoch's (their SHA-256 is recorded); keep that so
            # this script still reproduces them now that train() can restore the best val epoch
            restore_best=False,
        )
        train_s = time.perf_counter() - t0
        net.eval()
        test_acc = evaluate(net, xte, yte, mean=mean, std=std)
        t1 = time.perf_counter()
        robust = evaluate(net, xte, yte, mean=mean, std=std, attack=pgd_eval, key=args.seed)
        eval_s = time.perf_counter() - t1
        log.info(
            "%s: test accuracy %.4f, PGD-%d robust accuracy at eps %g/255 %.4f "
            "(train %.0fs, attack eval %.0fs)",
            name,
            test_acc,
            args.eval_steps,
            args.eps,
            robust,
            train_s,
            eval_s,
        )
        training = {
            "epochs": epochs,
            "batch_size": args.batch_size,
            "optimizer": f"adamw(cosine_decay({args.lr}), weight_decay={args.weight_decay})",
            "augment": f"random_shift({args.shift})" if args.shift else None,
            "objective": "clean" if adversarial is None else "pgd-at (madry)",
            "seconds": round(train_s, 1),
            "final_train_loss": hist[-1]["loss"],
        }
        if adversarial is not None:
            training["attack"] = (
                f"PGD Linf eps={args.eps:g}/255, {args.at_steps} steps, step {args.eps / 2:g}/255, "
                "random start, eval-mode BN while crafting"
            )
        meta = {
            "architecture": "small_cnn",
            "kwargs": kwargs,
            "mean": mean,
            "std": std,
            "input": "float32 [B, 28, 28, 1] pixels in [0, 1] (normalise with mean/std)",
            "dataset": "pneumoniamnist",
            "classes": ["normal", "pneumonia"],
            "splits": {"train": len(ytr), "val": len(yva), "test": len(yte)},
            "test_accuracy": test_acc,
            "val_accuracy": hist[-1]["val_accuracy"],
            "robust_accuracy": {
                "value": robust,
                "attack": f"PGD-{args.eval_steps} Linf eps={args.eps:g}/255, step eps/4, "
                "random start, CE loss, key=seed",
                "eps": eps,
            },
            "seed": args.seed,
            "training": training,
            "command": command,
            "device": device,
            "git_commit": commit,
        }
        checkpoint.save(args.out / f"{name}.msgpack", net, meta)
        log.info("wrote %s", args.out / f"{name}.msgpack")

    write_models_md(args.out)
    return 0


def write_models_md(out: pathlib.Path) -> None:
    rows, details, eps_values = [], [], set()
    for name in checkpoint.REFERENCE_MODELS:
        mpath = out / f"{name}.json"
        if not mpath.exists():
            continue
        m = checkpoint.read_metadata(mpath)
        r = m["robust_accuracy"]
        eps_values.add(f"{255 * r['eps']:g}/255")
        rows.append(
            f"| `{name}` | {m['training']['objective']} | {100 * m['test_accuracy']:.2f} | "
            f"{100 * r['value']:.2f} | {m['num_params']:,} | {m['bytes'] / 1e6:.2f} MB | "
            f"{m['training']['seconds']:.0f} s |"
        )
        details.append(
            f"### `{name}`\n\n"
            f"- command: `{m['command']}`\n"
            f"- seed {m['seed']}; JAX {m['versions']['jax']}, Flax {m['versions']['flax']}, "
            f"jaxadv {m['versions']['jaxadv']}; device {m['device']}; git commit "
            f"`{m['git_commit']}`\n"
            f"- architecture `{m['architecture']}` {m['kwargs']}; normalisation mean "
            f"{m['mean'][0]:.4f}, std {m['std'][0]:.4f}\n"
            f"- training: {m['training']['epochs']} epochs, batch {m['training']['batch_size']}, "
            f"{m['training']['optimizer']}, augment {m['training']['augment']}"
            + (f"; {m['training']['attack']}" if "attack" in m["training"] else "")
            + "\n"
            f"- robust accuracy attack: {r['attack']}\n"
            f"- weights SHA-256 `{m['sha256']}`\n"
        )
    eps_note = ", ".join(sorted(eps_values)) or "-"
    text = (
        "# Reference models\n\n"
        "SmallCNNs trained on PneumoniaMNIST (MedMNIST v2; 28×28 grey chest X-rays, "
        "normal vs pneumonia) by `scripts/train_reference.py`, deterministic by seed (same seed, "
        "same weights and SHA-256 on CPU). Load with "
        "`jaxadv.checkpoint.load_reference(name)` → `(module, meta)` or "
        "`jaxadv.checkpoint.reference_model(name)` → a ready `jaxadv.Model` (eval mode, "
        "normalisation baked in; inputs are pixels in [0, 1]).\n\n"
        "Accuracies are on the official test split (624 images, 62.5% pneumonia; the train "
        "split is 74% pneumonia, so test accuracy is well below validation accuracy for models of "
        "this size). Robust accuracy: PGD-20 at the PGD-AT training eps (L∞ "
        f"{eps_note}), a quick record, not a robustness claim: evaluate with AutoAttack for "
        "that. The segmentation target `unet_isic` is documented in UNET.md; ten more "
        "classification targets (SmallCNN, ResNet-18, VGG- and DenseNet-style; PGD-AT, TRADES, "
        "MART) are in `jaxadv.zoo` (`assets/zoo`, benchmarks/ZOO.md).\n\n"
        "| model | training | test acc (%) | PGD-20 robust acc (%) | params | file | train time |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n" + "\n".join(details)
    )
    (out / "MODELS.md").write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
