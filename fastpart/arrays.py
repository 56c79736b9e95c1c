"""A dataset split held in memory, as readers produce it and ``convert`` writes it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fastpart.errors import DatasetError


@dataclass(frozen=True)
class SplitData:
    """One split held in memory: images uint8 (N, H, W, 3), labels int64 (N,), extras (N, ...)."""

    images: np.ndarray
    labels: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise DatasetError(f"images must be uint8 (N, H, W, 3), got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (n,):
            raise DatasetError(f"labels must have shape ({n},), got {self.labels.shape}")
        for name, values in self.extras.items():
            if len(values) != n:
                raise DatasetError(f"extra field {name!r} has {len(values)} rows for {n} images")


@dataclass(frozen=True)
class ReadResult:
    """What a reader returns: split name -> data, and the class names in label order."""

    splits: dict[str, SplitData]
    class_names: list[str]
