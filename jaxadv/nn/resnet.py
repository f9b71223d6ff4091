"""ResNet-18 / ResNet-50 in Flax NNX, laid out like torchvision so its weights can be imported.

Layout (NHWC), attribute names mirroring torchvision's ``state_dict`` keys::

    conv1, bn1          stem ('cifar': 3x3/1, no pool; 'imagenet': 7x7/2 + maxpool 3x3/2)
    layer1 .. layer4    nnx.List of blocks
        BasicBlock:     conv1 bn1 conv2 bn2 [downsample.0 (1x1 conv), downsample.1 (BN)]
        Bottleneck:     conv1 bn1 conv2 bn2 conv3 bn3 [downsample.0, downsample.1]
    fc                  Linear after global average pooling

The stride of a Bottleneck sits on its 3x3 ``conv2`` (torchvision's "ResNet v1.5").

Padding follows PyTorch, not XLA's ``'SAME'``: every convolution pads symmetrically by
``kernel // 2`` (3 for the 7x7 stem, 1 for 3x3 convs including the stride-2 ones, 0 for 1x1), and
the ImageNet max pool pads by 1 with ``-inf``. ``'SAME'`` would pad ``(0, 1)`` for a stride-2
3x3 conv on an even size, which shifts every feature map by one pixel against torch.

Batch norm uses torch's defaults: ``eps = 1e-5`` and ``momentum = 0.1`` in torch's convention
(``running = (1 - m) * running + m * batch``). Flax writes the same update as
``running = m' * running + (1 - m') * batch``, so ``m' = 1 - m`` (0.9) is what is passed to
:class:`flax.nnx.BatchNorm`. One difference remains in training mode only: torch updates
``running_var`` with the unbiased batch variance (factor ``n / (n - 1)``), Flax with the biased
one; inference with imported statistics is identical. Modules start in training mode (the NNX and
torch default); call ``module.eval()`` (or wrap with :func:`jaxadv.from_nnx`, which does it on a
copy) to normalise with the running statistics.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from jaxadv.nn.layers import BN_MOMENTUM, batch_norm, conv2d, linear, max_pool

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet50"]

Stem = Literal["cifar", "imagenet"]


def _conv(
    in_channels: int, out_channels: int, kernel: int, stride: int, *, rngs: nnx.Rngs
) -> nnx.Conv:
    return conv2d(in_channels, out_channels, kernel, stride, rngs=rngs)


def _bn(num_features: int, momentum: float, *, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return batch_norm(num_features, momentum=momentum, rngs=rngs)


def _downsample(
    in_channels: int, out_channels: int, stride: int, momentum: float, rngs: nnx.Rngs
) -> nnx.List | None:
    if stride == 1 and in_channels == out_channels:
        return None
    # A list (not nnx.Sequential) so the state paths read downsample.0 / downsample.1 like torch.
    return nnx.List(
        [
            _conv(in_channels, out_channels, 1, stride, rngs=rngs),
            _bn(out_channels, momentum, rngs=rngs),
        ]
    )


class BasicBlock(nnx.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int = 1,
        *,
        bn_momentum: float = BN_MOMENTUM,
        rngs: nnx.Rngs,
    ):
        out = channels * self.expansion
        self.conv1 = _conv(in_channels, channels, 3, stride, rngs=rngs)
        self.bn1 = _bn(channels, bn_momentum, rngs=rngs)
        self.conv2 = _conv(channels, out, 3, 1, rngs=rngs)
        self.bn2 = _bn(out, bn_momentum, rngs=rngs)
        self.downsample = _downsample(in_channels, out, stride, bn_momentum, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        shortcut = x if self.downsample is None else self.downsample[1](self.downsample[0](x))
        return nnx.relu(y + shortcut)


class Bottleneck(nnx.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, with a shortcut (ResNet-50/101/152)."""

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int = 1,
        *,
        bn_momentum: float = BN_MOMENTUM,
        rngs: nnx.Rngs,
    ):
        out = channels * self.expansion
        self.conv1 = _conv(in_channels, channels, 1, 1, rngs=rngs)
        self.bn1 = _bn(channels, bn_momentum, rngs=rngs)
        self.conv2 = _conv(channels, channels, 3, stride, rngs=rngs)
        self.bn2 = _bn(channels, bn_momentum, rngs=rngs)
        self.conv3 = _conv(channels, out, 1, 1, rngs=rngs)
        self.bn3 = _bn(out, bn_momentum, rngs=rngs)
        self.downsample = _downsample(in_channels, out, stride, bn_momentum, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = nnx.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        shortcut = x if self.downsample is None else self.downsample[1](self.downsample[0](x))
        return nnx.relu(y + shortcut)


class ResNet(nnx.Module):
    """A torchvision-compatible ResNet.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck` (any class with an ``expansion``
            attribute and the ``(in_channels, channels, stride, *, bn_momentum, rngs)`` signature).
        layers: number of blocks in each of the four stages, e.g. ``(2, 2, 2, 2)``.
        num_classes: ``C``, the size of the logits.
        in_channels: ``K``, input channels (3 for RGB, 1 for greyscale).
        stem: ``'cifar'`` (3x3 stride-1 conv, no pooling; for 32x32 inputs) or ``'imagenet'``
            (7x7 stride-2 conv and 3x3 stride-2 max pool; for 224x224 inputs).
        bn_momentum: batch-norm momentum in torch's convention (see the module docstring).
        width: channels of the stem and first stage (64, torchvision's); the stages have
            ``width * (1, 2, 4, 8)``. Narrower widths give CPU-sized networks of the same depth
            (the zoo's ``resnet18`` uses 8).
        rngs: NNX random streams for the initialisation.

    Call: ``x[B, H, W, K] -> logits[B, C]``, no normalisation applied (give ``mean``/``std`` to
    :func:`jaxadv.from_nnx`).

    Reference: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int] | list[int],
        num_classes: int = 1000,
        in_channels: int = 3,
        *,
        stem: Stem = "imagenet",
        bn_momentum: float = BN_MOMENTUM,
        width: int = 64,
        rngs: nnx.Rngs,
    ):
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise ValueError(f"layers must be four positive block counts, got {layers!r}")
        if num_classes < 1 or in_channels < 1:
            raise ValueError(
                f"num_classes and in_channels must be positive, got {num_classes}, {in_channels}"
            )
        if int(width) < 1:
            raise ValueError(f"width must be positive, got {width}")
        self.stem = stem
        base = int(width)
        if stem == "imagenet":
            self.conv1 = _conv(in_channels, base, 7, 2, rngs=rngs)
        else:
            self.conv1 = _conv(in_channels, base, 3, 1, rngs=rngs)
        self.bn1 = _bn(base, bn_momentum, rngs=rngs)
        width = base
        stages = []
        widths = (base, 2 * base, 4 * base, 8 * base)
        for i, (channels, n) in enumerate(zip(widths, layers, strict=True)):
            blocks = []
            for j in range(int(n)):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(width, channels, stride, bn_momentum=bn_momentum, rngs=rngs))
                width = channels * block.expansion
            stages.append(nnx.List(blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = linear(width, num_classes, rngs=rngs)

    def features(self, x: jax.Array) -> jax.Array:
        """Pooled penultimate features ``[B, 512 * block.expansion]``."""
        x = nnx.relu(self.bn1(self.conv1(x)))
        if self.stem == "imagenet":
            x = max_pool(x, 3, 2, padding=1)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for blk in stage:
                x = blk(x)
        return jnp.mean(x, axis=(1, 2))

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"ResNet expects x[B, H, W, K] (NHWC), got shape {x.shape}")
        return self.fc(self.features(x))


def resnet18(
    num_classes: int = 10,
    in_channels: int = 3,
    *,
    stem: Stem = "cifar",
    bn_momentum: float = BN_MOMENTUM,
    width: int = 64,
    rngs: nnx.Rngs,
) -> ResNet:
    """ResNet-18 (BasicBlock, ``(2, 2, 2, 2)``), CIFAR stem by default for 32x32 inputs;
    ``width`` as in :class:`ResNet`.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> from jaxadv.nn import resnet18
        >>> model = resnet18(num_classes=10, rngs=nnx.Rngs(0))
        >>> model.eval()
        >>> model(jnp.zeros((2, 32, 32, 3))).shape
        (2, 10)
    """
    return ResNet(
        BasicBlock,
        (2, 2, 2, 2),
        num_classes,
        in_channels,
        stem=stem,
        bn_momentum=bn_momentum,
        width=width,
        rngs=rngs,
    )


def resnet50(
    num_classes: int = 1000,
    in_channels: int = 3,
    *,
    stem: Stem = "imagenet",
    bn_momentum: float = BN_MOMENTUM,
    rngs: nnx.Rngs,
) -> ResNet:
    """ResNet-50 (Bottleneck, ``(3, 4, 6, 3)``), ImageNet stem by default for 224x224 inputs."""
    return ResNet(
        Bottleneck,
        (3, 4, 6, 3),
        num_classes,
        in_channels,
        stem=stem,
        bn_momentum=bn_momentum,
        rngs=rngs,
    )
