"""Adversarial training: the loop, its metrics, checkpoints and the final evaluation.

One epoch: for every batch, craft PGD examples with the model in eval mode, then take an SGD step
on the training loss in train mode. Per-epoch metrics go to ``metrics.jsonl``, settings to
``config.json``, versions and device to ``env.json``, and the state to ``checkpoint.pt`` (atomic).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import fastpart
from fastpart.atomic import atomic_path, write_json_atomic
from fastpart.attacks.pgd import pgd
from fastpart.config import TrainConfig
from fastpart.datasets import DATASETS, TrainDefaults
from fastpart.errors import FastpartError
from fastpart.loader import Augment, DeviceLoader, split_path
from fastpart.models import create_model

METHODS = ("at",)
FALLBACK_DATASET = "cifar10"  # paper settings used for datasets without their own (imagefolder)


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument("--dataset", default=d.dataset, help="converted dataset name (folder under --data-dir)")
    p.add_argument("--data-dir", default=d.data_dir, help="where `fastpart convert --out` wrote")
    p.add_argument("--out", default=d.out, help="run folder for metrics, config and checkpoints")
    p.add_argument("--method", default=d.method, choices=METHODS, help="training method")
    p.add_argument("--model", help="fastpart or timm model name (default: the dataset's paper model)")
    p.add_argument("--epochs", type=int, help="epochs (default: the dataset's paper setting)")
    p.add_argument("--batch-size", type=int, help="batch size (default: paper setting)")
    p.add_argument("--lr", type=float, help="SGD learning rate (default: paper setting)")
    p.add_argument("--wd", type=float, help="weight decay (default: paper setting)")
    p.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum")
    p.add_argument("--milestones", type=int, nargs="*", help="epochs where lr drops 10x (default: 75%% of epochs)")
    p.add_argument("--eps", type=float, default=d.eps, help="L-inf budget in [0, 1] pixel units")
    p.add_argument("--alpha", type=float, help="PGD step size (default: the dataset's paper setting)")
    p.add_argument("--steps", type=int, default=d.steps, help="PGD steps during training")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="test natural + PGD accuracy every k epochs (0: end only)")
    p.add_argument("--eval-n", type=int, help="evaluate on a seeded subset of this many test images (default: all)")
    p.add_argument("--eval-steps", type=int, default=d.eval_steps, help="PGD steps of the test-set evaluation")
    p.add_argument("--seed", type=int, default=d.seed, help="seed for weights, order, augmentation, attacks")
    p.add_argument("--device", default=d.device, help="cpu, cuda, cuda:N or auto")
    p.add_argument("--precision", default=d.precision, choices=["auto", "bf16", "fp16", "fp32"],
                   help="autocast precision of the model (auto: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--loader", default=d.loader, choices=["auto", "memory", "ffcv"], help="loader backend")
    p.add_argument("--workers", type=int, default=d.workers, help="ffcv decoding threads (0: all cores)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    fields = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    if fields.get("milestones") is not None:
        fields["milestones"] = tuple(fields["milestones"])
    return TrainConfig(**fields)


def load_manifest(data_dir: str, dataset: str) -> dict[str, Any]:
    path = Path(data_dir) / dataset / "manifest.json"
    try:
        return json.loads(path.read_text())
    except OSError:
        raise FastpartError(f"no manifest at {path}: run `fastpart convert {dataset} --out {data_dir}` first") from None


def paper_defaults(manifest: dict[str, Any]) -> TrainDefaults:
    info = DATASETS.get(manifest.get("dataset", ""))
    return (info.defaults if info and info.defaults else DATASETS[FALLBACK_DATASET].defaults)


def resolve(cfg: TrainConfig, defaults: TrainDefaults) -> TrainConfig:
    """Fill every unset field from the dataset's paper settings and the machine."""
    epochs = cfg.epochs if cfg.epochs is not None else defaults.epochs
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device.startswith("cuda") else "fp32")
    resolved = replace(
        cfg,
        model=cfg.model or defaults.model,
        epochs=epochs,
        batch_size=cfg.batch_size or defaults.batch_size,
        lr=cfg.lr if cfg.lr is not None else defaults.lr,
        wd=cfg.wd if cfg.wd is not None else defaults.weight_decay,
        alpha=cfg.alpha if cfg.alpha is not None else defaults.alpha,
        milestones=cfg.milestones if cfg.milestones is not None else (int(round(0.75 * epochs)),),
        device=device,
        precision=precision,
    )
    if resolved.epochs < 1 or resolved.batch_size < 1 or resolved.steps < 0:
        raise FastpartError("epochs and batch size must be >= 1 and steps >= 0")
    return resolved


AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# ---------------------------------------------------------------------------------------------
# Evaluation during training (natural + PGD accuracy on the test split)
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, autocast: torch.dtype | None) -> int:
    with torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
        return int((model(x).argmax(1) == y).sum())


