"""A small U-Net (Ronneberger et al., 2015) for dense targets: ``x[B, H, W, K] -> logits[B, H, W, C]``.

The reference segmentation target of jaxadv (trained on ISIC 2017 lesion masks by
``scripts/train_unet.py``). Any model returning per-pixel logits ``[B, H, W, C]`` works with the
dense attacks through the ordinary adapters (:func:`jaxadv.from_nnx`, ``from_linen``,
``from_apply``); this one is small enough to train in minutes on a CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class ConvBlock(nnx.Module):
    """Two ``3x3 conv -> BatchNorm -> ReLU`` layers (``'SAME'`` padding, size kept)."""

    def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(cin, cout, (3, 3), use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(cout, rngs=rngs)
        self.conv2 = nnx.Conv(cout, cout, (3, 3), use_bias=False, rngs=rngs)
        self.bn2 = nnx.BatchNorm(cout, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.bn1(self.conv1(x)))
        return nnx.relu(self.bn2(self.conv2(x)))


class UNet(nnx.Module):
    """U-Net with ``depth`` resolution levels; level ``i`` has ``width * 2**i`` channels.

    Encoder: a :class:`ConvBlock` per level, 2x2 max-pooling between levels; decoder: 2x2
    transposed convolution, concatenation with the encoder's skip features, a :class:`ConvBlock`;
    a 1x1 convolution gives the per-pixel class logits. ``H`` and ``W`` must be divisible by
    ``2 ** (depth - 1)``.

    Input ``[B, H, W, in_channels]`` in pixel space (normalise with the adapter, e.g.
    ``from_nnx(net, mean=..., std=...)``), output logits ``[B, H, W, num_classes]``.

    Args:
        num_classes: classes per pixel ``C`` (2 for a binary lesion mask: background, lesion).
        in_channels: image channels ``K``.
        width: channels of the first level (16 gives ~116k parameters at ``depth=3``).
        depth: resolution levels (at least 2).
        rngs: initialisation randomness.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> from jaxadv.nn import UNet
        >>> net = UNet(num_classes=2, in_channels=3, width=4, depth=3, rngs=nnx.Rngs(0))
        >>> net(jnp.zeros((2, 16, 16, 3))).shape
        (2, 16, 16, 2)
    """

    def __init__(
        self,
        num_classes: int = 2,
        in_channels: int = 3,
        *,
        width: int = 16,
        depth: int = 3,
        rngs: nnx.Rngs,
    ):
        if depth < 2:
            raise ValueError(f"UNet depth must be at least 2 (one down-sampling), got {depth}")
        if num_classes < 2:
            raise ValueError(
                f"UNet needs num_classes >= 2 (a binary mask is 2 classes: background, "
                f"foreground), got {num_classes}"
            )
        chans = [width * 2**i for i in range(depth)]
        self.depth = depth
        self.down = nnx.List(
            [
                ConvBlock(c_in, c, rngs=rngs)
                for c_in, c in zip([in_channels, *chans[:-1]], chans, strict=True)
            ]
        )
        self.up = nnx.List(
            [
                nnx.ConvTranspose(chans[i + 1], chans[i], (2, 2), strides=(2, 2), rngs=rngs)
                for i in reversed(range(depth - 1))
            ]
        )
        self.dec = nnx.List(
            [ConvBlock(2 * chans[i], chans[i], rngs=rngs) for i in reversed(range(depth - 1))]
        )
        self.head = nnx.Conv(chans[0], num_classes, (1, 1), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        f = 2 ** (self.depth - 1)
        if x.shape[1] % f or x.shape[2] % f:
            raise ValueError(
                f"UNet(depth={self.depth}) needs H and W divisible by {f}; got "
                f"{x.shape[1]}x{x.shape[2]} (resize or pad the images)"
            )
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = nnx.max_pool(x, (2, 2), (2, 2))
            x = block(x)
            skips.append(x)
        for up, block, skip in zip(self.up, self.dec, reversed(skips[:-1]), strict=True):
            x = block(jnp.concatenate([up(x), skip], axis=-1))
        return self.head(x)


__all__ = ["ConvBlock", "UNet"]
