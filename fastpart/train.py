"""Adversarial training: AT, TRADES, MART and their pixel-reweighted versions PART, PART-T, PART-M.

One epoch: for every batch, craft PGD examples with the model in eval mode (per-pixel budget for
PART after the burn-in), then take an SGD step on the method's loss in train mode. PART's masks are
computed for the whole training split at the end of the burn-in and every ``mask_freq`` epochs,
cached on disk, looked up by sample index and augmented with their images by the loader.

The run folder holds ``config.json``, ``env.json``, ``metrics.jsonl`` (one line per epoch) and
``checkpoint.pt`` (atomic, every epoch: model, optimizer, schedule, RNG states, mask-cache key), so
``--resume`` continues a killed run exactly as if it had never stopped.

Under ``torchrun`` (``fastpart.distributed``) every process trains on its shard of each global batch
(``--batch-scope``): the attack and the CAM masks run on the plain model of the process (no DDP
forward, no gradient all-reduce), the update runs through ``DistributedDataParallel``. Batch norm
keeps per-process batch statistics (no SyncBatchNorm); the running statistics are rank 0's, as DDP
broadcasts them before each forward, and are broadcast again at the end of every epoch so that all
processes evaluate, compute masks and checkpoint the same model. Mask refreshes are split into
contiguous runs of whole mask batches, one per process, and gathered; the test-set evaluation gives
every process every ``world_size``-th batch and sums the counts. Rank 0 alone reads and writes the run
folder (config, env, metrics, masks, checkpoints) and prints; what it reads is broadcast. The attack
randomness of epoch ``e`` on rank ``r`` is seeded from (seed, e, r), so a run resumes exactly, also
with another number of processes.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import fastpart
from fastpart import distributed
from fastpart.atomic import atomic_path, remove_stale_temporaries, write_bytes_atomic, write_json_atomic
from fastpart.attacks.mma import mma
from fastpart.attacks.pgd import pgd
from fastpart.cam import CAM_BACKENDS, CAM_METHODS, class_activation_maps
from fastpart.config import TrainConfig
from fastpart.convert import load_manifest
from fastpart.datasets import DATASETS, TrainDefaults
from fastpart.errors import FastpartError
from fastpart.kernels import Eps, EpsLevels, eps_from_levels
from fastpart.loader import Augment, DeviceLoader, read_split, split_path, stream_seed
from fastpart.masks import (
    INTERPOLATIONS,
    MASK_MODES,
    TARGETS,
    MaskCache,
    MaskSettings,
    cache_key,
    compute_split_levels,
    eps_levels,
    pack_levels,
    refresh_epochs,
    unpack_levels,
)
from fastpart.models import create_model, eval_mode
from fastpart.objectives import Objective, attack_loss_fn, get_objective, natural_probs


class Method(NamedTuple):
    objective: str
    pixel_reweighted: bool


METHODS: dict[str, Method] = {
    "at": Method("at", False),
    "trades": Method("trades", False),
    "mart": Method("mart", False),
    "part": Method("at", True),
    "part-trades": Method("trades", True),
    "part-mart": Method("mart", True),
}
FALLBACK_DATASET = "cifar10"  # paper settings used for datasets without their own (imagefolder)
AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
CHECKPOINT = "checkpoint.pt"
RESUME_MAY_CHANGE = {"resume", "eval_every", "workers", "compile"}
TRAINING_ATTACKS = ("pgd", "mma")  # --ae: the generator of the training adversarial examples
BATCH_SCOPES = ("global", "per-gpu")  # --batch-scope: what --batch-size counts under several processes
MASK_BATCH = 512  # images per CAM batch of a mask refresh (at least the training batch)


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument("--dataset", default=d.dataset, help="converted dataset name (folder under --data-dir)")
    p.add_argument("--data-dir", default=d.data_dir, help="where `fastpart convert --out` wrote")
    p.add_argument("--out", default=d.out, help="run folder for metrics, config, masks and checkpoints")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--method", default=d.method, choices=list(METHODS),
                   help="at/trades/mart, or their pixel-reweighted versions part/part-trades/part-mart")
    p.add_argument("--model", help="fastpart or timm model name (default: the dataset's paper model)")
    p.add_argument("--epochs", type=int, help="epochs (default: the dataset's paper setting)")
    p.add_argument("--batch-size", type=int, help="batch size (default: paper setting); see --batch-scope")
    p.add_argument("--batch-scope", default=d.batch_scope, choices=BATCH_SCOPES,
                   help="under torchrun: global (--batch-size is the global batch, each of the N processes takes "
                   "batch-size / N; it must divide) or per-gpu (each process takes --batch-size). The lr is not "
                   "rescaled: set --lr for the global batch yourself")
    p.add_argument("--lr", type=float, help="SGD learning rate (default: paper setting)")
    p.add_argument("--wd", type=float, help="weight decay (default: paper setting)")
    p.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum")
    p.add_argument("--milestones", type=int, nargs="*", help="epochs where lr drops 10x (default: 75%% of epochs)")
    p.add_argument("--eps", type=float, default=d.eps, help="L-inf budget of important pixels, [0, 1] units")
    p.add_argument("--eps-low", type=float, default=d.eps_low, help="PART: budget of the other pixels")
    p.add_argument("--alpha", type=float, help="PGD step size (default: the dataset's paper setting)")
    p.add_argument("--steps", type=int, default=d.steps, help="attack steps during training (PGD steps; MMA: "
                   "APGD iterations per target)")
    p.add_argument("--ae", default=d.ae, choices=TRAINING_ATTACKS,
                   help="training adversarial examples: pgd (the objective's loss), or mma (minimum-margin attack, "
                   "top-3 targets; PART's App. H.4), both under the (mask-weighted) budget")
    p.add_argument("--burn-in", type=int, default=d.burn_in, help="PART: epochs of the plain base method first")
    p.add_argument("--mask-freq", type=int, default=d.mask_freq,
                   help="PART: recompute masks every N epochs after the burn-in (0: per batch, no cache)")
    p.add_argument("--cam", default=d.cam, choices=CAM_METHODS, help="PART: class activation map method")
    p.add_argument("--cam-backend", default=d.cam_backend, choices=CAM_BACKENDS,
                   help="PART: native batched CAM, or the pytorch-grad-cam package")
    p.add_argument("--cam-layer", help="PART: module name whose output the CAM explains (default: the model's "
                   "last conv block, e.g. layer4 of ResNet-18, block3 of WRN)")
    p.add_argument("--mask-mode", default=d.mask_mode, choices=MASK_MODES,
                   help="PART: paper (per pixel, standardised map > tau) or reference (released code, per channel)")
    p.add_argument("--mask-target", default=d.mask_target, choices=TARGETS,
                   help="PART: explain the predicted class or the true label")
    p.add_argument("--tau", type=float, default=d.tau, help="PART: threshold on the standardised CAM")
    p.add_argument("--interpolation", default=d.interpolation, choices=INTERPOLATIONS, help="PART: CAM upsampling")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="test natural + PGD accuracy every k epochs (0: end only)")
    p.add_argument("--eval-n", type=int, help="evaluate on a seeded subset of this many test images (default: all)")
    p.add_argument("--eval-steps", type=int, default=d.eval_steps, help="PGD steps of the test-set evaluation")
    p.add_argument("--seed", type=int, default=d.seed, help="seed for weights, order, augmentation, attacks")
    p.add_argument("--device", default=d.device, help="cpu, cuda, cuda:N or auto")
    p.add_argument("--precision", default=d.precision, choices=["auto", "bf16", "fp16", "fp32"],
                   help="autocast precision of the model (auto: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--loader", default=d.loader, choices=["auto", "memory", "ffcv"], help="loader backend")
    p.add_argument("--workers", type=int, default=d.workers, help="ffcv decoding threads (0: all cores)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model for the attack and the update (first epoch pays the compile)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    fields = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    if fields.get("milestones") is not None:
        fields["milestones"] = tuple(fields["milestones"])
    return TrainConfig(**fields)


def dataset_manifest(data_dir: str, dataset: str) -> dict[str, Any]:
    manifest = load_manifest(Path(data_dir) / dataset)
    if manifest is None:
        raise FastpartError(f"no readable manifest in {Path(data_dir) / dataset}: "
                            f"run `fastpart convert {dataset} --out {data_dir}` first")
    return manifest


def paper_defaults(manifest: dict[str, Any]) -> TrainDefaults:
    info = DATASETS.get(manifest.get("dataset", ""))
    return info.defaults if info and info.defaults else DATASETS[FALLBACK_DATASET].defaults


def resolve_device(device: str) -> str:
    """``auto`` -> cuda when available, else cpu; any other name is checked (one-line error if unusable)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        raise FastpartError(f"unknown device {device!r}: use cpu, cuda, cuda:N or auto") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FastpartError(f"device {device} requested but CUDA is not available")
    return device


