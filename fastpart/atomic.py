"""Atomic file writes: write to a temporary file in the destination folder, fsync, rename.

A reader therefore sees either the previous complete file or the new complete file, never a
half-written one, whatever happens to the writing process.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success fsync it and rename it onto ``dest``.

    The caller writes the file at the yielded path by any means (``open``, a library writer).
    On an exception the temporary file is removed and ``dest`` is left untouched. The file gets the
    permissions a plain ``open`` would give it (0o666 less the umask), not mkstemp's private 0o600.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(dest: str | os.PathLike, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(dest: str | os.PathLike, obj: Any) -> None:
    write_bytes_atomic(dest, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def remove_stale_temporaries(folder: Path) -> int:
    """Delete temporaries left by a writer that was killed; return how many were removed."""
    removed = 0
    for tmp in folder.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed
