"""Adversarial training: AT, TRADES, MART and their pixel-reweighted versions PART, PART-T, PART-M.

One epoch: for every batch, craft adversarial examples with the model in eval mode (a generator of
``fastpart.attacks.generators``; per-pixel budget for PART after the burn-in, ``fastpart.part``), then
take an SGD step on the method's loss in train mode (``fastpart.objectives``). PART's masks are computed
for the whole training split at the end of the burn-in and every ``mask_freq`` epochs, cached on disk,
looked up by sample index and augmented with their images by the loader. The run folder
(``fastpart.runfolder``) gets config, environment, one metrics line per epoch and an atomic checkpoint
per epoch, so ``--resume`` continues a killed run exactly as if it had never stopped.

The run's configuration (``TrainConfig``) stops in this module: ``fastpart.step``'s ``train_step`` and
``train_epoch`` take the model, the optimizer, the objective, a generator, the budget or ``MaskPlan`` and
the autocast dtype, so they serve a user's own loop as they serve ``fastpart train``.

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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from fastpart import distributed
from fastpart.atomic import hold, remove_stale_temporaries, write_json_atomic
from fastpart.attacks.generators import SINGLE_STEP, Generator, make_generator
from fastpart.averaging import WeightAverage
from fastpart.awp import AdversarialWeightPerturbation
from fastpart.board import BOARD, Board
from fastpart.config import METHODS, Method, TrainConfig, check_train, default_dataset
from fastpart.data.datasets import TrainDefaults
from fastpart.data.splitfiles import dataset_manifest, split_path
from fastpart.errors import FastpartError
from fastpart.loader import Augment, DeviceLoader, stream_seed
from fastpart.models import create_model
from fastpart.monitor import BestCheckpoint, collapse_check, holdout, split_accuracy
from fastpart.objectives import Objective, get_objective
from fastpart.progress import describe, duration, estimate
from fastpart.provenance import environment
from fastpart.schedules import Schedule
from fastpart.part import MaskCache, MaskPlan, SplitImages, cached_levels, refresh_epochs, refresh_masks
from fastpart.precision import autocast_dtype
from fastpart.resolve import (generator_name, generator_settings, mask_plan, paper_defaults, pgd_start, schedule,
                              process_batch_size, resolve)
from fastpart.runfolder import (BEST, CHECKPOINT, CONFIG, ENV, MASKS, METRICS, RESUME_FIELDS, TRAIN_LOCK, TrainingState,
                                append_jsonl, check_recordable, keep_metrics_until, load_checkpoint, model_options,
                                read_checkpoint, resume_conflicts, save_checkpoint)
from fastpart.step import train_epoch, train_step

__all__ = ["TrainResult", "train", "train_epoch", "train_step"]


def attack_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of the attack generator (random starts) of ``epoch`` on process ``rank``."""
    return stream_seed(seed, epoch, f"attack/{rank}")


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
        wall = sum(h.get("wall_seconds", h["epoch_seconds"] + h.get("mask_seconds", 0.0)) for h in self.history)
        return (
            f"{c.dataset} {c.model} {c.method}: {c.epochs} epochs in {train_seconds:.0f}s "
            f"({images / max(train_seconds, 1e-9):.0f} img/s training; {wall:.0f}s with masks and evaluations); "
            f"test natural {100 * e['test_natural_acc']:.2f}%, "
            f"PGD-{c.eval_steps} {100 * e[f'test_pgd{c.eval_steps}_acc']:.2f}% (n={e['test_n']}); run folder {self.run_dir}"
        )


