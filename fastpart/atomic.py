"""The disk, safely: atomic files (temporary file in the destination folder, fsync, rename), folders held
by one process at a time, and records read back checked against their schema.

A reader sees either the previous complete file or the new complete file, never a half-written one,
whatever happens to the writing process; ``atomic_folder`` does the same for a whole folder (written beside
it, swapped in when complete). A write that fails because the disk is full is one line
(``DiskFull``) naming the folder and its free space; any other failed write (a read-only disk, a path
through a file, no permission) is one line too (``OutputError``) naming the file; both leave nothing behind.

``check_record(record, schema, where)`` checks a record read from disk (JSON, a checkpoint's payload)
against a table of its fields (``Field``: the types it may have, whether it is required, an extra check)
and says in one line which file and which field are wrong; ``schema_of(dataclass)`` derives such a table
from a dataclass's annotations (a config recorded as JSON).

``hold(lock_file, what)`` takes an exclusive OS lock (``flock``) for the life of a ``with`` block: a
second process gets one line (``FolderBusy``) naming the holder's pid; the kernel releases the lock
when the holder dies, however it dies, so a killed run can be resumed at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Mapping, NamedTuple

from fastpart.errors import FastpartError

LOW_SPACE_BYTES = 1 << 20  # a failed write with less free space than this on its disk is reported as a full disk


class DiskFull(FastpartError):
    """A write failed for lack of space on its disk."""


class FolderBusy(FastpartError):
    """Another process holds the folder (a run, an evaluation or a conversion in progress)."""


class OutputError(FastpartError):
    """A file or folder could not be written: a read-only disk, a path through a file, no permission."""


# errnos that say a write itself failed (as opposed to, say, a network error raised inside an atomic_path block)
OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
                           errno.EISDIR, errno.EEXIST, errno.ENOENT, errno.EIO, errno.EFBIG, errno.ENAMETOOLONG,
                           errno.EMLINK, errno.ELOOP})


def output_error(exc: BaseException, dest: str | os.PathLike) -> FastpartError | None:
    """The one-line error of a failed write of ``dest``: ``DiskFull`` for a full disk, ``OutputError`` for
    any other OSError of writing (read-only disk, a folder on the path that is a file, permissions); None
    when ``exc`` is not about writing."""
    dest = Path(dest)
    full = disk_full_error(exc, dest)
    if full is not None:
        return full
    if not isinstance(exc, OSError) or exc.errno not in OUTPUT_ERRNOS:
        return None
    reason = (exc.strerror or os.strerror(exc.errno)).lower()
    other = Path(exc.filename) if isinstance(exc.filename, (str, os.PathLike)) else None
    if other is not None and other != dest and not other.name.startswith(f".{dest.name}."):
        reason += f": {other}"  # the folder that is a file, or that cannot be created
    return OutputError(f"cannot write {dest} ({reason})")


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
    except OSError as exc:  # a read-only disk, a path through a file, a full disk: one line, never a traceback
        raise output_error(exc, dest) or OutputError(f"cannot write {dest} ({exc.strerror or exc})") from None
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
        failed = output_error(exc, dest)
        _remove(tmp)
        if failed is not None:
            raise failed from None
        raise
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    """Remove a temporary file; one that cannot be removed (a disk gone read-only) is left to the next run."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def _aside(dest: Path) -> tuple[Path, Path]:
    """Where a new version of the folder ``dest`` is written, and where the version it replaces waits during the swap."""
    return dest.parent / f".{dest.name}.partial", dest.parent / f".{dest.name}.replaced"


def recover_folder(dest: str | os.PathLike) -> None:
    """Undo what an ``atomic_folder`` write of ``dest`` killed half-way left (the caller holds ``dest``'s lock): the
    partial new version is removed; a previous version set aside by an interrupted swap is put back."""
    dest = Path(dest)
    staging, replaced = _aside(dest)
    try:
        shutil.rmtree(staging, ignore_errors=True)
        if replaced.exists() and dest.exists():
            shutil.rmtree(replaced, ignore_errors=True)  # killed after the swap
        elif replaced.exists():
            os.replace(replaced, dest)  # killed between the swap's two renames: the previous version comes back
    except OSError as exc:
        raise output_error(exc, dest) or OutputError(f"cannot write {dest} ({exc})") from None


