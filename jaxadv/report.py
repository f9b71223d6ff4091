"""The report toolkit: run manifests, JSON/CSV/JSONL writers, text/Markdown/HTML tables, plots.

The one home of every writer, table and plot that ``jaxadv demo``, ``jaxadv attack`` and the sweep
report (:mod:`jaxadv.sweep.report`) use. It imports no device code (no attacks, no runner), and
never touches global state: figures are :class:`matplotlib.figure.Figure` objects drawn on their
own Agg canvas, so importing jaxadv never switches the matplotlib backend (and pyplot is never
imported). Files are written atomically (temporary file, fsync, rename), so an interrupted run
never leaves a half-written result; :func:`write_in` also refuses a file name that would leave its
folder.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
import pathlib
import platform
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxadv._io import path_inside, write_atomic

atomic_write = write_atomic


# ----------------------------------------------------------------------------- manifest
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


# ----------------------------------------------------------------------------- writers
def jsonable(v: Any) -> Any:
    """``v`` as plain JSON data: numpy scalars and arrays to Python, non-finite floats to null."""
    if isinstance(v, Mapping):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return None if not np.isfinite(f) else f
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, np.ndarray):
        return jsonable(v.tolist())
    return v


_jsonable = jsonable  # older name


def columns(rows: Sequence[Mapping[str, Any]], first: Sequence[str] = ()) -> list[str]:
    """``first``, then every other key of ``rows`` in order of appearance."""
    cols = list(first)
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    return cols


def csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """CSV with a header of every key of ``rows`` (empty string for no rows)."""
    if not rows:
        return ""
    cols = columns(rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: jsonable(r.get(k)) for k in cols})
    return buf.getvalue()


def jsonl_text(rows: Iterable[Mapping[str, Any]]) -> str:
    """One JSON object per line (non-finite floats as null)."""
    return "".join(json.dumps(jsonable(r), allow_nan=False) + "\n" for r in rows)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write(path, json.dumps(jsonable(obj), indent=2) + "\n")


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> None:
    atomic_write(path, csv_text(rows))


def write_in(folder: str | os.PathLike, name: str, data: str | bytes) -> pathlib.Path:
    """Write ``folder/name`` atomically; ``name`` must be a plain file name that stays inside
    ``folder`` (see :func:`jaxadv._io.path_inside`).

    Raises:
        jaxadv._io.UnsafePathError: an unsafe name or a link out of ``folder``.
        OSError: the folder is not writable.
    """
    path = path_inside(folder, name)
    atomic_write(path, data)
    return path


# ----------------------------------------------------------------------------- tables
def fmt_value(v: Any, *, digits: int = 4) -> str:
    """A table cell: floats to ``digits`` significant digits, NaN/None as an en dash."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        return "–" if not math.isfinite(v) else f"{float(v):.{digits}g}"
    if v is None:
        return "–"
    return str(v)


def format_table(rows: Sequence[Mapping[str, Any]], cols: Sequence[str]) -> str:
    """A plain fixed-width text table (for terminals)."""

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


def md_table(rows: Sequence[Mapping[str, Any]], cols: Sequence[str]) -> str:
    """A Markdown table (``|`` and line breaks in values escaped)."""
    if not rows:
        return "_(none)_\n"

    def cell(v: Any) -> str:
        return fmt_value(v).replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(out) + "\n"


def html_table(rows: Sequence[Mapping[str, Any]], cols: Sequence[str]) -> str:
    """An HTML table inside a ``div.scroll`` that scrolls sideways, so a wide table never makes
    the page wider than the window (see :data:`HTML_CSS`). Every value is escaped."""
    if not rows:
        return "<p><em>(none)</em></p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(fmt_value(r.get(c)))}</td>" for c in cols) + "</tr>"
        for r in rows
    )
    return (
        f"<div class='scroll'><table><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table></div>"
    )


