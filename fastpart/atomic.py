"""Safe writes: atomic files (temporary file in the destination folder, fsync, rename) and folders held
by one process at a time.

A reader sees either the previous complete file or the new complete file, never a half-written one,
whatever happens to the writing process. A write that fails because the disk is full is one line
(``DiskFull``) naming the folder and its free space, and leaves nothing behind.

``hold(lock_file, what)`` takes an exclusive OS lock (``flock``) for the life of a ``with`` block: a
second process gets one line (``FolderBusy``) naming the holder's pid; the kernel releases the lock
when the holder dies, however it dies, so a killed run can be resumed at once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from fastpart.errors import FastpartError

LOW_SPACE_BYTES = 1 << 20  # a failed write with less free space than this on its disk is reported as a full disk


class DiskFull(FastpartError):
    """A write failed for lack of space on its disk."""


class FolderBusy(FastpartError):
    """Another process holds the folder (a run, an evaluation or a conversion in progress)."""


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
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    except OSError as exc:
        raise disk_full_error(exc, dest) or exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as a RuntimeError ("unexpected pos")
        full = disk_full_error(exc, dest)
        tmp.unlink(missing_ok=True)
        if full is not None:
            raise full from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def free_bytes(folder: Path) -> int | None:
    """Free space on the disk of ``folder`` (its nearest existing ancestor), or None if it cannot be read."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def disk_full_error(exc: BaseException, dest: Path) -> DiskFull | None:
    """A one-line ``DiskFull`` when ``exc`` (a failed write of ``dest``) came from a full disk, else None."""
    if isinstance(exc, OSError) and exc.errno is not None and exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None  # an OSError says what it is; only errors without one (torch.save's) are judged by free space
    free = free_bytes(dest.parent)
    out_of_space = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if not out_of_space and (free is None or free >= LOW_SPACE_BYTES):
        return None
    shown = f"{free / 2**20:.1f} MiB free" if free is not None else "free space unknown"
    return DiskFull(f"no space left on the disk of {dest.parent} ({shown}) while writing {dest.name}; "
                    f"free some space and run the command again")


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


@contextlib.contextmanager
def hold(lock_file: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold ``lock_file`` (created if missing) exclusively for the block; ``FolderBusy`` if another process does.

    ``what`` names the thing held in the message, e.g. "run folder runs/x". The lock file keeps the
    holder's pid for that message and stays behind (empty of meaning once no process holds it).
    """
    path = Path(lock_file)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    except OSError as exc:
        raise disk_full_error(exc, path) or FastpartError(f"cannot create {path}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise FolderBusy(f"{what} is in use by another fastpart process (pid {holder}); "
                             f"wait for it to finish, or stop it") from None
        try:  # the holder's pid, for the message of the next process (a full disk only loses the pid)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # releases the lock
