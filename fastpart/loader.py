"""From a converted split (.beton or .npz) to batches on the device.

``DeviceLoader`` is an iterable of ``(images, labels, indices)`` — or ``(images, labels, indices,
aux)`` when a per-sample auxiliary tensor is attached — where images are float in [0, 1], NCHW in
channels_last memory, in the requested precision. Two backends read the same file:

* ``memory``: the whole split decoded once into one uint8 tensor on the device; batches are index
  gathers (for CIFAR, SVHN, TinyImageNet: they fit with room to spare);
* ``ffcv``: ffcv's Loader streams decoded uint8 batches (for datasets larger than device memory).

Both draw the sample order from the same seeded permutation and run the same batched augmentation
on the device (random crop with zero padding, horizontal flip), so for a given seed and epoch they
yield identical batches.

Several processes (``rank`` of ``world_size``, e.g. under ``torchrun``) share one order: every
process draws the same permutation of the epoch, cuts it into *global* batches of
``batch_size * world_size`` samples (dropping the incomplete last one, like ``DistributedSampler``
with ``drop_last``) and takes the ``rank``-th contiguous piece of each, so the processes see disjoint
shards and, together, exactly the batches one process with the global batch size would see, with
the same crops and flips (the augmentation is drawn for the global batch and sliced). The ffcv
backend is given the process's shard as its traversal order (ffcv's own ``distributed=True`` order
interleaves samples differently and is not used).

The auxiliary tensor (later: the PART eps mask) is looked up by sample index and receives exactly
the crop and flip of its image. ffcv is imported only where it is used.

``subset`` serves only some rows of the file (e.g. a validation split held out of training, or the
training split without it): its samples are indexed 0..len(subset)-1 in the order of their rows, and
the order, augmentation and aux lookup are those of a file holding just these rows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from fastpart.errors import FastpartError
from fastpart.data.splitfiles import (  # noqa: F401
    check_row_indices, ffcv_field_names, import_ffcv, read_split, split_path,
)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
BACKENDS = ("auto", "memory", "ffcv")
MEMORY_FRACTION = 0.25  # `auto` keeps a split in memory when it needs at most this share of what is free


@dataclass(frozen=True)
class Augment:
    """Random crop after zero padding by ``crop_padding`` pixels (0: no crop) and random horizontal flip."""

    crop_padding: int = 4
    flip: bool = True

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or self.flip


# ---------------------------------------------------------------------------------------------
# Randomness: one seeded stream per (seed, epoch, purpose), so any epoch can be replayed alone
# ---------------------------------------------------------------------------------------------


def stream_seed(seed: int, epoch: int, purpose: str) -> int:
    words = [seed, epoch] + list(purpose.encode())
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def epoch_order(num_samples: int, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    """The sample order of one epoch (CPU int64); identical for every backend."""
    if not shuffle:
        return torch.arange(num_samples)
    generator = torch.Generator().manual_seed(stream_seed(seed, epoch, "order"))
    return torch.randperm(num_samples, generator=generator)


# ---------------------------------------------------------------------------------------------
# Augmentation on the device, batched
# ---------------------------------------------------------------------------------------------


def crop_flip_coordinates(
    batch: int, height: int, width: int, augment: Augment, generator: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample source rows (B, H) and columns (B, W) into the padded image; flips reverse the columns."""
    span = 2 * augment.crop_padding + 1
    dy = torch.randint(0, span, (batch, 1), generator=generator, device=device)
    dx = torch.randint(0, span, (batch, 1), generator=generator, device=device)
    flip = torch.rand((batch, 1), generator=generator, device=device) < 0.5 if augment.flip else None
    rows = dy + torch.arange(height, device=device)
    ramp = torch.arange(width, device=device)
    cols = dx + (torch.where(flip, ramp.flip(0), ramp) if flip is not None else ramp)
    return rows, cols


def crop_flip(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, padding: int) -> torch.Tensor:
    """Gather ``x`` (B, H, W, ...) at padded coordinates ``rows``/``cols``; pixels outside become 0."""
    batch = x.shape[0]
    if padding:
        pad = [0, 0] * (x.dim() - 3) + [padding, padding, padding, padding]
        x = F.pad(x, pad)
    b = torch.arange(batch, device=x.device)[:, None, None]
    return x[b, rows[:, :, None], cols[:, None, :]]


