"""Projected gradient descent under an L-inf budget that may differ per pixel (Madry et al., ICLR 2018;
PART's mask-weighted PGD, Zhang et al., ICML 2024).

Shapes: x (B, C, H, W) in [0, 1]; y (B,); eps a float, a tensor broadcastable to x, or ``EpsLevels``
(PART's two-level map: uint8 levels and their two budgets); loss_fn(logits, y) returns one loss per
sample (B,) (``fastpart.attacks.losses``), whose sum is differentiated. Units: pixel values in [0, 1].

    x0      = clip(x + U(-eps, eps), 0, 1)          (TRADES: clip(x + 0.001 N(0, 1)) into the box and [0, 1])
    x_{t+1} = clip(min(max(x_t + alpha * sign(grad_x loss(f(x_t), y)), x - eps), x + eps), 0, 1)

With eps a float (or the same value everywhere) this is standard PGD. The model runs in eval mode
(batch-norm statistics frozen) and only the input gradient is computed: parameters are frozen for the attack.

Example:
    x_adv = pgd(model, x, y, eps=8 / 255, alpha=2 / 255, steps=10)
"""

from __future__ import annotations

import torch
import torch.nn as nn

from fastpart.attacks.losses import LossFn, ce_loss
from fastpart.budgets import Eps, eps_tensor_or_float
from fastpart.kernels import pgd_step_, uniform_start
from fastpart.modes import eval_mode, frozen_parameters

STARTS = ("uniform", "normal", "none")


def random_start(
    x: torch.Tensor, eps: Eps, start: str = "uniform", generator: torch.Generator | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """uniform: clip(x + U(-eps, eps), 0, 1); normal: x + 0.001 N(0, 1) (TRADES), projected into the eps box
    and [0, 1] like every iterate; none: x. Always a new tensor."""
    if start == "uniform":
        return uniform_start(x, eps, generator, backend=backend)
    if start == "normal":
        x0 = x + 0.001 * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        e = eps_tensor_or_float(eps, x.dtype)
        return torch.clamp(torch.min(torch.max(x0, x - e), x + e), 0.0, 1.0)
    if start == "none":
        return x.clone()
    raise ValueError(f"unknown start {start!r}; choose from {', '.join(STARTS)}")


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: Eps,
    alpha: float,
    steps: int,
    loss_fn: LossFn = ce_loss,
    start: str = "uniform",
    generator: torch.Generator | None = None,
    autocast_dtype: torch.dtype | None = None,
    kernel_backend: str = "auto",
    stop_on_success: bool = False,
) -> torch.Tensor:
    """Return adversarial examples for (x, y); the model's train/eval mode is restored afterwards.

    ``eps``: a float, a float tensor broadcastable to x, or ``EpsLevels`` (a two-level uint8 map and
    its two values). The step runs in place through ``fastpart.kernels`` (fused Triton on CUDA).
    ``stop_on_success``: a point stays where an iterate was first misclassified (its gradient is zeroed,
    and sign(0) = 0), so with the same seed more steps never leave a point robust that fewer broke.
    """
    x = x.detach()
    x_adv = random_start(x, eps, start, generator, backend=kernel_backend)
    fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    with eval_mode(model), frozen_parameters(model):
        for _ in range(steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad(), torch.autocast(x.device.type, dtype=autocast_dtype,
                                                     enabled=autocast_dtype is not None):
                logits = model(x_adv)
                loss = loss_fn(logits, y).sum()
                (grad,) = torch.autograd.grad(loss, x_adv)
            if stop_on_success:
                fooled |= logits.detach().argmax(1) != y
                grad = grad.masked_fill(fooled.view(-1, *[1] * (grad.dim() - 1)), 0)
            x_adv = pgd_step_(x_adv.detach(), grad, x, eps, alpha, backend=kernel_backend)
    return x_adv.detach()
