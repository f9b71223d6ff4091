"""Flax NNX reference architectures used as attack targets."""

from jaxadv.nn.cnn import SmallCNN
from jaxadv.nn.resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet50
from jaxadv.nn.torch_import import (
    load_safetensors,
    load_torchvision_resnet,
    resnet_from_safetensors,
    save_safetensors,
)

__all__ = [
    "SmallCNN",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "resnet18",
    "resnet50",
    "load_safetensors",
    "save_safetensors",
    "load_torchvision_resnet",
    "resnet_from_safetensors",
]