def train(cfg: TrainConfig) -> TrainResult:
    """Train per ``cfg``; returns the per-epoch history and the final test-set evaluation.

    Inside a ``torchrun`` launch this process joins the launch's process group for the run (see the
    module docstring); a communication failure becomes a one-line ``DistributedError``.
    """
    if cfg.dataset is None:
        cfg = replace(cfg, dataset=default_dataset(cfg.data_dir))
    check_train(cfg)
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
            run = _setup(cfg, manifest, defaults, device, batch_size)
            try:
                return _epochs(run)
            except BaseException:
                if distributed.is_main() and not (run_dir / CHECKPOINT).exists():  # no epoch finished: no run
                    for record in (CONFIG, ENV, METRICS):
                        (run_dir / record).unlink(missing_ok=True)
                raise
            finally:
                if run.board is not None:
                    run.board.close()
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
        check_recordable(cfg)  # a run that could not be resumed is not started
        return None
    if not cfg.resume:
        raise FastpartError(f"{run_dir} already holds a run: pass --resume to continue it, or choose another --out")
    payload = read_checkpoint(checkpoint, required=RESUME_FIELDS)
    saved_sha = payload.get("dataset_sha")  # the data first: other data resolves other paper settings
    if saved_sha is not None and saved_sha != dataset_sha:
        raise FastpartError(f"--resume with other training data than the run in {run_dir}: the {cfg.dataset} train "
                            f"split in {cfg.data_dir} is {dataset_sha[:23]}..., the run was trained on "
                            f"{saved_sha[:23]}...")
    changed = resume_conflicts(payload["config"], cfg)
    if changed:
        raise FastpartError(f"--resume with other settings than the run in {run_dir}: {', '.join(changed)}")
    return payload


def _model(cfg: TrainConfig, num_classes: int, device: torch.device) -> nn.Module:
    model = create_model(cfg.model, num_classes=num_classes, **model_options(cfg)).to(device)
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model


@dataclass
class _Run:
    """What the epochs of a run work with, set up once by ``_setup`` from the resolved config."""

    cfg: TrainConfig
    run_dir: Path
    num_classes: int
    method: Method
    objective: Objective
    generate: Generator
    autocast: torch.dtype | None
    masks: MaskPlan
    refreshes: list[int]  # 0-based epochs that begin with a mask refresh (PART)
    schedule: Schedule  # the learning rate and the budget against the training time
    state: TrainingState
    train_loader: DeviceLoader
    test_loader: DeviceLoader
    val_loader: DeviceLoader | None
    net: nn.Module  # the attack's model (compiled with --compile; the plain model under --compile-attack)
    update_net: nn.Module  # the update's (DDP under several processes)
    average: WeightAverage | None
    best: BestCheckpoint | None
    board: Board | None
    split: SplitImages
    cache: MaskCache
    masks_of: str  # the identity of the masks' data (the training split, less the held-out rows)
    dataset_sha: str
    start_epoch: int = 0
    mask_key: str | None = None
    mask_weights: dict[str, torch.Tensor] | None = None  # the weights the current masks came from
    history: list[dict[str, Any]] | None = None
    final_eval: dict[str, float] | None = None  # the last test-set evaluation
    epoch_seconds: list[float] | None = None  # the epochs run by this process, for the estimate of what is left
    generate_masked: Generator | None = None  # PART's generator under the mask, when its start differs (--numerics)
    awp: AdversarialWeightPerturbation | None = None  # --awp: from epoch --awp-warmup on


def _loaders(cfg: TrainConfig, defaults: TrainDefaults, device: torch.device, batch_size: int, train_rows,
             val_rows) -> tuple[DeviceLoader, DeviceLoader, DeviceLoader | None]:
    augment = Augment(defaults.crop_padding, flip=True) if defaults.augment else None
    options = dict(device=device, backend=cfg.loader, num_workers=cfg.workers, seed=cfg.seed)
    train_path = split_path(cfg.data_dir, cfg.dataset, "train")
    world = distributed.world_size()
    train_loader = DeviceLoader(train_path, batch_size=batch_size, shuffle=True, augment=augment,
                                rank=distributed.rank(), world_size=world, subset=train_rows, **options)
    val_loader = None if val_rows is None else DeviceLoader(
        train_path, batch_size=max(cfg.batch_size, 256), shuffle=False, drop_last=False, subset=val_rows, **options)
    test_loader = DeviceLoader(split_path(cfg.data_dir, cfg.dataset, "test"), batch_size=max(cfg.batch_size, 256),
                               shuffle=cfg.eval_n is not None, drop_last=False, **options)
    if len(train_loader) == 0:
        raise FastpartError(f"the training split has {train_loader.num_samples} images, fewer than one global batch "
                            f"of {batch_size * world}: lower --batch-size")
    return train_loader, test_loader, val_loader


