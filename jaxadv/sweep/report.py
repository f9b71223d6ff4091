"""Reports of a sweep folder: a self-contained HTML page, Markdown, CSV and JSONL.

The sweep-specific part of the report (decoding cells, the worst case over attacks, the figures of
a sweep); the writers, tables, plots and page style come from the toolkit :mod:`jaxadv.report`.
No device code is imported: writing a report needs neither the runner nor the attacks.

``write_report(DIR)`` writes into ``DIR/report/``:

* ``report.html``: everything below with the figures embedded as base64 PNG (one file to share);
* ``report.md`` plus the ``*.png`` figures it links to;
* ``results.csv`` / ``results.jsonl``: one row per cell and eps (accuracies, norms, SSIM, queries);
* ``examples.jsonl``: one line per cell and example, with the per-eps success, norm and queries;
* ``worst_case.csv``: robust accuracy under the worst case over attacks (and seeds) per model, data
  set, threat model and eps, with how many examples each attack alone broke;
* ``worst_case_examples.csv``: per example, whether it survived every attack and which broke it.
* ``transfer_matrix.csv`` (``surrogate:`` sweeps): target robust accuracy per surrogate and target.

Segmentation cells (:mod:`jaxadv.sweep.segmentation`) add the per-image Dice / IoU columns to these
rows, a Dice / IoU table, robust Dice vs eps and mask overlays in place of the image grids.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxadv import _io
from jaxadv.engine.summary import PER_EXAMPLE, eps_label, macro_auc_columns, summary_rows
from jaxadv.report import (
    HTML_CSS,
    columns,
    csv_text,
    figure,
    figure_png,
    html_table,
    image_grid_png,
    jsonl_text,
    md_table,
)
from jaxadv.sweep import detection, recheck, transfer
from jaxadv.sweep import segmentation as seg
from jaxadv.sweep import universal as univ
from jaxadv.sweep.storage import (
    CorruptResultsError,
    SweepDir,
    SweepError,
    decode_array,
    decode_images,
)


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
    rule: str = ""  # the multi-label rule ("" for integer labels)
    durable: dict[str, Any] = dataclasses.field(default_factory=dict)  # success_margin, grid
    dense: bool = False  # a segmentation cell (per_eps also holds dice, iou, ... and drops)
    universal: dict | None = None  # a universal cell's fits (jaxadv/sweep/universal.py)
    surrogate: str = ""  # a transfer cell's surrogate label (jaxadv.sweep.transfer)

    @property
    def attack_name(self) -> str:
        """The attack label, with its surrogate for a transfer cell (a curve, a worst-case term)."""
        return f"{self.attack} from {self.surrogate}" if self.surrogate else self.attack


def decode(rec: Mapping[str, Any]) -> CellData:
    c, r = rec["cell"], rec["results"]
    eps = [float(e) for e in c["attack"]["eps"]]
    cc = decode_array(r["clean_correct"], np.bool_)
    per_eps = {k: decode_array(r[k], dt) for k, dt in PER_EXAMPLE.items()} | recheck.per_eps(r)
    labels = decode_array(r["labels"], np.int32)
    binary = rec.get("num_classes") == 2 and labels.ndim == 1
    rule = str(rec.get("rule") or "")
    dense = seg.is_dense(c["attack"])
    if dense:  # per-image Dice, IoU, ... (added to per_eps) and the dense rows
        rows = seg.summary(r, eps, per_eps, cc, rule, c["attack"]["norm"])
    else:
        rows = summary_rows(
            eps,
            per_eps,
            cc,
            norm=c["attack"]["norm"],
            labels=labels if labels.ndim == 1 else None,  # balanced accuracies, any class count
            clean_score=decode_array(r["clean_score"], np.float32) if binary else None,
        )
    if rule and not dense:
        for row in rows:
            row["rule"] = rule
    if "logits" in r and "clean_logits" in r:  # macro AUCs (per finding / one-vs-rest)
        cols = macro_auc_columns(
            decode_array(r["clean_logits"], np.float32),
            decode_array(r["logits"], np.float32),
            labels,
        )
        for row, col in zip(rows, cols, strict=True):
            row.update(col)
    univ.update_rows(rec, rows, per_eps["success"])  # area labels, targeted success, fit
    if "detectors" in r:  # per detector: AUC / TPR95 on the successful adversarials, per eps
        cols = detection.summary_columns(r, per_eps["success"], cc)
        for row, col in zip(rows, cols, strict=True):
            row.update(col)
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
        summary=rows,
        samples=rec.get("samples"),
        run=dict(rec.get("run") or {}),
        rule=rule,
        durable=_durable(rec),
        dense=dense,
        universal=rec.get("universal") if isinstance(rec.get("universal"), dict) else None,
        surrogate=str((c.get("surrogate") or {}).get("label", "")),
    )


def _durable(rec: Mapping[str, Any]) -> dict[str, Any]:
    """The success margin, storage grid (as its threat recorded them; ``grid: dataset`` appears
    resolved) and re-check mode a cell ran with, only where they differ from the plain rule."""
    threat = (rec.get("attack_config") or {}).get("threat")
    threat = threat if isinstance(threat, Mapping) else {}
    out = {"recheck": rec["cell"]["recheck"]} if rec["cell"].get("recheck") else {}
    if threat.get("success_margin"):
        out["success_margin"] = threat["success_margin"]
    if threat.get("grid") is not None:
        out["grid"] = threat["grid"]
    return out


def load_sweep(root: str | os.PathLike) -> tuple[dict[str, Any], list[CellData], list[str]]:
    """The manifest, the finished cells (in grid order) and the ids of missing cells.

    Raises:
        SweepError: no manifest. CorruptResultsError: a corrupt or truncated cell file.
    """
    store = SweepDir(root)
    m = store.read_manifest()
    if m is None:
        raise SweepError(f"{root} is not a sweep folder (no sweep.json); run `jaxadv sweep` first")
    recs = store.load(strict=True)  # every record's fields and types are checked here
    order = [c.id for c in store.grid(m)]
    ids = [i for i in order if i in recs] + sorted(set(recs) - set(order))
    cells = []
    for i in ids:
        try:
            cells.append(decode(recs[i]))
        except (KeyError, TypeError, ValueError, IndexError) as e:  # should not pass the checks
            raise CorruptResultsError([(str(store.cell_path(i)), f"malformed record ({e})")]) from e
    missing = [i for i in order if i not in recs]
    return m, cells, missing


# ----------------------------------------------------------------------------- tables
def cell_table_rows(cells: Sequence[CellData]) -> list[dict[str, Any]]:
    rows = []
    for c in cells:
        for s in c.summary:
            rows.append(
                {
                    "cell": c.id,
                    "model": c.model,
                    "dataset": c.dataset,
                    "attack": c.attack,
                    **({"surrogate": c.surrogate} if c.surrogate else {}),
                    "norm": c.norm,
                    "seed": c.seed,
                    "black_box": c.black_box,
                    **c.durable,
                    **s,
                }
            )
    return rows


def label_value(y: Any) -> int | str:
    """An example's label for tables: the class, or a multi-label row as its 0/1 string."""
    y = np.asarray(y)
    return int(y) if y.ndim == 0 else "".join(str(int(v)) for v in y)


