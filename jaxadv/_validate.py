"""Host-side input checks, run before anything compiles.

Each check raises ``ValueError`` / ``TypeError`` with a message that says what to do. Value checks
(range, NaN) need concrete arrays; under a user's own ``jit`` they are skipped (shapes are still
checked).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv._struct import is_concrete


def check_range(obj: Any, name: str, lo: float, hi: float) -> None:
    """Raise ``ValueError`` when the concrete field ``name`` of ``obj`` is NaN or outside
    ``[lo, hi]`` (``None`` and traced values are skipped)."""
    v = getattr(obj, name)
    if v is not None and is_concrete(v):
        a = np.asarray(v)
        if np.any(np.isnan(a)) or np.any(a < lo) or np.any(a > hi):
            raise ValueError(f"{type(obj).__name__}: {name} must lie in [{lo}, {hi}], got {v!r}")


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


def num_classes(model: Any, x: Any) -> int:
    """Trace (no compile) the model on ``x``'s shape and check it returns logits ``[B, C]``."""
    try:
        out = jax.eval_shape(model, jax.ShapeDtypeStruct(x.shape, x.dtype))
    except Exception as e:  # noqa: BLE001 - we re-raise with context
        raise ValueError(
            f"the model failed on input of shape {tuple(x.shape)} ({type(e).__name__}: {e}). "
            "Check the image size, channels (grey_to_rgb=True for 3-channel models) and layout NHWC."
        ) from e
    if isinstance(out, (tuple, list)):
        out = out[0]
    if len(out.shape) != 2 or out.shape[0] != x.shape[0]:
        raise ValueError(
            f"the model must return logits [B, C]; for input batch {x.shape[0]} it returned shape "
            f"{tuple(out.shape)}. A single-logit sigmoid model can be wrapped as logits [0, z]."
        )
    if out.shape[1] < 2:
        raise ValueError("the model returns a single logit; wrap it as two logits [0, z]")
    return int(out.shape[1])


def check_inputs(model: Any, x: Any, y: Any, *, lo: float, hi: float, target: Any = None) -> int:
    """All call-time checks; returns the number of classes."""
    check_images(x, lo=lo, hi=hi)
    c = num_classes(model, x)
    check_labels(y, x.shape[0], c)
    if target is not None:
        check_labels(target, x.shape[0], c, name="target")
    return c
