"""Adversarial training: AT, TRADES, MART and their pixel-reweighted versions PART, PART-T, PART-M.

One epoch: for every batch, craft PGD examples with the model in eval mode (per-pixel budget for
PART after the burn-in, ``fastpart.part``), then take an SGD step on the method's loss in train mode
(``fastpart.objectives``). PART's masks are computed for the whole training split at the end of the
burn-in and every ``mask_freq`` epochs, cached on disk, looked up by sample index and augmented with
their images by the loader. The run folder (``fastpart.runs``) gets config, environment, one metrics
line per epoch and an atomic checkpoint per epoch, so ``--resume`` continues a killed run exactly as
if it had never stopped.

Under ``torchrun`` (``fastpart.distributed``) every process trains on its shard of each global batch
(``--batch-scope``): the attack and the CAM masks run on the plain model of the process (no DDP
forward, no gradient all-reduce), the update runs through ``DistributedDataParallel``. Batch norm
keeps per-process batch statistics (no SyncBatchNorm); the running statistics are rank 0's, as DDP
broadcasts them before each forward, and are broadcast again at the end of every epoch so that all
processes evaluate, compute masks and checkpoint the same model. The test-set evaluation gives every
process every ``world_size``-th batch and sums the counts. Rank 0 alone reads and writes the run
folder and prints; what it reads is broadcast. The attack randomness of epoch ``e`` on rank ``r`` is
seeded from (seed, e, r), so a run resumes exactly, also with another number of processes.

The hot loop does not synchronise with the host per batch: sums stay on the device and are read once
per epoch, where the NaN guard also looks.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from fastpart import distributed
from fastpart.atomic import hold, remove_stale_temporaries, write_json_atomic
from fastpart.attacks.graphed import graphed_pgd
from fastpart.attacks.mma import mma
from fastpart.attacks.pgd import pgd
from fastpart.config import TrainConfig
from fastpart.data.datasets import TrainDefaults
from fastpart.data.splitfiles import split_path
from fastpart.errors import FastpartError
from fastpart.kernels import Eps
from fastpart.averaging import WeightAverage
from fastpart.board import BOARD, Board
from fastpart.loader import Augment, DeviceLoader, stream_seed
from fastpart.maskcache import MaskCache
from fastpart.masks import refresh_epochs
from fastpart.models import create_model
from fastpart.objectives import METHODS, Objective, attack_loss_fn, get_objective, natural_probs
from fastpart.part import SplitImages, batch_budget, cached_levels, cam_function, mask_settings, refresh_masks
from fastpart.runs import (BEST, CHECKPOINT, CONFIG, ENV, MASKS, METRICS, TRAIN_LOCK, TrainingState, append_jsonl, environment,
                           keep_metrics_until, load_checkpoint, read_checkpoint, resume_conflicts, save_checkpoint)
from fastpart.settings import AUTOCAST, dataset_manifest, paper_defaults, process_batch_size, resolve
from fastpart.validation import BestCheckpoint, holdout, split_accuracy

__all__ = ["TrainResult", "train", "train_epoch", "train_step"]


def attack_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of the attack generator (random starts) of ``epoch`` on process ``rank``."""
    return stream_seed(seed, epoch, f"attack/{rank}")


# ---------------------------------------------------------------------------------------------
# One step, one epoch
# ---------------------------------------------------------------------------------------------


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, objective: Objective, x: torch.Tensor,
               y: torch.Tensor, eps: Eps, cfg: TrainConfig,
               generator: torch.Generator, update: nn.Module | None = None,
               average: WeightAverage | None = None) -> torch.Tensor:
    """One attack + SGD update; returns [loss * B, natural correct, adversarial correct] without syncing.

    ``model`` runs the natural forward and the attack (eval mode, input gradients only); ``update``
    (default: ``model``; the DistributedDataParallel wrapper under several processes) runs the
    train-mode forward whose backward updates the parameters; ``average`` (``--ema``) follows the
    parameters of the plain model after the step.
    """
    update = model if update is None else update
    autocast = AUTOCAST[cfg.precision]
    model.eval()
    with torch.no_grad(), torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
        logits_eval = model(x)
    if cfg.ae == "mma":
        x_adv = mma(model, x, y, eps, k=3, steps=cfg.steps, generator=generator, autocast_dtype=autocast)
    elif cfg.compile_attack:
        probs = natural_probs(logits_eval) if objective.attack_needs_natural_probs else None
        x_adv = graphed_pgd(model, x, y, eps, cfg.alpha, cfg.steps, objective.attack_loss, probs, start=objective.start,
                            generator=generator, autocast_dtype=autocast, mode=cfg.compile_mode)
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
    if average is not None:
        average.update()
    return torch.stack([loss.detach().float() * len(y), (logits_eval.argmax(1) == y).sum().float(),
                        (logits_adv.argmax(1) == y).sum().float()])