def worst_case(cells: Sequence[CellData]) -> tuple[list[dict], list[dict]]:
    """Worst case over attacks and seeds, per (model, data set, norm, eps), and per example.

    An example counts as robust at ``eps`` only when no attack (under any seed) whose grid holds
    that ``eps`` broke it. Returns ``(rows, example_rows)``.
    """
    groups: dict[tuple[str, str, str, str], list[CellData]] = {}
    for c in cells:
        # cells under different multi-label rules count different successes: never mixed
        groups.setdefault((c.model, c.dataset, c.norm, c.rule), []).append(c)
    rows, ex_rows = [], []
    for (model, dataset, norm, rule), members in groups.items():
        eps_all = sorted({e for c in members for e in c.eps})
        for e in eps_all:
            broken: dict[int, set[str]] = {}
            label: dict[int, int | str] = {}
            clean: dict[int, bool] = {}
            idx_sets = []
            per_attack: dict[str, list[float]] = {}
            for c in members:
                if e not in c.eps:
                    continue
                j = c.eps.index(e)
                succ = c.per_eps["success"][j]
                idx_sets.append(set(c.indices.tolist()))
                per_attack.setdefault(c.attack_name, []).append(float((~succ).mean()))
                for i, s, y, cc in zip(c.indices, succ, c.labels, c.clean_correct, strict=True):
                    i = int(i)
                    label[i], clean[i] = label_value(y), bool(cc)
                    broken.setdefault(i, set())
                    if s:
                        broken[i].add(c.attack_name)
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
            if rule:
                row["rule"] = rule
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
                "label": label_value(c.labels[n]),
                "clean_correct": bool(c.clean_correct[n]),
                "eps": c.eps,
            }
            for k, v in c.per_eps.items():
                col = v[:, n]
                line[k] = col.astype(bool).tolist() if k == "success" else col.tolist()
            out.append(line)
    return out


