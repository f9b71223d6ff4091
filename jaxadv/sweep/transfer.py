"""Transfer attacks in sweeps: the ``surrogate:`` config key, transfer cells, and the report's
transfer matrices (rows surrogates, columns targets).

``surrogate:`` lists the models the attacker crafts on; each is a model label of the config's
``models:``, or an ensemble of them (averaged logits, :class:`jaxadv.surrogate.Ensemble`)::

    models: [small_cnn_clean, small_cnn_pgdat]
    surrogate: all                    # every model of the config: the full square matrix
    surrogate: [small_cnn_clean, {ensemble: [small_cnn_clean, small_cnn_pgdat], label: both}]

Given at the top level it applies to every attack; given on an attack entry it applies to that
attack only (and overrides the top level). An attack with surrogates yields, per target model of
``models:``, one cell per surrogate (crafted on the surrogate, evaluated on the target by
:func:`jaxadv.evaluate` with :class:`jaxadv.surrogate.Transfer`), id
``target__data__attack__from-SURROGATE__seedS``; the diagonal (surrogate == target) equals the
white-box cell but for the query count. Configs without ``surrogate:`` keep their hashes and ids.

Refused before anything runs (one line each): a surrogate that names no model of the config;
black-box attacks (they read only outputs: craft them on the target itself, or use a gradient
attack); segmentation attacks or models; multi-label rules. Refused before the first cell: a
surrogate whose input shape or class count does not match its target's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

KEY = "surrogate"
_ENTRY_KEYS = {"ensemble", "label"}


# ----------------------------------------------------------------------------- config
def parse(raw: Any, models: Sequence[dict], where: str, *, error: type) -> list[dict]:
    """Normalise a ``surrogate:`` value into ``[{"label", "models": [model entries]}]``.

    A string is one surrogate (``all``: every model of the config, unless a model is labelled
    ``all``); a list holds surrogates, each a model label, a list of labels (an ensemble) or a
    mapping ``{ensemble: [labels], label: name}``.
    """
    from jaxadv.sweep._fields import _label, _unique

    by_label = {m["label"]: m for m in models}
    if raw == "all" and "all" not in by_label:
        raw = list(by_label)
    items = [raw] if isinstance(raw, (str, Mapping)) else raw
    if not isinstance(items, list) or not items:
        raise error(
            f"{where}: must be a model label, 'all', or a non-empty list of model labels and "
            f"ensembles, got {raw!r}"
        )
    out = []
    for i, s in enumerate(items):
        at = f"{where}[{i}]"
        label = None
        if isinstance(s, Mapping):
            unknown = sorted(set(s) - _ENTRY_KEYS)
            if unknown or "ensemble" not in s:
                raise error(
                    f"{at}: an ensemble is a mapping {{ensemble: [model labels], label: name}}; "
                    f"got keys {', '.join(sorted(s)) or 'none'}"
                )
            label, s = s.get("label"), s["ensemble"]
            s = [s] if isinstance(s, str) else s
        names = [s] if isinstance(s, str) else s
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise error(f"{at}: must be a model label or a non-empty list of them, got {s!r}")
        for n in names:
            if n not in by_label:
                raise error(
                    f"{at}: {n!r} is not a model label of this config ({', '.join(by_label)}); "
                    "a surrogate must be listed under models: too"
                )
        if len(set(names)) != len(names):
            raise error(f"{at}: the ensemble repeats a model ({', '.join(names)})")
        if label is None:
            label = names[0] if len(names) == 1 else "ens-" + "-".join(names)
        if not isinstance(label, str) or not label.strip():
            raise error(f"{at}.label: must be a non-empty string, got {label!r}")
        out.append({"label": _label(label), "models": [dict(by_label[n]) for n in names]})
    _unique(out, where)  # the config's one rule for labels (case-insensitive, file-safe)
    return out


def check(data: Mapping[str, Any], *, error: type) -> None:
    """Refuse what transfer cannot mean: black-box, segmentation or multi-label attacks with
    surrogates (``data``: the normalised config)."""
    from jaxadv.sweep import segmentation as seg
    from jaxadv.vocab import lookup_attack

    top = KEY in data
    for i, a in enumerate(data["attacks"]):
        if (KEY not in a and not top) or "fit" in a:  # universal: refused by sweep/universal.py
            continue
        where = f"attacks[{i}] ({a['label']})" + (
            "" if KEY in a else " with the top-level surrogate"
        )
        if seg.is_dense(a):
            raise error(
                f"{where}: transfer sweeps are for classifiers; a segmentation attack has no "
                "surrogate (drop surrogate: or run it in a separate sweep)"
            )
        if lookup_attack(a["attack"]).oracle != "gradient" or a.get("black_box"):
            raise error(
                f"{where}: a black-box attack reads only the target's outputs, so crafting it on "
                "a surrogate is not a transfer attack; give surrogate: per attack entry to the "
                "gradient attacks only (pgd, mifgsm, ...)"
            )
        if a.get("multilabel") is not None:
            raise error(f"{where}: multi-label rules are not supported with a surrogate")


def check_models(cfg: Any, *, error: type) -> None:
    """Segmentation models cannot be surrogates or transfer targets."""
    from jaxadv.cli_segmentation import is_segmentation_model

    if not any(KEY in a for a in cfg.data["attacks"]) and KEY not in cfg.data:
        return
    for i, m in enumerate(cfg.data["models"]):
        if is_segmentation_model(cfg.resolve(m["model"])):
            raise error(
                f"models[{i}] ({m['label']}) is a segmentation model; surrogate: is for "
                "classifiers (run segmentation models in a separate sweep)"
            )


def for_attack(data: Mapping[str, Any], attack: Mapping[str, Any]) -> list[dict | None]:
    """The surrogates of an attack entry (its own, else the config's); ``[None]``: white box."""
    return list(attack.get(KEY) or data.get(KEY) or [None])


def cell_id(model: str, dataset: str, attack: str, seed: Any, surrogate: Any = None) -> str:
    """A cell's id from its labels (``surrogate``: the surrogate entry or its label, or None)."""
    if isinstance(surrogate, Mapping):
        surrogate = surrogate.get("label")
    via = f"__from-{surrogate}" if surrogate else ""
    return f"{model}__{dataset}__{attack}{via}__seed{seed}"


def hashed(entry: Mapping[str, Any], fps: Mapping[str, Any]) -> dict[str, Any]:
    """What of a surrogate entry decides a cell's results: its models and their files' content."""
    return {**entry, "content": [fps.get(m["model"]) for m in entry["models"]]}


def check_record(c: Mapping[str, Any]) -> str | None:
    """``None`` when a cell record's ``cell.surrogate`` (if any) is well formed."""
    from jaxadv.sweep.config import is_label

    s = c.get(KEY)
    if s is None:
        return None
    if (
        not isinstance(s, Mapping)
        or not is_label(s.get("label"))
        or not isinstance(s.get("models"), list)
        or not s["models"]
        or not all(isinstance(m, Mapping) and is_label(m.get("label")) for m in s["models"])
    ):
        return "cell.surrogate must be an object {label, models: [{label, model}]}"
    return None


# ----------------------------------------------------------------------------- running
def load(entry: Mapping[str, Any], load_model: Any, cache: dict) -> Any:
    """The surrogate model (an :class:`~jaxadv.surrogate.Ensemble` for several), loaded once per
    model file through ``load_model(model_entry)``."""
    from jaxadv.surrogate import as_surrogate

    models = []
    for m in entry["models"]:
        if m["model"] not in cache:
            cache[m["model"]] = load_model(m)
        models.append(cache[m["model"]])
    return models[0] if len(models) == 1 else as_surrogate(models)


def check_pair(cell: Any, surrogate: Any, target: Any, image_shape: Sequence[int]) -> str | None:
    """``None`` when surrogate and target take images ``(H, W, K)`` and agree on the class count;
    else the reason (shapes only are traced)."""
    import jax

    from jaxadv.surrogate import check_pair as check

    x = jax.ShapeDtypeStruct((1, *(int(v) for v in image_shape)), np.float32)
    try:
        check(surrogate, target, x)
    except ValueError as e:
        return (
            f"cell {cell.id}: surrogate {cell.surrogate['label']!r} and target "
            f"{cell.model['label']!r}: {e}"
        )
    return None


# ----------------------------------------------------------------------------- report
def label(cell: Any) -> str:
    """The surrogate label of a decoded report cell ("" for a white-box cell)."""
    return getattr(cell, "surrogate", "") or ""


def matrices(cells: Sequence[Any]) -> list[dict[str, Any]]:
    """Long-form transfer-matrix rows: per data set, attack, eps, surrogate and target, the
    target's robust accuracy (mean over seeds; ``seeds``: how many)."""
    groups: dict[tuple, list[float]] = {}
    clean: dict[tuple, list[float]] = {}
    for c in cells:
        if not label(c):
            continue
        for j, e in enumerate(c.eps):
            if e == 0 and max(c.eps) > 0:  # the clean accuracy: the same in every row
                continue
            k = (c.dataset, c.attack, c.norm, e, label(c), c.model)
            groups.setdefault(k, []).append(float((~c.per_eps["success"][j]).mean()))
            clean.setdefault(k, []).append(float(c.clean_correct.mean()))
    from jaxadv.engine.summary import eps_label

    return [
        {
            "dataset": ds,
            "attack": a,
            "norm": norm,
            "eps": e,
            "eps_label": eps_label(norm, e),
            "surrogate": s,
            "target": t,
            "robust_accuracy": float(np.mean(v)),
            "target_clean_accuracy": float(np.mean(clean[(ds, a, norm, e, s, t)])),
            "seeds": len(v),
        }
        for (ds, a, norm, e, s, t), v in groups.items()
    ]


def tables(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[dict], list[str]]]:
    """One table per (data set, attack, eps): ``(heading, rows, columns)``, a row per surrogate
    and a column per target holding the target's robust accuracy."""
    out = []
    for key in dict.fromkeys((r["dataset"], r["attack"], r["eps_label"]) for r in rows):
        mine = [r for r in rows if (r["dataset"], r["attack"], r["eps_label"]) == key]
        targets = list(dict.fromkeys(r["target"] for r in mine))
        table = []
        for s in dict.fromkeys(r["surrogate"] for r in mine):
            row: dict[str, Any] = {"surrogate \\ target": s}
            for r in mine:
                if r["surrogate"] == s:
                    row[r["target"]] = r["robust_accuracy"]
            table.append(row)
        out.append((f"{key[1]} at {key[2]} on {key[0]}", table, ["surrogate \\ target"] + targets))
    return out


