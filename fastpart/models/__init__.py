"""CIFAR-style networks of the adversarial-training literature, registered with timm.

``resnet18_cifar`` is the ResNet-18 of the Madry/TRADES/MART/PART code (3x3 stem, no max-pool,
global average pool); ``wrn34_10`` is the TRADES WideResNet-34-10 without its unused extra block
(``fastpart.models.cifar``). RobustBench's standard CIFAR architectures (``fastpart.models.robustbench``)
are ``preact_resnet18`` (PreActResNet-18), ``wrn28_10`` and ``wrn34_20`` (its ``WideResNet``) and
``wrn70_16`` (its ``DMWideResNet``), with RobustBench's parameter names, so its zoo state dicts load
with ``strict=True``. Importing this package registers them (and small variants for tests) with timm,
so ``timm.create_model('resnet18_cifar', num_classes=10)`` works; ``create_model`` accepts any timm name.

Every fastpart model takes images in [0, 1] (an optional per-channel ``mean``/``std`` normalisation
is its first op, so attacks work in pixel space) and exposes ``forward_features`` (the last conv
feature map, before pooling), ``forward_head`` (global average pool + linear), ``classifier`` and
``cam_layer``: the block whose output CAM methods use, as in the released PART code and the paper
(ResNet-18 and PreActResNet-18: ``layer4``, 4x4 on 32x32 input, which is ``forward_features(x)``;
WRN: ``block3``, DMWideResNet: ``layer.2``, 8x8, whose output still goes through the final BN and
activation before ``forward_features`` returns it). ``cam_layer_feeds_gap_linear`` is set where the
CAM layer's output reaches the classifier through global average pooling alone (the ResNets).
Parameter names follow the reference code, so its checkpoints load with ``load_state_dict``.
"""

from __future__ import annotations

from typing import Any, Callable

import timm
from timm.models import register_model
from torch import nn

from fastpart.errors import FastpartError
from fastpart.options import did_you_mean
from fastpart.models.base import CifarNet, ModelError, Normalize
from fastpart.models.cifar import ACTIVATIONS, NetworkBlock, ResNet18Cifar, ResNetBlock, WideResNet, WRNBlock
from fastpart.models.robustbench import (CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, DMWideResNet,
                                         PreActResNet18, RobustBenchWideResNet)

__all__ = ["ACTIVATION_MODELS", "ACTIVATIONS", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD", "MODELS", "DMWideResNet", "ModelError",
           "NetworkBlock", "Normalize", "Normalized", "PreActResNet18", "ResNet18Cifar", "ResNetBlock", "RobustBenchWideResNet",
           "WRNBlock", "WideResNet", "create_model", "find_cam_layer"]


def _build(cls: type[CifarNet], pretrained: bool, defaults: dict[str, Any], kwargs: dict[str, Any]) -> nn.Module:
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


@_register
def preact_resnet18(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """RobustBench's PreActResNet-18 (Wong2020Fast, Andriushchenko2020Understanding)."""
    return _build(PreActResNet18, pretrained, {}, kwargs)


@_register
def wrn28_10(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """RobustBench's WideResNet-28-10; ``sub_block1=True`` for zoo entries that hold the unused block."""
    return _build(RobustBenchWideResNet, pretrained, {"depth": 28, "widen": 10}, kwargs)


@_register
def wrn34_20(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """RobustBench's WideResNet-34-20 (Rice2020Overfitting; ``sub_block1=True`` where the entry holds it)."""
    return _build(RobustBenchWideResNet, pretrained, {"depth": 34, "widen": 20}, kwargs)


@_register
def wrn70_16(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """RobustBench's DMWideResNet-70-16 with Swish (Gowal2020Uncovering_70_16: pass CIFAR10_MEAN/STD)."""
    return _build(DMWideResNet, pretrained, {"depth": 70, "widen": 16}, kwargs)


MODELS: tuple[str, ...] = tuple(_names)
ACTIVATION_MODELS: tuple[str, ...] = ("resnet18_cifar", "resnet18_cifar_w8", "resnet18_cifar_w16", "wrn34_10",
                                      "wrn16_2", "wrn28_10", "wrn34_20")  # the CIFAR ResNet-18 and TRADES-style
# WideResNets: they take activation="silu" (--activation)


TORCHVISION = "torchvision:"  # create_model("torchvision:resnet50"): torchvision's, where timm has the same name


def create_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, num_classes=num_classes, **kwargs)`` for fastpart's or any timm name; torchvision's
    ``get_model`` for a torchvision name timm does not have, or one spelt ``torchvision:NAME``. An unknown name is
    one line with the closest names."""
    tv_name = name.removeprefix(TORCHVISION)
    if name.startswith(TORCHVISION) or not timm.is_model(name):
        import torchvision

        if tv_name in torchvision.models.list_models(module=torchvision.models):
            return torchvision.models.get_model(tv_name, num_classes=num_classes, **kwargs)
        if name.startswith(TORCHVISION):
            raise FastpartError(f"unknown torchvision model {tv_name!r}"
                                f"{did_you_mean(tv_name, torchvision.models.list_models(module=torchvision.models))}")
        hint = did_you_mean(name, [*MODELS, *timm.list_models()])
        raise FastpartError(f"unknown model {name!r}{hint}: fastpart's models are {', '.join(MODELS)}, or any timm "
                            f"model, or torchvision:NAME")
    return timm.create_model(name, num_classes=num_classes, **kwargs)


class Normalized(nn.Module):
    """A model that takes images in [0, 1] in front of one that takes normalised inputs (a timm or torchvision
    model): ``Normalize(mean, std)`` (not in the state dict), then ``model``. Its CAM layer is the model's."""

    def __init__(self, model: nn.Module, mean: Any, std: Any) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std, persistent=False)
        self.model = model

    @property
    def cam_layer(self) -> nn.Module:
        return find_cam_layer(self.model)

    def forward(self, x: Any) -> Any:
        return self.model(self.normalize(x))


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
