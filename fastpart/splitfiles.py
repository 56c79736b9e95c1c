"""Converted split files (``<data_dir>/<dataset>/<split>.beton`` or ``.npz``) read back whole into host memory.

``fastpart.convert`` writes these files and reads a converted split back (to generate one dataset from
another); ``fastpart.loader`` serves them as batches. Both read them through ``read_split``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastpart.errors import FastpartError

SPLIT_SUFFIXES = (".beton", ".npz")


@dataclass(frozen=True)
class SplitArrays:
    """A whole split in host memory: images uint8 (N, H, W, 3), labels and indices int64 (N,)."""

    images: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)


def split_path(data_dir: str | os.PathLike, dataset: str, split: str) -> Path:
    """The converted file of one split: ``<data_dir>/<dataset>/<split>.beton`` (or ``.npz``)."""
    folder = Path(data_dir) / dataset
    for suffix in SPLIT_SUFFIXES:
        if (folder / f"{split}{suffix}").is_file():
            return folder / f"{split}{suffix}"
    found = sorted(p.name for p in folder.glob("*") if p.suffix in SPLIT_SUFFIXES) if folder.is_dir() else []
    hint = f"found: {', '.join(found)}" if found else f"run `fastpart convert {dataset} --out {data_dir}` first"
    raise FastpartError(f"no {split}.beton or {split}.npz in {folder} ({hint})")


def import_ffcv():
    try:
        import ffcv  # noqa: F401
    except ImportError:
        raise FastpartError(
            "reading .beton needs ffcv (pip install 'fastpart[ffcv]'); "
            "or convert with --format npz and load the .npz"
        ) from None
    return ffcv


def ffcv_field_names(path: Path) -> list[str]:
    import_ffcv()
    from ffcv.reader import Reader

    return list(Reader(str(path)).handlers)


def _read_beton(path: Path, num_workers: int) -> SplitArrays:
    import_ffcv()
    from ffcv.loader import Loader, OrderOption

    loader = Loader(
        str(path), batch_size=1024, num_workers=num_workers or os.cpu_count() or 1,
        order=OrderOption.SEQUENTIAL, drop_last=False, os_cache=True,
    )
    names = list(loader.reader.handlers)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for batch in loader:
        for name, values in zip(names, batch):
            parts[name].append(values.numpy().copy())  # ffcv reuses its batch buffers
    columns = {name: np.concatenate(chunks) for name, chunks in parts.items()}
    for name, values in columns.items():
        if values.ndim == 2 and values.shape[1] == 1:
            columns[name] = values[:, 0]
    images = columns.pop("image")
    labels = columns.pop("label").astype(np.int64)
    indices = columns.pop("index").astype(np.int64)
    return SplitArrays(images, labels, indices, columns)


def _read_npz(path: Path) -> SplitArrays:
    try:
        with np.load(path) as npz:
            columns = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise FastpartError(f"cannot read {path}: {exc}") from None
    if "images" not in columns or "labels" not in columns:
        raise FastpartError(f"{path} must hold arrays 'images' (N, H, W, 3) uint8 and 'labels' (N,)")
    images = columns.pop("images")
    labels = columns.pop("labels").astype(np.int64)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or len(labels) != len(images):
        raise FastpartError(f"{path}: images must be uint8 (N, H, W, 3) with N labels, got {images.shape} {images.dtype}")
    indices = columns.pop("indices", np.arange(len(images))).astype(np.int64)
    return SplitArrays(images, labels, indices, columns)


def read_split(path: str | os.PathLike, num_workers: int = 0) -> SplitArrays:
    """Decode a whole .beton or .npz split into host memory, in file order."""
    path = Path(path)
    if not path.is_file():
        raise FastpartError(f"no such file: {path}")
    if path.suffix == ".npz":
        return _read_npz(path)
    if path.suffix == ".beton":
        return _read_beton(path, num_workers)
    raise FastpartError(f"{path}: expected a .beton or .npz file")
