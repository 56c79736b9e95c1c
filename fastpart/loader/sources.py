"""Where a loader's uint8 images come from: two sources of one converted split behind one interface.

* ``MemorySource``: the whole split decoded once into one uint8 tensor on the device; batches are index
  gathers (for CIFAR, SVHN, TinyImageNet: they fit with room to spare);
* ``FfcvSource``: ffcv's Loader streams decoded uint8 batches (datasets larger than device memory). Only
  this source touches ffcv, and only when it is built.

Each source serves the rows ``subset`` of its file (all of them: None), indexed 0..len-1 in row order, and
exposes ``num_samples``, ``image_shape`` (H, W, 3), ``batches(order, count)`` (uint8 NHWC images, labels,
indices on the device, in the given order) and ``unaugmented()`` (every image and label, in sample-index
order). ``choose_source`` picks one by name (``auto``: memory when the split takes at most a quarter of
what is free).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import torch

from fastpart.data.splitfiles import check_beton, check_row_indices, import_ffcv, read_split
from fastpart.errors import FastpartError

__all__ = ["BACKENDS", "FfcvSource", "MemorySource", "Source", "choose_backend", "make_source"]

BACKENDS = ("auto", "memory", "ffcv")
MEMORY_FRACTION = 0.25  # `auto` keeps a split in memory when it needs at most this share of what is free

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # uint8 (B, H, W, 3), labels (B,), indices (B,)


class Source(Protocol):
    name: str
    num_samples: int
    image_shape: tuple[int, int, int]

    def batches(self, order: torch.Tensor, count: int) -> Iterator[Batch]: ...

    def unaugmented(self) -> tuple[torch.Tensor, torch.Tensor]: ...


def _checked_rows(subset: np.ndarray | None, total: int, path: Path) -> np.ndarray | slice:
    if subset is None:
        return slice(None)
    if len(subset) == 0 or subset[0] < 0 or subset[-1] >= total:
        raise FastpartError(f"a loader subset must name rows of {path} (0..{total - 1}), "
                            f"got {len(subset)} rows in [{subset.min(initial=0)}, {subset.max(initial=0)}]")
    return subset


class MemorySource:
    """The split decoded once into device memory; batches are gathers."""

    name = "memory"

    def __init__(self, path: Path, device: torch.device, batch_size: int, subset: np.ndarray | None = None,
                 num_workers: int = 0) -> None:
        arrays = read_split(path, num_workers)
        rows = _checked_rows(subset, len(arrays.labels), path)
        self.device, self.batch_size = device, batch_size
        self.images = torch.from_numpy(arrays.images[rows]).to(device)
        self.labels = torch.from_numpy(arrays.labels[rows]).to(device)
        indices = arrays.indices[rows]
        if subset is not None:  # 0..len(subset)-1, in the order of the samples' own indices
            indices = np.argsort(np.argsort(indices, kind="stable"), kind="stable")
        self.indices = torch.from_numpy(indices).to(device)
        self.extras = {k: torch.from_numpy(v[rows]).to(device) for k, v in arrays.extras.items()}
        self.num_samples = len(self.labels)
        self.image_shape = tuple(arrays.images.shape[1:])

    def batches(self, order: torch.Tensor, count: int) -> Iterator[Batch]:
        order = order.to(self.device)
        for b in range(count):
            rows = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield self.images[rows], self.labels[rows], self.indices[rows]

    def unaugmented(self) -> tuple[torch.Tensor, torch.Tensor]:
        order = torch.argsort(self.indices)
        return self.images[order], self.labels[order]


class FfcvSource:
    """ffcv's Loader streaming the split's decoded uint8 batches onto the device, in the order it is given."""

    name = "ffcv"

    def __init__(self, path: Path, device: torch.device, batch_size: int, subset: np.ndarray | None = None,
                 num_workers: int = 0, drop_last: bool = True) -> None:
        check_row_indices(path)  # aux and subsets are looked up by the streamed index
        self.path, self.device, self.subset = path, device, subset
        self._threads = torch.get_num_threads()  # ffcv sets torch's to its worker count: kept as they were
        self._loader = self._make_loader(num_workers, batch_size, drop_last)
        self._keep_threads()
        total = len(self._loader.indices)
        _checked_rows(subset, total, path)
        self.num_samples = total if subset is None else len(subset)
        if subset is not None:  # the file's sample index (its row) -> the subset's index
            self._subset_index = torch.full((total,), -1, dtype=torch.int64, device=device)
            self._subset_index[torch.from_numpy(subset).to(device)] = torch.arange(len(subset), device=device)
        meta = self._loader.reader.metadata["f0"]
        self.image_shape = (int(meta["height"][0]), int(meta["width"][0]), 3)

    def _keep_threads(self) -> None:
        if torch.get_num_threads() != self._threads:
            torch.set_num_threads(self._threads)

    @staticmethod
    def split_bytes(path: Path) -> int:
        """The decoded size of a .beton split, from its metadata."""
        import_ffcv()
        from ffcv.reader import Reader

        meta = Reader(str(path)).metadata["f0"]
        return int((meta["width"].astype(np.int64) * meta["height"].astype(np.int64) * 3).sum())

    def _make_loader(self, num_workers: int, batch_size: int, drop_last: bool):
        import_ffcv()
        from ffcv.fields.basics import IntDecoder
        from ffcv.fields.rgb_image import SimpleRGBImageDecoder
        from ffcv.loader import Loader, OrderOption
        from ffcv.transforms import Squeeze, ToDevice, ToTensor

        def to_device(*decode):
            return [*decode, ToTensor(), ToDevice(self.device, non_blocking=True)]

        pipelines = {name: None for name in check_beton(self.path).handlers}  # only what we need is decoded
        pipelines.update(
            image=to_device(SimpleRGBImageDecoder()),
            label=to_device(IntDecoder()) + [Squeeze()],
            index=to_device(IntDecoder()) + [Squeeze()],
        )
        return Loader(
            str(self.path), batch_size=batch_size, num_workers=num_workers or os.cpu_count() or 1,
            order=OrderOption.SEQUENTIAL, drop_last=drop_last, os_cache=True, pipelines=pipelines,
        )

    def batches(self, order: torch.Tensor, count: int) -> Iterator[Batch]:
        rows = order.numpy() if self.subset is None else self.subset[order.numpy()]
        self._loader.traversal_order.indices = rows.astype(np.uint64)
        for images, labels, indices in self._loader:
            self._keep_threads()  # set again by ffcv's iterator and its thread
            indices = indices.long()
            yield images, labels.long(), indices if self.subset is None else self._subset_index[indices]

    def unaugmented(self) -> tuple[torch.Tensor, torch.Tensor]:
        arrays = read_split(self.path)
        rows = slice(None) if self.subset is None else self.subset  # the source's rows, in index order
        order = torch.from_numpy(arrays.indices[rows]).argsort()
        images = torch.from_numpy(arrays.images[rows])[order]
        labels = torch.from_numpy(arrays.labels[rows])[order]
        return images.to(self.device), labels.to(self.device)


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def choose_backend(path: Path, backend: str, device: torch.device) -> str:
    """The source a backend name means for this file (``auto``: memory when the split fits, else ffcv)."""
    if backend not in BACKENDS:
        raise FastpartError(f"unknown loader backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if path.suffix == ".npz":
        if backend == "ffcv":
            raise FastpartError(f"{path}: the ffcv backend reads .beton files; use --loader memory for .npz")
        return "memory"
    if backend == "auto":
        return "memory" if FfcvSource.split_bytes(path) <= MEMORY_FRACTION * available_bytes(device) else "ffcv"
    return backend


def make_source(path: Path, backend: str, device: torch.device, batch_size: int, subset: np.ndarray | None,
                num_workers: int, drop_last: bool) -> MemorySource | FfcvSource:
    """The source ``backend`` (auto, memory, ffcv) means for ``path`` (see ``choose_backend``); the file is
    checked first (``splitfiles``: truncated, damaged, or not what its manifest says: one line)."""
    if path.suffix == ".beton":
        check_beton(path)
    if choose_backend(path, backend, device) == "memory":
        return MemorySource(path, device, batch_size, subset, num_workers)
    return FfcvSource(path, device, batch_size, subset, num_workers, drop_last)
