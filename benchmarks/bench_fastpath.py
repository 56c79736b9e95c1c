"""The fast path at the paper's batch size, measured side by side in one run: attack, training, refresh, syncs.

    python benchmarks/bench_fastpath.py --data-dir data --dataset cifar10           # GPU: ResNet-18, CIFAR-10
    python benchmarks/bench_fastpath.py --small                                     # CPU harness check

1. Attack: milliseconds per PGD-10 (ResNet-18, bf16 autocast on CUDA, channels_last, uint8 budget levels) at
   each --batches, eager (``attacks.pgd``, fused Triton step) against the whole attack compiled as one graph
   (``attacks.graphed``) in the default mode and in ``reduce-overhead`` (CUDA graphs); the fraction of
   elements where the compiled attack's output differs from the eager one's is reported beside.
2. Training: images/s of AT and PART (mask-freq 10, the refresh amortised) per variant (``eager``: the
   plain loop; ``fast``: ``--compile --compile-attack --compile-mode reduce-overhead``) on the first
   --train-n training images, the first epoch (compilation) not measured (``bench_train.throughput``).
3. The whole-split mask refresh (native GradCAM, the training precision) on every training image.
4. Host synchronisations per epoch of the fast AT loop: ``torch.cuda.set_sync_debug_mode("warn")`` while
   the epochs run; the loop reads its sums once an epoch (expected: 2 per epoch).
Every figure is written as soon as it is measured (JSON and Markdown in --results), so a run stopped by a
time limit keeps what it measured; the card's name is in both files.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from bench_train import throughput  # noqa: E402
from common import device_name, median, slug, synchronize, timed  # noqa: E402

import fastpart.training as training  # noqa: E402
from fastpart.attacks.graphed import graphed_pgd  # noqa: E402
from fastpart.attacks.pgd import pgd  # noqa: E402
from fastpart.cli import main as cli  # noqa: E402
from fastpart.config import TrainConfig  # noqa: E402
from fastpart.data.sources import file_checksum  # noqa: E402
from fastpart.data.splitfiles import load_manifest, read_split, split_path  # noqa: E402
from fastpart.kernels import EpsLevels  # noqa: E402
from fastpart.models import create_model  # noqa: E402
from fastpart.objectives import ce_attack  # noqa: E402
from fastpart.part import MaskSettings, split_levels  # noqa: E402

EPS, EPS_LOW, ALPHA, STEPS = 8 / 255, 7 / 255, 2 / 255, 10
FAST = {"compile": True, "compile_attack": True, "compile_mode": "reduce-overhead"}
VARIANTS = {"eager": {}, "fast": FAST}


class Report:
    """Rows of every section, rewritten to JSON and Markdown after each measurement."""

    def __init__(self, folder: Path, device: torch.device, settings: dict[str, Any]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.device, self.settings = device_name(device), settings
        self.json = folder / f"fastpath-{slug(self.device)}.json"
        self.md = self.json.with_suffix(".md")
        self.sections: dict[str, list[dict[str, Any]]] = {}

    def add(self, section: str, row: dict[str, Any], columns: list[str]) -> None:
        self.sections.setdefault(section, []).append(row)
        print(f"{section}: {row}", flush=True)
        record = {"benchmark": "fastpath", "device": self.device, "torch": torch.__version__,
                  "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **self.settings, "sections": self.sections}
        self.json.write_text(json.dumps(record, indent=2) + "\n")
        lines = [f"# Fast path on {self.device} (torch {torch.__version__})", ""]
        for name, rows in self.sections.items():
            keys = [c for c in dict.fromkeys(k for r in rows for k in r)]
            lines += [f"## {name}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows] + [""]
        self.md.write_text("\n".join(lines))


def subset(data_dir: str, dataset: str, n: int, out: Path) -> str:
    """A converted dataset holding the first ``n`` training images (npz) and the whole test split."""
    train = read_split(split_path(data_dir, dataset, "train"))
    folder = out / dataset
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "train.npz", images=train.images[:n], labels=train.labels[:n])
    test_file = split_path(data_dir, dataset, "test")
    (folder / f"test{test_file.suffix}").write_bytes(test_file.read_bytes())
    manifest = load_manifest(Path(data_dir) / dataset)
    manifest["splits"]["train"].update(count=min(n, len(train.labels)), file="train.npz", sha256=file_checksum(folder / "train.npz", "sha256"))
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return str(out)


def attacks(report: Report, model_name: str, batches: list[int], device: torch.device, repeats: int) -> None:
    on_gpu = device.type == "cuda"
    autocast = torch.bfloat16 if on_gpu else None
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=10).to(device).eval()
    if on_gpu:
        model = model.to(memory_format=torch.channels_last)
    columns = ["batch", "attack", "ms_per_attack", "speedup_vs_eager", "compile_s", "differing_fraction"]
    for batch in batches:
        gen = torch.Generator(device).manual_seed(0)
        x = torch.rand(batch, 3, 32, 32, generator=gen, device=device).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (batch,), generator=gen, device=device)
        eps = EpsLevels((torch.rand(batch, 1, 32, 32, generator=gen, device=device) < 0.3).to(torch.uint8), EPS, EPS_LOW)

        def eager():
            return pgd(model, x, y, eps, ALPHA, STEPS, generator=torch.Generator(device).manual_seed(1),
                       autocast_dtype=autocast, check_inputs=False)  # as training calls it

        reference = eager()
        eager_s = median(timed(eager, device, warmup=1, repeats=repeats))
        report.add("attack", {"batch": batch, "attack": "eager", "ms_per_attack": round(1000 * eager_s, 2),
                              "speedup_vs_eager": 1.0}, columns)
        for mode in ("default", "reduce-overhead"):
            def fast(mode=mode):
                return graphed_pgd(model, x, y, eps, ALPHA, STEPS, ce_attack, None,
                                   generator=torch.Generator(device).manual_seed(1), autocast_dtype=autocast, mode=mode)

            start = time.perf_counter()
            try:
                out = fast()
            except Exception as exc:  # an older torch may not trace autograd.grad: record it, go on
                report.add("attack", {"batch": batch, "attack": f"one graph ({mode})",
                                      "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}, columns)
                continue
            synchronize(device)
            compile_s = time.perf_counter() - start
            seconds = median(timed(fast, device, warmup=2, repeats=repeats))
            report.add("attack", {"batch": batch, "attack": f"one graph ({mode})",
                                  "ms_per_attack": round(1000 * seconds, 2),
                                  "speedup_vs_eager": round(eager_s / seconds, 2), "compile_s": round(compile_s, 1),
                                  "differing_fraction": float((out != reference).float().mean())}, columns)


def count_syncs(cfg: TrainConfig, device: torch.device) -> dict[str, Any]:
    """Host synchronisations CUDA reports while the epochs of ``cfg`` run (warn mode)."""
    real = training.train_epoch
    seen: list[int] = []

    def counting(*args, **kwargs):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                return real(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("default")
                seen.append(sum("synchroniz" in str(w.message) for w in caught))

    training.train_epoch = counting
    try:
        training.train(cfg)
    finally:
        training.train_epoch = real
    return {"syncs_per_epoch": seen}


def build_parser() -> argparse.ArgumentParser:
    """The options of this benchmark (run_all's commands are checked against them)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", help="converted data (default: shapes generated into a temporary folder)")
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--small", action="store_true", help="CPU harness check: shapes, width-8 net, tiny sizes")
    parser.add_argument("--model", help="default: resnet18_cifar (resnet18_cifar_w8 with --small)")
    parser.add_argument("--batches", type=int, nargs="+", help="default: 128 512 (16 with --small)")
    parser.add_argument("--train-n", type=int, default=20000, help="training images of the throughput runs")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of each throughput run (the first is compile)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sections", nargs="+", default=["attack", "train", "refresh", "syncs"],
                        choices=["attack", "train", "refresh", "syncs"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--results", type=Path, default=common.RESULTS, help="folder for the JSON and Markdown")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    device = torch.device(args.device)
    model = args.model or ("resnet18_cifar_w8" if args.small else "resnet18_cifar")
    batches = args.batches or ([16] if args.small else [128, 512])
    report = Report(args.results, device, {"model": model, "dataset": "shapes" if args.small else args.dataset,
                                           "steps": STEPS, "train_n": args.train_n})
    with tempfile.TemporaryDirectory() as tmp:
        if args.small or args.data_dir is None:
            data_dir, dataset = str(Path(tmp) / "data"), "shapes"
            cli(["convert", "shapes", "--n-train", str(min(args.train_n, 256)), "--n-test", "64", "--out", data_dir,
                 "--format", "npz"])
        else:
            data_dir, dataset = args.data_dir, args.dataset
        if "attack" in args.sections:
            attacks(report, model, batches, device, args.repeats)
        sub = subset(data_dir, dataset, args.train_n, Path(tmp) / "subset")
        base = dict(dataset=dataset, data_dir=sub, model=model, epochs=args.epochs, eval_n=256, eval_steps=1,
                    device=args.device, burn_in=0, mask_freq=10, eval_every=0)
        if "train" in args.sections:
            columns = ["batch", "variant", "run", "images_per_s", "vs_eager_at", "part_cost_vs_at", "mask_refresh_s"]
            for batch in batches:
                eager_at = None
                for variant, flags in VARIANTS.items():
                    at = None
                    for method in ("at", "part"):
                        cfg = TrainConfig(method=method, batch_size=batch, out=str(Path(tmp) / f"{variant}{method}{batch}"),
                                          **base, **flags)
                        try:
                            row = {"batch": batch, "variant": variant, "run": method, **throughput(cfg)}
                        except Exception as exc:  # record it, measure the rest
                            report.add("train", {"batch": batch, "variant": variant, "run": method,
                                                 "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"},
                                       columns)
                            continue
                        at = at if method == "part" else row["images_per_s"]
                        eager_at = eager_at or row["images_per_s"]
                        row["vs_eager_at"] = round(row["images_per_s"] / eager_at, 2)
                        if at:
                            row["part_cost_vs_at"] = round(at / row["images_per_s"], 3)  # time of PART / time of AT
                        report.add("train", row, columns)
        if "refresh" in args.sections:
            arrays = read_split(split_path(data_dir, dataset, "train"))
            images, labels = torch.from_numpy(arrays.images).to(device), torch.from_numpy(arrays.labels).to(device)
            torch.manual_seed(0)
            net = create_model(model, num_classes=int(labels.max()) + 1).to(device).eval()
            if device.type == "cuda":
                net = net.to(memory_format=torch.channels_last)
            precision = "bf16" if device.type == "cuda" else "fp32"
            split_levels(net, images[:1024], labels[:1024], MaskSettings(), precision)  # warm-up
            seconds = median(timed(lambda: split_levels(net, images, labels, MaskSettings(), precision), device,
                                   warmup=0, repeats=3))
            report.add("refresh", {"images": len(labels), "precision": precision, "seconds": round(seconds, 3),
                                   "images_per_s": round(len(labels) / seconds)}, ["images", "seconds"])
        if "syncs" in args.sections and device.type == "cuda":
            cfg = TrainConfig(method="at", batch_size=batches[0], out=str(Path(tmp) / "syncs"), **{**base, "epochs": 2},
                              **FAST)
            found = count_syncs(cfg, device)
            report.add("syncs", {"run": "fast at", "batch": batches[0], "syncs_per_epoch": found["syncs_per_epoch"]},
                       ["run", "syncs_per_epoch"])
    print(report.md.read_text())
    print(f"wrote {report.json} and {report.md}")


if __name__ == "__main__":
    main()
