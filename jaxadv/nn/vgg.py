"""VGG in Flax NNX, laid out like torchvision's so its weights can be imported.

torchvision keeps VGG in two ``nn.Sequential``s, so its ``state_dict`` keys are positions:
``features.0.weight`` (first conv), ``features.1.running_mean`` (its BN, ``_bn`` variants only),
... ``classifier.0`` / ``classifier.3`` / ``classifier.6`` (the three Linears). The NNX module keeps
the same positions: ``features`` and ``classifier`` are ``nnx.List``s in which the parameter-free
layers (ReLU, max pool, dropout) are placeholders, so every attribute path equals torch's key.

Layout (NHWC)::

    features        per stage: [conv 3x3 (bias), (BN), ReLU] x n, max pool 2x2/2
    avgpool         adaptive average pooling to 7x7 (torch's bins: repeats values below 7x7)
    classifier      Linear(512 * 7 * 7, hidden), ReLU, Dropout, Linear(hidden, hidden), ReLU,
                    Dropout, Linear(hidden, num_classes)

The 7x7 map is flattened in torch's channel-major order (``C, H, W``), so ``classifier.0.weight``
loads unchanged. Dropout is an identity placeholder: this port is for inference and attacks; to
train it, add dropout yourself. ``hidden`` is 4096 in torchvision; it is a parameter so that
re-headed models (and tests) can be smaller.

Reference: Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015.
"""

from __future__ import annotations

import jax
from flax import nnx

from jaxadv.nn.layers import BN_MOMENTUM, adaptive_avg_pool, batch_norm, conv2d, linear, max_pool

__all__ = ["VGG", "VGG_CONFIGS", "vgg16", "vgg16_bn"]

# torchvision's configurations: output channels of each conv, "M" for a 2x2 max pool.
VGG_CONFIGS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (
        *(64, 64, "M", 128, 128, "M", 256, 256, 256, "M"),
        *(512, 512, 512, "M", 512, 512, 512, "M"),
    ),
    "vgg19": (
        *(64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M"),
        *(512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
    ),
}


class _ReLU(nnx.Module):
    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.relu(x)


class _MaxPool(nnx.Module):
    def __call__(self, x: jax.Array) -> jax.Array:
        return max_pool(x, 2, 2)


class _Dropout(nnx.Module):
    def __call__(self, x: jax.Array) -> jax.Array:
        return x


class VGG(nnx.Module):
    """A torchvision-compatible VGG.

    Args:
        config: a key of :data:`VGG_CONFIGS` (``'vgg11'``, ``'vgg13'``, ``'vgg16'``, ``'vgg19'``)
            or the sequence itself.
        batch_norm: insert BN after every convolution (torchvision's ``vgg16_bn``).
        num_classes: ``C``, the size of the logits.
        in_channels: ``K``, input channels.
        hidden: width of the two hidden Linear layers (4096 in torchvision).
        bn_momentum: batch-norm momentum in torch's convention.
        rngs: NNX random streams for the initialisation.

    Call: ``x[B, H, W, K] -> logits[B, C]`` for ``H, W >= 32`` (five halvings), no normalisation
    applied (give ``mean``/``std`` to :func:`jaxadv.from_nnx`).
    """

    def __init__(
        self,
        config: str | tuple[int | str, ...] = "vgg16",
        *,
        batch_norm: bool = False,
        num_classes: int = 1000,
        in_channels: int = 3,
        hidden: int = 4096,
        bn_momentum: float = BN_MOMENTUM,
        rngs: nnx.Rngs,
    ):
        if isinstance(config, str):
            if config not in VGG_CONFIGS:
                raise ValueError(f"config must be one of {sorted(VGG_CONFIGS)}, got {config!r}")
            config = VGG_CONFIGS[config]
        if min(num_classes, in_channels, hidden) < 1:
            raise ValueError(
                "num_classes, in_channels and hidden must be positive, got "
                f"{num_classes}, {in_channels}, {hidden}"
            )
        layers: list[nnx.Module] = []
        width = in_channels
        for v in config:
            if v == "M":
                layers.append(_MaxPool())
                continue
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"config entries must be positive ints or 'M', got {v!r}")
            layers.append(conv2d(width, v, 3, use_bias=True, rngs=rngs))
            if batch_norm:
                layers.append(_bn_layer(v, bn_momentum, rngs))
            layers.append(_ReLU())
            width = v
        self.features = nnx.List(layers)
        self.num_pools = sum(1 for v in config if v == "M")
        self.classifier = nnx.List(
            [
                linear(width * 7 * 7, hidden, rngs=rngs),
                _ReLU(),
                _Dropout(),
                linear(hidden, hidden, rngs=rngs),
                _ReLU(),
                _Dropout(),
                linear(hidden, num_classes, rngs=rngs),
            ]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"VGG expects x[B, H, W, K] (NHWC), got shape {x.shape}")
        smallest = 2**self.num_pools
        if min(x.shape[1], x.shape[2]) < smallest:
            # torch refuses these sizes too; here the empty feature map would give NaN.
            raise ValueError(
                f"VGG needs images of at least {smallest}x{smallest} ({self.num_pools} 2x2 max "
                f"pools), got {x.shape[1]}x{x.shape[2]}; upsample them"
            )
        for layer in self.features:
            x = layer(x)
        x = adaptive_avg_pool(x, (7, 7))
        # Flatten channel-major like torch's NCHW view, so classifier.0.weight needs no permutation.
        x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)
        for layer in self.classifier:
            x = layer(x)
        return x


def _bn_layer(c: int, momentum: float, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return batch_norm(c, momentum=momentum, rngs=rngs)


def vgg16(
    num_classes: int = 1000,
    in_channels: int = 3,
    *,
    hidden: int = 4096,
    bn_momentum: float = BN_MOMENTUM,
    rngs: nnx.Rngs,
) -> VGG:
    """VGG-16 without batch norm (torchvision's ``vgg16``).

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> from jaxadv.nn import vgg16
        >>> model = vgg16(num_classes=10, hidden=64, rngs=nnx.Rngs(0))
        >>> model(jnp.zeros((1, 32, 32, 3))).shape
        (1, 10)
    """
    return VGG(
        "vgg16",
        num_classes=num_classes,
        in_channels=in_channels,
        hidden=hidden,
        bn_momentum=bn_momentum,
        rngs=rngs,
    )


def vgg16_bn(
    num_classes: int = 1000,
    in_channels: int = 3,
    *,
    hidden: int = 4096,
    bn_momentum: float = BN_MOMENTUM,
    rngs: nnx.Rngs,
) -> VGG:
    """VGG-16 with batch norm after every convolution (torchvision's ``vgg16_bn``)."""
    return VGG(
        "vgg16",
        batch_norm=True,
        num_classes=num_classes,
        in_channels=in_channels,
        hidden=hidden,
        bn_momentum=bn_momentum,
        rngs=rngs,
    )
