"""The fused PGD step and uniform start: every backend against the plain-torch reference, element by element.

Runs on CUDA when present, otherwise on CPU with the Triton kernels in Triton's interpreter
(TRITON_INTERPRET=1, set by conftest.py); sizes stay small because the interpreter is slow.

Tolerance: none. float32 results are bit-identical to the reference, and bfloat16/float16 results are
identical to the reference's (float32 arithmetic, then one round-to-nearest-even to the output dtype).
NaN compares equal to NaN, and kernel outputs are first filled with NaN, so an element the kernel does not
write fails the comparison.
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest
import torch

from fastpart.errors import FastpartError
from fastpart.kernels import (
    KERNEL_BACKENDS,
    EpsLevels,
    pgd_step_,
    pgd_step_reference,
    resolve_backend,
    uniform_start,
    uniform_start_reference,
)
from fastpart.kernels.reference import eps_tensor_or_float, start_dtype

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ALPHA = 2 / 255
F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16
EPS_VALUES = torch.tensor([0.0, 7 / 255, 8 / 255, 16 / 255])
EPS_KINDS = ("scalar", "zero", "one", "map", "plane", "levels1", "levels3", "levels_low0")
LAYOUTS = {  # channels_last for (x_adv, grad, x, eps)
    "contiguous": (False, False, False, False),
    "channels_last": (True, True, True, True),
    "x_channels_last": (False, False, True, False),
    "mixed": (True, False, True, False),
    "eps_channels_last": (False, False, False, True),
}


@pytest.fixture(scope="module")
def ts() -> ModuleType:
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    if DEVICE.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no CUDA device and TRITON_INTERPRET is not 1")
    from fastpart.kernels import triton_step

    return triton_step


def in_layout(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    t = t.to(DEVICE)
    return t.contiguous(memory_format=torch.channels_last) if channels_last and t.ndim == 4 else t.contiguous()


def make_eps(kind: str, shape: tuple[int, ...], gen: torch.Generator, channels_last: bool = False):
    plane = shape[:-3] + (1,) + shape[-2:] if len(shape) >= 3 else shape
    if kind == "scalar":
        return 8 / 255
    if kind == "zero":
        return 0.0
    if kind == "one":
        return torch.tensor(8 / 255, device=DEVICE)
    if kind in ("map", "plane", "map_f16", "plane_bf16"):
        values = EPS_VALUES[torch.randint(0, 4, shape if kind.startswith("map") else plane, generator=gen)]
        dtype = {"map_f16": F16, "plane_bf16": BF16}.get(kind, F32)
        return in_layout(values.to(dtype), channels_last)
    levels = torch.randint(0, 2, shape if kind == "levels3" else plane, generator=gen, dtype=torch.uint8)
    return EpsLevels(in_layout(levels, channels_last), 8 / 255, 0.0 if kind == "levels_low0" else 7 / 255)


def make_inputs(shape: tuple[int, ...], eps_kind: str, dtypes=(F32, F32, F32), layouts=(False,) * 4, seed: int = 0):
    """(x_adv, grad, x, eps) with pixels at 0 and 1, x_adv exactly on the box edges, and zero gradients."""
    gen = torch.Generator().manual_seed(seed)
    eps = make_eps(eps_kind, shape, gen, layouts[3])
    x = torch.rand(shape, generator=gen)
    x.view(-1)[0::11] = 0.0
    x.view(-1)[1::11] = 1.0
    x = x.to(dtypes[2]).float()
    e = eps_tensor_or_float(eps)
    e = (e.float().cpu() if isinstance(e, torch.Tensor) else torch.tensor(e)).expand(shape)
    x_adv = (x + (torch.rand(shape, generator=gen) * 2 - 1) * 0.05).clamp(0, 1)
    edge = torch.arange(x.numel()).view(shape) % 7
    x_adv = torch.where(edge == 3, x + e, torch.where(edge == 4, x - e, x_adv))
    grad = torch.randn(shape, generator=gen)
    grad.view(-1)[2::5] = 0.0
    tensors = [in_layout(t.to(d), cl) for t, d, cl in zip((x_adv, grad, x), dtypes, layouts)]
    return (*tensors, eps)


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


def check_step(ts: ModuleType, x_adv, grad, x, eps, variant: int | None = None, block: int | None = None) -> None:
    """The kernel into a NaN-filled buffer and in place on a copy of x_adv, both equal to the reference."""
    expected = pgd_step_reference(x_adv, grad, x, eps, ALPHA)
    out = torch.full_like(x_adv, math.nan)
    assert ts.pgd_step(x_adv, grad, x, eps, ALPHA, out=out, variant=variant, block=block) is out
    assert_same(out, expected)
    in_place = x_adv.clone()
    assert ts.pgd_step(in_place, grad, x, eps, ALPHA, variant=variant, block=block) is in_place
    assert_same(in_place, expected)


# ---------------------------------------------------------------------------------------------
# The Triton kernels against the reference
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 3, 17, 23), (1, 3, 5, 7)])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("eps_kind", EPS_KINDS)
def test_float32_step_is_bit_exact(ts, shape, layout, eps_kind):
    check_step(ts, *make_inputs(shape, eps_kind, layouts=LAYOUTS[layout]))


@pytest.mark.parametrize("shape, eps_kinds", [
    ((1, 1, 1, 1), ("scalar", "map", "plane", "levels1")),
    ((3, 3, 1, 1), ("scalar", "map", "plane", "levels1", "levels3")),
    ((2, 1, 6, 5), ("map", "plane", "levels1")),
    ((4, 5, 3, 3), ("map", "plane", "levels1", "levels3")),
    ((3, 7, 9), ("scalar", "map", "levels3")),
    ((37,), ("scalar", "map")),
])
@pytest.mark.parametrize("channels_last", [False, True])
def test_tiny_and_odd_shapes(ts, shape, eps_kinds, channels_last):
    for eps_kind in eps_kinds:
        check_step(ts, *make_inputs(shape, eps_kind, layouts=(channels_last,) * 4))


@pytest.mark.parametrize("dtypes", [(BF16, BF16, BF16), (F16, F16, F16), (F32, BF16, F32), (F32, F16, BF16),
                                    (BF16, F32, F32), (F16, BF16, F32)], ids=lambda d: "-".join(map(str, d)))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "mixed"])
def test_low_precision_equals_float32_math_rounded_once(ts, dtypes, layout):
    for eps_kind in ("scalar", "map_f16", "plane_bf16", "levels1", "levels3"):
        check_step(ts, *make_inputs((2, 3, 9, 13), eps_kind, dtypes, LAYOUTS[layout], seed=1))


@pytest.mark.parametrize("variant", [1, 2, 3])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 17, 23), (1, 5, 3, 7)])
def test_each_variant_on_the_channel_shared_budget(ts, variant, channels_last, shape):
    for eps_kind in ("plane", "levels1", "plane_bf16"):
        inputs = make_inputs(shape, eps_kind, (F32, BF16, F32), (channels_last,) * 4, seed=2)
        check_step(ts, *inputs, variant=variant)
        check_step(ts, *inputs, variant=variant, block=64)


def test_variants_2_and_3_refuse_what_they_do_not_cover(ts):
    x_adv, grad, x, eps = make_inputs((2, 3, 4, 5), "plane", layouts=LAYOUTS["mixed"])
    with pytest.raises(ValueError, match="variant 2"):
        ts.pgd_step(x_adv, grad, x, eps, ALPHA, variant=2)
    x_adv, grad, x, eps = make_inputs((2, 3, 4, 5), "map")
    with pytest.raises(ValueError, match="variant 3"):
        ts.pgd_step(x_adv, grad, x, eps, ALPHA, variant=3)


def test_flat_layout_and_eps_index_are_recognised(ts):
    def index(shape, eps_kind, layout):
        x_adv, grad, x, eps = make_inputs(shape, eps_kind, layouts=LAYOUTS[layout])
        _, e, _, _ = ts._eps_args(eps, x.shape)
        return ts._flat_index(x_adv, [x_adv, grad, x], e)

    assert index((2, 3, 4, 5), "scalar", "contiguous") == ts.INDEX_SAME
    assert index((2, 3, 4, 5), "map", "channels_last") == ts.INDEX_SAME
    assert index((2, 3, 4, 5), "one", "contiguous") == ts.INDEX_ZERO
    assert index((2, 3, 4, 5), "plane", "contiguous") == ts.INDEX_PLANE_NCHW
    assert index((2, 3, 4, 5), "levels1", "channels_last") == ts.INDEX_PLANE_NHWC
    assert index((2, 3, 4, 5), "levels3", "x_channels_last") is None
    assert index((2, 3, 4, 5), "map", "eps_channels_last") is None


def test_output_in_another_layout(ts):
    x_adv, grad, x, eps = make_inputs((2, 3, 6, 7), "levels1")
    out = torch.full_like(x_adv, math.nan).contiguous(memory_format=torch.channels_last)
    ts.pgd_step(x_adv, grad, x, eps, ALPHA, out=out)
    assert_same(out, pgd_step_reference(x_adv, grad, x, eps, ALPHA))


def test_64_bit_indexing_path(ts, monkeypatch):
    monkeypatch.setattr(ts, "INT32_LIMIT", 0)
    for variant in (1, 2, 3):
        check_step(ts, *make_inputs((2, 3, 5, 7), "levels1", layouts=LAYOUTS["channels_last"]), variant=variant)
    _, _, x, eps = make_inputs((2, 3, 5, 7), "plane")
    u = torch.rand(x.shape, device=DEVICE)
    assert_same(ts.uniform_start(torch.full_like(x, math.nan), u, x, eps), uniform_start_reference(x, eps, u))


def test_edge_values(ts):
    x = torch.tensor([0.5, 0.5, 0.5, 0.0, 1.0, 0.25, 0.5, 0.5], device=DEVICE).view(1, 1, 2, 4)
    x_adv = torch.tensor([0.75, 0.75, 0.25, 0.0, 1.0, 0.25, 0.625, 0.9], device=DEVICE).view(1, 1, 2, 4)
    grad = torch.tensor([1.0, -1.0, -1.0, -3.0, 2.0, 0.0, 0.0, -0.0], device=DEVICE).view(1, 1, 2, 4)
    expected = torch.tensor([0.75, 0.625, 0.25, 0.0, 1.0, 0.25, 0.625, 0.75], device=DEVICE).view(1, 1, 2, 4)
    for eps in (0.25, torch.full_like(x, 0.25), EpsLevels(torch.ones_like(x, dtype=torch.uint8), 0.25, 0.0)):
        out = ts.pgd_step(x_adv, grad, x, eps, 0.125, out=torch.full_like(x, math.nan))
        assert_same(out, expected)
        assert_same(out, pgd_step_reference(x_adv, grad, x, eps, 0.125))
    assert_same(ts.pgd_step(x_adv, grad, x, 0.0, 0.125, out=torch.empty_like(x)), x)


def test_nan_in_x_adv_propagates_and_a_nan_gradient_does_not_move(ts):
    x_adv, grad, x, eps = make_inputs((1, 3, 4, 4), "plane")
    x_adv.view(-1)[5] = math.nan
    grad.view(-1)[9] = math.nan
    out = ts.pgd_step(x_adv, grad, x, eps, ALPHA, out=torch.empty_like(x_adv))
    assert_same(out, pgd_step_reference(x_adv, grad, x, eps, ALPHA))
    assert out.view(-1)[5].isnan() and not out.view(-1)[9].isnan()
    still = pgd_step_reference(x_adv, torch.zeros_like(grad), x, eps, ALPHA)
    assert out.view(-1)[9] == still.view(-1)[9]


@pytest.mark.parametrize("x_dtype", [F32, BF16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "mixed"])
def test_uniform_start_kernel_matches_reference(ts, x_dtype, layout):
    for eps_kind in ("scalar", "map", "plane", "levels1", "levels3"):
        _, _, x, eps = make_inputs((2, 3, 9, 13), eps_kind, (F32, F32, x_dtype), LAYOUTS[layout], seed=3)
        u = in_layout(torch.rand(x.shape, generator=torch.Generator().manual_seed(4)), LAYOUTS[layout][0])
        expected = uniform_start_reference(x, eps, u)
        out = torch.full_like(x, math.nan, dtype=start_dtype(x, eps))
        assert_same(ts.uniform_start(out, u, x, eps), expected)


# ---------------------------------------------------------------------------------------------
# The reference and the dispatch
# ---------------------------------------------------------------------------------------------

def test_reference_is_the_former_float32_pgd_step():
    x_adv, grad, x, _ = make_inputs((2, 3, 8, 8), "scalar")
    gen = torch.Generator()
    for eps in (8 / 255, make_eps("map", (2, 3, 8, 8), gen), make_eps("plane", (2, 3, 8, 8), gen)):
        former = torch.clamp(torch.min(torch.max(x_adv + ALPHA * grad.sign(), x - eps), x + eps), 0.0, 1.0)
        assert_same(pgd_step_reference(x_adv, grad, x, eps, ALPHA), former)


def test_backends_and_auto_choice():
    assert KERNEL_BACKENDS == ("auto", "reference", "triton", "compile")
    x_adv, grad, x, eps = (*(t.cpu() for t in make_inputs((1, 3, 4, 4), "plane")[:3]), 8 / 255)
    assert resolve_backend("auto", [x_adv, grad, x], eps) == "reference"
    if torch.cuda.is_available() and importlib.util.find_spec("triton") is not None:
        assert resolve_backend("auto", [t.cuda() for t in (x_adv, grad, x)], eps) == "triton"


@pytest.mark.parametrize("backend", ["auto", "reference", "triton"])
def test_dispatch_updates_in_place(backend, request):
    if backend == "triton":
        request.getfixturevalue("ts")
    x_adv, grad, x, eps = make_inputs((2, 3, 7, 5), "levels1", layouts=LAYOUTS["channels_last"])
    expected = pgd_step_reference(x_adv, grad, x, eps, ALPHA)
    pointer, strides = x_adv.data_ptr(), x_adv.stride()
    assert pgd_step_(x_adv, grad, x, eps, ALPHA, backend=backend) is x_adv
    assert x_adv.data_ptr() == pointer and x_adv.stride() == strides
    assert_same(x_adv, expected)


def test_compile_backend():
    """One compiled step and one compiled start. On CUDA, inductor may contract (2u - 1) eps + x into a
    fused multiply-add, so the start is allowed one unit in the last place there."""
    x_adv, grad, x, eps = make_inputs((2, 3, 5, 7), "levels1")
    expected = pgd_step_reference(x_adv, grad, x, eps, ALPHA)
    pointer = x_adv.data_ptr()
    assert pgd_step_(x_adv, grad, x, eps, ALPHA, backend="compile") is x_adv
    assert x_adv.data_ptr() == pointer
    assert_same(x_adv, expected)
    start = uniform_start(x, eps, torch.Generator(DEVICE).manual_seed(6), backend="compile")
    expected = uniform_start(x, eps, torch.Generator(DEVICE).manual_seed(6), backend="reference")
    if DEVICE.type == "cpu":
        assert_same(start, expected)
    else:
        torch.testing.assert_close(start, expected, rtol=0, atol=2**-23)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_uniform_start_is_the_former_random_start(backend, request):
    if backend == "triton":
        request.getfixturevalue("ts")
    _, _, x, eps = make_inputs((2, 3, 9, 13), "plane")
    start = uniform_start(x, eps, torch.Generator(DEVICE).manual_seed(5), backend=backend)
    noise = torch.rand(x.shape, generator=torch.Generator(DEVICE).manual_seed(5), device=DEVICE).mul_(2).sub_(1)
    assert_same(start, torch.clamp(x + noise * eps, 0.0, 1.0))
    assert ((start - x).abs() <= eps).all()


def test_dispatch_rejects_bad_arguments():
    x_adv, grad, x, eps = make_inputs((2, 3, 4, 4), "plane")
    with pytest.raises(FastpartError, match="unknown kernel backend"):
        pgd_step_(x_adv, grad, x, eps, ALPHA, backend="cuda")
    with pytest.raises(FastpartError, match="one shape"):
        pgd_step_(x_adv, grad[:1], x, eps, ALPHA)
    with pytest.raises(FastpartError, match="does not broadcast"):
        pgd_step_(x_adv, grad, x, eps[:, :, :2], ALPHA)
    with pytest.raises(FastpartError, match="expanded view"):
        pgd_step_(x[:1].expand_as(x), grad, x, eps, ALPHA)
    with pytest.raises(FastpartError, match="dtype torch.float64"):
        pgd_step_(x_adv.double(), grad, x, eps, ALPHA, backend="triton")


def test_triton_backend_errors_without_interpreter_or_triton():
    """In a fresh interpreter: CPU tensors without TRITON_INTERPRET, with it set too late, and without triton."""
    script = textwrap.dedent("""
        import os, sys, torch
        from fastpart.errors import FastpartError
        import fastpart.kernels as k
        x = torch.rand(1, 3, 4, 4)
        try:
            k.pgd_step_(x.clone(), x, x, 0.1, 0.1, backend="triton")
        except FastpartError as e:
            print("no-interpreter:", e)
        from fastpart.kernels import triton_step
        os.environ["TRITON_INTERPRET"] = "1"
        try:
            k.pgd_step_(x.clone(), x, x, 0.1, 0.1, backend="triton")
        except FastpartError as e:
            print("too-late:", e)
        sys.modules["triton"] = None
        k._triton_importable.cache_clear()
        assert k.resolve_backend("auto", [x, x, x], 0.1) == "reference"
        try:
            k.pgd_step_(x.clone(), x, x, 0.1, 0.1, backend="triton")
        except FastpartError as e:
            print("no-triton:", e)
    """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=root, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "no-interpreter: the triton kernel backend cannot run here: CPU tensors need" in result.stdout
    assert "TRITON_INTERPRET=1" in result.stdout
    assert "too-late: the triton kernel backend cannot run here: TRITON_INTERPRET=1 was set after" in result.stdout
    assert "no-triton: the triton kernel backend cannot run here: triton is not installed" in result.stdout
