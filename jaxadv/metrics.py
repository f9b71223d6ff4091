"""Evaluation metrics: accuracy under attack, perturbation sizes, SSIM and AUC.

Conventions: images are float NHWC ``[B, H, W, K]`` in ``[0, 1]``; labels are integer ``[B]``;
``success`` is ``bool[B]`` as in :class:`jaxadv.AttackResult` (a clean error counts as a success).
Everything but :func:`auc`, :func:`auc_under_attack` and :func:`summarize` is a pure ``jnp``
function that works under ``jit`` (those three run on the host and return Python floats).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv._struct import is_concrete
from jaxadv._validate import check_labels
from jaxadv.result import AttackResult

Array = jax.Array


# -- input helpers --------------------------------------------------------------------------------
def _float(x: Any, name: str) -> Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{name} has dtype {x.dtype}; pass floating images in [0, 1] "
            "(for uint8 use x.astype(np.float32) / 255)"
        )
    return x


def _pair(x: Any, x_adv: Any, names: tuple[str, str] = ("x", "x_adv")) -> tuple[Array, Array]:
    """Two float arrays of the same shape (with a batch axis), cast to one common dtype."""
    a, b = _float(x, names[0]), _float(x_adv, names[1])
    if a.shape != b.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape, got {a.shape} and {b.shape}"
        )
    if a.ndim < 1 or a.shape[0] == 0:
        raise ValueError(f"{names[0]} needs a non-empty leading batch axis, got shape {a.shape}")
    if a.dtype != b.dtype:
        # Strict promotion forbids mixing float widths; compare in float32.
        a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    return a, b


def _nhwc(x: Array, name: str) -> None:
    if x.ndim != 4:
        raise ValueError(
            f"{name} must have rank 4, layout NHWC [B, H, W, K]; got shape {x.shape}. "
            "Add a channel axis with x[..., None] or a batch axis with x[None]."
        )


def _success(result_or_success: Any, name: str = "success") -> Array:
    s = (
        result_or_success.success
        if isinstance(result_or_success, AttackResult)
        else result_or_success
    )
    s = jnp.asarray(s)
    if s.dtype != jnp.bool_:
        raise TypeError(
            f"{name} must be a bool array [B] (e.g. result.success or pred != y), "
            f"got dtype {s.dtype}"
        )
    if s.ndim != 1 or s.shape[0] == 0:
        raise ValueError(f"{name} must have shape [B] with B >= 1, got {s.shape}")
    return s


def _check_logits(logits: Array) -> None:
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ValueError(f"logits must have shape [B, C] with B >= 1, got {logits.shape}")


# -- accuracy -------------------------------------------------------------------------------------
def accuracy(logits: Array, y: Array) -> Array:
    """Top-1 accuracy of ``logits[B, C]`` against integer labels ``y[B]``.

    Returns:
        ``f32[]`` fraction of examples with ``argmax(logits) == y``.

    Example:
        >>> import jax.numpy as jnp
        >>> float(accuracy(jnp.array([[2.0, 0.0], [0.0, 1.0]]), jnp.array([0, 0])))
        0.5
    """
    logits = jnp.asarray(logits)
    _check_logits(logits)
    check_labels(y, logits.shape[0], logits.shape[1])
    pred = jnp.argmax(logits, axis=1)
    return jnp.mean((pred == jnp.asarray(y).astype(pred.dtype)).astype(jnp.float32))


def clean_accuracy(model: Any, x: Array, y: Array) -> Array:
    """Accuracy ``f32[]`` of ``model`` on clean images ``x[B, H, W, K]`` with labels ``y[B]``."""
    return accuracy(model(x), y)


def robust_accuracy(result_or_success: AttackResult | Array) -> Array:
    """Robust accuracy: the fraction of examples the attack did *not* fool.

    ``success`` already counts clean errors as successes (the library re-evaluates the model on
    the adversarial input), so this is ``mean(~success)`` over the whole batch, and it is never
    above the clean accuracy.

    Args:
        result_or_success: an :class:`~jaxadv.AttackResult`, or its ``success`` array ``bool[B]``.

    Returns:
        ``f32[]`` robust accuracy in ``[0, 1]``.

    Example:
        >>> import jax.numpy as jnp
        >>> float(robust_accuracy(jnp.array([True, False, False, False])))
        0.75
    """
    s = _success(result_or_success)
    return jnp.mean((~s).astype(jnp.float32))


def attack_success_rate(success: AttackResult | Array, clean_correct: Array) -> Array:
    """Attack success rate over the examples the model classified correctly before the attack.

    ``ASR = #(success & clean_correct) / #clean_correct``: the denominator is the number of
    clean-correct examples, so clean errors (which ``success`` counts as successes) neither help nor
    hurt the attack. With no clean-correct example the rate is undefined and ``NaN`` is returned.

    Args:
        success: ``bool[B]`` per-example success, or an :class:`~jaxadv.AttackResult`.
        clean_correct: ``bool[B]``, ``argmax(model(x)) == y``.

    Returns:
        ``f32[]`` success rate in ``[0, 1]``, or ``NaN`` when ``clean_correct`` is all false.

    Example:
        >>> import jax.numpy as jnp
        >>> s = jnp.array([True, True, False, True])
        >>> cc = jnp.array([False, True, True, True])  # the first example was already wrong
        >>> round(float(attack_success_rate(s, cc)), 4)
        0.6667
    """
    s = _success(success)
    cc = _success(clean_correct, "clean_correct")
    if s.shape != cc.shape:
        raise ValueError(
            f"success and clean_correct must match in shape, got {s.shape}, {cc.shape}"
        )
    num = jnp.sum(s & cc).astype(jnp.float32)
    den = jnp.sum(cc).astype(jnp.float32)
    return jnp.where(den > 0, num / jnp.maximum(den, 1.0), jnp.nan)


# -- perturbation sizes ---------------------------------------------------------------------------
def l0_pixels(x: Array, x_adv: Array, tol: float | Array = 0.0) -> Array:
    """Number of pixels (spatial locations) changed, per example.

    A location ``(h, w)`` counts once when any of its channels differs by more than ``tol``, which
    is how one-pixel and sparse attacks are budgeted.

    Args:
        x: clean images ``[B, H, W, K]``.
        x_adv: adversarial images ``[B, H, W, K]``.
        tol: changes ``|x_adv - x| <= tol`` are ignored (e.g. float round-off).

    Returns:
        ``int32[B]`` changed pixel counts in ``[0, H * W]``.
    """
    a, b = _pair(x, x_adv)
    _nhwc(a, "x")
    changed = jnp.any(jnp.abs(b - a) > jnp.asarray(tol, a.dtype), axis=-1)
    return jnp.sum(changed, axis=(1, 2), dtype=jnp.int32)


def l2(x: Array, x_adv: Array) -> Array:
    """Euclidean norm ``[B]`` of ``x_adv - x`` over all pixels and channels of each example."""
    a, b = _pair(x, x_adv)
    d = (b - a).reshape(a.shape[0], -1)
    return jnp.sqrt(jnp.sum(d * d, axis=1))


def linf(x: Array, x_adv: Array) -> Array:
    """Largest absolute change ``[B]`` of ``x_adv - x`` over all pixels and channels of each
    example."""
    a, b = _pair(x, x_adv)
    return jnp.max(jnp.abs(b - a).reshape(a.shape[0], -1), axis=1)


# -- SSIM -----------------------------------------------------------------------------------------
def _separable_valid_filter(maps: Array, g: Array) -> Array:
    """Filter ``maps[N, H, W, 1]`` with the 2-D window ``g ⊗ g``, keeping only full windows."""
    k = g.shape[0]
    dn = ("NHWC", "HWIO", "NHWC")
    # HIGHEST: on GPUs the default conv precision may be TF32, far too coarse for SSIM's
    # E[x^2] - E[x]^2 differences.
    hi = jax.lax.Precision.HIGHEST
    out = jax.lax.conv_general_dilated(
        maps, g.reshape(k, 1, 1, 1), (1, 1), "VALID", dimension_numbers=dn, precision=hi
    )
    return jax.lax.conv_general_dilated(
        out, g.reshape(1, k, 1, 1), (1, 1), "VALID", dimension_numbers=dn, precision=hi
    )


def ssim(
    a: Array,
    b: Array,
    *,
    data_range: float | Array = 1.0,
    win_size: int = 11,
    sigma: float | Array = 1.5,
    k1: float | Array = 0.01,
    k2: float | Array = 0.03,
) -> Array:
    """Mean structural similarity per example (Wang et al., 2004), Gaussian-weighted.

    Local means, variances and the covariance are taken under a ``win_size × win_size`` Gaussian
    window (standard deviation ``sigma``, separable, normalised to sum 1) with population
    (not sample) moments; the SSIM map is computed per channel and averaged over channels and over
    the *valid* region, the positions whose window lies fully inside the image
    (``(H - win_size + 1) × (W - win_size + 1)`` of them).

    With the defaults this equals
    ``skimage.metrics.structural_similarity(a_i, b_i, data_range=1.0, gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, channel_axis=-1)`` for each example ``i``. (skimage
    filters the whole image with a Gaussian truncated at radius ``int(3.5 * sigma + 0.5)``, 5 for
    ``sigma=1.5``, and then drops a ``(win_size - 1) // 2`` border; the two agree whenever
    ``win_size == 2 * int(3.5 * sigma + 0.5) + 1``, e.g. ``win_size=7`` with ``sigma=0.8``.)

    Reference: Z. Wang, A. C. Bovik, H. R. Sheikh, E. P. Simoncelli, "Image quality assessment: from
    error visibility to structural similarity", IEEE TIP 13(4), 2004.

    Args:
        a: images ``[B, H, W, K]`` (``K = 1`` grey or ``3`` RGB; any ``K`` works).
        b: images ``[B, H, W, K]`` to compare with ``a``.
        data_range: dynamic range of the pixel values (1 for images in ``[0, 1]``).
        win_size: odd window side; a Python int (it decides shapes: static under ``jit``).
        sigma: standard deviation of the Gaussian window, in pixels.
        k1: luminance stabiliser, ``C1 = (k1 * data_range) ** 2``.
        k2: contrast stabiliser, ``C2 = (k2 * data_range) ** 2``.

    Returns:
        ``[B]`` mean SSIM of each pair, in ``[-1, 1]``; exactly 1 for identical images.

    Raises:
        ValueError: bad shapes, an even or non-positive ``win_size``, images smaller than the
            window, or (when concrete) non-positive ``sigma`` / ``data_range`` or negative
            ``k1`` / ``k2``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 1))
        >>> [round(float(v), 4) for v in ssim(x, x)]
        [1.0, 1.0]
    """
    a, b = _pair(a, b, ("a", "b"))
    _nhwc(a, "a")
    if isinstance(win_size, bool) or not isinstance(win_size, (int, np.integer)):
        raise ValueError(
            f"win_size must be a Python int (it fixes shapes), got {type(win_size).__name__}; "
            "under jit mark it static (static_argnames='win_size')"
        )
    win_size = int(win_size)
    if win_size < 1 or win_size % 2 == 0:
        raise ValueError(f"win_size must be a positive odd integer, got {win_size}")
    _, h, w, _ = a.shape
    if h < win_size or w < win_size:
        raise ValueError(
            f"images of {h}x{w} pixels are smaller than the {win_size}x{win_size} SSIM window; "
            "pass a smaller odd win_size (and a matching sigma) or use larger images"
        )
    for name, val, strict in (
        ("sigma", sigma, True),
        ("data_range", data_range, True),
        ("k1", k1, False),
        ("k2", k2, False),
    ):
        if is_concrete(val):
            v = np.asarray(val)
            if np.any(np.isnan(v)) or np.any(v <= 0 if strict else v < 0):
                raise ValueError(f"{name} must be {'> 0' if strict else '>= 0'}, got {val!r}")

    # Half-precision moments lose everything to cancellation; work in at least float32.
    dt = a.dtype if jnp.finfo(a.dtype).bits >= 32 else jnp.dtype(jnp.float32)
    return _ssim_core(a.astype(dt), b.astype(dt), data_range, sigma, k1, k2, win_size=win_size)


# One compiled program instead of a dozen eagerly dispatched ops (it nests fine in a user's jit).
@functools.partial(jax.jit, static_argnames="win_size")
def _ssim_core(a, b, data_range, sigma, k1, k2, *, win_size: int) -> Array:
    dt = a.dtype
    bsz, h, w, c = a.shape
    r = (win_size - 1) // 2
    t = jnp.arange(win_size, dtype=dt) - r
    g = jnp.exp(-0.5 * jnp.square(t / jnp.asarray(sigma, dt)))
    g = g / jnp.sum(g)

    # Moments are shift invariant: subtracting a per-image, per-channel constant shared by a and b
    # shrinks the E[x^2] - E[x]^2 cancellation in float32 without changing the exact result.
    shift = 0.5 * (
        jnp.mean(a, axis=(1, 2), keepdims=True) + jnp.mean(b, axis=(1, 2), keepdims=True)
    )
    xa, xb = a - shift, b - shift
    maps = jnp.stack([xa, xb, xa * xa, xb * xb, xa * xb])  # [5, B, H, W, K]
    maps = maps.transpose(0, 1, 4, 2, 3).reshape(5 * bsz * c, h, w, 1)
    f = _separable_valid_filter(maps, g)
    f = f.reshape(5, bsz, c, h - 2 * r, w - 2 * r)
    mx, my, exx, eyy, exy = f[0], f[1], f[2], f[3], f[4]
    vx = exx - mx * mx
    vy = eyy - my * my
    vxy = exy - mx * my
    s = shift.reshape(bsz, c, 1, 1)
    ux, uy = mx + s, my + s

    rng = jnp.asarray(data_range, dt)
    c1 = jnp.square(jnp.asarray(k1, dt) * rng)
    c2 = jnp.square(jnp.asarray(k2, dt) * rng)
    num = (2 * ux * uy + c1) * (2 * vxy + c2)
    den = (ux * ux + uy * uy + c1) * (vx + vy + c2)
    # Every channel has the same valid region, so the mean over all equals skimage's mean of
    # per-channel means.
    return jnp.mean(num / den, axis=(1, 2, 3))


# -- AUC (host) -----------------------------------------------------------------------------------
def _average_ranks(v: np.ndarray) -> np.ndarray:
    """1-based ranks of ``v``; tied values share the average of their ranks."""
    n = v.shape[0]
    order = np.argsort(v, kind="mergesort")
    sv = v[order]
    starts = np.flatnonzero(np.concatenate([[True], sv[1:] != sv[:-1]]))
    ends = np.concatenate([starts[1:], [n]])
    avg = 0.5 * (starts + 1 + ends)  # mean of the ranks starts+1 .. ends
    ranks = np.empty(n, np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve of a binary task, computed on the host with numpy.

    Rank-based (Mann–Whitney U): ``AUC = P(s_pos > s_neg) + 0.5 * P(s_pos = s_neg)`` over all
    (positive, negative) pairs, so ties count one half. Any monotone transform of the scores gives
    the same AUC.

    Args:
        scores: ``[N]`` real scores, higher meaning "more positive".
        labels: ``[N]`` binary labels, bool or integers in ``{0, 1}`` (1 = positive).

    Returns:
        The AUC as a Python float in ``[0, 1]``.

    Raises:
        ValueError: shape mismatch, NaN scores, labels outside ``{0, 1}``, or only one class present
            (the AUC is undefined then).

    Example:
        >>> auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
        0.75
    """
    s = np.asarray(scores, dtype=np.float64)
    lab = np.asarray(labels)
    if s.ndim != 1 or lab.shape != s.shape:
        raise ValueError(
            f"scores and labels must both have shape [N], got {s.shape} and {lab.shape}; "
            "flatten MedMNIST-style [N, 1] labels with y[:, 0]"
        )
    if np.any(np.isnan(s)):
        raise ValueError(f"scores contain {int(np.sum(np.isnan(s)))} NaN values")
    if lab.dtype == np.bool_:
        pos = lab
    else:
        if not np.all(np.isin(lab, (0, 1))):
            raise ValueError(
                f"labels must be binary (bool or 0/1), found values {np.unique(lab)[:10]}; "
                "for a multi-class task pass labels == positive_class"
            )
        pos = lab == 1
    n_pos = int(np.sum(pos))
    n_neg = int(pos.shape[0] - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"AUC needs both classes, got {n_pos} positive and {n_neg} negative examples"
        )
    ranks = _average_ranks(s)
    u = float(np.sum(ranks[pos])) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def positive_log_odds(logits: Array, positive_class: int = 1) -> Array:
    """Log-odds ``log(p / (1 - p))`` of the softmax probability ``p`` of ``positive_class``,
    ``logits[..., C] -> [...]`` (pure ``jnp``, works under ``jit``).

    A strictly increasing function of ``p`` (same AUC), computed without forming ``p``: in float32
    ``p`` itself (and even ``log p``) rounds to exactly 1.0 (0.0) for confident predictions, which
    would turn distinct scores into spurious ties.
    """
    is_pos = jnp.arange(logits.shape[-1]) == positive_class
    others = jax.nn.logsumexp(jnp.where(is_pos, -jnp.inf, logits), axis=-1)
    return logits[..., positive_class] - others


def _positive_scores(logits: Array, positive_class: int) -> np.ndarray:
    c = logits.shape[1]
    if not 0 <= positive_class < c:
        raise ValueError(f"positive_class must be in [0, {c - 1}], got {positive_class}")
    return np.asarray(positive_log_odds(logits, positive_class), np.float64)


def _model_auc(model: Any, x: Array, y: Array, positive_class: int) -> float:
    logits = jnp.asarray(model(x))
    _check_logits(logits)
    check_labels(y, logits.shape[0], logits.shape[1])
    scores = _positive_scores(logits, positive_class)
    return auc(scores, np.asarray(y) == positive_class)


def auc_under_attack(model: Any, x_adv: Array, y: Array, positive_class: int = 1) -> float:
    """AUC of the model's positive-class probability on adversarial images (host code).

    The score of each image is the softmax probability ``p`` of ``positive_class``, used through its
    log-odds ``log(p / (1 - p))`` (a strictly increasing transform, so the AUC is unchanged, and
    confident predictions do not round to tied ``p = 1.0`` in float32); the label is
    ``y == positive_class``. Pass the clean ``x`` to get the clean AUC.

    Args:
        model: a callable ``model(x[B, H, W, K]) -> logits[B, C]``.
        x_adv: adversarial images ``[B, H, W, K]``.
        y: true integer labels ``[B]``.
        positive_class: the class treated as positive (e.g. 1 = pneumonia).

    Returns:
        The AUC as a Python float.

    Raises:
        ValueError: only one class present in ``y``, or ``positive_class`` out of range.
    """
    return _model_auc(model, x_adv, y, positive_class)


