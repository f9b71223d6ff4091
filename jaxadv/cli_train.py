"""``jaxadv train``: train on train, select on val, evaluate test once, save a checkpoint.

Splits follow :func:`jaxadv.splits.training_splits` (val split, else a seeded stratified hold-out;
the test split is read only after training). Per-epoch metrics, best-epoch selection and early
stopping use val; the test metrics (accuracy with the majority baseline, balanced accuracy,
per-class recall, AUC; robust versions under PGD for an adversarially trained model) and every
training option are recorded in the checkpoint metadata.

Objectives (:mod:`jaxadv.train_objectives`): clean training; ``--adversarial`` with ``--objective
madry`` (PGD-AT, the default), ``trades`` or ``mart`` (``--beta``, the KL weight, default 6), all
crafted by PGD at ``--adv-eps`` / ``--adv-steps``; defensive distillation: ``--temperature T``
trains a teacher at ``T``, ``--distill-from TEACHER --temperature T`` a student on its soft labels
(the saved student is deployed at ``T = 1``). The metadata records ``objective``, ``beta``,
``temperature`` and ``distill_from``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from typing import Any

from jaxadv.cli import CLIError, output_file, positive_int

log = logging.getLogger("jaxadv")

_MONITORS = ("balanced_accuracy", "auc", "macro_auc", "accuracy", "loss")


def _fraction(v: float, flag: str) -> float:
    if not 0.0 < v < 0.5:
        raise CLIError(f"{flag} must lie in (0, 0.5), got {v}")
    return v


def _augment(args: argparse.Namespace):
    from jaxadv.train_options import Augment

    try:
        return Augment(
            hflip=args.hflip,
            vflip=args.vflip,
            rotate=args.rotate,
            crop=args.crop,
            brightness=args.brightness,
            contrast=args.contrast,
        )
    except ValueError as e:
        raise CLIError(str(e)) from e


def _check(args: argparse.Namespace):
    from jaxadv import checkpoint

    positive_int(args.batch_size, "--batch-size")
    positive_int(args.num_examples, "--num-examples")
    positive_int(args.epochs, "--epochs")
    positive_int(args.patience, "--patience")
    positive_int(args.warmup_epochs, "--warmup-epochs", zero_ok=True)
    _fraction(args.val_fraction, "--val-fraction")
    _fraction(args.test_fraction, "--test-fraction")
    if args.lr <= 0 or args.weight_decay < 0:
        raise CLIError(f"need --lr > 0 and --weight-decay >= 0, got {args.lr}, {args.weight_decay}")
    if args.monitor not in _MONITORS:
        raise CLIError(f"--monitor must be one of {', '.join(_MONITORS)}, got {args.monitor!r}")
    if args.schedule not in ("constant", "cosine"):
        raise CLIError(f"--schedule must be constant or cosine, got {args.schedule!r}")
    if args.class_weights not in (None, "none", "balanced"):
        raise CLIError(f"--class-weights must be none or balanced, got {args.class_weights!r}")
    arch = str(args.arch).strip().lower()
    if arch not in checkpoint.ARCHITECTURES:
        raise CLIError(
            f"unknown --arch {args.arch!r}; choose from {sorted(checkpoint.ARCHITECTURES)}"
        )
    _check_objective(args)
    if str(args.data).strip().lower() == "default":
        raise CLIError(
            "the embedded default holds only the 624 test images; train on a MedMNIST file, "
            "e.g. --data pneumoniamnist.npz"
        )
    return arch, output_file(args.out), _augment(args)


_OBJECTIVES = ("madry", "trades", "mart")


def _positive_finite(v: float, flag: str) -> float:
    if not (math.isfinite(v) and v > 0):
        raise CLIError(f"{flag} must be a finite number > 0, got {v}")
    return v


def _check_objective(args: argparse.Namespace) -> None:
    """The training objective's flags, before any data is read: ``args.objective`` becomes the
    library's name (None without ``--adversarial``)."""
    from jaxadv import vocab

    if args.objective is not None:
        obj = str(args.objective).strip().lower()
        if obj not in _OBJECTIVES:
            raise CLIError(
                f"--objective must be one of {', '.join(_OBJECTIVES)}, got {args.objective!r}"
            )
        if not args.adversarial:
            raise CLIError(f"--objective {obj} is an adversarial objective: add --adversarial")
        args.objective = obj
    elif args.adversarial:
        args.objective = "madry"
    if args.beta is not None:
        if args.objective not in ("trades", "mart"):
            raise CLIError("--beta weighs the KL term of --objective trades or mart: add one")
        _positive_finite(args.beta, "--beta")
    if args.temperature is not None:
        _positive_finite(args.temperature, "--temperature")
        if args.adversarial:
            raise CLIError(
                "--temperature trains a distillation teacher or student with the clean loss; "
                "adversarial objectives run at T = 1: drop one of them"
            )
    if args.distill_from is not None:
        if args.adversarial:
            raise CLIError("--distill-from and --adversarial are separate objectives: pick one")
        if args.temperature is None:
            raise CLIError(
                "--distill-from needs --temperature T, the temperature the teacher was trained at"
            )
        try:
            vocab.check_model_name(args.distill_from)
        except vocab.SpecError as e:
            raise CLIError(f"--distill-from: {e}") from e