def resolve(cfg: TrainConfig, defaults: TrainDefaults) -> TrainConfig:
    """Fill every unset field from the dataset's paper settings and the machine, and check the result."""
    epochs = cfg.epochs if cfg.epochs is not None else defaults.epochs
    device = resolve_device(cfg.device)
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
    if resolved.ae not in TRAINING_ATTACKS:
        raise FastpartError(f"unknown --ae {resolved.ae!r}; choose from {', '.join(TRAINING_ATTACKS)}")
    if resolved.batch_scope not in BATCH_SCOPES:
        raise FastpartError(f"unknown --batch-scope {resolved.batch_scope!r}; choose from {', '.join(BATCH_SCOPES)}")
    if resolved.method not in METHODS:
        raise FastpartError(f"unknown method {resolved.method!r}; choose from {', '.join(METHODS)}")
    if resolved.epochs < 1 or resolved.batch_size < 1 or resolved.steps < 0:
        raise FastpartError("epochs and batch size must be >= 1 and steps >= 0")
    if resolved.burn_in < 0 or resolved.mask_freq < 0:
        raise FastpartError("--burn-in and --mask-freq must be >= 0")
    if METHODS[resolved.method].pixel_reweighted and not 0 <= resolved.eps_low <= resolved.eps:
        raise FastpartError(f"need 0 <= eps-low <= eps, got eps-low {resolved.eps_low} and eps {resolved.eps}")
    return resolved


