"""Flax NNX reference architectures used as attack targets."""

from jaxadv.nn.cnn import SmallCNN

__all__ = ["SmallCNN"]
