"""The speed-up over a released-code-style PART baseline, measured side by side in one run.

The baseline trains PART the way the released research code does, written plainly:

* data: a ``torch.utils.data.DataLoader`` (``num_workers=0``, shuffled) over a small ``Dataset`` that
  holds the uint8 training images in host memory and, per sample in ``__getitem__`` on the CPU, makes
  a PIL image, applies torchvision's ``RandomCrop(size, padding=4)`` and ``RandomHorizontalFlip`` (when
  the dataset's paper settings augment) and ``ToTensor``; every batch is then copied to the device;
* masks: recomputed for every batch on the fly, every epoch, on the batch's (augmented) images, one
  pytorch-grad-cam ``GradCAM`` call per image (target: the predicted class; the library runs a full
  forward and backward pass, parameter gradients included, and returns its map as a NumPy array on the
  host), the map copied back to the device, upsampled bicubically and thresholded as SPEC "The mask"
  steps 3-5 say (z-score per image > tau = 1 -> eps 8/255, else 7/255; a degenerate map -> 8/255
  everywhere). The library is kept from resizing its map itself (with cv2) so that the upsampling is
  the bicubic one; its min-max scaling is kept, which the standardisation cancels;
* attack: eager fp32 PGD-10 with a uniform random start, model in eval mode, ``loss.backward()`` on
  the input (so the parameters receive gradients as well, which are thrown away), sign step,
  per-pixel projection with ``torch.min``/``torch.max``, clamp to [0, 1];
* update: model in train mode, cross-entropy on the adversarial batch, SGD (momentum 0.9, the
  dataset's paper lr and weight decay).

Images/s of the baseline are measured over ``--batches`` batches after one warm-up batch, with the
time spent in each phase, twice: before and after fastpart's runs; the faster of the two is kept (load
from other processes can only slow a measurement down, so this choice favours the baseline). In the same run fastpart trains PART (``fastpart.training.train``, burn-in 0,
``--mask-freqs``, default 1 and 10) on the same data, model and device, measured as bench_train.py
measures it (``bench_train.throughput``): the epochs after the first (which carries one-off costs)
plus a whole-split mask refresh amortised over ``mask_freq`` epochs.
``speedup_vs_baseline`` = fastpart images/s / baseline images/s.

    python benchmarks/bench_baseline.py                      # CPU: generated shapes, resnet18_cifar_w8
    python benchmarks/bench_baseline.py --dataset cifar10 --data-dir data --model resnet18_cifar
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from pytorch_grad_cam import GradCAM
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from bench_train import throughput as fastpart_throughput  # noqa: E402
from common import device_name, synchronize, table, write_result  # noqa: E402

from fastpart.cli import main as cli  # noqa: E402
from fastpart.config import TrainConfig  # noqa: E402
from fastpart.data.splitfiles import read_split, split_path  # noqa: E402
from fastpart.models import create_model, find_cam_layer  # noqa: E402
from fastpart.data.splitfiles import dataset_manifest  # noqa: E402
from fastpart.resolve import paper_defaults  # noqa: E402

EPS, EPS_LOW, STEPS, TAU = 8 / 255, 7 / 255, 10, 1.0
BASELINE = "baseline (released-code style)"


# ---------------------------------------------------------------------------------------------
# Data: a torchvision-style Dataset, augmented per sample on the CPU
# ---------------------------------------------------------------------------------------------


class TrainImages(Dataset):
    """uint8 (N, H, W, 3) images and labels; per sample: PIL image -> crop (zero pad) + flip -> tensor."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, padding: int = 4, augment: bool = True) -> None:
        self.images, self.labels = images, labels
        size = images.shape[1:3]
        steps: list = []
        if augment:
            if padding > 0:
                steps.append(transforms.RandomCrop(size, padding=padding))
            steps.append(transforms.RandomHorizontalFlip())
        self.transform = transforms.Compose(steps + [transforms.ToTensor()])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def endless(loader: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The loader's batches, epoch after epoch (a new shuffle each epoch)."""
    while True:
        yield from loader


# ---------------------------------------------------------------------------------------------
# Masks: one pytorch-grad-cam call per image, via the host
# ---------------------------------------------------------------------------------------------


class LayerResolutionGradCAM(GradCAM):
    """pytorch-grad-cam's GradCAM, its map returned at the CAM layer's resolution (min-max scaled by the
    library, not resized), so that it can be upsampled bicubically afterwards."""

    def get_target_width_height(self, input_tensor: torch.Tensor) -> None:  # the library then skips cv2.resize
        return None


def per_sample_levels(model: nn.Module, layer: nn.Module, x: torch.Tensor, tau: float = TAU,
                      interpolation: str = "bicubic") -> tuple[torch.Tensor, int]:
    """Levels uint8 (B, 1, H, W) (1 = important pixel: eps, 0: eps_low) and the number of degenerate maps.

    Per image: the library's GradCAM for the predicted class (model in eval mode), a NumPy map on the
    host, back to the device, upsampled to H x W, standardised (population std) and thresholded at tau.
    """
    model.eval()
    height, width = x.shape[-2:]
    levels, degenerate = [], 0
    cam = LayerResolutionGradCAM(model=model, target_layers=[layer])
    try:
        for i in range(x.shape[0]):
            heat = cam(input_tensor=x[i : i + 1], targets=None)  # (1, h, w) float32 NumPy, on the host
            heat = torch.from_numpy(heat).to(x.device)
            up = F.interpolate(heat[:, None], size=(height, width), mode=interpolation, align_corners=False)
            mean, std = up.mean(), up.std(correction=0)
            if not bool(torch.isfinite(up).all()) or float(std) == 0.0:
                degenerate += 1
                levels.append(torch.ones_like(up, dtype=torch.uint8))  # eps everywhere: plain AT
            else:
                levels.append(((up - mean) / std > tau).to(torch.uint8))
    finally:
        cam.activations_and_grads.release()  # no hooks left on the layer for the attack and the update
    return torch.cat(levels), degenerate


# ---------------------------------------------------------------------------------------------
# Attack and update, written plainly
# ---------------------------------------------------------------------------------------------


def plain_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, alpha: float,
              steps: int) -> torch.Tensor:
    """Eager fp32 PGD with a per-pixel budget ``eps`` (broadcastable to x); parameters get gradients too."""
    model.eval()
    x_adv = (x + torch.empty_like(x).uniform_(-1, 1) * eps).clamp(0, 1)
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_()
        loss = F.cross_entropy(model(x_adv), y)
        loss.backward()  # the released code's way: the parameters' gradients are computed and never used
        step = x_adv.detach() + alpha * x_adv.grad.sign()
        x_adv = torch.min(torch.max(step, x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


def baseline_step(model: nn.Module, layer: nn.Module, optimizer: torch.optim.Optimizer,
                  batches: Iterator[tuple[torch.Tensor, torch.Tensor]], alpha: float, device: torch.device,
                  phases: dict[str, float]) -> int:
    """One batch of released-code-style PART; adds seconds per phase to ``phases``; returns the batch size."""
    marks = [time.perf_counter()]

    def mark(name: str) -> None:
        synchronize(device)
        marks.append(time.perf_counter())
        phases[name] += marks[-1] - marks[-2]

    images, labels = next(batches)
    x, y = images.to(device), labels.to(device)
    mark("data")
    levels, _ = per_sample_levels(model, layer, x)
    eps = torch.where(levels.bool(), EPS, EPS_LOW).to(x.dtype)  # (B, 1, H, W): the same for R, G and B
    mark("mask")
    x_adv = plain_pgd(model, x, y, eps, alpha, STEPS)
    mark("attack")
    model.train()
    optimizer.zero_grad()
    loss = F.cross_entropy(model(x_adv), y)
    loss.backward()
    optimizer.step()
    mark("update")
    return len(y)


def baseline_throughput(data_dir: str, dataset: str, model_name: str, batch_size: int, batches: int,
                        device: torch.device, seed: int = 0) -> dict:
    manifest = dataset_manifest(data_dir, dataset)
    defaults = paper_defaults(manifest)
    arrays = read_split(split_path(data_dir, dataset, "train"))
    torch.manual_seed(seed)
    data = TrainImages(arrays.images, arrays.labels, defaults.crop_padding, defaults.augment)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, num_workers=0, drop_last=True)
    if len(loader) == 0:
        raise SystemExit(f"need at least --batch-size {batch_size} training images, the split has {len(data)}")
    model = create_model(model_name, num_classes=manifest["num_classes"]).to(device)
    layer = find_cam_layer(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=defaults.lr, momentum=0.9, weight_decay=defaults.weight_decay)
    stream = endless(loader)
    phases = dict.fromkeys(("data", "mask", "attack", "update"), 0.0)
    baseline_step(model, layer, optimizer, stream, defaults.alpha, device, phases)  # warm-up
    phases = dict.fromkeys(phases, 0.0)
    synchronize(device)
    start = time.perf_counter()
    images = sum(baseline_step(model, layer, optimizer, stream, defaults.alpha, device, phases)
                 for _ in range(batches))
    seconds = time.perf_counter() - start
    return {"images_per_s": round(images / seconds, 1), "images": images, "batches": batches,
            "seconds": round(seconds, 3), "phase_seconds": {k: round(v, 3) for k, v in phases.items()},
            "alpha": defaults.alpha, "lr": defaults.lr, "weight_decay": defaults.weight_decay,
            "augment": f"crop pad {defaults.crop_padding} + flip" if defaults.augment else "none"}


# ---------------------------------------------------------------------------------------------
# fastpart, same data, model and device
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The options of this benchmark (run_all's commands are checked against them)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="shapes")
    parser.add_argument("--data-dir", help="converted data (default: shapes generated into a temporary folder)")
    parser.add_argument("--n", type=int, default=1024, help="shapes: training images to generate")
    parser.add_argument("--model", default="resnet18_cifar_w8")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, help="timed baseline batches after one warm-up batch "
                        "(default: 3 on CPU, 10 on CUDA)")
    parser.add_argument("--fastpart-epochs", type=int, default=3, help="fastpart epochs per run (the first is not timed)")
    parser.add_argument("--mask-freqs", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                        help="fastpart's precision (auto: bf16 on CUDA, fp32 on CPU); the baseline is fp32")
    parser.add_argument("--compile", action="store_true", help="fastpart trains a torch.compile'd model "
                        "(the baseline stays eager)")
    parser.add_argument("--fast", action="store_true", help="fastpart trains on its fast path: --compile "
                        "--compile-attack --compile-mode reduce-overhead (the baseline stays eager)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--results", type=Path, default=common.RESULTS, help="folder for the JSON result")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    common.RESULTS = args.results
    device = torch.device(args.device)
    batches = args.batches or (10 if device.type == "cuda" else 3)
    if batches < 1 or args.fastpart_epochs < 1 or min(args.mask_freqs) < 1:
        parser.error("--batches, --fastpart-epochs and --mask-freqs must be >= 1")

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir
        if data_dir is None:
            data_dir = str(Path(tmp) / "data")
            cli(["convert", "shapes", "--n-train", str(args.n), "--n-test", "100", "--out", data_dir,
                 "--format", "npz"])
        print(f"{device_name(device)}: baseline, {batches} batches of {args.batch_size}", flush=True)
        base = baseline_throughput(data_dir, args.dataset, args.model, args.batch_size, batches, device)
        print(f"baseline: {base['images_per_s']} img/s {base['phase_seconds']}", flush=True)
        rows = []
        common_cfg = dict(dataset=args.dataset, data_dir=data_dir, model=args.model, epochs=args.fastpart_epochs,
                          batch_size=args.batch_size, eval_n=100, eval_steps=1, device=args.device,
                          precision=args.precision, burn_in=0, method="part", compile=args.compile or args.fast)
        if args.fast:
            common_cfg.update(compile_attack=True, compile_mode="reduce-overhead")
        for freq in args.mask_freqs:
            cfg = TrainConfig(mask_freq=freq, out=str(Path(tmp) / f"part{freq}"), **common_cfg)
            rows.append({"run": f"fastpart part mask-freq {freq}", **fastpart_throughput(cfg)})
            print(f"{rows[-1]['run']}: {rows[-1]['images_per_s']} img/s", flush=True)
        again = baseline_throughput(data_dir, args.dataset, args.model, args.batch_size, batches, device)
        print(f"baseline again: {again['images_per_s']} img/s {again['phase_seconds']}", flush=True)
    measured = [base["images_per_s"], again["images_per_s"]]
    base = max(base, again, key=lambda b: b["images_per_s"])
    base["images_per_s_measured"] = measured
    rows.insert(0, {"run": BASELINE, "images_per_s": base["images_per_s"], "precision": "fp32"})
    for row in rows:
        row["speedup_vs_baseline"] = round(row["images_per_s"] / rows[0]["images_per_s"], 3)
    speedup = {f"mask-freq {f}": row["speedup_vs_baseline"] for f, row in zip(args.mask_freqs, rows[1:])}
    print(table(rows, ["run", "images_per_s", "speedup_vs_baseline", "images_per_s_as_run", "mask_refresh_s",
                       "precision"]))
    print(table([base["phase_seconds"]], list(base["phase_seconds"])))
    path = write_result("baseline", device, {
        "dataset": args.dataset, "model": args.model, "batch_size": args.batch_size,
        "n_train": None if args.data_dir else args.n, "fastpart_epochs": args.fastpart_epochs,
        "fastpart_compile": args.compile, "fastpart_fast_path": args.fast,
        "baseline_masks": "per batch on the fly, every epoch (one GradCAM call per image)",
        "baseline": base, "runs": rows, "speedup": speedup})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
