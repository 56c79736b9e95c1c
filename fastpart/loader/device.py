"""``DeviceLoader``: seeded, augmented batches of one converted split on the device (see ``fastpart.loader``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from fastpart.errors import FastpartError
from fastpart.loader.augment import (Augment, aux_from_nhwc, aux_to_nhwc, crop_flip, crop_flip_coordinates,
                                     epoch_order, stream_seed, to_model_input)
from fastpart.loader.sources import make_source
from fastpart.precision import dtype as precision_dtype

__all__ = ["DeviceLoader"]


class DeviceLoader:
    """Seeded, device-side batches of one split; each ``iter()`` is one epoch (see ``set_epoch``)."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        batch_size: int,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        backend: str = "auto",
        shuffle: bool = True,
        drop_last: bool | None = None,
        seed: int = 0,
        augment: Augment | None = None,
        aux: torch.Tensor | None = None,
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
        subset: np.ndarray | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FastpartError(f"no such file: {self.path}")
        if batch_size < 1:
            raise FastpartError(f"batch size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise FastpartError(f"need 0 <= rank < world_size, got rank {rank} of {world_size}")
        self.dtype = precision_dtype(precision)
        self.device = torch.device(device)
        self.batch_size = batch_size  # per process; a global batch is batch_size * world_size samples
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.drop_last = shuffle if drop_last is None else drop_last
        if world_size > 1 and not self.drop_last:
            raise FastpartError("a loader sharded over several processes drops the incomplete last batch: "
                                "pass drop_last=True")
        self.seed = seed
        self.augment = augment if augment is not None and augment.active else None
        self.epoch = 0
        self.subset = None if subset is None else np.unique(np.asarray(subset, dtype=np.int64))
        self.source = make_source(self.path, backend, self.device, batch_size, self.subset, num_workers,
                                  self.drop_last)
        self.aux: torch.Tensor | None = None
        if aux is not None:
            self.set_aux(aux)

    @property
    def backend(self) -> str:
        """The source in use: ``memory`` or ``ffcv``."""
        return self.source.name

    @property
    def num_samples(self) -> int:
        return self.source.num_samples

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, 3) of the split's images."""
        return self.source.image_shape

    def unaugmented(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every image (uint8 (N, H, W, 3)) and label of the loader's samples, in sample-index order, on the device."""
        return self.source.unaugmented()

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next ``iter()`` runs: it fixes that epoch's order and augmentation."""
        self.epoch = epoch

    def set_aux(self, aux: torch.Tensor | None) -> None:
        """Attach a per-sample tensor (N, ..., H, W), looked up by sample index and augmented with its image."""
        if aux is not None:
            if aux.shape[0] != self.num_samples or tuple(aux.shape[-2:]) != self.image_shape[:2]:
                raise FastpartError(
                    f"aux must have shape ({self.num_samples}, ..., {self.image_shape[0]}, {self.image_shape[1]}), "
                    f"got {tuple(aux.shape)}"
                )
            aux = aux.to(self.device)
        self.aux = aux

    def __len__(self) -> int:
        """Batches per epoch (the same for every process)."""
        full, rest = divmod(self.num_samples, self.batch_size * self.world_size)
        return full if self.drop_last or not rest else full + 1

    def shard(self, order: torch.Tensor) -> torch.Tensor:
        """This process's samples of an epoch ``order``, batch after batch: the ``rank``-th piece of each
        global batch."""
        if self.world_size == 1:
            return order
        batches = len(self)
        pieces = order[: batches * self.batch_size * self.world_size].view(batches, self.world_size, self.batch_size)
        return pieces[:, self.rank].reshape(-1)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        epoch = self.epoch
        self.epoch += 1
        order = self.shard(epoch_order(self.num_samples, self.seed, epoch, self.shuffle))
        generator = torch.Generator(self.device).manual_seed(stream_seed(self.seed, epoch, "augment"))
        for images, labels, indices in self.source.batches(order, len(self)):
            aux = self.aux[indices] if self.aux is not None else None
            if self.augment is not None:
                # drawn for the whole global batch (all shards are full then), this process's piece kept
                n, piece = len(images) * self.world_size, slice(self.rank * len(images), (self.rank + 1) * len(images))
                rows, cols = crop_flip_coordinates(n, *images.shape[1:3], self.augment, generator, self.device)
                rows, cols = rows[piece], cols[piece]
                images = crop_flip(images, rows, cols, self.augment.crop_padding)
                if aux is not None:
                    aux = aux_from_nhwc(crop_flip(aux_to_nhwc(aux), rows, cols, self.augment.crop_padding), aux.dim())
            batch = (to_model_input(images, self.dtype), labels.clone(), indices.clone())
            yield batch if aux is None else (*batch, aux)