def train_epoch(model, loader: DeviceLoader, optimizer, objective: Objective, cfg: TrainConfig, epoch: int,
                generator: torch.Generator, masked: bool, net: nn.Module | None = None,
                update_net: nn.Module | None = None, average: WeightAverage | None = None) -> dict[str, Any]:
    """One epoch; ``net`` (default: the model) runs the attack and the update, e.g. a torch.compile'd model;
    ``update_net`` (default: ``net``) runs the update alone, e.g. the DistributedDataParallel wrapper;
    ``average`` (``--ema``) is updated after every step.
    Under several processes the record sums every process's shard. Every sum stays on the device until
    the end of the epoch (one host synchronisation per epoch)."""
    sums = torch.zeros(5, device=loader.device)  # loss * B, natural, adversarial, important fraction, degenerate
    seen = batches = 0
    attack_net = model if net is None or cfg.compile_attack else net  # a compiled attack compiles the model itself
    update_net = attack_net if update_net is None else update_net
    start = time.perf_counter()
    for batch in tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, mininterval=1.0,
                      disable=not distributed.is_main()):
        x, y, _, aux = batch if len(batch) == 4 else (*batch, None)
        eps: Eps = cfg.eps
        if masked:
            eps, batch_stats = batch_budget(model, x, y, aux, cfg)
            if batch_stats:
                sums[3] += batch_stats["important"]
                sums[4] += batch_stats["degenerate"]
        sums[:3] += train_step(attack_net, optimizer, objective, x, y, eps, cfg, generator, update_net, average)
        seen += len(y)
        batches += 1
    if loader.device.type == "cuda":
        torch.cuda.synchronize(loader.device)
    seconds = time.perf_counter() - start
    totals = torch.tensor([*sums.tolist(), seen, batches], dtype=torch.float64)
    loss_sum, natural, adversarial, important, degenerate, seen, batches = distributed.all_reduce_sum(totals).tolist()
    seen, batches = int(seen), int(batches)
    record = {"loss": loss_sum / seen, "train_natural_acc": natural / seen, "train_adv_acc": adversarial / seen,
              "images": seen, "epoch_seconds": seconds, "images_per_second": seen / seconds}
    if masked and cfg.mask_freq == 0:
        record.update(important_fraction=important / max(batches, 1), degenerate_maps=int(degenerate))
    return record


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
            f"{c.dataset} {c.model} {c.method}: {c.epochs} epochs in {train_seconds:.0f}s "
            f"({images / max(train_seconds, 1e-9):.0f} img/s training); test natural {100 * e['test_natural_acc']:.2f}%, "
            f"PGD-{c.eval_steps} {100 * e[f'test_pgd{c.eval_steps}_acc']:.2f}% (n={e['test_n']}); run folder {self.run_dir}"
        )


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
    run_dir = Path(cfg.out)
    held = hold(run_dir / TRAIN_LOCK, f"run folder {run_dir}") if distributed.is_main() else contextlib.nullcontext()
    try:
        with held:
            return _train(cfg, manifest, defaults, device, batch_size)
    except RuntimeError as exc:
        if distributed.world_size() > 1 and distributed.is_communication_error(exc):
            raise distributed.as_distributed_error(exc) from None
        raise
    finally:
        if joined:
            distributed.shutdown()