@contextlib.contextmanager
def atomic_folder(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty folder beside ``dest`` (``.<name>.partial``); when the block succeeds, swap it in for ``dest``.

    The previous ``dest`` stays whole until the swap and is removed after it. If the block fails, however it
    fails (a full disk, Ctrl-C), the new folder is removed and ``dest`` is as it was; a kill is undone by
    ``recover_folder``. A failed write is one line naming ``dest`` (``DiskFull``, ``OutputError``)."""
    dest = Path(dest)
    staging, replaced = _aside(dest)
    recover_folder(dest)
    try:
        staging.mkdir(parents=True)
    except OSError as exc:
        raise output_error(exc, dest) or OutputError(f"cannot write {dest} ({exc})") from None
    try:
        yield staging
        if dest.exists():
            os.replace(dest, replaced)
        os.replace(staging, dest)
        fsync_dir(dest.parent)
    except BaseException as exc:
        if replaced.exists() and not dest.exists():
            os.replace(replaced, dest)
        shutil.rmtree(staging, ignore_errors=True)
        ours = isinstance(exc, OSError) and (exc.filename is None or str(dest.parent) in str(exc.filename))
        failed = exc if isinstance(exc, (DiskFull, OutputError)) else output_error(exc, dest) if ours else None
        if failed is not None:  # a write here (not a read elsewhere), named by the folder asked for
            raise type(failed)(str(failed).replace(str(staging), str(dest))) from None
        raise
    shutil.rmtree(replaced, ignore_errors=True)


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


class _Recording:
    """A file that remembers why a write failed (an OSError, Ctrl-C): torch.save turns it into a RuntimeError."""

    def __init__(self, file: BinaryIO) -> None:
        self.file, self.error = file, None

    def write(self, data: Any) -> int:
        try:
            return self.file.write(data)
        except BaseException as exc:
            self.error = self.error or exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)


def write_atomic(dest: str | os.PathLike, write: Callable[[Any], Any]) -> None:
    """``write(file)`` into a temporary file beside ``dest``, renamed onto it when complete (``atomic_path``); a
    failed write is the one-line error of its OSError, however the library writing reported it."""
    with atomic_path(dest) as tmp, open(tmp, "wb") as file:
        recording = _Recording(file)
        try:
            write(recording)
        except Exception:
            if recording.error is not None:
                raise recording.error from None
            raise


def write_bytes_atomic(dest: str | os.PathLike, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(dest: str | os.PathLike, obj: Any) -> None:
    write_bytes_atomic(dest, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def remove_stale_temporaries(folder: Path) -> int:
    """Delete temporaries left by a writer that was killed; return how many were removed."""
    removed = 0
    for tmp in folder.glob(".*.tmp"):
        _remove(tmp)
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


# ---------------------------------------------------------------------------------------------
# Records read back: every field checked before it is trusted
# ---------------------------------------------------------------------------------------------


class Field(NamedTuple):
    """One field of a record: the types it may have (``bool`` never passes for a number, an ``int`` passes
    for a ``float``), whether it must be there, and an extra check returning what is wrong (or None)."""

    types: tuple[type, ...]
    required: bool = False
    check: Callable[[Any], str | None] | None = None


Schema = Mapping[str, Field]


def _is_a(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, types)


def kind_of(value: Any) -> str:
    """A value's JSON kind in words, for messages: 'a list', 'a string ("ten")', 'null'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"a string ({value[:20]!r})"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _names(types: tuple[type, ...]) -> str:
    words = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
             tuple: "a list", dict: "an object", type(None): "null"}
    shown = list(dict.fromkeys(words.get(t, f"a {t.__name__}") for t in types))
    return " or ".join(shown)


def check_record(record: Any, schema: Schema, where: str) -> dict[str, Any]:
    """``record`` if it is a mapping whose fields fit ``schema`` (fields it does not name are left alone);
    otherwise one line naming ``where`` (the file) and the field."""
    if not isinstance(record, dict):
        raise FastpartError(f"{where}: expected an object of fields, found {kind_of(record)}")
    for name, field in schema.items():
        if name not in record:
            if field.required:
                raise FastpartError(f"{where}: the field {name!r} is missing")
            continue
        value = record[name]
        if not _is_a(value, field.types):
            raise FastpartError(f"{where}: the field {name!r} is {kind_of(value)}, expected {_names(field.types)}")
        problem = field.check(value) if field.check is not None and value is not None else None
        if problem:
            raise FastpartError(f"{where}: the field {name!r} {problem}")
    return record


def list_of(*types: type) -> Callable[[Any], str | None]:
    """An extra check: every element of a list is one of ``types``."""
    def check(values: Any) -> str | None:
        bad = next((v for v in values if not _is_a(v, types)), _NOTHING)
        return None if bad is _NOTHING else f"holds {kind_of(bad)}, expected only {_names(types)}"
    return check


def map_of(*types: type) -> Callable[[Any], str | None]:
    """An extra check: every value of an object is one of ``types``."""
    def check(values: Any) -> str | None:
        bad = next(((k, v) for k, v in values.items() if not _is_a(v, types)), None)
        return None if bad is None else f"holds {kind_of(bad[1])} under {bad[0]!r}, expected {_names(types)}"
    return check


_NOTHING = object()
_ANNOTATED = {"str": (str,), "int": (int,), "float": (float,), "bool": (bool,), "None": (type(None),)}


def schema_of(config_class: type) -> dict[str, Field]:
    """The schema of a dataclass recorded as JSON, from its annotations (``int | None``, ``tuple[int, ...]``):
    every field optional (a record written before a field existed lacks it), lists for tuples."""
    schema: dict[str, Field] = {}
    for f in dataclasses.fields(config_class):
        types: list[type] = []
        check = None
        for part in str(f.type).split("|"):
            part = part.strip()
            if part in _ANNOTATED:
                types += _ANNOTATED[part]
            elif part.startswith("tuple["):
                types += [list, tuple]
                inner = part[len("tuple["):].split(",")[0].strip()
                check = list_of(*_ANNOTATED[inner]) if inner in _ANNOTATED else None
            else:
                break  # a type this table does not describe: the field is not checked
        else:
            schema[f.name] = Field(tuple(types), False, check)
    return schema
