"""PGD step throughput: GB/s of the eager reference, torch.compile and the Triton variants, against copy bandwidth.

Bytes per step are the minimum the step must move: read x_adv, grad, x and the eps tensor and write x_adv,
each in its own dtype (the eager reference moves more, through its temporaries; its GB/s is effective).
Copy bandwidth is measured in the same run: a clone of a large tensor, GB/s = 2 * bytes / time. Each
configuration is checked against the reference (column ``exact``) before it is timed; times are the
median of --repeats runs of --iters steps after one warm-up run (which includes compilation).

Rows: ``reference``/``compile``/``auto`` go through ``fastpart.kernels.pgd_step_``; ``triton-v1``..``v3``
call ``fastpart.kernels.triton_step.pgd_step`` with that variant, where it applies (v3: (B, 1, H, W)
budgets only). eps tensors share the images' memory format.
Without CUDA the Triton rows run in Triton's interpreter (TRITON_INTERPRET=1): use --small, and read the
numbers as a check of the harness, not as performance.

    python benchmarks/bench_kernel.py [--device cuda] [--dtypes fp32 bf16] [--layouts channels_last contiguous]
    python benchmarks/bench_kernel.py --small          # tiny sizes, for CPU
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import device_name, median, synchronize, table, timed, write_result  # noqa: E402

SIZES = {"cifar-128": (128, 3, 32, 32), "cifar-512": (512, 3, 32, 32), "large-64M": (64, 3, 576, 576)}
SMALL_SIZES = {"tiny-2": (2, 3, 8, 8), "tiny-4": (4, 3, 16, 16), "odd-1": (1, 3, 19, 23)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
EPS_KINDS = {"map": "float32 (B, 1, H, W)", "levels": "uint8 (B, 1, H, W)",
             "map3": "float32 (B, 3, H, W)", "levels3": "uint8 (B, 3, H, W)"}
BACKENDS = ("reference", "compile", "auto", "triton-v1", "triton-v2", "triton-v3")
ALPHA, EPS, EPS_LOW = 2 / 255, 8 / 255, 7 / 255


def make_inputs(shape: tuple[int, ...], dtype: torch.dtype, channels_last: bool, eps_kind: str,
                device: torch.device):
    from fastpart.kernels import EpsLevels

    gen = torch.Generator(device).manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.rand(shape, generator=gen, device=device)
    x_adv = (x + (torch.rand(shape, generator=gen, device=device) - 0.5) * (EPS / 2)).clamp(0, 1)
    grad = torch.randn(shape, generator=gen, device=device)
    x, x_adv, grad = (t.to(dtype).contiguous(memory_format=fmt) for t in (x, x_adv, grad))
    b, c, h, w = shape
    important = torch.rand((b, 3 if eps_kind.endswith("3") else 1, h, w), generator=gen, device=device) < 0.3
    important = important.contiguous(memory_format=fmt)
    if eps_kind.startswith("levels"):
        eps = EpsLevels(important.to(torch.uint8), EPS, EPS_LOW)
    else:
        eps = torch.where(important, EPS, EPS_LOW).float()
    return x_adv, grad, x, eps


def step_bytes(x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, eps) -> int:
    e = getattr(eps, "levels", eps)
    return 2 * x_adv.nbytes + grad.nbytes + x.nbytes + (e.nbytes if isinstance(e, torch.Tensor) else 0)


def step_function(backend: str, x_adv, grad, x, eps) -> Callable[[torch.Tensor], object] | None:
    from fastpart.kernels import pgd_step_, triton_unsupported

    if backend.startswith("triton"):
        if triton_unsupported([x_adv, grad, x], eps) is not None:
            return None
        from fastpart.kernels import triton_step

        variant = int(backend[-1])
        return lambda x_adv: triton_step.pgd_step(x_adv, grad, x, eps, ALPHA, variant=variant)
    if backend == "compile":
        torch._dynamo.reset()
    return lambda x_adv: pgd_step_(x_adv, grad, x, eps, ALPHA, backend=backend)


def copy_bandwidth(device: torch.device, nbytes: int, repeats: int) -> float:
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    seconds = median(timed(lambda: src.clone(), device, warmup=2, repeats=repeats))
    return 2 * src.nbytes / seconds / 1e9


def build_parser() -> argparse.ArgumentParser:
    """The options of this benchmark (run_all's commands are checked against them)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="tiny sizes (for CPU and the Triton interpreter)")
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=["fp32"])
    parser.add_argument("--layouts", nargs="+", choices=["channels_last", "contiguous"], default=["channels_last"])
    parser.add_argument("--eps", nargs="+", choices=EPS_KINDS, default=["map", "levels"])
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--iters", type=int, help="steps per timed run (default: 50 on CUDA, 2 on CPU)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--results", type=Path, default=common.RESULTS, help="folder for the JSON result")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    common.RESULTS = args.results
    device = torch.device(args.device)
    if device.type == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from fastpart.kernels import pgd_step_reference

    sizes = SMALL_SIZES if args.small else SIZES
    iters = args.iters or (50 if device.type == "cuda" else 2)
    copy_gbs = copy_bandwidth(device, (16 if args.small else 1024) * 2**20, args.repeats)
    print(f"{device_name(device)}: copy bandwidth {copy_gbs:.1f} GB/s", flush=True)
    rows = []
    for size_name, shape in sizes.items():
        for dtype_name in args.dtypes:
            for layout in args.layouts:
                for eps_kind in args.eps:
                    x_adv, grad, x, eps = make_inputs(shape, DTYPES[dtype_name], layout == "channels_last",
                                                      eps_kind, device)
                    nbytes = step_bytes(x_adv, grad, x, eps)
                    expected = pgd_step_reference(x_adv, grad, x, eps, ALPHA)
                    for backend in args.backends:
                        fn = step_function(backend, x_adv, grad, x, eps)
                        if fn is None:
                            continue
                        check = x_adv.clone()
                        try:
                            fn(check)
                        except ValueError:
                            continue
                        exact = torch.equal(check, expected)
                        work = x_adv.clone()
                        seconds = median(timed(lambda: [fn(work) for _ in range(iters)], device,
                                               warmup=1, repeats=args.repeats)) / iters
                        synchronize(device)
                        gbs = nbytes / seconds / 1e9
                        rows.append({"size": size_name, "shape": "x".join(map(str, shape)), "dtype": dtype_name,
                                     "layout": layout, "eps": eps_kind, "backend": backend,
                                     "us_per_step": round(seconds * 1e6, 1), "MB_per_step": round(nbytes / 1e6, 3),
                                     "GB_s": float(f"{gbs:.3g}"), "pct_copy": float(f"{100 * gbs / copy_gbs:.3g}"),
                                     "exact": exact})
                        print(f"{size_name} {dtype_name} {layout} {eps_kind} {backend}: "
                              f"{rows[-1]['us_per_step']} us, {rows[-1]['GB_s']} GB/s, exact={exact}", flush=True)
    print(table(rows, ["size", "dtype", "layout", "eps", "backend", "us_per_step", "MB_per_step", "GB_s",
                       "pct_copy", "exact"]))
    path = write_result("kernel-small" if args.small else "kernel", device, {
        "copy_GB_s": round(copy_gbs, 2), "iters": iters, "repeats": args.repeats,
        "triton_interpreted": os.environ.get("TRITON_INTERPRET") == "1", "eps_kinds": EPS_KINDS, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