def _previous_run(cfg: TrainConfig, dataset_sha: str) -> dict[str, Any] | None:
    """The checkpoint payload of the run in ``cfg.out`` when resuming it (None for a new run), checked
    before anything is written: another run there without --resume, other settings or other data."""
    run_dir = Path(cfg.out)
    checkpoint = run_dir / CHECKPOINT
    if not checkpoint.exists():
        return None
    if not cfg.resume:
        raise FastpartError(f"{run_dir} already holds a run: pass --resume to continue it, or choose another --out")
    payload = read_checkpoint(checkpoint, required=("model", "optimizer", "scheduler", "epoch", "config"))
    changed = resume_conflicts(payload["config"], cfg)
    if changed:
        raise FastpartError(f"--resume with other settings than the run in {run_dir}: {', '.join(changed)}")
    saved_sha = payload.get("dataset_sha")
    if saved_sha is not None and saved_sha != dataset_sha:
        raise FastpartError(f"--resume with other training data than the run in {run_dir}: the {cfg.dataset} train "
                            f"split in {cfg.data_dir} is not the one it was trained on")
    return payload


def _model(cfg: TrainConfig, num_classes: int, device: torch.device) -> nn.Module:
    model = create_model(cfg.model, num_classes=num_classes).to(device)
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model


@dataclass
class _Run:
    """What the epochs of a run work with, set up by ``_train``."""

    cfg: TrainConfig
    state: TrainingState
    train_loader: DeviceLoader
    test_loader: DeviceLoader
    val_loader: DeviceLoader | None
    net: nn.Module  # the attack's model (compiled with --compile)
    update_net: nn.Module  # the update's (DDP under several processes)
    average: WeightAverage | None
    best: BestCheckpoint | None
    board: Board | None
    split: SplitImages
    cache: MaskCache
    masks_of: str  # the identity of the masks' data (the training split, less the held-out rows)
    dataset_sha: str


