"""Build the dermoscopy reference classifier (melanoma vs benign, ISIC 2017, 64 px) in CPU minutes.

    python scripts/train_derm_reference.py --data ../shared/data/isic2017_seg.npz --out derm/

runs ``jaxadv train`` with fixed settings (one code path: the same splits, selection, metrics and
metadata as any user gets): SmallCNN, Adam with 1 warm-up epoch and cosine decay, weight decay
1e-4, class-balanced cross-entropy (75 % of the images are benign), flips in both axes (dermoscopy
has no canonical orientation), rotations up to 20 degrees and 4 px shifts; the epoch is chosen
on the val split's AUC (45 images), and test (92 images) is evaluated once at the end. It then
writes ``derm_smallcnn_64.msgpack`` / ``.json`` (weights are 8.5 MB, so they are built, not shipped)
and prints the val / test AUC and balanced accuracy. Deterministic by ``--seed``: the same seed
gives the same SHA-256 on the same CPU and JAX version.

The data file is not part of the package (see ``../shared/data/README.md`` for its licence).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's jaxadv, not an installed copy

SETTINGS = [
    "--arch", "small_cnn",
    "--epochs", "20",
    "--batch-size", "32",
    "--lr", "1e-3",
    "--schedule", "cosine",
    "--warmup-epochs", "1",
    "--weight-decay", "1e-4",
    "--class-weights", "balanced",
    "--hflip", "--vflip", "--rotate", "20", "--crop", "4",
    "--monitor", "auc",
]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from jaxadv.cli import main as cli

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--data", type=pathlib.Path, default=ROOT.parent / "shared/data/isic2017_seg.npz"
    )
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("derm_reference"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--adversarial", action="store_true", help="PGD-7 training at 2/255")
    args = p.parse_args(argv)
    if not args.data.is_file():
        p.error(f"{args.data} not found: see ../shared/data/README.md (isic2017_seg.npz)")
    name = "derm_smallcnn_64" + ("_pgdat" if args.adversarial else "")
    ckpt = args.out / f"{name}.msgpack"
    extra = ["--adversarial"] if args.adversarial else []
    rc = cli(
        ["train", "--data", str(args.data), "--seed", str(args.seed), *SETTINGS, *extra]
        + ["--out", str(ckpt)]
    )
    if rc:
        return rc
    meta = json.loads(ckpt.with_suffix(".json").read_text())
    for split in ("val", "test"):
        m = meta[split]
        print(
            f"{name} {split}: AUC {m['auc']:.4f}, balanced accuracy {m['balanced_accuracy']:.4f}, "
            f"accuracy {m['accuracy']:.4f} (majority baseline {m['majority_baseline']:.4f}), "
            f"recall benign / melanoma {m['recall_per_class'][0]:.4f} / "
            f"{m['recall_per_class'][1]:.4f}"
        )
    print(f"best epoch {meta['best_epoch']} of {meta['epochs_run']}; sha256 {meta['sha256']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
