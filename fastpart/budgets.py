"""L-inf budgets, the type every attack, kernel and PART's masks agree on.

A budget (``Eps``) comes in three encodings:

- a Python float: the same eps for every element (standard PGD);
- a float tensor broadcastable to the images: in practice (B, 3, H, W), or (B, 1, H, W) shared by the channels;
- ``EpsLevels(levels, high, low)``: PART's two-level budget, a uint8 code tensor broadcastable to the images,
  non-zero -> ``high`` (eps, important pixels), 0 -> ``low`` (eps_low); ``eps_from_levels`` expands it to
  the float map it stands for.

Units: pixel values in [0, 1] (8/255, not 8). This module imports torch alone.
"""

from __future__ import annotations

from typing import NamedTuple, Union

import torch

__all__ = ["Eps", "EpsLevels", "eps_from_levels", "eps_tensor_or_float", "scaled_budget"]


class EpsLevels(NamedTuple):
    """A two-level budget: ``levels`` uint8, non-zero -> ``high``, 0 -> ``low`` (PART: eps, eps_low)."""

    levels: torch.Tensor
    high: float
    low: float


Eps = Union[float, torch.Tensor, EpsLevels]


def eps_from_levels(levels: torch.Tensor, eps_high: float, eps_low: float,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Levels (any shape, uint8) -> the budget per element, exactly ``eps_high`` where non-zero, else ``eps_low``."""
    high = torch.tensor(eps_high, dtype=dtype, device=levels.device)
    low = torch.tensor(eps_low, dtype=dtype, device=levels.device)
    return torch.where(levels != 0, high, low)


def eps_tensor_or_float(eps: Eps, dtype: torch.dtype = torch.float32) -> torch.Tensor | float:
    """The budget as a float or a float tensor (levels expanded to ``dtype``, float32 by default)."""
    if isinstance(eps, EpsLevels):
        return eps_from_levels(eps.levels, eps.high, eps.low, dtype)
    return eps


def scaled_budget(eps: Eps, scale: float) -> Eps:
    """A budget times ``scale``: a float or tensor multiplied, PART's two levels both multiplied."""
    if scale == 1.0:
        return eps
    if isinstance(eps, EpsLevels):
        return EpsLevels(eps.levels, eps.high * scale, eps.low * scale)
    return eps * scale
