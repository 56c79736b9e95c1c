"""The masks of a whole training split, what ``fastpart train`` computes at the end of the burn-in and every
``mask_freq`` epochs (``refresh_masks``).

The levels of every un-augmented training image, in sample-index order, come from the cache
(``fastpart.part.cache``; the key hashes every input of the masks, ``MaskPlan.key``) or are computed and
cached. A missing or corrupt cache file is recomputed from the weights the masks came from (the
checkpoint keeps them), so the same key gives the same levels. Under several processes
(``fastpart.distributed``) each computes a contiguous run of whole mask batches (``mask_slice``) and the
levels are gathered; rank 0 writes the cache, whose bytes do not depend on the number of processes.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import torch
import torch.nn as nn

from fastpart import distributed
from fastpart.part.cache import CorruptCache, MaskCache, pack_levels, unpack_levels
from fastpart.part.plan import MaskPlan

__all__ = ["MaskState", "SplitImages", "cached_levels", "gather_levels", "mask_slice", "refresh_masks"]


class MaskState(NamedTuple):
    key: str
    levels: torch.Tensor
    stats: dict[str, Any]


class SplitImages:
    """The un-augmented training split in sample-index order (uint8 NHWC, labels) on the device, read once
    when first needed (a mask refresh, or a lost cache rebuilt).

    ``read()`` returns them (e.g. ``DeviceLoader.unaugmented``); ``from_tensors`` wraps a split in memory."""

    def __init__(self, read: Callable[[], tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> None:
        self.read, self.device = read, torch.device(device)
        self._tensors: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_tensors(cls, images: torch.Tensor, labels: torch.Tensor) -> "SplitImages":
        """A split already in memory: images uint8 (N, H, W, 3) and labels (N,) in sample-index order."""
        return cls(lambda: (images, labels), images.device)

    def get(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._tensors is None:
            images, labels = self.read()
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


def refresh_masks(model: nn.Module, split: SplitImages, plan: MaskPlan, cache: MaskCache, data_id: str) -> MaskState:
    """Masks of the whole training split for ``model``: from the cache when intact, else computed and cached.

    ``data_id`` identifies the split's images (its checksum, and the rows held out). The file holds the
    levels and deterministic stats only (no timings), so it is byte-identical for the same model state,
    dataset and settings whatever the number of processes.
    """
    key = plan.key(model, data_id)
    distributed.check_same(key, "the model state at a mask refresh (its cache key)")
    found = cached_levels(cache, key, split.device)
    if found is not None:
        return MaskState(key, found[0], {**found[1], "reused": True})
    images, labels = split.get()
    part = mask_slice(len(images), plan.batch_size, distributed.rank(), distributed.world_size())
    local, local_stats = plan.split_levels(model, images[part], labels[part], progress=distributed.is_main())
    levels = gather_levels(local, len(images), plan.batch_size)
    degenerate = distributed.all_reduce_sum(torch.tensor([local_stats["degenerate"]], dtype=torch.int64))
    stats = {"important_fraction": float(levels.sum(dtype=torch.int64).item()) / max(levels.numel(), 1),
             "degenerate": int(degenerate.item()), "n": len(images)}
    if distributed.is_main():
        cache.save(key, levels, stats, plan.key_inputs())
        cache.prune(keep={key})
    distributed.barrier()
    return MaskState(key, levels, {**stats, "reused": False})
