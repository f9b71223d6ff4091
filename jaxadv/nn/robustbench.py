"""RobustBench's CIFAR architectures in Flax NNX: WideResNet and PreActResNet-18.

Attribute paths equal RobustBench's ``state_dict`` keys
(``robustbench/model_zoo/architectures/wide_resnet.py`` and ``resnet.py``), so its checkpoints load
after conversion to ``.safetensors``. Layouts (NHWC)::

    WideResNet     conv1 (3x3, 16), block{1,2,3}.layer.{i}.{bn1, conv1, bn2, conv2,
                   convShortcut}, [sub_block1 (weights only, unused)], bn1, fc
    PreActResNet   conv1 (3x3, 64), layer{1..4}.{i}.{bn1, conv1, bn2, conv2, shortcut.0},
                   [bn], linear

Two RobustBench quirks are reproduced on purpose:

* A WideResNet block whose width changes pre-activates its input once and feeds the
  *pre-activated* tensor to both the residual branch and the 1x1 ``convShortcut``; a block of equal
  widths adds its *raw* input.
* ``PreActBlock`` (``PreActResNet18()``, e.g. Andriushchenko2020Understanding, Wong2020Fast) applies
  its projection shortcut to the raw input, ``PreActBlockV2`` (Rice2020OverfittingNetL2,
  Kireev2021Effectiveness, with ``bn_before_fc=True``) to the pre-activated one:
  ``shortcut='input'`` or ``'preact'``. The weights cannot tell them apart; pick the one the
  checkpoint's model card names.

RobustBench ends both networks with ``F.avg_pool2d`` over the whole 8x8 (4x4) map of a 32x32
input; here that is a global mean, which is the same for 32x32 and stays meaningful for other
sizes. Convolutions have no bias; dropout (``dropRate``, 0 in RobustBench) is not reproduced.
Normalisation (the ``mu``/``sigma`` buffers of some RobustBench wrappers) belongs in
:func:`jaxadv.from_nnx`'s ``mean``/``std``.

References: Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016; He et al., "Identity
Mappings in Deep Residual Networks", ECCV 2016; Croce et al., "RobustBench", NeurIPS 2021 D&B.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from jaxadv.nn.layers import BN_MOMENTUM, batch_norm, conv2d, linear

__all__ = ["WideResNet", "PreActResNet", "wide_resnet", "preact_resnet18"]

Shortcut = Literal["input", "preact"]


class _WideBlock(nnx.Module):
    def __init__(
        self, in_channels: int, out_channels: int, stride: int, momentum: float, rngs: nnx.Rngs
    ):
        self.bn1 = batch_norm(in_channels, momentum=momentum, rngs=rngs)
        self.conv1 = conv2d(in_channels, out_channels, 3, stride, rngs=rngs)
        self.bn2 = batch_norm(out_channels, momentum=momentum, rngs=rngs)
        self.conv2 = conv2d(out_channels, out_channels, 3, rngs=rngs)
        self.equal_in_out = in_channels == out_channels
        self.convShortcut = (  # RobustBench's (TRADES') name, kept so the key matches
            None
            if self.equal_in_out
            else conv2d(in_channels, out_channels, 1, stride, padding=0, rngs=rngs)
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        pre = nnx.relu(self.bn1(x))
        out = self.conv2(nnx.relu(self.bn2(self.conv1(pre))))
        if self.convShortcut is None:
            return x + out
        return self.convShortcut(pre) + out


class _NetworkBlock(nnx.Module):
    def __init__(
        self,
        num_layers: int,
        in_channels: int,
        out_channels: int,
        stride: int,
        momentum: float,
        rngs: nnx.Rngs,
    ):
        self.layer = nnx.List(
            [
                _WideBlock(
                    in_channels if i == 0 else out_channels,
                    out_channels,
                    stride if i == 0 else 1,
                    momentum,
                    rngs,
                )
                for i in range(num_layers)
            ]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        for blk in self.layer:
            x = blk(x)
        return x


class WideResNet(nnx.Module):
    """RobustBench's (TRADES') WideResNet-``depth``-``widen_factor``.

    Args:
        depth: ``6 n + 4`` for ``n`` blocks per stage (28, 34, 70, ...).
        widen_factor: stage widths are ``16, 32, 64`` times this.
        num_classes: ``C``, the size of the logits.
        in_channels: ``K``, input channels.
        sub_block1: also hold RobustBench's unused ``sub_block1`` weights (some checkpoints carry
            them: Carmon2019Unlabeled, Zhang2019Theoretically, ...); the forward pass ignores them.
        bias_last: whether ``fc`` has a bias.
        bn_momentum: batch-norm momentum in torch's convention.
        rngs: NNX random streams for the initialisation.

    Call: ``x[B, H, W, K] -> logits[B, C]`` (32x32 in RobustBench), no normalisation applied.
    """

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        num_classes: int = 10,
        in_channels: int = 3,
        *,
        sub_block1: bool = False,
        bias_last: bool = True,
        bn_momentum: float = BN_MOMENTUM,
        rngs: nnx.Rngs,
    ):
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"depth must be 6 n + 4 with n >= 1 (28, 34, ...), got {depth}")
        if min(widen_factor, num_classes, in_channels) < 1:
            raise ValueError(
                "widen_factor, num_classes and in_channels must be positive, got "
                f"{widen_factor}, {num_classes}, {in_channels}"
            )
        n = (depth - 4) // 6
        c = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        m = bn_momentum
        self.conv1 = conv2d(in_channels, c[0], 3, rngs=rngs)
        self.block1 = _NetworkBlock(n, c[0], c[1], 1, m, rngs)
        self.sub_block1 = _NetworkBlock(n, c[0], c[1], 1, m, rngs) if sub_block1 else None
        self.block2 = _NetworkBlock(n, c[1], c[2], 2, m, rngs)
        self.block3 = _NetworkBlock(n, c[2], c[3], 2, m, rngs)
        self.bn1 = batch_norm(c[3], momentum=m, rngs=rngs)
        self.fc = linear(c[3], num_classes, use_bias=bias_last, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"WideResNet expects x[B, H, W, K] (NHWC), got shape {x.shape}")
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = nnx.relu(self.bn1(x))
        return self.fc(jnp.mean(x, axis=(1, 2)))


class _PreActBlock(nnx.Module):
    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int,
        shortcut: Shortcut,
        momentum: float,
        rngs: nnx.Rngs,
    ):
        self.bn1 = batch_norm(in_channels, momentum=momentum, rngs=rngs)
        self.conv1 = conv2d(in_channels, channels, 3, stride, rngs=rngs)
        self.bn2 = batch_norm(channels, momentum=momentum, rngs=rngs)
        self.conv2 = conv2d(channels, channels, 3, rngs=rngs)
        self.shortcut_from = shortcut
        self.shortcut = (
            nnx.List([conv2d(in_channels, channels, 1, stride, padding=0, rngs=rngs)])
            if stride != 1 or in_channels != channels
            else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        pre = nnx.relu(self.bn1(x))
        if self.shortcut is None:
            skip = x
        else:
            skip = self.shortcut[0](x if self.shortcut_from == "input" else pre)
        out = self.conv2(nnx.relu(self.bn2(self.conv1(pre))))
        return out + skip


class PreActResNet(nnx.Module):
    """RobustBench's pre-activation ResNet (``PreActBlock``, four stages of 64..512 channels).

    Args:
        layers: blocks per stage, ``(2, 2, 2, 2)`` for PreActResNet-18.
        num_classes: ``C``, the size of the logits.
        in_channels: ``K``, input channels.
        shortcut: ``'input'`` (``PreActBlock``) or ``'preact'`` (``PreActBlockV2``): what a
            projection shortcut is applied to (see the module docstring).
        bn_before_fc: a final BN + ReLU (``bn``) before pooling (RobustBench's ``bn_before_fc``).
        bn_momentum: batch-norm momentum in torch's convention.
        rngs: NNX random streams for the initialisation.

    Call: ``x[B, H, W, K] -> logits[B, C]`` (32x32 in RobustBench), no normalisation applied.
    """

    def __init__(
        self,
        layers: tuple[int, int, int, int] | list[int] = (2, 2, 2, 2),
        num_classes: int = 10,
        in_channels: int = 3,
        *,
        shortcut: Shortcut = "input",
        bn_before_fc: bool = False,
        bn_momentum: float = BN_MOMENTUM,
        rngs: nnx.Rngs,
    ):
        if shortcut not in ("input", "preact"):
            raise ValueError(f"shortcut must be 'input' or 'preact', got {shortcut!r}")
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise ValueError(f"layers must be four positive block counts, got {layers!r}")
        if min(num_classes, in_channels) < 1:
            raise ValueError(
                f"num_classes and in_channels must be positive, got {num_classes}, {in_channels}"
            )
        self.conv1 = conv2d(in_channels, 64, 3, rngs=rngs)
        width = 64
        stages = []
        for i, (channels, n) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            blocks = []
            for j in range(int(n)):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(_PreActBlock(width, channels, stride, shortcut, bn_momentum, rngs))
                width = channels
            stages.append(nnx.List(blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn = batch_norm(width, momentum=bn_momentum, rngs=rngs) if bn_before_fc else None
        self.linear = linear(width, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"PreActResNet expects x[B, H, W, K] (NHWC), got shape {x.shape}")
        x = self.conv1(x)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for blk in stage:
                x = blk(x)
        if self.bn is not None:
            x = nnx.relu(self.bn(x))
        return self.linear(jnp.mean(x, axis=(1, 2)))


def wide_resnet(
    depth: int = 28,
    widen_factor: int = 10,
    num_classes: int = 10,
    in_channels: int = 3,
    *,
    sub_block1: bool = False,
    bias_last: bool = True,
    bn_momentum: float = BN_MOMENTUM,
    rngs: nnx.Rngs,
) -> WideResNet:
    """WideResNet-``depth``-``widen_factor`` (28-10 and 34-10 in RobustBench's CIFAR zoo).

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> from jaxadv.nn import wide_resnet
        >>> model = wide_resnet(depth=10, widen_factor=1, rngs=nnx.Rngs(0))
        >>> model.eval()
        >>> model(jnp.zeros((2, 32, 32, 3))).shape
        (2, 10)
    """
    return WideResNet(
        depth,
        widen_factor,
        num_classes,
        in_channels,
        sub_block1=sub_block1,
        bias_last=bias_last,
        bn_momentum=bn_momentum,
        rngs=rngs,
    )


def preact_resnet18(
    num_classes: int = 10,
    in_channels: int = 3,
    *,
    shortcut: Shortcut = "input",
    bn_before_fc: bool = False,
    bn_momentum: float = BN_MOMENTUM,
    rngs: nnx.Rngs,
) -> PreActResNet:
    """PreActResNet-18 as in RobustBench (``PreActResNet(PreActBlock, [2, 2, 2, 2])``)."""
    return PreActResNet(
        (2, 2, 2, 2),
        num_classes,
        in_channels,
        shortcut=shortcut,
        bn_before_fc=bn_before_fc,
        bn_momentum=bn_momentum,
        rngs=rngs,
    )
