"""Universal cells of a sweep: ``patch`` (:class:`~jaxadv.AdversarialPatch`) and ``uap``
(:class:`~jaxadv.UniversalPerturbation`), fitted on a training split and applied to the cell's split.

For every budget of the grid the attack is fitted once per (model, data set, seed) on the fit split
(``fit: {split: train, epochs, batch_size, num_examples}``; deterministic by the cell's seed and the
budget's position), saved in the sweep folder as ``fits/<cell id>.<cell hash>.b<j>.npz`` (plus a PNG,
:meth:`~jaxadv.attacks.universal.AbstractUniversal.fit`'s per-epoch checkpoint while it runs), and
the fitted perturbation is evaluated as an ordinary attack by :func:`jaxadv.evaluate`. A fit file
whose name carries the cell's hash is loaded, not refitted, so a resumed sweep never fits twice.

Budgets: ``uap`` takes eps under ``linf`` (1/255 units, as everywhere) or ``l2``; ``patch`` takes the
fraction of the image area the patch covers, in ``(0, 1)`` (Finlayson et al.: 0.02 to 0.2), turned
into the patch side ``scale`` (over the shorter image side) with the mask's area (``pi/4`` for a
circle): ``area = frac * (scale * min(H, W))**2 / (H * W)``; rotation and place stay random per image.

The patch is targeted (``options: {target: T}``); its cell evaluates only the held-out images whose
label is not ``T``, so ``targeted_success`` (the fraction classified as ``T``) is Finlayson's
``winp``. The record keeps, beside the usual per-example arrays, ``universal``: the fitted images per
budget, fit time, fit examples and files; its ``rule`` keeps patch cells apart from per-image
``patch`` cells (side in pixels) in the worst case.
"""

from __future__ import annotations

import logging
import math
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

log = logging.getLogger("jaxadv.sweep")

#: Keys of an attack entry that a universal attack does not take.
_NO_UNIVERSAL = (
    "num_steps",
    "restarts",
    "cascade",
    "black_box",
    "multilabel",
    "finding",
    "target_set",
    "success_margin",
    "grid",
    "surrogate",
)
#: Attack settings the budget or ``fit:`` decide.
_OWNED = {
    "patch": ("scale_min", "scale_max", "batch_size", "num_epochs", "disguise"),
    "uap": ("threat", "batch_size", "num_epochs"),
}
_FIT_KEYS = {"split", "epochs", "batch_size", "num_examples"}
FIT_DEFAULTS = {"split": "train", "epochs": 5, "batch_size": 32, "num_examples": None}


def universal_name(name: Any) -> str | None:
    """``'patch'`` or ``'uap'`` when ``name`` names a universal attack (any of its names)."""
    from jaxadv.vocab import SpecError, lookup_attack

    try:
        entry = lookup_attack(name)
    except SpecError:
        return None
    return entry.name if entry.kind == "universal" else None


def is_universal(entry: Mapping[str, Any]) -> bool:
    """A normalised attack entry of a universal attack (it has a ``fit`` block)."""
    return isinstance(entry.get("fit"), Mapping) and entry.get("attack") in _OWNED


def is_area(c: Any) -> bool:
    """A report cell of a universal patch (budgets are area fractions, not pixel sides)."""
    return bool(getattr(c, "universal", None)) and c.norm == "patch"


