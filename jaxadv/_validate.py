"""Host-side input checks, run before the attack compiles.

The last check (:func:`check_logits`) runs the model once on the clean images. Each check raises ``ValueError`` / ``TypeError`` with a message that says what to do. Value checks
(range, NaN) need concrete arrays; under a user's own ``jit`` they are skipped (shapes are still
checked).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv._struct import is_concrete


@dataclasses.dataclass(frozen=True)
class Range:
    """The valid values of one numeric setting: an interval, closed unless ``lo_open`` /
    ``hi_open``, of integers when ``integer``. NaN is never inside.

    Example:
        >>> from jaxadv._validate import Range
        >>> r = Range(0.0, 1.0, lo_open=True)
        >>> str(r), r.contains(0.0), r.contains(0.5)
        ('(0.0, 1.0]', False, True)
    """

    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False

    def contains(self, value: Any) -> bool:
        """Whether every element of the concrete ``value`` lies in the range."""
        a = np.asarray(value, dtype=np.float64)
        if a.size == 0:
            return True
        if np.any(np.isnan(a)):
            return False
        above = a > self.lo if self.lo_open else a >= self.lo
        below = a < self.hi if self.hi_open else a <= self.hi
        ok = bool(np.all(above & below))
        if self.integer:
            ok = ok and bool(np.all(a == np.floor(a)))
        return ok

    def __str__(self) -> str:
        left = "(" if self.lo_open or self.lo == -math.inf else "["
        right = ")" if self.hi_open or self.hi == math.inf else "]"
        kind = "integers in " if self.integer else ""
        return f"{kind}{left}{self.lo}, {self.hi}{right}"


def positive(*, integer: bool = False) -> Range:
    """``(0, inf)``: step sizes, radii, constants."""
    return Range(0.0, math.inf, lo_open=True, integer=integer)


def at_least(lo: float) -> Range:
    """Integers ``>= lo``: budgets, population sizes, counts."""
    return Range(lo, math.inf, integer=True)


def unit(*, lo_open: bool = False, hi_open: bool = False) -> Range:
    """``[0, 1]`` (ends open on request): rates, probabilities, fractions."""
    return Range(0.0, 1.0, lo_open=lo_open, hi_open=hi_open)


def _get_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def check_settings(obj: Any, settings: Any = None) -> None:
    """Check every declared numeric setting of ``obj`` against its :class:`Range`.

    ``settings`` maps a field name (dotted for nested values, e.g. ``"options.tau"``) to its
    range; by default ``type(obj).settings``. ``None`` values (a documented default) and traced
    values (``jit`` / ``vmap`` over leaves) are skipped. Raises ``ValueError`` naming the class,
    the field, the value and the allowed range.
    """
    name = type(obj).__name__
    for path, rng in (type(obj).settings if settings is None else settings).items():
        v = _get_path(obj, path)
        if v is None or isinstance(v, (bool, np.bool_)) or not is_concrete(v):
            continue
        if not rng.contains(v):
            raise ValueError(f"{name}: {path}={v!r} is outside the allowed range {rng}")


def check_attack(attack: Any) -> None:
    """Construction-time checks of a registered attack: the threat model is one of the class's
    declared ``threats``, its budget is a scalar (a per-example ``[B]`` budget only for
    ``L0Pixels``, whose projection is per example), and every declared setting is in range."""
    cls = type(attack)
    threat = attack.threat
    if not isinstance(threat, cls.threats):
        kinds = ", ".join(t.__name__ for t in cls.threats)
        raise TypeError(
            f"{cls.__name__} supports the threat models {kinds}; got {type(threat).__name__}"
        )
    eps = getattr(threat, "eps", None)
    if is_concrete(eps) and np.ndim(eps) != 0 and type(threat).__name__ != "L0Pixels":
        raise ValueError(
            f"{cls.__name__}: eps must be a scalar, got an array of shape {np.shape(eps)}. For a "
            "grid of budgets use jaxadv.sweep_eps(attack, eps=[...], ...)."
        )
    check_settings(attack)


def normalize_key(key: Any) -> jax.Array:
    """A typed PRNG key from an ``int`` seed, a raw ``uint32`` key (``jax.random.PRNGKey``, NumPy)
    or a typed key (returned as is)."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
        return jax.random.key(int(key))
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    raw = key if isinstance(key, jax.Array) else np.asarray(key)
    if raw.dtype != np.uint32 or raw.ndim != 1:
        raise TypeError(
            f"key must be an int seed or a JAX PRNG key (jax.random.key(0)); got "
            f"{type(key).__name__} with dtype {raw.dtype} and shape {tuple(raw.shape)}"
        )
    return jax.random.wrap_key_data(jnp.asarray(raw))