def process_batch_size(cfg: TrainConfig, world_size: int) -> int:
    """The batch of one process: the global --batch-size split over the processes, or --batch-size (per-gpu)."""
    if cfg.batch_scope == "per-gpu" or world_size == 1:
        return cfg.batch_size
    if cfg.batch_size % world_size:
        raise FastpartError(f"--batch-size {cfg.batch_size} (the global batch) does not split over {world_size} "
                            f"processes: give a multiple of {world_size}, or --batch-scope per-gpu")
    return cfg.batch_size // world_size


def mask_settings(cfg: TrainConfig) -> MaskSettings:
    return MaskSettings(mode=cfg.mask_mode, tau=cfg.tau, interpolation=cfg.interpolation, cam=cfg.cam,
                        target=cfg.mask_target, layer=cfg.cam_layer)


# ---------------------------------------------------------------------------------------------
# Masks: CAM -> per-pixel budget
# ---------------------------------------------------------------------------------------------


def cam_layer(model: nn.Module, name: str | None) -> nn.Module | None:
    """The module named ``name`` (None: let the CAM find the model's last conv block)."""
    if name is None:
        return None
    modules = dict(model.named_modules())
    if name not in modules:
        top = ", ".join(n for n, _ in model.named_children())
        raise FastpartError(f"--cam-layer {name!r} is not a module of the model; top-level modules: {top}")
    return modules[name]


