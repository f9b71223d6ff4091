"""Classification metrics that survive class imbalance (host code, NumPy).

Medical data sets are small and imbalanced (ISIC 2017: 75 % benign; PneumoniaMNIST: 74 %
pneumonia), so plain accuracy can look good for a model that learned nothing: a constant answer
of the majority class scores the *majority baseline*. :func:`classification_metrics` reports
accuracy with that baseline beside it, balanced accuracy (mean per-class recall), the per-class
recalls and the ROC AUC (binary) or one-vs-rest macro AUC (multi-class). Evaluated on adversarial
logits, the same numbers are the robust versions (balanced robust accuracy, AUC under attack).

AUCs go through :func:`jaxadv.metrics.auc` (rank based, ties count one half) on the log-odds of
each class (:func:`jaxadv.metrics.positive_log_odds`): one way to compute each.

Example:
    >>> import numpy as np
    >>> from jaxadv.classmetrics import classification_metrics
    >>> logits = np.array([[2.0, 0.0], [1.0, 0.0], [0.0, 1.0], [3.0, 0.0]], np.float32)
    >>> m = classification_metrics(logits, [0, 0, 1, 1])
    >>> m["accuracy"], m["majority_baseline"], m["balanced_accuracy"], m["auc"]
    (0.75, 0.5, 0.75, 0.5)
"""

from __future__ import annotations

import logging
import math
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxadv.metrics import auc, positive_log_odds

logger = logging.getLogger(__name__)


def _labels(y: Any, n: int | None = None) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers [N] (or [N, 1]), got {y.dtype} {y.shape}")
    if n is not None and y.shape[0] != n:
        raise ValueError(f"labels hold {y.shape[0]} examples but the predictions {n}")
    if y.size and y.min() < 0:
        raise ValueError(f"labels must be >= 0, found {int(y.min())}")
    return y.astype(np.int64)


def majority_baseline(y: Any, num_classes: int | None = None) -> tuple[int, float]:
    """The majority class of ``y`` and the accuracy a constant answer of it scores.

    Args:
        y: integer labels ``[N]``.
        num_classes: number of classes (default ``max(y) + 1``).

    Returns:
        ``(majority_class, baseline_accuracy)``; ties go to the lowest class index.

    Example:
        >>> majority_baseline([1, 1, 0, 1])
        (1, 0.75)
    """
    y = _labels(y)
    if y.size == 0:
        raise ValueError("majority_baseline needs at least one label")
    counts = np.bincount(y, minlength=num_classes or 0)
    c = int(np.argmax(counts))
    return c, float(counts[c] / y.size)


def per_class_recall(pred: Any, y: Any, num_classes: int | None = None) -> np.ndarray:
    """Recall (sensitivity) of each class: ``P(pred = c | y = c)``.

    Args:
        pred: predicted classes ``int[N]``.
        y: true classes ``int[N]``.
        num_classes: ``C`` (default ``max(pred, y) + 1``).

    Returns:
        ``f64[C]``; NaN for a class absent from ``y`` (its recall is undefined).

    Example:
        >>> per_class_recall([0, 1, 1, 1], [0, 0, 1, 1]).tolist()
        [0.5, 1.0]
    """
    p = _labels(pred)
    y = _labels(y, p.shape[0])
    c = num_classes or int(max(p.max(initial=-1), y.max(initial=-1)) + 1)
    hit = np.bincount(y[p == y], minlength=c)[:c].astype(np.float64)
    support = np.bincount(y, minlength=c)[:c].astype(np.float64)
    return np.where(support > 0, hit / np.maximum(support, 1), np.nan)


def balanced_accuracy(pred: Any, y: Any, num_classes: int | None = None) -> float:
    """Mean of the per-class recalls over the classes present in ``y`` (sklearn's definition).

    A constant prediction scores ``1 / (number of classes present)`` whatever the imbalance.

    Example:
        >>> balanced_accuracy([1, 1, 1, 1], [0, 1, 1, 1])
        0.5
    """
    r = per_class_recall(pred, y, num_classes)
    r = r[~np.isnan(r)]
    return float(np.mean(r)) if r.size else math.nan


def balanced_rate(ok: Any, y: Any) -> float:
    """Mean over the classes present in ``y`` of the fraction of examples of that class where
    ``ok`` holds: the balanced accuracy when ``ok`` is "predicted correctly", the balanced robust
    accuracy when it is "correct and not broken by the attack".

    Args:
        ok: ``bool[N]``.
        y: integer labels ``[N]``.

    Returns:
        A float; NaN for no examples.

    Example:
        >>> balanced_rate([True, False, True, True], [0, 1, 1, 1])
        0.8333333333333333
    """
    y = _labels(y)
    ok = np.asarray(ok, bool).reshape(-1)
    if ok.shape[0] != y.shape[0]:
        raise ValueError(f"ok holds {ok.shape[0]} examples but the labels {y.shape[0]}")
    if y.size == 0:
        return math.nan
    support = np.bincount(y)
    hit = np.bincount(y, weights=ok.astype(np.float64), minlength=support.size)
    present = support > 0
    return float(np.mean(hit[present] / support[present]))


