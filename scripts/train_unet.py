"""Train the reference segmentation target ``unet_isic`` (deterministic by seed).

    python scripts/train_unet.py --data ../shared/data/isic2017_seg.npz

trains a small :class:`jaxadv.nn.UNet` (width 16, depth 3, ~117k parameters) on the ISIC 2017
lesion masks at 64×64 (319 training images; 0 = skin, 1 = lesion) with cross-entropy plus soft
Dice, Adam with cosine decay and random flips, then writes ``unet_isic.msgpack`` + ``.json`` (test
Dice / IoU / pixel accuracy on the 92 test images, normalisation, seed, versions, device, git
commit, command) and ``UNET.md`` into ``--out``. The same seed gives the same weights on the same
CPU software stack (the SHA-256 in the metadata). A few minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import shlex
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from jaxadv import checkpoint  # noqa: E402
from jaxadv import segmentation as S  # noqa: E402
from jaxadv.data import load_segmentation  # noqa: E402
from jaxadv.nn import UNet  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
NAME = "unet_isic"
log = logging.getLogger("train_unet")


def _script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def soft_dice_loss(logits: jax.Array, y: jax.Array) -> jax.Array:
    """``1 - `` the mean soft Dice of the foreground classes over the batch (a smooth surrogate)."""
    p = jax.nn.softmax(logits, axis=-1)[..., 1:]
    g = jax.nn.one_hot(y, logits.shape[-1], dtype=p.dtype)[..., 1:]
    inter = jnp.sum(p * g, axis=(1, 2))
    den = jnp.sum(p + g, axis=(1, 2))
    return 1.0 - jnp.mean((2 * inter + 1.0) / (den + 1.0))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--data", type=pathlib.Path, default=ROOT.parent / "shared" / "data" / "isic2017_seg.npz"
    )
    p.add_argument("--out", type=pathlib.Path, default=ROOT / "jaxadv" / "assets")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    args = p.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("jax").setLevel(logging.WARNING)
    ref = _script("train_reference")
    command = "python " + " ".join(
        shlex.quote(a) for a in ["scripts/train_unet.py", *(sys.argv[1:] if argv is None else argv)]
    )
    if not args.data.is_file():
        p.error(f"no data file {args.data}; see ../shared/data/README.md (isic2017_seg.npz)")

    xtr, ytr = load_segmentation(args.data, split="train").arrays()
    xva, yva = load_segmentation(args.data, split="val").arrays()
    xte, yte = load_segmentation(args.data, split="test").arrays()
    mean = [float(v) for v in xtr.mean(axis=(0, 1, 2))]
    std = [float(v) for v in xtr.std(axis=(0, 1, 2))]
    m_arr, s_arr = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    kwargs = {"num_classes": 2, "in_channels": 3, "width": args.width, "depth": args.depth}
    net = UNet(**kwargs, rngs=nnx.Rngs(args.seed))
    steps = len(ytr) // args.batch_size
    tx = optax.adam(optax.cosine_decay_schedule(args.lr, args.epochs * steps))
    opt = nnx.Optimizer(net, tx, wrt=nnx.Param)

    @nnx.jit
    def train_step(net, opt, x, y):
        def loss_fn(net):
            logits = net((x - m_arr) / s_arr)
            ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
            return ce + soft_dice_loss(logits, y)

        loss, grads = nnx.value_and_grad(loss_fn)(net)
        opt.update(net, grads)
        return loss

    @nnx.jit
    def predict(net, x):
        return net((x - m_arr) / s_arr)

    def scores(x, y):
        net.eval()
        out = {k: [] for k in ("dice", "iou", "pixel_accuracy")}
        for i in range(0, len(x), 64):
            sc = S.scores(predict(net, x[i : i + 64]), jnp.asarray(y[i : i + 64]))
            for k in out:
                out[k].append(np.asarray(sc[k]))
        net.train()
        return {k: float(np.mean(np.concatenate(v))) for k, v in out.items()}

    rng = np.random.default_rng(args.seed)
    commit, device = ref.git_commit(), ref.device_string()
    log.info(
        "train %d, val %d, test %d; device %s; commit %s",
        len(ytr),
        len(yva),
        len(yte),
        device,
        commit,
    )
    t0 = time.perf_counter()
    net.train()
    loss = float("nan")
    for epoch in range(args.epochs):
        order = rng.permutation(len(ytr))
        for s in range(steps):
            idx = order[s * args.batch_size : (s + 1) * args.batch_size]
            x, y = xtr[idx], ytr[idx]
            flip_h, flip_v = rng.random(len(idx)) < 0.5, rng.random(len(idx)) < 0.5
            x = np.where(flip_h[:, None, None, None], x[:, :, ::-1], x)
            y = np.where(flip_h[:, None, None], y[:, :, ::-1], y)
            x = np.where(flip_v[:, None, None, None], x[:, ::-1], x)
            y = np.where(flip_v[:, None, None], y[:, ::-1], y)
            loss = float(train_step(net, opt, jnp.asarray(x), jnp.asarray(y)))
        if epoch % 5 == 4 or epoch == args.epochs - 1:
            log.info("epoch %d: loss %.4f, val %s", epoch + 1, loss, scores(xva, yva))
    train_s = time.perf_counter() - t0
    val, test = scores(xva, yva), scores(xte, yte)
    log.info("test %s (train %.0fs)", test, train_s)
    net.eval()
    meta = {
        "architecture": "unet",
        "kwargs": kwargs,
        "task": "segmentation",
        "mean": mean,
        "std": std,
        "input": "float32 [B, 64, 64, 3] RGB pixels in [0, 1] (normalise with mean/std)",
        "output": "logits [B, 64, 64, 2] (0 = skin, 1 = lesion)",
        "dataset": "isic2017_seg (64x64)",
        "classes": ["skin", "lesion"],
        "splits": {"train": len(ytr), "val": len(yva), "test": len(yte)},
        "test_dice": test["dice"],
        "test_iou": test["iou"],
        "test_pixel_accuracy": test["pixel_accuracy"],
        "val_dice": val["dice"],
        "metric": "mean over images of the lesion-class Dice / IoU (jaxadv.segmentation)",
        "seed": args.seed,
        "training": {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "optimizer": f"adam(cosine_decay({args.lr}))",
            "loss": "cross-entropy + (1 - soft Dice of the lesion class)",
            "augment": "random horizontal and vertical flips",
            "seconds": round(train_s, 1),
            "final_train_loss": loss,
        },
        "command": command,
        "device": device,
        "git_commit": commit,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    mpath = checkpoint.save(args.out / f"{NAME}.msgpack", net, meta)
    write_md(args.out, checkpoint.read_metadata(mpath))
    log.info("wrote %s", args.out / f"{NAME}.msgpack")
    return 0


def write_md(out: pathlib.Path, m: dict) -> None:
    t = m["training"]
    text = (
        "# Reference segmentation model\n\n"
        f"`{NAME}`: a `jaxadv.nn.UNet` {m['kwargs']} trained on the ISIC 2017 lesion masks at "
        '64×64 (`../shared/data/isic2017_seg.npz`, not shipped; images CC0 "UDA-1 by '
        'Anonymous", ISIC Archive; masks: Codella et al. 2017, ISIC 2017 challenge) by '
        "`scripts/train_unet.py`. Load with `jaxadv.checkpoint.reference_model('unet_isic')` "
        "(inputs RGB pixels in [0, 1], output logits `[B, 64, 64, 2]`). Not a clinical tool. "
        "The mask licence is unconfirmed (see `../shared/data/isic2017_seg.md`): credit ISIC and "
        "Codella et al. and do not use these weights commercially.\n\n"
        "| model | test Dice | test IoU | test pixel acc. | params | file | train time |\n"
        "|---|---|---|---|---|---|---|\n"
        f"| `{NAME}` | {m['test_dice']:.4f} | {m['test_iou']:.4f} | "
        f"{m['test_pixel_accuracy']:.4f} | {m['num_params']:,} | {m['bytes'] / 1e6:.2f} MB | "
        f"{t['seconds']:.0f} s |\n\n"
        f"Dice / IoU: {m['metric']}, on the {m['splits']['test']} test images.\n\n"
        f"- command: `{m['command']}`\n"
        f"- seed {m['seed']}; JAX {m['versions']['jax']}, Flax {m['versions']['flax']}; device "
        f"{m['device']}; git commit `{m['git_commit']}`\n"
        f"- training: {t['epochs']} epochs, batch {t['batch_size']}, {t['optimizer']}, loss "
        f"{t['loss']}, augment {t['augment']}\n"
        f"- normalisation mean {[round(v, 4) for v in m['mean']]}, std "
        f"{[round(v, 4) for v in m['std']]}\n"
        f"- weights SHA-256 `{m['sha256']}`\n"
    )
    (out / "UNET.md").write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
