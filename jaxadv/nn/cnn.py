"""A small CNN for 28×28 inputs (MedMNIST size): the shipped reference target."""

from __future__ import annotations

import jax
from flax import nnx


class SmallCNN(nnx.Module):
    """conv(32)-BN-ReLU-pool, conv(64)-BN-ReLU-pool, dense(128)-ReLU-dropout, dense(C).

    Input ``[B, H, W, in_channels]`` in pixel space (normalise with the adapter), output logits.
    """

    def __init__(
        self,
        num_classes: int = 2,
        in_channels: int = 1,
        *,
        width: int = 32,
        input_size: int = 28,
        dropout: float = 0.1,
        rngs: nnx.Rngs,
    ):
        self.conv1 = nnx.Conv(in_channels, width, (3, 3), rngs=rngs)
        self.bn1 = nnx.BatchNorm(width, rngs=rngs)
        self.conv2 = nnx.Conv(width, 2 * width, (3, 3), rngs=rngs)
        self.bn2 = nnx.BatchNorm(2 * width, rngs=rngs)
        flat = (input_size // 4) * (input_size // 4) * 2 * width
        self.fc1 = nnx.Linear(flat, 128, rngs=rngs)
        self.drop = nnx.Dropout(dropout, rngs=rngs)
        self.fc2 = nnx.Linear(128, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.bn1(self.conv1(x)))
        x = nnx.max_pool(x, (2, 2), (2, 2))
        x = nnx.relu(self.bn2(self.conv2(x)))
        x = nnx.max_pool(x, (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        x = self.drop(nnx.relu(self.fc1(x)))
        return self.fc2(x)