def _teacher(spec: str, ds: Any, temperature: float):
    """The distillation teacher ``spec`` names (a reference name or a checkpoint), checked to run on
    ``ds``'s images and to return one logit per class; a warning when its checkpoint records
    another training temperature."""
    import jax
    import numpy as np

    from jaxadv import _validate, checkpoint, vocab, vocab_rules

    name = f"--distill-from {spec!r}"
    try:
        teacher = vocab.load_model(spec)
        if vocab.reference_name(spec) is None:
            t = checkpoint.read_metadata(spec).get("temperature")
            if t is not None and float(t) != temperature:
                log.warning(
                    "%s was trained at temperature %s, the student learns at %s (Papernot et al. "
                    "use the same T for both)",
                    name,
                    t,
                    temperature,
                )
        h, w, k = ds.image_shape
        try:  # the project's one output-shape probe; the message keeps the cause's first line
            _validate.trace_output(teacher, jax.ShapeDtypeStruct((1, h, w, k), np.float32))
        except ValueError as probe:
            e = probe.__cause__ or probe
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise CLIError(
                f"{name} cannot run on the training images ({h}x{w}x{k}): {first}; train the "
                "teacher on the same data, --image-size and --channels"
            ) from e
        vocab_rules.check_model_fits(teacher, ds, name=name)
    except vocab.SpecError as e:
        raise CLIError(str(e)) from e
    return teacher


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    """NaN / inf as None, so the metadata is strict JSON."""

    def fix(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, list):
            return [fix(u) for u in v]
        return v

    return {k: fix(v) for k, v in d.items()}


