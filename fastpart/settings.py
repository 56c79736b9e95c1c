"""From what the user asked for to the settings a run uses: paper defaults per dataset, the device, checks.

``resolve(cfg, defaults)`` fills every unset field of a ``TrainConfig`` (``None``) from the dataset's
paper settings (``fastpart.data.datasets.TrainDefaults``) and the machine (``auto`` device and
precision), and refuses impossible combinations with one line. ``dataset_manifest`` reads a converted
dataset's manifest (one line when it is missing). ``AUTOCAST`` maps a precision name to the autocast
dtype every stage uses.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from fastpart.config import BATCH_SCOPES, TRAINING_ATTACKS, TrainConfig
from fastpart.data.datasets import DATASETS, TrainDefaults
from fastpart.data.splitfiles import load_manifest
from fastpart.errors import FastpartError
from fastpart.objectives import METHODS

__all__ = ["AUTOCAST", "dataset_manifest", "paper_defaults", "process_batch_size", "resolve", "resolve_device"]

FALLBACK_DATASET = "cifar10"  # paper settings used for datasets without their own (imagefolder)
AUTOCAST: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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
    if resolved.precision not in AUTOCAST:
        raise FastpartError(f"unknown precision {resolved.precision!r}; choose from auto, {', '.join(AUTOCAST)}")
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
