"""Training throughput of AT vs PART, and the cost of a whole-split mask refresh (native CAM vs grad-cam).

    python benchmarks/bench_train.py                                  # CPU: shapes, width-8 ResNet-18
    python benchmarks/bench_train.py --ae pgd n-fgsm --mask-freqs 10  # PGD-10 vs N-FGSM, AT and PART
    python benchmarks/bench_train.py --dataset cifar10 --data-dir data --model resnet18_cifar --epochs 2

PART runs with no burn-in so that every measured epoch uses masks. The first epoch (compilation,
warm-up) is not measured. Images/s counts training images over the measured epochs' time plus, per
epoch, one whole-split mask refresh divided by the mask frequency (a refresh every N epochs, amortised;
the refresh time is the median of the run's refreshes after the first, or the first when there is one).
--keep DIR leaves the run folders there (e.g. to evaluate the AT run).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import synchronize, table, write_result  # noqa: E402

from fastpart.cli import main as cli  # noqa: E402
from fastpart.config import TRAINING_ATTACKS, TrainConfig  # noqa: E402
from fastpart.data.splitfiles import read_split  # noqa: E402
from fastpart.models import create_model  # noqa: E402
from fastpart.part import MaskSettings, split_levels  # noqa: E402
from fastpart.training import train  # noqa: E402


def throughput(cfg: TrainConfig) -> dict:
    result = train(cfg)
    measured = result.history[1:] or result.history  # the first epoch carries one-off compilation
    refreshes = [h["mask_seconds"] for h in result.history if "mask_seconds" in h]
    refresh = statistics.median(refreshes[1:] or refreshes) if refreshes else 0.0
    per_epoch = refresh / cfg.mask_freq if refreshes and cfg.mask_freq else 0.0
    epochs_s = sum(h["epoch_seconds"] for h in measured)
    as_run = epochs_s + sum(h.get("mask_seconds", 0.0) for h in measured)
    images = sum(h["images"] for h in measured)
    return {"images_per_s": round(images / (epochs_s + len(measured) * per_epoch), 1),
            "epochs_measured": len(measured), "train_images_per_s": round(images / epochs_s, 1),
            "images_per_s_as_run": round(images / as_run, 1),
            "mask_refresh_s": round(refresh, 3) if refreshes else None, "precision": result.config.precision}


def refresh_cost(model_name: str, images: torch.Tensor, labels: torch.Tensor, backend: str, device) -> float:
    """Seconds per 1,000 images of a whole-split GradCAM mask refresh."""
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=int(labels.max()) + 1).to(device).eval()
    settings = MaskSettings(backend=backend)
    split_levels(model, images[:64], labels[:64], settings, "fp32")  # warm-up
    synchronize(device)
    start = time.perf_counter()
    split_levels(model, images, labels, settings, "fp32", batch_size=512)
    synchronize(device)
    return (time.perf_counter() - start) / len(labels) * 1000


def build_parser() -> argparse.ArgumentParser:
    """The options of this benchmark (run_all's commands are checked against them)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="shapes")
    parser.add_argument("--data-dir", help="converted data (default: shapes generated into a temporary folder)")
    parser.add_argument("--n", type=int, default=2000, help="shapes: training images to generate")
    parser.add_argument("--model", default="resnet18_cifar_w8")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-n", type=int, help="train on this many of the split's images (default: all)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--mask-freqs", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--ae", nargs="+", default=["pgd"], choices=TRAINING_ATTACKS,
                        help="training attacks to measure, each for AT and PART (e.g. pgd n-fgsm: PGD-10 AT, PART, "
                             "N-FGSM-AT and N-FGSM-PART side by side); cost_vs_at is against the first one's AT")
    parser.add_argument("--refresh-n", type=int, default=1000, help="images for the refresh-cost measurement")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="train with --compile (torch.compile'd model)")
    parser.add_argument("--keep", type=Path, help="keep the run folders here (default: a temporary folder)")
    parser.add_argument("--skip-refresh-cost", action="store_true", help="skip the native vs grad-cam measurement")
    parser.add_argument("--results", type=Path, default=common.RESULTS, help="folder for the JSON result")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    common.RESULTS = args.results
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir
        if data_dir is None:
            data_dir = str(Path(tmp) / "data")
            cli(["convert", "shapes", "--n-train", str(args.n), "--n-test", "100", "--out", data_dir, "--format", "npz"])
        runs = args.keep or Path(tmp)
        base = dict(dataset=args.dataset, data_dir=data_dir, model=args.model, epochs=args.epochs,
                    batch_size=args.batch_size, eval_n=100, eval_steps=1, device=args.device, burn_in=0,
                    compile=args.compile, train_n=args.train_n)
        rows = []
        for ae in args.ae:
            tag = "" if ae == "pgd" else f" {ae}"
            cfg = TrainConfig(method="at", ae=ae, out=str(runs / f"at{tag.strip()}"), **base)
            rows.append({"run": f"at{tag}", **throughput(cfg)})
            for freq in args.mask_freqs:
                cfg = TrainConfig(method="part", ae=ae, mask_freq=freq, out=str(runs / f"part{freq}{tag.strip()}"), **base)
                rows.append({"run": f"part{tag} mask-freq {freq}", **throughput(cfg)})
        for row in rows:
            row["cost_vs_at"] = round(rows[0]["images_per_s"] / row["images_per_s"], 3)

        split = next(p for p in (Path(data_dir) / args.dataset).glob("train.*"))
        arrays = read_split(split)
        images = torch.from_numpy(arrays.images[: args.refresh_n]).to(device)
        labels = torch.from_numpy(arrays.labels[: args.refresh_n]).to(device)
        refresh = [] if args.skip_refresh_cost else [
            {"backend": b, "seconds_per_1000": round(refresh_cost(args.model, images, labels, b, device), 3)}
            for b in ("native", "grad-cam")]
    print(table(rows, ["run", "images_per_s", "train_images_per_s", "cost_vs_at", "mask_refresh_s", "epochs_measured"]))
    if refresh:
        print(table(refresh, ["backend", "seconds_per_1000"]))
    name = "train" if args.ae == ["pgd"] else "train-" + "-".join(args.ae)
    path = write_result(name, device, {"dataset": args.dataset, "model": args.model, "epochs": args.epochs,
                                        "batch_size": args.batch_size, "compile": args.compile, "ae": args.ae,
                                        "train_n": args.train_n, "runs": rows, "mask_refresh": refresh})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