def cmd_train(args: argparse.Namespace) -> int:
    """Run ``jaxadv train`` (see the module docstring)."""
    import jax
    import numpy as np
    from flax import nnx

    import jaxadv
    from jaxadv import checkpoint, train
    from jaxadv.classmetrics import classification_metrics, warn_if_trivial
    from jaxadv.splits import training_splits
    from jaxadv.train_options import make_optimizer

    arch, out, augment = _check(args)
    splits = training_splits(
        args.data,
        size=args.image_size,
        channels=args.channels,
        seed=args.seed,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
    )
    ds = splits.train
    if args.num_examples:
        # a fixed random subset: stored splits can be sorted by label
        rng = np.random.default_rng(args.seed)
        x, y = ds.get(np.sort(rng.permutation(len(ds))[: args.num_examples]))
    else:
        x, y = ds.arrays()
    xv, yv = splits.val.arrays()
    kwargs = {"num_classes": ds.num_classes, "in_channels": x.shape[-1]}
    if arch == "small_cnn":
        kwargs["input_size"] = x.shape[1]
    module = checkpoint.ARCHITECTURES[arch](**kwargs, rngs=nnx.Rngs(args.seed))
    mean = [float(np.mean(x[..., c])) for c in range(x.shape[-1])]
    std = [float(np.std(x[..., c])) + 1e-6 for c in range(x.shape[-1])]
    steps = max(1, x.shape[0] // min(args.batch_size, x.shape[0]))
    tx = make_optimizer(
        args.lr,
        total_steps=steps * args.epochs,
        warmup_steps=steps * args.warmup_epochs,
        schedule=args.schedule,
        weight_decay=args.weight_decay,
    )
    pgd = None
    adversarial = None
    distill = None
    beta = None
    if args.adversarial:
        pgd = jaxadv.PGD(threat=jaxadv.LinfBall(eps=args.adv_eps / 255), num_steps=args.adv_steps)
        if args.objective in ("trades", "mart"):
            beta = 6.0 if args.beta is None else args.beta
            adversarial = train.AdversarialTraining(attack=pgd, objective=args.objective, beta=beta)
        else:
            adversarial = train.AdversarialTraining(attack=pgd)
    temperature = 1.0 if args.temperature is None else args.temperature
    if args.distill_from is not None:
        distill = train.Distillation(
            teacher=_teacher(args.distill_from, ds, temperature), temperature=temperature
        )
    cw = None if args.class_weights in (None, "none") else args.class_weights
    history = train.train(
        module,
        x,
        y,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=tx,
        key=args.seed,
        adversarial=adversarial,
        distill=distill,
        temperature=1.0 if distill is not None else temperature,
        val=(xv, yv),
        mean=mean,
        std=std,
        augment=augment if augment.enabled else None,
        class_weights=cw,
        balanced_sampling=args.balanced_sampling,
        monitor=args.monitor,
        patience=args.patience,
    )
    best = next(h for h in history if h["epoch"] == _best_epoch(history))
    # the test split, read for the first time, once
    test = None
    if splits.test is not None:
        xt, yt = splits.test.arrays()
        test = classification_metrics(train.predict_logits(module, xt, mean=mean, std=std), yt)
        warn_if_trivial(test, "test")
        if pgd is not None:
            model = jaxadv.from_nnx(module, mean=mean, std=std)
            row = jaxadv.evaluate(
                pgd, model, (xt, yt), [args.adv_eps / 255], key=jax.random.key(args.seed)
            )
            test["robust"] = _finite(row.summary()[0])
    meta = {
        "architecture": arch,
        "kwargs": kwargs,
        "seed": args.seed,
        "data": str(args.data),
        "splits": splits.describe(),
        "num_train_examples": int(x.shape[0]),
        "epochs": args.epochs,
        "epochs_run": len(history),
        "best_epoch": best["epoch"],
        "monitor": args.monitor,
        "patience": args.patience,
        "val": _finite({k[4:]: v for k, v in best.items() if k.startswith("val_")}),
        "test": None if test is None else _finite(test),
        "test_accuracy": None if test is None else test["accuracy"],
        "optimizer": {
            "name": "adamw" if args.weight_decay else "adam",
            "lr": args.lr,
            "schedule": args.schedule,
            "warmup_epochs": args.warmup_epochs,
            "weight_decay": args.weight_decay,
            "batch_size": args.batch_size,
        },
        "class_weights": cw,
        "balanced_sampling": bool(args.balanced_sampling),
        "augment": augment.describe(),
        "adversarial": bool(args.adversarial),
        "adv_eps_255": args.adv_eps if args.adversarial else None,
        "adv_steps": args.adv_steps if args.adversarial else None,
        "objective": args.objective,
        "beta": beta,
        "temperature": temperature,
        "distill_from": None if args.distill_from is None else str(args.distill_from),
        "history": [_finite(h) for h in history],
        "mean": mean,
        "std": std,
    }
    checkpoint.save(out, module, meta)
    line = f"saved {out}; best epoch {best['epoch']}/{len(history)}"
    line += f"; val {_brief(meta['val'])}"
    if test is not None:
        line += f"; test {_brief(test)}"
    print(line)
    return 0


def _best_epoch(history: list[dict[str, Any]]) -> int:
    return max((h["epoch"] for h in history if h.get("best")), default=history[-1]["epoch"])


def _brief(m: dict[str, Any]) -> str:
    auc = m.get("auc", m.get("macro_auc"))
    return json.dumps(
        {
            "accuracy": m["accuracy"],
            "majority_baseline": m["majority_baseline"],
            "balanced_accuracy": m["balanced_accuracy"],
            "auc": auc,
        }
    )


def add_train_parser(sub: Any) -> None:
    """Register ``jaxadv train`` on the sub-command parsers of :func:`jaxadv.cli.build_parser`."""
    t = sub.add_parser(
        "train",
        help="train a model (optionally adversarially), selecting on val; save a checkpoint",
    )
    t.add_argument("--config", help="YAML/JSON file with these options")
    t.add_argument(
        "--data", default="default", help="a MedMNIST-layout .npz, an image folder or tfds:NAME"
    )
    t.add_argument("--image-size", type=int, default=None)
    t.add_argument("--channels", type=int, default=None)
    t.add_argument(
        "--arch",
        default="small_cnn",
        help="small_cnn (default), resnet18, resnet50, vgg or densenet (their default sizes; the "
        "zoo's CPU-sized variants: jaxadv zoo build)",
    )
    t.add_argument("--epochs", type=int, default=5)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (Adam / AdamW)")
    t.add_argument("--schedule", default="constant", help="constant or cosine (decay to 0)")
    t.add_argument("--warmup-epochs", type=int, default=0, help="linear warm-up from 0")
    t.add_argument("--weight-decay", type=float, default=0.0, help="> 0 switches to AdamW")
    t.add_argument("--class-weights", default=None, help="none or balanced (N / (C N_c))")
    t.add_argument(
        "--balanced-sampling", action="store_true", help="draw every class equally often"
    )
    t.add_argument("--hflip", action="store_true", help="augment: random left-right flips")
    t.add_argument("--vflip", action="store_true", help="augment: random up-down flips")
    t.add_argument("--rotate", type=float, default=0.0, help="augment: max rotation, degrees")
    t.add_argument("--crop", type=int, default=0, help="augment: max translation, pixels")
    t.add_argument("--brightness", type=float, default=0.0, help="augment: additive jitter")
    t.add_argument("--contrast", type=float, default=0.0, help="augment: contrast jitter")
    t.add_argument("--monitor", default="balanced_accuracy", help=f"{', '.join(_MONITORS)}")
    t.add_argument("--patience", type=int, default=None, help="early stop after N flat epochs")
    t.add_argument("--val-fraction", type=float, default=0.15, help="hold-out when no val split")
    t.add_argument("--test-fraction", type=float, default=0.15, help="hold-out when no test")
    t.add_argument("--num-examples", type=int, default=None, help="random subset of train")
    t.add_argument("--adversarial", action="store_true", help="PGD adversarial training (Madry)")
    t.add_argument("--adv-eps", type=float, default=2.0, help="L∞ eps in 1/255 units")
    t.add_argument("--adv-steps", type=int, default=7)
    t.add_argument(
        "--objective",
        default=None,
        help="with --adversarial: madry (PGD-AT, the default), trades or mart",
    )
    t.add_argument(
        "--beta", type=float, default=None, help="KL weight of trades / mart (default 6)"
    )
    t.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="T > 0: train a distillation teacher at T, or with --distill-from a student",
    )
    t.add_argument(
        "--distill-from",
        default=None,
        metavar="MODEL",
        help="defensive distillation: learn MODEL's soft labels (a checkpoint or reference name)",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", required=True, help="checkpoint path (.msgpack)")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_train)


__all__ = ["add_train_parser", "cmd_train"]
