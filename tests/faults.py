"""Faults injected in-process, for the tests that check fastpart's rule for failures (tests/test_faults.py's table,
and the conversion and run-folder fault tests):

* ``faulty_disk(root, errno, after)``: a disk under ``root`` whose writes fail with ``errno`` once ``after`` bytes
  have been written (ENOSPC: a full disk, writing what fits first), or whose files and folders cannot be created at
  all (EROFS: a read-only disk); ``target`` limits it to files whose name contains that text (``=name``: that name exactly, not its
  temporaries);
  ``interrupt=True``: Ctrl-C (KeyboardInterrupt) at that byte instead;
* ``swapped(path, replacement)``: ``path`` is replaced (atomically, as a writer beside would) by ``replacement``
  as soon as a first reader has opened it, so a second open sees the other file;
* ``damage(path, how)``: a file truncated, with a bit flipped, or with one field of its record changed.

Writes go through Python files (``open``, ``Path.write_bytes``, ``os.open``): the injector wraps those, and routes
``torch.save`` into a path through them, so every writer of the package meets the fault; forked processes
(ffcv's writer workers) inherit it.
"""

from __future__ import annotations

import builtins
import errno as errnos
import io
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


class _Disk:
    def __init__(self, root: Path, code: int, after: int, target: str, interrupt: bool) -> None:
        self.root, self.code, self.after, self.target, self.interrupt = str(root), code, after, target, interrupt
        self.written = 0
        self.hits = 0  # how often the fault fired

    def covers(self, file: Any) -> bool:
        if not isinstance(file, (str, bytes, os.PathLike)):
            return False
        path = os.path.abspath(os.fsdecode(file))
        name = os.path.basename(path)
        matches = name == self.target[1:] if self.target.startswith("=") else self.target in name
        return path.startswith(self.root + os.sep) and matches

    def fail(self, where: Any = None) -> None:
        self.hits += 1
        if self.interrupt:
            raise KeyboardInterrupt
        raise OSError(self.code, os.strerror(self.code), *([os.fsdecode(where)] if where is not None else []))


class _FaultyFile:
    """A file whose writes count against the disk's budget and fail past it, having written what fitted."""

    def __init__(self, file: Any, disk: _Disk) -> None:
        self._file, self._disk = file, disk

    def write(self, data: Any) -> int:
        size = len(data.encode()) if isinstance(data, str) else memoryview(data).nbytes
        room = self._disk.after - self._disk.written
        if size > room:
            if room > 0:
                self._file.write(data[:room] if isinstance(data, str) else memoryview(data).cast("B")[:room])
                self._disk.written += room
            self._disk.fail()
        self._disk.written += size
        return self._file.write(data)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __enter__(self) -> "_FaultyFile":
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._file.__exit__(*exc)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._file)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


@contextmanager
def faulty_disk(monkeypatch, root: Path, code: int = errnos.ENOSPC, after: int = 0, target: str = "",
                interrupt: bool = False) -> Iterator[_Disk]:
    """Within the block, the disk under ``root`` fails as described in the module docstring. Yields its state
    (``hits``: how often the fault fired)."""
    import torch

    disk = _Disk(Path(root).absolute(), code, after, target, interrupt)
    real_open, real_os_open, real_save = builtins.open, os.open, torch.save
    read_only = code == errnos.EROFS

    def opened(file, mode="r", *args, **kwargs):
        if disk.covers(file) and any(c in mode for c in "wax+"):
            if read_only:
                disk.fail(file)
            return _FaultyFile(real_open(file, mode, *args, **kwargs), disk)
        return real_open(file, mode, *args, **kwargs)

    def os_opened(path, flags, *args, **kwargs):
        if read_only and disk.covers(path) and flags & WRITE_FLAGS:
            disk.fail(path)
        return real_os_open(path, flags, *args, **kwargs)

    def refused(real):
        def call(path, *args, **kwargs):
            if disk.covers(path) or any(disk.covers(a) for a in args[:1]):
                disk.fail(path)
            return real(path, *args, **kwargs)
        return call

    def saved(obj, f, *args, **kwargs):
        if not disk.covers(f):
            return real_save(obj, f, *args, **kwargs)
        with opened(f, "wb") as file:
            return real_save(obj, file, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(builtins, "open", opened)
        patch.setattr(io, "open", opened)
        patch.setattr(os, "open", os_opened)
        patch.setattr(torch, "save", saved)
        if read_only:
            for name in ("mkdir", "rename", "replace", "unlink", "rmdir"):
                patch.setattr(os, name, refused(getattr(os, name)))
        yield disk


@contextmanager
def swapped(monkeypatch, path: Path, replacement: bytes) -> Iterator[list[int]]:
    """``path`` is replaced by a file holding ``replacement`` (os.replace, as an atomic writer does) right after it
    is first opened for reading; the yielded list counts the opens of ``path`` for reading."""
    real_open, target, opens = builtins.open, os.path.abspath(path), []

    def opened(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if isinstance(file, (str, os.PathLike)) and os.path.abspath(file) == target and "r" in mode and "+" not in mode:
            opens.append(1)
            if len(opens) == 1:
                other = Path(target + ".other")
                other.write_bytes(replacement)
                os.replace(other, target)
        return handle

    with monkeypatch.context() as patch:
        patch.setattr(builtins, "open", opened)
        patch.setattr(io, "open", opened)
        yield opens


def damage(path: Path, how: str, **change: Any) -> None:
    """Damage a file: ``truncate`` (keep the first half), ``flip`` (one bit in the middle), ``garbage``, or
    ``edit`` a JSON object's or a checkpoint's fields (``change``: field -> new value, ``...`` deletes it)."""
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "flip":
        at = change.get("at", len(data) // 2)
        path.write_bytes(data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1:])
    elif how == "garbage":
        path.write_bytes(b"not what this file should hold\n")
    elif how == "arrays":  # an .npz with some arrays replaced: change maps a name to a function of the array
        import numpy as np

        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files}
        with open(path, "wb") as file:
            np.savez(file, **{k: change[k](v) if k in change else v for k, v in arrays.items()})
    elif how == "edit" and path.suffix == ".pt":
        import torch

        payload = torch.load(path, weights_only=True)
        torch.save(_edited(payload, change), path)
    elif how == "edit":
        import json

        record = json.loads(data)
        path.write_text(json.dumps(_edited(record, change) if isinstance(record, dict) else change["whole"]))
    else:
        raise ValueError(how)


def _edited(record: dict, change: dict) -> Any:
    if "whole" in change:
        return change["whole"]
    record = dict(record)
    for key, value in change.items():
        node = record
        *parents, last = key.split(".")
        for parent in parents:
            node[parent] = dict(node[parent])
            node = node[parent]
        if value is ...:
            node.pop(last, None)
        else:
            node[last] = value
    return record


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` and its bytes (lock files aside: they hold a pid)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock")}


def lost(before: dict[str, bytes], root: Path, restated: tuple[str, ...] = ()) -> list[str]:
    """Files of ``before`` that are gone or no longer begin with what they held (appended lines are not a loss);
    ``restated``: files a command rewrites whole by design (a run's config.json at a resume), only required to be
    there."""
    after = snapshot(root)
    return sorted(name for name, data in before.items()
                  if name not in after or not (name in restated or after[name].startswith(data)))


def leftovers(root: Path) -> list[str]:
    """Temporaries and half-written folders a failed write must not leave."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.name.endswith((".tmp", ".partial", ".replaced")) or p.name == ".spool")


def copy_tree(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("*.lock"))
    return dest
