"""Layers with PyTorch's semantics, shared by the torch-compatible architectures in ``jaxadv.nn``.

Padding follows PyTorch, not XLA's ``'SAME'``: a convolution pads symmetrically by ``kernel // 2``
(``'SAME'`` would pad ``(0, 1)`` for a stride-2 3x3 convolution on an even size, shifting every
feature map by one pixel against torch), and max pooling pads with ``-inf``.

Batch norm uses torch's defaults: ``eps = 1e-5`` and ``momentum = 0.1`` in torch's convention
(``running = (1 - m) * running + m * batch``). Flax writes the same update as
``running = m' * running + (1 - m') * batch``, so ``m' = 1 - m`` (0.9) is what is passed to
:class:`flax.nnx.BatchNorm`. In training mode torch updates ``running_var`` with the unbiased batch
variance, Flax with the biased one; inference with imported statistics is identical.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = [
    "BN_EPS",
    "BN_MOMENTUM",
    "conv2d",
    "batch_norm",
    "linear",
    "max_pool",
    "avg_pool",
    "adaptive_avg_pool",
]

BN_EPS = 1e-5
BN_MOMENTUM = 0.1  # torch convention; Flax receives 1 - BN_MOMENTUM

# kaiming_normal_(mode="fan_out", nonlinearity="relu"): torchvision's ResNet and VGG, and the
# RobustBench WideResNet (normal(0, sqrt(2 / (k * k * out)))).
_conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def _shifted(init, shift: float):
    def shifted(key, shape, dtype=jnp.float32):
        return init(key, shape, dtype) + jnp.asarray(shift, dtype)

    return shifted


def conv2d(
    in_channels: int,
    out_channels: int,
    kernel: int,
    stride: int = 1,
    *,
    padding: int | None = None,
    use_bias: bool = False,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """A square ``nn.Conv2d`` in NHWC: symmetric padding (``kernel // 2`` unless given)."""
    p = kernel // 2 if padding is None else padding
    return nnx.Conv(
        in_channels,
        out_channels,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((p, p), (p, p)),
        use_bias=use_bias,
        kernel_init=_conv_init,
        rngs=rngs,
    )


def batch_norm(
    num_features: int, *, momentum: float = BN_MOMENTUM, rngs: nnx.Rngs
) -> nnx.BatchNorm:
    """``nn.BatchNorm2d`` (``momentum`` in torch's convention, see the module docstring)."""
    return nnx.BatchNorm(num_features, momentum=1.0 - momentum, epsilon=BN_EPS, rngs=rngs)


def linear(
    in_features: int, out_features: int, *, use_bias: bool = True, rngs: nnx.Rngs
) -> nnx.Linear:
    """``nn.Linear`` with torch's default initialisation: ``U(-1/sqrt(in), 1/sqrt(in))``."""
    bound = 1.0 / math.sqrt(in_features)
    init = _shifted(nnx.initializers.uniform(2.0 * bound), -bound)
    return nnx.Linear(
        in_features, out_features, use_bias=use_bias, kernel_init=init, bias_init=init, rngs=rngs
    )


def max_pool(x: jax.Array, kernel: int, stride: int, padding: int = 0) -> jax.Array:
    """``F.max_pool2d`` on ``x[B, H, W, K]``; the padding is ``-inf`` as in torch."""
    p = ((padding, padding), (padding, padding))
    return nnx.max_pool(x, (kernel, kernel), strides=(stride, stride), padding=p)


def avg_pool(x: jax.Array, kernel: int, stride: int) -> jax.Array:
    """``F.avg_pool2d`` without padding on ``x[B, H, W, K]`` (a trailing remainder is dropped)."""
    # Summed in x's dtype and divided by a same-dtype constant (nnx.avg_pool divides by a Python
    # int, which strict dtype promotion refuses).
    total = jax.lax.reduce_window(
        x,
        np.zeros((), x.dtype),
        jax.lax.add,
        (1, kernel, kernel, 1),
        (1, stride, stride, 1),
        "VALID",
    )
    return total / jnp.asarray(kernel * kernel, x.dtype)


def _bins(size: int, out: int) -> np.ndarray:
    # torch's adaptive pooling: bin i covers [floor(i * size / out), ceil((i + 1) * size / out)).
    weights = np.zeros((out, size), np.float32)
    for i in range(out):
        start = (i * size) // out
        end = -((-(i + 1) * size) // out)
        weights[i, start:end] = 1.0 / (end - start)
    return weights


def adaptive_avg_pool(x: jax.Array, output_size: tuple[int, int]) -> jax.Array:
    """``F.adaptive_avg_pool2d`` on ``x[B, H, W, K]`` -> ``[B, h, w, K]``, torch's bins exactly.

    The bins may overlap or repeat (e.g. 2x2 -> 7x7 as in VGG on small inputs); the pooling is
    written as two small averaging matrices, so it is exact and differentiable for any sizes.
    """
    h, w = output_size
    if x.shape[1] == h and x.shape[2] == w:
        return x
    rows = jnp.asarray(_bins(x.shape[1], h), x.dtype)
    cols = jnp.asarray(_bins(x.shape[2], w), x.dtype)
    return jnp.einsum("ih,jw,bhwk->bijk", rows, cols, x)