def _setup(cfg: TrainConfig, manifest: dict[str, Any], defaults: TrainDefaults, device: torch.device,
           batch_size: int) -> _Run:
    """Check a resume, write config and environment, build model, loaders, optimizer and the PART pieces,
    and restore the state of a resumed run."""
    main, run_dir = distributed.is_main(), Path(cfg.out)
    dataset_sha = manifest["splits"]["train"]["sha256"]
    previous = distributed.on_main(lambda: _previous_run(cfg, dataset_sha))
    train_rows, val_rows = holdout(manifest["splits"]["train"]["count"], cfg.val_n, cfg.seed, cfg.train_n)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if previous is not None:
            remove_stale_temporaries(run_dir)  # left by a process killed while writing

    torch.manual_seed(cfg.seed)
    model = _model(cfg, manifest["num_classes"], device)
    train_loader, test_loader, val_loader = _loaders(cfg, defaults, device, batch_size, train_rows, val_rows)
    # The attack and the masks run on the plain module (input gradients only, nothing to all-reduce); the
    # update runs through DDP. torch.compile wraps the DDP module (its graph breaks at the gradient buckets).
    mode = None if cfg.compile_mode == "default" else cfg.compile_mode
    net = torch.compile(model, mode=mode) if cfg.compile else model
    update_net = net
    if distributed.world_size() > 1:
        # 1x1 kernels: a weight gradient in channels_last strides has the same memory layout as its bucket view
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        update_net = torch.compile(ddp, mode=mode) if cfg.compile else ddp
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.wd)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=0.1)
    average = WeightAverage(model, cfg.ema) if cfg.ema is not None else None
    best = None if val_loader is None else BestCheckpoint(
        run_dir / BEST, f"{'ema_' if average else ''}val_pgd{cfg.val_steps}_acc")
    method = METHODS[cfg.method]
    objective = get_objective(method.objective).with_label_smoothing(cfg.label_smoothing)
    run = _Run(
        cfg, run_dir, manifest["num_classes"], method, objective,
        make_generator(generator_name(cfg), generator_settings(cfg, objective)), autocast_dtype(cfg.precision),
        mask_plan(cfg), refresh_epochs(cfg.epochs, cfg.burn_in, cfg.mask_freq) if method.pixel_reweighted else [],
        schedule(cfg), TrainingState(model, optimizer, scheduler, torch.Generator(device)), train_loader, test_loader, val_loader,
        model if cfg.compile_attack else net,  # a compiled attack compiles the model itself
        update_net, average, best, Board(run_dir / BOARD) if cfg.tensorboard and main else None,
        SplitImages(train_loader.unaugmented, device), MaskCache(run_dir / MASKS),
        dataset_sha + (f"|val={cfg.val_n}@{cfg.seed}" if val_rows is not None else "")
        + (f"|train={cfg.train_n}" if cfg.train_n is not None else ""), dataset_sha)
    if method.pixel_reweighted and pgd_start(cfg, objective, masked=True) != pgd_start(cfg, objective):
        run.generate_masked = make_generator(generator_name(cfg), generator_settings(cfg, objective, masked=True))
    if cfg.awp is not None:
        run.awp = AdversarialWeightPerturbation(model, cfg.awp)
    if previous is not None:
        run.start_epoch, run.mask_key = load_checkpoint(previous, run.state, str(run_dir / CHECKPOINT))
        run.mask_weights = previous.get("mask_model")
        if average is not None:
            average.load_state_dict(previous["ema"])
        if best is not None:
            run.best = BestCheckpoint(best.path, best.metric, previous.get("best"))
    run.history = distributed.on_main(lambda: keep_metrics_until(run_dir / METRICS, run.start_epoch))
    if run.mask_key is not None and run.start_epoch < cfg.epochs and run.start_epoch not in run.refreshes:
        train_loader.set_aux(_restored_masks(run))
    if main:  # the run's records, once it has started (a run refused while setting up leaves none)
        held_out = {} if val_rows is None else {"val_rows": val_rows.tolist()}  # the training split's held-out rows
        write_json_atomic(run_dir / CONFIG, {**cfg.to_dict(), **held_out})
        write_json_atomic(run_dir / ENV, environment(device))
    return run


