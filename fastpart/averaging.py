"""Weight averaging: an exponential moving average (EMA) of a model's parameters, kept beside the model.

After every optimizer step, for every floating-point parameter p and its average a:

    a <- decay * a + (1 - decay) * p          (torch._foreach_lerp_(a, p, 1 - decay): one fused pass)

Buffers (batch-norm running statistics, counters) are *copied* from the live model, not averaged, so the
averaged model's batch norm uses the live model's latest statistics. The average starts as a copy of
the model. Everything stays on the model's device: no host synchronisation.

    average = WeightAverage(model, decay=0.999)
    ...; optimizer.step(); average.update()
    average.module     # an nn.Module with the averaged weights, for evaluation
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from fastpart.errors import FastpartError

__all__ = ["WeightAverage"]


class WeightAverage:
    """The EMA of ``model``'s parameters (buffers copied); ``module`` is the averaged copy of the model,
    ``update()`` moves it toward ``model``'s current weights."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise FastpartError(f"the weight average's decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.source = model
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        mine, theirs = dict(self.module.named_parameters()), dict(model.named_parameters())
        names = [n for n in mine if mine[n].is_floating_point()]
        self._averages = [mine[n].data for n in names]  # updated in place: load_state_dict keeps these tensors
        self._params = [theirs[n].detach() for n in names]
        self._buffers = list(zip(self.module.buffers(), model.buffers()))

    @torch.no_grad()
    def update(self) -> None:
        if self._averages:
            torch._foreach_lerp_(self._averages, self._params, 1.0 - self.decay)
        for mine, theirs in self._buffers:
            mine.copy_(theirs)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
