"""Converted split files (``<data_dir>/<dataset>/<split>.beton`` or ``.npz``): written atomically, and read
back whole into host memory.

``fastpart.data.convert`` writes these files (``write_beton``, ``write_npz``) and reads a converted split
back (to generate one dataset from another); ``fastpart.loader`` serves them as batches. Both read them
through ``read_split``, which gives every sample its index 0..N-1: a file whose ``indices`` are other
unique numbers (a subset that kept its original ones) has them replaced by their rank, in the same
order; a file with a repeated index is refused.

ffcv's .beton writer fills the file from worker processes. Here they are watched: a worker that fails
(a full disk) stops the write with its error at once, instead of leaving the writer waiting forever;
the workers die with the process that started them, however it dies (``PR_SET_PDEATHSIG``, or a
watchdog thread where there is no ``prctl``); the shared memory they fill is unlinked from ``/dev/shm``
as soon as they have it, so a killed write leaves none behind; and the work none of them will take (a
write stopped by a full disk or Ctrl-C) is dropped, so the process ends at once instead of waiting for
ever to hand it to a pipe nobody reads.

A split is checked when it is opened, cheaply (its header, metadata and labels; no pass over the images):
against the manifest beside it (count, image shape, extras, labels within the classes) and against itself
(a truncated .npz or .beton, wrong dtypes or shapes). Whatever is wrong is one line naming the file.
"""

from __future__ import annotations

import ctypes
import json
import os
import queue
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from fastpart.atomic import Field, atomic_path, check_record, list_of, map_of, write_atomic
from fastpart.data.arrays import SplitData
from fastpart.errors import FastpartError

SPLIT_SUFFIXES = (".beton", ".npz")
MANIFEST = "manifest.json"
WRITE_CHUNK = 1000  # rows per work item of the .beton writer's processes


def _split_entries(splits: dict) -> str | None:
    for name, entry in splits.items():
        try:
            check_record(entry, SPLIT_SCHEMA, f"split {name!r}")
        except FastpartError as exc:
            return f"holds {exc}"
        if Path(entry["file"]).name != entry["file"] or entry["file"] in ("", ".", ".."):
            return f"holds split {name!r} with a file {entry['file']!r} outside the folder"
    return None


def _image_shape(shape: list) -> str | None:
    ok = len(shape) == 3 and shape[0] == 3 and all(type(v) is int and v > 0 for v in shape)
    return None if ok else f"is {shape}, expected [3, height, width]"


SPLIT_SCHEMA = {"file": Field((str,), True), "count": Field((int,), True), "sha256": Field((str,), True),
                "class_counts": Field((list,), False, list_of(int)), "extras": Field((dict,), False, map_of(dict))}
MANIFEST_SCHEMA = {  # what convert writes and what training, evaluation and the loader read
    "num_classes": Field((int,), True, lambda n: None if n >= 1 else f"is {n}, expected 1 or more"), "image_shape": Field((list,), True, _image_shape),
    "splits": Field((dict,), True, _split_entries), "class_names": Field((list,), False, list_of(str)),
    "mean": Field((list,), False, list_of(float)), "std": Field((list,), False, list_of(float)),
    "name": Field((str,)), "dataset": Field((str,)), "format": Field((str,)), "format_version": Field((int,)),
    "source": Field((dict,)), "options": Field((dict,)), "dropped": Field((dict,)),
}


