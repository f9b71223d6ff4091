"""``jaxadv.evaluate``: one attack over a data set and an eps grid, streamed, padded and sharded.

This is the one engine under every entry point (``jaxadv demo``, ``jaxadv attack``, ``jaxadv
sweep``, training's robust evaluation, the benchmarks). Batches of data-set indices are padded to
one fixed size (a multiple of the device count, so one compilation serves every batch, the last one
included), laid out over a 1-D device mesh, and each device attacks its block with ``shard_map``.
Example ``i`` of a data set always uses the key ``fold_in(key, i)``, so per-example results do not
depend on the batch size, the device count or the number of processes. Only small per-example
arrays (and, on request, a few adversarial images) come back to the host.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv.engine import dense as D
from jaxadv.engine import layout, programs
from jaxadv.engine.summary import dense_summary_rows, macro_auc_columns, summary_rows

Array = jax.Array

#: Threat class name -> the norm name used in labels and summaries.
_NORMS = {
    "LinfBall": "linf",
    "L2Ball": "l2",
    "L1Ball": "l1",
    "L0Pixels": "l0",
    "Patch": "patch",
    "BiasFieldThreat": "bias",
}
#: Models with more classes than this keep no per-example logits (``[E, N, C]`` would grow
#: with ``C``), so their rows have no macro AUC.
MAX_AUC_CLASSES = 64


class EvaluationStopped(Exception):
    """Raised by :func:`evaluate` when its ``stop`` callback asked it to stop between batches."""


def norm_name(threat: Any) -> str:
    """``'linf'``, ``'l2'``, ``'l1'`` or ``'l0'`` for a threat value or class (its class name
    otherwise)."""
    name = (threat if isinstance(threat, type) else type(threat)).__name__
    return _NORMS.get(name, name)


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Per-example results of :func:`evaluate` (host NumPy arrays).

    Attributes:
        eps: ``f64[E]`` the budgets, in the order given.
        norm: the threat's norm name (``linf``, ``l2``, ``l1``, ``l0``).
        indices: ``int64[N]`` data-set indices of the evaluated examples (their keys are
            ``fold_in(key, index)``).
        labels: ``int32[N]`` true labels.
        clean_correct: ``bool[N]`` the model classifies the clean image correctly.
        clean_margin: ``f32[N]`` margin ``max_{j != y} z_j - z_y`` on the clean image.
        clean_score: ``f32[N]`` log-odds of class 1 on the clean image (for AUCs).
        per_eps: ``[E, N]`` arrays: ``success`` (misclassified at ``adv``; clean errors count),
            ``norm`` (in the threat's norm; pixels for L0), ``queries`` (forward passes),
            ``margin`` (> 0 exactly when fooled), ``l2``, ``linf``, ``ssim`` (NaN for images
            smaller than 11 px), ``score`` (log-odds of class 1 at ``adv``).
        num_classes: number of logits of the model (multi-label: findings ``F``).
        adv: ``[k, H, W, K]`` adversarial images of the first ``k`` examples at ``eps[adv_index]``.
        clean: ``[k, H, W, K]`` the clean images of the same examples.
        adv_index: index into ``eps`` of the images in ``adv``.
        cascade: whether the grid was cascaded (each budget attacked only the survivors).
        seconds: wall time.
        batches: number of padded steps run.
        rule: the multi-label :class:`~jaxadv.multilabel.Rule` (``None`` for integer labels).
            Then ``labels`` are multi-hot ``[N, F]``, "correct" means the rule does not hold,
            ``success`` that it holds, ``margin`` / ``score`` / ``clean_margin`` /
            ``clean_score`` are the rule's margin, ``clean_logits`` is ``f32[N, F]`` and
            ``per_eps['logits']`` ``f32[E, N, F]`` (one logit per finding, for
            :meth:`finding_auc`). For a dense (segmentation) evaluation, the attack's per-image
            :class:`~jaxadv.segmentation.DenseRule`: then ``labels`` are the masks
            ``int32[N, H, W]``, "correct" means the rule does not hold on the clean image,
            ``margin`` / ``clean_margin`` are the rule's margin, ``score`` / ``clean_score`` NaN,
            and ``per_eps`` also holds the per-image ``dice``, ``iou``, ``pixel_accuracy``
            (``target_iou`` when targeted) at ``adv`` and their drops ``<field>_drop`` (clean
            minus adversarial).
        clean_logits: ``f32[N, F]`` per-finding logits on the clean images (multi-label), or
            ``f32[N, C]`` per-class logits of a model with ``2 < C <=`` :data:`MAX_AUC_CLASSES`
            classes (``per_eps['logits']`` ``f32[E, N, C]`` then holds those at ``adv``), for
            the macro AUC under attack; ``None`` otherwise.
        clean_dense: dense evaluations: the per-image ``dice``, ``iou``, ``pixel_accuracy``
            (``target_iou``) ``f32[N]`` of the clean images; ``None`` otherwise.
        detector_scores: with ``detectors=``: ``{name: (clean f32[N], adv f32[E, N])}``, each
            detector's score of the clean image and of the adversarial at every budget (budget 0:
            the clean image); ``None`` otherwise.
        recheck: the re-check mode (``'eager'``, ``'jit'``, ``'float64'``) with ``recheck=``;
            then ``per_eps['recheck_flipped']`` ``bool[E, N]`` marks the reported successes that
            the re-check rejects (:func:`jaxadv.durable.recheck`; budget 0: the clean image).
    """

    eps: np.ndarray
    norm: str
    indices: np.ndarray
    labels: np.ndarray
    clean_correct: np.ndarray
    clean_margin: np.ndarray
    clean_score: np.ndarray
    per_eps: dict[str, np.ndarray]
    num_classes: int
    adv: np.ndarray
    clean: np.ndarray
    adv_index: int
    cascade: bool
    seconds: float
    batches: int
    rule: Any = None
    clean_logits: np.ndarray | None = None
    clean_dense: dict[str, np.ndarray] | None = None
    detector_scores: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
    recheck: str | None = None

    @property
    def robust_accuracy(self) -> np.ndarray:
        """``f32[E]`` fraction of examples still correctly classified at each budget."""
        return (~self.per_eps["success"]).mean(axis=1).astype(np.float32)

    def summary(self, positive_class: int = 1) -> list[dict[str, Any]]:
        """One row per budget (see :func:`jaxadv.engine.summary_rows`); ``auc`` and
        ``auc_under_attack`` for two-class models; ``auc_macro`` (clean) and
        ``auc_macro_under_attack`` (:func:`jaxadv.engine.summary.macro_auc_columns`) for
        multi-class models and, per finding, under a multi-label rule (with ``rule``);
        dense evaluations: :func:`jaxadv.engine.summary.dense_summary_rows`."""
        if self.clean_dense is not None:
            return dense_summary_rows(
                self.eps.tolist(),
                self.per_eps,
                self.clean_correct,
                self.clean_dense,
                self.rule,
                norm=self.norm,
            )
        if self.rule is not None:
            rows = summary_rows(self.eps.tolist(), self.per_eps, self.clean_correct, norm=self.norm)
            for row in rows:
                row["rule"] = self.rule.describe()
        else:
            binary = self.num_classes == 2
            rows = summary_rows(
                self.eps.tolist(),
                self.per_eps,
                self.clean_correct,
                norm=self.norm,
                labels=self.labels,  # balanced accuracies for any class count
                clean_score=self.clean_score if binary else None,
                positive_class=positive_class,
            )
        if self.clean_logits is not None and "logits" in self.per_eps:
            for row, cols in zip(
                rows,
                macro_auc_columns(self.clean_logits, self.per_eps["logits"], self.labels),
                strict=True,
            ):
                row.update(cols)
        return rows

    def finding_auc(self) -> dict[str, Any]:
        """Per-finding AUCs of a multi-label evaluation, clean and at every budget
        (:func:`jaxadv.metrics.finding_auc_under_attack` on the stored logits).

        Returns:
            ``clean`` ``f64[F]``, ``adv`` ``f64[E, F]``, ``clean_macro`` (float) and
            ``adv_macro`` ``f64[E]``: NaN for a finding whose labels hold one class only.
        """
        from jaxadv.metrics import finding_auc_under_attack

        if self.rule is None or self.clean_logits is None:
            raise ValueError("finding_auc needs a multi-label evaluation (evaluate(..., rule=...))")
        return finding_auc_under_attack(self.clean_logits, self.per_eps["logits"], self.labels)


