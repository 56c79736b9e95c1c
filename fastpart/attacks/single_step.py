"""Single-step adversarial examples under an L-inf budget that may differ per pixel: FGSM with a random start
(Wong et al., "Fast is better than free", ICLR 2020) and N-FGSM (de Jorge et al., "Make some noise",
NeurIPS 2022). One forward-backward pass per example, about a fifth of PGD-10's cost in training.

With eps_i the budget of element i (a float, a tensor, or PART's ``EpsLevels``: ``fastpart.budgets``) and
g the gradient of the loss at the start x0:

    fgsm-rs   x0 = clip(x + U(-eps_i, eps_i), 0, 1)
              x' = clip(min(max(x0 + 1.25 eps_i sign(g), x - eps_i), x + eps_i), 0, 1)
    n-fgsm    x0 = clip(x + U(-2 eps_i, 2 eps_i), 0, 1)
              x' = clip(x0 + eps_i sign(g), 0, 1)            no projection into the eps box: |x' - x| <= 3 eps_i

The step sizes and the noise are those of the papers (Wong et al.: alpha = 1.25 eps; de Jorge et al.: noise
2 eps, step eps, no clipping to the box), scaled per pixel by the budget under PART's masks. With one budget
for every element, fgsm-rs is PGD-1 with alpha 1.25 eps and takes the fused step kernel
(``fastpart.kernels.pgd_step_``); per-pixel budgets and N-FGSM take the plain step below (``signed_step``).
Both starts are ``fastpart.kernels.uniform_start`` (N-FGSM's with the budget doubled): the draws of PGD's start.
The model runs in eval mode with its parameters frozen (input gradients only), as in ``fastpart.attacks.pgd``.

    x_adv = fgsm_rs(model, x, y)                       # eps 8/255
    x_adv = n_fgsm(model, x, y, EpsLevels(levels, 8 / 255, 7 / 255))
"""

from __future__ import annotations

import torch
import torch.nn as nn

from fastpart.attacks.losses import LossFn, ce_loss
from fastpart.attacks.pgd import pgd
from fastpart.budgets import Eps, EpsLevels, eps_tensor_or_float, scaled_budget
from fastpart.inputs import attack_inputs
from fastpart.kernels import uniform_start
from fastpart.modes import eval_mode, frozen_parameters

__all__ = ["FGSM_RS_STEP", "N_FGSM_NOISE", "N_FGSM_STEP", "fgsm_rs", "n_fgsm", "signed_step"]

FGSM_RS_STEP = 1.25  # Wong et al.: alpha = 1.25 eps
N_FGSM_NOISE, N_FGSM_STEP = 2.0, 1.0  # de Jorge et al.: noise U(-2 eps, 2 eps), step eps, no projection


def _budget(x: torch.Tensor, eps: Eps) -> torch.Tensor | float:
    e = eps_tensor_or_float(eps)
    return e.to(x.dtype) if isinstance(e, torch.Tensor) else e


def signed_step(x0: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, eps: Eps, ratio: float,
                project: bool) -> torch.Tensor:
    """clip(x0 + ratio eps_i sign(g), 0, 1), projected into [x - eps_i, x + eps_i] first when ``project``."""
    e = _budget(x, eps)
    out = x0 + ratio * e * torch.sign(grad)
    if project:
        out = torch.min(torch.max(out, x - e), x + e)
    return out.clamp(0, 1)


def _gradient(model: nn.Module, x0: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
              autocast_dtype: torch.dtype | None) -> torch.Tensor:
    x0 = x0.detach().requires_grad_(True)
    with torch.enable_grad(), torch.autocast(x0.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        loss = loss_fn(model(x0), y).sum()
        return torch.autograd.grad(loss, x0)[0]


def fgsm_rs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: Eps = 8 / 255, loss_fn: LossFn = ce_loss,
            generator: torch.Generator | None = None, autocast_dtype: torch.dtype | None = None,
            check_inputs: bool = True) -> torch.Tensor:
    """FGSM with a uniform random start and step 1.25 eps_i, projected into the budget (see the module)."""
    if check_inputs:
        y = attack_inputs("fgsm_rs", x, y, eps)
    if not isinstance(eps, (EpsLevels, torch.Tensor)):
        return pgd(model, x, y, eps, FGSM_RS_STEP * eps, 1, loss_fn=loss_fn, start="uniform", generator=generator,
                   autocast_dtype=autocast_dtype, check_inputs=False)
    x = x.detach()
    x0 = uniform_start(x, eps, generator)
    with eval_mode(model), frozen_parameters(model):
        grad = _gradient(model, x0, y, loss_fn, autocast_dtype)
    return signed_step(x0, grad, x, eps, FGSM_RS_STEP, project=True).detach()


def n_fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: Eps = 8 / 255, loss_fn: LossFn = ce_loss,
           generator: torch.Generator | None = None, autocast_dtype: torch.dtype | None = None,
           check_inputs: bool = True) -> torch.Tensor:
    """N-FGSM: noise U(-2 eps_i, 2 eps_i), one signed step of eps_i, no projection into the box (see the module)."""
    if check_inputs:
        y = attack_inputs("n_fgsm", x, y, eps)
    x = x.detach()
    x0 = uniform_start(x, scaled_budget(eps, N_FGSM_NOISE), generator)
    with eval_mode(model), frozen_parameters(model):
        grad = _gradient(model, x0, y, loss_fn, autocast_dtype)
    return signed_step(x0, grad, x, eps, N_FGSM_STEP, project=False).detach()