# ----------------------------------------------------------------------------- config
def attack_entry(
    a: Mapping[str, Any], where: str, *, name: str, norm: Any, eps: Any, scale: float
) -> dict[str, Any]:
    """The normalised entry of a universal attack, built once so bad options fail at load.

    Raises:
        ConfigError: naming the entry and the setting.
    """
    from jaxadv.sweep._fields import ConfigError, _int, _keys
    from jaxadv.vocab import SpecError, parse_eps

    for k in _NO_UNIVERSAL:
        if a.get(k) not in (None, False, 0, 0.0):
            raise ConfigError(
                f"{where}.{k}: does not apply to the universal attack {name!r} (its fit budget is "
                "fit: {epochs, batch_size}; its success rule is fixed)"
            )
    if name == "patch":
        if norm not in (None, "patch"):
            raise ConfigError(
                f"{where}.norm: the universal patch's budget is its area, not {norm!r}"
            )
        norm = "patch"
    else:
        norm = str(norm or "linf").lower()
        if norm not in ("linf", "l2"):
            raise ConfigError(f"{where}.norm: uap supports linf and l2, got {norm!r}")
    if eps is None:
        raise ConfigError(f"{where}: no eps grid (set 'eps' at the top or on the attack)")
    ascale = a.get("eps_scale", 1 if norm == "patch" else scale)
    try:
        grid = parse_eps(eps, norm, float(ascale))
    except SpecError as e:
        raise ConfigError(f"{where}.eps: {e}") from e
    if norm == "patch":
        bad = [e for e in grid if not 0 < e < 1]
        if bad:
            raise ConfigError(
                f"{where}.eps: universal patch budgets are fractions of the image area in (0, 1), "
                f"e.g. [0.02, 0.05, 0.1, 0.2]; got {bad[0]:g}"
            )
    options = a.get("options", {}) or {}
    if not isinstance(options, Mapping):
        raise ConfigError(f"{where}.options: must be a mapping of constructor keywords")
    for k in _OWNED[name]:
        if k in options:
            raise ConfigError(
                f"{where}.options.{k}: set by the sweep (the budget grid eps, or fit: epochs / "
                "batch_size); leave it out"
            )
    fit = a.get("fit", {}) or {}
    if not isinstance(fit, Mapping):
        raise ConfigError(f"{where}.fit: must be a mapping with {', '.join(sorted(_FIT_KEYS))}")
    _keys(fit, _FIT_KEYS, f"{where}.fit")
    fit = {**FIT_DEFAULTS, **fit}
    for k in ("epochs", "batch_size", "num_examples"):
        _int(fit[k], f"{where}.fit.{k}", lo=1, none_ok=k == "num_examples")
    if fit["num_examples"] is not None and fit["num_examples"] < fit["batch_size"]:
        raise ConfigError(
            f"{where}.fit: num_examples={fit['num_examples']} is below batch_size="
            f"{fit['batch_size']} (every fit step takes a full batch); lower batch_size"
        )
    if not isinstance(fit["split"], str) or not fit["split"].strip():
        raise ConfigError(
            f"{where}.fit.split: must be a split name such as train, got {fit['split']!r}"
        )
    fit["split"] = fit["split"].strip().lower()
    entry = {
        "label": name if norm in ("linf", "patch") else f"{name}-{norm}",
        "attack": name,
        "norm": norm,
        "eps": grid,
        "num_steps": None,
        "restarts": None,
        "options": dict(options),
        "black_box": False,
        "cascade": False,
        "fit": fit,
    }
    for e in grid:
        try:
            build(entry, e, (1, 1))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{where}: {err}") from err
    return entry


def check_config(cfg: Any) -> None:
    """Universal attacks meet no detectors, and data with the fit split (a segmentation model is
    refused before, by :func:`jaxadv.sweep.segmentation.check_tasks`: they are classifier attacks).

    Raises:
        ConfigError: naming the entry, before anything is loaded or fitted.
    """
    from jaxadv.sweep.config import ConfigError

    d = cfg.data
    uni = [(i, a) for i, a in enumerate(d["attacks"]) if is_universal(a)]
    if not uni:
        return
    i, a = uni[0]
    if d.get("surrogate"):
        raise ConfigError(
            f"attacks[{i}]: the universal attack {a['attack']!r} is fitted on its target, not "
            "crafted on a surrogate; put surrogate: on the other attacks' entries instead of the "
            "top level"
        )
    if d.get("detectors"):
        raise ConfigError(f"attacks[{i}]: detectors are not scored on universal cells; drop one")
    for i, a in uni:
        split = a["fit"]["split"]
        for j, ds in enumerate(d["datasets"]):
            where = f"attacks[{i}].fit.split: datasets[{j}] ({ds['data']!r})"
            if split == ds["split"]:
                raise ConfigError(
                    f"{where}: the fit split {split!r} is the split evaluated; fit on another one"
                )
            spec = cfg.resolve(ds["data"])
            p = pathlib.Path(spec)
            if spec == "default":
                raise ConfigError(
                    f"{where}: the embedded default holds the test split only, so nothing to fit "
                    "on; give a MedMNIST .npz with a train split"
                )
            if p.is_dir():
                raise ConfigError(f"{where}: an image folder has one split; give a MedMNIST .npz")
            if p.suffix == ".npz" and p.is_file():
                from jaxadv.data._npz import open_npz

                try:
                    _, keys = open_npz(p)
                except (OSError, ValueError) as e:
                    raise ConfigError(f"{where}: {e}") from e
                if f"{split}_images" not in keys:
                    have = sorted(k[: -len("_images")] for k in keys if k.endswith("_images"))
                    raise ConfigError(
                        f"{where}: has no {split!r} split (it holds {', '.join(have) or 'none'}); "
                        "set fit: {split: ...}"
                    )