def _train(cfg: TrainConfig, manifest: dict[str, Any], defaults: TrainDefaults, device: torch.device,
           batch_size: int) -> TrainResult:
    method = METHODS[cfg.method]
    rank, world, main = distributed.rank(), distributed.world_size(), distributed.is_main()
    run_dir = Path(cfg.out)
    dataset_sha = manifest["splits"]["train"]["sha256"]
    previous = distributed.on_main(lambda: _previous_run(cfg, dataset_sha))
    train_rows, val_rows = holdout(manifest["splits"]["train"]["count"], cfg.val_n, cfg.seed)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if previous is not None:
            remove_stale_temporaries(run_dir)  # left by a process killed while writing
        held_out = {} if val_rows is None else {"val_rows": val_rows.tolist()}  # the training split's held-out rows
        write_json_atomic(run_dir / CONFIG, {**cfg.to_dict(), **held_out})
        write_json_atomic(run_dir / ENV, environment(device))

    torch.manual_seed(cfg.seed)
    model = _model(cfg, manifest["num_classes"], device)
    augment = Augment(defaults.crop_padding, flip=True) if defaults.augment else None
    loader_options = dict(device=device, backend=cfg.loader, num_workers=cfg.workers, seed=cfg.seed)
    train_path = split_path(cfg.data_dir, cfg.dataset, "train")
    train_loader = DeviceLoader(train_path, batch_size=batch_size, shuffle=True, augment=augment, rank=rank,
                                world_size=world, subset=train_rows, **loader_options)
    val_loader = None if val_rows is None else DeviceLoader(
        train_path, batch_size=max(cfg.batch_size, 256), shuffle=False, drop_last=False, subset=val_rows,
        **loader_options)
    test_loader = DeviceLoader(split_path(cfg.data_dir, cfg.dataset, "test"), batch_size=max(cfg.batch_size, 256),
                               shuffle=cfg.eval_n is not None, drop_last=False, **loader_options)
    if len(train_loader) == 0:
        raise FastpartError(f"the training split has {train_loader.num_samples} images, fewer than one global batch "
                            f"of {batch_size * world}: lower --batch-size")
    # The attack and the masks run on the plain module (input gradients only, nothing to all-reduce); the
    # update runs through DDP. torch.compile wraps the DDP module (its graph breaks at the gradient buckets).
    mode = None if cfg.compile_mode == "default" else cfg.compile_mode
    net = torch.compile(model, mode=mode) if cfg.compile else model
    update_net = net
    if world > 1:
        # 1x1 kernels: a weight gradient in channels_last strides has the same memory layout as its bucket view
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        update_net = torch.compile(ddp, mode=mode) if cfg.compile else ddp
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.wd)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=0.1)
    state = TrainingState(model, optimizer, scheduler, torch.Generator(device))
    average = WeightAverage(model, cfg.ema) if cfg.ema is not None else None
    best = None if val_loader is None else BestCheckpoint(
        run_dir / BEST, f"{'ema_' if average else ''}val_pgd{cfg.val_steps}_acc")

    start_epoch, mask_key, mask_weights = 0, None, None
    if previous is not None:
        start_epoch, mask_key = load_checkpoint(previous, state)
        mask_weights = previous.get("mask_model")
        if average is not None:
            average.load_state_dict(previous["ema"])
        if best is not None:
            best = BestCheckpoint(best.path, best.metric, previous.get("best"))
    history = distributed.on_main(lambda: keep_metrics_until(run_dir / METRICS, start_epoch))
    schedule = refresh_epochs(cfg.epochs, cfg.burn_in, cfg.mask_freq) if method.pixel_reweighted else []
    split = SplitImages(train_loader, device)
    masks_of = dataset_sha if val_rows is None else f"{dataset_sha}|val={cfg.val_n}@{cfg.seed}"
    run = _Run(cfg, state, train_loader, test_loader, val_loader, net, update_net, average, best,
               Board(run_dir / BOARD) if cfg.tensorboard and main else None, split, MaskCache(run_dir / MASKS),
               masks_of, dataset_sha)
    if mask_key is not None and start_epoch < cfg.epochs and start_epoch not in schedule:
        train_loader.set_aux(_restored_masks(cfg, manifest, device, mask_key, mask_weights, split, run.cache, masks_of))
    try:
        return _epochs(run, history, start_epoch, mask_key, mask_weights)
    finally:
        if run.board is not None:
            run.board.close()