def normalize_inputs(
    key: Any, x: Any, y: Any, target: Any = None
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]:
    """The one conversion at the boundary of every attack call (and of the evaluation engine).

    * ``key``: an ``int`` seed, a raw ``uint32`` key or a typed key -> a typed PRNG key.
    * ``x``: NumPy arrays, nested lists and JAX arrays -> a JAX array. Images of any float dtype are
      attacked in float32: bfloat16 / float16 are upcast, float64 is cast down unless
      ``jax_enable_x64`` is on (then it stays float64). ``res.adv`` has that dtype. Integer and
      boolean images are left as they are so the checks can refuse them with a hint (``/ 255``).
    * ``y``, ``target``: integer labels of any integer dtype -> int32 JAX arrays (non-integer
      labels are left for the checks to refuse).

    Returns ``(key, x, y, target)``; ``target`` stays ``None`` when not given.
    """
    key = normalize_key(key)
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.floating):
        keep64 = x.dtype == jnp.float64 and jax.config.jax_enable_x64
        x = x if (x.dtype == jnp.float32 or keep64) else x.astype(jnp.float32)

    def labels(v: Any) -> Any:
        v = jnp.asarray(v)
        return v.astype(jnp.int32) if jnp.issubdtype(v.dtype, jnp.integer) else v

    return key, x, labels(y), None if target is None else labels(target)


def check_images(x: Any, *, lo: float = 0.0, hi: float = 1.0, name: str = "x") -> None:
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    if shape is None or dtype is None:
        raise TypeError(f"{name} must be an array [B, H, W, C], got {type(x).__name__}")
    if len(shape) != 4:
        raise ValueError(
            f"{name} must have rank 4, layout NHWC [B, H, W, C]; got shape {tuple(shape)}. "
            "Add a batch axis with x[None] or a channel axis with x[..., None]."
        )
    if shape[0] == 0:
        raise ValueError(
            f"{name} is an empty batch (shape {tuple(shape)}); pass at least one image"
        )
    if shape[1] in (1, 3, 4) and shape[3] not in (1, 3, 4):
        raise ValueError(
            f"{name} looks like NCHW (shape {tuple(shape)}); jaxadv uses NHWC [B, H, W, C]. "
            "Transpose with x.transpose(0, 2, 3, 1)."
        )
    if jnp.issubdtype(dtype, jnp.integer) or dtype == jnp.bool_:
        raise TypeError(
            f"{name} has dtype {dtype}; jaxadv needs floating images in [{lo}, {hi}]. "
            "For uint8 images use x.astype(np.float32) / 255."
        )
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{name} has dtype {dtype}; pass float32 images")
    if not is_concrete(x):
        return
    xv = np.asarray(x)
    if not np.all(np.isfinite(xv)):
        n = int(np.sum(~np.isfinite(xv)))
        raise ValueError(f"{name} contains {n} NaN/inf values; clean or drop those images first")
    mn, mx = float(xv.min()), float(xv.max())
    if mn < lo - 1e-6 or mx > hi + 1e-6:
        hint = " They look like 0-255 pixels: divide by 255." if mx > 1.5 and hi == 1.0 else ""
        raise ValueError(
            f"{name} values must lie in the box [{lo}, {hi}], found [{mn:.4g}, {mx:.4g}].{hint} "
            "Normalise inside the model instead (from_nnx(..., mean=..., std=...)) so eps stays in "
            "pixel units, or set the threat model's lo/hi."
        )


def check_labels(y: Any, batch: int, num_classes: int | None, *, name: str = "y") -> None:
    shape = getattr(y, "shape", None)
    dtype = getattr(y, "dtype", None)
    if shape is None:
        raise TypeError(f"{name} must be an integer array [B], got {type(y).__name__}")
    if len(shape) == 2 and shape[1] > 1:
        raise ValueError(
            f"{name} has shape {tuple(shape)}, which looks like one-hot or multi-label targets; "
            "pass integer class indices [B], e.g. y.argmax(-1)"
        )
    if len(shape) != 1:
        hint = " Flatten MedMNIST-style [B, 1] labels with y[:, 0]." if len(shape) == 2 else ""
        raise ValueError(f"{name} must have shape [B]; got {tuple(shape)}.{hint}")
    if shape[0] != batch:
        raise ValueError(
            f"{name} has {shape[0]} labels but x has {batch} images; pass one label per image"
        )
    if not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(
            f"{name} must hold integer class indices (got dtype {dtype}); "
            "for one-hot labels pass y.argmax(-1)"
        )
    if num_classes is None or not is_concrete(y):
        return
    yv = np.asarray(y)
    if yv.size and (yv.min() < 0 or yv.max() >= num_classes):
        raise ValueError(
            f"{name} has labels outside [0, {num_classes - 1}] (found {int(yv.min())}..{int(yv.max())}) "
            f"but the model returns {num_classes} logits"
        )