# ----------------------------------------------------------------------------- attacks
def patch_scale(entry: Mapping[str, Any], area: float, hw: Sequence[int]) -> float:
    """The patch side over the shorter image side that covers ``area`` of an ``H x W`` image."""
    frac = math.pi / 4 if entry["options"].get("shape", "circle") == "circle" else 1.0
    h, w = int(hw[0]), int(hw[1])
    return math.sqrt(area * h * w / frac) / min(h, w)


def build(entry: Mapping[str, Any], budget: float, hw: Sequence[int]) -> Any:
    """The unfitted attack of ``entry`` at one budget for images of size ``hw``."""
    import jaxadv

    opts, fit = dict(entry["options"]), entry["fit"]
    run = {"batch_size": fit["batch_size"], "num_epochs": fit["epochs"]}
    if entry["attack"] == "patch":
        s = patch_scale(entry, budget, hw)
        if s > 1:
            raise ValueError(
                f"a patch of area {budget:g} is larger than the image ({opts.get('shape', 'circle')} "
                f"patch side {s:.3g} x the shorter side); use a smaller area"
            )
        return jaxadv.AdversarialPatch(**opts, scale_min=s, scale_max=s, **run)
    threat = {"linf": jaxadv.LinfBall, "l2": jaxadv.L2Ball}[entry["norm"]](eps=budget)
    return jaxadv.UniversalPerturbation(threat=threat, **opts, **run)


def indices(entry: Mapping[str, Any], ds: Any, idx: np.ndarray) -> np.ndarray:
    """The cell's indices; a patch keeps the images whose label is not its target."""
    if entry["attack"] != "patch":
        return idx
    target = int(entry["options"].get("target", 1))
    keep = idx[np.asarray(ds.labels())[idx] != target]
    if not keep.size:
        raise ValueError(f"no evaluated image has a label other than the patch's target {target}")
    return keep


def _load(path: pathlib.Path) -> Any:
    """A saved fit, or ``None`` (with a warning) when the file cannot be read: it is refitted."""
    from jaxadv.attacks.universal import load_fitted

    try:
        return load_fitted(path)
    except Exception as e:  # noqa: BLE001 - a damaged fit file is refitted, never fatal
        log.warning("cannot read the saved fit %s (%s); fitting again", path, e)
        return None


def _save(fitted: Any, path: pathlib.Path) -> None:
    """``fitted.save`` under a temporary name, then renamed (a killed run leaves no half file)."""
    import os

    tmp = path.with_name(path.stem + ".tmp.npz")
    fitted.save(tmp)
    os.replace(tmp.with_suffix(".png"), path.with_suffix(".png"))
    os.replace(tmp, path)


def _image(fitted: Any) -> np.ndarray:
    """The fitted perturbation as a ``[0, 1]`` image: the patch (white outside its mask), or
    ``0.5 + delta / (2 max |delta|)``."""
    if hasattr(fitted, "patch"):
        m = np.asarray(fitted.mask)[..., None]
        return np.asarray(fitted.patch) * m + (1 - m)
    d = np.asarray(fitted.delta)
    return 0.5 + 0.5 * d / max(float(np.max(np.abs(d))), 1e-12)


