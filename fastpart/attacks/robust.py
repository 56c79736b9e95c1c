"""What "robust" means in fastpart: one definition, used by ``fastpart eval``, by training's test-set
evaluation and by library users.

A point is robust when the model classifies it correctly both clean and on the attack's output. Only
clean-correct points are attacked (a clean error is never robust, so robust <= natural), and an attack's
output counts only when it lies inside its L-inf box around x (float rounding: ``BUDGET_SLACK``) and in
[0, 1]; otherwise ``FastpartError``: a budget-breaking attack is a bug, not a result.

    correct = robust_correct(predict, x, y, attack, eps)  # bool (B,); attack(x_sub, y_sub) -> x_adv_sub
    acc = robust_accuracy(model, x, y, lambda m, xb, yb: pgd(m, xb, yb, steps=20), eps=8 / 255)

The public attacks (``pgd``, ``apgd``, ``mma``, ``robust_accuracy``) check their arguments with
``fastpart.inputs.attack_inputs`` (``ValueError``, one line): float budgets and step sizes in [0, 1] units (8/255, not 8),
images a float tensor in [0, 1] (not 0-255), labels of an integer dtype (cast to int64). Checking the range of
the images costs one host synchronisation, so training's per-batch generators skip it (``check_inputs=False``).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from fastpart.errors import FastpartError
from fastpart.budgets import Eps, EpsLevels, eps_tensor_or_float
from fastpart.modes import eval_mode
from fastpart.inputs import attack_inputs

__all__ = ["BUDGET_SLACK", "budget_rows", "check_budget", "predict_labels", "robust_accuracy", "robust_correct"]

BUDGET_SLACK = 1e-5  # float rounding of x_adv - x

Predict = Callable[[torch.Tensor], torch.Tensor]  # x (B, C, H, W) -> predicted labels (B,)


def check_budget(name: str, x_adv: torch.Tensor, x: torch.Tensor, eps: Eps) -> None:
    """Refuse (``FastpartError``) an adversarial batch that leaves its L-inf box around ``x`` or [0, 1]."""
    if not x.numel():
        return
    bound = eps_tensor_or_float(eps)
    excess = ((x_adv.float() - x.float()).abs() - bound).max().item()
    if excess > BUDGET_SLACK or x_adv.min() < 0 or x_adv.max() > 1:
        raise FastpartError(f"{name}: adversarial examples leave the budget (by {excess:.2e}) or [0, 1]; not counted")


def predict_labels(model: nn.Module, autocast_dtype: torch.dtype | None = None) -> Predict:
    """x -> argmax f(x), without autograd, under autocast when ``autocast_dtype`` is given."""

    def predict(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            return model(x).argmax(1)

    return predict


def robust_correct(predict: Predict, x: torch.Tensor, y: torch.Tensor, attack: Callable, eps: Eps | None = None,
                   name: str = "attack", natural: torch.Tensor | None = None) -> torch.Tensor:
    """bool (B,): clean-correct and still correct on ``attack``'s output.

    ``attack(x_sub, y_sub)`` runs on the clean-correct points only. With ``eps`` given (a float, a tensor
    broadcastable to x, or ``EpsLevels``; per-sample rows are indexed like the points) it returns x_adv_sub;
    with ``eps`` None it sets its own budget and returns (x_adv_sub, budget_sub). Either way the output is
    checked against the budget before it counts. ``natural``: ``predict(x) == y`` when the caller has it.
    """
    correct = (predict(x) == y) if natural is None else natural.clone()
    idx = correct.nonzero().squeeze(1)
    if idx.numel():
        out = attack(x[idx], y[idx])
        x_adv, budget = out if eps is None else (out, budget_rows(eps, idx, x))
        check_budget(name, x_adv, x[idx], budget)
        correct[idx] = predict(x_adv) == y[idx]
    return correct


def budget_rows(eps: Eps, idx: torch.Tensor, like: torch.Tensor) -> Eps:
    """The budget of the points ``idx`` of the batch ``like``: a per-sample map (N, C, H, W) or per-sample
    levels are indexed; a float or a map that broadcasts over the batch (leading size 1 or fewer dims) is kept."""
    if isinstance(eps, EpsLevels):
        return EpsLevels(budget_rows(eps.levels, idx, like), eps.high, eps.low)  # type: ignore[arg-type]
    if torch.is_tensor(eps) and eps.dim() == like.dim() and eps.shape[0] == len(like):
        return eps[idx]
    return eps


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    attack: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor], eps: Eps,
                    batch_size: int = 256, autocast_dtype: torch.dtype | None = None) -> float:
    """Fraction of (x, y) robust to ``attack(model, x_sub, y_sub) -> x_adv`` inside budget ``eps`` (see module).

    ``eps``: a float, a tensor broadcastable to x, or ``EpsLevels``; a per-sample map (N, C, H, W) is split
    with the batches and the attacked points. The model runs in eval mode (restored afterwards). Arguments are
    checked as the attacks' (``attack_inputs``): a budget above 1 or images outside [0, 1] are a ``ValueError``.
    """
    y = attack_inputs("robust_accuracy", x, y, eps)
    if len(x) == 0:
        return float("nan")
    correct = 0
    with eval_mode(model):
        predict = predict_labels(model, autocast_dtype)
        for s in range(0, len(x), batch_size):
            batch = torch.arange(s, min(s + batch_size, len(x)), device=x.device)
            correct += int(robust_correct(predict, x[batch], y[batch], lambda xs, ys: attack(model, xs, ys),
                                          eps=budget_rows(eps, batch, x)).sum())
    return correct / len(x)
