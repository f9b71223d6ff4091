"""Host-side outputs: run manifests, JSON/CSV writing, plots and image grids.

Plots use matplotlib with the Agg backend (no display needed). Files are written atomically
(temporary file, then ``os.replace``), so an interrupted run never leaves a half-written result.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pathlib
import platform
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxadv._io import write_atomic

atomic_write = write_atomic


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """The short commit of the source tree jaxadv was imported from, when it is a git checkout."""
    here = pathlib.Path(cwd or pathlib.Path(__file__).resolve().parent)
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def manifest(seed: int | None = None, **extra: Any) -> dict[str, Any]:
    """Versions, devices, seed and commit: what every result file carries."""
    import flax
    import jax
    import optax

    import jaxadv

    devs = jax.devices()
    return {
        "jaxadv": jaxadv.__version__,
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "backend": jax.default_backend(),
        "devices": [str(d.device_kind) for d in devs],
        "device_count": len(devs),
        "seed": seed,
        "git_commit": git_commit(),
        **extra,
    }


def _jsonable(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return None if not np.isfinite(f) else f
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    return v


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write(path, json.dumps(_jsonable(obj), indent=2) + "\n")


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> None:
    if not rows:
        atomic_write(path, "")
        return
    cols: list[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _jsonable(r.get(k)) for k in cols})
    atomic_write(path, buf.getvalue())


def format_table(rows: Sequence[Mapping[str, Any]], cols: Sequence[str]) -> str:
    """A plain fixed-width text table."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}" if np.isfinite(v) else "nan"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join([line, sep, *body])


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_curves(
    path: str | os.PathLike,
    curves: Iterable[tuple[str, str, Sequence[float], Sequence[float]]],
    *,
    title: str = "Robust accuracy vs eps",
    xscale: float = 255.0,
    xlabel: str = "eps (× 1/255)",
) -> None:
    """One panel per model, one line per attack: ``curves`` yields (model, attack, eps, acc)."""
    plt = _plt()
    by_model: dict[str, list[tuple[str, Sequence[float], Sequence[float]]]] = {}
    for model, attack, eps, acc in curves:
        by_model.setdefault(model, []).append((attack, eps, acc))
    n = max(1, len(by_model))
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 3.6), squeeze=False)
    for ax, (model, lines) in zip(axes[0], by_model.items(), strict=False):
        for attack, eps, acc in lines:
            ax.plot(np.asarray(eps) * xscale, acc, marker="o", label=attack)
        ax.set_title(model)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("robust accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)


def image_grid(
    path: str | os.PathLike,
    clean: np.ndarray,
    adv: np.ndarray,
    *,
    labels: Sequence[str] | None = None,
    amplify: float | None = None,
    title: str = "",
) -> None:
    """Rows: clean, adversarial, amplified perturbation (centred at grey)."""
    plt = _plt()
    clean, adv = np.asarray(clean), np.asarray(adv)
    n = clean.shape[0]
    delta = adv - clean
    if amplify is None:
        m = float(np.abs(delta).max())
        amplify = 0.5 / m if m > 0 else 1.0
    pert = np.clip(0.5 + amplify * delta, 0, 1)
    fig, axes = plt.subplots(3, n, figsize=(1.6 * n, 5.2), squeeze=False)
    rows = [("clean", clean), ("adversarial", adv), (f"perturbation ×{amplify:.0f}", pert)]
    for r, (name, imgs) in enumerate(rows):
        for i in range(n):
            ax = axes[r, i]
            img = imgs[i]
            if img.shape[-1] == 1:
                ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(np.clip(img, 0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(name, fontsize=8)
            if r == 0 and labels is not None:
                ax.set_title(labels[i], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)


def _save_fig(fig: Any, path: str | os.PathLike) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write(path, buf.getvalue())
