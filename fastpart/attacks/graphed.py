"""PGD with each step as one ``torch.compile`` graph: the fast path of ``fastpart train --compile-attack``.

At the paper's batch size (128 CIFAR images) an eager PGD-10 attack is bound by kernel launches: ten
forward and input-backward passes, each a few hundred small kernels, plus the step. A whole step --
forward, input gradient, signed step, projection -- compiles as one graph (``fullgraph=True``: no graph
break, or an error), so inductor fuses the step into the backward and, with ``mode="reduce-overhead"``,
each step replays as one CUDA graph: ten graph launches per attack. (Compiling the ten steps as one
unrolled graph would cost ten times the compile time for one launch less per step.)

The math is ``fastpart.attacks.pgd.pgd``'s (the step is the plain-torch reference of the fused kernel,
which inductor fuses itself), from the same random start drawn eagerly with the same generator, so the
two agree up to the float rounding of fused arithmetic (the sign of a gradient within rounding of 0 may
differ); the tests bound the difference. The attack loss is an objective's module-level
``attack_loss(logits, y, probs)`` and its ``probs`` passed as a tensor, not a closure, so the compiled
graph is reused batch after batch. Under eager autograd the parameters are frozen for the attack, as in
``pgd``.

    x_adv = graphed_pgd(model, x, y, eps, alpha, steps, ce_attack, None, generator=gen, mode="reduce-overhead")
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn as nn

from fastpart.attacks.pgd import project, random_start
from fastpart.config import COMPILE_MODES
from fastpart.budgets import Eps
from fastpart.kernels import pgd_step_reference
from fastpart.modes import eval_mode, frozen_parameters

__all__ = ["COMPILE_MODES", "graphed_pgd"]

AttackLoss = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def _attack_step(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, eps: Eps, alpha: float,
                 attack_loss: AttackLoss, probs: torch.Tensor | None, autocast_dtype: torch.dtype | None) -> torch.Tensor:
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad(), torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        loss = attack_loss(model(x_adv), y, probs).sum()
        (grad,) = torch.autograd.grad(loss, x_adv)
    return pgd_step_reference(x_adv.detach(), grad, x, eps, alpha)


@functools.cache
def _compiled(mode: str) -> Callable[..., torch.Tensor]:
    return torch.compile(_attack_step, fullgraph=True, dynamic=False, mode=None if mode == "default" else mode)


def _trace_autograd():
    """The dynamo setting that lets ``torch.autograd.grad`` into a graph (absent from older torch: then the
    default, which traces it or fails loudly under fullgraph)."""
    config = torch._dynamo.config
    return config.patch(trace_autograd_ops=True) if hasattr(config, "trace_autograd_ops") else config.patch({})


def graphed_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: Eps, alpha: float, steps: int,
                attack_loss: AttackLoss, probs: torch.Tensor | None = None, start: str = "uniform",
                generator: torch.Generator | None = None, autocast_dtype: torch.dtype | None = None,
                mode: str = "default") -> torch.Tensor:
    """``pgd(model, x, y, eps, alpha, steps, loss_fn=lambda z, y: attack_loss(z, y, probs), start=...)`` with the
    steps compiled as one graph (``mode``: a ``torch.compile`` mode, see ``COMPILE_MODES``). x (B, C, H, W) in
    [0, 1]; eps a float, a tensor broadcastable to x, or ``EpsLevels``."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; choose from {', '.join(COMPILE_MODES)}")
    x = x.detach()
    x_adv = random_start(x, eps, start, generator)
    if steps == 0:
        return project(x_adv, x, eps).detach()  # an unclipped start (see pgd); a no-op for the others
    step = _compiled(mode)
    with eval_mode(model), frozen_parameters(model), _trace_autograd():
        for _ in range(steps):
            x_adv = step(model, x, x_adv, y, eps, alpha, attack_loss, probs, autocast_dtype)
    return x_adv.detach().clone()  # a CUDA graph's output is overwritten by its next replay