def evaluate_cell(
    cell: Any,
    model: Any,
    ds: Any,
    idx: np.ndarray,
    *,
    resolve: Callable[[str], str],
    fits_dir: pathlib.Path,
    mesh: Any,
    batch_size: int,
    num_adv: int,
    progress: Callable[[int, int], None],
    stop: Callable[[], bool],
) -> tuple[Any, dict[str, Any]]:
    """Fit (or load) one perturbation per budget and evaluate each on ``idx`` of ``ds``; the
    evaluations joined along the budget axis, and the record's extra fields."""
    import dataclasses

    import jax

    from jaxadv.engine import EvaluationStopped, evaluate
    from jaxadv.sweep.storage import encode_images
    from jaxadv.vocab import load_dataset

    a, fit = cell.attack, cell.attack["fit"]
    dse = cell.dataset
    train = load_dataset(
        resolve(dse["data"]), fit["split"], dse.get("image_size"), dse.get("channels")
    )
    if fit["num_examples"] is not None and fit["num_examples"] < len(train):
        train = train.get(np.arange(fit["num_examples"]))
    n_fit = len(train)
    key = jax.random.key(cell.seed)
    fits_dir.mkdir(parents=True, exist_ok=True)
    evs, fits, images = [], [], []
    last = int(np.argmax(a["eps"]))
    for j, b in enumerate(a["eps"]):
        path = fits_dir / f"{cell.id}.{cell.hash}.b{j}.npz"
        t0, fitted = time.perf_counter(), None
        if b and path.exists():
            fitted = _load(path)
        refit = bool(b) and fitted is None
        if refit:
            writer = jax.process_index() == 0  # every process fits the same (same key); one writes
            ckpt = path.with_name(path.stem + ".ckpt.npz")
            attack = build(a, b, ds.image_shape[:2])
            fitted = attack.fit(
                jax.random.fold_in(key, j),
                model,
                train,
                checkpoint=ckpt if writer else None,
                mesh=mesh,
            )
            if writer:
                _save(fitted, path)
                ckpt.unlink(missing_ok=True)
        fit_s = time.perf_counter() - t0
        if b:
            what = f"fitted on {n_fit} {fit['split']} images" if refit else f"loaded from {path}"
            log.info("%s: budget %g %s (%.1fs)", cell.id, b, what, fit_s)
        if stop():
            raise EvaluationStopped()
        evs.append(
            evaluate(
                fitted,
                model,
                ds,
                [b],
                key=key,
                mesh=mesh,
                batch_size=batch_size,
                indices=idx,
                num_adv=num_adv if j == last else 0,
                progress=progress,
                stop=stop,
            )
        )
        info = {"budget": float(b), "file": f"fits/{path.name}" if b else None}
        info.update(fitted=refit, fit_seconds=round(fit_s, 3) if refit else None)
        if fitted is not None and a["attack"] == "patch":
            info["scale"] = float(fitted.attack.scale_min)
        fits.append(info)
        if fitted is not None:
            images.append(_image(fitted))
    ev = dataclasses.replace(
        evs[last],
        eps=np.asarray(a["eps"], np.float64),
        per_eps={k: np.concatenate([e.per_eps[k] for e in evs]) for k in evs[last].per_eps},
        adv_index=last,
        seconds=sum(e.seconds for e in evs),
        batches=sum(e.batches for e in evs),
    )
    extra: dict[str, Any] = {
        "universal": {
            "fit_split": fit["split"],
            "fit_examples": n_fit,
            "fits": fits,
            "images": encode_images(np.stack(images)) if images else None,
        }
    }
    if a["attack"] == "patch":
        t = int(a["options"].get("target", 1))
        extra["universal"]["target"] = t
        extra["rule"] = f"patch: classified as {t} (images of other classes)"
    return ev, extra


# ----------------------------------------------------------------------------- report
def update_rows(rec: Mapping[str, Any], rows: list[dict[str, Any]], success: np.ndarray) -> None:
    """``targeted_success`` (patch) and the fit columns of a universal cell's rows."""
    u = rec.get("universal")
    if not isinstance(u, Mapping):
        return
    fits = u.get("fits") or []
    patch = rec["cell"]["attack"]["norm"] == "patch"
    for j, row in enumerate(rows):
        if patch:
            row["target"] = u.get("target")
            row["targeted_success"] = float(np.mean(success[j])) if success.shape[1] else math.nan
        row["fit_examples"] = u.get("fit_examples")
        if j < len(fits) and isinstance(fits[j], Mapping):
            row["fit_seconds"] = fits[j].get("fit_seconds")


