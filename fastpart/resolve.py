"""From what the user asked for (a ``TrainConfig``) to what a run uses: paper defaults, the device, checks, and
the objects the stages below training are built from.

``resolve(cfg, defaults)`` fills every unset field of a ``TrainConfig`` (``None``) from the dataset's
paper settings (``fastpart.data.datasets.TrainDefaults``) and the machine (``auto`` device and
precision), and refuses impossible combinations with one line. The run's configuration stops here: ``mask_plan``
(PART's masks), ``generator_settings`` / ``generator_name`` (the training attack) and
``process_batch_size`` turn it into what the mask stage, the attacks and the loader take.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from fastpart.attacks.generators import GeneratorSettings
from fastpart.config import METHODS, TrainConfig, check_train
from fastpart.data.datasets import DATASETS, TrainDefaults
from fastpart.errors import FastpartError
from fastpart.models import ACTIVATION_MODELS
from fastpart.objectives import Objective
from fastpart.part import MASK_BATCH, MaskPlan, MaskSettings
from fastpart.precision import autocast_dtype
from fastpart.schedules import Schedule

__all__ = ["schedule", "generator_name", "generator_settings", "mask_plan", "mask_settings", "paper_defaults",
           "pgd_start", "process_batch_size", "released_milestones", "resolve", "resolve_device"]

FALLBACK_DATASET = "cifar10"  # paper settings used for datasets without their own (imagefolder)
AWP_WARMUP = {"trades": 10}  # epochs before AWP starts by the base objective: the official TRADES-AWP's 10 (AT: 0)


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
    check_train(cfg)
    pixel = METHODS[cfg.method].pixel_reweighted
    burn_in = (cfg.burn_in if cfg.burn_in is not None else epochs // 4) if pixel else cfg.burn_in
    released = pixel and cfg.numerics == "released"
    milestones = released_milestones(burn_in) if released else (int(round(0.75 * epochs)),)
    resolved = replace(
        cfg,
        model=cfg.model or defaults.model,
        epochs=epochs,
        burn_in=burn_in,
        batch_size=cfg.batch_size or defaults.batch_size,
        lr=cfg.lr if cfg.lr is not None else defaults.lr,
        wd=cfg.wd if cfg.wd is not None else defaults.weight_decay,
        alpha=cfg.alpha if cfg.alpha is not None else defaults.alpha,
        milestones=cfg.milestones if cfg.milestones is not None else milestones,
        lr_schedule=cfg.lr_schedule or ("step" if released else defaults.lr_schedule),
        eps_delay=cfg.eps_delay if cfg.eps_delay is not None else 0.0 if released else defaults.eps_delay * epochs,
        eps_warmup=cfg.eps_warmup if cfg.eps_warmup is not None else 0.0 if released else defaults.eps_warmup * epochs,
        mask_mode="reference" if released else cfg.mask_mode,
        awp_warmup=(cfg.awp_warmup if cfg.awp_warmup is not None else AWP_WARMUP.get(METHODS[cfg.method].objective, 0))
        if cfg.awp is not None else None,
        device=device,
        precision=precision,
    )
    check_train(resolved)
    if resolved.activation != "relu" and resolved.model not in ACTIVATION_MODELS:
        raise FastpartError(f"--activation {resolved.activation} is an option of fastpart's CIFAR networks "
                            f"({', '.join(ACTIVATION_MODELS)}), not of --model {resolved.model}")
    return resolved


def released_milestones(burn_in: int) -> tuple[int, int]:
    """The released PART code's schedule as 0-based milestones: after its burn-in (lr as given) it counts PART's
    epochs from 1 and sets lr / 10 from the 60th, lr / 100 from the 90th (utils.adjust_learning_rate, adjust-first
    60, adjust-second 90): with 80 epochs and a burn-in of 20, only the last epoch is decayed."""
    return burn_in + 59, burn_in + 89


def process_batch_size(cfg: TrainConfig, world_size: int) -> int:
    """The batch of one process: the global --batch-size split over the processes, or --batch-size (per-gpu)."""
    if cfg.batch_scope == "per-gpu" or world_size == 1:
        return cfg.batch_size
    if cfg.batch_size % world_size:
        raise FastpartError(f"--batch-size {cfg.batch_size} (the global batch) does not split over {world_size} "
                            f"processes: give a multiple of {world_size}, or --batch-scope per-gpu")
    return cfg.batch_size // world_size


def mask_settings(cfg: TrainConfig) -> MaskSettings:
    """The mask settings of a training config (``--mask-mode``, ``--tau``, ``--cam``, ``--cam-backend`` ...)."""
    return MaskSettings(mode=cfg.mask_mode, tau=cfg.tau, interpolation=cfg.interpolation, cam=cfg.cam,
                        target=cfg.mask_target, layer=cfg.cam_layer, backend=cfg.cam_backend)


def mask_plan(cfg: TrainConfig) -> MaskPlan:
    """What a run's masks need (a resolved config): settings, budgets, the CAMs' precision, the refresh batch."""
    return MaskPlan(mask_settings(cfg), cfg.eps, cfg.eps_low, cfg.precision, max(cfg.batch_size, MASK_BATCH))


def schedule(cfg: TrainConfig) -> Schedule:
    """The learning-rate and budget schedules of a resolved config (``fastpart.schedules``)."""
    return Schedule(cfg.lr, cfg.epochs, cfg.lr_schedule, tuple(cfg.milestones), 0.1, cfg.lr_warmup, cfg.eps_warmup,
                    cfg.eps_delay)


def generator_name(cfg: TrainConfig) -> str:
    """The registered generator of the training examples: ``--ae``, with PGD compiled under --compile-attack."""
    return "pgd-compiled" if cfg.ae == "pgd" and cfg.compile_attack else cfg.ae


def pgd_start(cfg: TrainConfig, objective: Objective, masked: bool = False) -> str:
    """PGD's start in the burn-in or under PART's mask: --pgd-start, else the objective's under --numerics."""
    numerics = cfg.numerics if cfg.pixel_reweighted else "official"
    return cfg.pgd_start or objective.start_for(numerics, masked)


def generator_settings(cfg: TrainConfig, objective: Objective, masked: bool = False) -> GeneratorSettings:
    """The training attack's settings (a resolved config): the objective's loss, the start (``pgd_start``; ``masked``:
    under PART's mask), alpha, steps."""
    return GeneratorSettings(objective.attack_loss, pgd_start(cfg, objective, masked), cfg.alpha, cfg.steps,
                             autocast_dtype(cfg.precision), cfg.compile_mode)
