"""Detector evaluation: AUC and TPR at a fixed TNR on *successful* adversarial examples."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jaxadv.detect.common import batched, check_fitted
from jaxadv.metrics import auc

#: TNR operating points reported by :func:`evaluate`.
TNRS = (0.90, 0.95)


def tpr_at_tnr(clean_scores: Any, adv_scores: Any, tnr: float) -> float:
    """TPR on ``adv_scores`` at the threshold that keeps at least ``tnr`` of ``clean_scores``
    below or at it: ``t = sorted(clean)[ceil(tnr·n) - 1]``, an example is flagged when
    ``score > t`` (spec §11).

    Example:
        >>> tpr_at_tnr([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [5.5, 9.5, 10, 11], 0.9)
        0.75
    """
    c = np.sort(np.asarray(clean_scores, np.float64))
    a = np.asarray(adv_scores, np.float64)
    if c.size == 0 or a.size == 0:
        raise ValueError("tpr_at_tnr needs at least one clean and one adversarial score")
    t = c[int(np.ceil(tnr * c.size)) - 1]
    return float(np.mean(a > t))


@jax.jit
def _score(x, det):
    return det.score(x)


def evaluate(
    detectors: Any,
    x_clean: Any,
    x_adv: Any,
    success: Any,
    *,
    batch_size: int = 256,
) -> dict[str, dict[str, float]]:
    """Per detector: AUC and TPR at TNR 90 % / 95 %, clean (negatives) vs successful adversarial
    examples (positives).

    Args:
        detectors: a fitted detector or a mapping ``name -> detector``.
        x_clean: ``[N, H, W, K]`` clean images (the negatives; pass the clean-correct ones to
            follow the usual protocol).
        x_adv: ``[M, H, W, K]`` adversarial images.
        success: ``bool[M]`` (e.g. ``result.success``): only these count as positives, so a
            detector is never credited for flagging a failed attack.

    Returns:
        ``{name: {"auc", "tpr_at_tnr90", "tpr_at_tnr95", "n_clean", "n_adv"}}``; the denominators
        are ``n_clean`` (TNR, all clean) and ``n_adv`` (TPR: the successful adversarial examples).

    Raises:
        ValueError: an unfitted detector, or no successful adversarial example (before scoring).
    """
    if not isinstance(detectors, Mapping):
        detectors = {type(detectors).__name__: detectors}
    success = np.asarray(success, bool).reshape(-1)
    x_adv = np.asarray(x_adv, np.float32)
    if success.shape != (x_adv.shape[0],):
        raise ValueError(f"success must be bool[{x_adv.shape[0]}], got shape {success.shape}")
    if not success.any():
        raise ValueError("no successful adversarial example: detection rates are undefined")
    for det in detectors.values():
        check_fitted(det)
    out = {}
    for name, det in detectors.items():
        sc = batched(_score, x_clean, det, batch_size=batch_size)
        sa = batched(_score, x_adv[success], det, batch_size=batch_size)
        out[name] = rates(sc, sa)
    return out


def rates(clean_scores: Any, adv_scores: Any) -> dict[str, float]:
    """AUC and TPR at TNR 90 % / 95 % of scores already computed: ``clean_scores[N]`` (the
    negatives) and ``adv_scores[M]`` (the positives: successful adversarial examples only). The one
    definition behind :func:`evaluate` and the detection columns of a sweep report.

    Returns:
        ``{"auc", "tpr_at_tnr90", "tpr_at_tnr95", "n_clean", "n_adv"}``.

    Example:
        >>> rates([0.0, 1.0, 2.0], [1.5, 3.0])["auc"]
        0.8333333333333334
    """
    sc = np.asarray(clean_scores, np.float64).reshape(-1)
    sa = np.asarray(adv_scores, np.float64).reshape(-1)
    if sc.size == 0 or sa.size == 0:
        raise ValueError("detection rates need at least one clean and one adversarial score")
    labels = np.concatenate([np.zeros(len(sc), bool), np.ones(len(sa), bool)])
    row: dict[str, Any] = {"auc": auc(np.concatenate([sc, sa]), labels)}
    for tnr in TNRS:
        row[f"tpr_at_tnr{round(100 * tnr)}"] = tpr_at_tnr(sc, sa, tnr)
    row["n_clean"], row["n_adv"] = len(sc), len(sa)
    return row
