"""The fused mask-weighted PGD step, behind one dispatch: ``pgd_step_`` (and the uniform start, ``uniform_start``).

    pgd_step_(x_adv, grad, x, eps, alpha)                  # x_adv updated in place and returned
    pgd_step_(x_adv, grad, x, EpsLevels(levels, 8 / 255, 7 / 255), alpha)
    x_adv = uniform_start(x, eps, generator)               # clip(x + U(-eps, eps), 0, 1)

The math, the eps encodings and the rounding are specified in ``fastpart.kernels.reference``.

Backends (``KERNEL_BACKENDS``):
- ``auto``: ``triton`` for CUDA tensors when triton is importable and the kernels cover the inputs
  (float32/bfloat16/float16 images and gradients, at most 4 dimensions), else ``reference``;
- ``reference``: plain torch, then ``copy_`` into x_adv;
- ``triton``: ``fastpart.kernels.triton_step``, one pass over memory; CPU tensors only under Triton's
  interpreter (TRITON_INTERPRET=1 set before the kernels are first imported); a FastpartError otherwise;
- ``compile``: ``torch.compile`` of the reference writing into x_adv (one compiled graph per input
  shape and eps encoding; compiling takes seconds, longer on CPU).

triton is imported only when a kernel may run (CUDA tensors under ``auto``, or ``triton``), so
``import fastpart.kernels`` works without it.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from types import ModuleType
from typing import Callable

import torch

from fastpart.budgets import Eps, EpsLevels, eps_from_levels, eps_tensor_or_float
from fastpart.errors import FastpartError
from fastpart.kernels.reference import (
    compute_dtype,
    pgd_step_reference,
    start_dtype,
    uniform_start_reference,
)

__all__ = ["KERNEL_BACKENDS", "Eps", "EpsLevels", "eps_from_levels", "eps_tensor_or_float", "pgd_step_", "pgd_step_reference",
           "resolve_backend", "start_dtype", "triton_unsupported", "uniform_start", "uniform_start_reference"]

KERNEL_BACKENDS = ("auto", "reference", "triton", "compile")
_TRITON_MODULE = "fastpart.kernels.triton_step"
_IMAGE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _eps_tensor(eps: Eps) -> torch.Tensor | None:
    if isinstance(eps, EpsLevels):
        return eps.levels
    return eps if isinstance(eps, torch.Tensor) else None


def _check(images: dict[str, torch.Tensor], eps: Eps) -> None:
    shapes = {name: tuple(t.shape) for name, t in images.items()}
    if len(set(shapes.values())) != 1:
        raise FastpartError("pgd step: " + ", ".join(f"{k} {v}" for k, v in shapes.items()) + " must have one shape")
    shape = next(iter(images.values())).shape
    e = _eps_tensor(eps)
    if e is None:
        if not isinstance(eps, (int, float)):
            raise FastpartError(f"pgd step: eps must be a float, a tensor or EpsLevels, got {type(eps).__name__}")
        return
    try:
        broadcast = torch.broadcast_shapes(e.shape, shape)
    except RuntimeError:
        broadcast = None
    if broadcast != shape:
        raise FastpartError(f"pgd step: eps of shape {tuple(e.shape)} does not broadcast to {tuple(shape)}")


@functools.cache
def _triton_importable() -> bool:
    try:
        importlib.import_module("triton")
    except ImportError:
        return False
    return True


def triton_unsupported(tensors: list[torch.Tensor], eps: Eps) -> str | None:
    """Why the Triton kernels cannot run on these inputs (``tensors``: output first), or None when they can."""
    if not _triton_importable():
        return "triton is not installed"
    e = _eps_tensor(eps)
    every = tensors + ([e] if e is not None else [])
    devices = {t.device for t in every}
    if len(devices) > 1:
        return f"the tensors are on several devices ({', '.join(sorted(map(str, devices)))})"
    device = tensors[0].device
    if device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET") != "1":
            return "CPU tensors need Triton's interpreter: set TRITON_INTERPRET=1 before importing fastpart.kernels"
        loaded = sys.modules.get(_TRITON_MODULE)
        if loaded is not None and not loaded.INTERPRETED:
            return f"TRITON_INTERPRET=1 was set after {_TRITON_MODULE} was imported; set it before"
    elif device.type != "cuda":
        return f"no Triton kernels for {device.type} tensors"
    for t in tensors:
        if t.dtype not in _IMAGE_DTYPES:
            return f"dtype {t.dtype} (the kernels take float32, bfloat16 and float16 images and gradients)"
        if t.ndim > 4:
            return f"{t.ndim} dimensions (the kernels take at most 4)"
    if isinstance(eps, EpsLevels) and eps.levels.dtype != torch.uint8:
        return f"levels of dtype {eps.levels.dtype} (the kernels take uint8)"
    if isinstance(eps, torch.Tensor) and eps.dtype not in _IMAGE_DTYPES:
        return f"an eps map of dtype {eps.dtype} (the kernels take float32, bfloat16 and float16)"
    return None


def resolve_backend(backend: str, tensors: list[torch.Tensor], eps: Eps) -> str:
    """The concrete backend (reference, triton or compile) that ``backend`` means for these inputs."""
    if backend not in KERNEL_BACKENDS:
        raise FastpartError(f"unknown kernel backend {backend!r}; choose from {', '.join(KERNEL_BACKENDS)}")
    if backend == "auto":
        usable = tensors[0].is_cuda and triton_unsupported(tensors, eps) is None
        return "triton" if usable else "reference"
    if backend == "triton":
        reason = triton_unsupported(tensors, eps)
        if reason is not None:
            raise FastpartError(f"the triton kernel backend cannot run here: {reason}")
    return backend


def _triton() -> ModuleType:
    from fastpart.kernels import triton_step

    return triton_step


def _step_into(x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, eps: Eps, alpha: float) -> None:
    x_adv.copy_(pgd_step_reference(x_adv, grad, x, eps, alpha))


def _start_into(out: torch.Tensor, u: torch.Tensor, x: torch.Tensor, eps: Eps) -> None:
    out.copy_(uniform_start_reference(x, eps, u, out.dtype))


@functools.cache
def _compiled(fn: Callable[..., None]) -> Callable[..., None]:
    return torch.compile(fn, dynamic=False, fullgraph=True)


def pgd_step_(x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, eps: Eps, alpha: float,
              backend: str = "auto") -> torch.Tensor:
    """x_adv <- clip(min(max(x_adv + alpha sign(grad), x - eps), x + eps), 0, 1), in place; returns x_adv.

    eps: a float, a float tensor broadcastable to x, or ``EpsLevels(levels uint8, high, low)``.
    """
    if any(s == 0 and n > 1 for n, s in zip(x_adv.shape, x_adv.stride())):
        raise FastpartError("pgd step: x_adv is an expanded view (elements share memory); pass a real tensor")
    _check({"x_adv": x_adv, "grad": grad, "x": x}, eps)
    name = resolve_backend(backend, [x_adv, grad, x], eps)
    if name == "triton":
        _triton().pgd_step(x_adv, grad, x, eps, alpha)
    elif name == "compile":
        _compiled(_step_into)(x_adv, grad, x, eps, alpha)
    else:
        _step_into(x_adv, grad, x, eps, alpha)
    return x_adv


def uniform_start(x: torch.Tensor, eps: Eps, generator: torch.Generator | None = None, backend: str = "auto",
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """clip(x + U(-eps, eps), 0, 1) as a new tensor in x's layout (dtype: ``start_dtype`` unless given).

    The draws are ``torch.empty_like(x, dtype=float32).uniform_(generator=generator)`` (float64 with
    float64 inputs): for a contiguous float32 x the same numbers, in the same places, as
    ``torch.rand(x.shape, generator=generator)``, whatever the backend.
    """
    _check({"x": x}, eps)
    e = eps if isinstance(eps, torch.Tensor) else None
    u = torch.empty_like(x, dtype=compute_dtype(x, e)).uniform_(generator=generator)
    out = torch.empty_like(x, dtype=dtype or start_dtype(x, eps))
    name = resolve_backend(backend, [out, u, x], eps)
    if name == "triton":
        _triton().uniform_start(out, u, x, eps)
    elif name == "compile":
        _compiled(_start_into)(out, u, x, eps)
    else:
        _start_into(out, u, x, eps)
    return out