def to_model_input(images_nhwc: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [0, 1], channels_last in memory (the permute is a view)."""
    return images_nhwc.permute(0, 3, 1, 2).to(dtype).div_(255)


def aux_to_nhwc(aux: torch.Tensor) -> torch.Tensor:
    """(B, ..., H, W) -> (B, H, W, ...) so that it shares the image's gather."""
    return aux.movedim((-2, -1), (1, 2)) if aux.dim() > 3 else aux


def aux_from_nhwc(aux: torch.Tensor, dims: int) -> torch.Tensor:
    return aux.movedim((1, 2), (-2, -1)).contiguous() if dims > 3 else aux


# ---------------------------------------------------------------------------------------------
# The loader
# ---------------------------------------------------------------------------------------------


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def choose_backend(path: Path, backend: str, device: torch.device, split_bytes: int) -> str:
    if backend not in BACKENDS:
        raise FastpartError(f"unknown loader backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if path.suffix == ".npz":
        if backend == "ffcv":
            raise FastpartError(f"{path}: the ffcv backend reads .beton files; use --loader memory for .npz")
        return "memory"
    if backend == "auto":
        return "memory" if split_bytes <= MEMORY_FRACTION * available_bytes(device) else "ffcv"
    return backend


def _beton_split_bytes(path: Path) -> int:
    import_ffcv()
    from ffcv.reader import Reader

    reader = Reader(str(path))
    meta = reader.metadata["f0"]
    return int((meta["width"].astype(np.int64) * meta["height"].astype(np.int64) * 3).sum())


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
        if precision not in PRECISIONS:
            raise FastpartError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise FastpartError(f"need 0 <= rank < world_size, got rank {rank} of {world_size}")
        self.device = torch.device(device)
        self.batch_size = batch_size  # per process; a global batch is batch_size * world_size samples
        self.rank = rank
        self.world_size = world_size
        self.dtype = PRECISIONS[precision]
        self.shuffle = shuffle
        self.drop_last = shuffle if drop_last is None else drop_last
        if world_size > 1 and not self.drop_last:
            raise FastpartError("a loader sharded over several processes drops the incomplete last batch: "
                                "pass drop_last=True")
        self.seed = seed
        self.augment = augment if augment is not None and augment.active else None
        self.num_workers = num_workers
        self.epoch = 0
        split_bytes = self.path.stat().st_size if self.path.suffix == ".npz" else _beton_split_bytes(self.path)
        self.backend = choose_backend(self.path, backend, self.device, split_bytes)
        self.subset = None if subset is None else np.unique(np.asarray(subset, dtype=np.int64))
        if self.backend == "memory":
            arrays = read_split(self.path, num_workers)
            rows = self._check_subset(len(arrays.labels))
            self.images = torch.from_numpy(arrays.images[rows]).to(self.device)
            self.labels = torch.from_numpy(arrays.labels[rows]).to(self.device)
            indices = arrays.indices[rows]
            if self.subset is not None:  # 0..len(subset)-1, in the order of the samples' own indices
                indices = np.argsort(np.argsort(indices, kind="stable"), kind="stable")
            self.indices = torch.from_numpy(indices).to(self.device)
            self.extras = {k: torch.from_numpy(v[rows]).to(self.device) for k, v in arrays.extras.items()}
            self.num_samples = len(self.labels)
            self.image_shape = tuple(arrays.images.shape[1:])
        else:
            check_row_indices(self.path)  # aux and subsets are looked up by the streamed index
            self._ffcv = self._make_ffcv_loader()
            total = len(self._ffcv.indices)
            self._check_subset(total)
            self.num_samples = total if self.subset is None else len(self.subset)
            if self.subset is not None:  # the file's sample index (its row) -> the subset's index
                self._subset_index = torch.full((total,), -1, dtype=torch.int64, device=self.device)
                self._subset_index[torch.from_numpy(self.subset).to(self.device)] = torch.arange(
                    len(self.subset), device=self.device)
            meta = self._ffcv.reader.metadata["f0"]
            self.image_shape = (int(meta["height"][0]), int(meta["width"][0]), 3)
        self.aux: torch.Tensor | None = None
        if aux is not None:
            self.set_aux(aux)

    def _check_subset(self, total: int) -> np.ndarray | slice:
        if self.subset is None:
            return slice(None)
        if len(self.subset) == 0 or self.subset[0] < 0 or self.subset[-1] >= total:
            raise FastpartError(f"a loader subset must name rows of {self.path} (0..{total - 1}), "
                                f"got {len(self.subset)} rows in [{self.subset.min(initial=0)}, {self.subset.max(initial=0)}]")
        return self.subset

    def _make_ffcv_loader(self):
        import_ffcv()
        from ffcv.fields.basics import IntDecoder
        from ffcv.fields.rgb_image import SimpleRGBImageDecoder
        from ffcv.loader import Loader, OrderOption
        from ffcv.transforms import Squeeze, ToDevice, ToTensor

        def to_device(*decode):
            return [*decode, ToTensor(), ToDevice(self.device, non_blocking=True)]

        pipelines = {name: None for name in ffcv_field_names(self.path)}  # only what we need is decoded
        pipelines.update(
            image=to_device(SimpleRGBImageDecoder()),
            label=to_device(IntDecoder()) + [Squeeze()],
            index=to_device(IntDecoder()) + [Squeeze()],
        )
        return Loader(
            str(self.path), batch_size=self.batch_size, num_workers=self.num_workers or os.cpu_count() or 1,
            order=OrderOption.SEQUENTIAL, drop_last=self.drop_last, os_cache=True, pipelines=pipelines,
        )

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

    def _raw_batches(self, order: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """uint8 NHWC images, labels, indices on the device, in ``order`` (this process's shard)."""
        if self.backend == "memory":
            order = order.to(self.device)
            for b in range(len(self)):
                rows = order[b * self.batch_size : (b + 1) * self.batch_size]
                yield self.images[rows], self.labels[rows], self.indices[rows]
        else:
            rows = order.numpy() if self.subset is None else self.subset[order.numpy()]
            self._ffcv.traversal_order.indices = rows.astype(np.uint64)
            for images, labels, indices in self._ffcv:
                indices = indices.long()
                yield images, labels.long(), indices if self.subset is None else self._subset_index[indices]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        epoch = self.epoch
        self.epoch += 1
        order = self.shard(epoch_order(self.num_samples, self.seed, epoch, self.shuffle))
        generator = torch.Generator(self.device).manual_seed(stream_seed(self.seed, epoch, "augment"))
        for images, labels, indices in self._raw_batches(order):
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