TEXT = (
    "Fitted once per model, budget and seed on the fit split, applied to the evaluated split. "
    "Patch: budget = fraction of the image area; targeted_success = fraction of the held-out images "
    "of other classes classified as the target (Finlayson's winp). UAP: attack_success_rate = "
    "fraction of the clean-correct images misclassified. fit_seconds: empty when the fit was loaded."
)
COLUMNS = [
    "model",
    "dataset",
    "attack",
    "seed",
    "eps_label",
    "target",
    "num_examples",
    "clean_accuracy",
    "robust_accuracy",
    "attack_success_rate",
    "targeted_success",
    "fit_examples",
    "fit_seconds",
]


def report_parts(cells: Sequence[Any], rows: Sequence[dict]) -> tuple[list, list]:
    """``(figures, blocks)`` for the report: a table of the universal cells, success vs budget
    per data set, and the fitted patches / perturbations of each attack's first seed."""
    from jaxadv.report import figure, figure_png
    from jaxadv.sweep.storage import decode_images

    mine = [c for c in cells if getattr(c, "universal", None)]
    if not mine:
        return [], []
    urows = [r for r in rows if any(r["cell"] == c.id for c in mine)]
    cols = [c for c in COLUMNS if any(c in r for r in urows)]
    figs = []
    for ds in dict.fromkeys(c.dataset for c in mine):
        here = [c for c in mine if c.dataset == ds]
        kinds = list(dict.fromkeys(c.norm for c in here))
        fig, axes = figure(1, len(kinds), figsize=(4.6 * len(kinds), 3.6))
        for ax, norm in zip(axes[0], kinds, strict=True):
            metric = "targeted_success" if norm == "patch" else "attack_success_rate"
            for key in dict.fromkeys((c.model, c.attack) for c in here if c.norm == norm):
                runs = [c for c in here if (c.model, c.attack) == key]
                x = np.asarray(runs[0].eps) * (100 if norm == "patch" else 1)
                x = x * 255 if norm == "linf" else x
                y = np.asarray([[s[metric] for s in c.summary] for c in runs], np.float64)
                o = np.argsort(x)
                ax.plot(x[o], np.nanmean(y, 0)[o], marker="o", label=f"{key[0]} / {key[1]}")
            xl = {"patch": "patch area (% of image)", "linf": "eps (× 1/255, L∞)"}
            ax.set_xlabel(xl.get(norm, "eps (L2)"))
            ax.set_ylabel("targeted success" if norm == "patch" else "attack success rate")
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            ax.set_title(f"universal {'patch' if norm == 'patch' else 'UAP'} on {ds}", fontsize=9)
        fig.tight_layout()
        figs.append(("universal", f"universal_success_{ds}.png", figure_png(fig)))
    seen = set()
    for c in mine:
        if (c.model, c.dataset, c.attack) in seen or not c.universal.get("images"):
            continue
        seen.add((c.model, c.dataset, c.attack))
        imgs = decode_images(c.universal["images"])
        budgets = [f["budget"] for f in c.universal["fits"] if f.get("file")]
        fig, axes = figure(1, imgs.shape[0], figsize=(1.9 * imgs.shape[0] + 0.4, 2.3))
        for ax, img, b in zip(axes[0], imgs, budgets, strict=True):
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            lab = f"{100 * b:.3g}% area" if c.norm == "patch" else f"eps {b:.4g}"
            ax.set_title(lab, fontsize=7)
        fig.suptitle(f"{c.model} / {c.dataset} / {c.attack}, seed {c.seed}", fontsize=8)
        fig.tight_layout()
        name = f"universal_fitted_{c.model}__{c.dataset}__{c.attack}.png"
        figs.append(("universal", name, figure_png(fig, dpi=110)))
    blocks = [
        ("Universal attacks (fitted on a training split)", 2, TEXT, urows, cols, ""),
        (
            "Universal attacks: success vs budget and the fitted perturbations",
            3,
            "",
            [],
            [],
            "universal",
        ),
    ]
    return figs, blocks


__all__ = [
    "COLUMNS",
    "FIT_DEFAULTS",
    "attack_entry",
    "build",
    "check_config",
    "evaluate_cell",
    "indices",
    "is_area",
    "is_universal",
    "patch_scale",
    "report_parts",
    "universal_name",
    "update_rows",
]