def _as_dataset(data: Any, dense: bool = False):
    from jaxadv import data as jdata

    if isinstance(data, jdata.Dataset) or all(
        hasattr(data, a) for a in ("get", "image_shape", "multi_label", "__len__")
    ):
        return data  # a Dataset, or anything that reads like one
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = (np.asarray(a) for a in data)
        if x.ndim == 4 and x.shape[-1] not in (1, 3):
            raise ValueError(
                f"images must be NHWC with 1 or 3 channels, got shape {x.shape} (NCHW? transpose "
                "with x.transpose(0, 2, 3, 1))"
            )
        if x.dtype.kind == "f" and x.dtype != np.float32:
            x = x.astype(np.float32)  # bf16 / f16 / f64 images are attacked in float32
        if dense:  # masks [N, H, W]: checked against the images by from_mask_arrays
            return jdata.from_mask_arrays(x, y)
        return jdata.from_arrays(x, y)
    raise TypeError(
        f"data must be a jaxadv.data.Dataset or a pair (x, y) of arrays, got {type(data).__name__}"
    )


def check_eps(eps: Any) -> np.ndarray:
    """An eps grid as ``f64[E]`` (as given; the attack runs in float32): non-empty, 1-D, every
    value ``>= 0`` and not NaN."""
    try:
        e = np.asarray(eps, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"eps must be a sequence of numbers, got {eps!r}") from err
    if e.ndim == 0:
        e = e[None]
    if e.ndim != 1 or e.size == 0:
        raise ValueError(f"eps must be a non-empty 1-D grid, got shape {e.shape}")
    if np.any(np.isnan(e)) or np.any(e < 0):
        raise ValueError(f"eps values must be >= 0 and not NaN, got {e.tolist()}")
    return e


