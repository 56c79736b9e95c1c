"""Loader throughput: images/s of one epoch over CIFAR-sized data (50,000 x 32x32x3), with augmentation.

Reads data/cifar10/train.beton (or .npz) when present, otherwise writes random CIFAR-sized data to a
temporary folder first. Each configuration runs one warm-up epoch, then the median of --repeats.

    python benchmarks/bench_loader.py [--device cuda] [--source data/cifar10/train.beton]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, table, timed, write_result  # noqa: E402

from fastpart.data.convert import write_beton, write_npz  # noqa: E402
from fastpart.data.datasets import SplitData  # noqa: E402
from fastpart.loader import Augment, DeviceLoader  # noqa: E402


def random_cifar(folder: Path, n: int, have_ffcv: bool) -> Path:
    rng = np.random.default_rng(0)
    split = SplitData(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64))
    if have_ffcv:
        write_beton(folder / "train.beton", split)
        return folder / "train.beton"
    write_npz(folder / "train.npz", split)
    return folder / "train.npz"


def epoch(loader: DeviceLoader) -> int:
    seen = 0
    for images, labels, indices in loader:
        seen += len(labels)
    return seen


def build_parser() -> argparse.ArgumentParser:
    """The options of this benchmark (run_all's commands are checked against them)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--source", help=".beton or .npz split (default: data/cifar10/train.*, else random data)")
    parser.add_argument("--n", type=int, default=50_000, help="images when generating random data")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=3)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    device = torch.device(args.device)
    have_ffcv = importlib.util.find_spec("ffcv") is not None

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(args.source) if args.source else next(
            (p for p in (Path("data/cifar10/train.beton"), Path("data/cifar10/train.npz")) if p.is_file()), None)
        if source is None:
            source = random_cifar(Path(tmp), args.n, have_ffcv)
        backends = ["memory"] + (["ffcv"] if have_ffcv and source.suffix == ".beton" else [])
        rows = []
        for backend in backends:
            for batch_size in args.batch_sizes:
                for precision in args.precisions:
                    loader = DeviceLoader(source, batch_size=batch_size, device=device, precision=precision,
                                          backend=backend, augment=Augment(4, True), seed=0)
                    seconds = timed(lambda: epoch(loader), device, warmup=1, repeats=args.repeats)
                    images = len(loader) * batch_size
                    rows.append({"backend": backend, "batch": batch_size, "precision": precision,
                                 "images": images, "seconds": round(median(seconds), 4),
                                 "images_per_s": round(images / median(seconds))})
                    print(f"{backend:6s} batch {batch_size:4d} {precision}: {rows[-1]['images_per_s']:,} img/s", flush=True)
    print(table(rows, ["backend", "batch", "precision", "images", "seconds", "images_per_s"]))
    if not have_ffcv:
        print("ffcv is not installed here: the ffcv backend was not measured")
    path = write_result("loader", device, {"source": str(source), "augment": "crop 4 + flip",
                                           "ffcv_available": have_ffcv, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
