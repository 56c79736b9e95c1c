"""Adversarial weight perturbation (AWP; Wu, Xia and Wang, NeurIPS 2020), for any training loss.

Before the update of a batch the weights are moved, layer by layer, to where the training loss on the
batch's adversarial examples is higher; the update's gradient is taken there, the optimizer steps, and the
move is taken back. For every weight tensor w of more than one dimension (convolutions and linear layers;
not biases or batch norm) with the gradient g of the training loss L (train mode, batch statistics):

    v_w = (w - lr * grad(-L)) - w         the official code's proxy: one SGD step (lr 0.01) on -L
    d_w = ||w|| / (||v_w|| + 1e-20) * v_w  the same direction as g, with the norm of the layer's weights
    w  <- w + gamma * d_w                  perturb; then the update's forward, backward and optimizer step
    w  <- w - gamma * d_w                  restore (the step is kept)

as csdongxian/AWP's ``utils_awp.py`` (``diff_in_weights``, ``add_into_weights``; gamma 0.01 for AT without a
warm-up, 0.005 for TRADES after 10 epochs). The official code runs L on a proxy copy of the model, so the
model's batch-norm running statistics are not moved by it: here the model's own buffers are saved and put
back instead. Under several processes the gradients are averaged first, so every process applies the same
perturbation (the one of the global batch).

    awp = AdversarialWeightPerturbation(model, gamma=0.01)
    moved = awp.perturb(lambda: F.cross_entropy(model(x_adv), y))   # model in train mode
    loss.backward(); optimizer.step(); awp.restore(moved)
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from fastpart import distributed
from fastpart.errors import FastpartError

__all__ = ["AWP_EPS", "AWP_PROXY_LR", "AdversarialWeightPerturbation"]

AWP_EPS = 1e-20  # utils_awp.py: EPS
AWP_PROXY_LR = 0.01  # the official proxy optimizer: SGD(proxy.parameters(), lr=0.01), no momentum or decay


class AdversarialWeightPerturbation:
    """AWP of relative size ``gamma`` on ``model``'s weight tensors of more than one dimension."""

    def __init__(self, model: nn.Module, gamma: float) -> None:
        if not (gamma > 0 and gamma < float("inf")):
            raise FastpartError(f"the weight perturbation's gamma must be a positive number, e.g. 0.01; got {gamma}")
        self.gamma = float(gamma)
        self.model = model
        self.names = [n for n, p in model.named_parameters() if p.dim() > 1 and "weight" in n and p.requires_grad]
        named = dict(model.named_parameters())
        self.weights = [named[n] for n in self.names]
        self.last_loss: torch.Tensor | None = None  # L at the unperturbed weights, of the last perturb()

    def direction(self, loss_fn: Callable[[], torch.Tensor]) -> list[torch.Tensor]:
        """d_w of every weight tensor for the loss ``loss_fn()`` (run here, in the model's current mode); the
        model's buffers (batch-norm running statistics and counters) are as they were before."""
        buffers = list(self.model.buffers())
        saved = [b.clone() for b in buffers]
        loss = loss_fn()
        grads = torch.autograd.grad(-loss, self.weights)
        with torch.no_grad():
            if buffers:
                torch._foreach_copy_(buffers, saved)
            if distributed.world_size() > 1:
                flat = distributed.all_reduce_sum(torch.cat([g.reshape(-1) for g in grads])) / distributed.world_size()
                grads = list(torch.split(flat, [g.numel() for g in grads]))
                grads = [g.view_as(w) for g, w in zip(grads, self.weights)]
            stepped = torch._foreach_add(self.weights, grads, alpha=-AWP_PROXY_LR)  # the proxy's SGD step
            moved = torch._foreach_sub(stepped, self.weights)
            self.last_loss = loss.detach()
            return [w.norm() / (v.norm() + AWP_EPS) * v for w, v in zip(self.weights, moved)]

    @torch.no_grad()
    def _add(self, directions: list[torch.Tensor], coefficient: float) -> None:
        for w, d in zip(self.weights, directions):
            w.add_(coefficient * d)

    def perturb(self, loss_fn: Callable[[], torch.Tensor]) -> list[torch.Tensor]:
        """Move the weights by gamma * d_w; returns the directions for ``restore``."""
        directions = self.direction(loss_fn)
        self._add(directions, self.gamma)
        return directions

    def restore(self, directions: list[torch.Tensor]) -> None:
        """Take the move of ``perturb`` back (after the optimizer step, which stays)."""
        self._add(directions, -self.gamma)