def macro_auc(logits: Any, y: Any) -> float:
    """One-vs-rest ROC AUC averaged over the classes present with at least one negative.

    Class ``c``'s score is the log-odds of its softmax probability; with two classes this equals
    the binary AUC of class 1 (and of class 0: the two are the same number).

    Args:
        logits: ``[N, C]``.
        y: true classes ``int[N]``.

    Returns:
        The macro AUC, NaN when no class has both positives and negatives.
    """
    z = jnp.asarray(logits)
    y = _labels(y, z.shape[0])
    vals = []
    for c in range(z.shape[1]):
        pos = y == c
        if pos.any() and not pos.all():
            vals.append(auc(np.asarray(positive_log_odds(z, c), np.float64), pos))
    return float(np.mean(vals)) if vals else math.nan


def classification_metrics(
    logits: Any,
    y: Any,
    *,
    positive_class: int = 1,
) -> dict[str, Any]:
    """Accuracy with its majority baseline, balanced accuracy, per-class recall and AUC.

    Args:
        logits: ``[N, C]`` model outputs (clean images, or adversarial ones for robust versions).
        y: true classes ``int[N]`` (``[N, 1]`` accepted).
        positive_class: the positive class of the binary AUC.

    Returns:
        JSON-ready dict: ``num_examples``, ``accuracy``, ``majority_class``,
        ``majority_baseline``, ``balanced_accuracy``, ``recall_per_class`` (list, NaN for an
        absent class), ``beats_majority`` (accuracy above the baseline *and* balanced accuracy
        above chance ``1 / C``), and ``auc`` (binary: positive class vs the other; NaN with one
        class present) or ``macro_auc`` (``C > 2``, one-vs-rest).
    """
    z = np.asarray(logits)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"logits must be [N, C] with C >= 2, got shape {z.shape}")
    y = _labels(y, z.shape[0])
    if z.shape[0] == 0:
        raise ValueError("classification_metrics needs at least one example")
    c = z.shape[1]
    if y.max() >= c:
        raise ValueError(f"labels go up to {int(y.max())} but the model has {c} classes")
    pred = np.argmax(z, axis=1)
    maj, base = majority_baseline(y, c)
    out: dict[str, Any] = {
        "num_examples": int(y.size),
        "accuracy": float(np.mean(pred == y)),
        "majority_class": maj,
        "majority_baseline": base,
        "balanced_accuracy": balanced_accuracy(pred, y, c),
        "recall_per_class": per_class_recall(pred, y, c).tolist(),
    }
    chance = 1.0 / int(np.unique(y).size)
    out["beats_majority"] = bool(
        out["accuracy"] > base + 1e-12 and out["balanced_accuracy"] > chance + 1e-12
    )
    if c == 2:
        if not 0 <= positive_class < 2:
            raise ValueError(f"positive_class must be 0 or 1, got {positive_class}")
        pos = y == positive_class
        out["auc"] = (
            auc(np.asarray(positive_log_odds(jnp.asarray(z), positive_class), np.float64), pos)
            if pos.any() and not pos.all()
            else math.nan
        )
    else:
        out["macro_auc"] = macro_auc(z, y)
    return out


def warn_if_trivial(metrics: dict[str, Any], split: str = "val") -> bool:
    """Log a warning when a model does not beat the majority baseline; returns whether it does.

    Args:
        metrics: a :func:`classification_metrics` dict.
        split: the split's name for the message (``'val'``, ``'test'``).

    Returns:
        ``metrics['beats_majority']``.
    """
    if metrics["beats_majority"]:
        return True
    score = metrics.get("auc", metrics.get("macro_auc", math.nan))
    logger.warning(
        "the model does not beat the majority baseline on %s: accuracy %.4f vs %.4f for always "
        "answering class %d, balanced accuracy %.4f (chance %.4f), AUC %.4f; robustness numbers "
        "on such a model are meaningless (consider class weights or balanced sampling, augmentation, "
        "more epochs, another learning rate)",
        split,
        metrics["accuracy"],
        metrics["majority_baseline"],
        metrics["majority_class"],
        metrics["balanced_accuracy"],
        1.0 / max(1, sum(not math.isnan(r) for r in metrics["recall_per_class"])),
        score,
    )
    return False


__all__ = [
    "balanced_accuracy",
    "classification_metrics",
    "macro_auc",
    "majority_baseline",
    "per_class_recall",
    "warn_if_trivial",
]
