"""The one summary of an evaluation: per-eps rows from per-example arrays (host code, NumPy only).

Every entry point reports through :func:`summary_rows`: ``jaxadv.evaluate`` results, sweep cells,
``jaxadv attack``, the demo and :func:`jaxadv.metrics.summarize`. Rows are computed from the
concatenated per-example arrays of the whole data set, so means and medians are over the right
examples whatever the batching. Perturbation sizes are taken over the *successful attacks*
(clean-correct examples the attack fooled); clean errors count as successes but need no
perturbation, so they would bias the sizes toward 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: Per-example ``[E, N]`` arrays an evaluation keeps (and a sweep cell stores), with their dtypes.
PER_EXAMPLE = {
    "success": np.bool_,
    "norm": np.float32,
    "queries": np.int32,
    "margin": np.float32,
    "l2": np.float32,
    "linf": np.float32,
    "ssim": np.float32,
    "score": np.float32,
}

#: Per-example ``[E, N]`` fields whose mean and median over successful attacks each row reports.
SIZE_FIELDS = ("norm", "l0_pixels", "l2", "linf", "ssim", "queries")


def eps_label(norm: str, eps: float) -> str:
    """A budget as people write it: ``8/255`` (L-inf), ``0.5`` (L2, L1), ``3 px`` (L0)."""
    if norm == "l0":
        return f"{eps:g} px"
    if norm == "patch":  # a side in pixels; below 1, a universal patch's area fraction
        return f"{eps:g}x{eps:g} px" if eps >= 1 else f"{100 * eps:.3g}% area"
    if norm == "linf":
        return f"{round(eps * 255, 3):g}/255"
    return f"{eps:.4g}"


def _mean_median(v: np.ndarray) -> tuple[float, float]:
    v = v[np.isfinite(v)]
    if v.size == 0:  # np.mean of an empty slice warns; report NaN quietly instead
        return math.nan, math.nan
    return float(np.mean(v)), float(np.median(v))


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    from jaxadv.metrics import auc

    if labels.all() or not labels.any():
        return math.nan
    return auc(scores, labels)


def _balanced(y: np.ndarray, clean_ok: np.ndarray, robust_ok: np.ndarray) -> dict[str, float]:
    from jaxadv import classmetrics

    if y.size == 0:
        return {}
    return {
        "majority_baseline": classmetrics.majority_baseline(y)[1],
        "balanced_clean_accuracy": classmetrics.balanced_rate(clean_ok, y),
        "balanced_robust_accuracy": classmetrics.balanced_rate(robust_ok, y),
    }


def macro_auc_columns(
    clean_logits: np.ndarray, logits: np.ndarray, labels: np.ndarray
) -> list[dict[str, float]]:
    """``auc_macro`` (clean) and ``auc_macro_under_attack`` for each budget.

    Integer labels ``[N]`` with per-class logits ``[N, C]``: the one-vs-rest macro AUC of
    :func:`jaxadv.classmetrics.macro_auc`; multi-hot labels ``[N, F]`` with per-finding logits:
    the mean per-finding AUC of :func:`jaxadv.metrics.finding_auc_under_attack`. Under attack,
    the scores are those of each example's adversarial image at that budget.

    Args:
        clean_logits: ``[N, C]`` on the clean images.
        logits: ``[E, N, C]`` on the adversarial images.
        labels: ``int[N]`` or multi-hot ``[N, F]``.

    Returns:
        One dict per budget; NaN where no class (finding) has both positives and negatives.
    """
    from jaxadv import classmetrics
    from jaxadv.metrics import finding_auc_under_attack

    labels = np.asarray(labels)
    if labels.ndim == 2:
        aucs = finding_auc_under_attack(clean_logits, logits, labels)
        clean, adv = aucs["clean_macro"], [float(a) for a in aucs["adv_macro"]]
    else:
        clean = classmetrics.macro_auc(clean_logits, labels)
        adv = [classmetrics.macro_auc(z, labels) for z in np.asarray(logits)]
    return [{"auc_macro": clean, "auc_macro_under_attack": a} for a in adv]


def summary_rows(
    eps: Sequence[float],
    per_eps: Mapping[str, np.ndarray],
    clean_correct: np.ndarray,
    *,
    norm: str = "linf",
    labels: np.ndarray | None = None,
    clean_score: np.ndarray | None = None,
    positive_class: int = 1,
) -> list[dict[str, Any]]:
    """One summary row per budget.

    Args:
        eps: the budgets ``[E]``.
        per_eps: per-example arrays ``[E, N]``: ``success`` (required) and any of
            :data:`SIZE_FIELDS`, and ``score`` (positive-class log-odds on ``adv``).
        clean_correct: ``bool[N]``.
        norm: the threat's norm name, for ``eps_label`` and ``eps_255``.
        labels: ``int[N]``: the balanced accuracies; with ``clean_score`` and
            ``per_eps['score']`` also ``auc`` and ``auc_under_attack`` (pass scores only for a
            two-class model).
        clean_score: positive-class log-odds on the clean images ``[N]``.
        positive_class: the class counted as positive for the AUCs.

    Returns:
        Rows of ``eps``, ``eps_label``, ``eps_255`` (not for L0), ``num_examples``,
        ``num_clean_correct``, ``num_successful``, ``num_robust``, ``clean_accuracy``,
        ``robust_accuracy``, ``attack_success_rate``, ``<size>_mean`` and ``<size>_median`` for each
        size field present, and ``auc`` / ``auc_under_attack`` when scores are given; with
        ``labels`` also ``majority_baseline`` (accuracy of always answering the commonest class),
        ``balanced_clean_accuracy`` and ``balanced_robust_accuracy`` (mean over the classes
        present of the per-class clean / robust accuracy). With ``per_eps['recheck_flipped']``
        also ``recheck_flips``: how many of the ``num_examples - num_robust`` reported successes
        the re-check outside the attack's program rejects.
    """
    cc = np.asarray(clean_correct, bool)
    n = int(cc.size)
    auc_clean = None
    pos = None
    if labels is not None and clean_score is not None and "score" in per_eps:  # binary
        pos = np.asarray(labels) == positive_class
        auc_clean = _auc(np.asarray(clean_score, np.float64), pos)
    rows = []
    for j, e in enumerate(eps):
        succ = np.asarray(per_eps["success"][j], bool)
        att = succ & cc
        row: dict[str, Any] = {"eps": float(e), "eps_label": eps_label(norm, float(e))}
        if norm not in ("l0", "patch", "bias"):
            row["eps_255"] = round(float(e) * 255, 3)
        row.update(
            num_examples=n,
            num_clean_correct=int(cc.sum()),
            num_successful=int(att.sum()),
            num_robust=int((~succ).sum()),
            clean_accuracy=float(cc.mean()) if n else math.nan,
            robust_accuracy=float((~succ).mean()) if n else math.nan,
            attack_success_rate=float(att.sum() / cc.sum()) if cc.sum() else math.nan,
        )
        if "recheck_flipped" in per_eps:  # reported successes a re-check rejects
            row["recheck_flips"] = int(np.asarray(per_eps["recheck_flipped"][j], bool).sum())
        for name in SIZE_FIELDS:
            if name in per_eps:
                v = np.asarray(per_eps[name][j], np.float64)[att]
                row[f"{name}_mean"], row[f"{name}_median"] = _mean_median(v)
        if labels is not None:
            row.update(_balanced(np.asarray(labels).reshape(-1), cc, ~succ))
        if pos is not None:
            row["auc"] = auc_clean
            row["auc_under_attack"] = _auc(np.asarray(per_eps["score"][j], np.float64), pos)
        rows.append(row)
    return rows


#: Per-image ``[E, N]`` fields of a dense evaluation beside :data:`PER_EXAMPLE` (``target_iou``
#: only when targeted); each also has its drop ``<field>_drop`` (clean minus adversarial).
DENSE_PER_EXAMPLE = ("dice", "iou", "pixel_accuracy", "target_iou")


def dense_summary_rows(
    eps: Sequence[float],
    per_eps: Mapping[str, np.ndarray],
    clean_correct: np.ndarray,
    clean: Mapping[str, np.ndarray],
    rule: Any,
    *,
    norm: str = "linf",
) -> list[dict[str, Any]]:
    """:func:`summary_rows` of a dense (segmentation) evaluation, plus per budget: ``rule`` (its
    statement), ``success_rate`` (fraction of all images on which the rule holds at ``adv``, clean
    holds included), and for each of :data:`DENSE_PER_EXAMPLE` present the means over images
    ``clean_<f>``, ``<f>`` (at ``adv``) and ``<f>_drop`` (mean per-image drop), and
    ``<size>_mean_all`` for the norms, SSIM and queries over every image (a dense attack perturbs each
    image, successful or not; ``<size>_mean`` stays over successful attacks).

    Args:
        eps, per_eps, clean_correct, norm: as for :func:`summary_rows` (``per_eps`` also holds
            the dense fields ``[E, N]``).
        clean: the clean per-image scores ``[N]`` by field name.
        rule: the :class:`jaxadv.segmentation.DenseRule` in force, or its statement (a sweep
            cell read back from its file).
    """
    rows = summary_rows(eps, per_eps, clean_correct, norm=norm)
    for j, row in enumerate(rows):
        row["rule"] = rule if isinstance(rule, str) else rule.describe()
        row["success_rate"] = (
            float(np.mean(per_eps["success"][j])) if row["num_examples"] else math.nan
        )
        for f in DENSE_PER_EXAMPLE:
            if f in clean:
                row[f"clean_{f}"] = _mean_median(np.asarray(clean[f], np.float64))[0]
                row[f] = _mean_median(np.asarray(per_eps[f][j], np.float64))[0]
                row[f"{f}_drop"] = _mean_median(np.asarray(per_eps[f"{f}_drop"][j], np.float64))[0]
        for f in ("norm", "l2", "linf", "ssim", "queries"):
            if f in per_eps:
                row[f"{f}_mean_all"] = _mean_median(np.asarray(per_eps[f][j], np.float64))[0]
    return rows
