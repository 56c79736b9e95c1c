"""CAM cost: milliseconds per batch of fastpart's native CAMs against the pytorch-grad-cam library.

Every (method, backend) pair computes the maps of the same random batch for the model's predicted classes;
each time is the median of --repeats calls after one warm-up call. The native GradCAM row takes the
GAP shortcut (GradCAM = CAM for a global-average-pool + linear head); LayerCAM goes through autograd.
Before timing, each native map is checked against the library's (column ``max_abs_diff``).

    python benchmarks/bench_cam.py [--device cuda] [--model resnet18_cifar] [--batches 64 512]
    python benchmarks/bench_cam.py --small          # width-8 ResNet-18, batch 64, for CPU
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import device_name, median, table, timed, write_result  # noqa: E402

from fastpart.part.cam import class_activation_maps, predicted_targets  # noqa: E402
from fastpart.models import create_model  # noqa: E402

RUNS = [("gradcam", "native"), ("gradcam", "grad-cam"), ("layercam", "native"), ("layercam", "grad-cam")]


def build_parser() -> argparse.ArgumentParser:
    """The options of this benchmark."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="CPU sizes: resnet18_cifar_w8, batch 64")
    parser.add_argument("--model", help="default: resnet18_cifar (resnet18_cifar_w8 with --small)")
    parser.add_argument("--batches", type=int, nargs="+", help="default: 64 512 (64 with --small)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--results", type=Path, default=common.RESULTS, help="folder for the JSON result")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    common.RESULTS = args.results
    device = torch.device(args.device)
    name = args.model or ("resnet18_cifar_w8" if args.small else "resnet18_cifar")
    model = create_model(name, num_classes=10).to(device).eval()
    rows = []
    for batch in args.batches or ([64] if args.small else [64, 512]):
        x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch)).to(device)
        y = predicted_targets(model, x)
        library = {m: class_activation_maps(model, x, y, method=m, backend="grad-cam") for m, _ in RUNS}
        for method, backend in RUNS:
            maps = class_activation_maps(model, x, y, method=method, backend=backend)
            seconds = timed(lambda: class_activation_maps(model, x, y, method=method, backend=backend), device,
                            repeats=args.repeats)
            rows.append({"batch": batch, "method": method, "backend": backend,
                         "ms": round(1e3 * median(seconds), 2),
                         "max_abs_diff": float((maps - library[method]).abs().max())})
    print(f"{name} on {device_name(device)}")
    print(table(rows, ["batch", "method", "backend", "ms", "max_abs_diff"]))
    print(write_result("cam-small" if args.small else "cam", device, {"model": name, "rows": rows}))


if __name__ == "__main__":
    main()