#: Page style of HTML reports: tables scroll inside their container, long words and code wrap.
HTML_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
.scroll{max-width:100%;overflow-x:auto;margin:0.5em 0 1.5em}
table{border-collapse:collapse;font-size:0.85em}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
p,li,td{overflow-wrap:anywhere}
pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#f8f8f8;padding:0.5em}
img{max-width:100%;margin:0.5em 0}code{background:#f4f4f4;padding:1px 4px}
.warn{color:#a40;font-weight:bold}
"""


# ----------------------------------------------------------------------------- figures
def figure(
    nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] = (4.6, 3.6)
) -> tuple[Any, np.ndarray]:
    """A new figure on its own Agg canvas and its ``axes[nrows, ncols]`` (no pyplot, no global
    backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def figure_png(fig: Any, *, dpi: int = 100) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def plot_curves(
    path: str | os.PathLike,
    curves: Iterable[tuple[str, str, Sequence[float], Sequence[float]]],
    *,
    title: str = "Robust accuracy vs eps",
    xscale: float = 255.0,
    xlabel: str = "eps (× 1/255)",
) -> None:
    """One panel per model, one line per attack: ``curves`` yields (model, attack, eps, acc)."""
    by_model: dict[str, list[tuple[str, Sequence[float], Sequence[float]]]] = {}
    for model, attack, eps, acc in curves:
        by_model.setdefault(model, []).append((attack, eps, acc))
    n = max(1, len(by_model))
    fig, axes = figure(1, n, figsize=(4.5 * n, 3.6))
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
    atomic_write(path, figure_png(fig, dpi=110))


def image_grid_png(
    clean: np.ndarray,
    adv: np.ndarray,
    *,
    labels: Sequence[str] | None = None,
    amplify: float | None = None,
    title: str = "",
    field: bool = False,
) -> bytes:
    """PNG of a grid with rows clean, adversarial, amplified perturbation (centred at grey).

    ``field``: the third row is the multiplicative field of a bias-field attack instead,
    ``log(adv / clean)`` (mean over channels; blank where the clean pixel is below 4/255, where
    the ratio says nothing), drawn red (brighter) / blue (darker) on a symmetric scale."""
    clean, adv = np.asarray(clean), np.asarray(adv)
    n = clean.shape[0]
    delta = adv - clean
    if amplify is None:
        m = float(np.abs(delta).max()) if delta.size else 0.0
        amplify = 0.5 / m if m > 0 else 1.0
    pert = np.clip(0.5 + amplify * delta, 0, 1)
    third = f"perturbation ×{amplify:.0f}"
    if field:
        logb = log_field(clean, adv)[..., None]
        lim = float(np.nanmax(np.abs(logb))) if np.isfinite(logb).any() else 0.0
        lim = lim if lim > 0 else 1.0
        pert, third = logb, f"log field ±{lim:.2g}"
    fig, axes = figure(3, max(n, 1), figsize=(1.6 * max(n, 1), 5.2))
    rows = [("clean", clean), ("adversarial", adv), (third, pert)]
    for r, (name, imgs) in enumerate(rows):
        for i in range(n):
            ax = axes[r, i]
            img = imgs[i]
            if field and r == 2:
                ax.imshow(img[..., 0], cmap="RdBu_r", vmin=-lim, vmax=lim)
            elif img.shape[-1] == 1:
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
    return figure_png(fig, dpi=110)


def log_field(clean: np.ndarray, adv: np.ndarray, floor: float = 4 / 255) -> np.ndarray:
    """``log(adv / clean)`` ``[n, H, W]`` (mean over channels): the multiplicative field of a
    bias-field attack, seen in its images; NaN where a clean pixel is below ``floor``."""
    clean, adv = np.asarray(clean, np.float64), np.asarray(adv, np.float64)
    lit = clean >= floor
    ratio = np.where(lit, adv, 1.0) / np.where(lit, clean, 1.0)
    return np.where(lit.all(-1), np.log(np.maximum(ratio, 1e-6)).mean(-1), np.nan)


def image_grid(path: str | os.PathLike, clean: np.ndarray, adv: np.ndarray, **kw: Any) -> None:
    """:func:`image_grid_png` written to ``path``."""
    atomic_write(path, image_grid_png(clean, adv, **kw))


__all__ = [
    "HTML_CSS",
    "atomic_write",
    "columns",
    "csv_text",
    "figure",
    "figure_png",
    "fmt_value",
    "format_table",
    "git_commit",
    "html_table",
    "image_grid",
    "image_grid_png",
    "jsonable",
    "jsonl_text",
    "log_field",
    "manifest",
    "md_table",
    "plot_curves",
    "write_csv",
    "write_in",
    "write_json",
]