def read_manifest(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a converted dataset folder, checked against ``MANIFEST_SCHEMA``; one line naming the file
    (and the field) when it is missing, unreadable or does not fit."""
    path = Path(out_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else exc
        raise FastpartError(f"no readable manifest in {path.parent} ({str(reason).lower()})") from None
    return check_record(manifest, MANIFEST_SCHEMA, str(path))


def load_manifest(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of a converted dataset folder; None where there is none, or it is unreadable or damaged."""
    try:
        return read_manifest(out_dir)
    except FastpartError:
        return None


def dataset_manifest(data_dir: str | os.PathLike, dataset: str) -> dict[str, Any]:
    """The manifest of the converted dataset ``<data_dir>/<dataset>``; one line when there is none or it is damaged."""
    try:
        return read_manifest(Path(data_dir) / dataset)
    except FastpartError as exc:
        again = " --force" if (Path(data_dir) / dataset / MANIFEST).is_file() else ""
        raise FastpartError(f"{exc}: run `fastpart convert {dataset} --out {data_dir}{again}` first") from None


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


def sample_indices(indices: np.ndarray, path: Path) -> np.ndarray:
    """The samples' indices as 0..N-1: unique indices that are not are replaced by their rank (their order
    kept), so that a per-sample tensor of N rows can be looked up by them; a repeated index is refused."""
    n = len(indices)
    if np.array_equal(indices, np.arange(n)):
        return indices
    order = np.argsort(indices, kind="stable")
    repeated = np.flatnonzero(indices[order][1:] == indices[order][:-1])
    if len(repeated):
        value = indices[order][repeated[0]]
        rows = np.flatnonzero(indices == value)
        raise FastpartError(f"{path}: sample index {value} appears {len(rows)} times (rows {', '.join(map(str, rows[:3]))}"
                            f"{', ...' if len(rows) > 3 else ''}); every sample needs its own index")
    ranks = np.empty(n, dtype=np.int64)
    ranks[order] = np.arange(n)
    return ranks


def beton_indices(path: Path) -> np.ndarray:
    """The ``index`` field of a .beton as written (read from its metadata, no image decoded; the file checked)."""
    reader = check_beton(path)
    names = list(reader.handlers)
    if "index" not in names:
        raise FastpartError(f"{path}: no 'index' field (fields: {', '.join(names)}); convert the data again")
    # a copy: the metadata is a read-only view, and the loader hands these indices to torch.from_numpy
    return np.array(reader.metadata[f"f{names.index('index')}"], dtype=np.int64).reshape(-1)


def check_row_indices(path: Path) -> None:
    """Refuse a .beton whose ``index`` field is not its row numbers 0..N-1: a loader that streams it
    (ffcv's) reports each sample's stored index and per-sample tensors are looked up by it."""
    indices = beton_indices(path)
    sample_indices(indices, path)  # a repeated index: refused as by read_split
    if not np.array_equal(indices, np.arange(len(indices))):
        raise FastpartError(f"{path}: its sample indices are not 0..{len(indices) - 1} in file order, which streaming "
                            "it needs; load it whole (--loader memory renumbers them) or convert the data again")


def _described(path: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The manifest beside a split file and its entry for the file ((None, None): no manifest describes it)."""
    if not (path.parent / MANIFEST).is_file():
        return None, None
    manifest = read_manifest(path.parent)
    return manifest, next((e for e in manifest["splits"].values() if e["file"] == path.name), None)


def _check_split(path: Path, count: int, size: tuple[int, int], labels: np.ndarray, extras: dict[str, Any]) -> None:
    """One line naming ``path`` when what it holds is not what its manifest says (``extras``: name -> (dtype,
    shape), or name -> None where only the name is known); without a manifest, labels must still be >= 0."""
    if len(labels) and labels.min() < 0:
        raise FastpartError(f"{path}: label {labels.min()} is negative; convert the data again")
    manifest, entry = _described(path)
    if entry is None:
        return
    (height, width), (want_h, want_w), classes = size, manifest["image_shape"][1:], manifest["num_classes"]
    listed = {k: (v.get("dtype"), v.get("shape")) for k, v in entry.get("extras", {}).items()}
    problems = [
        f"{count} images, its manifest {entry['count']}" if count != entry["count"] else "",
        f"{width}x{height} images, its manifest {want_w}x{want_h}" if (height, width) != (want_h, want_w) else "",
        f"label {labels.max()}, its manifest {classes} classes" if len(labels) and labels.max() >= classes else "",
        f"fields {', '.join(sorted(extras)) or 'none'} besides image and label, its manifest "
        f"{', '.join(sorted(listed)) or 'none'}" if set(extras) != set(listed) else "",
        *(f"{name} as {extras[name]}, its manifest {listed[name]}" for name in sorted(set(extras) & set(listed))
          if extras[name] is not None and tuple(extras[name]) != tuple(listed[name])),
    ]
    counts = entry.get("class_counts")
    if not any(problems) and counts is not None and np.bincount(labels, minlength=len(counts)).tolist() != counts:
        problems.append("other labels than its manifest counts")
    problem = next((p for p in problems if p), None)
    if problem:
        raise FastpartError(f"{path} does not match {path.parent / MANIFEST}: it holds {problem}; convert the data "
                            "again")


def check_beton(path: Path):
    """Open a .beton's header, metadata and allocation table (no image read) and check them: a truncated or
    damaged file, or one that differs from its manifest, is one line. Returns ffcv's Reader."""
    import_ffcv()
    from ffcv.reader import Reader

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reader = Reader(str(path))
        size, table_at, table = path.stat().st_size, int(reader.header["alloc_table_ptr"]), reader.alloc_table
        intact = (len(reader.metadata) == reader.num_samples and table_at + table.nbytes == size
                  and (reader.num_samples == 0 or len(table) > 0 and int((table["ptr"] + table["size"]).max()) <= table_at))
        names = list(reader.handlers)
        image = reader.metadata[f"f{names.index('image')}"]
        labels = np.asarray(reader.metadata[f"f{names.index('label')}"], dtype=np.int64).reshape(-1)
    except Exception as exc:  # ffcv and numpy raise many types on a file cut short or scrambled
        raise FastpartError(f"{path} is not a readable .beton file: truncated or damaged "
                            f"({' '.join(str(exc).split())[:120] or type(exc).__name__}); convert the data again") from None
    if not intact:
        raise FastpartError(f"{path} is truncated or damaged (its allocation table does not end the file); convert "
                            "the data again")
    sizes = {(int(h), int(w)) for h, w in zip(image["height"], image["width"])}
    if len(sizes) > 1:
        raise FastpartError(f"{path}: its images have {len(sizes)} different sizes; convert the data again")
    extras = {name: None for name in names if name not in ("image", "label", "index")}
    _check_split(path, int(reader.num_samples), next(iter(sizes), (0, 0)), labels, extras)
    return reader


def _read_beton(path: Path, num_workers: int) -> SplitData:
    indices = sample_indices(beton_indices(path), path)  # from the metadata: refused before any decoding
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
    columns.pop("index")
    return SplitData(images, labels, columns, indices)


def _read_npz(path: Path) -> SplitData:
    try:
        with np.load(path, allow_pickle=False) as npz:
            columns = {k: npz[k] for k in npz.files}
    except Exception as exc:  # BadZipFile, a CRC error, EOFError, ValueError...: a truncated or damaged file
        raise FastpartError(f"cannot read {path}: truncated or damaged ({' '.join(str(exc).split())[:120] or type(exc).__name__})") from None
    if "images" not in columns or "labels" not in columns:
        raise FastpartError(f"{path} must hold arrays 'images' (N, H, W, 3) uint8 and 'labels' (N,)")
    images = columns.pop("images")
    raw_labels = columns.pop("labels")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or raw_labels.shape != images.shape[:1]:
        raise FastpartError(f"{path}: images must be uint8 (N, H, W, 3) with N labels, got {images.shape} {images.dtype}"
                            f" and labels {raw_labels.shape}")
    labels = raw_labels.astype(np.int64)
    if not np.issubdtype(raw_labels.dtype, np.integer) and not np.array_equal(labels, raw_labels):
        raise FastpartError(f"{path}: labels must be whole numbers, got {raw_labels.dtype} values such as "
                            f"{raw_labels[labels != raw_labels][0]}")
    indices = columns.pop("indices", None)
    if indices is not None and indices.shape != labels.shape:
        raise FastpartError(f"{path}: 'indices' must have shape ({len(labels)},), got {indices.shape}")
    if indices is not None and not np.issubdtype(indices.dtype, np.integer):
        raise FastpartError(f"{path}: 'indices' must be integers, got {indices.dtype}")
    _check_split(path, len(images), images.shape[1:3], labels,
                 {k: (str(v.dtype), list(v.shape[1:])) for k, v in columns.items()})
    indices = np.arange(len(images)) if indices is None else sample_indices(indices.astype(np.int64), path)
    return SplitData(images, labels, columns, indices)


def read_split(path: str | os.PathLike, num_workers: int = 0) -> SplitData:
    """Decode a whole .beton or .npz split into host memory, in file order."""
    path = Path(path)
    if not path.is_file():
        raise FastpartError(f"no such file: {path}")
    if path.suffix == ".npz":
        return _read_npz(path)
    if path.suffix == ".beton":
        return _read_beton(path, num_workers)
    raise FastpartError(f"{path}: expected a .beton or .npz file")


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


class _Rows:
    """Indexable (image, label, index, *extras) rows, as ffcv's DatasetWriter reads them."""

    def __init__(self, split: SplitData) -> None:
        self.split = split
        self.extra_names = list(split.extras)

    def __len__(self) -> int:
        return len(self.split.images)

    def __getitem__(self, i: int) -> tuple:
        s = self.split
        return (s.images[i], int(s.labels[i]), i, *(s.extras[name][i] for name in self.extra_names))


def _ffcv_fields(split: SplitData) -> dict[str, Any]:
    from ffcv.fields import FloatField, IntField, NDArrayField, RGBImageField

    fields: dict[str, Any] = {"image": RGBImageField(write_mode="raw"), "label": IntField(), "index": IntField()}
    for name, values in split.extras.items():
        if values.ndim == 1:
            fields[name] = IntField() if np.issubdtype(values.dtype, np.integer) else FloatField()
        else:
            fields[name] = NDArrayField(dtype=values.dtype, shape=values.shape[1:])
    return fields


_PR_SET_PDEATHSIG = 1


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.2)
    os._exit(1)


def _die_with_parent(parent: int) -> None:
    """Make this (forked) process end when ``parent`` does: the kernel's parent-death signal, else a watchdog."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl failed")
    except (OSError, AttributeError):
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if os.getppid() != parent:  # it died before the signal was armed
        os._exit(1)


def _writer_process(work, errors, parent: int, args: tuple) -> None:
    """One ffcv writer worker; its failure goes to ``errors`` as (errno or None, one line)."""
    _die_with_parent(parent)
    try:
        work(*args)
    except BaseException as error:  # reported to the parent, which raises it there
        errors.put((getattr(error, "errno", None), " ".join(str(error).split()) or type(error).__name__))
        sys.exit(1)


def _worker_failure(errors, processes: list, wait: float = 0.0) -> BaseException | None:
    try:
        code, text = errors.get(timeout=wait) if wait else errors.get_nowait()
    except queue.Empty:
        dead = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
        if not dead:
            return None
        if not wait:
            return _worker_failure(errors, processes, wait=1.0)  # its message may still be on the way
        return FastpartError(f"a .beton writer process ended with exit code {dead[0]}")
    return OSError(code, text) if code else FastpartError(f"a .beton writer process failed: {text}")


def _guarded_writer_class():
    """ffcv's DatasetWriter with its workers watched, tied to this process and off /dev/shm (see above)."""
    import multiprocessing
    from multiprocessing import shared_memory

    from ffcv.memory_allocator import MemoryAllocator
    from ffcv.writer import DatasetWriter
    from tqdm import tqdm

    class GuardedWriter(DatasetWriter):
        def _write_common(self, num_samples, queue_content, work_fn, extra_worker_args):
            fork = multiprocessing.get_context("fork")  # the workers inherit the shared memory and the file
            self.num_samples = num_samples
            self.metadata_sm, processes, unlinked, queues = None, [], False, []
            try:
                self.prepare()
                work, allocations, errors = queues[:] = fork.Queue(), fork.Queue(), fork.Queue()
                for todo in [*queue_content, *[None] * self.num_workers]:
                    work.put(todo)
                done = fork.Value(ctypes.c_uint64, 0)
                allocator = MemoryAllocator(self.fname, self.data_region_start, self.page_size)
                args = (work, self.metadata_sm, self.metadata_type, self.fields, allocator, done, allocations,
                        *extra_worker_args)
                processes = [fork.Process(target=_writer_process, args=(work_fn, errors, os.getpid(), args), daemon=True)
                             for _ in range(self.num_workers)]
                for p in processes:
                    p.start()
                self.metadata_sm.unlink()  # every process has it mapped now: nothing need stay in /dev/shm
                unlinked = True
                table: list = []
                with tqdm(total=num_samples, disable=None, leave=False) as progress:
                    while len(table) < len(processes):  # each worker sends its allocation table when done
                        failure = _worker_failure(errors, processes)
                        if failure is not None:
                            raise failure
                        try:
                            table.append(allocations.get(timeout=0.1))
                        except queue.Empty:
                            pass
                        progress.update(done.value - progress.n)
                for p in processes:
                    p.join()
                self.finalize([entry for chunk in table for entry in chunk])
            finally:
                for p in processes:
                    if p.is_alive():
                        p.kill()
                    p.join()
                for q in queues:  # work no process will take any more: never wait at exit to flush it into a pipe
                    q.cancel_join_thread()
                    q.close()
                if isinstance(self.metadata_sm, shared_memory.SharedMemory):
                    self.metadata_sm.close()
                    if not unlinked:
                        self.metadata_sm.unlink()

    return GuardedWriter


def write_beton(path: Path, split: SplitData, num_workers: int = 2) -> None:
    """``split`` as a .beton at ``path`` (atomically: a failed write leaves no file, a full disk is ``DiskFull``)."""
    try:
        writer_class = _guarded_writer_class()
    except ImportError:
        raise FastpartError("writing .beton needs ffcv (pip install 'fastpart[ffcv]'); or use --format npz") from None
    page_size = 1 << 21  # ffcv's minimum; its default (8 MiB) bloats small files
    while page_size < 4 * split.images[0].nbytes:
        page_size <<= 1
    with atomic_path(path) as tmp:
        writer = writer_class(str(tmp), _ffcv_fields(split), page_size=page_size, num_workers=num_workers)
        writer.from_indexed_dataset(_Rows(split), chunksize=WRITE_CHUNK)


def write_npz(path: Path, split: SplitData) -> None:
    """``split`` as an .npz at ``path`` (atomically, like ``write_beton``)."""
    write_atomic(path, lambda file: np.savez(file, images=split.images, labels=split.labels, **split.extras))