def heatmaps(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, bytes]]:
    """One heat-map figure per data set and attack, a panel per eps: ``(name parts, png)``."""
    from jaxadv.report import figure, figure_png

    out = []
    for ds, a in dict.fromkeys((r["dataset"], r["attack"]) for r in rows):
        mine = [r for r in rows if (r["dataset"], r["attack"]) == (ds, a)]
        eps = list(dict.fromkeys(r["eps_label"] for r in mine))
        surr = list(dict.fromkeys(r["surrogate"] for r in mine))
        tgt = list(dict.fromkeys(r["target"] for r in mine))
        # inches: a panel is 0.8 per target plus room for the surrogate names and a colour bar
        lw, bh, pw, ph = 1.8, 1.0, 0.8 * len(tgt), 0.6 * len(surr)
        width, height = len(eps) * (lw + pw) + 1.2, bh + ph + 0.4
        fig, axes = figure(1, len(eps), figsize=(width, height))
        fig.subplots_adjust(
            left=lw / width,
            right=1 - 1.2 / width,
            bottom=bh / height,
            top=1 - 0.4 / height,
            wspace=lw / pw,
        )
        for ax, el in zip(axes[0], eps, strict=True):
            m = np.full((len(surr), len(tgt)), np.nan)
            for r in mine:
                if r["eps_label"] == el:
                    m[surr.index(r["surrogate"]), tgt.index(r["target"])] = r["robust_accuracy"]
            im = ax.imshow(m, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
            for (i, j), v in np.ndenumerate(m):
                if np.isfinite(v):
                    col = "k" if v > 0.6 else "w"  # readable on viridis' light and dark ends
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color=col)
            ax.set_xticks(range(len(tgt)), tgt, rotation=30, ha="right", fontsize=7)
            ax.set_yticks(range(len(surr)), surr, fontsize=7)
            ax.set_xlabel("target", fontsize=8)
            ax.set_ylabel("surrogate", fontsize=8)
            ax.set_title(f"{a} at {el}", fontsize=8)
        cax = fig.add_axes((1 - 1.0 / width, bh / height, 0.15 / width, ph / height))
        fig.colorbar(im, cax=cax, label="target robust accuracy")
        out.append((f"transfer__{a}__{ds}", figure_png(fig)))
    return out


TEXT = (
    "Rows: the surrogate the adversarial examples were crafted on; columns: the target they were "
    "evaluated on; entries: the target's robust accuracy (mean over seeds; lower = the examples "
    "transfer better). The diagonal is the white-box attack."
)
