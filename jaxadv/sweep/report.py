"""Reports of a sweep folder: a self-contained HTML page, Markdown, CSV and JSONL.

``write_report(DIR)`` writes into ``DIR/report/``:

* ``report.html``: everything below with the figures embedded as base64 PNG (one file to share);
* ``report.md`` plus the ``*.png`` figures it links to;
* ``results.csv`` / ``results.jsonl``: one row per cell and eps (accuracies, norms, SSIM, queries);
* ``examples.jsonl``: one line per cell and example, with the per-eps success, norm and queries;
* ``worst_case.csv``: robust accuracy under the worst case over attacks (and seeds) per model, data
  set, threat model and eps, with how many examples each attack alone broke;
* ``worst_case_examples.csv``: per example, whether it survived every attack and which broke it.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import html
import io
import json
import math
import os
import pathlib
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxadv import report as _out
from jaxadv.engine import summary as _summary
from jaxadv.engine.summary import PER_EXAMPLE, eps_label
from jaxadv.sweep.config import SweepConfig, expand
from jaxadv.sweep.storage import SweepDir, SweepError, decode_array, decode_images, write_atomic


@dataclasses.dataclass
class CellData:
    """A finished cell's results as numpy arrays (``[E, N]`` per eps, ``[N]`` per example)."""

    id: str
    model: str
    dataset: str
    attack: str
    norm: str
    seed: int
    eps: list[float]
    black_box: bool
    indices: np.ndarray
    labels: np.ndarray
    clean_correct: np.ndarray
    per_eps: dict[str, np.ndarray]
    summary: list[dict[str, Any]]
    samples: dict[str, Any] | None
    run: dict[str, Any]


def decode(rec: Mapping[str, Any]) -> CellData:
    c, r = rec["cell"], rec["results"]
    eps = [float(e) for e in c["attack"]["eps"]]
    cc = decode_array(r["clean_correct"], np.bool_)
    per_eps = {k: decode_array(r[k], dt) for k, dt in PER_EXAMPLE.items()}
    labels = decode_array(r["labels"], np.int32)
    binary = rec.get("num_classes") == 2
    return CellData(
        id=c["id"],
        model=c["model"]["label"],
        dataset=c["dataset"]["label"],
        attack=c["attack"]["label"],
        norm=c["attack"]["norm"],
        seed=int(c["seed"]),
        eps=eps,
        black_box=bool(rec.get("black_box", False)),
        indices=decode_array(r["indices"], np.int64),
        labels=labels,
        clean_correct=cc,
        per_eps=per_eps,
        # recomputed from the per-example arrays (the checksummed part of the record)
        summary=_summary.summary_rows(
            eps,
            per_eps,
            cc,
            norm=c["attack"]["norm"],
            labels=labels if binary else None,
            clean_score=decode_array(r["clean_score"], np.float32) if binary else None,
        ),
        samples=rec.get("samples"),
        run=dict(rec.get("run") or {}),
    )


def load_sweep(root: str | os.PathLike) -> tuple[dict[str, Any], list[CellData], list[str]]:
    """The manifest, the finished cells (in grid order) and the ids of missing cells.

    Raises:
        SweepError: no manifest. CorruptResultsError: a corrupt or truncated cell file.
    """
    store = SweepDir(root)
    m = store.read_manifest()
    if m is None:
        raise SweepError(f"{root} is not a sweep folder (no sweep.json); run `jaxadv sweep` first")
    recs = store.load(strict=True)
    order = [c.id for c in expand(SweepConfig(data=m["config"], base_dir="", source="report"))]
    cells = [decode(recs[i]) for i in order if i in recs]
    extra = sorted(set(recs) - set(order))
    cells += [decode(recs[i]) for i in extra]
    missing = [i for i in order if i not in recs]
    return m, cells, missing


# ----------------------------------------------------------------------------- tables
def summary_rows(cells: Sequence[CellData]) -> list[dict[str, Any]]:
    rows = []
    for c in cells:
        for s in c.summary:
            rows.append(
                {
                    "cell": c.id,
                    "model": c.model,
                    "dataset": c.dataset,
                    "attack": c.attack,
                    "norm": c.norm,
                    "seed": c.seed,
                    "black_box": c.black_box,
                    **s,
                }
            )
    return rows


