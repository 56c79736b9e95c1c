"""PART's per-pixel budget, from a model to mask-weighted PGD: for one batch, and for a whole training split.

For a batch (``part_budget``): the model's CAM (``fastpart.cam``, eval mode, the CAM layer of
``MaskSettings.layer``) on the images, turned into levels by ``fastpart.masks.eps_levels`` (1 =
important pixel -> ``eps``, 0 -> ``eps_low``), returned as ``EpsLevels`` for ``attacks.pgd``:

    budget = part_budget(model, x)                       # EpsLevels((B, 1, H, W) uint8, 8/255, 7/255)
    x_adv = pgd(model, x, y, budget, alpha=2 / 255, steps=10)

For a split (``refresh_masks``, what ``fastpart train`` runs at the end of the burn-in and every
``mask_freq`` epochs): the levels of every un-augmented training image, in sample-index order, from
the cache (``fastpart.maskcache``; the key hashes every input of the masks) or computed and cached.
A missing or corrupt cache file is recomputed from the weights the masks came from (the checkpoint
keeps them), so the same key gives the same levels. Under several processes (``fastpart.distributed``)
each computes a contiguous run of whole mask batches (``mask_slice``) and the levels are gathered;
rank 0 writes the cache, whose bytes do not depend on the number of processes.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import torch
import torch.nn as nn

from fastpart import distributed
from fastpart.cam import class_activation_maps
from fastpart.config import TrainConfig
from fastpart.errors import FastpartError
from fastpart.kernels import EpsLevels
from fastpart.loader import DeviceLoader
from fastpart.maskcache import CorruptCache, MaskCache, cache_key, key_inputs, pack_levels, unpack_levels
from fastpart.masks import MaskSettings, compute_split_levels, eps_levels
from fastpart.data.splitfiles import read_split
from fastpart.modes import eval_mode
from fastpart.settings import AUTOCAST

__all__ = ["MASK_BATCH", "MaskState", "SplitImages", "batch_budget", "cam_function", "mask_settings",
           "part_budget", "refresh_masks", "split_levels"]

MASK_BATCH = 512  # images per CAM batch of a mask refresh (at least the training batch)

CamFn = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def mask_settings(cfg: TrainConfig) -> MaskSettings:
    """The mask settings of a training config (``--mask-mode``, ``--tau``, ``--cam``, ``--cam-backend`` ...)."""
    return MaskSettings(mode=cfg.mask_mode, tau=cfg.tau, interpolation=cfg.interpolation, cam=cfg.cam,
                        target=cfg.mask_target, layer=cfg.cam_layer, backend=cfg.cam_backend)


def cam_layer(model: nn.Module, name: str | None) -> nn.Module | None:
    """The module named ``name`` (None: let the CAM find the model's last conv block)."""
    if name is None:
        return None
    modules = dict(model.named_modules())
    if name not in modules:
        top = ", ".join(n for n, _ in model.named_children())
        raise FastpartError(f"CAM layer {name!r} is not a module of the model; top-level modules: {top}")
    return modules[name]


def cam_function(model: nn.Module, settings: MaskSettings, precision: str = "fp32") -> CamFn:
    """(x (B, 3, H, W) in [0, 1], labels (B,) or None) -> raw CAMs (B, h, w) of the model in eval mode.

    Labels None: the CAM explains the prediction of its own forward pass. ``precision``: the autocast
    of the model (fp32, bf16, fp16).
    """
    layer = cam_layer(model, settings.layer)
    autocast = AUTOCAST[precision]

    def cams(x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        with eval_mode(model):
            with torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
                return class_activation_maps(model, x, labels, method=settings.cam, layer=layer,
                                             backend=settings.backend)

    return cams


def part_budget(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, *, eps: float = 8 / 255,
                eps_low: float = 7 / 255, settings: MaskSettings | None = None,
                precision: str = "fp32") -> EpsLevels:
    """PART's budget for a batch: ``EpsLevels`` with levels uint8 (B, C, H, W) (C = 1 in paper mode).

    x: (B, 3, H, W) images in [0, 1]; y: labels (B,), used when ``settings.target == "label"``; eps,
    eps_low: the budgets of important and other pixels, in [0, 1] units. The model is left in the mode
    it was in.
    """
    settings = settings or MaskSettings()
    labels = y if settings.target == "label" else None
    if settings.target == "label" and y is None:
        raise FastpartError("mask target 'label' needs the labels y")
    levels, _ = eps_levels(cam_function(model, settings, precision)(x, labels), tuple(x.shape[-2:]), settings)
    return EpsLevels(levels, eps, eps_low)


def split_levels(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, settings: MaskSettings | None = None,
                 precision: str = "fp32", batch_size: int = MASK_BATCH,
                 progress: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """Levels uint8 (N, C, H, W) of a whole split of un-augmented images uint8 (N, H, W, 3), and stats
    (important_fraction, degenerate, seconds, n); on the images' device."""
    settings = settings or MaskSettings()
    return compute_split_levels(cam_function(model, settings, precision), images, labels, settings,
                                batch_size=batch_size, progress=progress)


def batch_budget(model: nn.Module, x: torch.Tensor, y: torch.Tensor, aux: torch.Tensor | None,
                 cfg: TrainConfig) -> tuple[EpsLevels, dict[str, torch.Tensor]]:
    """PART's budget of a training batch: the cached levels the loader looked up (``aux``), or computed now
    (``--mask-freq 0``) with their stats as device tensors (no host synchronisation)."""
    if aux is not None:
        return EpsLevels(aux, cfg.eps, cfg.eps_low), {}
    settings = mask_settings(cfg)
    labels = y if settings.target == "label" else None
    levels, degenerate = eps_levels(cam_function(model, settings, cfg.precision)(x, labels), tuple(x.shape[-2:]),
                                    settings)
    return EpsLevels(levels, cfg.eps, cfg.eps_low), {
        "important": levels.float().mean(), "degenerate": degenerate.sum().float()}


# ---------------------------------------------------------------------------------------------
# A whole split: refresh, cache, several processes
# ---------------------------------------------------------------------------------------------


class MaskState(NamedTuple):
    key: str
    levels: torch.Tensor
    stats: dict[str, Any]


class SplitImages:
    """The un-augmented training split in sample-index order (uint8 NHWC, labels) on the device, read once
    when first needed (a mask refresh, or a lost cache rebuilt)."""

    def __init__(self, loader: DeviceLoader | None, device: torch.device) -> None:
        self.loader, self.device = loader, torch.device(device)
        self._tensors: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_tensors(cls, images: torch.Tensor, labels: torch.Tensor) -> "SplitImages":
        """A split already in memory: images uint8 (N, H, W, 3) and labels (N,) in sample-index order."""
        split = cls(None, images.device)
        split._tensors = (images, labels.to(images.device))
        return split

    def get(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._tensors is None:
            loader = self.loader
            if loader.backend == "memory":
                order = torch.argsort(loader.indices)
                images, labels = loader.images[order], loader.labels[order]
            else:
                arrays = read_split(loader.path)
                rows = slice(None) if loader.subset is None else loader.subset  # the loader's rows, in index order
                order = torch.from_numpy(arrays.indices[rows]).argsort()
                images = torch.from_numpy(arrays.images[rows])[order]
                labels = torch.from_numpy(arrays.labels[rows])[order]
            self._tensors = (images.to(self.device), labels.to(self.device))
        return self._tensors


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


def cached_levels(cache: MaskCache, key: str, device: torch.device) -> tuple[torch.Tensor, dict[str, Any]] | None:
    """The cached levels and stats of ``key``, read by rank 0 and broadcast to every process (no shared disk
    needed); None when there is no file, or it is corrupt (then it is removed, to be recomputed)."""
    levels = None

    def read() -> tuple[tuple[int, ...], dict[str, Any]] | None:
        nonlocal levels
        if not cache.exists(key):
            return None
        try:
            levels, stats = cache.load(key).to(device), cache.stats(key)
        except CorruptCache as exc:
            print(f"fastpart: {exc}; recomputing the masks", flush=True)
            cache.path(key).unlink(missing_ok=True)
            return None
        return tuple(levels.shape), stats

    found = distributed.on_main(read)
    if found is None:
        return None
    shape, stats = found
    if distributed.world_size() > 1:
        packed = pack_levels(levels) if levels is not None else torch.empty(
            (shape[0], (math.prod(shape[1:]) + 7) // 8), dtype=torch.uint8, device=device)
        distributed.broadcast(packed)
        levels = levels if levels is not None else unpack_levels(packed, shape)
    return levels, stats


def mask_key(model: nn.Module, cfg: TrainConfig, dataset_sha: str) -> str:
    """The cache key of the masks this model would give the split under ``cfg``."""
    return cache_key(dataset_sha, model.state_dict(), mask_settings(cfg), cfg.eps, cfg.eps_low,
                     precision=cfg.precision, batch_size=max(cfg.batch_size, MASK_BATCH))


def refresh_masks(model: nn.Module, split: SplitImages, cfg: TrainConfig, cache: MaskCache,
                  dataset_sha: str) -> MaskState:
    """Masks of the whole training split for ``model``: from the cache when intact, else computed and cached.

    The file holds the levels and deterministic stats only (no timings), so it is byte-identical for the
    same model state, dataset and settings whatever the number of processes.
    """
    settings = mask_settings(cfg)
    batch_size = max(cfg.batch_size, MASK_BATCH)
    key = mask_key(model, cfg, dataset_sha)
    distributed.check_same(key, "the model state at a mask refresh (its cache key)")
    found = cached_levels(cache, key, split.device)
    if found is not None:
        return MaskState(key, found[0], {**found[1], "reused": True})
    images, labels = split.get()
    part = mask_slice(len(images), batch_size, distributed.rank(), distributed.world_size())
    local, local_stats = split_levels(model, images[part], labels[part], settings, cfg.precision, batch_size,
                                      progress=distributed.is_main())
    levels = gather_levels(local, len(images), batch_size)
    degenerate = distributed.all_reduce_sum(torch.tensor([local_stats["degenerate"]], dtype=torch.int64))
    stats = {"important_fraction": float(levels.sum(dtype=torch.int64).item()) / max(levels.numel(), 1),
             "degenerate": int(degenerate.item()), "n": len(images)}
    if distributed.is_main():
        cache.save(key, levels, stats, key_inputs(settings, cfg.eps, cfg.eps_low, precision=cfg.precision,
                                                  batch_size=batch_size))
        cache.prune(keep={key})
    distributed.barrier()
    return MaskState(key, levels, {**stats, "reused": False})