def cam_function(model: nn.Module, cfg: TrainConfig):
    """(x, labels or None) -> raw CAMs of the model (eval mode) for the settings' target class."""
    layer = cam_layer(model, cfg.cam_layer)

    def cams(x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        with eval_mode(model):
            with torch.autocast(x.device.type, dtype=AUTOCAST[cfg.precision], enabled=cfg.precision != "fp32"):
                # labels None: the CAM explains the prediction of the same forward pass
                return class_activation_maps(model, x, labels, method=cfg.cam, layer=layer, backend=cfg.cam_backend)

    return cams


class MaskState(NamedTuple):
    key: str
    levels: torch.Tensor
    stats: dict[str, Any]


def mask_slice(n: int, batch_size: int, rank: int, world_size: int) -> slice:
    """The samples whose masks process ``rank`` computes: a contiguous run of whole mask batches.

    Whole batches, so every image goes through the CAM in the same batch as in a one-process run and
    the levels (and the cache file) do not depend on the number of processes.
    """
    batches = -(-n // batch_size)
    first, last = -(-rank * batches // world_size), -(-(rank + 1) * batches // world_size)
    return slice(min(first * batch_size, n), min(last * batch_size, n))


def gather_levels(local: torch.Tensor, n: int, batch_size: int) -> torch.Tensor:
    """Every process's levels (its ``mask_slice``) -> the split's levels (N, C, H, W) on every process."""
    world = distributed.world_size()
    if world == 1:
        return local
    sizes = [len(range(n)[mask_slice(n, batch_size, r, world)]) for r in range(world)]
    row_bytes = (math.prod(local.shape[1:]) + 7) // 8  # 8 levels a byte on the wire
    padded = torch.zeros((max(sizes), row_bytes), dtype=torch.uint8, device=local.device)
    if len(local):
        padded[: len(local)] = pack_levels(local)
    rows = [part[:size] for part, size in zip(distributed.all_gather(padded), sizes)]
    return unpack_levels(torch.cat(rows), (n, *local.shape[1:]))


def shared_cached_levels(cache: MaskCache, key: str, device: torch.device) -> tuple[torch.Tensor, dict[str, Any]]:
    """Cached levels and stats read by rank 0 and broadcast to every process (no shared disk needed)."""
    world = distributed.world_size()
    if world == 1:
        return cache.load(key).to(device), cache.stats(key)
    levels = None

    def read() -> tuple[tuple[int, ...], dict[str, Any]]:
        nonlocal levels
        levels = cache.load(key).to(device)
        return tuple(levels.shape), cache.stats(key)

    shape, stats = distributed.on_main(read)
    packed = pack_levels(levels) if levels is not None else torch.empty(
        (shape[0], (math.prod(shape[1:]) + 7) // 8), dtype=torch.uint8, device=device)
    distributed.broadcast(packed)
    return (levels if levels is not None else unpack_levels(packed, shape)), stats


def refresh_masks(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig,
                  cache: MaskCache, dataset_sha: str) -> MaskState:
    """Masks of the whole training split for the current model: from the cache when present, else computed.

    Under several processes each computes the CAMs of its ``mask_slice`` and the levels are gathered;
    rank 0 writes the cache. The file holds the levels and deterministic stats only (no timings), so it
    is byte-identical for the same model state, dataset and settings whatever the number of processes.
    """
    settings = mask_settings(cfg)
    key = cache_key(dataset_sha, model.state_dict(), settings, cfg.eps, cfg.eps_low)
    distributed.check_same(key, "the model state at a mask refresh (its cache key)")
    if distributed.on_main(lambda: cache.exists(key)):
        levels, stats = shared_cached_levels(cache, key, images.device)
        return MaskState(key, levels, {**stats, "reused": True})
    batch_size = max(cfg.batch_size, MASK_BATCH)
    part = mask_slice(len(images), batch_size, distributed.rank(), distributed.world_size())
    local, local_stats = compute_split_levels(cam_function(model, cfg), images[part], labels[part], settings,
                                              batch_size=batch_size, progress=distributed.is_main())
    levels = gather_levels(local, len(images), batch_size)
    degenerate = distributed.all_reduce_sum(torch.tensor([local_stats["degenerate"]], dtype=torch.int64))
    stats = {"important_fraction": float(levels.sum(dtype=torch.int64).item()) / max(levels.numel(), 1),
             "degenerate": int(degenerate.item()), "n": len(images)}
    if distributed.is_main():
        cache.save(key, levels, stats)
        cache.prune(keep={key})
    distributed.barrier()
    return MaskState(key, levels, {**stats, "reused": False})


def batch_budget(model: nn.Module, x: torch.Tensor, y: torch.Tensor, aux: torch.Tensor | None,
                 cfg: TrainConfig) -> tuple[EpsLevels, dict[str, float]]:
    """PART's per-pixel budget of a batch: the cached levels looked up by the loader, or computed now."""
    if aux is not None:
        return EpsLevels(aux, cfg.eps, cfg.eps_low), {}
    labels = y if cfg.mask_target == "label" else None
    cams = cam_function(model, cfg)(x, labels)
    levels, degenerate = eps_levels(cams, tuple(x.shape[-2:]), mask_settings(cfg))
    return EpsLevels(levels, cfg.eps, cfg.eps_low), {
        "important": float(levels.float().mean()), "degenerate": float(degenerate.sum())}


# ---------------------------------------------------------------------------------------------
# One step, one epoch
# ---------------------------------------------------------------------------------------------


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, objective: Objective, x: torch.Tensor,
               y: torch.Tensor, eps: Eps, cfg: TrainConfig,
               generator: torch.Generator, update: nn.Module | None = None) -> torch.Tensor:
    """One attack + SGD update; returns [loss * B, natural correct, adversarial correct] without syncing.

    ``model`` runs the natural forward and the attack (eval mode, input gradients only); ``update``
    (default: ``model``; the DistributedDataParallel wrapper under several processes) runs the
    train-mode forward whose backward updates the parameters.
    """
    update = model if update is None else update
    autocast = AUTOCAST[cfg.precision]
    model.eval()
    with torch.no_grad(), torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
        logits_eval = model(x)
    if cfg.ae == "mma":
        budget = eps_from_levels(eps.levels, eps.high, eps.low, x.dtype) if isinstance(eps, EpsLevels) else eps
        x_adv = mma(model, x, y, budget, k=3, n_iter=cfg.steps, generator=generator, autocast_dtype=autocast)
    else:
        probs = natural_probs(logits_eval) if objective.attack_needs_natural_probs else None
        x_adv = pgd(model, x, y, eps, cfg.alpha, cfg.steps, loss_fn=attack_loss_fn(objective, probs),
                    start=objective.start, generator=generator, autocast_dtype=autocast)
    model.train()
    with torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
        logits_adv = update(x_adv)
        logits_nat = update(x) if objective.needs_natural_logits else None
        loss = objective.loss(logits_adv, logits_nat, y, objective.beta)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return torch.stack([loss.detach().float() * len(y), (logits_eval.argmax(1) == y).sum().float(),
                        (logits_adv.argmax(1) == y).sum().float()])


def train_epoch(model, loader: DeviceLoader, optimizer, objective: Objective, cfg: TrainConfig, epoch: int,
                generator: torch.Generator, masked: bool, net: nn.Module | None = None,
                update_net: nn.Module | None = None) -> dict[str, Any]:
    """One epoch; ``net`` (default: the model) runs the attack and the update, e.g. a torch.compile'd model;
    ``update_net`` (default: ``net``) runs the update alone, e.g. the DistributedDataParallel wrapper.
    Under several processes the record sums every process's shard."""
    sums = torch.zeros(3, device=loader.device)
    mask_sums = {"important": 0.0, "degenerate": 0.0}
    seen = batches = 0
    attack_net = model if net is None else net
    update_net = attack_net if update_net is None else update_net
    start = time.perf_counter()
    for batch in tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, mininterval=1.0,
                      disable=not distributed.is_main()):
        x, y, _, aux = batch if len(batch) == 4 else (*batch, None)
        eps: Eps = cfg.eps
        if masked:
            eps, batch_stats = batch_budget(model, x, y, aux, cfg)
            for k, v in batch_stats.items():
                mask_sums[k] += v
        sums += train_step(attack_net, optimizer, objective, x, y, eps, cfg, generator, update_net)
        seen += len(y)
        batches += 1
    if loader.device.type == "cuda":
        torch.cuda.synchronize(loader.device)
    seconds = time.perf_counter() - start
    totals = torch.tensor([*sums.tolist(), seen, batches, mask_sums["important"], mask_sums["degenerate"]],
                          dtype=torch.float64)
    loss_sum, natural, adversarial, seen, batches, mask_sums["important"], mask_sums["degenerate"] = (
        distributed.all_reduce_sum(totals).tolist())
    seen, batches = int(seen), int(batches)
    record = {"loss": loss_sum / seen, "train_natural_acc": natural / seen, "train_adv_acc": adversarial / seen,
              "images": seen, "epoch_seconds": seconds, "images_per_second": seen / seconds}
    if masked and cfg.mask_freq == 0:
        record.update(important_fraction=mask_sums["important"] / max(batches, 1),
                      degenerate_maps=int(mask_sums["degenerate"]))
    return record


# ---------------------------------------------------------------------------------------------
# Evaluation during training (natural + PGD accuracy on the test split)
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, autocast: torch.dtype | None) -> int:
    with torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
        return int((model(x).argmax(1) == y).sum())


def evaluate(model: nn.Module, loader: DeviceLoader, cfg: TrainConfig, limit: int | None) -> dict[str, float]:
    """Natural and PGD-k (eps, alpha 2/255, random start, CE) accuracy on the test split (first ``limit`` images).

    Batch b's random start is seeded from (seed, b); under several processes rank r evaluates the
    batches b with b % world_size == r and the counts are summed, so the result does not depend on
    the number of processes.
    """
    model.eval()
    autocast = AUTOCAST[cfg.precision]
    rank, world = distributed.rank(), distributed.world_size()
    counts = torch.zeros(3, dtype=torch.float64)  # natural correct, robust correct, images
    taken = 0
    loader.set_epoch(0)
    for b, (x, y, _) in enumerate(loader):
        if limit is not None and taken >= limit:
            break
        if limit is not None:
            x, y = x[: limit - taken], y[: limit - taken]
        taken += len(y)
        if b % world != rank:
            continue
        generator = torch.Generator(loader.device).manual_seed(stream_seed(cfg.seed, b, "eval-pgd"))
        x_adv = pgd(model, x, y, cfg.eps, 2 / 255, cfg.eval_steps, generator=generator, autocast_dtype=autocast)
        counts += torch.tensor([_correct(model, x, y, autocast), _correct(model, x_adv, y, autocast), len(y)],
                               dtype=torch.float64)
    natural, robust, seen = (int(v) for v in distributed.all_reduce_sum(counts).tolist())
    return {"test_natural_acc": natural / seen, f"test_pgd{cfg.eval_steps}_acc": robust / seen, "test_n": seen}


# ---------------------------------------------------------------------------------------------
# Run folder: environment, metrics, checkpoints
# ---------------------------------------------------------------------------------------------


def environment(device: torch.device) -> dict[str, Any]:
    versions = {"fastpart": fastpart.__version__, "torch": torch.__version__, "python": platform.python_version()}
    for name in ("numpy", "timm", "ffcv", "triton", "numba"):
        try:  # the installed release, without importing it (importing ffcv compiles its kernels: seconds)
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"versions": versions, "device": str(device), "device_name": name, "cpu_count": os.cpu_count(),
            "world_size": distributed.world_size()}


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def keep_metrics_until(path: Path, epoch: int) -> list[dict[str, Any]]:
    """Drop metric lines written after the checkpoint (by a run killed mid-epoch); return the rest."""
    if not path.exists():
        return []
    kept = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    kept = [r for r in kept if r["epoch"] <= epoch]
    write_bytes_atomic(path, "".join(json.dumps(r) + "\n" for r in kept).encode())
    return kept


class TrainingState(NamedTuple):
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    generator: torch.Generator


def attack_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of the attack generator (random starts) of ``epoch`` on process ``rank``."""
    return stream_seed(seed, epoch, f"attack/{rank}")


def save_checkpoint(path: Path, state: TrainingState, epoch: int, mask_key: str | None, cfg: TrainConfig) -> None:
    """Rank 0's state (every process holds the same model, optimizer and schedule at the end of an epoch)."""
    payload = {
        "model": state.model.state_dict(), "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(), "epoch": epoch, "mask_key": mask_key,
        "torch_rng": torch.get_rng_state(),  # the attack generator is reseeded per epoch: attack_seed
        "config": cfg.to_dict(), "fastpart_version": fastpart.__version__,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a checkpoint is written atomically, so this is not a half-written file
        raise FastpartError(f"cannot load {path}: {exc}") from None


def load_checkpoint(path: Path, state: TrainingState, cfg: TrainConfig) -> tuple[int, str | None]:
    """Restore ``state`` in place; returns (epochs done, mask-cache key). Rank 0 reads, every process restores."""
    payload = distributed.on_main(lambda: read_checkpoint(path))
    defaults = TrainConfig().to_dict()  # settings added after the checkpoint was written had their default
    saved = {k: payload["config"].get(k, defaults.get(k)) for k in defaults if k not in RESUME_MAY_CHANGE}
    current = {k: v for k, v in cfg.to_dict().items() if k not in RESUME_MAY_CHANGE}
    changed = sorted(k for k in current if saved.get(k) != current[k] and not (
        isinstance(current[k], tuple) and list(current[k]) == saved.get(k)))
    if changed:
        raise FastpartError(f"--resume with other settings than the run in {path.parent}: {', '.join(changed)}")
    state.model.load_state_dict(payload["model"])
    state.optimizer.load_state_dict(payload["optimizer"])
    state.scheduler.load_state_dict(payload["scheduler"])
    torch.set_rng_state(payload["torch_rng"])
    return int(payload["epoch"]), payload["mask_key"]


@dataclass
class LoadedRun:
    """A trained model restored from a run folder or checkpoint file, in eval mode."""

    model: nn.Module
    config: TrainConfig
    checkpoint: Path
    run_dir: Path
    epoch: int
    manifest: dict[str, Any]


def checkpoint_path(run_or_checkpoint: str | Path) -> Path:
    path = Path(run_or_checkpoint)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise FastpartError(f"no checkpoint at {path}: give a run folder written by `fastpart train` or its {CHECKPOINT}")
    return path


def load_run(run_or_checkpoint: str | Path, device: str | torch.device = "cpu", data_dir: str | None = None) -> LoadedRun:
    """Restore the model of a run (folder or checkpoint file) on ``device``; ``data_dir`` overrides the run's."""
    path = checkpoint_path(run_or_checkpoint)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        fields = {k: v for k, v in payload["config"].items() if k in TrainConfig.__dataclass_fields__}
    except Exception as exc:
        raise FastpartError(f"cannot load {path}: {exc}") from None
    if fields.get("milestones") is not None:
        fields["milestones"] = tuple(fields["milestones"])
    cfg = TrainConfig(**fields)
    if data_dir is not None:
        cfg = replace(cfg, data_dir=data_dir)
    manifest = dataset_manifest(cfg.data_dir, cfg.dataset)
    device = torch.device(device)
    model = create_model(cfg.model, num_classes=manifest["num_classes"])
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:
        raise FastpartError(f"{path} does not fit model {cfg.model} with {manifest['num_classes']} classes: "
                            f"{str(exc).splitlines()[0]}") from None
    model = model.to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return LoadedRun(model, cfg, path, path.parent, int(payload["epoch"]), manifest)


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
    rank: int = 0  # the process that returned it (several under torchrun; rank 0 prints)

    def summary(self) -> str:
        c, e = self.config, self.final_eval
        images = sum(h["images"] for h in self.history)
        train_seconds = sum(h["epoch_seconds"] + h.get("mask_seconds", 0.0) for h in self.history)
        return (
            f"{c.dataset} {c.model} {c.method}: {c.epochs} epochs in {self.seconds:.0f}s "
            f"({images / max(train_seconds, 1e-9):.0f} img/s training); test natural {100 * e['test_natural_acc']:.2f}%, "
            f"PGD-{c.eval_steps} {100 * e[f'test_pgd{c.eval_steps}_acc']:.2f}% (n={e['test_n']}); run folder {self.run_dir}"
        )


def training_images(loader: DeviceLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """The un-augmented training split in sample-index order (uint8 NHWC, labels) for mask refreshes."""
    if loader.backend == "memory":
        order = torch.argsort(loader.indices)
        return loader.images[order], loader.labels[order]
    arrays = read_split(loader.path)
    order = torch.from_numpy(arrays.indices).argsort()
    return torch.from_numpy(arrays.images)[order], torch.from_numpy(arrays.labels)[order]


def train(cfg: TrainConfig) -> TrainResult:
    """Train per ``cfg``; returns the per-epoch history and the final test-set evaluation.

    Inside a ``torchrun`` launch this process joins the launch's process group for the run (see the
    module docstring); a communication failure becomes a one-line ``DistributedError``.
    """
    manifest = dataset_manifest(cfg.data_dir, cfg.dataset)
    defaults = paper_defaults(manifest)
    cfg = resolve(cfg, defaults)
    batch_size = process_batch_size(cfg, distributed.world_size())
    device = distributed.process_device(torch.device(cfg.device))
    joined = distributed.init(device)
    try:
        return _train(cfg, manifest, defaults, device, batch_size)
    except RuntimeError as exc:
        if distributed.world_size() > 1 and distributed.is_communication_error(exc):
            raise distributed.as_distributed_error(exc) from None
        raise
    finally:
        if joined:
            distributed.shutdown()


def _train(cfg: TrainConfig, manifest: dict[str, Any], defaults: TrainDefaults, device: torch.device,
           batch_size: int) -> TrainResult:
    method = METHODS[cfg.method]
    objective = get_objective(method.objective)
    rank, world, main = distributed.rank(), distributed.world_size(), distributed.is_main()
    run_dir = Path(cfg.out)
    checkpoint = run_dir / CHECKPOINT
    resuming = distributed.on_main(checkpoint.exists)
    if resuming and not cfg.resume:
        raise FastpartError(f"{run_dir} already holds a run: pass --resume to continue it, or choose another --out")
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if resuming:
            remove_stale_temporaries(run_dir)  # left by a process killed while writing
        write_json_atomic(run_dir / "config.json", cfg.to_dict())
        write_json_atomic(run_dir / "env.json", environment(device))
    metrics_path = run_dir / "metrics.jsonl"

    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, num_classes=manifest["num_classes"]).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    augment = Augment(defaults.crop_padding, flip=True) if defaults.augment else None
    loader_options = dict(device=device, backend=cfg.loader, num_workers=cfg.workers, seed=cfg.seed)
    train_loader = DeviceLoader(split_path(cfg.data_dir, cfg.dataset, "train"), batch_size=batch_size,
                                shuffle=True, augment=augment, rank=rank, world_size=world, **loader_options)
    test_loader = DeviceLoader(split_path(cfg.data_dir, cfg.dataset, "test"), batch_size=max(cfg.batch_size, 256),
                               shuffle=cfg.eval_n is not None, drop_last=False, **loader_options)
    if len(train_loader) == 0:
        raise FastpartError(f"the training split has {train_loader.num_samples} images, fewer than one global batch "
                            f"of {batch_size * world}: lower --batch-size")
    # The attack and the masks run on the plain module (input gradients only, nothing to all-reduce); the
    # update runs through DDP. torch.compile wraps the DDP module (its graph breaks at the gradient buckets).
    net = torch.compile(model) if cfg.compile else model
    update_net = net
    if world > 1:
        # 1x1 kernels: a weight gradient in channels_last strides has the same memory layout as its bucket view
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        update_net = torch.compile(ddp) if cfg.compile else ddp
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.wd)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=0.1)
    state = TrainingState(model, optimizer, scheduler, torch.Generator(device))

    start_epoch, mask_key = 0, None
    if cfg.resume and resuming:
        start_epoch, mask_key = load_checkpoint(checkpoint, state, cfg)
    history = distributed.on_main(lambda: keep_metrics_until(metrics_path, start_epoch))
    schedule = refresh_epochs(cfg.epochs, cfg.burn_in, cfg.mask_freq) if method.pixel_reweighted else []
    cache = MaskCache(run_dir / "masks")
    dataset_sha = manifest["splits"]["train"]["sha256"]
    split_images = None
    if mask_key is not None and start_epoch not in schedule:
        train_loader.set_aux(shared_cached_levels(cache, mask_key, device)[0])

    start = time.perf_counter()
    final_eval: dict[str, float] = history[-1] if history and "test_n" in history[-1] else {}
    for epoch in range(start_epoch, cfg.epochs):
        record: dict[str, Any] = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
        masked = method.pixel_reweighted and epoch >= cfg.burn_in
        if epoch in schedule:
            if split_images is None:
                split_images = [t.to(device) for t in training_images(train_loader)]
            refresh_start = time.perf_counter()
            masks = refresh_masks(model, *split_images, cfg, cache, dataset_sha)
            mask_key = masks.key
            train_loader.set_aux(masks.levels)
            record.update(mask_seconds=time.perf_counter() - refresh_start, mask_reused=masks.stats["reused"],
                          important_fraction=masks.stats["important_fraction"],
                          degenerate_maps=masks.stats["degenerate"])
        train_loader.set_epoch(epoch)
        state.generator.manual_seed(attack_seed(cfg.seed, epoch, rank))
        record.update(train_epoch(model, train_loader, optimizer, objective, cfg, epoch, state.generator, masked, net,
                                  update_net))
        distributed.broadcast_buffers(model)  # rank 0's batch-norm running statistics everywhere, as DDP does
        record["phase"] = "masked" if masked else ("burn-in" if method.pixel_reweighted else "plain")
        if not math.isfinite(record["loss"]):
            raise FastpartError(
                f"loss became {record['loss']} in epoch {epoch + 1}; stopped. The last good checkpoint is "
                f"{checkpoint} (epoch {epoch}); try a lower --lr"
            )
        scheduler.step()
        if epoch + 1 == cfg.epochs or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0):
            final_eval = evaluate(model, test_loader, cfg, cfg.eval_n)
            record.update(final_eval)
        if main:
            append_jsonl(metrics_path, record)  # before the checkpoint: a kill between them re-runs this epoch
            save_checkpoint(checkpoint, state, epoch + 1, mask_key, cfg)
            tqdm.write(
                f"epoch {epoch + 1}/{cfg.epochs} ({record['phase']}): loss {record['loss']:.4f} "
                f"nat {100 * record['train_natural_acc']:.1f}% adv {100 * record['train_adv_acc']:.1f}% "
                f"{record['images_per_second']:.0f} img/s"
            )
        history.append(record)
    if not final_eval:
        final_eval = evaluate(model, test_loader, cfg, cfg.eval_n)
    distributed.barrier()  # every process returns after rank 0 wrote the last checkpoint
    return TrainResult(cfg, run_dir, history, final_eval, time.perf_counter() - start, rank)
