"""The minimum-margin attack (Gao, Wang, Liu, Huang, Niu, Sugiyama, Han, "Fast and Reliable Evaluation of
Adversarial Robustness with Minimum-Margin Attack", ICML 2022), as PART evaluates with it (k = 3, 20 steps).

Shapes: x (B, C, H, W) in [0, 1]; y (B,); eps a float, a tensor broadcastable to x, or ``EpsLevels`` (a
per-sample map (B, C, H, W) is split with the batch). Returns x_adv (B, C, H, W).

    t_i  = the i-th most likely wrong class of the clean logits (i = 1..k; the true class is masked out,
           as the released code does: argsort(z - 10000 onehot(y))[:, -i])
    mma:     for i = 1..k, APGD (``apgd``, ``steps`` iterations) maximising -max(z_y - z_{t_i} + 50, 0) on the points
             still robust (correct on the clean input and under every earlier target); a point is broken
             for good by the first target that breaks it.
    mma_ref: the released code's sign-PGD variant: for each of the k targets, `steps` signed steps of size
             `alpha` on the same loss from a fresh uniform start; keep, per point, the candidate (the clean
             point included) with the lowest margin z_y - max_{j != y} z_j.

A point misclassified on the clean input is non-robust already: it is never attacked and x_adv = x.
Points still robust after all k targets get the last attempt (APGD's highest-loss point for t_k).
The model runs in eval mode (restored afterwards); only input gradients are taken.

Defaults: eps 8/255, k = 3, 20 steps (PART's "MM3"). The arguments are checked as ``pgd``'s (``ValueError``;
``check_inputs=False`` skips the one host synchronisation of the range check).

Example:
    x_adv = mma(model, x, y)                                                                # "MM3", 8/255
    acc = robust_accuracy(model, x, y, lambda m, xb, yb: mma(m, xb, yb, 8 / 255, k=9, steps=100), 8 / 255)  # "MM+"
"""

from __future__ import annotations

import torch
import torch.nn as nn

from fastpart.attacks.apgd import apgd
from fastpart.attacks.losses import margin, margin_loss_targeted, widen
from fastpart.attacks.pgd import pgd
from fastpart.attacks.robust import budget_rows
from fastpart.inputs import attack_inputs
from fastpart.budgets import Eps
from fastpart.modes import eval_mode


def _logits(model: nn.Module, x: torch.Tensor, autocast_dtype: torch.dtype | None) -> torch.Tensor:
    with torch.no_grad(), torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        return widen(model(x))


def wrong_class_ranking(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, K - 1) classes other than y, most likely first (ties: lower class index first)."""
    masked = logits.detach().scatter(1, y[:, None], float("-inf"))
    return masked.argsort(dim=1, descending=True, stable=True)[:, :-1]


def mma(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: Eps = 8 / 255,
    k: int = 3,
    steps: int = 20,
    generator: torch.Generator | None = None,
    autocast_dtype: torch.dtype | None = None,
    rule: str = "reference",
    check_inputs: bool = True,
) -> torch.Tensor:
    """Sequential targeted APGD with the minimum-margin loss toward the top-k wrong classes."""
    if check_inputs:
        y = attack_inputs("mma", x, y, eps, steps=steps, least_steps=1)
    with eval_mode(model):
        x = x.detach()
        logits = _logits(model, x, autocast_dtype)
        robust = logits.argmax(1) == y
        ranking = wrong_class_ranking(logits, y)
        x_adv = x.clone()
        for i in range(min(k, ranking.shape[1])):
            idx = robust.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            target, y_i = ranking[idx, i], y[idx]
            adv, _ = apgd(
                model, x[idx], y_i, budget_rows(eps, idx, x), steps,
                lambda z, yy, t=target: margin_loss_targeted(z, yy, t),
                generator=generator, autocast_dtype=autocast_dtype, rule=rule, check_inputs=False,
            )
            x_adv[idx] = adv
            robust[idx] = _logits(model, adv, autocast_dtype).argmax(1) == y_i
    return x_adv


def _margin_loss_to(target: torch.Tensor):
    """The per-sample margin loss toward ``target``, in the (logits, y) form every attack takes."""
    return lambda logits, y: margin_loss_targeted(logits, y, target)


def mma_ref(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: Eps = 8 / 255,
    k: int = 3,
    steps: int = 20,
    alpha: float = 2 / 255,
    generator: torch.Generator | None = None,
    autocast_dtype: torch.dtype | None = None,
    check_inputs: bool = True,
) -> torch.Tensor:
    """The released sign-PGD variant: k targeted margin-loss PGD runs; keep each point's most damaging."""
    if check_inputs:
        y = attack_inputs("mma_ref", x, y, eps, alpha=alpha, steps=steps)
    with eval_mode(model):
        x = x.detach()
        logits = _logits(model, x, autocast_dtype)
        ranking = wrong_class_ranking(logits, y)
        best, best_margin = x.clone(), margin(logits, y)
        for i in range(min(k, ranking.shape[1])):
            target = ranking[:, i]
            x_adv = pgd(model, x, y, eps, alpha, steps, loss_fn=_margin_loss_to(target), generator=generator,
                        autocast_dtype=autocast_dtype, check_inputs=False)
            m = margin(_logits(model, x_adv, autocast_dtype), y)
            better = m < best_margin
            best[better], best_margin[better] = x_adv[better], m[better]
    return best

