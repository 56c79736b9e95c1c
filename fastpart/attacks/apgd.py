"""Auto-PGD under an L-inf budget (Croce & Hein, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks", ICML 2020), as the MMA authors run it (their copy of the
AutoAttack code, ``autopgd_base.py``); the budget may differ per pixel (PART's eps map).

Shapes: x (B, C, H, W) in [0, 1]; y (B,); eps a float, a tensor broadcastable to x, or ``EpsLevels``;
loss_fn(logits, y) returns one loss per sample (B,) (``fastpart.attacks.losses``), which the attack
maximises. Returns (x_adv (B, C, H, W), best loss (B,)).

    x_0     = clip(x + eps * u / max|u|, 0, 1),  u ~ U(-1, 1)^d  (max over each sample's entries)
    z       = P(x_k + eta_k * sign(grad f(x_k)))
    x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1})),   a = 1 at k = 0, then `momentum` (0.75)
    P(v)    = clip(min(max(v, x - eps), x + eps), 0, 1),   eta_0 = 2 eps (per element for an eps map)

Checkpoints w_0 = 0 < w_1 < ... (``checkpoints``). At w_j the step of a sample halves, and its iterate
and gradient jump back to its best point, when (1) at most rho (w_j - w_{j-1}) of the steps since w_{j-1}
raised the loss ("reference" rule; the paper writes "fewer than", rule="paper"), or (2) its step was not
halved at w_{j-1} and its best loss has not risen since w_{j-1}. The "reference" rule also keeps a quirk
of the code: the first step is compared with an unwritten (zero) entry of its loss buffer instead of f(x_0),
so with a loss <= 0 (the MMA margin loss) it never counts as a rise: with N = 20 every step halves at w_1 = 4.

A point counts as broken when any iterate (x_0 included) was misclassified: the last such iterate is
returned; otherwise the point of highest loss. The model runs in eval mode (restored afterwards); only
input gradients are taken (torch.autograd.grad), parameters get no .grad.

Defaults: eps 8/255 and AutoAttack's 100 steps of APGD-CE. The arguments are checked as ``pgd``'s (``ValueError``;
``check_inputs=False`` skips the one host synchronisation of the range check).

Example:
    x_adv, loss = apgd(model, x, y)                                           # APGD-CE, 8/255, 100 steps
    x_adv, loss = apgd(model, x, y, 8 / 255, 20, lambda z, y: margin_loss_targeted(z, y, t))
"""

from __future__ import annotations

import torch
import torch.nn as nn

from fastpart.attacks.losses import LossFn, ce_loss, widen
from fastpart.inputs import attack_inputs
from fastpart.budgets import Eps, eps_tensor_or_float
from fastpart.modes import eval_mode

RULES = ("reference", "paper")


