"""PART's budget from a model: the CAM function, the budget of a batch, and ``MaskPlan``, everything a run's mask
computation needs, fixed once.

For a batch (``part_budget``): the model's CAM (``fastpart.part.cam``, eval mode, the CAM layer of
``MaskSettings.layer``) on the images, turned into levels by ``fastpart.part.levels.eps_levels`` (1 =
important pixel -> ``eps``, 0 -> ``eps_low``), returned as ``EpsLevels`` for ``attacks.pgd``:

    budget = part_budget(model, x)                       # EpsLevels((B, 1, H, W) uint8, 8/255, 7/255)
    x_adv = pgd(model, x, y, budget, alpha=2 / 255, steps=10)

A run builds one ``MaskPlan`` from its settings (``fastpart.resolve.mask_plan``): the mask settings, the two
budgets, the precision of the CAMs and the batch size of a whole-split refresh. The plan gives the CAM
function of a model, the budget of a batch (cached levels, or CAMs computed now), the levels of a whole
split and the cache key of those levels (``fastpart.part.cache``); ``fastpart.part.refresh`` runs the
refresh of a training split with it. ``refresh_epochs`` is the schedule of those refreshes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from fastpart.budgets import EpsLevels
from fastpart.errors import FastpartError
from fastpart.modes import eval_mode
from fastpart.inputs import attack_inputs, check_budget_value
from fastpart.part.cache import cache_key, key_inputs
from fastpart.part.cam import CamFn, class_activation_maps
from fastpart.part.levels import MaskSettings, cam_targets, compute_split_levels, eps_levels
from fastpart.precision import autocast_dtype

__all__ = ["MASK_BATCH", "MaskPlan", "cam_function", "cam_layer", "part_budget", "refresh_epochs", "split_levels"]

MASK_BATCH = 512  # images per CAM batch of a whole-split refresh (at least the training batch)


def cam_layer(model: nn.Module, name: str | None) -> nn.Module | None:
    """The module named ``name`` (None: let the CAM find the model's last conv block)."""
    if name is None:
        return None
    modules = dict(model.named_modules())
    if name not in modules:
        top = ", ".join(n for n, _ in model.named_children())
        raise FastpartError(f"CAM layer {name!r} is not a module of the model; top-level modules: {top}")
    return modules[name]


def cam_function(model: nn.Module, settings: MaskSettings, precision: str = "fp32") -> CamFn:
    """(x (B, 3, H, W) in [0, 1], labels (B,) or None) -> raw CAMs (B, h, w) of the model in eval mode.

    Labels None: the CAM explains the prediction of its own forward pass. ``precision``: the autocast
    of the model (fp32, bf16, fp16).
    """
    layer = cam_layer(model, settings.layer)
    autocast = autocast_dtype(precision)

    def cams(x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        with eval_mode(model):
            with torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
                return class_activation_maps(model, x, labels, method=settings.cam, layer=layer,
                                             backend=settings.backend)

    return cams


@dataclass(frozen=True)
class MaskPlan:
    """What PART's mask computation needs, fixed once per run.

    ``settings``: how CAMs become masks; ``eps``/``eps_low``: the budgets of important and other pixels
    ([0, 1] units); ``precision``: the autocast of the CAMs' forward pass; ``batch_size``: images per CAM
    batch of a whole-split refresh (it is part of the cache key: batch statistics aside, batching may
    change the last bits of a CAM)."""

    settings: MaskSettings = field(default_factory=MaskSettings)
    eps: float = 8 / 255
    eps_low: float = 7 / 255
    precision: str = "fp32"
    batch_size: int = MASK_BATCH

    def cam_function(self, model: nn.Module) -> CamFn:
        return cam_function(model, self.settings, self.precision)

    def budget(self, levels: torch.Tensor) -> EpsLevels:
        """The budget of levels (uint8, 1 -> eps, 0 -> eps_low), e.g. the cached levels the loader looked up."""
        return EpsLevels(levels, self.eps, self.eps_low)

    def batch_budget(self, model: nn.Module, x: torch.Tensor,
                     y: torch.Tensor | None = None) -> tuple[EpsLevels, dict[str, torch.Tensor]]:
        """The budget of a batch from the model's CAMs now, and its stats as device tensors (no host
        synchronisation): ``important`` (fraction of levels at eps) and ``degenerate`` (maps)."""
        cams = self.cam_function(model)(x, cam_targets(self.settings, y))
        levels, degenerate = eps_levels(cams, tuple(x.shape[-2:]), self.settings)
        return self.budget(levels), {"important": levels.float().mean(), "degenerate": degenerate.sum().float()}

    def split_levels(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                     progress: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
        """Levels uint8 (N, C, H, W) of un-augmented images uint8 (N, H, W, 3), and stats (important_fraction,
        degenerate, seconds, n); on the images' device."""
        return compute_split_levels(self.cam_function(model), images, labels, self.settings,
                                    batch_size=self.batch_size, progress=progress)

    def key_inputs(self) -> dict[str, Any]:
        """Every input of a split's masks besides the data and the weights, as the cache header records them."""
        return key_inputs(self.settings, self.eps, self.eps_low, precision=self.precision, batch_size=self.batch_size)

    def key(self, model: nn.Module, data_id: str) -> str:
        """The cache key of the masks ``model`` would give the split identified by ``data_id``."""
        return cache_key(data_id, model.state_dict(), self.settings, self.eps, self.eps_low,
                         precision=self.precision, batch_size=self.batch_size)


def part_budget(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, *, eps: float = 8 / 255,
                eps_low: float = 7 / 255, settings: MaskSettings | None = None,
                precision: str = "fp32") -> EpsLevels:
    """PART's budget for a batch: ``EpsLevels`` with levels uint8 (B, C, H, W) (C = 1 in paper mode).

    x: (B, 3, H, W) images in [0, 1]; y: labels (B,), used when ``settings.target == "label"``; eps,
    eps_low: the budgets of important and other pixels, in [0, 1] units. The model is left in the mode
    it was in. A budget outside [0, 1] units (8 for 8/255), images that are not a float tensor in [0, 1] (one host
    synchronisation reads their range) or float labels are a ``ValueError``; integer labels are cast to int64.
    """
    for name, value in (("eps", eps), ("eps_low", eps_low)):
        check_budget_value(f"part_budget: {name}", value, numbers_only=True)
    y = attack_inputs("part_budget", x, y, eps)
    plan = MaskPlan(settings or MaskSettings(), eps, eps_low, precision)
    return plan.batch_budget(model, x, y)[0]


def split_levels(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, settings: MaskSettings | None = None,
                 precision: str = "fp32", batch_size: int = MASK_BATCH,
                 progress: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """Levels uint8 (N, C, H, W) of a whole split of un-augmented images uint8 (N, H, W, 3), and stats
    (important_fraction, degenerate, seconds, n); on the images' device."""
    plan = MaskPlan(settings or MaskSettings(), precision=precision, batch_size=batch_size)
    return plan.split_levels(model, images, labels, progress)


def refresh_epochs(epochs: int, burn_in: int, mask_freq: int) -> list[int]:
    """0-based epochs before which the split's masks are (re)computed: burn_in, burn_in + freq, ... < epochs.

    Defaults (80, 20, 10) -> [20, 30, 40, 50, 60, 70]. ``mask_freq`` 0 (masks per batch, no cache)
    or ``burn_in >= epochs`` -> [].
    """
    if epochs < 0 or burn_in < 0 or mask_freq < 0:
        raise FastpartError(f"epochs, burn-in and mask frequency must be >= 0, got {epochs}, {burn_in}, {mask_freq}")
    if mask_freq == 0 or burn_in >= epochs:
        return []
    return list(range(burn_in, epochs, mask_freq))
