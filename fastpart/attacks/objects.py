"""Attacks as callable objects, torchattacks style: set up once, then ``attack(x, y) -> x_adv``.

    attack = PGD(model, eps=8 / 255, alpha=2 / 255, steps=10)              # PGD (Madry et al.), ``pgd``
    x_adv = attack(x, y)                    # x (B, 3, H, W) float in [0, 1], y (B,) integer labels

PART's attack, ``PARTAttack``, builds on ``PGD`` in ``fastpart.part_attack`` (it needs the PART stage's CAM).

The settings are checked when the object is made, the images and labels on each call (``ValueError``, one
line: budgets in [0, 1] units, images float in [0, 1], integer labels). The model runs in eval mode and gets its
mode back; only input gradients are taken.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from fastpart.attacks.losses import LossFn, ce_loss
from fastpart.attacks.pgd import pgd
from fastpart.inputs import check_budget_value, check_steps
from fastpart.budgets import Eps

__all__ = ["PGD"]


class PGD:
    """``PGD(model, eps=8/255, alpha=2/255, steps=10, ...)(x, y) -> x_adv``: ``fastpart.pgd`` with its settings
    fixed (``eps``: a float, a tensor broadcastable to x, or ``EpsLevels``; ``start``, ``loss_fn`` as there)."""

    def __init__(self, model: nn.Module, eps: Eps = 8 / 255, alpha: float = 2 / 255, steps: int = 10, *,
                 loss_fn: LossFn = ce_loss, start: str = "uniform", generator: torch.Generator | None = None,
                 autocast_dtype: torch.dtype | None = None, kernel_backend: str = "auto",
                 stop_on_success: bool = False):
        name = type(self).__name__
        check_budget_value(f"{name}: eps", eps)
        check_budget_value(f"{name}: alpha", alpha)
        check_steps(name, steps)
        self.model, self.eps, self.alpha, self.steps = model, eps, alpha, steps
        self.loss_fn, self.start, self.generator = loss_fn, start, generator
        self.autocast_dtype, self.kernel_backend, self.stop_on_success = autocast_dtype, kernel_backend, stop_on_success

    def attack(self, x: torch.Tensor, y: torch.Tensor, eps: Eps, check_inputs: bool = True) -> torch.Tensor:
        """PGD with these settings inside the budget ``eps``."""
        return pgd(self.model, x, y, eps, self.alpha, self.steps, loss_fn=self.loss_fn, start=self.start,
                   generator=self.generator, autocast_dtype=self.autocast_dtype, kernel_backend=self.kernel_backend,
                   stop_on_success=self.stop_on_success, check_inputs=check_inputs)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.attack(x, y, self.eps)

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(eps={self.eps!r}, alpha={self.alpha!r}, steps={self.steps}, start={self.start!r})"