def checkpoints(steps: int) -> list[int]:
    """Iterations after which the step size is checked: [0, w_1, w_2, ...] (all <= steps).

    The reference code's integer schedule: w_1 = max(int(0.22 N), 1); intervals shrink by max(int(0.03 N), 1)
    down to max(int(0.06 N), 1). N = 100: [0, 22, 41, 57, 70, 80, 87, 93, 99]; N = 20: [0, 4, 7, 9, 10, ..., 20].
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    interval, shrink, smallest = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    out = [0]
    while out[-1] + interval <= steps:
        out.append(out[-1] + interval)
        interval = max(interval - shrink, smallest)
    return out


def checkpoints_paper(steps: int) -> list[int]:
    """The paper's formula, for comparison: ceil(p_j N), p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06),
    in exact integer arithmetic (hundredths). Equal to ``checkpoints`` for N = 100, not for N = 20."""
    out, p, interval = [0], 22, 22
    while -(-p * steps // 100) <= steps:
        w = -(-p * steps // 100)
        if w > out[-1]:
            out.append(w)
        interval = max(interval - 3, 6)
        p += interval
    return out


def _loss_grad(model, x_adv, y, loss_fn, autocast_dtype):
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        with torch.autocast(x_adv.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = widen(model(x_adv))
        loss = loss_fn(logits, y)
        (grad,) = torch.autograd.grad(loss.sum(), x_adv)
    return logits.detach(), loss.detach(), grad.detach()


def apgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: Eps = 8 / 255,
    steps: int = 100,
    loss_fn: LossFn = ce_loss,
    rho: float = 0.75,
    momentum: float = 0.75,
    generator: torch.Generator | None = None,
    autocast_dtype: torch.dtype | None = None,
    x_init: torch.Tensor | None = None,
    rule: str = "reference",
    check_inputs: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (x_adv, best loss per sample); x_init (projected into the box) replaces the random start."""
    if check_inputs:
        y = attack_inputs("apgd", x, y, eps, steps=steps, least_steps=1)
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose from {', '.join(RULES)}")
    x = x.detach()
    eps = eps_tensor_or_float(eps, x.dtype)
    n, view = x.shape[0], (-1,) + (1,) * (x.dim() - 1)

    def project(v):
        return torch.clamp(torch.min(torch.max(v, x - eps), x + eps), 0.0, 1.0)

    with eval_mode(model):
        if x_init is None:
            u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype).mul_(2).sub_(1)
            u = u / (u.abs().reshape(n, -1).max(1)[0].view(view) + 1e-12)
            x_adv = (x + eps * torch.ones_like(x) * u).clamp(0.0, 1.0)
        else:
            x_adv = project(x_init.detach().to(x.dtype))
        logits, loss, grad = _loss_grad(model, x_adv, y, loss_fn, autocast_dtype)
        acc = logits.argmax(1) == y
        x_best, x_best_adv, grad_best, loss_best = x_adv.clone(), x_adv.clone(), grad.clone(), loss.clone()
        losses = torch.zeros(steps, n, dtype=loss.dtype, device=x.device)
        loss_0 = loss.clone()
        step = 2.0 * eps * torch.ones((n,) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)
        marks, last = set(checkpoints(steps)[1:]), 0
        loss_best_last, reduced_last = loss_best.clone(), torch.ones_like(acc)
        x_old = x_adv.clone()
        for i in range(steps):
            with torch.no_grad():
                drift, x_old = x_adv - x_old, x_adv.clone()
                a = momentum if i > 0 else 1.0
                z = project(x_adv + step * torch.sign(grad))
                x_adv = project(x_adv + (z - x_adv) * a + drift * (1 - a))
            logits, loss, grad = _loss_grad(model, x_adv, y, loss_fn, autocast_dtype)
            wrong = logits.argmax(1) != y  # masks via torch.where: no host sync per step
            acc &= ~wrong
            x_best_adv = torch.where(wrong.view(view), x_adv, x_best_adv)
            losses[i] = loss
            up = loss > loss_best
            x_best, grad_best = torch.where(up.view(view), x_adv, x_best), torch.where(up.view(view), grad, grad_best)
            loss_best = torch.where(up, loss, loss_best)
            if i + 1 in marks:
                first = losses[-1] if rule == "reference" else loss_0  # the reference compares with its buffer's end
                prev = torch.cat([(first if last == 0 else losses[last - 1])[None], losses[last:i]])
                rises = (losses[last : i + 1] > prev).sum(0)
                limit = (i + 1 - last) * rho
                halve = rises <= limit if rule == "reference" else rises < limit
                halve |= ~reduced_last & (loss_best_last >= loss_best)
                reduced_last, loss_best_last, last = halve, loss_best, i + 1
                h = halve.view(view)
                step = torch.where(h, step / 2.0, step)
                x_adv, grad = torch.where(h, x_best, x_adv), torch.where(h, grad_best, grad)
    x_out = torch.where(acc.view(view), x_best, x_best_adv)
    return x_out.detach(), loss_best
