"""DenseNet in Flax NNX, laid out like torchvision's so its weights can be imported (CheXNet shape).

Layout (NHWC), attribute paths equal to torchvision's ``state_dict`` keys::

    features.conv0, features.norm0          7x7/2 conv, BN, ReLU, 3x3/2 max pool (pool0)
    features.denseblock{i}.denselayer{j}    norm1 conv1 (1x1, bn_size * growth) norm2 conv2 (3x3)
    features.transition{i}                  norm, conv (1x1, halves the channels), 2x2/2 avg pool
    features.norm5                          BN, then ReLU and global average pooling
    classifier                              Linear

Each dense layer appends ``growth_rate`` channels to its input (concatenated last, as torch's
``torch.cat(prev_features, 1)``). Convolutions have no bias. Padding and batch norm follow torch
(see :mod:`jaxadv.nn.layers`). ``drop_rate`` and the memory-efficient checkpointing of torchvision
are not reproduced: the first is 0 in every torchvision model and in CheXNet, the second does not
change the values.

Reference: Huang et al., "Densely Connected Convolutional Networks", CVPR 2017; CheXNet
(Rajpurkar et al. 2017) is a DenseNet-121 with a 14-way sigmoid head.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxadv.nn.layers import BN_MOMENTUM, avg_pool, batch_norm, conv2d, linear, max_pool

__all__ = ["DenseNet", "densenet121"]


class _DenseLayer(nnx.Module):
    def __init__(
        self, in_channels: int, growth_rate: int, bn_size: int, momentum: float, rngs: nnx.Rngs
    ):
        width = bn_size * growth_rate
        self.norm1 = batch_norm(in_channels, momentum=momentum, rngs=rngs)
        self.conv1 = conv2d(in_channels, width, 1, rngs=rngs)
        self.norm2 = batch_norm(width, momentum=momentum, rngs=rngs)
        self.conv2 = conv2d(width, growth_rate, 3, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.conv1(nnx.relu(self.norm1(x)))
        y = self.conv2(nnx.relu(self.norm2(y)))
        return jnp.concatenate([x, y], axis=-1)


class _DenseBlock(nnx.Module):
    def __init__(
        self,
        num_layers: int,
        in_channels: int,
        growth_rate: int,
        bn_size: int,
        momentum: float,
        rngs: nnx.Rngs,
    ):
        self.num_layers = num_layers
        for j in range(num_layers):
            layer = _DenseLayer(in_channels + j * growth_rate, growth_rate, bn_size, momentum, rngs)
            setattr(self, f"denselayer{j + 1}", layer)

    def __call__(self, x: jax.Array) -> jax.Array:
        for j in range(self.num_layers):
            x = getattr(self, f"denselayer{j + 1}")(x)
        return x


class _Transition(nnx.Module):
    def __init__(self, in_channels: int, out_channels: int, momentum: float, rngs: nnx.Rngs):
        self.norm = batch_norm(in_channels, momentum=momentum, rngs=rngs)
        self.conv = conv2d(in_channels, out_channels, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv(nnx.relu(self.norm(x)))
        return avg_pool(x, 2, 2)


class _Features(nnx.Module):
    """torchvision's ``features`` Sequential; its children are named, so attributes suffice."""

    def __init__(
        self,
        growth_rate: int,
        block_config: tuple[int, ...],
        num_init_features: int,
        bn_size: int,
        in_channels: int,
        momentum: float,
        rngs: nnx.Rngs,
    ):
        self.num_blocks = len(block_config)
        self.conv0 = conv2d(in_channels, num_init_features, 7, 2, rngs=rngs)
        self.norm0 = batch_norm(num_init_features, momentum=momentum, rngs=rngs)
        width = num_init_features
        for i, n in enumerate(block_config):
            block = _DenseBlock(n, width, growth_rate, bn_size, momentum, rngs)
            setattr(self, f"denseblock{i + 1}", block)
            width += n * growth_rate
            if i != len(block_config) - 1:
                setattr(self, f"transition{i + 1}", _Transition(width, width // 2, momentum, rngs))
                width //= 2
        self.norm5 = batch_norm(width, momentum=momentum, rngs=rngs)
        self.num_features = width

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.norm0(self.conv0(x)))
        x = max_pool(x, 3, 2, padding=1)
        for i in range(self.num_blocks):
            x = getattr(self, f"denseblock{i + 1}")(x)
            if i != self.num_blocks - 1:
                x = getattr(self, f"transition{i + 1}")(x)
        return self.norm5(x)


class DenseNet(nnx.Module):
    """A torchvision-compatible DenseNet (BC variant: bottleneck layers and compression 0.5).

    Args:
        growth_rate: channels each dense layer adds (32 for DenseNet-121).
        block_config: dense layers per block, e.g. ``(6, 12, 24, 16)``.
        num_init_features: channels of the stem convolution (64).
        bn_size: bottleneck width as a multiple of ``growth_rate`` (4).
        num_classes: ``C``, the size of the logits (14 for CheXNet: apply a sigmoid per finding
            outside the model).
        in_channels: ``K``, input channels.
        bn_momentum: batch-norm momentum in torch's convention.
        rngs: NNX random streams for the initialisation.

    Call: ``x[B, H, W, K] -> logits[B, C]``, no normalisation applied (give ``mean``/``std`` to
    :func:`jaxadv.from_nnx`). Any ``H, W >= 32`` works (the five halvings end at 1x1 for 32).
    """

    def __init__(
        self,
        growth_rate: int = 32,
        block_config: tuple[int, ...] | list[int] = (6, 12, 24, 16),
        num_init_features: int = 64,
        bn_size: int = 4,
        num_classes: int = 1000,
        in_channels: int = 3,
        *,
        bn_momentum: float = BN_MOMENTUM,
        rngs: nnx.Rngs,
    ):
        sizes = (growth_rate, num_init_features, bn_size, num_classes, in_channels)
        if min(int(v) for v in sizes) < 1:
            raise ValueError(
                "growth_rate, num_init_features, bn_size, num_classes and in_channels must be "
                f"positive, got {sizes}"
            )
        if len(block_config) < 1 or any(int(n) < 1 for n in block_config):
            raise ValueError(f"block_config must be positive layer counts, got {block_config!r}")
        self.features = _Features(
            growth_rate,
            tuple(int(n) for n in block_config),
            num_init_features,
            bn_size,
            in_channels,
            bn_momentum,
            rngs,
        )
        self.classifier = linear(self.features.num_features, num_classes, rngs=rngs)

    def _final_size(self, n: int) -> int:
        n = (n - 1) // 2 + 1  # conv0: 7x7, stride 2, padding 3
        n = (n - 1) // 2 + 1  # pool0: 3x3, stride 2, padding 1
        for _ in range(self.features.num_blocks - 1):
            n //= 2  # transition: 2x2 average pool, stride 2
        return n

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"DenseNet expects x[B, H, W, K] (NHWC), got shape {x.shape}")
        if min(self._final_size(x.shape[1]), self._final_size(x.shape[2])) < 1:
            smallest = next(n for n in range(1, 4096) if self._final_size(n) >= 1)
            # torch refuses these sizes too; here they would silently give NaN (empty pools).
            raise ValueError(
                f"DenseNet needs images of at least {smallest}x{smallest} (its "
                f"{self.features.num_blocks - 1} transitions halve the 4x-reduced stem output), "
                f"got {x.shape[1]}x{x.shape[2]}; upsample them (CheXNet was trained at 224x224)"
            )
        x = nnx.relu(self.features(x))
        return self.classifier(jnp.mean(x, axis=(1, 2)))


def densenet121(
    num_classes: int = 1000,
    in_channels: int = 3,
    *,
    bn_momentum: float = BN_MOMENTUM,
    rngs: nnx.Rngs,
) -> DenseNet:
    """DenseNet-121 (growth 32, blocks ``(6, 12, 24, 16)``, 64 stem channels, ``bn_size`` 4).

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> from jaxadv.nn import densenet121
        >>> model = densenet121(num_classes=14, rngs=nnx.Rngs(0))
        >>> model.eval()
        >>> model(jnp.zeros((1, 32, 32, 3))).shape
        (1, 14)
    """
    return DenseNet(
        32, (6, 12, 24, 16), 64, 4, num_classes, in_channels, bn_momentum=bn_momentum, rngs=rngs
    )