def finding_auc(scores: Any, labels: Any) -> np.ndarray:
    """Per-finding AUC of a multi-label task (host code): :func:`auc` of each column.

    Args:
        scores: ``[N, F]`` real scores per finding (logits, or sigmoid probabilities: the same
            AUC), higher meaning "finding present".
        labels: ``[N, F]`` multi-hot labels (bool or 0/1).

    Returns:
        ``f64[F]``; NaN for a finding whose labels hold one class only (its AUC is undefined).

    Example:
        >>> finding_auc([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], [[0, 1], [1, 0], [1, 1]]).tolist()
        [1.0, 1.0]
    """
    s = np.asarray(scores, dtype=np.float64)
    lab = np.asarray(labels)
    if s.ndim != 2 or lab.shape != s.shape:
        raise ValueError(
            f"scores and labels must both have shape [N, F], got {s.shape} and {lab.shape}"
        )
    out = np.full(s.shape[1], np.nan)
    for k in range(s.shape[1]):
        pos = lab[:, k].astype(bool) if lab.dtype == np.bool_ else lab[:, k]
        if np.any(pos == 1) and np.any(pos == 0):
            out[k] = auc(s[:, k], pos)
    return out


def _macro(a: np.ndarray) -> np.ndarray:
    """Mean over the last axis of the defined (not NaN) AUCs; NaN when none is defined."""
    ok = ~np.isnan(a)
    n = ok.sum(axis=-1)
    total = np.where(ok, a, 0.0).sum(axis=-1)
    return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def finding_auc_under_attack(clean_scores: Any, adv_scores: Any, labels: Any) -> dict[str, Any]:
    """Per-finding and macro AUC on clean and on adversarial images (host code).

    The attack (under a multi-label rule, :mod:`jaxadv.multilabel`) changed each image; the
    scores of every finding on those images, against the true labels, give the AUC under attack.

    Args:
        clean_scores: ``[N, F]`` per-finding logits on the clean images.
        adv_scores: ``[N, F]``, or ``[E, N, F]`` for a grid of budgets, on the adversarial images
            (``res.info['finding_logits']``; ``Evaluation.per_eps['logits']``).
        labels: ``[N, F]`` multi-hot labels.

    Returns:
        ``clean`` ``f64[F]``, ``adv`` ``f64[F]`` (or ``[E, F]``), ``clean_macro`` (float) and
        ``adv_macro`` (float, or ``f64[E]``): the macro AUC is the mean over the findings whose
        AUC is defined (both classes present); NaN entries mark the others.
    """
    adv = np.asarray(adv_scores, dtype=np.float64)
    clean = finding_auc(clean_scores, labels)
    if adv.ndim == 3:
        adv_auc = np.stack([finding_auc(a, labels) for a in adv])
    else:
        adv_auc = finding_auc(adv, labels)
    adv_macro = _macro(adv_auc)
    return {
        "clean": clean,
        "adv": adv_auc,
        "clean_macro": float(_macro(clean)),
        "adv_macro": adv_macro if adv.ndim == 3 else float(adv_macro),
    }


