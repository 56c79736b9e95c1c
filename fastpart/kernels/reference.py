"""The mask-weighted PGD step and uniform start in plain torch: the specification every backend must match.

Per element i, with eps_i the budget of that element (the mask-weighted PGD of the PART paper, Sec. 3):

    step:   x_adv <- clip( min( max( x_adv + alpha * sign(g), x - eps_i ), x + eps_i ), 0, 1 )
    start:  x0    =  clip( x + (2u - 1) * eps_i, 0, 1 ),   u ~ U[0, 1) drawn by torch

Budgets come in the three encodings of ``fastpart.budgets`` (a float, a float tensor broadcastable to x,
or ``EpsLevels``, which ``eps_from_levels`` expands to the float32 map it stands for).

Arithmetic: sign(g) = (g > 0) - (g < 0), so sign(0) = 0 and a NaN gradient does not move the element
(as torch.sign on CPU and CUDA). All operands are converted to the compute dtype, float32 (float64 when
x_adv, x or the eps tensor is float64), the formula is evaluated there with the operations in the order
written (max, then min, then clip; a NaN in x_adv, x or eps propagates), and the result is rounded once
to the output dtype (x_adv's for the step). For float32 inputs this is exactly the former
``fastpart.attacks.pgd.pgd_step`` / uniform ``random_start``; for bfloat16 or float16 images it differs
from evaluating the formula in the low-precision dtype, which rounds alpha and every intermediate.
"""

from __future__ import annotations

import torch

from fastpart.budgets import Eps, EpsLevels, eps_tensor_or_float


def compute_dtype(*tensors: torch.Tensor | float) -> torch.dtype:
    """float32, or float64 when one of the tensors is float64."""
    if any(isinstance(t, torch.Tensor) and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def pgd_step_reference(x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, eps: Eps,
                       alpha: float) -> torch.Tensor:
    """One signed step, projection into the per-element box around x, clip to [0, 1]: a new tensor of x_adv's dtype."""
    e = eps_tensor_or_float(eps)
    dtype = compute_dtype(x_adv, x, e)
    x_adv_c, x_c = x_adv.to(dtype), x.to(dtype)
    if isinstance(e, torch.Tensor):
        e = e.to(dtype)
    stepped = x_adv_c + alpha * grad.sign().to(dtype)
    return torch.clamp(torch.min(torch.max(stepped, x_c - e), x_c + e), 0.0, 1.0).to(x_adv.dtype)


def uniform_start_reference(x: torch.Tensor, eps: Eps, u: torch.Tensor,
                            dtype: torch.dtype | None = None) -> torch.Tensor:
    """clip(x + (2u - 1) eps, 0, 1) for uniform draws ``u`` of x's shape; dtype ``start_dtype`` unless given."""
    e = eps_tensor_or_float(eps)
    compute = compute_dtype(x, e)
    if isinstance(e, torch.Tensor):
        e = e.to(compute)
    noise = u.to(compute) * 2 - 1
    return torch.clamp(x.to(compute) + noise * e, 0.0, 1.0).to(dtype or start_dtype(x, eps))


def start_dtype(x: torch.Tensor, eps: Eps) -> torch.dtype:
    """torch's promotion of x with the eps tensor (float32 for levels), as the former random_start returned."""
    if isinstance(eps, EpsLevels):
        return torch.promote_types(x.dtype, torch.float32)
    if isinstance(eps, torch.Tensor):
        return torch.promote_types(x.dtype, eps.dtype)
    return x.dtype
