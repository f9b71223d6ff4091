"""Reference torch modules with torchvision's and RobustBench's parameter names (test helper).

torchvision cannot be installed beside the pinned torch, and RobustBench is not a dependency, so the
architectures are written here from their published definitions: torchvision's ``densenet.py`` and
``vgg.py``, RobustBench's ``wide_resnet.py`` and ``resnet.py``. Only the names of parameters and the
forward passes matter; initialisation is randomised afterwards by :func:`randomize`, with batch-norm
statistics far from the identity so that a port that ignored them would fail.

Import only after ``pytest.importorskip("torch")``.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------------------------------
# torchvision DenseNet
# ---------------------------------------------------------------------------------------------


class _DenseLayer(nn.Module):
    def __init__(self, c_in, growth, bn_size):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(c_in)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(c_in, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, features):
        h = self.conv1(self.relu1(self.norm1(torch.cat(features, 1))))
        return self.conv2(self.relu2(self.norm2(h)))


class _DenseBlock(nn.ModuleDict):
    def __init__(self, n, c_in, growth, bn_size):
        super().__init__()
        for j in range(n):
            self.add_module(f"denselayer{j + 1}", _DenseLayer(c_in + j * growth, growth, bn_size))

    def forward(self, x):
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class DenseNet(nn.Module):
    def __init__(self, growth=32, blocks=(6, 12, 24, 16), init=64, bn_size=4, classes=1000, k=3):
        super().__init__()
        items = [
            ("conv0", nn.Conv2d(k, init, 7, stride=2, padding=3, bias=False)),
            ("norm0", nn.BatchNorm2d(init)),
            ("relu0", nn.ReLU()),
            ("pool0", nn.MaxPool2d(3, stride=2, padding=1)),
        ]
        c = init
        for i, n in enumerate(blocks):
            items.append((f"denseblock{i + 1}", _DenseBlock(n, c, growth, bn_size)))
            c += n * growth
            if i != len(blocks) - 1:
                trans = nn.Sequential(
                    OrderedDict(
                        norm=nn.BatchNorm2d(c),
                        relu=nn.ReLU(),
                        conv=nn.Conv2d(c, c // 2, 1, bias=False),
                        pool=nn.AvgPool2d(2, stride=2),
                    )
                )
                items.append((f"transition{i + 1}", trans))
                c //= 2
        items.append(("norm5", nn.BatchNorm2d(c)))
        self.features = nn.Sequential(OrderedDict(items))
        self.classifier = nn.Linear(c, classes)

    def forward(self, x):
        x = F.relu(self.features(x))
        x = torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)
        return self.classifier(x)


# ---------------------------------------------------------------------------------------------
# torchvision VGG
# ---------------------------------------------------------------------------------------------

VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    def __init__(self, batch_norm=False, classes=1000, hidden=4096, k=3, cfg=VGG16):
        super().__init__()
        layers = []
        c = k
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, stride=2))
                continue
            layers.append(nn.Conv2d(c, v, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU())
            c = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(c * 49, hidden),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(hidden, classes),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# ---------------------------------------------------------------------------------------------
# RobustBench WideResNet
# ---------------------------------------------------------------------------------------------


class _WideBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.equal = c_in == c_out
        self.convShortcut = None if self.equal else nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x):
        # RobustBench's control flow: a width-changing block overwrites x with its pre-activation
        # (which the projection then sees), an equal-width block keeps the raw x for the identity.
        if self.equal:
            h = self.conv1(self.relu1(self.bn1(x)))
        else:
            x = self.relu1(self.bn1(x))
            h = self.conv1(x)
        h = self.conv2(self.relu2(self.bn2(h)))
        return torch.add(x if self.equal else self.convShortcut(x), h)


class _NetworkBlock(nn.Module):
    def __init__(self, n, c_in, c_out, stride):
        super().__init__()
        self.layer = nn.Sequential(
            *[
                _WideBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1)
                for i in range(n)
            ]
        )

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth=28, widen=10, classes=10, sub_block1=False, bias_last=True):
        super().__init__()
        n = (depth - 4) // 6
        c = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(3, c[0], 3, padding=1, bias=False)
        self.block1 = _NetworkBlock(n, c[0], c[1], 1)
        if sub_block1:
            self.sub_block1 = _NetworkBlock(n, c[0], c[1], 1)
        self.block2 = _NetworkBlock(n, c[1], c[2], 2)
        self.block3 = _NetworkBlock(n, c[2], c[3], 2)
        self.bn1 = nn.BatchNorm2d(c[3])
        self.relu = nn.ReLU()
        self.fc = nn.Linear(c[3], classes, bias=bias_last)
        self.channels = c[3]

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.avg_pool2d(self.relu(self.bn1(out)), 8)
        return self.fc(out.view(-1, self.channels))


# ---------------------------------------------------------------------------------------------
# RobustBench PreActResNet
# ---------------------------------------------------------------------------------------------


class _PreActBlock(nn.Module):
    def __init__(self, c_in, c, stride, v2):
        super().__init__()
        self.v2 = v2
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        if stride != 1 or c_in != c:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c, 1, stride=stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        if hasattr(self, "shortcut"):
            shortcut = self.shortcut(out if self.v2 else x)
        else:
            shortcut = x
        return self.conv2(F.relu(self.bn2(self.conv1(out)))) + shortcut


class PreActResNet(nn.Module):
    def __init__(self, blocks=(2, 2, 2, 2), classes=10, v2=False, bn_before_fc=False):
        super().__init__()
        self.bn_before_fc = bn_before_fc
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        c_in = 64
        for s, (c, n) in enumerate(zip((64, 128, 256, 512), blocks, strict=True)):
            layer = []
            for i in range(n):
                layer.append(_PreActBlock(c_in, c, 2 if (s > 0 and i == 0) else 1, v2))
                c_in = c
            setattr(self, f"layer{s + 1}", nn.Sequential(*layer))
        if bn_before_fc:
            self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, classes)

    def forward(self, x):
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if self.bn_before_fc:
            out = F.relu(self.bn(out))
        out = F.avg_pool2d(out, 4)
        return self.linear(out.view(out.size(0), -1))


# ---------------------------------------------------------------------------------------------


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and batch-norm statistics far from the identity; returns ``model.eval()``.

    Convolutions get a fan-in He scale so that activations stay O(1) through deep networks (a
    port error then shows as an O(1) logit difference, not as noise on exploding values).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                fan_in = int(np.prod(m.weight.shape[1:]))
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.2 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.3 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                m.num_batches_tracked.fill_(11)
    return model.eval()


def state_dict_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    """``model.state_dict()`` as NumPy arrays under the same names (what ``save_file`` writes)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def logits(model: nn.Module, x_nhwc: np.ndarray) -> np.ndarray:
    """The torch model's logits for an NHWC batch (transposed to NCHW here), in float64."""
    with torch.no_grad():
        out = model(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))))
    return out.double().numpy()