# -- summary (host) -------------------------------------------------------------------------------
@jax.jit
def _sizes(x: Array, adv: Array, tol: Array) -> tuple[Array, Array, Array]:
    return l0_pixels(x, adv, tol), l2(x, adv), linf(x, adv)


def summarize(
    model: Any,
    x: Array,
    y: Array,
    result: AttackResult,
    *,
    positive_class: int = 1,
    l0_tol: float = 0.0,
    ssim_win_size: int = 11,
) -> dict[str, float]:
    """One-line report of one attack result, as a dict of Python floats (host code).

    The same summary as :func:`jaxadv.evaluate`'s (:func:`jaxadv.engine.summary_rows`), for a
    result already in hand. Perturbation statistics (``l0_pixels``, ``l2``, ``linf``, ``ssim``) are
    taken over the *successful attacks*: examples that were classified correctly and that the
    attack fooled. They are ``NaN`` when there is no such example, and ``ssim_mean`` is ``NaN``
    when the images are smaller than the SSIM window.

    Keys: ``num_examples``, ``num_clean_correct``, ``num_successful``, ``num_robust``,
    ``clean_accuracy``, ``robust_accuracy``, ``attack_success_rate``, ``<size>_mean`` and
    ``<size>_median`` for ``l0_pixels``, ``l2``, ``linf``, ``ssim``; for a binary model (two
    logits) also ``auc`` (clean) and ``auc_under_attack`` (on ``result.adv``), ``NaN`` when ``y``
    holds one class only.

    Args:
        model: a callable ``model(x[B, H, W, K]) -> logits[B, C]``.
        x: clean images ``[B, H, W, K]``.
        y: true integer labels ``[B]``.
        result: the :class:`~jaxadv.AttackResult` of an attack on ``(x, y)``.
        positive_class: positive class for the AUCs.
        l0_tol: tolerance of :func:`l0_pixels`.
        ssim_win_size: window of :func:`ssim` (sigma 1.5).

    Returns:
        ``dict[str, float]``.
    """
    from jaxadv.engine.summary import summary_rows

    if not isinstance(result, AttackResult):
        raise TypeError(f"result must be an AttackResult, got {type(result).__name__}")
    x = _float(x, "x")
    _nhwc(x, "x")
    adv = jnp.asarray(result.adv)
    if adv.shape != x.shape:
        raise ValueError(f"result.adv has shape {adv.shape} but x has shape {x.shape}")
    logits = jnp.asarray(model(x))
    _check_logits(logits)
    check_labels(y, x.shape[0], logits.shape[1])
    yv = np.asarray(y)
    binary = logits.shape[1] == 2
    if binary:
        clean_score = _positive_scores(logits, positive_class)  # checks positive_class
    sizes = _sizes(x, adv, jnp.asarray(l0_tol, x.dtype))
    per = {"success": np.asarray(_success(result))[None]}
    for name, v in zip(("l0_pixels", "l2", "linf"), sizes, strict=True):
        per[name] = np.asarray(v)[None]
    if min(x.shape[1], x.shape[2]) >= ssim_win_size:
        per["ssim"] = np.asarray(ssim(x, adv, win_size=ssim_win_size))[None]
    else:
        per["ssim"] = np.full((1, x.shape[0]), np.nan, np.float32)
    if binary:
        per["score"] = _positive_scores(jnp.asarray(model(adv)), positive_class)[None]
    row = summary_rows(
        [0.0],
        per,
        np.asarray(jnp.argmax(logits, axis=1)) == yv,
        labels=yv,
        clean_score=clean_score if binary else None,
        positive_class=positive_class,
    )[0]
    return {k: float(v) for k, v in row.items() if not k.startswith("eps")}


# Segmentation metrics live with the dense rules; re-exported so every metric is in one place.
from jaxadv.segmentation import dice, iou, pixel_accuracy  # noqa: E402

__all__ = [
    "accuracy",
    "attack_success_rate",
    "auc",
    "auc_under_attack",
    "clean_accuracy",
    "finding_auc",
    "finding_auc_under_attack",
    "l0_pixels",
    "l2",
    "linf",
    "positive_log_odds",
    "robust_accuracy",
    "ssim",
    "summarize",
    "dice",
    "iou",
    "pixel_accuracy",
]