def worst_case(cells: Sequence[CellData]) -> tuple[list[dict], list[dict]]:
    """Worst case over attacks and seeds, per (model, data set, norm, eps), and per example.

    An example counts as robust at ``eps`` only when no attack (under any seed) whose grid holds
    that ``eps`` broke it. Returns ``(rows, example_rows)``.
    """
    groups: dict[tuple[str, str, str], list[CellData]] = {}
    for c in cells:
        groups.setdefault((c.model, c.dataset, c.norm), []).append(c)
    rows, ex_rows = [], []
    for (model, dataset, norm), members in groups.items():
        eps_all = sorted({e for c in members for e in c.eps})
        for e in eps_all:
            broken: dict[int, set[str]] = {}
            label: dict[int, int] = {}
            clean: dict[int, bool] = {}
            idx_sets = []
            per_attack: dict[str, list[float]] = {}
            for c in members:
                if e not in c.eps:
                    continue
                j = c.eps.index(e)
                succ = c.per_eps["success"][j]
                idx_sets.append(set(c.indices.tolist()))
                per_attack.setdefault(c.attack, []).append(float((~succ).mean()))
                for i, s, y, cc in zip(c.indices, succ, c.labels, c.clean_correct, strict=True):
                    i = int(i)
                    label[i], clean[i] = int(y), bool(cc)
                    broken.setdefault(i, set())
                    if s:
                        broken[i].add(c.attack)
            common = sorted(set.intersection(*idx_sets)) if idx_sets else []
            if not common:
                continue
            robust = np.asarray([not broken[i] for i in common])
            row: dict[str, Any] = {
                "model": model,
                "dataset": dataset,
                "norm": norm,
                "eps": e,
                "eps_255": round(e * 255, 3),
                "eps_label": eps_label(norm, e),
                "num_examples": len(common),
                "attacks": len(per_attack),
                "clean_accuracy": float(np.mean([clean[i] for i in common])),
                "worst_case_robust_accuracy": float(robust.mean()),
            }
            for a, accs in per_attack.items():
                row[f"robust_accuracy[{a}]"] = float(np.mean(accs))
                only = sum(1 for i in common if broken[i] == {a} and clean[i])
                row[f"only_broken_by[{a}]"] = only
            rows.append(row)
            for i in common:
                ex_rows.append(
                    {
                        "model": model,
                        "dataset": dataset,
                        "norm": norm,
                        "eps": e,
                        "index": i,
                        "label": label[i],
                        "clean_correct": clean[i],
                        "robust_all": not broken[i],
                        "broken_by": ";".join(sorted(broken[i])),
                    }
                )
    return rows, ex_rows


def example_lines(cells: Sequence[CellData]) -> list[dict[str, Any]]:
    out = []
    for c in cells:
        for n, i in enumerate(c.indices):
            line = {
                "cell": c.id,
                "model": c.model,
                "dataset": c.dataset,
                "attack": c.attack,
                "seed": c.seed,
                "index": int(i),
                "label": int(c.labels[n]),
                "clean_correct": bool(c.clean_correct[n]),
                "eps": c.eps,
            }
            for k, v in c.per_eps.items():
                col = v[:, n]
                line[k] = col.astype(bool).tolist() if k == "success" else col.tolist()
            out.append(line)
    return out


# ----------------------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    _plt().close(fig)
    return buf.getvalue()


def _x(norm: str, eps: Any) -> np.ndarray:
    """Budgets in the unit of the axis: 1/255 for L-inf, as given for the others."""
    e = np.asarray(eps, np.float64)
    return e * 255 if norm == "linf" else e


_XLABEL = {
    "linf": "eps (× 1/255, L∞)",
    "l2": "eps (L2)",
    "l1": "eps (L1)",
    "l0": "changed pixels (L0)",
}


