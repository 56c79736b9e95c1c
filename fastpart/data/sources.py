"""Where the readers' bytes come from, read safely: the files of a folder or the members of a tar/zip
archive, checksums, and decoding (images, .npy, the numpy-only pickles of CIFAR).

Every read is bounded before it starts: a file's size (its stat, or its tar/zip header) is checked
against the limit the reader gives for that kind of file, and an image's width and height (read from
its header) against the largest image the dataset can hold, so a small hostile archive cannot exhaust
memory. Only regular files are read: a FIFO, a device or a symlink to one is refused with one line
(opening it could block forever or never end). Archives are read as streams, member by member,
without extracting anything to disk.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import lzma
import os
import pickle
import stat
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import numpy as np

from fastpart.errors import DatasetError

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
CHECKSUM_ALGORITHMS: tuple[str, ...] = ("md5", "sha256")

CHUNK_BYTES = 1 << 20
METADATA_BYTES = 64 << 20  # pickled CIFAR batches (31 MB each), text files (words.txt: 2.6 MB)
NPY_BYTES = 256 << 20  # one CIFAR-10-C corruption: 5 x 10000 x 32 x 32 x 3 bytes = 154 MB
_IMAGE_SLACK_BYTES = 1 << 20  # what an encoded image may carry beyond its pixels (metadata, profiles)
_ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error, lzma.LZMAError, OSError)
_ZIP_SUFFIXES = (".zip",)
_GZIP_MAGIC = b"\x1f\x8b"
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_16_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def size_text(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


# ---------------------------------------------------------------------------------------------
# Checksums
# ---------------------------------------------------------------------------------------------


def file_checksum(path: Path, algorithm: str) -> str:
    """``"<algorithm>:<hex digest>"`` of a file, read in 1 MiB chunks; algorithm is "md5" or "sha256"."""
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise DatasetError(f"unknown checksum algorithm {algorithm!r}; known: {', '.join(CHECKSUM_ALGORITHMS)}")
    digest = hashlib.new(algorithm)
    try:
        with open(path, "rb") as file:
            while chunk := file.read(CHUNK_BYTES):
                digest.update(chunk)
    except OSError as error:
        raise DatasetError(f"{path}: cannot read ({one_line(error)})") from error
    return f"{algorithm}:{digest.hexdigest()}"


# ---------------------------------------------------------------------------------------------
# Walking a folder or an archive: (relative posix path, read(limit, what) returning the file's bytes)
# ---------------------------------------------------------------------------------------------

# read(limit, what): the file's bytes; DatasetError naming the file when it is larger than ``limit``
# bytes (``what`` says what the limit is for) or is not a regular file.
ReadBytes = Callable[..., bytes]


class _Refused(Exception):
    """Why a file is not read (the location is added by ``iter_source_files``)."""


def require_source(source: Path | str | None, dataset: str) -> Path:
    if source is None:
        raise DatasetError(f"{dataset}: a source file or folder is required")
    path = Path(source)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    if not (path.is_dir() or path.is_file()):
        raise DatasetError(f"{path}: not a regular file or a folder ({file_kind(path.stat().st_mode)})")
    return path


def file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return kind
    return "not a regular file"


def _check_size(size: int, limit: int, what: str) -> None:
    if size > limit:
        raise _Refused(f"{size_text(size)}, more than the {size_text(limit)} allowed for {what}; refusing to read it")


def _is_ignored(parts: tuple[str, ...]) -> bool:
    """Hidden files and folders, and the resource forks macOS adds to zips."""
    return any(part.startswith(".") or part == "__MACOSX" for part in parts)


def _clean_parts(name: str) -> tuple[str, ...]:
    return tuple(part for part in PurePosixPath(name).parts if part not in (".", "/"))


def _read_folder_file(path: Path, limit: int, what: str) -> bytes:
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below like any other non-file
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        if error.errno == errno.ENXIO:  # a socket
            raise _Refused("not a regular file (a socket)") from None
        raise _Refused(f"cannot read ({one_line(error)})") from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(fd)
        mode, size = info.st_mode, info.st_size
        if not stat.S_ISREG(mode):
            link = ", through a symlink" if path.is_symlink() else ""
            raise _Refused(f"not a regular file ({file_kind(mode)}{link}); remove it or replace it with the file itself")
        _check_size(size, limit, what)
        data = file.read(size + 1)
        if len(data) > size:  # it grew since its size was read
            data += file.read(limit + 1 - len(data))
    _check_size(len(data), limit, what)
    return data


def _iter_folder(folder: Path, folders: list[tuple[str, ...]] | None) -> Iterator[tuple[str, Callable[[int, str], bytes]]]:
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        if folders is not None and Path(root) != folder:
            folders.append(_clean_parts(Path(root).relative_to(folder).as_posix()))
        for name in sorted(files):
            path = Path(root, name)
            yield path.relative_to(folder).as_posix(), partial(_read_folder_file, path)


def _read_tar_member(archive: tarfile.TarFile, member: tarfile.TarInfo, limit: int, what: str) -> bytes:
    _check_size(member.size, limit, what)
    file = archive.extractfile(member)
    if file is None:
        raise tarfile.ReadError(f"cannot read member {member.name}")
    return file.read()


def _tar_files(archive: tarfile.TarFile, folders: list[tuple[str, ...]] | None) -> Iterator[tuple[str, Callable[[int, str], bytes]]]:
    for member in archive:
        if member.isfile():  # links, FIFOs and devices inside an archive are never read
            yield member.name, partial(_read_tar_member, archive, member)
        elif member.isdir() and folders is not None:
            folders.append(_clean_parts(member.name))


def _iter_tar(path: Path, folders: list[tuple[str, ...]] | None) -> Iterator[tuple[str, Callable[[int, str], bytes]]]:
    with open(path, "rb") as raw:
        is_gzip = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        if not is_gzip:
            with tarfile.open(fileobj=raw, mode="r|*") as archive:
                yield from _tar_files(archive, folders)
            return
        # tarfile's own gzip stream skips the CRC check; gzip.GzipFile checks it at the end of the data.
        with gzip.GzipFile(fileobj=raw) as stream:
            with tarfile.open(fileobj=stream, mode="r|") as archive:
                yield from _tar_files(archive, folders)
            while stream.read(CHUNK_BYTES):
                pass


def _read_zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, what: str) -> bytes:
    _check_size(info.file_size, limit, what)  # zipfile never returns more than the header's size
    return archive.read(info)


def _iter_zip(path: Path, folders: list[tuple[str, ...]] | None) -> Iterator[tuple[str, Callable[[int, str], bytes]]]:
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.is_dir():
                yield info.filename, partial(_read_zip_member, archive, info)
            elif folders is not None:
                folders.append(_clean_parts(info.filename))


def _is_zip(path: Path) -> bool:
    name = path.name.lower()
    if name.endswith(_ZIP_SUFFIXES):
        return True
    if name.endswith(_TAR_SUFFIXES):
        return False
    return zipfile.is_zipfile(path)


def _located(read: Callable[[int, str], bytes], where: str, limit: int, what: str = "a file here") -> bytes:
    try:
        return read(limit, what)
    except _Refused as refused:
        raise DatasetError(f"{where}: {refused}") from None


def iter_source_files(source: Path, folders: list[tuple[str, ...]] | None = None) -> Iterator[tuple[tuple[str, ...], ReadBytes]]:
    """Every regular file of a folder (sorted walk) or archive (member order) as (path parts, read).

    ``read(limit, what)`` returns the file's bytes, or raises a one-line DatasetError when the file is
    over ``limit`` bytes or not a regular file. Hidden files and ``__MACOSX`` are skipped. A reader is
    valid only until the next file is yielded (tar archives are streamed). Folders seen on the way
    (those listed by the archive, or all of a folder source) are appended to ``folders`` when given.
    Wrap the loop in ``reading(source)``.
    """
    if source.is_dir():
        entries = _iter_folder(source, folders)
    elif _is_zip(source):
        entries = _iter_zip(source, folders)
    else:
        entries = _iter_tar(source, folders)
    for name, read in entries:
        parts = _clean_parts(name)
        if parts and not _is_ignored(parts):
            yield parts, partial(_located, read, location(source, parts))
    if folders is not None:
        folders[:] = [parts for parts in folders if parts and not _is_ignored(parts)]


@contextmanager
def reading(source: Path) -> Iterator[None]:
    """Turns the errors of a truncated or corrupt archive (or an unreadable folder) into one DatasetError line."""
    try:
        yield
    except _ARCHIVE_ERRORS as error:
        what = "folder" if source.is_dir() else "archive: it is truncated, corrupt or not a tar/zip file"
        raise DatasetError(f"{source}: cannot read {what} ({one_line(error)})") from error


def location(source: Path, parts: tuple[str, ...]) -> str:
    return f"{source}: {'/'.join(parts)}"


# ---------------------------------------------------------------------------------------------
# Decoding images
# ---------------------------------------------------------------------------------------------


def is_image(parts: tuple[str, ...]) -> bool:
    return parts[-1].lower().endswith(IMAGE_SUFFIXES)


@dataclass(frozen=True)
class ImageLimit:
    """The largest image a dataset can hold: ``pixels`` (width x height), described as ``text``."""

    pixels: int
    text: str

    @classmethod
    def of_size(cls, width: int, height: int) -> ImageLimit:
        return cls(width * height, f"{width}x{height}")

    @property
    def max_bytes(self) -> int:
        """The largest encoded file such an image can take: 16-bit RGB pixels plus metadata."""
        return 6 * self.pixels + _IMAGE_SLACK_BYTES


ANY_IMAGE = ImageLimit(64_000_000, "64 megapixels")


class Decoded(NamedTuple):
    pixels: np.ndarray  # uint8 (H, W, 3)
    alpha_dropped: bool  # the image had transparent pixels, whose alpha was discarded


def _scaled_16_bit(image: Any) -> np.ndarray:
    """A 16-bit grayscale image as uint8 RGB: value * 255 / 65535, rounded."""
    values = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
    gray = ((values * 255 + 32767) // 65535).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)


def _has_transparency(image: Any) -> bool:
    if image.mode in _ALPHA_MODES:
        alpha = image.getchannel("A")
    elif "transparency" in image.info:
        alpha = image.convert("RGBA").getchannel("A")
    else:
        return False
    return alpha.getextrema()[0] < 255


def decode_image(data: bytes, where: str, limit: ImageLimit = ANY_IMAGE) -> Decoded:
    """uint8 (H, W, 3) pixels of an encoded image, as PIL decodes it with ``convert("RGB")``, except that
    16-bit grayscale is scaled to 8 bits (not clipped). Images over ``limit`` are refused from their
    header, before any pixel is decoded."""
    from PIL import Image

    try:
        with warnings.catch_warnings():  # the limit is checked here, before PIL's own (a warning) applies
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # reads the header only
        with image:
            width, height = image.size
            if width * height > limit.pixels:
                raise DatasetError(f"{where}: image is {width}x{height}, larger than the {limit.text} allowed "
                                   f"here; refusing to decode it")
            if image.mode in _16_BIT_MODES:
                return Decoded(_scaled_16_bit(image), False)
            alpha_dropped = _has_transparency(image)
            return Decoded(np.asarray(image.convert("RGB"), dtype=np.uint8), alpha_dropped)
    except DatasetError:
        raise
    except Image.DecompressionBombError as error:  # too large for PIL even to open
        raise DatasetError(f"{where}: image larger than the {limit.text} allowed here ({one_line(error)}); "
                           "refusing to decode it") from error
    except Exception as error:  # PIL raises many types for broken files; this call only decodes
        raise DatasetError(f"{where}: cannot decode image ({one_line(error)})") from error


def read_image(read: ReadBytes, where: str, limit: ImageLimit = ANY_IMAGE) -> Decoded:
    """Read (size-checked) and decode one image file of a source."""
    return decode_image(read(limit.max_bytes, f"an image of at most {limit.text}"), where, limit)


# ---------------------------------------------------------------------------------------------
# Decoding arrays and pickles
# ---------------------------------------------------------------------------------------------


def load_npy(data: bytes, where: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as error:  # ValueError, EOFError, OSError...: this call only parses
        raise DatasetError(f"{where}: not a valid .npy file ({one_line(error)})") from error


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches (dicts, lists, numpy arrays) and refuses any other object."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes in protocol 2
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core") and hasattr(np, "_core"):
            module = "numpy._core" + module[len("numpy.core"):]
        return super().find_class(module, name)


def unpickle_dict(data: bytes, where: str) -> dict[str, Any]:
    """A pickled dict with its bytes keys (Python 2 pickles, ``encoding="latin1"``) turned into str."""
    try:
        value = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as error:  # UnpicklingError, EOFError, ValueError...: this call only parses
        raise DatasetError(f"{where}: not a valid CIFAR pickle ({one_line(error)})") from error
    if not isinstance(value, dict):
        raise DatasetError(f"{where}: expected a pickled dict, got {type(value).__name__}")
    return {key.decode("latin1") if isinstance(key, bytes) else key: item for key, item in value.items()}


def text(value: bytes | str) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def integer_labels(values: Any, where: str, num_classes: int, offset: int = 0) -> np.ndarray:
    """int64 (N,) labels from a list or array of whole numbers in [offset, offset + num_classes)."""
    try:
        array = np.asarray(values)
    except Exception as error:
        raise DatasetError(f"{where}: labels are not numbers ({one_line(error)})") from error
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise DatasetError(f"{where}: labels must be a 1-D list of integers, got {array.dtype} {array.shape}")
    if array.size and not np.all(np.isfinite(array) & (array == np.round(array))):
        raise DatasetError(f"{where}: labels must be whole numbers")
    labels = array.astype(np.int64)
    low, high = offset, offset + num_classes - 1
    if labels.size and (labels.min() < low or labels.max() > high):
        bad = labels[(labels < low) | (labels > high)][0]
        raise DatasetError(f"{where}: label {bad} out of range {low}..{high}")
    return labels
