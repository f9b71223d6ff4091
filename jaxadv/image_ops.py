"""Image transforms shared by attacks and defences (one implementation of each).

* :func:`resize_pad` / :func:`random_resize_pad`: shrink each image by a factor and place it on a
  zero canvas of the original size (input diversity, DI; the random resize-and-pad defence).
* :func:`gaussian_kernel1d` and :func:`separable_filter`: a separable per-channel 2-D filter
  (translation-invariant gradient smoothing, TI; the Gaussian-blur defence).

Every function takes NHWC batches ``x[B, H, W, K]`` and is pure and jittable.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def resize_pad(x: Array, scale: Array, offset: Array) -> Array:
    """Shrink each image by ``scale`` (bilinear) and paste it at ``offset`` on a zero canvas.

    The canvas has the input's size, so the result fits any model. This is the composition "resize
    to ``scale * H``, zero-pad to ``H``" with fractional sizes and offsets (bilinear sampling keeps
    it differentiable in ``x``).

    Args:
        x: images ``[B, H, W, K]``.
        scale: ``[B]`` factors in ``(0, 1]`` (1 keeps the image).
        offset: ``[B, 2]`` top-left corner of the shrunk image, in pixels ``(row, col)``.

    Returns:
        ``[B, H, W, K]``.
    """
    h, w = x.shape[1], x.shape[2]

    def one(img, s, o):
        return jax.image.scale_and_translate(
            img,
            (h, w, img.shape[-1]),
            (0, 1),
            jnp.stack([s, s]).astype(img.dtype),
            o.astype(img.dtype),
            "linear",
            antialias=False,
        )

    return jax.vmap(one)(x, scale, offset)


def random_resize_pad(keys: Array, x: Array, ratio: float | Array) -> Array:
    """A random :func:`resize_pad` per example: the canvas is ``ratio`` times the image, as in Xie
    et al. (2018, 2019), resized back to the input size.

    The image is drawn at a uniform size in ``[H / ratio, H]`` and a uniform position on the
    canvas (Xie et al. draw integer sizes in ``[H, ratio * H)`` on a ``ratio * H`` canvas and feed
    the larger image; resizing back to ``H`` lets a fixed-input classifier take it).

    Args:
        keys: one PRNG key per example ``[B]``.
        x: images ``[B, H, W, K]``.
        ratio: canvas / image size, ``>= 1`` (1 is the identity).

    Returns:
        ``[B, H, W, K]``.
    """
    h, w = x.shape[1], x.shape[2]

    def draw(k):
        k1, k2 = jax.random.split(k)
        s = jax.random.uniform(k1, (), x.dtype, 1.0 / jnp.asarray(ratio, x.dtype), 1.0)
        o = jax.random.uniform(k2, (2,), x.dtype) * (1.0 - s) * jnp.asarray([h, w], x.dtype)
        return s, o

    scale, offset = jax.vmap(draw)(keys)
    return resize_pad(x, scale, offset)


def gaussian_kernel1d(size: int, sigma: float) -> np.ndarray:
    """A normalised 1-D Gaussian of ``size`` taps and standard deviation ``sigma`` (in taps),
    centred on the middle tap (host-side; ``size`` 1 is the delta kernel ``[1]``)."""
    if size < 1:
        raise ValueError(f"kernel size must be >= 1, got {size}")
    r = (size - 1) / 2.0
    t = np.arange(size, dtype=np.float64) - r
    k = np.exp(-0.5 * (t / max(sigma, 1e-12)) ** 2)
    return (k / k.sum()).astype(np.float32)


def scipy_gaussian_size(sigma: float, truncate: float = 4.0) -> int:
    """Taps of :func:`scipy.ndimage.gaussian_filter`'s kernel: ``2 * int(truncate * sigma + 0.5)
    + 1``."""
    return 2 * int(truncate * sigma + 0.5) + 1


def separable_filter(x: Array, k1d: np.ndarray | Array, *, mode: str = "constant") -> Array:
    """Correlate every channel of ``x[B, H, W, K]`` with ``outer(k1d, k1d)`` (same size out).

    Args:
        x: images ``[B, H, W, K]``.
        k1d: odd-length 1-D taps.
        mode: border rule, a :func:`jax.numpy.pad` mode: ``'constant'`` (zeros, as a ``SAME``
            convolution) or ``'symmetric'`` (scipy.ndimage's ``'reflect'``).

    Returns:
        ``[B, H, W, K]``.
    """
    k = jnp.asarray(k1d, x.dtype)
    n = k.shape[0]
    if n % 2 != 1:
        raise ValueError(f"kernel length must be odd, got {n}")
    r = n // 2
    xp = jnp.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode=mode)
    h, w = x.shape[1], x.shape[2]
    # Separable sums of shifted copies: exact, cheap for the small kernels used here, and free of
    # the convolution paths XLA:CPU takes slowly inside loops.
    rows = sum(k[i] * xp[:, i : i + h, :, :] for i in range(n))
    return sum(k[j] * rows[:, :, j : j + w, :] for j in range(n))


def patches(x: Array, size: int, *, mode: str = "symmetric") -> Array:
    """Every ``size x size`` neighbourhood of every pixel: ``[B, H, W, K, size * size]``
    (borders padded with ``mode``, see :func:`separable_filter`)."""
    r = size // 2
    xp = jnp.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode=mode)
    h, w = x.shape[1], x.shape[2]
    return jnp.stack(
        [xp[:, i : i + h, j : j + w, :] for i in range(size) for j in range(size)], axis=-1
    )


def check_odd(name: str, size: int) -> None:
    """``ValueError`` unless ``size`` is a positive odd integer."""
    if not isinstance(size, (int, np.integer)) or size < 1 or size % 2 != 1:
        raise ValueError(f"{name} must be a positive odd integer, got {size!r}")


__all__ = [
    "check_odd",
    "gaussian_kernel1d",
    "patches",
    "random_resize_pad",
    "resize_pad",
    "scipy_gaussian_size",
    "separable_filter",
]
