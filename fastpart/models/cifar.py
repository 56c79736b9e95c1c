"""The CIFAR networks of the PART/TRADES/MART code: ResNet-18 and the TRADES WideResNet.

``ResNet18Cifar`` is the ResNet-18 of the Madry/TRADES/MART/PART code (3x3 stem, no max-pool, global
average pool); CAMs use ``layer4`` (4x4 on 32x32 input), which is ``forward_features(x)`` and feeds
global average pooling + linear alone. ``WideResNet`` is the TRADES WideResNet-depth-widen; CAMs use
``block3`` (8x8), whose output still goes through the final BN-ReLU before ``forward_features``
returns it. TRADES' own class also builds ``sub_block1``, a copy of ``block1`` its forward never
runs; fastpart leaves it out unless ``sub_block1=True``, which exists only so that checkpoints
holding it load with ``strict=True`` (its parameters then never get a gradient).

Both take ``activation``: ``relu`` (the authors') or ``silu`` (SiLU/Swish, as the strongest ResNet-18 and WRN
entries of RobustBench train); it has no parameters, so the state dict is the same either way.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fastpart.config import ACTIVATIONS
from fastpart.models.base import CifarNet, ModelError

__all__ = ["ACTIVATIONS", "NetworkBlock", "ResNet18Cifar", "ResNetBlock", "WRNBlock", "WideResNet", "activation_module"]

def activation_module(name: str) -> nn.Module:
    """The activation ``name`` (``ACTIVATIONS``) as a module: ReLU in place, or SiLU."""
    if name not in ACTIVATIONS:
        raise ModelError(f"unknown activation {name!r}; choose from {', '.join(ACTIVATIONS)}")
    return nn.ReLU(inplace=True) if name == "relu" else nn.SiLU()


class ResNetBlock(nn.Module):
    """Post-activation BasicBlock; 1x1 conv + BN shortcut when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int, activation: str = "relu") -> None:
        super().__init__()
        self.act = activation_module(activation)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + self.shortcut(x)
        return self.act(out)


class ResNet18Cifar(CifarNet):
    """CIFAR ResNet-18: 3x3 stem, stages of 2 blocks at widths w, 2w, 4w, 8w; layer4 is 4x4 at 32x32."""

    _classifier_name, _cam_layer_name = "linear", "layer4"
    cam_layer_feeds_gap_linear = True  # so GradCAM = CAM: alpha_k = W[c, k] / (h w), no backward pass

    def __init__(self, num_classes: int = 10, width: int = 64, drop_rate: float = 0.0,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 activation: str = "relu") -> None:
        super().__init__()
        self._init_input(num_classes, mean, std, drop_rate)
        self.act = activation_module(activation)
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self._resnet18_stages(functools.partial(ResNetBlock, activation=activation), width, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv1(self.normalize(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class WRNBlock(nn.Module):
    """TRADES pre-activation block: when the width changes, the shortcut takes the activated input."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float, activation: str = "relu") -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = activation_module(activation)  # TRADES's names, whatever the activation
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = activation_module(activation)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.drop_rate = drop_rate
        self.same_width = in_planes == out_planes
        self.convShortcut = None if self.same_width else nn.Conv2d(in_planes, out_planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return (x if self.same_width else self.convShortcut(act)) + self.conv2(out)


class NetworkBlock(nn.Module):
    """``n`` WRN blocks; the first changes the width and the stride (TRADES naming: ``layer``)."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, drop_rate: float,
                 activation: str = "relu") -> None:
        super().__init__()
        self.layer = nn.Sequential(*(WRNBlock(in_planes if i == 0 else out_planes, out_planes,
                                              stride if i == 0 else 1, drop_rate, activation) for i in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(CifarNet):
    """TRADES WideResNet-depth-widen; features are relu(bn1(block3)); CAMs use block3 (8x8 at 32x32).

    ``sub_block1=True`` adds TRADES' unused ``sub_block1`` (never run), only to load checkpoints that hold it.
    """

    _classifier_name, _cam_layer_name = "fc", "block3"

    def __init__(self, num_classes: int = 10, depth: int = 34, widen: int = 10, drop_rate: float = 0.0,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 sub_block1: bool = False, activation: str = "relu") -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ModelError(f"WideResNet depth must be 6n+4, got {depth}")
        self._init_input(num_classes, mean, std)
        n, ch = (depth - 4) // 6, (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(3, ch[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1, drop_rate, activation)
        if sub_block1:
            self.sub_block1 = NetworkBlock(n, ch[0], ch[1], 1, drop_rate, activation)
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2, drop_rate, activation)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2, drop_rate, activation)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = activation_module(activation)
        self.num_features = ch[3]
        self.fc = nn.Linear(ch[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(self.normalize(x)))))
        return self.relu(self.bn1(x))
