"""How attacks and CAMs hold a model: eval mode for a block, parameters frozen for a block.

Both context managers restore exactly what they changed (every submodule's own train/eval flag, every
parameter's own ``requires_grad``), so a model in the middle of training comes back as it was. This
module imports torch alone: the attacks use it without loading the model registry (timm).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn

__all__ = ["eval_mode", "frozen_parameters"]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run a block with the model in eval mode, then give every submodule back its own train/eval flag."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[nn.Module]:
    """Run a block with every parameter's requires_grad off (input gradients only), then restore the flags.

    Eager autograd skips parameter gradients anyway when asked for the input's alone; a torch.compile'd
    backward does not, unless the parameters are frozen like this.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
