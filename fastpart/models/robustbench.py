"""RobustBench's standard CIFAR architectures, with its parameter names, so zoo state dicts load strictly.

* ``PreActResNet18``: ``model_zoo/architectures/resnet.py``'s ``PreActResNet(PreActBlock, [2, 2, 2, 2])``
  (Wong2020Fast, Andriushchenko2020Understanding): 3x3 stem without BN, pre-activation blocks whose
  1x1 shortcut takes the *raw* block input, no final BN; ``layer4`` (4x4 at 32x32) goes into global
  average pooling + linear alone, so it is both ``forward_features(x)`` and the CAM layer.
* ``RobustBenchWideResNet``: ``wide_resnet.py``'s ``WideResNet(depth, widen_factor)``, which is the
  TRADES WideResNet of ``fastpart.models.cifar`` key for key. Its ``sub_block1=True`` (Carmon2019Unlabeled,
  Zhang2019Theoretically, many WRN-28-10 and some WRN-34-20 zoo entries) adds ``sub_block1``, a second
  ``block1`` (16 -> 16k channels, stride 1) that its forward never runs; ``sub_block1=False`` (its default;
  Rice2020Overfitting, Sehwag2021Proxy) has none. Pass the same flag here, or drop the ``sub_block1.``
  keys and load into the default model: the outputs are the same. CAMs use ``block3`` (8x8).
* ``DMWideResNet``: ``dm_wide_resnet.py``'s ``DMWideResNet`` (DeepMind's layout, Gowal2020Uncovering and
  the other WRN-70-16 zoo entries): ``init_conv``, ``layer`` (three ``_BlockGroup``s of ``block``s with
  ``batchnorm_0/conv_0/batchnorm_1/conv_1/shortcut``), ``batchnorm``, ``logits``. A block's 3x3 stride-2
  conv pads as TensorFlow's SAME does, 0 before and 1 after in each dimension; the shortcut exists where
  the width changes and takes the activated input. The zoo entries use Swish (x * sigmoid(x), which is
  ``nn.SiLU``), fastpart's default ``act_layer`` (RobustBench's own Swish is an autograd Function; the
  logits differ in the last bit only). CAMs use ``layer.2`` (8x8), before the final ``batchnorm`` +
  activation. RobustBench calls ``widen`` ``width``.

Normalisation. RobustBench's checkpoints of these architectures do not carry it: its ``DMWideResNet``
always computes ``(x - mean) / std`` with buffers registered ``persistent=False`` (absent from its state
dict; the CIFAR-10 statistics by default and in the CIFAR-10 zoo entries), and Wong2020Fast's and
Rice2020Overfitting's ``mu``/``sigma`` are missing from their checkpoints. So here, as everywhere in
fastpart, the input is in [0, 1] and normalisation is optional (``mean``/``std``, none by default), but
its buffers are non-persistent: a zoo state dict loads with ``strict=True`` with or without it.
RobustBench's Gowal2020Uncovering_70_16 is ``DMWideResNet(mean=CIFAR10_MEAN, std=CIFAR10_STD)`` (without
them, unlike RobustBench's class, it does not normalise); Wong2020Fast is ``PreActResNet18`` with the same
statistics. The head average-pools the whole map: RobustBench's fixed ``avg_pool2d`` (4 or 8) at 32x32,
bit for bit.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fastpart.models.base import CifarNet, ModelError
from fastpart.models.cifar import WideResNet

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD", "DMBlock", "DMBlockGroup", "DMWideResNet",
           "PreActBlock", "PreActResNet18", "RobustBenchWideResNet"]

# The statistics RobustBench's zoo entries normalise with (dm_wide_resnet.py, Wong2020FastNet).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


class PreActBlock(nn.Module):
    """Pre-activation BasicBlock; a 1x1 conv shortcut, on the raw input, when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x), inplace=True))
        out = self.conv2(F.relu(self.bn2(out), inplace=True))
        return out + (x if self.shortcut is None else self.shortcut(x))


class PreActResNet18(CifarNet):
    """RobustBench's PreActResNet-18: stem conv, stages of 2 pre-activation blocks at widths w, 2w, 4w, 8w."""

    _classifier_name, _cam_layer_name = "linear", "layer4"
    _normalize_persistent = False
    cam_layer_feeds_gap_linear = True  # layer4 -> global average pool -> linear, nothing between

    def __init__(self, num_classes: int = 10, width: int = 64, drop_rate: float = 0.0,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        super().__init__()
        self._init_input(num_classes, mean, std, drop_rate)
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self._resnet18_stages(PreActBlock, width, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.normalize(x))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class RobustBenchWideResNet(WideResNet):
    """RobustBench's ``WideResNet(depth, widen_factor, sub_block1)``: the TRADES layout, normalisation
    kept out of the state dict (see the module docstring)."""

    _normalize_persistent = False


class DMBlock(nn.Module):
    """DeepMind's pre-activation block (RobustBench ``_Block``); ``act_layer`` is the activation."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, act_layer: type[nn.Module]) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ModelError(f"DMWideResNet blocks have stride 1 or 2, got {stride}")
        self.batchnorm_0 = nn.BatchNorm2d(in_planes)
        self.relu_0 = act_layer()
        # stride 1: padding 1 on every side; stride 2: TensorFlow's SAME, (0, 1), padded in forward
        self.conv_0 = nn.Conv2d(in_planes, out_planes, 3, stride, 1 if stride == 1 else 0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes)
        self.relu_1 = act_layer()
        self.conv_1 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.has_shortcut = in_planes != out_planes
        self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride, bias=False) if self.has_shortcut else None
        self._stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu_0(self.batchnorm_0(x))
        out = self.conv_0(act if self._stride == 1 else F.pad(act, (0, 1, 0, 1)))
        out = self.conv_1(self.relu_1(self.batchnorm_1(out)))
        return (self.shortcut(act) if self.has_shortcut else x) + out


class DMBlockGroup(nn.Module):
    """``n`` DeepMind blocks under ``block``; the first changes the width and the stride."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, act_layer: type[nn.Module]) -> None:
        super().__init__()
        self.block = nn.Sequential(*(DMBlock(in_planes if i == 0 else out_planes, out_planes,
                                             stride if i == 0 else 1, act_layer) for i in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class DMWideResNet(CifarNet):
    """RobustBench's DMWideResNet-depth-widen (its ``width``); features are act(batchnorm(layer));
    CAMs use ``layer.2`` (8x8 at 32x32). Normalisation: optional, non-persistent (module docstring)."""

    _classifier_name, _cam_layer_name = "logits", "layer.2"
    _normalize_persistent = False

    def __init__(self, num_classes: int = 10, depth: int = 70, widen: int = 16, drop_rate: float = 0.0,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 act_layer: type[nn.Module] = nn.SiLU) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ModelError(f"DMWideResNet depth must be 6n+4, got {depth}")
        self._init_input(num_classes, mean, std, drop_rate)
        n, ch = (depth - 4) // 6, (16, 16 * widen, 32 * widen, 64 * widen)
        self.init_conv = nn.Conv2d(3, ch[0], 3, 1, 1, bias=False)
        self.layer = nn.Sequential(DMBlockGroup(n, ch[0], ch[1], 1, act_layer),
                                   DMBlockGroup(n, ch[1], ch[2], 2, act_layer),
                                   DMBlockGroup(n, ch[2], ch[3], 2, act_layer))
        self.batchnorm = nn.BatchNorm2d(ch[3])
        self.relu = act_layer()
        self.num_features = ch[3]
        self.logits = nn.Linear(ch[3], num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.batchnorm(self.layer(self.init_conv(self.normalize(x)))))
