"""A differentiable bilinear warp for images (rotation, scale, translation).

Conventions follow :func:`scipy.ndimage.affine_transform`: the output pixel at integer
coordinates ``o = (row, col)`` reads the input at ``matrix @ o + offset`` (the *inverse* map), with
bilinear interpolation (``order=1``) and zero outside the image (scipy's ``mode='grid-constant'``,
``cval=0``: neighbours outside the grid count as zero, so edges fade over one pixel instead of
being cut). Pixel centres sit at integer coordinates; an ``H x W`` image covers
``[-0.5, H - 0.5] x [-0.5, W - 0.5]``.

Everything is differentiable in the image and in the transform parameters, and works per image
(``vmap`` it for a batch; :func:`place` does so).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = ["affine_warp", "bilinear_sample", "place", "similarity"]


def bilinear_sample(img: Array, rows: Array, cols: Array) -> Array:
    """Sample ``img[H, W, K]`` at real coordinates ``rows[...]``, ``cols[...]`` -> ``[..., K]``.

    Neighbours outside the image read as zero (scipy ``mode='grid-constant'``, ``cval=0``).
    """
    h, w = img.shape[0], img.shape[1]
    r0f, c0f = jnp.floor(rows), jnp.floor(cols)
    fr, fc = (rows - r0f)[..., None], (cols - c0f)[..., None]
    r0, c0 = r0f.astype(jnp.int32), c0f.astype(jnp.int32)

    def tap(r, c):
        valid = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        v = img[jnp.clip(r, 0, h - 1), jnp.clip(c, 0, w - 1)]
        return jnp.where(valid[..., None], v, jnp.zeros((), img.dtype))

    one = jnp.ones((), img.dtype)
    return (
        tap(r0, c0) * (one - fr) * (one - fc)
        + tap(r0, c0 + 1) * (one - fr) * fc
        + tap(r0 + 1, c0) * fr * (one - fc)
        + tap(r0 + 1, c0 + 1) * fr * fc
    )


def affine_warp(
    img: Array, matrix: Array, offset: Array, out_shape: tuple[int, int] | None = None
) -> Array:
    """``out[o] = img[matrix @ o + offset]`` with bilinear sampling, zero outside.

    Args:
        img: ``[H, W, K]`` image.
        matrix: ``[2, 2]`` inverse map (output pixel -> input coordinates, ``(row, col)`` order).
        offset: ``[2]``.
        out_shape: ``(H', W')`` of the output (static); default ``(H, W)``.

    Returns:
        ``[H', W', K]``; equals ``scipy.ndimage.affine_transform(img[..., k], matrix, offset,
        output_shape=out_shape, order=1, mode='grid-constant')`` per channel.
    """
    ho, wo = out_shape if out_shape is not None else img.shape[:2]
    rr, cc = jnp.meshgrid(
        jnp.arange(ho, dtype=img.dtype), jnp.arange(wo, dtype=img.dtype), indexing="ij"
    )
    m = jnp.asarray(matrix, img.dtype)
    off = jnp.asarray(offset, img.dtype)
    rows = m[0, 0] * rr + m[0, 1] * cc + off[0]
    cols = m[1, 0] * rr + m[1, 1] * cc + off[1]
    return bilinear_sample(img, rows, cols)


def similarity(angle: Array, zoom: Array) -> Array:
    """``[2, 2]`` inverse matrix of "rotate by ``angle`` (radians) and magnify by ``zoom``".

    Maps an output displacement (relative to a centre) back to an input displacement:
    ``R(-angle) / zoom``. Rotation 0 and zoom 1 give the identity.
    """
    c, s = jnp.cos(angle), jnp.sin(angle)
    return jnp.stack([jnp.stack([c, s]), jnp.stack([-s, c])]) / zoom


def place(
    src: Array,
    angle: Array,
    zoom: Array,
    center: Array,
    out_shape: tuple[int, int],
) -> Array:
    """Render ``src[P, Q, K]`` into a ``out_shape`` canvas, rotated by ``angle``, magnified by
    ``zoom`` (canvas pixels per source pixel) and centred at ``center`` (``[2]``, canvas
    ``(row, col)``); zero where the source does not reach.

    Batched form: ``jax.vmap(place, in_axes=(None, 0, 0, 0, None))`` for one source and per-image
    parameters ``angle[B]``, ``zoom[B]``, ``center[B, 2]``.
    """
    m = similarity(angle, zoom).astype(src.dtype)
    src_center = jnp.asarray([(src.shape[0] - 1) / 2, (src.shape[1] - 1) / 2], src.dtype)
    offset = src_center - m @ jnp.asarray(center, src.dtype)
    return affine_warp(src, m, offset, out_shape)