def _positive_int(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def evaluate(
    attack: Any,
    model: Any,
    data: Any,
    eps: Sequence[float] | np.ndarray,
    *,
    key: Any,
    mesh: jax.sharding.Mesh | None = None,
    cascade: bool = False,
    batch_size: int = 128,
    indices: Sequence[int] | np.ndarray | None = None,
    num_adv: int = 0,
    adv_eps: float | None = None,
    validate: bool = True,
    progress: Callable[[int, int], None] | None = None,
    stop: Callable[[], bool] | None = None,
    rule: Any = None,
    target: Any = None,
    detectors: Mapping[str, Any] | None = None,
    recheck: str | None = None,
) -> Evaluation:
    """Run ``attack`` on every example of ``data`` at every budget of ``eps``.

    The budgets are passed at run time (``attack.with_eps``), so the attack's own ``eps`` does not
    matter and a new grid never recompiles. A budget of 0 is the clean evaluation (no attack
    runs). With ``cascade=True`` budgets are taken in ascending order and each one attacks only the
    examples that no smaller budget (and no clean error) broke; the others keep the adversarial
    found at the smaller budget, which lies inside every larger ball. The result is then the
    per-example worst case over the grid: ``success[k] = OR_{j <= k} success_independent[j]``.
    Survivors are gathered into blocks padded to three significant bits (:func:`layout.bucket`).

    Args:
        attack: an attack value (``jaxadv.PGD(...)``, ...); ``None`` when every eps is 0.
        model: a :class:`jaxadv.Model` or anything :func:`jaxadv.models.as_model` accepts.
        data: a :class:`jaxadv.data.Dataset`, or ``(x, y)``: images ``[N, H, W, K]`` in
            ``[0, 1]`` (any float dtype is attacked in float32) and integer labels ``[N]``.
        eps: the budgets ``[E]`` in the threat's units (pixels in ``[0, 1]``; pixel counts for L0).
        key: a PRNG key or an int seed; example ``i`` uses ``fold_in(key, i)``.
        mesh: a 1-D device mesh (default: every local device; with several processes after
            ``jax.distributed.initialize``, pass a mesh over ``jax.devices()``).
        cascade: attack each budget only on the survivors of the smaller ones.
        batch_size: examples per device per step.
        indices: the data-set indices to evaluate (default: all), in this order.
        num_adv: keep the adversarial images of the first ``num_adv`` examples...
        adv_eps: ...at this budget (default: the largest).
        validate: check a few examples first (range, NaN, labels against the model's classes).
        progress: called as ``progress(done_steps, total_steps)`` after each step.
        stop: polled between steps; when it returns True, :class:`EvaluationStopped` is raised.
        rule: a multi-label success rule (:mod:`jaxadv.multilabel`: ``one_finding(k)``,
            ``any_finding()``, ``target_set(t)``) for a multi-label data set (multi-hot labels
            ``[N, F]``) and a model returning one logit per finding; the attack then runs under
            :class:`~jaxadv.multilabel.MultiLabel` (passing ``MultiLabel(attack, rule)`` as
            ``attack`` is the same). Required for multi-label data, refused otherwise.
        target: target masks of a targeted dense attack (``jaxadv.ASMA``): one mask ``[H, W]``
            for every image or one per data-set example ``[N, H, W]``.
        detectors: fitted feature-space detectors (:mod:`jaxadv.detect`) by name: each scores
            the clean images and the adversarials of every budget inside the loop (no image is
            kept), returned in ``detector_scores``. Classification only.
        recheck: ``'eager'``, ``'jit'`` or ``'float64'``: re-evaluate every example's
            adversarial at every budget outside the attack's compiled program
            (:func:`jaxadv.durable.recheck`, argmax rule) and mark the reported successes it
            rejects in ``per_eps['recheck_flipped']``; ``summary()`` rows then count them
            (``recheck_flips``). Integer labels only.

    Dense targets: a dense attack (``jaxadv.SegPGD``, ``DAG``, ``ASMA``), a model returning
    per-pixel logits ``[B, H, W, C]`` and masks as labels (a segmentation data set, or
    ``(x, masks[N, H, W])``) run through the same padding, batching and sharding; success is the
    attack's per-image rule, and the per-image Dice / IoU / pixel accuracy, their drops and the
    image metrics (norms, SSIM) are returned (see :class:`Evaluation`).

    Returns:
        An :class:`Evaluation`; ``.summary()`` gives one row per budget.

    Example:
        >>> import jax.numpy as jnp, numpy as np, jaxadv
        >>> model = jaxadv.from_apply(lambda w, x: x.reshape(x.shape[0], -1) @ w, jnp.eye(4, 2))
        >>> x, y = np.full((6, 2, 2, 1), 0.5, np.float32), np.array([0, 1, 0, 1, 0, 1])
        >>> pgd = jaxadv.PGD(threat=jaxadv.LinfBall(eps=0.0), num_steps=5)
        >>> ev = jaxadv.evaluate(pgd, model, (x, y), [0.0, 0.1, 0.3], key=0)
        >>> ev.robust_accuracy.shape
        (3,)
    """
    from jaxadv import _validate
    from jaxadv import multilabel as ml
    from jaxadv import segmentation as S
    from jaxadv.attacks.base import finite_eps
    from jaxadv.models import as_model

    t0 = time.perf_counter()
    model = as_model(model)
    e = check_eps(eps)
    key = _validate.normalize_key(key)
    if attack is None and np.any(e > 0):
        raise ValueError("attack=None evaluates clean accuracy only; every eps must be 0")
    per_dev = _positive_int(batch_size, "batch_size")
    if isinstance(num_adv, bool) or not isinstance(num_adv, (int, np.integer)) or num_adv < 0:
        raise ValueError(f"num_adv must be a non-negative integer, got {num_adv!r}")
    dense = D.is_dense(attack, data)
    ds = _as_dataset(data, dense)
    if detectors and dense:
        raise ValueError("detectors= scores classifiers' inputs; a dense evaluation has none")
    _check_recheck(recheck, dense or rule is not None or isinstance(attack, ml.MultiLabel))
    dense_rule = None
    if dense:
        dense_rule, target = D.resolve(attack, model, ds, rule, target)
    elif target is not None:
        raise ValueError(
            "target= takes the target masks of a dense attack (jaxadv.ASMA); classification "
            "attacks are evaluated untargeted"
        )
    elif hasattr(ds, "masks"):
        raise ValueError(
            "the data set holds masks [N, H, W]; attack a segmentation model with a dense attack "
            "(jaxadv.SegPGD, jaxadv.DAG, jaxadv.ASMA)"
        )
    if isinstance(attack, ml.MultiLabel):
        if rule is not None and rule is not attack.rule:
            raise ValueError("give the multi-label rule once: in MultiLabel(attack, rule) or rule=")
        attack, rule = attack.attack, attack.rule
    if rule is not None and not isinstance(rule, ml.Rule):
        raise TypeError(f"rule must be a jaxadv.multilabel.Rule, got {type(rule).__name__}")
    if ds.multi_label and rule is None:
        raise ValueError(
            f"the data set is multi-label ({ds.num_classes} findings); pass a success rule, "
            "rule=jaxadv.multilabel.any_finding() / one_finding(k) / target_set(t), or reduce it "
            "to one integer label per example with jaxadv.data.select_finding"
        )
    if rule is not None and not ds.multi_label:
        raise ValueError(
            f"rule={rule.describe()!r} is a multi-label rule but the data set has one integer "
            "label per example; drop the rule, or give multi-hot labels [N, F]"
        )
    if rule is not None:
        rule.check(ds.num_classes)
    n_all = len(ds)
    idx = np.arange(n_all, dtype=np.int64) if indices is None else np.asarray(indices)
    if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"indices must be a non-empty 1-D integer array, got {indices!r}")
    if idx.min() < 0 or idx.max() >= n_all:
        raise ValueError(f"indices must lie in [0, {n_all}), got [{idx.min()}, {idx.max()}]")
    idx = idx.astype(np.int64)
    if adv_eps is None:
        adv_index = int(np.argmax(e))
    else:
        hits = np.flatnonzero(np.isclose(e, adv_eps))
        if hits.size == 0:
            raise ValueError(f"adv_eps={adv_eps} is not in the eps grid {e.tolist()}")
        adv_index = int(hits[0])
    threat = attack.threat if attack is not None else None
    if validate:
        xv, yv = ds.get(idx[: min(idx.size, 16)])
        xv, yv = np.asarray(xv, np.float32), np.asarray(yv, np.int32)
        tv = D.target_rows(target, idx[: min(idx.size, 16)]) if dense else None
        if dense and attack is None:
            S.check_inputs(None, model, xv, yv, tv)
        elif dense:
            attack.check_inputs(model, xv, yv, tv)
        elif rule is None:
            _validate.check_attack_inputs(threat, model, xv, yv)
        else:
            ml.check_inputs(threat, model, xv, yv, rule)

    mesh = mesh or layout.data_mesh()
    per_dev = layout.block_size(idx.size, per_dev)
    h, w, k = ds.image_shape
    num_classes = int(
        jax.eval_shape(model, jax.ShapeDtypeStruct((1, h, w, k), np.float32)).shape[-1]
    )
    e_run = e if threat is None else finite_eps(threat, e, (1, h, w, k))
    if rule is not None and attack is not None:
        attack = ml.MultiLabel(attack=attack, rule=rule)
    run = _Runner(attack, model, ds, e_run, key, mesh, per_dev, adv_index, num_adv, rule)
    # a multi-class model's logits, for the macro AUC under attack (kept under a rule anyway)
    run.keep_logits = rule is None and not dense and 2 < num_classes <= MAX_AUC_CLASSES
    run.detectors = {n: layout.replicate(d, mesh) for n, d in (detectors or {}).items()}
    run.recheck = (recheck, model) if recheck else None
    if dense:
        run.set_dense(dense_rule, target)
    steps = layout.chunks(idx.size, per_dev * mesh.devices.size)
    parts: list[dict[str, np.ndarray]] = []
    for i, pos in enumerate(steps):
        parts.append(run.cascade(idx[pos]) if cascade else run.independent(idx[pos]))
        if progress is not None:
            progress(i + 1, len(steps))
        if i + 1 < len(steps) and stop is not None and stop():
            raise EvaluationStopped
    # clean fields are [b, ...], per-eps fields [E, b, ...]: join on the example axis
    cat = {
        f: np.concatenate([p[f] for p in parts], axis=0 if f in _CLEAN or f.startswith(_DC) else 1)
        for f in parts[0]
    }
    det = {n: (cat.pop(_DC + n), cat.pop(_DA + n)) for n in run.detectors} or None
    cat.pop("clean_recheck", None)  # budget 0 of per_eps['recheck_flipped']
    clean_dense = D.split_clean(cat) if dense else None
    empty = np.zeros((0, h, w, k), np.float32)
    return Evaluation(
        eps=e,
        norm=norm_name(threat) if threat is not None else "linf",
        indices=idx,
        labels=cat.pop("y").astype(np.int32),
        clean_correct=cat.pop("clean_correct").astype(bool),
        clean_margin=cat.pop("clean_margin"),
        clean_score=cat.pop("clean_score"),
        per_eps=cat,
        num_classes=num_classes,
        adv=run.sample if run.sample is not None else empty,
        clean=run.sample_clean if run.sample_clean is not None else empty,
        adv_index=adv_index,
        cascade=bool(cascade),
        seconds=time.perf_counter() - t0,
        batches=run.steps,
        rule=dense_rule if dense else rule,
        clean_logits=cat.pop("clean_logits", None),
        clean_dense=clean_dense,
        detector_scores=det,
        recheck=recheck,
    )