def _epochs(run: _Run) -> TrainResult:
    """The epochs of a run from its start epoch, then the final test-set evaluation."""
    cfg, history = run.cfg, run.history
    start = time.perf_counter()
    run.final_eval = history[-1] if history and "test_n" in history[-1] else {}
    run.epoch_seconds = []
    if distributed.is_main():
        tqdm.write(describe(cfg, run.train_loader.num_samples, run.start_epoch))
    for epoch in range(run.start_epoch, cfg.epochs):
        history.append(_epoch(run, epoch))
    if not run.final_eval:
        run.final_eval = _accuracies(run, run.test_loader, cfg.eval_steps, "test", cfg.eval_n)
    distributed.barrier()  # every process returns after rank 0 wrote the last checkpoint
    return TrainResult(cfg, run.run_dir, history, run.final_eval, time.perf_counter() - start, distributed.rank())


def _epoch(run: _Run, epoch: int) -> dict[str, Any]:
    """One epoch: refresh the masks on schedule, train, evaluate when due, write metrics and checkpoint."""
    cfg, model, state, began = run.cfg, run.state.model, run.state, time.perf_counter()
    lr = run.schedule.lr_at(epoch) if run.schedule.per_batch else state.optimizer.param_groups[0]["lr"]
    record: dict[str, Any] = {"epoch": epoch + 1, "lr": lr}
    if cfg.eps_warmup or cfg.eps_delay:
        record["eps_scale"] = run.schedule.eps_scale(epoch)  # at the epoch's start; it rises batch by batch
    masked = run.method.pixel_reweighted and epoch >= cfg.burn_in
    if epoch in run.refreshes:
        record.update(_refresh(run, epoch))
    run.train_loader.set_epoch(epoch)
    state.generator.manual_seed(attack_seed(cfg.seed, epoch, distributed.rank()))
    first = not run.epoch_seconds and distributed.is_main()
    generate = run.generate_masked if masked and run.generate_masked is not None else run.generate
    record.update(train_epoch(model, run.train_loader, state.optimizer, run.objective, generate, state.generator,
                              eps=cfg.eps, masks=run.masks if masked else None, autocast_dtype=run.autocast,
                              attack_net=run.net, update_net=run.update_net, average=run.average,
                              awp=run.awp if epoch >= (cfg.awp_warmup or 0) else None,
                              desc=f"epoch {epoch + 1}/{cfg.epochs}", schedule=run.schedule, epoch=epoch,
                              timer=(lambda n, s: tqdm.write(estimate(cfg, cfg.epochs - epoch, len(run.train_loader), s / n,
                                                                     run.train_loader.batch_size))) if first else None))
    distributed.broadcast_buffers(model)  # rank 0's batch-norm running statistics everywhere, as DDP does
    record["phase"] = "masked" if masked else ("burn-in" if run.method.pixel_reweighted else "plain")
    checkpoint = run.run_dir / CHECKPOINT
    if not math.isfinite(record["loss"]):
        kept = (f"the last good checkpoint is {checkpoint} (epoch {epoch})" if epoch > 0
                else "no checkpoint was written (it was the first epoch)")
        raise FastpartError(f"loss became {record['loss']} in epoch {epoch + 1}; stopped: {kept}; try a lower --lr")
    state.scheduler.step()
    if epoch + 1 == cfg.epochs or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0):
        run.final_eval = _accuracies(run, run.test_loader, cfg.eval_steps, "test", cfg.eval_n)
        record.update(run.final_eval)
    if run.val_loader is not None and (epoch + 1 == cfg.epochs or (epoch + 1) % cfg.val_every == 0):
        record.update(_accuracies(run, run.val_loader, cfg.val_steps, "val"))
    if cfg.ae in SINGLE_STEP or cfg.awp is not None:
        record.update(_collapse(run, record["epoch"]))
    record["wall_seconds"] = time.perf_counter() - began  # masks, training and evaluations: what the ETA counts
    run.epoch_seconds.append(record["wall_seconds"])
    if distributed.is_main():
        _write_epoch(run, record, epoch)
    return record