def evaluate(model: nn.Module, loader: DeviceLoader, cfg: TrainConfig, limit: int | None) -> dict[str, float]:
    model.eval()
    autocast = AUTOCAST[cfg.precision]
    generator = torch.Generator(loader.device).manual_seed(cfg.seed + 1)
    natural = robust = seen = 0
    for x, y, _ in loader:
        if limit is not None and seen >= limit:
            break
        if limit is not None:
            x, y = x[: limit - seen], y[: limit - seen]
        natural += _correct(model, x, y, autocast)
        x_adv = pgd(model, x, y, cfg.eps, 2 / 255, cfg.eval_steps, generator=generator, autocast_dtype=autocast)
        robust += _correct(model, x_adv, y, autocast)
        seen += len(y)
    return {"test_natural_acc": natural / seen, f"test_pgd{cfg.eval_steps}_acc": robust / seen, "test_n": seen}


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    config: TrainConfig
    run_dir: Path
    history: list[dict[str, Any]]
    final_eval: dict[str, float]
    seconds: float

    def summary(self) -> str:
        c, e = self.config, self.final_eval
        images = sum(h["images"] for h in self.history)
        return (
            f"{c.dataset} {c.model} {c.method}: {c.epochs} epochs in {self.seconds:.0f}s "
            f"({images / max(self.seconds, 1e-9):.0f} img/s); test natural {100 * e['test_natural_acc']:.2f}%, "
            f"PGD-{c.eval_steps} {100 * e[f'test_pgd{c.eval_steps}_acc']:.2f}% (n={e['test_n']}); run folder {self.run_dir}"
        )


def environment(device: torch.device) -> dict[str, Any]:
    versions = {"fastpart": fastpart.__version__, "torch": torch.__version__, "python": platform.python_version()}
    for name in ("numpy", "timm", "ffcv", "triton", "numba"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"versions": versions, "device": str(device), "device_name": name, "cpu_count": os.cpu_count()}


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(path: Path, model: nn.Module, optimizer, scheduler, epoch: int) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "epoch": epoch}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def train_epoch(model, loader, optimizer, cfg: TrainConfig, epoch: int, generator) -> dict[str, Any]:
    autocast = AUTOCAST[cfg.precision]
    sums = torch.zeros(3, device=loader.device)  # loss, natural correct, adversarial correct
    seen = 0
    start = time.perf_counter()
    for x, y, _ in tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, mininterval=1.0):
        x_adv = pgd(model, x, y, cfg.eps, cfg.alpha, cfg.steps, generator=generator, autocast_dtype=autocast)
        model.eval()
        with torch.no_grad(), torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
            natural_correct = (model(x).argmax(1) == y).sum()
        model.train()
        with torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
            logits = model(x_adv)
            loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sums += torch.stack([loss.detach() * len(y), natural_correct.float(), (logits.argmax(1) == y).sum().float()])
        seen += len(y)
    if loader.device.type == "cuda":
        torch.cuda.synchronize(loader.device)
    seconds = time.perf_counter() - start
    loss_sum, natural, adversarial = sums.tolist()
    return {"loss": loss_sum / seen, "train_natural_acc": natural / seen, "train_adv_acc": adversarial / seen,
            "images": seen, "epoch_seconds": seconds, "images_per_second": seen / seconds}


def train(cfg: TrainConfig) -> TrainResult:
    """Train per ``cfg``; returns the per-epoch history and the final test-set evaluation."""
    if cfg.method not in METHODS:
        raise FastpartError(f"unknown method {cfg.method!r}; choose from {', '.join(METHODS)}")
    manifest = load_manifest(cfg.data_dir, cfg.dataset)
    defaults = paper_defaults(manifest)
    cfg = resolve(cfg, defaults)
    device = torch.device(cfg.device)
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "config.json", cfg.to_dict())
    write_json_atomic(run_dir / "env.json", environment(device))
    metrics_path = run_dir / "metrics.jsonl"
    metrics_path.unlink(missing_ok=True)

    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, num_classes=manifest["num_classes"]).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    augment = Augment(defaults.crop_padding, flip=True) if defaults.augment else None
    loader_options = dict(device=device, backend=cfg.loader, num_workers=cfg.workers, seed=cfg.seed)
    train_loader = DeviceLoader(split_path(cfg.data_dir, cfg.dataset, "train"), batch_size=cfg.batch_size,
                                shuffle=True, augment=augment, **loader_options)
    test_loader = DeviceLoader(split_path(cfg.data_dir, cfg.dataset, "test"), batch_size=max(cfg.batch_size, 256),
                               shuffle=cfg.eval_n is not None, drop_last=False, **loader_options)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.wd)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=0.1)
    generator = torch.Generator(device).manual_seed(cfg.seed)

    history: list[dict[str, Any]] = []
    start = time.perf_counter()
    final_eval: dict[str, float] = {}
    for epoch in range(cfg.epochs):
        train_loader.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        record = {"epoch": epoch + 1, "lr": lr, **train_epoch(model, train_loader, optimizer, cfg, epoch, generator)}
        if not math.isfinite(record["loss"]):
            raise FastpartError(
                f"loss became {record['loss']} in epoch {epoch + 1}; stopped. The last good checkpoint is "
                f"{run_dir / 'checkpoint.pt'}; try a lower --lr"
            )
        scheduler.step()
        last = epoch + 1 == cfg.epochs
        if last or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0):
            test_loader.set_epoch(0)
            final_eval = evaluate(model, test_loader, cfg, cfg.eval_n)
            record.update(final_eval)
        save_checkpoint(run_dir / "checkpoint.pt", model, optimizer, scheduler, epoch + 1)
        append_jsonl(metrics_path, record)
        history.append(record)
        tqdm.write(
            f"epoch {epoch + 1}/{cfg.epochs}: loss {record['loss']:.4f} "
            f"nat {100 * record['train_natural_acc']:.1f}% adv {100 * record['train_adv_acc']:.1f}% "
            f"{record['images_per_second']:.0f} img/s"
        )
    return TrainResult(cfg, run_dir, history, final_eval, time.perf_counter() - start)
