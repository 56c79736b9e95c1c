"""PART's attack as a callable object: ``PARTAttack(model, eps=8/255, eps_low=7/255, alpha=2/255, steps=10)(x, y)``.

Each batch's budget comes from the model's CAM (``fastpart.part.part_budget``: ``eps`` on the pixels the CAM marks
as important, ``eps_low`` elsewhere, as ``EpsLevels``), and mask-weighted PGD (``fastpart.attacks.objects.PGD``)
runs inside it, as PART's training does after its burn-in. Here, after the PART stage and the attacks, because
it needs both.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from fastpart.attacks.objects import PGD
from fastpart.inputs import attack_labels, check_budget_value
from fastpart.budgets import EpsLevels
from fastpart.part import MaskSettings, part_budget

__all__ = ["PARTAttack"]


class PARTAttack(PGD):
    """``PARTAttack(model, eps=8/255, eps_low=7/255, alpha=2/255, steps=10, ...)(x, y) -> x_adv``: PART's
    mask-weighted PGD, inside the per-pixel budget ``budget(x, y)`` the model's CAM gives each batch.

    ``settings`` (``fastpart.MaskSettings``; default: GradCAM, z > 1 important) and ``precision`` (the CAM's
    autocast) go to ``fastpart.part_budget``; the other keywords are ``PGD``'s."""

    def __init__(self, model: nn.Module, eps: float = 8 / 255, eps_low: float = 7 / 255, alpha: float = 2 / 255,
                 steps: int = 10, *, settings: MaskSettings | None = None, precision: str = "fp32",
                 **pgd_options):
        super().__init__(model, eps, alpha, steps, **pgd_options)
        check_budget_value("PARTAttack: eps_low", eps_low)
        self.eps_low, self.settings, self.precision = eps_low, settings, precision

    def budget(self, x: torch.Tensor, y: torch.Tensor | None = None) -> EpsLevels:
        """PART's budget of the batch x: ``EpsLevels`` (uint8 levels, eps, eps_low) from the model's CAM."""
        return part_budget(self.model, x, y, eps=self.eps, eps_low=self.eps_low, settings=self.settings,
                                    precision=self.precision)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y = attack_labels("PARTAttack", y, len(x))
        return self.attack(x, y, self.budget(x, y), check_inputs=False)  # part_budget has checked x

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", eps_low={self.eps_low!r})"