# ----------------------------------------------------------------------------- figures
def _x(norm: str, eps: Any) -> np.ndarray:
    """Budgets in the unit of the axis: 1/255 for L-inf, as given for the others."""
    e = np.asarray(eps, np.float64)
    return e * 255 if norm == "linf" else e


_XLABEL = {
    "linf": "eps (× 1/255, L∞)",
    "l2": "eps (L2)",
    "l1": "eps (L1)",
    "l0": "changed pixels (L0)",
    "patch": "patch side (pixels)",
    "bias": "bias-field amplitude (max |log B|)",
}


def robustness_figure(
    cells: Sequence[CellData],
    wc_rows: Sequence[dict],
    dataset: str,
    metric: str = "robust_accuracy",
    ylabel: str = "robust accuracy",
) -> bytes:
    """One panel per model and threat model: ``metric`` (a summary column in [0, 1]; robust
    accuracy, or ``dice`` for segmentation cells) vs eps per attack (mean over seeds, min-max
    band) and the worst case over attacks (dashed; from ``wc_rows``)."""
    mine_ds = [c for c in cells if c.dataset == dataset]
    panels = list(dict.fromkeys((c.model, c.norm) for c in mine_ds))
    fig, axes = figure(1, len(panels), figsize=(4.6 * len(panels), 3.6))
    for ax, (model, norm) in zip(axes[0], panels, strict=True):
        mine = [c for c in mine_ds if c.model == model and c.norm == norm]
        for attack in dict.fromkeys(c.attack_name for c in mine):
            runs = [c for c in mine if c.attack_name == attack]
            eps = _x(norm, runs[0].eps)
            accs = np.asarray([[s[metric] for s in c.summary] for c in runs], np.float64)
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
        ax.set_ylabel(ylabel)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return figure_png(fig)


def queries_figure(cells: Sequence[CellData], dataset: str) -> bytes | None:
    """Success rate (over clean-correct examples) vs queries at the largest eps, black-box cells."""
    bb = [c for c in cells if c.black_box and c.dataset == dataset]
    if not bb:
        return None
    models = list(dict.fromkeys(c.model for c in bb))
    fig, axes = figure(1, len(models), figsize=(4.6 * len(models), 3.6))
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
    return figure_png(fig)


def image_grid_png_of(c: CellData) -> bytes | None:
    if not c.samples:
        return None
    clean = decode_images(c.samples["clean"])
    adv = decode_images(c.samples["adv"])
    idx = decode_array(c.samples["indices"], np.int64)
    j = int(np.argmin(np.abs(np.asarray(c.eps) - float(c.samples["eps"]))))
    succ = dict(zip(c.indices.tolist(), c.per_eps["success"][j].tolist(), strict=True))
    labels = [f"#{i}{' ✗' if succ.get(int(i)) else ''}" for i in idx]
    return image_grid_png(
        clean,
        adv,
        labels=labels,
        title=f"{c.model} / {c.dataset} / {c.attack} at eps {eps_label(c.norm, c.eps[j])} "
        "(✗: the attack succeeded)",
        field=c.norm == "bias",  # a bias-field cell: draw the field itself
    )


