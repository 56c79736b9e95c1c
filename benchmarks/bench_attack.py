"""PGD-10 attack cost: milliseconds per attack on a ResNet-18 batch, per kernel backend, and the step's share.

    python benchmarks/bench_attack.py                       # GPU: resnet18_cifar, batches 128 and 512, bf16 autocast
    python benchmarks/bench_attack.py --small               # CPU harness check: width-8 net, small batches

Each row times whole attacks (eval-mode model, input gradients only, channels_last, the mask-weighted
budget as uint8 levels) with one warm-up attack and the median of --repeats; the step share is the
time of the attack's 10 steps alone (the same step calls, timed apart) over the attack's time.
Without CUDA the triton backend runs in Triton's interpreter and is skipped unless asked for.

``--compiled-model`` adds rows where the model itself is ``torch.compile``d (forward and input-gradient
backward; parameters frozen for the attack so the compiled backward skips their gradients) with the
triton step, at the largest batch only: the compile time is reported apart and left out of the figure.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import median, table, timed, write_result  # noqa: E402

from fastpart.attacks.pgd import pgd  # noqa: E402
from fastpart.kernels import EpsLevels, pgd_step_  # noqa: E402
from fastpart.models import create_model  # noqa: E402
from fastpart.modes import frozen_parameters  # noqa: E402

EPS, EPS_LOW, ALPHA, STEPS = 8 / 255, 7 / 255, 2 / 255, 10


def build_parser() -> argparse.ArgumentParser:
    """The options of this benchmark (run_all's commands are checked against them)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="CPU sizes: resnet18_cifar_w8, batches 16 and 32")
    parser.add_argument("--model", help="default: resnet18_cifar (resnet18_cifar_w8 with --small)")
    parser.add_argument("--batches", type=int, nargs="+")
    parser.add_argument("--backends", nargs="+")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compiled-model", action="store_true", help="also time a torch.compile'd model")
    parser.add_argument("--results", type=Path, default=common.RESULTS, help="folder for the JSON result")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    common.RESULTS = args.results
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    model_name = args.model or ("resnet18_cifar_w8" if args.small else "resnet18_cifar")
    batches = args.batches or ([16, 32] if args.small else [128, 512])
    backends = args.backends or (["reference", "compile", "triton"] if on_gpu else ["reference"])
    if "triton" in backends and not on_gpu and os.environ.get("TRITON_INTERPRET") != "1":
        os.environ["TRITON_INTERPRET"] = "1"
    autocast = torch.bfloat16 if on_gpu else None

    torch.manual_seed(0)
    model = create_model(model_name, num_classes=10).to(device).eval()
    if on_gpu:
        model = model.to(memory_format=torch.channels_last)
    rows = []
    for batch in batches:
        gen = torch.Generator(device).manual_seed(0)
        x = torch.rand(batch, 3, 32, 32, generator=gen, device=device).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (batch,), generator=gen, device=device)
        levels = (torch.rand(batch, 1, 32, 32, generator=gen, device=device) < 0.3).to(torch.uint8)
        levels = levels.contiguous(memory_format=torch.channels_last)
        eps = EpsLevels(levels, EPS, EPS_LOW)
        grad = torch.randn_like(x)
        for backend in backends:
            def attack():
                return pgd(model, x, y, eps, ALPHA, STEPS, autocast_dtype=autocast, kernel_backend=backend,
                           check_inputs=False)  # as training calls it: no host sync for the check

            def steps_only():
                x_adv = x.clone()
                for _ in range(STEPS):
                    pgd_step_(x_adv, grad, x, eps, ALPHA, backend=backend)

            attack_s = median(timed(attack, device, warmup=1, repeats=args.repeats))
            step_s = median(timed(steps_only, device, warmup=1, repeats=args.repeats))
            rows.append({"model": model_name, "batch": batch, "backend": backend,
                         "ms_per_attack": round(1000 * attack_s, 2), "ms_in_steps": round(1000 * step_s, 3),
                         "step_share": round(step_s / attack_s, 4),
                         "images_per_s": round(batch / attack_s)})
            print(f"batch {batch} {backend}: {rows[-1]['ms_per_attack']} ms", flush=True)
        if args.compiled_model and batch == max(batches):
            compiled = torch.compile(model)
            backend = "triton" if on_gpu else "reference"

            def attack():
                with frozen_parameters(model):
                    return pgd(compiled, x, y, eps, ALPHA, STEPS, autocast_dtype=autocast, kernel_backend=backend,
                               check_inputs=False)

            start = time.perf_counter()
            attack()
            compile_s = time.perf_counter() - start
            attack_s = median(timed(attack, device, warmup=1, repeats=args.repeats))
            rows.append({"model": model_name + " (compiled)", "batch": batch, "backend": backend,
                         "ms_per_attack": round(1000 * attack_s, 2), "images_per_s": round(batch / attack_s),
                         "compile_s": round(compile_s, 1)})
            print(f"batch {batch} compiled model + {backend}: {rows[-1]['ms_per_attack']} ms "
                  f"(compile {compile_s:.0f} s)", flush=True)
    for row in rows:
        ref = next(r for r in rows if r["batch"] == row["batch"] and r["backend"] == rows[0]["backend"]
                   and r["model"] == model_name)
        row["speedup_vs_" + rows[0]["backend"]] = round(ref["ms_per_attack"] / row["ms_per_attack"], 3)
    columns = ["model", "batch", "backend", "ms_per_attack", "ms_in_steps", "step_share", "images_per_s",
               "speedup_vs_" + rows[0]["backend"], "compile_s"]
    print(table(rows, columns))
    path = write_result("attack", device, {"steps": STEPS, "autocast": str(autocast), "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
