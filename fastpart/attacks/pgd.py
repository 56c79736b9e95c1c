"""Projected gradient descent under an L-inf budget that may differ per pixel (Madry et al., ICLR 2018;
PART's mask-weighted PGD, Zhang et al., ICML 2024).

Shapes: x (B, C, H, W) in [0, 1]; y (B,); eps a float, a tensor broadcastable to x, or ``EpsLevels``
(PART's two-level map: uint8 levels and their two budgets); loss_fn(logits, y) returns one loss per
sample (B,) (``fastpart.attacks.losses``), whose sum is differentiated. Units: pixel values in [0, 1].

    x0      = the start (below)
    x_{t+1} = clip(min(max(x_t + alpha * sign(grad_x loss(f(x_t), y)), x - eps), x + eps), 0, 1)

Starts (``STARTS``), with eps_i the budget of element i:

    uniform            clip(x + U(-eps_i, eps_i), 0, 1)     Madry et al.; AT and PART
    normal-unclipped   x + 0.001 N(0, 1)                    the official TRADES (trades.py) and MART (mart.py)
                                                            code, which the released PART-T and PART-M keep
    uniform-unclipped  x + U(-eps, eps), eps the largest    the released PART code (part_pgd), which draws its
                       budget, the same for every element   start with the plain eps=8/255 whatever the mask
    normal             x + 0.001 N(0, 1) projected into the box and [0, 1] (fastpart's former TRADES start)
    none               x

An unclipped start may lie outside [0, 1] and outside a small per-pixel box: the first gradient is taken
there, as in the code it follows, and every step projects. The result is always inside the budget and
[0, 1], also with 0 steps (then the start itself is projected).

With eps a float (or the same value everywhere) this is standard PGD. The model runs in eval mode
(batch-norm statistics frozen) and only the input gradient is computed: parameters are frozen for the attack.

The defaults are the field's (torchattacks' PGD, Madry et al.'s CIFAR-10 attack): eps 8/255, alpha 2/255,
10 steps. The arguments are checked (``fastpart.inputs.attack_inputs``: ``ValueError``, one line):
budgets and alpha in [0, 1] units (8/255, not 8), x a float tensor in [0, 1], y integer labels (int32 is cast
to int64). The range check of x reads it on the host once; ``check_inputs=False`` skips it (training's
per-batch generators, whose inputs the loader already guarantees).

Example:
    x_adv = pgd(model, x, y)                                   # eps 8/255, alpha 2/255, 10 steps
    x_adv = pgd(model, x, y, eps=8 / 255, alpha=2 / 255, steps=20)
"""

from __future__ import annotations

import torch
import torch.nn as nn

from fastpart.attacks.losses import LossFn, ce_loss
from fastpart.inputs import attack_inputs
from fastpart.budgets import Eps, EpsLevels
from fastpart.config import PGD_STARTS
from fastpart.kernels import pgd_step_, pgd_step_reference, start_dtype, uniform_start
from fastpart.modes import eval_mode, frozen_parameters

STARTS = PGD_STARTS
TRADES_NOISE = 0.001  # trades.py and mart.py: x + 0.001 * torch.randn(x.shape)


def largest_budget(eps: Eps) -> float | torch.Tensor:
    """The one budget of the released PART start: a float as it is, ``EpsLevels``' high level, a tensor's maximum."""
    if isinstance(eps, EpsLevels):
        return eps.high
    if isinstance(eps, torch.Tensor):
        return eps.amax()
    return eps


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: Eps) -> torch.Tensor:
    """clip(min(max(x_adv, x - eps), x + eps), 0, 1): into the budget around x and [0, 1] (a new tensor)."""
    return pgd_step_reference(x_adv, torch.zeros_like(x_adv), x, eps, 0.0)


def random_start(
    x: torch.Tensor, eps: Eps, start: str = "uniform", generator: torch.Generator | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """The start of PGD (``STARTS``; see the module docstring); always a new tensor.

    uniform: clip(x + U(-eps, eps), 0, 1); normal-unclipped: x + 0.001 N(0, 1); uniform-unclipped:
    x + U(-e, e) with e = ``largest_budget(eps)`` on every element; normal: x + 0.001 N(0, 1) projected into the
    box and [0, 1]; none: x. The normal starts draw the same numbers from ``generator``, as do the uniform ones.
    """
    if start == "uniform":
        return uniform_start(x, eps, generator, backend=backend)
    if start in ("normal", "normal-unclipped"):
        x0 = x + TRADES_NOISE * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x0 if start == "normal-unclipped" else project(x0, x, eps)
    if start == "uniform-unclipped":
        u = torch.empty_like(x, dtype=torch.promote_types(x.dtype, torch.float32)).uniform_(generator=generator)
        return (x + (2 * u - 1) * largest_budget(eps)).to(start_dtype(x, eps))
    if start == "none":
        return x.clone()
    raise ValueError(f"unknown start {start!r}; choose from {', '.join(STARTS)}")


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: Eps = 8 / 255,
    alpha: float = 2 / 255,
    steps: int = 10,
    loss_fn: LossFn = ce_loss,
    start: str = "uniform",
    generator: torch.Generator | None = None,
    autocast_dtype: torch.dtype | None = None,
    kernel_backend: str = "auto",
    stop_on_success: bool = False,
    check_inputs: bool = True,
) -> torch.Tensor:
    """Return adversarial examples for (x, y); the model's train/eval mode is restored afterwards.

    ``eps``: a float, a float tensor broadcastable to x, or ``EpsLevels`` (a two-level uint8 map and
    its two values). The step runs in place through ``fastpart.kernels`` (fused Triton on CUDA).
    ``stop_on_success``: a point stays where an iterate was first misclassified (its gradient is zeroed,
    and sign(0) = 0), so with the same seed more steps never leave a point robust that fewer broke.
    ``check_inputs``: check the arguments (one host synchronisation; see the module docstring).
    """
    if check_inputs:
        y = attack_inputs("pgd", x, y, eps, alpha=alpha, steps=steps)
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
    if steps == 0:
        x_adv = project(x_adv, x, eps)  # an unclipped start; a no-op for the others
    return x_adv.detach()
