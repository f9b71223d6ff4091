"""Segmentation cells of a sweep: a model returning per-pixel logits, segmentation data (an
``.npz``, or image + mask folders) and a dense attack (``segpgd``, ``pgd-ce``, ``dag``, ``asma``:
the names of ``jaxadv attack``, :data:`jaxadv.cli_segmentation.DENSE_ATTACKS`).

The config, the runner, the storage check and the report each call in here for the parts that
differ from a classifier cell; the rest (one :func:`jaxadv.evaluate` call per cell, resume, files,
checksums, the summary rows) is shared. A config is all segmentation or all classification: cells
pair every model with every attack, so a segmentation model beside a classifier attack (or the
reverse) is refused when the config is loaded.

A segmentation cell stores, beside the per-example arrays of every cell, the per-image ``dice``,
``iou``, ``pixel_accuracy`` (and ``target_iou`` for a targeted attack) ``[E, N]`` at the
adversarial and ``clean_<field>`` ``[N]`` on the clean image, so the report recomputes the rows
with :func:`jaxadv.engine.summary.dense_summary_rows` (drops: :func:`jaxadv.engine.dense.split_clean`);
its ``labels`` are the number of foreground (non-zero) pixels of each true mask (the masks
themselves stay in the data file). Its samples add the true masks and the model's predicted masks
on the clean and adversarial images (``masks``, ``clean_pred``, ``adv_pred``), so the overlays
need no model at report time.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxadv.cli_segmentation import DENSE_ATTACKS
from jaxadv.engine.summary import DENSE_PER_EXAMPLE

#: The per-image fields every segmentation cell stores (``target_iou`` only when targeted).
REQUIRED_FIELDS = ("dice", "iou", "pixel_accuracy")
#: Predicted and true masks a segmentation cell keeps for its samples.
SAMPLE_MASKS = ("masks", "clean_pred", "adv_pred")
_NO_DENSE = ("restarts", "multilabel", "finding", "target_set", "success_margin", "grid")


def is_dense(attack_entry: Mapping[str, Any]) -> bool:
    """The (normalised or raw) attack entry names a segmentation attack."""
    return str(attack_entry.get("attack", "")).strip().lower() in DENSE_ATTACKS


# ----------------------------------------------------------------------------- config
def attack_entry(
    a: Mapping[str, Any],
    where: str,
    *,
    name: str,
    norm: str,
    eps: list[float],
    num_steps: int,
    durable: Mapping[str, Any],
) -> dict[str, Any]:
    """The normalised entry of a segmentation attack (same keys as a classifier attack's), built
    once with :func:`jaxadv.cli_segmentation.make_attack` so bad options fail at load.

    Raises:
        ConfigError: a setting that does not apply to a segmentation attack, or a bad option.
    """
    from jaxadv import cli_segmentation
    from jaxadv.sweep._fields import ConfigError, _int

    for k in _NO_DENSE:
        if a.get(k) not in (None, 0, 0.0):
            raise ConfigError(f"{where}.{k}: does not apply to the segmentation attack {name!r}")
    for k, v in durable.items():
        if v not in (None, 0.0):
            raise ConfigError(
                f"{where}: the top-level {k} does not apply to the segmentation attack {name!r}; "
                "put it on the classifier attacks of another config"
            )
    if a.get("cascade", False):
        raise ConfigError(f"{where}.cascade: segmentation attacks run every budget independently")
    options = dict(a.get("options") or {})
    if "masks" in options:
        raise ConfigError(
            f"{where}.options.masks: a mask folder belongs to the data set: "
            "datasets: [{data: IMAGE_FOLDER, masks: MASK_FOLDER}]"
        )
    steps = _int(a.get("num_steps", num_steps), f"{where}.num_steps", lo=1)
    entry = {
        "label": "",
        "attack": name,
        "norm": norm,
        "eps": eps,
        "num_steps": steps,
        "restarts": None,
        "options": options,
        "black_box": a.get("black_box"),
        "cascade": False,
    }
    try:
        cli_segmentation.make_attack(name, norm, entry["num_steps"], options)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {str(e).replace('--option', 'options:')}") from e
    return entry


def check_tasks(cfg: Any) -> bool:
    """Every model and attack of ``cfg`` is of one task; a segmentation config reads ``.npz`` data
    with ``{split}_images`` / ``{split}_masks`` or image + mask folders (``masks:``).

    Returns:
        Whether ``cfg`` is a segmentation config (its data sets are then checked here).

    Raises:
        ConfigError: naming the offending entry.
    """
    from jaxadv.cli_segmentation import is_segmentation_model
    from jaxadv.sweep.config import ConfigError

    d = cfg.data
    models = d["models"]
    seg_models = [i for i, m in enumerate(models) if is_segmentation_model(cfg.resolve(m["model"]))]
    cls_models = [i for i in range(len(models)) if i not in seg_models]
    for i, a in enumerate(d["attacks"]):
        dense = is_dense(a)
        other = cls_models if dense else seg_models
        if other:
            j = other[0]
            kind = ("segmentation", "classifier") if dense else ("classifier", "segmentation")
            raise ConfigError(
                f"attacks[{i}]: {a['attack']!r} is a {kind[0]} attack but models[{j}] "
                f"({models[j]['label']!r}) is a {kind[1]} model; every model meets every attack "
                f"in a sweep, so give segmentation models and attacks ({', '.join(DENSE_ATTACKS)}) "
                "a config of their own"
            )
    if not seg_models:
        for i, ds in enumerate(d["datasets"]):
            if ds.get("masks") is not None:
                raise ConfigError(
                    f"datasets[{i}].masks: only segmentation models read mask folders; leave it "
                    "out for classifiers"
                )
        return False
    for i, ds in enumerate(d["datasets"]):
        _check_data(cfg, ds, f"datasets[{i}]")
    return True


def _check_data(cfg: Any, ds: Mapping[str, Any], where: str) -> None:
    """A segmentation data entry is an ``.npz`` with ``{split}_images`` / ``{split}_masks``, or an
    image folder with ``masks:`` a mask folder (``image_size`` resizes folder data only)."""
    from jaxadv.sweep.config import ConfigError

    p = pathlib.Path(cfg.resolve(ds["data"]))
    if ds.get("masks") is not None:
        m = pathlib.Path(cfg.resolve(ds["masks"]))
        for what, folder in (("data", p), ("masks", m)):
            if not folder.is_dir():
                raise ConfigError(
                    f"{where}.{what}: with masks: the data is an image folder and masks a folder "
                    f"of masks of the same stems, got {ds[what]!r} (not a folder)"
                )
        return
    if ds.get("image_size") is not None:
        raise ConfigError(
            f"{where}.image_size: segmentation .npz data is used at its own size (image_size "
            "resizes image + mask folders only)"
        )
    named = ds["data"] == "default" or ds["data"].startswith("tfds:")
    if not named and not p.exists():
        raise ConfigError(
            f"{where}.data: no file or folder {str(p)!r} (relative paths are read from the "
            "config's folder, or from the current folder for a built-in config); point data: at "
            "a segmentation .npz or an image folder with masks:"
        )
    if p.suffix != ".npz" or not p.is_file():
        raise ConfigError(
            f"{where}: a segmentation model needs a segmentation .npz with {{split}}_images / "
            f"{{split}}_masks (e.g. ../shared/data/isic2017_seg.npz) or an image folder with "
            f"masks: a mask folder, got {ds['data']!r}"
        )
    from jaxadv.data._npz import open_npz

    try:
        _, keys = open_npz(p)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from e
    want = [f"{ds['split']}_images", f"{ds['split']}_masks"]
    if not set(want) <= set(keys):
        raise ConfigError(
            f"{where}: {ds['data']!r} has no {' / '.join(want)} (it holds {sorted(keys)}); a "
            "segmentation model needs masks"
        )


#: The report's note under the segmentation table.
REPORT_TEXT = (
    "Means over images of the per-image Dice / IoU / pixel accuracy at the adversarial "
    "(clean_*: on the clean image; *_drop: mean per-image drop). success_rate: images on which "
    "the attack's rule holds; robust accuracy above is its complement. *_mean_all: over every "
    "image."
)


# ----------------------------------------------------------------------------- runner
def load_data(spec: str, entry: Mapping[str, Any], masks: str | None = None) -> Any:
    """The segmentation data set of a resolved data spec and its normalised entry; ``masks``: the
    resolved mask folder of an image-folder entry."""
    from jaxadv.data import load_segmentation

    size = entry.get("image_size")
    return load_segmentation(
        spec,
        split=entry["split"],
        masks=masks,
        channels=entry.get("channels"),
        size=None if size is None else (size, size),
    )


def build(a: Mapping[str, Any], ds: Any) -> tuple[Any, np.ndarray | None]:
    """The dense attack of a normalised entry and its target masks, as ``jaxadv attack`` builds
    them (:func:`jaxadv.cli_segmentation.default_target`)."""
    from jaxadv import cli_segmentation

    attack = cli_segmentation.make_attack(a["attack"], a["norm"], a["num_steps"], a["options"])
    return attack, cli_segmentation.default_target(attack, ds)


def results(ev: Any) -> dict[str, Any]:
    """What a segmentation cell stores beside the classifier fields: ``labels`` (foreground
    pixels per true mask), the per-image fields ``[E, N]`` and their clean values ``[N]``."""
    from jaxadv.sweep.storage import encode_array

    out = {"labels": encode_array((np.asarray(ev.labels) != 0).sum(axis=(1, 2)))}
    for f in DENSE_PER_EXAMPLE:
        if f in ev.clean_dense:
            out[f] = encode_array(ev.per_eps[f].astype(np.float32))
            out[f"clean_{f}"] = encode_array(ev.clean_dense[f].astype(np.float32))
    return out


def sample_masks(ev: Any, model: Any, ds: Any, idx: np.ndarray) -> dict[str, str]:
    """True masks and predicted masks (clean, adversarial) of the kept samples ``idx``."""
    from jaxadv.sweep.storage import encode_masks

    _, y = ds.get(idx)

    def pred(x: np.ndarray) -> np.ndarray:
        return np.asarray(np.argmax(np.asarray(model(np.asarray(x, np.float32))), axis=-1))

    return {
        "masks": encode_masks(np.asarray(y)),
        "clean_pred": encode_masks(pred(ev.clean)),
        "adv_pred": encode_masks(pred(ev.adv)),
    }


# ----------------------------------------------------------------------------- storage
def check_fields(r: Mapping[str, Any], dense: bool, e: int, n: int) -> str | None:
    """``None`` when the per-image fields of results ``r`` have their shapes (``[E, N]``, clean
    ``[N]``); a segmentation cell must hold :data:`REQUIRED_FIELDS`, a classifier cell none."""
    from jaxadv.sweep.storage import decode_array

    present = [f for f in DENSE_PER_EXAMPLE if f in r or f"clean_{f}" in r]
    if not dense:
        return f"results.{present[0]} belongs to a segmentation cell" if present else None
    for f in REQUIRED_FIELDS:
        for k in (f, f"clean_{f}"):
            if k not in r:
                return (
                    f"results.{k} is missing (a segmentation cell stores "
                    f"{', '.join(REQUIRED_FIELDS)} and their clean_ values)"
                )
    for f in present:
        if decode_array(r.get(f), np.float32).shape != (e, n):
            return f"results.{f} must be {e} lists of {n} numbers"
        if decode_array(r.get(f"clean_{f}"), np.float32).shape != (n,):
            return f"results.clean_{f} must be a list of {n} numbers"
    return None


def check_samples(smp: Mapping[str, Any], dense: bool, shape: tuple[int, ...]) -> str | None:
    """``None`` when the sample masks of a segmentation cell are ``[k, H, W]`` for images
    ``shape`` ``[k, H, W, K]``."""
    from jaxadv.sweep.storage import decode_masks

    if not dense:
        return None
    for k in SAMPLE_MASKS:
        try:
            m = decode_masks(smp.get(k))
        except ValueError as e:
            return f"samples.{k}: {e}"
        if m.shape != tuple(shape[:3]):
            return f"samples.{k} must be masks {list(shape[:3])}, got {list(m.shape)}"
    return None


# ----------------------------------------------------------------------------- report
def summary(
    r: Mapping[str, Any], eps: Sequence[float], per_eps: dict, cc: np.ndarray, rule: str, norm: str
) -> list[dict[str, Any]]:
    """The rows of a segmentation cell from its stored arrays (adds the per-image fields and
    their drops to ``per_eps``): :func:`jaxadv.engine.summary.dense_summary_rows`."""
    from jaxadv.engine.dense import split_clean
    from jaxadv.engine.summary import dense_summary_rows
    from jaxadv.sweep.storage import decode_array

    cat = {}
    for f in DENSE_PER_EXAMPLE:
        if f in r:
            cat[f] = decode_array(r[f], np.float32)
            cat[f"clean_{f}"] = decode_array(r[f"clean_{f}"], np.float32)
    clean = split_clean(cat)
    per_eps.update(cat)
    return dense_summary_rows(eps, per_eps, cc, clean, rule, norm=norm)


#: Columns of the report's segmentation table (``target_iou`` added for targeted attacks).
TABLE_COLUMNS = [
    "model",
    "dataset",
    "attack",
    "seed",
    "eps_label",
    "rule",
    "clean_dice",
    "dice",
    "dice_drop",
    "clean_iou",
    "iou",
    "pixel_accuracy",
    "success_rate",
    "norm_mean_all",
    "ssim_mean_all",
]


def table_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    extra = ["target_iou"] if any("target_iou" in r for r in rows) else []
    return TABLE_COLUMNS + extra


def overlay_png(c: Any) -> bytes | None:
    """Rows per kept sample: clean image, adversarial image, true mask, prediction on the clean
    image, prediction on the adversarial, labelled with the image's Dice clean → adversarial;
    ``None`` when the cell kept no samples."""
    from jaxadv.engine.summary import eps_label
    from jaxadv.report import figure, figure_png
    from jaxadv.sweep.storage import decode_array, decode_images, decode_masks

    smp = c.samples
    if not smp or not all(k in smp for k in SAMPLE_MASKS):
        return None
    clean, adv = decode_images(smp["clean"]), decode_images(smp["adv"])
    masks = [decode_masks(smp[k]) for k in SAMPLE_MASKS]
    idx = decode_array(smp["indices"], np.int64)
    j = int(np.argmin(np.abs(np.asarray(c.eps) - float(smp["eps"]))))
    pos = {int(i): n for n, i in enumerate(c.indices.tolist())}
    adv_dice, drop = c.per_eps["dice"][j], c.per_eps["dice_drop"][j]
    n = clean.shape[0]
    vmax = max(1, max(int(m.max()) if m.size else 0 for m in masks))
    heads = ("clean", "adversarial", "true mask", "clean prediction", "adversarial prediction")
    fig, axes = figure(n, 5, figsize=(8.0, 1.7 * n + 0.6))
    for i in range(n):
        cols = [clean[i], adv[i], *(m[i] for m in masks)]
        for k, img in enumerate(cols):
            ax = axes[i, k]
            if k < 2:
                shown = img[..., 0] if img.shape[-1] == 1 else np.clip(img, 0, 1)
                ax.imshow(shown, cmap="gray" if img.shape[-1] == 1 else None, vmin=0, vmax=1)
            else:
                ax.imshow(img, cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(heads[k], fontsize=7)
        n_i = pos.get(int(idx[i]))
        dice = "" if n_i is None else f"{adv_dice[n_i] + drop[n_i]:.2f} → {adv_dice[n_i]:.2f}"
        axes[i, 0].set_ylabel(f"#{int(idx[i])} Dice {dice}", fontsize=7)
    fig.suptitle(
        f"{c.model} / {c.dataset} / {c.attack} at eps {eps_label(c.norm, c.eps[j])}", fontsize=9
    )
    fig.tight_layout()
    return figure_png(fig, dpi=110)


__all__ = [
    "REQUIRED_FIELDS",
    "SAMPLE_MASKS",
    "TABLE_COLUMNS",
    "attack_entry",
    "build",
    "check_fields",
    "check_samples",
    "check_tasks",
    "is_dense",
    "load_data",
    "overlay_png",
    "results",
    "sample_masks",
    "summary",
    "table_columns",
]
