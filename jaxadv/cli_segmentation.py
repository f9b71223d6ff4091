"""``jaxadv attack`` on a segmentation model (per-pixel logits ``[B, H, W, C]``).

``jaxadv attack --model unet_isic --data ../shared/data/isic2017_seg.npz --attack segpgd --eps
1,2,4`` routes here when ``--model`` is a shipped segmentation model (``unet_isic``) or a checkpoint
whose metadata says ``"task": "segmentation"``. The data is a segmentation ``.npz``
(``{split}_images`` / ``{split}_masks``) or an image folder with ``--option masks=FOLDER``.
Attacks: ``segpgd``, ``pgd-ce`` (SegPGD with ``weighted=False``), ``dag``, ``asma`` (targeted at the
all-background mask: erase every foreground region); norms ``linf`` and ``l2``. Other settings
(``step_size``, ``threshold`` of the success rule, ``rule``: ``dice_drop`` / ``dice_below`` /
``target_iou``) go through ``--option KEY=VALUE``. Writes ``results.json`` / ``results.csv`` with
one row per eps: clean and adversarial Dice / IoU / pixel accuracy (means over images), the
success rate under the stated rule, mean norm and queries.

The batches run through the attack's own call (per-example keys by data-set index); the
classification engine (:func:`jaxadv.evaluate`) does not take dense targets yet.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

#: CLI attack name -> (class name, fixed settings).
DENSE_ATTACKS = {
    "segpgd": ("SegPGD", {}),
    "pgd-ce": ("SegPGD", {"weighted": False}),
    "dag": ("DAG", {}),
    "asma": ("ASMA", {}),
}
_RULES = {"dice_drop": "dice_drop", "dice_below": "dice_below", "target_iou": "target_mask_iou"}


def is_segmentation_model(spec: str) -> bool:
    """``spec`` names a shipped segmentation model or a checkpoint saved with
    ``"task": "segmentation"`` in its metadata."""
    from jaxadv import checkpoint

    if str(spec).strip().lower() in checkpoint.SEGMENTATION_MODELS:
        return True
    try:
        p = pathlib.Path(spec)
        meta = checkpoint.metadata_path(p) if p.suffix != ".json" else p
        if not meta.is_file():
            return False
        return checkpoint.read_metadata(meta).get("task") == "segmentation"
    except (OSError, ValueError, TypeError):  # not a checkpoint: the classifier path reports it
        return False


def make_attack(name: str, norm: str, num_steps: int | None, options: dict[str, Any]) -> Any:
    """The dense attack ``name`` (see :data:`DENSE_ATTACKS`) at a placeholder eps of 1."""
    import jaxadv
    from jaxadv import segmentation as S

    key = str(name).strip().lower()
    if key not in DENSE_ATTACKS:
        raise ValueError(
            f"--attack {name!r} is not a segmentation attack; choose one of "
            f"{', '.join(DENSE_ATTACKS)}"
        )
    if norm not in ("linf", "l2"):
        raise ValueError(f"segmentation attacks take --norm linf or l2, got {norm!r}")
    cls_name, fixed = DENSE_ATTACKS[key]
    opts = dict(options)
    opts.pop("masks", None)
    rule_kind, thr = opts.pop("rule", None), opts.pop("threshold", None)
    if rule_kind is not None or thr is not None:
        kind = rule_kind or ("target_iou" if key == "asma" else "dice_drop")
        if kind not in _RULES:
            raise ValueError(f"--option rule= must be one of {', '.join(_RULES)}, got {kind!r}")
        fn = getattr(S, _RULES[kind])
        opts["rule"] = fn() if thr is None else fn(float(thr))
    threat = (jaxadv.LinfBall if norm == "linf" else jaxadv.L2Ball)(eps=1.0)
    cls = getattr(jaxadv, cls_name)
    try:
        return cls(threat=threat, num_steps=num_steps or 20, **fixed, **opts)
    except TypeError as e:
        if "unexpected keyword" in str(e):
            raise ValueError(
                f"--option: {cls_name} has no setting named in {sorted(opts)}; its settings: "
                "step_size, num_steps, rule, threshold" + (", weighted" if key == "segpgd" else "")
            ) from e
        raise


def load_model(spec: str) -> Any:
    """A ready :class:`jaxadv.Model` for a segmentation model name or checkpoint."""
    from jaxadv import checkpoint
    from jaxadv.models import from_nnx

    name = str(spec).strip().lower()
    if name in checkpoint.SEGMENTATION_MODELS:
        return checkpoint.reference_model(name)
    module, meta = checkpoint.load(pathlib.Path(spec))
    return from_nnx(module, mean=meta.get("mean"), std=meta.get("std"))


def run_attack(
    args: Any, *, eps: Sequence[float], out: pathlib.Path, options: dict[str, Any]
) -> list[dict[str, Any]]:
    """Run the dense attack of the parsed ``jaxadv attack`` arguments over ``eps`` (pixel units)
    and write ``results.json`` / ``results.csv`` into ``out``; returns the rows."""
    import jax
    import jax.numpy as jnp

    from jaxadv import report
    from jaxadv import segmentation as S
    from jaxadv.data import load_segmentation

    attack = make_attack(args.attack, args.norm, args.num_steps, options)
    if args.restarts is not None:
        raise ValueError("segmentation attacks have no --restarts")
    if args.multilabel is not None or args.cascade:
        raise ValueError("--multilabel and --cascade do not apply to segmentation models")
    if args.data == "default":
        raise ValueError(
            "--data: a segmentation model needs segmentation data: an .npz with "
            "{split}_images / {split}_masks (e.g. ../shared/data/isic2017_seg.npz) or an image "
            "folder with --option masks=FOLDER"
        )
    masks = options.get("masks")
    ds = load_segmentation(args.data, split=args.split, masks=masks)
    model = load_model(args.model)
    n = len(ds) if args.num_examples is None else min(args.num_examples, len(ds))
    bs = args.batch_size or 32
    targeted = type(attack).needs_target
    key = jax.random.key(args.seed)
    rule = attack.resolved_rule(targeted)
    rows = []
    for e in eps:
        a = attack.with_eps(float(e))
        acc: dict[str, list[np.ndarray]] = {}
        for start in range(0, n, bs):
            x, y = ds.get(np.arange(start, min(start + bs, n)))
            x, y = jnp.asarray(x), jnp.asarray(y)
            target = jnp.zeros_like(y) if targeted else None
            res = a(key, model, x, y, target=target, index_offset=start)
            clean = S.scores(model(x), y)
            parts = {
                "clean_dice": clean["dice"],
                "clean_iou": clean["iou"],
                "dice": res.info["dice"],
                "iou": res.info["iou"],
                "pixel_accuracy": res.info["pixel_accuracy"],
                "success": res.success,
                "norm": res.norm,
                "queries": res.queries,
            }
            if targeted:
                parts["target_iou"] = res.info["target_iou"]
            for k, v in parts.items():
                acc.setdefault(k, []).append(np.asarray(v, np.float64))
        m = {k: float(np.mean(np.concatenate(v))) for k, v in acc.items()}
        row = {
            "attack": args.attack,
            "norm": args.norm,
            "eps": float(e),
            "eps_255": float(e) * 255,
            "rule": rule.describe(),
            "num_images": n,
            "clean_dice": m["clean_dice"],
            "dice": m["dice"],
            "dice_drop": m["clean_dice"] - m["dice"],
            "clean_iou": m["clean_iou"],
            "iou": m["iou"],
            "pixel_accuracy": m["pixel_accuracy"],
            "success_rate": m["success"],
            "norm_mean": m["norm"],
            "queries_mean": m["queries"],
        }
        if targeted:
            row["target_iou"] = m["target_iou"]
        rows.append(row)
    report.write_json(
        out / "results.json",
        {
            "manifest": report.manifest(
                seed=args.seed,
                args={k: v for k, v in vars(args).items() if k != "func"},
                task="segmentation",
            ),
            "rows": rows,
        },
    )
    report.write_csv(out / "results.csv", rows)
    return rows


TABLE_COLUMNS = ("attack", "eps_255", "clean_dice", "dice", "iou", "success_rate", "norm_mean")

__all__ = [
    "DENSE_ATTACKS",
    "TABLE_COLUMNS",
    "is_segmentation_model",
    "load_model",
    "make_attack",
    "run_attack",
]
