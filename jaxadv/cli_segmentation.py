"""``jaxadv attack`` on a segmentation model (per-pixel logits ``[B, H, W, C]``).

``jaxadv attack --model unet_isic --data ../shared/data/isic2017_seg.npz --attack segpgd --eps
1,2,4`` routes here when ``--model`` is a shipped segmentation model (``unet_isic``) or a checkpoint
whose metadata says ``"task": "segmentation"``. The data is a segmentation ``.npz``
(``{split}_images`` / ``{split}_masks``) or an image folder with ``--option masks=FOLDER``.
Attacks: ``segpgd``, ``pgd-ce`` (SegPGD with ``weighted=False``), ``dag``, ``asma`` (targeted at the
all-background mask: erase every foreground region); norms ``linf`` and ``l2``. Other settings
(``step_size``, ``threshold`` of the success rule, ``rule``: ``dice_drop`` / ``dice_below`` /
``target_iou``) go through ``--option KEY=VALUE``.

The run goes through :func:`jaxadv.evaluate` like a classifier's (same padding, batching,
sharding, per-example keys ``fold_in(key, index)``); success is the attack's per-image rule,
recomputed by the library on the projected adversarial. ``results.json`` / ``results.csv`` hold
one row per eps (:func:`jaxadv.engine.summary.dense_summary_rows`): clean and adversarial Dice /
IoU / pixel accuracy (means over images) and their mean drops, the success rate under the stated
rule, ``<size>_mean_all`` (norms, SSIM, queries over every image) and ``<size>_mean`` (over the
images the rule holds on, as for classifiers).
"""

from __future__ import annotations

import pathlib
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

    name = str(spec).strip().lower()
    if name in checkpoint.SEGMENTATION_MODELS:
        return checkpoint.reference_model(name)
    return checkpoint.as_target(*checkpoint.load(pathlib.Path(spec)))


def check(args: Any, *, options: dict[str, Any]) -> Any:
    """The dense attack of the parsed ``jaxadv attack`` arguments; flags that do not apply to a
    segmentation model are refused here, before anything is loaded."""
    attack = make_attack(args.attack, args.norm, args.num_steps, options)
    if args.restarts is not None:
        raise ValueError("segmentation attacks have no --restarts")
    if args.multilabel is not None or args.cascade:
        raise ValueError("--multilabel and --cascade do not apply to segmentation models")
    if getattr(args, "recheck", None) is not None:
        raise ValueError("--recheck is not supported for segmentation models yet; leave it out")
    if args.data == "default":
        raise ValueError(
            "--data: a segmentation model needs segmentation data: an .npz with "
            "{split}_images / {split}_masks (e.g. ../shared/data/isic2017_seg.npz) or an image "
            "folder with --option masks=FOLDER"
        )
    return attack


def load(args: Any, attack: Any, *, options: dict[str, Any]) -> dict[str, Any]:
    """What :func:`jaxadv.evaluate` needs beside ``attack``: ``model``, ``data`` (the
    segmentation data set), ``num_examples`` and ``target`` (the all-background mask
    ``int32[H, W]`` of a targeted attack: erase every foreground region; else ``None``)."""
    from jaxadv.data import load_segmentation

    ds = load_segmentation(args.data, split=args.split, masks=options.get("masks"))
    model = load_model(args.model)
    n = len(ds) if args.num_examples is None else min(args.num_examples, len(ds))
    return {"model": model, "data": ds, "num_examples": n, "target": default_target(attack, ds)}


def default_target(attack: Any, ds: Any) -> np.ndarray | None:
    """The target of a targeted dense attack on ``ds`` (``jaxadv attack`` and sweeps): the
    all-background mask ``int32[H, W]``, which erases every foreground region; ``None`` for an
    untargeted attack."""
    h, w, _ = ds.image_shape
    return np.zeros((h, w), np.int32) if type(attack).needs_target else None


def write_results(ev: Any, args: Any, attack: Any, out: pathlib.Path) -> list[dict[str, Any]]:
    """Rows of the dense evaluation ``ev`` (:func:`jaxadv.engine.summary.dense_summary_rows`,
    with the CLI's ``attack`` name and ``num_images``) written to ``out/results.json`` and
    ``out/results.csv``; returns the rows."""
    from jaxadv import report
    from jaxadv.vocab import attack_config

    n = int(ev.indices.size)
    rows = [{"attack": args.attack, "norm": ev.norm, **r, "num_images": n} for r in ev.summary()]
    report.write_json(
        out / "results.json",
        {
            "manifest": report.manifest(
                seed=args.seed,
                args={k: v for k, v in vars(args).items() if k != "func"},
                attack_config=attack_config(attack, ev.eps.tolist()),
                task="segmentation",
            ),
            "rows": rows,
        },
    )
    report.write_csv(out / "results.csv", rows)
    return rows


#: Columns of the printed table (``norm_mean_all``: the perturbation's norm over every image).
TABLE_COLUMNS = (
    "attack",
    "eps_label",
    "clean_dice",
    "dice",
    "iou",
    "success_rate",
    "norm_mean_all",
    "ssim_mean_all",
)

__all__ = [
    "DENSE_ATTACKS",
    "TABLE_COLUMNS",
    "is_segmentation_model",
    "load_model",
    "check",
    "default_target",
    "load",
    "make_attack",
    "write_results",
]
