"""Flax NNX reference architectures used as attack targets, and torch weight import."""

from jaxadv.nn.cnn import SmallCNN
from jaxadv.nn.densenet import DenseNet, densenet121
from jaxadv.nn.resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet50
from jaxadv.nn.robustbench import PreActResNet, WideResNet, preact_resnet18, wide_resnet
from jaxadv.nn.safetensors_io import load_safetensors, save_safetensors
from jaxadv.nn.torch_import import (
    densenet_from_safetensors,
    load_torch_state_dict,
    preact_resnet_from_safetensors,
    resnet_from_safetensors,
    vgg_from_safetensors,
    wide_resnet_from_safetensors,
)
from jaxadv.nn.unet import UNet
from jaxadv.nn.vgg import VGG, vgg16, vgg16_bn

__all__ = [
    "SmallCNN",
    "UNet",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "resnet18",
    "resnet50",
    "DenseNet",
    "densenet121",
    "VGG",
    "vgg16",
    "vgg16_bn",
    "WideResNet",
    "wide_resnet",
    "PreActResNet",
    "preact_resnet18",
    "load_safetensors",
    "save_safetensors",
    "load_torch_state_dict",
    "resnet_from_safetensors",
    "densenet_from_safetensors",
    "vgg_from_safetensors",
    "wide_resnet_from_safetensors",
    "preact_resnet_from_safetensors",
]