# ----------------------------------------------------------------------------- the report
def write_report(root: str | os.PathLike, out: str | os.PathLike | None = None) -> pathlib.Path:
    """Write the HTML/Markdown report and the CSV/JSONL exports of the sweep in ``root``.

    The page leads with the robust-accuracy table and ends with the run manifest. File names made
    from labels read from the cell files are sanitised, and every file is checked to land inside
    the report folder (which, by default, must itself lie inside ``root``).

    Args:
        root: a sweep folder (``jaxadv sweep`` or ``jaxadv merge`` output).
        out: report folder (default ``root/report``).

    Returns:
        The path of ``report.html``.

    Raises:
        SweepError: ``root`` is not a sweep folder, the report folder is a link out of ``root``
            or not writable. CorruptResultsError: a damaged manifest or cell file.
    """
    manifest, cells, missing = load_sweep(root)
    outdir = pathlib.Path(out) if out is not None else pathlib.Path(root) / "report"
    try:
        if out is None and (outdir.exists() or outdir.is_symlink()):
            _io.check_inside(root, outdir)
        outdir.mkdir(parents=True, exist_ok=True)
        return _write_report(outdir, manifest, cells, missing)
    except _io.UnsafePathError as e:
        raise SweepError(f"refusing to write the report: {e}") from e
    except OSError as e:
        raise SweepError(
            f"cannot write the report to {outdir} ({e.strerror or e}: {e.filename or outdir}); "
            "pass --out with a writable folder"
        ) from e


def _fig_name(*parts: str) -> str:
    return _io.safe_name("__".join(parts), max_len=180) + ".png"


