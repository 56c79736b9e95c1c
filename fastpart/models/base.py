"""What every fastpart network shares: the input normalisation, the timm-style head and the CAM metadata.

A subclass sets ``normalize`` (through ``_init_input``), ``num_features`` and ``forward_features``, and
names its classifier and CAM modules by their paths in the module tree (``"fc"``, ``"layer.2"``), so
``classifier`` and ``cam_layer`` are the very modules whose parameters the state dict holds.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fastpart.errors import FastpartError

__all__ = ["CifarNet", "ModelError", "Normalize"]


class ModelError(FastpartError, ValueError):
    """A model was asked for with arguments fastpart cannot honour."""


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, with the statistics stored as buffers.

    ``persistent=False`` keeps them out of the state dict, where a checkpoint layout has no place for
    them (RobustBench's architectures): they are then configuration, set by the constructor, not weights.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], persistent: bool = True) -> None:
        super().__init__()
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        if mean_t.shape != std_t.shape:
            raise ModelError(f"mean and std must give one value per channel, got {mean_t.numel()} and {std_t.numel()}")
        self.register_buffer("mean", mean_t, persistent=persistent)
        self.register_buffer("std", std_t, persistent=persistent)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class CifarNet(nn.Module):
    """Shared head and timm conventions; subclasses set ``normalize``, ``num_features``,
    ``forward_features`` and the paths of their classifier and CAM modules."""

    _classifier_name: str
    _cam_layer_name: str
    _normalize_persistent = True  # whether normalize.mean / normalize.std go into the state dict
    cam_layer_feeds_gap_linear = False  # True where the CAM layer's output goes through GAP + linear alone

    def _init_input(self, num_classes: int, mean: Sequence[float] | None, std: Sequence[float] | None,
                    drop_rate: float = 0.0) -> None:
        if drop_rate:
            raise ModelError(f"{type(self).__name__} has no dropout: drop_rate must be 0")
        if (mean is None) != (std is None):
            raise ModelError("give both mean and std for the model's input normalisation, or neither")
        self.num_classes = num_classes
        self.normalize = nn.Identity() if mean is None else Normalize(mean, std, self._normalize_persistent)

    def _resnet18_stages(self, block: Callable[..., nn.Module], width: int, num_classes: int) -> None:
        """layer1..layer4 of two ``block(in, out, stride)`` each at widths w, 2w, 4w, 8w (strides 1, 2, 2, 2),
        and the ``linear`` classifier: the ResNet-18 body of the CIFAR reference codes."""
        planes = width
        for i, stride in enumerate((1, 2, 2, 2)):
            out = width * 2**i
            setattr(self, f"layer{i + 1}", nn.Sequential(block(planes, out, stride), block(out, out, 1)))
            planes = out
        self.num_features = planes
        self.linear = nn.Linear(planes, num_classes)

    @property
    def classifier(self) -> nn.Linear:
        return self.get_submodule(self._classifier_name)

    @property
    def cam_layer(self) -> nn.Module:
        return self.get_submodule(self._cam_layer_name)

    def get_classifier(self) -> nn.Linear:
        return self.classifier

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        # avg_pool2d over the whole map, as the reference code pools (adaptive pooling differs in the last bit)
        x = torch.flatten(F.avg_pool2d(x, x.shape[-2:]), 1)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
