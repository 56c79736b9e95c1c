"""A dataset split held in memory: what readers produce, ``convert`` writes and ``splitfiles.read_split`` reads back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastpart.errors import DatasetError


@dataclass(frozen=True)
class SplitData:
    """One split held in memory: images uint8 (N, H, W, 3), labels int64 (N,), extras (N, ...), and the
    samples' indices int64 (N,) (default 0..N-1; ``splitfiles.read_split`` gives a file's indices as
    0..N-1 too, other unique ones replaced by their rank)."""

    images: np.ndarray
    labels: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    indices: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.indices is None:
            object.__setattr__(self, "indices", np.arange(n, dtype=np.int64))
        elif not isinstance(self.indices, np.ndarray) or self.indices.dtype != np.int64:
            object.__setattr__(self, "indices", np.asarray(self.indices, dtype=np.int64))
        if self.indices.shape != (n,):
            raise DatasetError(f"indices must have shape ({n},), got {self.indices.shape}")
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise DatasetError(f"images must be uint8 (N, H, W, 3), got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (n,):
            raise DatasetError(f"labels must have shape ({n},), got {self.labels.shape}")
        for name, values in self.extras.items():
            if len(values) != n:
                raise DatasetError(f"extra field {name!r} has {len(values)} rows for {n} images")


@dataclass(frozen=True)
class ReadResult:
    """What a reader returns: split name -> data, the class names in label order, and what of the source
    was left out (e.g. ``{"alpha_channels": 3, "empty_class_folders": ["train/cat"]}``; empty when nothing)."""

    splits: dict[str, SplitData]
    class_names: list[str]
    dropped: dict[str, Any] = field(default_factory=dict)