def _epochs(run: _Run, history: list[dict[str, Any]], start_epoch: int, mask_key: str | None,
            mask_weights: dict[str, torch.Tensor] | None) -> TrainResult:
    """The epochs of a run from ``start_epoch``: refresh masks on schedule, train, evaluate, write the run folder."""
    cfg, model, optimizer, scheduler = run.cfg, run.state.model, run.state.optimizer, run.state.scheduler
    method, objective = METHODS[cfg.method], get_objective(METHODS[cfg.method].objective)
    rank, main = distributed.rank(), distributed.is_main()
    run_dir = Path(cfg.out)
    checkpoint, metrics_path = run_dir / CHECKPOINT, run_dir / METRICS
    schedule = refresh_epochs(cfg.epochs, cfg.burn_in, cfg.mask_freq) if method.pixel_reweighted else []
    average, best, board, split = run.average, run.best, run.board, run.split
    start = time.perf_counter()
    final_eval: dict[str, float] = history[-1] if history and "test_n" in history[-1] else {}
    for epoch in range(start_epoch, cfg.epochs):
        record: dict[str, Any] = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
        masked = method.pixel_reweighted and epoch >= cfg.burn_in
        if epoch in schedule:
            refresh_start = time.perf_counter()
            masks = refresh_masks(model, split, cfg, run.cache, run.masks_of)
            mask_key = masks.key
            mask_weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            run.train_loader.set_aux(masks.levels)
            record.update(mask_seconds=time.perf_counter() - refresh_start, mask_reused=masks.stats["reused"],
                          important_fraction=masks.stats["important_fraction"],
                          degenerate_maps=masks.stats["degenerate"])
            if board is not None:
                settings = mask_settings(cfg)
                board.log_masks(cam_function(model, settings, cfg.precision), *split.get(), settings, epoch + 1)
        run.train_loader.set_epoch(epoch)
        run.state.generator.manual_seed(attack_seed(cfg.seed, epoch, rank))
        record.update(train_epoch(model, run.train_loader, optimizer, objective, cfg, epoch, run.state.generator, masked,
                                  run.net, run.update_net, average))
        distributed.broadcast_buffers(model)  # rank 0's batch-norm running statistics everywhere, as DDP does
        record["phase"] = "masked" if masked else ("burn-in" if method.pixel_reweighted else "plain")
        if not math.isfinite(record["loss"]):
            kept = (f"the last good checkpoint is {checkpoint} (epoch {epoch})" if epoch > 0
                    else "no checkpoint was written (it was the first epoch)")
            raise FastpartError(f"loss became {record['loss']} in epoch {epoch + 1}; stopped: {kept}; try a lower --lr")
        scheduler.step()
        if epoch + 1 == cfg.epochs or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0):
            final_eval = _accuracies(model, average, run.test_loader, cfg, cfg.eval_steps, "test", cfg.eval_n)
            record.update(final_eval)
        if run.val_loader is not None and (epoch + 1 == cfg.epochs or (epoch + 1) % cfg.val_every == 0):
            record.update(_accuracies(model, average, run.val_loader, cfg, cfg.val_steps, "val"))
        if main:
            append_jsonl(metrics_path, record)  # before the checkpoints: a kill between them re-runs this epoch
            if board is not None:
                board.log_epoch(record)
            if best is not None:
                best.offer(record, {"model": model.state_dict(), **({"ema": average.state_dict()} if average else {})},
                           cfg)
            save_checkpoint(checkpoint, run.state, epoch + 1, mask_key, cfg, {
                "mask_model": mask_weights, "dataset_sha": run.dataset_sha,
                "ema": average.state_dict() if average else None, "best": best.state() if best else None})
            tqdm.write(
                f"epoch {epoch + 1}/{cfg.epochs} ({record['phase']}): loss {record['loss']:.4f} "
                f"nat {100 * record['train_natural_acc']:.1f}% adv {100 * record['train_adv_acc']:.1f}% "
                f"{record['images_per_second']:.0f} img/s"
            )
        history.append(record)
    if not final_eval:
        final_eval = _accuracies(model, average, run.test_loader, cfg, cfg.eval_steps, "test", cfg.eval_n)
    distributed.barrier()  # every process returns after rank 0 wrote the last checkpoint
    return TrainResult(cfg, run_dir, history, final_eval, time.perf_counter() - start, rank)


def _accuracies(model: nn.Module, average: WeightAverage | None, loader: DeviceLoader, cfg: TrainConfig, steps: int,
                split: str, limit: int | None = None) -> dict[str, float]:
    """Natural and PGD accuracy of the live model, and of the weight average (keys ``ema_...``) when kept."""
    found = split_accuracy(model, loader, cfg, steps, split, limit)
    if average is not None:
        found.update(split_accuracy(average.module, loader, cfg, steps, split, limit, prefix="ema_"))
    return found


def _restored_masks(cfg: TrainConfig, manifest: dict[str, Any], device: torch.device, key: str,
                    weights: dict[str, torch.Tensor] | None, split: SplitImages, cache: MaskCache,
                    dataset_sha: str) -> torch.Tensor:
    """The masks a resumed run was using: from the cache, or, when the file is missing or corrupt, recomputed
    from the weights they came from (kept in the checkpoint), which must give the same key."""
    if weights is None:  # a checkpoint from before the weights were kept: the cache is all there is
        found = cached_levels(cache, key, device)
        if found is None:
            raise FastpartError(f"the masks of this run ({cache.folder}) are missing or corrupt and its checkpoint "
                                f"predates the weights needed to recompute them: restart the run without --resume")
        return found[0]
    mask_model = _model(cfg, manifest["num_classes"], device)
    mask_model.load_state_dict(weights)
    masks = refresh_masks(mask_model, split, cfg, cache, dataset_sha)
    if masks.key != key:
        raise FastpartError(f"the masks recomputed for {cfg.out} do not match its checkpoint's mask key")
    return masks.levels