def _write_report(
    outdir: pathlib.Path, manifest: dict[str, Any], cells: list[CellData], missing: list[str]
) -> pathlib.Path:
    from jaxadv.report import write_in

    rows = cell_table_rows(cells)
    wc_rows, wc_examples = worst_case(cells)
    write_in(outdir, "results.csv", csv_text(rows))
    write_in(outdir, "results.jsonl", jsonl_text(rows))
    write_in(outdir, "examples.jsonl", jsonl_text(example_lines(cells)))
    write_in(outdir, "worst_case.csv", csv_text(wc_rows))
    write_in(outdir, "worst_case_examples.csv", csv_text(wc_examples))
    tm_rows = transfer.matrices(cells)  # surrogate x target, per data set, attack and eps
    if tm_rows:
        write_in(outdir, "transfer_matrix.csv", csv_text(tm_rows))

    figures: list[tuple[str, str, bytes]] = []  # (section, file name, png)
    datasets = list(dict.fromkeys(c.dataset for c in cells))
    for ds in datasets:
        curve = [c for c in cells if not univ.is_area(c)]  # patch areas: their own figure
        if any(c.dataset == ds for c in curve):
            png = robustness_figure(curve, wc_rows, ds)
            figures.append(("curves", _fig_name("robust_accuracy_" + ds), png))
        q = queries_figure(cells, ds)
        if q is not None:
            figures.append(("queries", _fig_name("success_vs_queries_" + ds), q))
        dense = [c for c in cells if c.dense]
        if any(c.dataset == ds for c in dense):  # segmentation cells: robust Dice vs eps
            png = robustness_figure(dense, [], ds, metric="dice", ylabel="Dice (adversarial)")
            figures.append(("dice", _fig_name("robust_dice_" + ds), png))
        for name in detection.names(cells):  # detection AUC vs eps per attack
            mine = [c for c in cells if c.summary and detection.columns(name)[0] in c.summary[0]]
            if any(c.dataset == ds for c in mine):
                metric, ylabel = detection.columns(name)[0], f"detection AUC ({name})"
                png = robustness_figure(mine, [], ds, metric=metric, ylabel=ylabel)
                figures.append(("detection", _fig_name(f"detection_auc_{name}_{ds}"), png))
    figures += [("transfer", _fig_name(n), png) for n, png in transfer.heatmaps(tm_rows)]
    seen = set()
    for c in cells:
        key = (c.model, c.dataset, c.attack_name)
        if key in seen:
            continue
        png = seg.overlay_png(c) if c.dense else image_grid_png_of(c)
        if png is not None:
            seen.add(key)
            figures.append(("images", _fig_name("examples_" + c.model, *key[1:]), png))
    uni_figs, uni_blocks = univ.report_parts(cells, rows)
    figures += [(sec, _fig_name(name[:-4]), png) for sec, name, png in uni_figs]
    for _, name, png in figures:
        write_in(outdir, name, png)

    meta_rows, run_rows = _manifest_rows(manifest, len(cells))
    cfg = manifest["config"]
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
    wc_first = [
        "model",
        "dataset",
        "norm",
        "eps_label",
        "num_examples",
        "clean_accuracy",
        "worst_case_robust_accuracy",
    ]
    durable_cols = [k for k in ("success_margin", "grid", "recheck") if any(k in r for r in rows)]
    res_cols[3:3] = durable_cols
    res_cols += ["recheck_flips"] if "recheck" in durable_cols else []
    if tm_rows:  # transfer cells: the surrogate each was crafted on
        res_cols.insert(3, "surrogate")
        size_cols.insert(3, "surrogate")
    wc_cols = [c for c in columns(wc_rows, wc_first) if c not in ("eps", "eps_255")]
    title = f"jaxadv sweep: {cfg.get('name')}"
    missing_note = (
        f"{len(missing)} of {manifest.get('num_cells')} cells are not finished: "
        + ", ".join(missing[:20])
        + (" …" if len(missing) > 20 else "")
        if missing
        else ""
    )
    fig_sections = [
        ("Robust accuracy vs eps", "curves", _text_curves()),
        ("Robust Dice vs eps (segmentation)", "dice", "Mean Dice at the adversarial, over seeds."),
        ("Detection AUC vs eps", "detection", "Mean over seeds; no point where none succeeded."),
        ("Transfer matrices (heat maps)", "transfer", transfer.TEXT),
        ("Success vs queries (black-box attacks)", "queries", ""),
        ("Adversarial examples", "images", ""),
    ]
    run_cols = list(run_rows[0]) if run_rows else ["started"]
    # (heading, level, text, table rows, table columns, figure section key)
    blocks: list[tuple[str, int, str, list, list, str]] = [
        ("Robust accuracy", 2, "", rows, res_cols, ""),
        ("Worst case over attacks (per example)", 2, _worst_text(), wc_rows, wc_cols, ""),
    ]
    seg_rows = [r for r, c in zip(rows, _row_cells(cells), strict=True) if c.dense]
    if seg_rows:  # robust accuracy above is the fraction of images the attack's rule misses
        seg_cols = seg.table_columns(seg_rows)
        blocks.insert(
            1, ("Segmentation: Dice and IoU vs eps", 2, seg.REPORT_TEXT, seg_rows, seg_cols, "")
        )
    blocks[1:1] = uni_blocks
    det_rows = [r for r in rows if any(k.startswith("det_") for k in r)]
    if det_rows:
        cols = detection.table_columns(det_rows)
        blocks.insert(1, ("Detectors", 2, detection.TEXT, det_rows, cols, ""))
    for i, (head, trows, tcols) in enumerate(transfer.tables(tm_rows)):
        text = "" if i else transfer.TEXT
        blocks.insert(1 + i, (f"Transfer matrix: {head}", 2, text, trows, tcols, ""))
    for head, key, text in fig_sections:
        if any(f[0] == key for f in figures):
            blocks.append((head, 2, text, [], [], key))
    blocks += [
        ("Perturbation sizes and SSIM (successful attacks)", 2, "", rows, size_cols, ""),
        ("Run manifest", 2, "", meta_rows, ["field", "value"], ""),
        ("Runs", 3, "", run_rows, run_cols, ""),
    ]

    # ---- markdown
    md = [f"# {title}\n"]
    if missing_note:
        md.append(f"**Incomplete:** {missing_note}\n")
    for head, level, text, trows, tcols, key in blocks:
        md.append(f"{'#' * level} {head}\n")
        if text:
            md.append(text + "\n")
        if key:
            md.extend(f"![{name}]({name})\n" for sec, name, _ in figures if sec == key)
        else:
            md.append(md_table(trows, tcols))
    md.append(
        "Exports: `results.csv`, `results.jsonl`, `examples.jsonl`, `worst_case.csv`, "
        "`worst_case_examples.csv`.\n"
    )
    md.append("### Config\n\n```json\n" + json.dumps(cfg, indent=2) + "\n```\n")
    write_in(outdir, "report.md", "\n".join(md))

    # ---- html
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{HTML_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
    ]
    if missing_note:
        parts.append(f"<p class='warn'>Incomplete: {html.escape(missing_note)}</p>")
    for head, level, text, trows, tcols, key in blocks:
        parts.append(f"<h{level}>{html.escape(head)}</h{level}>")
        if text:
            parts.append(f"<p>{html.escape(text)}</p>")
        if key:
            for sec, name, png in figures:
                if sec == key:
                    b64 = base64.b64encode(png).decode()
                    alt = html.escape(name, quote=True)
                    parts.append(f"<img alt='{alt}' src='data:image/png;base64,{b64}'>")
        else:
            parts.append(html_table(trows, tcols))
    parts.append(
        "<h3>Config</h3><pre>" + html.escape(json.dumps(cfg, indent=2)) + "</pre></body></html>"
    )
    return write_in(outdir, "report.html", "".join(parts))


