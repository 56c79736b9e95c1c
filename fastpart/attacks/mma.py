"""The minimum-margin attack (Gao, Wang, Liu, Huang, Niu, Sugiyama, Han, "Fast and Reliable Evaluation of
Adversarial Robustness with Minimum-Margin Attack", ICML 2022), as PART evaluates with it (k = 3, 20 steps).

Shapes: x (B, C, H, W) in [0, 1]; y (B,); eps a float or a tensor broadcastable to x (a per-sample map
(B, C, H, W) is split with the batch). Returns x_adv (B, C, H, W).

    t_i  = the i-th most likely wrong class of the clean logits (i = 1..k; the true class is masked out,
           as the released code does: argsort(z - 10000 onehot(y))[:, -i])
    mma:     for i = 1..k, APGD (``apgd``, n_iter steps) maximising -max(z_y - z_{t_i} + 50, 0) on the points
             still robust (correct on the clean input and under every earlier target); a point is broken
             for good by the first target that breaks it.
    mma_ref: the released code's sign-PGD variant: for each of the k targets, `steps` signed steps of size
             `alpha` on the same loss from a fresh uniform start; keep, per point, the candidate (the clean
             point included) with the lowest margin z_y - max_{j != y} z_j.

A point misclassified on the clean input is non-robust already: it is never attacked and x_adv = x.
Points still robust after all k targets get the last attempt (APGD's highest-loss point for t_k).
The model runs in eval mode (restored afterwards); only input gradients are taken.

Example:
    x_adv = mma(model, x, y, eps=8 / 255, k=3, n_iter=20)                                   # "MM3"
    acc = robust_accuracy(model, x, y, lambda m, xb, yb: mma(m, xb, yb, 8 / 255, k=9, n_iter=100))  # "MM+"
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from fastpart.attacks.apgd import apgd, margin_loss_targeted, widen
from fastpart.attacks.pgd import pgd
from fastpart.models import eval_mode


def _logits(model: nn.Module, x: torch.Tensor, autocast_dtype: torch.dtype | None) -> torch.Tensor:
    with torch.no_grad(), torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        return widen(model(x))


def wrong_class_ranking(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, K - 1) classes other than y, most likely first (ties: lower class index first)."""
    masked = logits.detach().scatter(1, y[:, None], float("-inf"))
    return masked.argsort(dim=1, descending=True, stable=True)[:, :-1]


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y - max_{j != y} z_j per sample; negative means misclassified."""
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    return z_y - logits.scatter(1, y[:, None], float("-inf")).max(1)[0]


def _rows(eps: torch.Tensor | float, idx: torch.Tensor, x: torch.Tensor) -> torch.Tensor | float:
    """The budget of the selected samples: a per-sample map is indexed, anything else broadcasts."""
    if torch.is_tensor(eps) and eps.dim() == x.dim() and eps.shape[0] != 1:
        return eps[idx]
    return eps


def mma(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: torch.Tensor | float,
    k: int = 3,
    n_iter: int = 20,
    generator: torch.Generator | None = None,
    autocast_dtype: torch.dtype | None = None,
    rule: str = "reference",
) -> torch.Tensor:
    """Sequential targeted APGD with the minimum-margin loss toward the top-k wrong classes."""
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
                model, x[idx], y_i, _rows(eps, idx, x), n_iter,
                lambda z, yy, t=target: margin_loss_targeted(z, yy, t),
                generator=generator, autocast_dtype=autocast_dtype, rule=rule,
            )
            x_adv[idx] = adv
            robust[idx] = _logits(model, adv, autocast_dtype).argmax(1) == y_i
    return x_adv


def _margin_loss_to(target: torch.Tensor):
    """The summed margin loss toward ``target``, in the (logits, y) form that ``pgd`` takes."""
    return lambda logits, y: margin_loss_targeted(widen(logits), y, target).sum()


def mma_ref(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: torch.Tensor | float,
    k: int = 3,
    steps: int = 20,
    alpha: float = 2 / 255,
    generator: torch.Generator | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The released sign-PGD variant: k targeted margin-loss PGD runs; keep each point's most damaging."""
    with eval_mode(model):
        x = x.detach()
        logits = _logits(model, x, autocast_dtype)
        ranking = wrong_class_ranking(logits, y)
        best, best_margin = x.clone(), margin(logits, y)
        for i in range(min(k, ranking.shape[1])):
            target = ranking[:, i]
            x_adv = pgd(model, x, y, eps, alpha, steps, loss_fn=_margin_loss_to(target), generator=generator,
                        autocast_dtype=autocast_dtype)
            m = margin(_logits(model, x_adv, autocast_dtype), y)
            better = m < best_margin
            best[better], best_margin[better] = x_adv[better], m[better]
    return best


def robust_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
    batch_size: int = 256,
    autocast_dtype: torch.dtype | None = None,
) -> float:
    """Fraction of points whose attack_fn(model, xb, yb) output is still classified correctly."""
    correct = 0
    with eval_mode(model):
        for s in range(0, len(x), batch_size):
            xb, yb = x[s : s + batch_size], y[s : s + batch_size]
            x_adv = attack_fn(model, xb, yb)
            correct += int((_logits(model, x_adv, autocast_dtype).argmax(1) == yb).sum())
    return correct / max(len(x), 1)