def trace_output(
    model: Any, x: Any, *, who: str = "the model", fails: str = "failed on input of", hint: str = ""
) -> Any:
    """Trace (no compile) ``model`` on ``x``'s shape and return its output's shape structure.

    The one place a model's output shape is probed before an attack; each caller checks the rank
    it needs. A model that cannot take such input raises ``ValueError``:
    ``"{who} {fails} shape (B, H, W, K) (Error: message){hint}"``.
    """
    try:
        return jax.eval_shape(model, jax.ShapeDtypeStruct(x.shape, x.dtype))
    except Exception as e:  # noqa: BLE001 - we re-raise with context
        raise ValueError(
            f"{who} {fails} shape {tuple(x.shape)} ({type(e).__name__}: {e}){hint}"
        ) from e


def num_classes(model: Any, x: Any) -> int:
    """Trace (no compile) the model on ``x``'s shape and check it returns logits ``[B, C]``."""
    out = trace_output(
        model,
        x,
        hint=". Check the image size, channels (grey_to_rgb=True for 3-channel models) and "
        "layout NHWC.",
    )
    if isinstance(out, (tuple, list)):
        out = out[0]
    if len(out.shape) != 2 or out.shape[0] != x.shape[0]:
        raise ValueError(
            f"the model must return logits [B, C]; for input batch {x.shape[0]} it returned shape "
            f"{tuple(out.shape)}. A single-logit sigmoid model can be wrapped as logits [0, z]."
            + (
                " Per-pixel logits [B, H, W, C] are a segmentation model: attack it with the "
                "dense attacks (jaxadv.SegPGD, jaxadv.DAG, jaxadv.ASMA) and masks y[B, H, W]."
                if len(out.shape) == 4
                else ""
            )
        )
    if out.shape[1] < 2:
        raise ValueError("the model returns a single logit; wrap it as two logits [0, z]")
    return int(out.shape[1])


@jax.jit
def _forward(model: Any, x: Any) -> Any:
    return model(x)


def check_logits(model: Any, x: Any) -> None:
    """One forward pass on the clean images: every row of logits must be finite (a model that is
    already NaN/inf on clean data makes every success and loss meaningless). Skipped when ``x`` is
    traced."""
    if not is_concrete(x):
        return
    out = _forward(model, x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    out = np.asarray(out, dtype=np.float32)
    ok = np.all(np.isfinite(out.reshape(out.shape[0], -1)), axis=1)
    if not np.all(ok):
        bad = np.flatnonzero(~ok)
        raise ValueError(
            f"the model returns NaN/inf logits on {bad.size} of {ok.size} clean images (first at "
            f"index {int(bad[0])}); fix the model (overflow, a log of 0, uninitialised weights) or "
            "drop those images before attacking"
        )


def check_attack_inputs(threat: Any, model: Any, x: Any, y: Any, target: Any = None) -> int:
    """:func:`check_inputs` against the box of ``threat`` (per-channel bounds: their extremes;
    ``None``: ``[0, 1]``); returns the number of classes."""
    lo = 0.0 if threat is None else float(np.min(np.asarray(threat.lo)))
    hi = 1.0 if threat is None else float(np.max(np.asarray(threat.hi)))
    return check_inputs(model, x, y, lo=lo, hi=hi, target=target)


def check_inputs(model: Any, x: Any, y: Any, *, lo: float, hi: float, target: Any = None) -> int:
    """All call-time checks (the last one runs the model once on ``x``: its logits must be
    finite); returns the number of classes."""
    check_images(x, lo=lo, hi=hi)
    c = num_classes(model, x)
    check_labels(y, x.shape[0], c)
    if target is not None:
        check_labels(target, x.shape[0], c, name="target")
        if is_concrete(target) and is_concrete(y):
            same = np.asarray(target) == np.asarray(y)
            if np.any(same):
                raise ValueError(
                    f"target equals the true label y for {int(same.sum())} of {same.size} examples "
                    f"(first at index {int(np.argmax(same))}); a targeted attack needs target != y. "
                    "Drop those examples or pick another target."
                )
    check_logits(model, x)
    return c
