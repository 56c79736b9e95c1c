"""Argument checks of the public entry points (the attacks, ``part_budget``, the attack objects): one-line
``ValueError`` for a budget or step size outside [0, 1] units (8 for 8/255), negative or not finite, images that
are not a float tensor in [0, 1] (0-255 images), labels that are not one integer class per image (int32 and
uint8 are cast to int64), a number of steps that is not an integer. Reading the images' range costs one host
synchronisation: training's per-batch attacks skip these checks.
"""

from __future__ import annotations

import numbers

import torch

from fastpart.budgets import Eps, EpsLevels
from fastpart.errors import FastpartError
from fastpart.options import parse_budget

__all__ = ["attack_inputs", "attack_labels", "check_budget_value", "check_steps"]


def check_budget_value(name: str, value: object, numbers_only: bool = False) -> None:
    """Refuse (``ValueError``) a budget or step size given as a number outside [0, 1] units (8 for 8/255), negative
    or not finite; ``EpsLevels`` has its two values checked. Tensors pass here (``attack_inputs`` checks them),
    unless ``numbers_only`` (a budget that must be one number, as PART's two levels)."""
    if isinstance(value, EpsLevels) and not numbers_only:
        check_budget_value(f"{name} (high)", value.high)
        check_budget_value(f"{name} (low)", value.low)
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        try:
            parse_budget(float(value))
        except FastpartError as error:
            raise ValueError(f"{name}: {error}") from None
    elif numbers_only:
        raise ValueError(f"{name}: give a number in [0, 1] units (8 / 255), got {value!r}")
    elif not torch.is_tensor(value):
        raise ValueError(f"{name}: give a number in [0, 1] units (8 / 255), a tensor or EpsLevels, got {value!r}")


def check_steps(name: str, steps: object, least: int = 0) -> None:
    """Refuse (``ValueError``) a number of steps that is not an integer >= ``least``."""
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < least:
        raise ValueError(f"{name}: steps must be an integer >= {least}, got {steps!r}")


def attack_labels(where: str, y: object, n: int) -> torch.Tensor:
    """Labels (n,) of an integer dtype as int64 (int32 and uint8 are cast; float labels: ``ValueError``). No sync."""
    if not torch.is_tensor(y) or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        got = y.dtype if torch.is_tensor(y) else type(y).__name__
        raise ValueError(f"{where}: labels y must be a tensor of class indices of an integer dtype, got {got}")
    if tuple(y.shape) != (n,):
        raise ValueError(f"{where}: labels y must have shape ({n},), one per image, got {tuple(y.shape)}")
    return y if y.dtype == torch.int64 else y.long()


def attack_inputs(where: str, x: object, y: object, eps: Eps, *, alpha: object = None, steps: object = None,
                  least_steps: int = 0) -> torch.Tensor | None:
    """Check a public attack's arguments (``ValueError``, one line) and return y as int64.

    ``eps`` (and ``alpha``) as numbers or ``EpsLevels``: finite, in [0, 1] units; x: a float tensor with values
    in [0, 1]; y: one integer label per image (None where labels are optional: returned as None); ``steps``: an
    integer >= ``least_steps``. The range of x and of a tensor ``eps`` is read in one host synchronisation."""
    check_budget_value(f"{where}: eps", eps)
    if alpha is not None:
        check_budget_value(f"{where}: alpha", alpha)
    if steps is not None:
        check_steps(where, steps, least_steps)
    if not torch.is_tensor(x) or not x.is_floating_point() or x.dim() == 0:
        got = x.dtype if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"{where}: images x must be a float tensor (B, C, H, W) in [0, 1], got {got} "
                         "(0-255 images: x.float() / 255)")
    y = None if y is None else attack_labels(where, y, len(x))
    named = {name: t.detach() for name, t in (("x", x), ("eps", eps)) if torch.is_tensor(t) and t.numel()}
    if named:
        values = torch.stack([v.float().to(x.device) for t in named.values() for v in (t.amin(), t.amax())]).tolist()
        ranges = dict(zip(named, zip(values[::2], values[1::2])))
        low, high = ranges.get("x", (0.0, 1.0))
        if not (low >= 0 and high <= 1):
            raise ValueError(f"{where}: images must be in [0, 1], got values in [{low:g}, {high:g}] "
                             "(0-255 images: divide by 255)")
        low, high = ranges.get("eps", (0.0, 1.0))
        if not (low >= 0 and high <= 1):
            raise ValueError(f"{where}: eps: budgets are in [0, 1] units (images are in [0, 1]), got a budget map "
                             f"with values in [{low:g}, {high:g}]")
    return y