def _collapse(run: _Run, epoch: int) -> dict[str, Any]:
    """Single-step training and --awp: ``collapse_check`` on the validation split (else the test split), warned
    about."""
    cfg = run.cfg
    found = collapse_check(run.state.model, run.val_loader or run.test_loader, cfg.eps, cfg.eval_steps, cfg.seed,
                           run.autocast)
    if found["collapsed"] and distributed.is_main():
        tqdm.write(f"warning: robustness collapsed in epoch {epoch}: FGSM-RS accuracy "
                   f"{100 * found['collapse_fgsm_acc']:.1f}%, PGD-{cfg.eval_steps} "
                   f"{100 * found[f'collapse_pgd{cfg.eval_steps}_acc']:.1f}% on {found['collapse_n']} fixed images "
                   f"(metrics.jsonl: collapsed)")
    return found


def _refresh(run: _Run, epoch: int) -> dict[str, Any]:
    """Recompute (or reuse) the masks of the training split for the model as it is now; hand them to the loader."""
    model, start = run.state.model, time.perf_counter()
    masks = refresh_masks(model, run.split, run.masks, run.cache, run.masks_of)
    run.mask_key = masks.key
    run.mask_weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    run.train_loader.set_aux(masks.levels)
    if run.board is not None:
        run.board.log_masks(run.masks.cam_function(model), *run.split.get(), run.masks.settings, epoch + 1)
    return {"mask_seconds": time.perf_counter() - start, "mask_reused": masks.stats["reused"],
            "important_fraction": masks.stats["important_fraction"], "degenerate_maps": masks.stats["degenerate"]}


def _write_epoch(run: _Run, record: dict[str, Any], epoch: int) -> None:
    """Rank 0: the metrics line, TensorBoard, best.pt, then the checkpoint (a kill between them re-runs the epoch)."""
    model, average, best = run.state.model, run.average, run.best
    append_jsonl(run.run_dir / METRICS, record)
    if run.board is not None:
        run.board.log_epoch(record)
    if best is not None:
        best.offer(record, {"model": model.state_dict(), **({"ema": average.state_dict()} if average else {})},
                   run.cfg.to_dict())
    save_checkpoint(run.run_dir / CHECKPOINT, run.state, epoch + 1, run.mask_key, run.cfg, {
        "mask_model": run.mask_weights, "dataset_sha": run.dataset_sha,
        "ema": average.state_dict() if average else None, "best": best.state() if best else None})
    left = (run.cfg.epochs - epoch - 1) * sum(run.epoch_seconds) / len(run.epoch_seconds)
    tqdm.write(
        f"epoch {epoch + 1}/{run.cfg.epochs} ({record['phase']}): loss {record['loss']:.4f} "
        f"nat {100 * record['train_natural_acc']:.1f}% adv {100 * record['train_adv_acc']:.1f}% "
        f"{record['images_per_second']:.0f} img/s" + (f"; about {duration(left)} left" if left > 0 else "")
    )


def _accuracies(run: _Run, loader: DeviceLoader, steps: int, split: str, limit: int | None = None) -> dict[str, float]:
    """Natural and PGD accuracy of the live model, and of the weight average (keys ``ema_...``) when kept."""
    cfg = run.cfg
    found = split_accuracy(run.state.model, loader, cfg.eps, steps, cfg.seed, run.autocast, split, limit)
    if run.average is not None:
        found.update(split_accuracy(run.average.module, loader, cfg.eps, steps, cfg.seed, run.autocast, split, limit,
                                    prefix="ema_"))
    return found


def _restored_masks(run: _Run) -> torch.Tensor:
    """The masks a resumed run was using: from the cache, or, when the file is missing or corrupt, recomputed
    from the weights they came from (kept in the checkpoint), which must give the same key."""
    device = run.split.device
    if run.mask_weights is None:  # a checkpoint from before the weights were kept: the cache is all there is
        found = cached_levels(run.cache, run.mask_key, device)
        if found is None:
            raise FastpartError(f"the masks of this run ({run.cache.folder}) are missing or corrupt and its checkpoint "
                                f"predates the weights needed to recompute them: restart the run without --resume")
        return found[0]
    mask_model = _model(run.cfg, run.num_classes, device)
    mask_model.load_state_dict(run.mask_weights)
    masks = refresh_masks(mask_model, run.split, run.masks, run.cache, run.masks_of)
    if masks.key != run.mask_key:
        raise FastpartError(f"the masks recomputed for {run.cfg.out} do not match its checkpoint's mask key")
    return masks.levels