def _check_recheck(mode: Any, unsupported: bool) -> None:
    from jaxadv.durable import RECHECK_MODES

    if mode is not None and mode not in RECHECK_MODES:
        raise ValueError(f"recheck must be one of {', '.join(RECHECK_MODES)} or None, got {mode!r}")
    if mode is not None and unsupported:
        raise ValueError(
            "recheck= re-checks the argmax rule of integer labels; leave it out for multi-label "
            "rules and dense (segmentation) evaluations"
        )


#: Per-example fields of the clean pass (example axis first); the others are per eps.
_CLEAN = ("y", "clean_correct", "clean_margin", "clean_score", "clean_logits", "clean_recheck")
_CLEAN += tuple(f"clean_{k}" for k in programs.DENSE_FIELDS)

#: Prefixes of the detector scores' fields (clean ``[b]``, per eps ``[E, b]``) inside the loop.
_DC, _DA = "clean_det:", "det:"


@jax.jit
def _detector_score(x: jax.Array, det: Any) -> jax.Array:
    """``x[B, H, W, K] -> f32[B]`` a fitted detector's score (higher: more adversarial)."""
    return det.score(x).astype(jnp.float32)


class _Runner:
    """Per-batch device work of :func:`evaluate` (holds the replicated attack, model and key).

    Every step is ``per_dev * ndev`` rows (the last batch padded), so the attack compiles once per
    data set; cascade levels use smaller blocks from :func:`layout.bucket`.
    """

    def __init__(self, attack, model, ds, e, key, mesh, per_dev, adv_index, num_adv, rule=None):
        self.rule = layout.replicate(rule, mesh) if rule is not None else None
        self.attack = layout.replicate(attack, mesh) if attack is not None else None
        self.model = layout.replicate(model, mesh)
        self.key = layout.replicate(key, mesh)
        self.ds, self.mesh, self.per_dev = ds, mesh, per_dev
        self.e = e.astype(np.float32)  # the attack's arithmetic
        self.ndev = mesh.devices.size
        self.adv_index, self.num_adv = adv_index, num_adv
        h, w, _ = ds.image_shape
        self.ssim_win = 11 if min(h, w) >= 11 else 0
        self.dense_rule, self.target = None, None  # dense evaluations: see set_dense
        self.keep_logits = False  # integer labels: keep the logits [.., C] as well
        self.detectors: dict[str, Any] = {}  # name -> fitted detector (replicated)
        self.recheck: tuple[str, Any] | None = None  # (mode, the model as given, not replicated)
        self.sample: np.ndarray | None = None  # adversarials of the first examples
        self.sample_clean: np.ndarray | None = None
        self.steps = 0

    def set_dense(self, rule: Any, target: np.ndarray | None) -> None:
        """Run as a dense evaluation under the per-image ``rule`` (target masks ``[H, W]`` or
        ``[N, H, W]`` of a targeted attack)."""
        self.dense_rule = layout.replicate(rule, self.mesh)
        self.target = target

    def _batch(self, rows: np.ndarray, size: int):
        """Indices, images, labels and (dense, targeted) target masks of a padded batch."""
        pidx = layout.pad_rows(rows, size)
        dense = self.dense_rule is not None
        gi, gx, gy = layout.global_batch(self.mesh, self.ds, pidx, dense=dense)
        gt = None if self.target is None else layout.global_masks(self.mesh, self.target, pidx)
        return gi, gx, gy, gt

    def _attack(self, eps: np.ndarray, gi, gx, gy, gt, b: int):
        """Attack program, then metrics program, at ``eps[E']``: host arrays ``[E', b]`` and the
        device images ``adv[E', B, ...]``."""
        self.steps += 1
        advs, per = programs.attack_step(
            self.attack, eps, self.key, self.model, gi, gx, gy, gt, mesh=self.mesh
        )
        met = programs.metrics_step(
            self.model,
            gx,
            gy,
            advs,
            self.rule,
            mesh=self.mesh,
            ssim_win=self.ssim_win,
            dense=self.dense_rule is not None,
            keep_logits=self.keep_logits,
        )
        for n, det in self.detectors.items():
            per[_DA + n] = jnp.stack([_detector_score(advs[j], det) for j in range(eps.size)])
        host = layout.to_host({**per, **met})
        if self.dense_rule is not None:  # no positive-class score for a dense target
            host["score"] = np.full(host["success"].shape, np.nan, np.float32)
        if self.recheck is not None:
            yh = layout.to_host({"y": gy})["y"]  # once per batch, not once per eps
            flips = [self._flipped(advs[j], yh, host["success"][j]) for j in range(eps.size)]
            host["recheck_flipped"] = np.stack(flips)
        return {k: v[:, :b] for k, v in host.items()}, advs

    def _clean(self, gx, gy, gt, b: int) -> dict[str, np.ndarray]:
        if self.dense_rule is not None:
            clean = programs.dense_clean_step(
                self.model, gx, gy, gt, self.dense_rule, mesh=self.mesh
            )
        else:
            clean = programs.clean_step(
                self.model, gx, gy, self.rule, mesh=self.mesh, keep_logits=self.keep_logits
            )
        for n, det in self.detectors.items():
            clean[_DC + n] = _detector_score(gx, det)
        host = layout.to_host({**clean, "y": gy})
        if self.recheck is not None:  # budget 0: the clean image is its own adversarial
            host["clean_recheck"] = self._flipped(gx, host["y"], ~host["clean_correct"])
        return {k: v[:b] for k, v in host.items()}

    def _flipped(self, adv, y: np.ndarray, success: np.ndarray) -> np.ndarray:
        """``bool[B]``: reported successes at ``adv[B, ...]`` (labels ``y``, on the host) that the
        re-check outside the attack's program rejects (on the host, every process re-checks the
        whole batch)."""
        from jaxadv.durable import recheck

        mode, model = self.recheck
        x = layout.to_host({"adv": adv})["adv"]
        return recheck(model, x, y, success, mode=mode)["flipped"]

    @staticmethod
    def _unattacked(clean: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Per-example fields of the clean image as its own adversarial (budget 0)."""
        b = clean["clean_correct"].shape[0]
        out = {
            "success": ~clean["clean_correct"],
            "norm": np.zeros(b, np.float32),
            "queries": np.ones(b, np.int32),
            "margin": clean["clean_margin"],
            "l2": np.zeros(b, np.float32),
            "linf": np.zeros(b, np.float32),
            "ssim": np.ones(b, np.float32),
            "score": clean["clean_score"],
        }
        if "clean_logits" in clean:  # per-finding (multi-label) or per-class logits
            out["logits"] = clean["clean_logits"]
        out.update(D.unattacked(clean))
        if "clean_recheck" in clean:
            out["recheck_flipped"] = clean["clean_recheck"]
        out.update({_DA + k[len(_DC) :]: v for k, v in clean.items() if k.startswith(_DC)})
        return out

    def _open_sample(self, rows: np.ndarray) -> bool:
        """Start the kept images with the clean ones of the first batch; True on that batch."""
        if self.num_adv == 0 or self.sample is not None:
            return False
        x, _ = self.ds.get(rows[: self.num_adv])
        self.sample_clean = np.asarray(x, np.float32)
        self.sample = self.sample_clean.copy()
        return True

    def _keep(self, pos: np.ndarray, advs_row: Any) -> None:
        """Overwrite the kept images at batch positions ``pos`` (rows of ``advs_row``)."""
        want = np.flatnonzero(pos < self.sample.shape[0])
        if want.size:
            got = layout.to_host({"adv": advs_row})["adv"]
            self.sample[pos[want]] = got[want]

    def independent(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        b = rows.shape[0]
        gi, gx, gy, gt = self._batch(rows, self.per_dev * self.ndev)
        first = self._open_sample(rows)
        clean = self._clean(gx, gy, gt, b)
        out = {
            k: np.repeat(v[None], self.e.size, axis=0) for k, v in self._unattacked(clean).items()
        }
        pos = np.flatnonzero(self.e > 0)
        if pos.size:
            got, advs = self._attack(self.e[pos], gi, gx, gy, gt, b)
            for k, v in got.items():
                out[k][pos] = v
            if first and self.e[self.adv_index] > 0:
                j = int(np.flatnonzero(pos == self.adv_index)[0])
                self._keep(np.arange(b), advs[j])
        return {**out, **clean}

    def cascade(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        b = rows.shape[0]
        _, gx, gy, gt = self._batch(rows, self.per_dev * self.ndev)
        keeping = self._open_sample(rows)
        clean = self._clean(gx, gy, gt, b)
        prev = self._unattacked(clean)
        out = {k: np.empty((self.e.size, *v.shape), v.dtype) for k, v in prev.items()}
        for k in np.argsort(self.e, kind="stable"):
            alive = np.flatnonzero(~prev["success"]) if self.e[k] > 0 else np.zeros(0, np.int64)
            if alive.size:
                blk = layout.bucket(-(-alive.size // self.ndev), self.per_dev)
                gi_, gx_, gy_, gt_ = self._batch(rows[alive], blk * self.ndev)
                got, advs = self._attack(self.e[k : k + 1], gi_, gx_, gy_, gt_, alive.size)
                prev = {f: v.copy() for f, v in prev.items()}
                for f, v in got.items():
                    prev[f][alive] = v[0]
                if keeping:
                    self._keep(alive, advs[0])
            for f, v in prev.items():
                out[f][k] = v
            if k == self.adv_index:
                keeping = False  # larger budgets do not change the kept images
        return {**out, **clean}
