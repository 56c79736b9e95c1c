"""Precision names and what they mean to torch, in one table.

``fastpart.config.PRECISIONS`` lists the names (fp32, bf16, fp16) without importing torch, for the
command line; here each name maps to its floating-point dtype (``DTYPES``: what the loader yields) and
to the autocast dtype of the model (``AUTOCAST``: None for fp32, no autocast).
"""

from __future__ import annotations

import torch

from fastpart.config import PRECISIONS
from fastpart.errors import FastpartError

__all__ = ["AUTOCAST", "DTYPES", "autocast_dtype", "dtype"]

DTYPES: dict[str, torch.dtype] = dict(zip(PRECISIONS, (torch.float32, torch.bfloat16, torch.float16)))
AUTOCAST: dict[str, torch.dtype | None] = {name: None if d == torch.float32 else d for name, d in DTYPES.items()}


def _checked(name: str) -> str:
    if name not in DTYPES:
        raise FastpartError(f"unknown precision {name!r}; choose from {', '.join(DTYPES)}")
    return name


def dtype(name: str) -> torch.dtype:
    """The float dtype of a precision name (fp32 -> torch.float32); one line for an unknown name."""
    return DTYPES[_checked(name)]


def autocast_dtype(name: str) -> torch.dtype | None:
    """The autocast dtype of a precision name, None for fp32 (no autocast)."""
    return AUTOCAST[_checked(name)]