def _manifest_rows(manifest: dict[str, Any], num_finished: int) -> tuple[list[dict], list[dict]]:
    env = manifest.get("environment") or {}
    cfg = manifest["config"]
    meta_rows = [
        {"field": "name", "value": cfg.get("name")},
        {"field": "description", "value": cfg.get("description") or "–"},
        {"field": "config hash", "value": manifest.get("config_hash")},
        {"field": "config source", "value": manifest.get("config_source")},
        {"field": "cells finished", "value": f"{num_finished} of {manifest.get('num_cells')}"},
        {"field": "seeds", "value": ", ".join(map(str, cfg.get("seeds", [])))},
        {"field": "git commit", "value": env.get("git_commit") or "unknown"},
    ]
    for k in ("jaxadv", "jax", "flax", "numpy", "python", "platform", "backend", "device_count"):
        meta_rows.append({"field": k, "value": env.get(k)})
    devices = env.get("devices")
    devices = devices if isinstance(devices, list) else []
    meta_rows.append({"field": "devices", "value": ", ".join(sorted(set(map(str, devices))))})
    for spec, fp in sorted((manifest.get("inputs") or {}).items()):
        if fp:
            meta_rows.append({"field": f"content hash of {spec}", "value": fp})
    keys = (
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
    run_rows = [{k: r.get(k) for k in keys} for r in manifest.get("runs", [])]
    return meta_rows, run_rows


def _row_cells(cells: Sequence[CellData]) -> list[CellData]:
    """The cell of each row of :func:`cell_table_rows` (one per cell and eps)."""
    return [c for c in cells for _ in c.summary]


def _text_curves() -> str:
    return "Mean over seeds (band: min to max). Dashed: the worst case over attacks, per example."


def _worst_text() -> str:
    return (
        "An example is robust at eps only if no attack (under any seed) whose grid holds that eps "
        "broke it. only_broken_by[A]: clean-correct examples that attack A alone broke."
    )
