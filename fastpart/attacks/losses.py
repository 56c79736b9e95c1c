"""The losses attacks ascend, under one contract: ``loss_fn(logits (B, K), y (B,)) -> per-sample losses (B,)``.

Every attack (``pgd``, ``apgd``, ``mma``, ``mma_ref``) takes a ``LossFn`` of this form and maximises it;
PGD differentiates the sum over the batch (each sample's gradient is its own), APGD also keeps each
sample's value to adapt its step. Low-precision logits (autocast) are widened to float32 first.

    ce_loss(z, y)                   = CE(z_i, y_i)
    margin_loss_targeted(z, y, t)   = -max(z_{i,y_i} - z_{i,t_i} + confidence, 0)   (MMA; confidence 50)
    margin(z, y)                    = z_{i,y_i} - max_{j != y_i} z_{i,j}    (negative: misclassified)
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = ["LossFn", "ce_loss", "margin", "margin_loss_targeted", "widen"]


def widen(logits: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 logits (autocast) to float32; float32/float64 kept."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy (B,)."""
    return F.cross_entropy(widen(logits), y, reduction="none")


def margin_loss_targeted(
    logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor, confidence: float = 50.0
) -> torch.Tensor:
    """MMA's minimum-margin loss -max(z_y - z_t + confidence, 0), per sample (B,); maximised by the attack."""
    logits = widen(logits)
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return -torch.clamp(z_y - z_t + confidence, min=0.0)


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y - max_{j != y} z_j per sample; negative means misclassified."""
    logits = widen(logits)
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    return z_y - logits.scatter(1, y[:, None], float("-inf")).max(1)[0]
