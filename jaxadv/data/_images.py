"""Pixel conversions shared by the loaders: to float32 in [0, 1], channel count, Pillow decoding."""

from __future__ import annotations

from typing import Any

import numpy as np

# ITU-R 601-2 luma, the weights Pillow's convert("L") uses, so grey from arrays matches grey from
# files.
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_float32(raw: np.ndarray) -> np.ndarray:
    """uint8 / uint16 / float ``[B, H, W(, K)]`` -> float32 ``[B, H, W, K]`` in ``[0, 1]``."""
    if raw.dtype == np.uint8:
        x = raw.astype(np.float32)
        x /= 255
    elif raw.dtype == np.uint16:
        x = raw.astype(np.float32)
        x /= 65535
    else:
        x = raw.astype(np.float32)
    if x.ndim == 3:
        x = x[..., None]
    return x


def convert_channels(x: np.ndarray, channels: int | None) -> np.ndarray:
    """float32 ``[B, H, W, K]`` -> ``[B, H, W, channels]`` (grey repeated, or RGB to luma)."""
    k = x.shape[-1]
    if channels is None or channels == k:
        return x
    if k == 1 and channels == 3:
        return np.repeat(x, 3, axis=-1)
    if k == 3 and channels == 1:
        return (x @ _LUMA)[..., None]
    raise ValueError(f"cannot convert {k}-channel images to {channels} channels")


def normalize_size(size: Any) -> tuple[int, int] | None:
    """``None``, ``s`` or ``(h, w)`` -> ``None`` or ``(h, w)`` with positive ints."""
    if size is None:
        return None
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        hw = (int(size), int(size))
    elif (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in size)
    ):
        hw = (int(size[0]), int(size[1]))
    else:
        raise ValueError(f"size must be an int or a (height, width) pair of ints, got {size!r}")
    if min(hw) <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    return hw


def pil_channels(img: Any) -> int:
    """1 for Pillow images that are grey (with or without alpha), else 3."""
    return 1 if img.mode in ("1", "L", "LA", "La", "F", *_SIXTEEN_BIT_MODES) else 3


def pil_to_array(img: Any, channels: int, size: tuple[int, int] | None) -> np.ndarray:
    """A Pillow image -> float32 ``[H, W, channels]`` in ``[0, 1]``, bilinear-resized to ``size``.

    16-bit grey images (common for radiographs) keep their precision: they are scaled by 1/65535
    and resized in float, where converting to 8-bit first would clip them.
    """
    from PIL import Image

    bilinear = Image.Resampling.BILINEAR
    if img.mode in (*_SIXTEEN_BIT_MODES, "F"):
        arr = np.asarray(img, dtype=np.float32)
        if img.mode != "F":
            arr = np.clip(arr, 0, 65535) / np.float32(65535)
        fimg = Image.fromarray(arr.astype(np.float32))
        if size is not None and fimg.size != (size[1], size[0]):
            fimg = fimg.resize((size[1], size[0]), bilinear)
        x = np.asarray(fimg, dtype=np.float32)[..., None]
        return np.repeat(x, 3, axis=-1) if channels == 3 else x
    img = img.convert("L" if channels == 1 else "RGB")
    if size is not None and img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), bilinear)
    x = np.asarray(img, dtype=np.float32) / np.float32(255)
    return x[..., None] if x.ndim == 2 else x


def resize_array(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 / uint16 / float ``[H, W, K]`` -> float32 ``[h, w, K]`` in ``[0, 1]``, bilinear."""
    from PIL import Image

    x = to_float32(image[None])[0]
    if x.shape[:2] == size:
        return x
    planes = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(x[..., c])).resize(
                (size[1], size[0]), Image.Resampling.BILINEAR
            ),
            dtype=np.float32,
        )
        for c in range(x.shape[-1])
    ]
    return np.stack(planes, axis=-1)