def robustness_figure(cells: Sequence[CellData], wc_rows: Sequence[dict], dataset: str) -> bytes:
    """One panel per model and threat model: robust accuracy vs eps per attack (mean over seeds,
    min-max band) and the worst case over attacks (dashed)."""
    plt = _plt()
    mine_ds = [c for c in cells if c.dataset == dataset]
    panels = list(dict.fromkeys((c.model, c.norm) for c in mine_ds))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    for ax, (model, norm) in zip(axes[0], panels, strict=True):
        mine = [c for c in mine_ds if c.model == model and c.norm == norm]
        for attack in dict.fromkeys(c.attack for c in mine):
            runs = [c for c in mine if c.attack == attack]
            eps = _x(norm, runs[0].eps)
            accs = np.asarray([[s["robust_accuracy"] for s in c.summary] for c in runs])
            order = np.argsort(eps)
            (line,) = ax.plot(eps[order], accs.mean(0)[order], marker="o", label=attack)
            if len(runs) > 1:
                ax.fill_between(
                    eps[order],
                    accs.min(0)[order],
                    accs.max(0)[order],
                    color=line.get_color(),
                    alpha=0.2,
                )
        wc = [r for r in wc_rows if (r["model"], r["dataset"], r["norm"]) == (model, dataset, norm)]
        if wc and max(r["attacks"] for r in wc) > 1:
            ax.plot(
                _x(norm, [r["eps"] for r in wc]),
                [r["worst_case_robust_accuracy"] for r in wc],
                "k--",
                label="worst case",
            )
        ax.set_title(f"{model} on {dataset}", fontsize=9)
        ax.set_xlabel(_XLABEL.get(norm, "eps"))
        ax.set_ylabel("robust accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def queries_figure(cells: Sequence[CellData], dataset: str) -> bytes | None:
    """Success rate (over clean-correct examples) vs queries at the largest eps, black-box cells."""
    bb = [c for c in cells if c.black_box and c.dataset == dataset]
    if not bb:
        return None
    plt = _plt()
    models = list(dict.fromkeys(c.model for c in bb))
    fig, axes = plt.subplots(1, len(models), figsize=(4.6 * len(models), 3.6), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for c in [c for c in bb if c.model == model]:
            j = int(np.argmax(c.eps))
            cc = c.clean_correct
            q = c.per_eps["queries"][j][cc]
            s = c.per_eps["success"][j][cc]
            if q.size == 0:
                continue
            grid = np.unique(np.concatenate([[0], q]))
            rate = [(s & (q <= g)).mean() for g in grid]
            ax.step(
                grid,
                rate,
                where="post",
                label=f"{c.attack} s{c.seed} eps={eps_label(c.norm, c.eps[j])}",
            )
        ax.set_title(f"{model} on {dataset}", fontsize=9)
        ax.set_xlabel("queries")
        ax.set_ylabel("success rate (clean-correct)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def image_grid_png(c: CellData) -> bytes | None:
    if not c.samples:
        return None
    clean = decode_images(c.samples["clean"])
    adv = decode_images(c.samples["adv"])
    idx = decode_array(c.samples["indices"], np.int64)
    j = int(np.argmin(np.abs(np.asarray(c.eps) - float(c.samples["eps"]))))
    succ = dict(zip(c.indices.tolist(), c.per_eps["success"][j].tolist(), strict=True))
    labels = [f"#{i}{' ✗' if succ.get(int(i)) else ''}" for i in idx]
    with tempfile.TemporaryDirectory() as d:
        p = pathlib.Path(d) / "grid.png"
        _out.image_grid(
            p,
            clean,
            adv,
            labels=labels,
            title=f"{c.model} / {c.dataset} / {c.attack} at eps {eps_label(c.norm, c.eps[j])} "
            "(✗: the attack succeeded)",
        )
        return p.read_bytes()


# ----------------------------------------------------------------------------- formatting
def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "–" if not math.isfinite(v) else f"{v:.4g}"
    if v is None:
        return "–"
    return str(v)


def _md_table(rows: Sequence[Mapping[str, Any]], cols: Sequence[str]) -> str:
    if not rows:
        return "_(none)_\n"
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(_fmt(r.get(c)).replace("|", "\\|") for c in cols) + " |")
    return "\n".join(out) + "\n"


def _html_table(rows: Sequence[Mapping[str, Any]], cols: Sequence[str]) -> str:
    if not rows:
        return "<p><em>(none)</em></p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cols(rows: Sequence[Mapping[str, Any]], first: Sequence[str]) -> list[str]:
    cols = list(first)
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    return cols


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.85em}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
img{max-width:100%;margin:0.5em 0}code{background:#f4f4f4;padding:1px 4px}
.warn{color:#a40;font-weight:bold}
"""


# ----------------------------------------------------------------------------- the report
def write_report(root: str | os.PathLike, out: str | os.PathLike | None = None) -> pathlib.Path:
    """Write the HTML/Markdown report and the CSV/JSONL exports of the sweep in ``root``.

    Args:
        root: a sweep folder (``jaxadv sweep`` or ``jaxadv merge`` output).
        out: report folder (default ``root/report``).

    Returns:
        The path of ``report.html``.

    Raises:
        SweepError: ``root`` is not a sweep folder. CorruptResultsError: a damaged cell file.
    """
    manifest, cells, missing = load_sweep(root)
    outdir = pathlib.Path(out) if out is not None else pathlib.Path(root) / "report"
    outdir.mkdir(parents=True, exist_ok=True)

    rows = summary_rows(cells)
    wc_rows, wc_examples = worst_case(cells)
    write_atomic(outdir / "results.csv", _csv(rows))
    write_atomic(outdir / "results.jsonl", _jsonl(rows))
    write_atomic(outdir / "examples.jsonl", _jsonl(example_lines(cells)))
    write_atomic(outdir / "worst_case.csv", _csv(wc_rows))
    write_atomic(outdir / "worst_case_examples.csv", _csv(wc_examples))

    figures: list[tuple[str, str, bytes]] = []  # (section, file name, png)
    datasets = list(dict.fromkeys(c.dataset for c in cells))
    for ds in datasets:
        figures.append(
            ("curves", f"robust_accuracy_{ds}.png", robustness_figure(cells, wc_rows, ds))
        )
        q = queries_figure(cells, ds)
        if q is not None:
            figures.append(("queries", f"success_vs_queries_{ds}.png", q))
    seen = set()
    for c in cells:
        key = (c.model, c.dataset, c.attack)
        if key in seen:
            continue
        png = image_grid_png(c)
        if png is not None:
            seen.add(key)
            figures.append(("images", f"examples_{c.model}__{c.dataset}__{c.attack}.png", png))
    for _, name, png in figures:
        write_atomic(outdir / name, png)

    env = manifest.get("environment") or {}
    cfg = manifest["config"]
    meta_rows = [
        {"field": "name", "value": cfg.get("name")},
        {"field": "description", "value": cfg.get("description") or "–"},
        {"field": "config hash", "value": manifest.get("config_hash")},
        {"field": "config source", "value": manifest.get("config_source")},
        {"field": "cells finished", "value": f"{len(cells)} of {manifest.get('num_cells')}"},
        {"field": "seeds", "value": ", ".join(map(str, cfg.get("seeds", [])))},
        {"field": "git commit", "value": env.get("git_commit") or "unknown"},
    ]
    for k in ("jaxadv", "jax", "flax", "numpy", "python", "platform", "backend", "device_count"):
        meta_rows.append({"field": k, "value": env.get(k)})
    meta_rows.append({"field": "devices", "value": ", ".join(sorted(set(env.get("devices", []))))})
    run_rows = [
        {
            k: r.get(k)
            for k in (
                "started",
                "finished",
                "status",
                "host",
                "process_count",
                "devices",
                "device_kind",
                "batch_size",
                "num_shards",
                "shard_index",
                "resumed_cells",
                "computed_cells",
                "source",
            )
        }
        for r in manifest.get("runs", [])
    ]
    res_cols = [
        "model",
        "dataset",
        "attack",
        "seed",
        "eps_label",
        "clean_accuracy",
        "robust_accuracy",
        "attack_success_rate",
    ]
    size_cols = [
        "model",
        "dataset",
        "attack",
        "seed",
        "eps_label",
        "norm_mean",
        "l2_mean",
        "linf_mean",
        "ssim_mean",
        "queries_median",
    ]
    wc_cols = _cols(
        wc_rows,
        [
            "model",
            "dataset",
            "norm",
            "eps_label",
            "num_examples",
            "clean_accuracy",
            "worst_case_robust_accuracy",
        ],
    )
    wc_cols = [c for c in wc_cols if c not in ("eps", "eps_255")]
    title = f"jaxadv sweep: {cfg.get('name')}"
    missing_note = (
        f"{len(missing)} of {manifest.get('num_cells')} cells are not finished: "
        + ", ".join(missing[:20])
        + (" …" if len(missing) > 20 else "")
        if missing
        else ""
    )
    sections = [
        ("Robust accuracy vs eps", "curves", _text_curves()),
        ("Success vs queries (black-box attacks)", "queries", ""),
        ("Adversarial examples", "images", ""),
    ]

    # ---- markdown
    md = [f"# {title}\n"]
    if missing_note:
        md.append(f"**Incomplete:** {missing_note}\n")
    md.append("## Run manifest\n")
    md.append(_md_table(meta_rows, ["field", "value"]))
    md.append("### Runs\n")
    md.append(_md_table(run_rows, list(run_rows[0]) if run_rows else ["started"]))
    for head, key, text in sections:
        figs = [f for f in figures if f[0] == key]
        if not figs:
            continue
        md.append(f"## {head}\n")
        if text:
            md.append(text + "\n")
        md.extend(f"![{name}]({name})\n" for _, name, _ in figs)
    md.append("## Worst case over attacks (per example)\n")
    md.append(_worst_text() + "\n")
    md.append(_md_table(wc_rows, wc_cols))
    md.append("## Robust accuracy\n")
    md.append(_md_table(rows, res_cols))
    md.append("## Perturbation sizes and SSIM (successful attacks)\n")
    md.append(_md_table(rows, size_cols))
    md.append(
        "Exports: `results.csv`, `results.jsonl`, `examples.jsonl`, `worst_case.csv`, "
        "`worst_case_examples.csv`.\n"
    )
    write_atomic(outdir / "report.md", "\n".join(md))

    # ---- html
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
    ]
    if missing_note:
        parts.append(f"<p class='warn'>Incomplete: {html.escape(missing_note)}</p>")
    parts.append("<h2>Run manifest</h2>" + _html_table(meta_rows, ["field", "value"]))
    parts.append(
        "<h3>Runs</h3>" + _html_table(run_rows, list(run_rows[0]) if run_rows else ["started"])
    )
    for head, key, text in sections:
        figs = [f for f in figures if f[0] == key]
        if not figs:
            continue
        parts.append(f"<h2>{html.escape(head)}</h2>")
        if text:
            parts.append(f"<p>{html.escape(text)}</p>")
        for _, name, png in figs:
            b64 = base64.b64encode(png).decode()
            parts.append(f"<img alt='{html.escape(name)}' src='data:image/png;base64,{b64}'>")
    parts.append("<h2>Worst case over attacks (per example)</h2>")
    parts.append(f"<p>{html.escape(_worst_text())}</p>" + _html_table(wc_rows, wc_cols))
    parts.append("<h2>Robust accuracy</h2>" + _html_table(rows, res_cols))
    parts.append(
        "<h2>Perturbation sizes and SSIM (successful attacks)</h2>" + _html_table(rows, size_cols)
    )
    parts.append(
        "<h2>Config</h2><pre>" + html.escape(json.dumps(cfg, indent=2)) + "</pre></body></html>"
    )
    path = outdir / "report.html"
    write_atomic(path, "".join(parts))
    return path


def _text_curves() -> str:
    return "Mean over seeds (band: min to max). Dashed: the worst case over attacks, per example."


def _worst_text() -> str:
    return (
        "An example is robust at eps only if no attack (under any seed) whose grid holds that eps "
        "broke it. only_broken_by[A]: clean-correct examples that attack A alone broke."
    )


def _jsonl(rows: Sequence[Mapping[str, Any]]) -> str:
    return "".join(json.dumps(_out._jsonable(r), allow_nan=False) + "\n" for r in rows)


def _csv(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return ""
    cols = _cols(rows, [])
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _out._jsonable(r.get(k)) for k in cols})
    return buf.getvalue()
