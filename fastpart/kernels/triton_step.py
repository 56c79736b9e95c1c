"""Triton kernels for the mask-weighted PGD step (in place, one pass over memory) and the uniform start.

Import this module only through ``fastpart.kernels`` (it imports triton, and on a machine without a GPU
TRITON_INTERPRET=1 must already be set when the ``@triton.jit`` decorators below run).

Every kernel loads its operands in their own dtypes (float32, bfloat16 or float16 images and gradients,
float eps maps, uint8 levels), computes in float32 exactly as ``reference.py`` specifies, and rounds once
on the store. The bfloat16 store rounds to nearest-even by integer arithmetic (``_to_bf16``): the same
result as the hardware conversion, and the interpreter's own float32 -> bfloat16 cast truncates, so the
path the CPU tests check is the one the GPU runs.

Step variants, each checked element by element against ``reference.pgd_step_reference``:

- v1 ``_step_strided``: any layouts. Programs walk the output's storage order; each element's index is
  split into its four coordinates by div/mod and every tensor is addressed through its own strides
  (a broadcast eps has stride 0). The fallback, and the only kernel for mixed layouts.
- v2 ``_step_flat``: out, x_adv, grad and x share one dense layout (contiguous NCHW or channels_last), so
  the flat storage index addresses all four. eps is a scalar argument, one element, a map of that same
  layout, or a (B, 1, H, W) plane indexed by ``i // C`` (channels_last) or ``(i // CHW) * HW + i % HW``
  (NCHW), with C and HW compile-time constants. The default wherever it applies.
- v3 ``_step_pixels``: the (B, 1, H, W) plane case only, in 2-D blocks of BLOCK_P pixels x C_PAD channels:
  eps is loaded once per pixel and broadcast along the channel axis, and the only division is one per
  pixel (NCHW). Selected with ``variant=3``.

Measured on an NVIDIA H200 (benchmarks/results/kernel-nvidia-h200.json; copy bandwidth 4.09 TB/s): on a
64M-element tensor v2 runs at 102-105% of the copy bandwidth in fp32 and bf16 with either eps encoding
(the step moves fewer bytes than read + write of a copy counts: uint8 levels, bf16 images); v1 matches
it in fp32 but falls to 48-57% in bf16; v3 never beats v2 (61% in bf16). At CIFAR batch sizes
(128-512 x 3 x 32 x 32) every backend is launch-bound at 40-90 us per step (0.8-3.8% of a compiled-model
PGD-10 attack), so the dispatch keeps v2 and v3 stays only as a checked variant.

``_start_strided`` fuses the uniform start clip(x + (2u - 1) eps, 0, 1) for draws u made by torch's RNG;
it is launched without floating-point contraction so that (2u - 1) * eps + x rounds twice, as torch does.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from fastpart.budgets import Eps, EpsLevels

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
BLOCK = 1024
BLOCK_PIXELS = 256
INT32_LIMIT = 2**31 - 1
VARIANTS = (1, 2, 3)

EPS_VALUE, EPS_MAP, EPS_LEVELS = 0, 1, 2
INDEX_SAME, INDEX_ZERO, INDEX_PLANE_NCHW, INDEX_PLANE_NHWC = 0, 1, 2, 3


@triton.jit
def _to_bf16(v):
    bits = v.to(tl.uint32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    rounded = tl.where(v != v, 0x7FC0, rounded)
    return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _store(ptr, offsets, value, mask):
    if ptr.dtype.element_ty == tl.bfloat16:
        tl.store(ptr + offsets, _to_bf16(value), mask=mask)
    else:
        tl.store(ptr + offsets, value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _load(ptr, offsets, mask):
    return tl.load(ptr + offsets, mask=mask).to(tl.float32)


@triton.jit
def _load_eps(e_ptr, offsets, mask, eps_hi, eps_lo, EPS: tl.constexpr):
    if EPS == 0:
        return eps_hi
    elif EPS == 1:
        return _load(e_ptr, offsets, mask)
    else:
        return tl.where(tl.load(e_ptr + offsets, mask=mask) != 0, eps_hi, eps_lo)


@triton.jit
def _project(xa, g, x, eps, alpha):
    sign = tl.where(g > 0, 1.0, 0.0) - tl.where(g < 0, 1.0, 0.0)
    stepped = xa + alpha * sign
    boxed = tl.maximum(stepped, x - eps, propagate_nan=tl.PropagateNan.ALL)
    boxed = tl.minimum(boxed, x + eps, propagate_nan=tl.PropagateNan.ALL)
    return tl.clamp(boxed, 0.0, 1.0, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _block_indices(BLOCK: tl.constexpr, INT64: tl.constexpr):
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
    return pid * BLOCK + tl.arange(0, BLOCK)


@triton.jit
def _coords(i, size1, size2, size3):
    """Row-major (i0, i1, i2, i3) of flat element indices ``i`` in a tensor of sizes (*, size1, size2, size3)."""
    i3 = i % size3
    rest = i // size3
    i2 = rest % size2
    rest = rest // size2
    return rest // size1, rest % size1, i2, i3


@triton.jit
def _step_strided(out_ptr, xa_ptr, g_ptr, x_ptr, e_ptr, n, alpha, eps_hi, eps_lo, size1, size2, size3,
                  so0, so1, so2, so3, sa0, sa1, sa2, sa3, sg0, sg1, sg2, sg3, sx0, sx1, sx2, sx3,
                  se0, se1, se2, se3, EPS: tl.constexpr, BLOCK: tl.constexpr, INT64: tl.constexpr):
    i = _block_indices(BLOCK, INT64)
    mask = i < n
    i0, i1, i2, i3 = _coords(i, size1, size2, size3)
    xa = _load(xa_ptr, i0 * sa0 + i1 * sa1 + i2 * sa2 + i3 * sa3, mask)
    g = _load(g_ptr, i0 * sg0 + i1 * sg1 + i2 * sg2 + i3 * sg3, mask)
    x = _load(x_ptr, i0 * sx0 + i1 * sx1 + i2 * sx2 + i3 * sx3, mask)
    eps = _load_eps(e_ptr, i0 * se0 + i1 * se1 + i2 * se2 + i3 * se3, mask, eps_hi, eps_lo, EPS)
    _store(out_ptr, i0 * so0 + i1 * so1 + i2 * so2 + i3 * so3, _project(xa, g, x, eps, alpha), mask)


@triton.jit
def _step_flat(out_ptr, xa_ptr, g_ptr, x_ptr, e_ptr, n, alpha, eps_hi, eps_lo, C: tl.constexpr,
               HW: tl.constexpr, EPS: tl.constexpr, INDEX: tl.constexpr, BLOCK: tl.constexpr,
               INT64: tl.constexpr):
    i = _block_indices(BLOCK, INT64)
    mask = i < n
    if INDEX == 0:
        e_index = i
    elif INDEX == 1:
        e_index = i * 0
    elif INDEX == 2:
        e_index = (i // (C * HW)) * HW + i % HW
    else:
        e_index = i // C
    xa = _load(xa_ptr, i, mask)
    g = _load(g_ptr, i, mask)
    x = _load(x_ptr, i, mask)
    eps = _load_eps(e_ptr, e_index, mask, eps_hi, eps_lo, EPS)
    _store(out_ptr, i, _project(xa, g, x, eps, alpha), mask)


@triton.jit
def _step_pixels(out_ptr, xa_ptr, g_ptr, x_ptr, e_ptr, pixels, alpha, eps_hi, eps_lo, C: tl.constexpr,
                 HW: tl.constexpr, C_PAD: tl.constexpr, CHANNELS_LAST: tl.constexpr, EPS: tl.constexpr,
                 BLOCK_P: tl.constexpr, INT64: tl.constexpr):
    p = _block_indices(BLOCK_P, INT64)
    c = tl.arange(0, C_PAD)
    pixel_mask = p < pixels
    mask = pixel_mask[:, None] & (c < C)[None, :]
    if CHANNELS_LAST:
        offsets = p[:, None] * C + c[None, :]
    else:
        offsets = ((p // HW) * (C * HW) + p % HW)[:, None] + (c * HW)[None, :]
    eps = _load_eps(e_ptr, p, pixel_mask, eps_hi, eps_lo, EPS)[:, None]
    xa = _load(xa_ptr, offsets, mask)
    g = _load(g_ptr, offsets, mask)
    x = _load(x_ptr, offsets, mask)
    _store(out_ptr, offsets, _project(xa, g, x, eps, alpha), mask)


@triton.jit
def _start_strided(out_ptr, u_ptr, x_ptr, e_ptr, n, eps_hi, eps_lo, size1, size2, size3,
                   so0, so1, so2, so3, su0, su1, su2, su3, sx0, sx1, sx2, sx3, se0, se1, se2, se3,
                   EPS: tl.constexpr, BLOCK: tl.constexpr, INT64: tl.constexpr):
    i = _block_indices(BLOCK, INT64)
    mask = i < n
    i0, i1, i2, i3 = _coords(i, size1, size2, size3)
    u = _load(u_ptr, i0 * su0 + i1 * su1 + i2 * su2 + i3 * su3, mask)
    x = _load(x_ptr, i0 * sx0 + i1 * sx1 + i2 * sx2 + i3 * sx3, mask)
    eps = _load_eps(e_ptr, i0 * se0 + i1 * se1 + i2 * se2 + i3 * se3, mask, eps_hi, eps_lo, EPS)
    noise = u * 2.0 - 1.0
    start = tl.clamp(x + noise * eps, 0.0, 1.0, propagate_nan=tl.PropagateNan.ALL)
    _store(out_ptr, i0 * so0 + i1 * so1 + i2 * so2 + i3 * so3, start, mask)


def _as4d(t: torch.Tensor) -> torch.Tensor:
    return t[(None,) * (4 - t.ndim)] if t.ndim < 4 else t


def _strides(t: torch.Tensor) -> list[int]:
    """Strides with those of size-1 dimensions zeroed: two tensors with equal lists share a memory layout."""
    return [s if n > 1 else 0 for n, s in zip(t.shape, t.stride())]


def _extent(t: torch.Tensor) -> int:
    return 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride()))


def _eps_args(eps: Eps, shape: torch.Size) -> tuple[int, torch.Tensor | None, float, float]:
    """(EPS kind, eps tensor expanded to ``shape`` as 4-D or None, the two scalars)."""
    if isinstance(eps, EpsLevels):
        return EPS_LEVELS, _as4d(eps.levels.expand(shape)), float(eps.high), float(eps.low)
    if isinstance(eps, torch.Tensor):
        return EPS_MAP, _as4d(eps.expand(shape)), 0.0, 0.0
    return EPS_VALUE, None, float(eps), 0.0


def _flat_index(out: torch.Tensor, others: list[torch.Tensor], e: torch.Tensor | None) -> int | None:
    """The eps index mode of v2, or None when out and the images do not share a dense NCHW/NHWC layout."""
    if out.is_contiguous():
        channels_last = False
    elif out.is_contiguous(memory_format=torch.channels_last):
        channels_last = True
    else:
        return None
    strides = _strides(out)
    if any(_strides(t) != strides for t in others):
        return None
    if e is None:
        return INDEX_SAME
    e_strides = _strides(e)
    if not any(e_strides):
        return INDEX_ZERO
    if e_strides == strides:
        return INDEX_SAME
    b, _, h, w = out.shape
    plane = [h * w if b > 1 else 0, 0, w if h > 1 else 0, 1 if w > 1 else 0]
    if e_strides == plane:
        return INDEX_PLANE_NHWC if channels_last else INDEX_PLANE_NCHW
    return None


def _strided_args(out: torch.Tensor, tensors: list[torch.Tensor]) -> list[int]:
    """Sizes of dims 1..3 of out's storage order, then each tensor's strides in that order."""
    order = sorted(range(4), key=lambda d: out.stride(d) if out.shape[d] > 1 else -1, reverse=True)
    args = [out.shape[d] for d in order[1:]]
    for t in tensors:
        args += [t.stride(d) for d in order]
    return args


def pgd_step(x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, eps: Eps, alpha: float,
             out: torch.Tensor | None = None, variant: int | None = None, block: int | None = None) -> torch.Tensor:
    """Write the PGD step of (x_adv, grad, x, eps, alpha) into ``out`` (default: x_adv itself) and return it.

    Arguments are validated by ``fastpart.kernels.pgd_step_``; ``variant`` 1, 2 or 3 (default: 2 where it
    applies, else 1) and ``block`` (elements, or pixels for v3, per program; a power of two) are for tests
    and benchmarks.
    """
    out = x_adv if out is None else out
    if out.numel() == 0:
        return out
    kind, e, eps_hi, eps_lo = _eps_args(eps, x.shape)
    out4, xa4, g4, x4 = (_as4d(t) for t in (out, x_adv, grad, x))
    index = _flat_index(out4, [xa4, g4, x4], e)
    variant = variant or (1 if index is None else 2)
    e_arg = x4 if e is None else e
    n = out.numel()
    block = block or (BLOCK_PIXELS if variant == 3 else BLOCK)
    int64 = max(n + block, *(_extent(t) for t in (out4, xa4, g4, x4, e_arg))) > INT32_LIMIT
    scalars = (float(alpha), eps_hi, eps_lo)
    if variant == 1:
        _step_strided[(triton.cdiv(n, block),)](
            out4, xa4, g4, x4, e_arg, n, *scalars, *_strided_args(out4, [out4, xa4, g4, x4, e_arg]),
            EPS=kind, BLOCK=block, INT64=int64)
    elif variant == 2:
        if index is None:
            raise ValueError("variant 2 needs out, x_adv, grad and x in one dense NCHW or channels_last layout "
                             "and eps a scalar, one element, a map of that layout or a (B, 1, H, W) plane")
        _, c, h, w = out4.shape
        plane = index in (INDEX_PLANE_NCHW, INDEX_PLANE_NHWC)
        _step_flat[(triton.cdiv(n, block),)](
            out4, xa4, g4, x4, e_arg, n, *scalars, C=c if plane else 1, HW=h * w if plane else 1,
            EPS=kind, INDEX=index, BLOCK=block, INT64=int64)
    elif variant == 3:
        if index not in (INDEX_PLANE_NCHW, INDEX_PLANE_NHWC):
            raise ValueError("variant 3 needs out, x_adv, grad and x in one dense NCHW or channels_last layout "
                             "and eps a (B, 1, H, W) plane")
        b, c, h, w = out4.shape
        _step_pixels[(triton.cdiv(b * h * w, block),)](
            out4, xa4, g4, x4, e_arg, b * h * w, *scalars, C=c, HW=h * w, C_PAD=triton.next_power_of_2(c),
            CHANNELS_LAST=index == INDEX_PLANE_NHWC, EPS=kind, BLOCK_P=block, INT64=int64)
    else:
        raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")
    return out


def uniform_start(out: torch.Tensor, u: torch.Tensor, x: torch.Tensor, eps: Eps,
                  block: int | None = None) -> torch.Tensor:
    """Write clip(x + (2u - 1) eps, 0, 1) into ``out`` (x's shape, any layout) and return it."""
    if out.numel() == 0:
        return out
    kind, e, eps_hi, eps_lo = _eps_args(eps, x.shape)
    out4, u4, x4 = (_as4d(t) for t in (out, u, x))
    e_arg = x4 if e is None else e
    n = out.numel()
    block = block or BLOCK
    int64 = max(n + block, *(_extent(t) for t in (out4, u4, x4, e_arg))) > INT32_LIMIT
    _start_strided[(triton.cdiv(n, block),)](
        out4, u4, x4, e_arg, n, eps_hi, eps_lo, *_strided_args(out4, [out4, u4, x4, e_arg]),
        EPS=kind, BLOCK=block, INT64=int64, enable_fp_fusion=False)
    return out
