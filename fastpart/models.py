"""CIFAR-style networks of the adversarial-training literature, registered with timm.

``resnet18_cifar`` is the ResNet-18 of the Madry/TRADES/MART/PART code (3x3 stem, no max-pool,
global average pool); ``wrn34_10`` is the TRADES WideResNet-34-10 without its unused extra block.
Importing this module registers them (and small variants for tests) with timm, so
``timm.create_model('resnet18_cifar', num_classes=10)`` works; ``create_model`` accepts any timm name.

Every fastpart model takes images in [0, 1] (an optional per-channel ``mean``/``std`` normalisation
is its first op, so attacks work in pixel space) and exposes ``forward_features`` (the last conv
feature map, before pooling), ``forward_head`` (global average pool + linear), ``classifier`` and
``cam_layer``: the block whose output CAM methods use, as in the released PART code and SPEC.md
(ResNet-18: ``layer4``, 4x4 on 32x32 input, which is ``forward_features(x)``; WRN: ``block3``, 8x8,
whose output still goes through the final BN-ReLU before ``forward_features`` returns it).
Parameter names follow the reference code, so its checkpoints load with ``load_state_dict``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

import timm
import torch
import torch.nn.functional as F
from timm.models import register_model
from torch import nn

from fastpart.errors import FastpartError

__all__ = ["MODELS", "ModelError", "create_model", "find_cam_layer"]


class ModelError(FastpartError, ValueError):
    """A model was asked for with arguments fastpart cannot honour."""


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, with the statistics stored as buffers."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class _CifarNet(nn.Module):
    """Shared head and timm conventions; subclasses set ``normalize``, ``num_features``,
    ``forward_features`` and the names of their classifier and CAM modules."""

    _classifier_name: str
    _cam_layer_name: str
    cam_layer_feeds_gap_linear = False  # True where the CAM layer's output goes through GAP + linear alone

    def _init_input(self, num_classes: int, mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
        if (mean is None) != (std is None):
            raise ModelError("give both mean and std for the model's input normalisation, or neither")
        self.num_classes = num_classes
        self.normalize = nn.Identity() if mean is None else Normalize(mean, std)

    @property
    def classifier(self) -> nn.Linear:
        return getattr(self, self._classifier_name)

    @property
    def cam_layer(self) -> nn.Module:
        return getattr(self, self._cam_layer_name)

    def get_classifier(self) -> nn.Linear:
        return self.classifier

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class ResNetBlock(nn.Module):
    """Post-activation BasicBlock; 1x1 conv + BN shortcut when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out)) + self.shortcut(x)
        return F.relu(out, inplace=True)


class ResNet18Cifar(_CifarNet):
    """CIFAR ResNet-18: 3x3 stem, stages of 2 blocks at widths w, 2w, 4w, 8w; layer4 is 4x4 at 32x32."""

    _classifier_name, _cam_layer_name = "linear", "layer4"
    cam_layer_feeds_gap_linear = True  # so GradCAM = CAM: alpha_k = W[c, k] / (h w), no backward pass

    def __init__(self, num_classes: int = 10, width: int = 64, drop_rate: float = 0.0,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        super().__init__()
        if drop_rate:
            raise ModelError("resnet18_cifar has no dropout: drop_rate must be 0")
        self._init_input(num_classes, mean, std)
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        planes = width
        for i, stride in enumerate((1, 2, 2, 2)):
            out = width * 2**i
            setattr(self, f"layer{i + 1}", nn.Sequential(ResNetBlock(planes, out, stride), ResNetBlock(out, out, 1)))
            planes = out
        self.num_features = planes
        self.linear = nn.Linear(planes, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(self.normalize(x))), inplace=True)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class WRNBlock(nn.Module):
    """TRADES pre-activation block: when the width changes, the shortcut takes the activated input."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
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

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(*(WRNBlock(in_planes if i == 0 else out_planes, out_planes,
                                              stride if i == 0 else 1, drop_rate) for i in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(_CifarNet):
    """TRADES WideResNet-depth-widen; features are relu(bn1(block3)); CAMs use block3 (8x8 at 32x32)."""

    _classifier_name, _cam_layer_name = "fc", "block3"

    def __init__(self, num_classes: int = 10, depth: int = 34, widen: int = 10, drop_rate: float = 0.0,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ModelError(f"WideResNet depth must be 6n+4, got {depth}")
        self._init_input(num_classes, mean, std)
        n, ch = (depth - 4) // 6, (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(3, ch[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU(inplace=True)
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


def _build(cls: type[_CifarNet], pretrained: bool, defaults: dict[str, Any], kwargs: dict[str, Any]) -> nn.Module:
    if pretrained:
        raise ModelError(f"fastpart has no pretrained weights for {cls.__name__}: use pretrained=False")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    if kwargs.pop("in_chans", 3) != 3:
        raise ModelError(f"{cls.__name__} takes RGB input: in_chans must be 3")
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    model = cls(**{**defaults, **kwargs})
    model.pretrained_cfg = dict(num_classes=model.num_classes, input_size=(3, 32, 32), crop_pct=1.0,
                                interpolation="bilinear", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return model.to(device=device, dtype=dtype)


_names: list[str] = []


def _register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    _names.append(fn.__name__)
    return register_model(fn)


@_register
def resnet18_cifar(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _build(ResNet18Cifar, pretrained, {}, kwargs)


@_register
def resnet18_cifar_w8(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _build(ResNet18Cifar, pretrained, {"width": 8}, kwargs)


@_register
def resnet18_cifar_w16(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _build(ResNet18Cifar, pretrained, {"width": 16}, kwargs)


@_register
def wrn34_10(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _build(WideResNet, pretrained, {"depth": 34, "widen": 10}, kwargs)


@_register
def wrn16_2(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _build(WideResNet, pretrained, {"depth": 16, "widen": 2}, kwargs)


MODELS: tuple[str, ...] = tuple(_names)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run a block with the model in eval mode, then give every submodule back its own train/eval flag."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[nn.Module]:
    """Run a block with every parameter's requires_grad off (input gradients only), then restore the flags.

    Eager autograd skips parameter gradients anyway when asked for the input's alone; a torch.compile'd
    backward does not, unless the parameters are frozen like this.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def create_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, num_classes=num_classes, **kwargs)`` for fastpart's or any timm name."""
    if not timm.is_model(name):
        raise FastpartError(f"unknown model {name!r}: fastpart's models are {', '.join(MODELS)} (or any timm model)")
    return timm.create_model(name, num_classes=num_classes, **kwargs)


def find_cam_layer(model: nn.Module) -> nn.Module:
    """The module whose output CAM methods should use.

    ``model.cam_layer`` when the model defines it; otherwise the last top-level child, in registration
    order, that contains an ``nn.Conv2d`` (for timm's ResNets that is ``layer4``: the pool and the
    classifier hold no conv).
    """
    layer = getattr(model, "cam_layer", None)
    if isinstance(layer, nn.Module):
        return layer
    convolutional = [child for child in model.children() if any(isinstance(m, nn.Conv2d) for m in child.modules())]
    if not convolutional:
        raise FastpartError(f"{type(model).__name__} has no convolutional block to take a CAM from")
    return convolutional[-1]
