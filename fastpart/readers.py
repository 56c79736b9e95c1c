"""Readers of datasets' official file formats: a local file or folder -> ``ReadResult`` (uint8 arrays).

Readers validate everything they read and raise ``DatasetError`` with one clear line on bad input,
before anything is written. Archives (.tar, .tar.gz, .tgz, .zip, ...) are read as streams, member by
member, without extracting anything to disk.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import os
import pickle
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from fastpart import shapes
from fastpart.arrays import ReadResult, SplitData
from fastpart.errors import DatasetError

Reader = Callable[[Path | None, Mapping[str, Any]], ReadResult]


CIFAR10_CLASS_NAMES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

# The 15 benchmark corruptions of Hendrycks & Dietterich (2019), then the 4 extra ones.
CIFAR10C_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
    "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
    "jpeg_compression", "speckle_noise", "gaussian_blur", "spatter", "saturate",
)

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

CHECKSUM_ALGORITHMS: tuple[str, ...] = ("md5", "sha256")

_CHUNK_BYTES = 1 << 20
_CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_PYTHON_FILES = (*_CIFAR_TRAIN_BATCHES, "test_batch", "batches.meta")
_CIFAR_PIXELS = 32 * 32 * 3
_SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
_TINY_SIZE = 64
_SEVERITIES = 5
_ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error, lzma.LZMAError, OSError)
_ZIP_SUFFIXES = (".zip",)
_GZIP_MAGIC = b"\x1f\x8b"
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


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
            while chunk := file.read(_CHUNK_BYTES):
                digest.update(chunk)
    except OSError as error:
        raise DatasetError(f"{path}: cannot read ({_one_line(error)})") from error
    return f"{algorithm}:{digest.hexdigest()}"


# ---------------------------------------------------------------------------------------------
# Walking a folder or an archive: (relative posix path, function returning the file's bytes)
# ---------------------------------------------------------------------------------------------

ReadBytes = Callable[[], bytes]


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def _require_source(source: Path | str | None, dataset: str) -> Path:
    if source is None:
        raise DatasetError(f"{dataset}: a source file or folder is required")
    path = Path(source)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    return path


def _is_ignored(parts: tuple[str, ...]) -> bool:
    """Hidden files and folders, and the resource forks macOS adds to zips."""
    return any(part.startswith(".") or part == "__MACOSX" for part in parts)


def _clean_parts(name: str) -> tuple[str, ...]:
    return tuple(part for part in PurePosixPath(name).parts if part not in (".", "/"))


def _iter_folder(folder: Path) -> Iterator[tuple[str, ReadBytes]]:
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = Path(root, name)
            yield path.relative_to(folder).as_posix(), path.read_bytes


def _read_tar_member(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    file = archive.extractfile(member)
    if file is None:
        raise tarfile.ReadError(f"cannot read member {member.name}")
    return file.read()


def _tar_files(archive: tarfile.TarFile) -> Iterator[tuple[str, ReadBytes]]:
    for member in archive:
        if member.isfile():
            yield member.name, partial(_read_tar_member, archive, member)


def _iter_tar(path: Path) -> Iterator[tuple[str, ReadBytes]]:
    with open(path, "rb") as raw:
        is_gzip = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        if not is_gzip:
            with tarfile.open(fileobj=raw, mode="r|*") as archive:
                yield from _tar_files(archive)
            return
        # tarfile's own gzip stream skips the CRC check; gzip.GzipFile checks it at the end of the data.
        with gzip.GzipFile(fileobj=raw) as stream:
            with tarfile.open(fileobj=stream, mode="r|") as archive:
                yield from _tar_files(archive)
            while stream.read(_CHUNK_BYTES):
                pass


def _iter_zip(path: Path) -> Iterator[tuple[str, ReadBytes]]:
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.is_dir():
                yield info.filename, partial(archive.read, info)


def _is_zip(path: Path) -> bool:
    name = path.name.lower()
    if name.endswith(_ZIP_SUFFIXES):
        return True
    if name.endswith(_TAR_SUFFIXES):
        return False
    return zipfile.is_zipfile(path)


def iter_source_files(source: Path) -> Iterator[tuple[tuple[str, ...], ReadBytes]]:
    """Every regular file of a folder (sorted walk) or archive (member order) as (path parts, reader).

    Hidden files and ``__MACOSX`` are skipped. A reader is valid only until the next file is
    yielded (tar archives are streamed). Wrap the loop in ``_reading(source)``.
    """
    if source.is_dir():
        entries = _iter_folder(source)
    elif _is_zip(source):
        entries = _iter_zip(source)
    else:
        entries = _iter_tar(source)
    for name, read in entries:
        parts = _clean_parts(name)
        if parts and not _is_ignored(parts):
            yield parts, read


@contextmanager
def _reading(source: Path) -> Iterator[None]:
    """Turns the errors of a truncated or corrupt archive (or an unreadable folder) into one DatasetError line."""
    try:
        yield
    except _ARCHIVE_ERRORS as error:
        what = "folder" if source.is_dir() else "archive: it is truncated, corrupt or not a tar/zip file"
        raise DatasetError(f"{source}: cannot read {what} ({_one_line(error)})") from error


def _where(source: Path, parts: tuple[str, ...]) -> str:
    return f"{source}: {'/'.join(parts)}"


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


def _is_image(parts: tuple[str, ...]) -> bool:
    return parts[-1].lower().endswith(IMAGE_SUFFIXES)


def decode_image(data: bytes, where: str) -> np.ndarray:
    """uint8 (H, W, 3) pixels of an encoded image, as PIL decodes it with ``convert("RGB")``."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except Exception as error:  # PIL raises many types for broken files; this call only decodes
        raise DatasetError(f"{where}: cannot decode image ({_one_line(error)})") from error


def _load_npy(data: bytes, where: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as error:  # ValueError, EOFError, OSError...: this call only parses
        raise DatasetError(f"{where}: not a valid .npy file ({_one_line(error)})") from error


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


def _unpickle_dict(data: bytes, where: str) -> dict[str, Any]:
    """A pickled dict with its bytes keys (Python 2 pickles, ``encoding="latin1"``) turned into str."""
    try:
        value = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as error:  # UnpicklingError, EOFError, ValueError...: this call only parses
        raise DatasetError(f"{where}: not a valid CIFAR pickle ({_one_line(error)})") from error
    if not isinstance(value, dict):
        raise DatasetError(f"{where}: expected a pickled dict, got {type(value).__name__}")
    return {key.decode("latin1") if isinstance(key, bytes) else key: item for key, item in value.items()}


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _integer_labels(values: Any, where: str, num_classes: int, offset: int = 0) -> np.ndarray:
    """int64 (N,) labels from a list or array of whole numbers in [offset, offset + num_classes)."""
    try:
        array = np.asarray(values)
    except Exception as error:
        raise DatasetError(f"{where}: labels are not numbers ({_one_line(error)})") from error
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


# ---------------------------------------------------------------------------------------------
# Image trees: split/class/file (optionally under one wrapping folder)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TreeImage:
    parts: tuple[str, ...]  # path parts inside the source
    pixels: np.ndarray
    where: str


def _tree_layout(images: list[_TreeImage]) -> list[tuple[str, str, str, _TreeImage]]:
    """(split, class, file name, image) for every image: paths must be split/class/file, all under at most one wrapping folder."""
    depths = {len(image.parts) for image in images}
    wrapped = depths == {4} and len({image.parts[0] for image in images}) == 1
    if depths != {3} and not wrapped:
        odd = next(image for image in images if len(image.parts) != 3)
        raise DatasetError(f"{odd.where}: expected images at <split>/<class>/<file>")
    skip = 1 if wrapped else 0
    layout = [(image.parts[skip], image.parts[skip + 1], image.parts[skip + 2], image) for image in images]
    seen: set[tuple[str, ...]] = set()
    for image in images:
        if image.parts in seen:
            raise DatasetError(f"{image.where}: appears twice")
        seen.add(image.parts)
    return layout


def _check_same_size(layout: list[tuple[str, str, str, _TreeImage]]) -> None:
    first = layout[0][3]
    height, width = first.pixels.shape[:2]
    for *_, image in layout:
        if image.pixels.shape[:2] != (height, width):
            h, w = image.pixels.shape[:2]
            raise DatasetError(f"{image.where}: image is {w}x{h}, expected {width}x{height} like {first.where}")


def _tree_result(images: list[_TreeImage], source: Path) -> ReadResult:
    """Splits = top folders (sorted), classes = sorted union of class folders, files sorted by name within a class."""
    if not images:
        raise DatasetError(f"{source}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    layout = _tree_layout(images)
    _check_same_size(layout)
    class_names = sorted({class_name for _, class_name, _, _ in layout})
    label_of = {name: label for label, name in enumerate(class_names)}
    splits = {}
    for split in sorted({split for split, *_ in layout}):
        rows = sorted(
            ((label_of[class_name], file, image) for name, class_name, file, image in layout if name == split),
            key=lambda row: row[:2],
        )
        splits[split] = SplitData(
            images=np.stack([image.pixels for _, _, image in rows]),
            labels=np.array([label for label, _, _ in rows], dtype=np.int64),
        )
    return ReadResult(splits=splits, class_names=class_names)


def _decode_tree_image(parts: tuple[str, ...], read: ReadBytes, source: Path) -> _TreeImage:
    where = _where(source, parts)
    return _TreeImage(parts=parts, pixels=decode_image(read(), where), where=where)


# ---------------------------------------------------------------------------------------------
# cifar10
# ---------------------------------------------------------------------------------------------


def _cifar_batch(entry: dict[str, Any], where: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """images uint8 (N, 32, 32, 3) and labels int64 (N,) of one unpickled batch."""
    for key in ("data", "labels"):
        if key not in entry:
            raise DatasetError(f"{where}: missing key {key!r}")
    data = entry["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _CIFAR_PIXELS:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetError(f"{where}: 'data' must be uint8 (N, {_CIFAR_PIXELS}), got {got}")
    labels = _integer_labels(entry["labels"], where, num_classes)
    if len(labels) != len(data):
        raise DatasetError(f"{where}: {len(labels)} labels for {len(data)} images")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _cifar_python_result(files: dict[str, tuple[str, bytes]], source: Path) -> ReadResult:
    missing = [name for name in _CIFAR_PYTHON_FILES if name not in files]
    if missing:
        raise DatasetError(f"{source}: missing {', '.join(missing)} of cifar-10-batches-py")
    meta_where, meta_bytes = files["batches.meta"]
    meta = _unpickle_dict(meta_bytes, meta_where)
    names = meta.get("label_names")
    if not isinstance(names, (list, tuple)) or len(names) != len(CIFAR10_CLASS_NAMES):
        raise DatasetError(f"{meta_where}: 'label_names' must list {len(CIFAR10_CLASS_NAMES)} class names")
    class_names = [_text(name) for name in names]

    def batch(name: str) -> tuple[np.ndarray, np.ndarray]:
        where, data = files[name]
        return _cifar_batch(_unpickle_dict(data, where), where, len(class_names))

    train = [batch(name) for name in _CIFAR_TRAIN_BATCHES]
    test_images, test_labels = batch("test_batch")
    splits = {
        "train": SplitData(np.concatenate([i for i, _ in train]), np.concatenate([l for _, l in train])),
        "test": SplitData(test_images, test_labels),
    }
    return ReadResult(splits=splits, class_names=class_names)


def _cifar_tree_result(images: list[_TreeImage], source: Path) -> ReadResult:
    result = _tree_result(images, source)
    if tuple(result.class_names) != CIFAR10_CLASS_NAMES:
        raise DatasetError(
            f"{source}: class folders {', '.join(result.class_names)} are not the 10 CIFAR-10 classes "
            f"{', '.join(CIFAR10_CLASS_NAMES)}"
        )
    if set(result.splits) != {"train", "test"}:
        raise DatasetError(f"{source}: expected split folders train and test, found {', '.join(result.splits)}")
    size = result.splits["train"].images.shape[1:3]
    if size != (32, 32):
        raise DatasetError(f"{source}: CIFAR-10 images must be 32x32, found {size[1]}x{size[0]}")
    return ReadResult(splits={"train": result.splits["train"], "test": result.splits["test"]}, class_names=result.class_names)


def read_cifar10(source: Path | None, options: Mapping[str, Any]) -> ReadResult:
    """CIFAR-10 from cifar-10-python.tar.gz (or its extracted folder) or from a train/test/<class>/<image> tree or archive."""
    source = _require_source(source, "cifar10")
    batches: dict[str, tuple[str, bytes]] = {}
    images: list[_TreeImage] = []
    with _reading(source):
        for parts, read in iter_source_files(source):
            if parts[-1] in _CIFAR_PYTHON_FILES:
                if parts[-1] in batches:
                    raise DatasetError(f"{source}: two copies of {parts[-1]}: {batches[parts[-1]][0]} and {'/'.join(parts)}")
                batches[parts[-1]] = (_where(source, parts), read())
            elif _is_image(parts) and not batches:
                images.append(_decode_tree_image(parts, read, source))
    if batches:
        return _cifar_python_result(batches, source)
    if images:
        return _cifar_tree_result(images, source)
    raise DatasetError(
        f"{source}: found neither cifar-10-batches-py (data_batch_1..5, test_batch, batches.meta) "
        "nor train/<class>/<image> and test/<class>/<image> files"
    )


# ---------------------------------------------------------------------------------------------
# svhn
# ---------------------------------------------------------------------------------------------


def _svhn_split(path: Path) -> SplitData:
    try:
        from scipy.io import loadmat
    except ImportError as error:
        raise DatasetError("reading SVHN .mat files needs scipy: pip install scipy") from error
    try:
        contents = loadmat(str(path), variable_names=["X", "y"])
    except Exception as error:  # scipy raises many types for broken files; this call only parses
        raise DatasetError(f"{path}: cannot read MATLAB file, it may be truncated or corrupt ({_one_line(error)})") from error
    for key in ("X", "y"):
        if key not in contents:
            raise DatasetError(f"{path}: missing variable {key!r}")
    images, raw_labels = contents["X"], contents["y"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[:3] != (32, 32, 3):
        raise DatasetError(f"{path}: X must be uint8 (32, 32, 3, N), got {images.dtype} {images.shape}")
    n = images.shape[3]
    if raw_labels.shape not in ((n, 1), (n,)):
        raise DatasetError(f"{path}: y must have shape ({n}, 1) for {n} images, got {raw_labels.shape}")
    labels = _integer_labels(raw_labels.reshape(-1), str(path), 10, offset=1) % 10  # label 10 is digit 0
    return SplitData(images=np.ascontiguousarray(images.transpose(3, 0, 1, 2)), labels=labels)


def read_svhn(source: Path | None, options: Mapping[str, Any]) -> ReadResult:
    """SVHN from the folder holding train_32x32.mat and test_32x32.mat (or the path of one of them)."""
    source = _require_source(source, "svhn")
    folder = source if source.is_dir() else source.parent
    paths = {split: folder / name for split, name in _SVHN_FILES.items()}
    missing = [path.name for path in paths.values() if not path.is_file()]
    if missing:
        raise DatasetError(f"{folder}: missing {', '.join(missing)}")
    splits = {split: _svhn_split(path) for split, path in paths.items()}
    return ReadResult(splits=splits, class_names=[str(digit) for digit in range(10)])


# ---------------------------------------------------------------------------------------------
# tinyimagenet
# ---------------------------------------------------------------------------------------------


@dataclass
class _TinyFiles:
    texts: dict[str, tuple[tuple[str, ...], bytes]] = field(default_factory=dict)  # file name -> (parts, bytes)
    train: list[tuple[tuple[str, ...], str, str, np.ndarray]] = field(default_factory=list)  # (root, wnid, file, pixels)
    val: dict[tuple[tuple[str, ...], str], np.ndarray] = field(default_factory=dict)  # (root, file) -> pixels


_TINY_TEXT_FILES = ("wnids.txt", "words.txt", "val_annotations.txt")


def _collect_tiny_file(files: _TinyFiles, parts: tuple[str, ...], read: ReadBytes, source: Path) -> None:
    name = parts[-1]
    if name in _TINY_TEXT_FILES:
        if name in files.texts:
            raise DatasetError(f"{source}: two copies of {name}: {'/'.join(files.texts[name][0])} and {'/'.join(parts)}")
        files.texts[name] = (parts, read())
    elif not _is_image(parts):
        return
    elif len(parts) >= 4 and parts[-2] == "images" and parts[-4] == "train":
        pixels = decode_image(read(), _where(source, parts))
        files.train.append((parts[:-4], parts[-3], name, pixels))
    elif len(parts) >= 3 and parts[-3:-1] == ("val", "images"):
        files.val[(parts[:-3], name)] = decode_image(read(), _where(source, parts))


def _decode_text(parts: tuple[str, ...], data: bytes, source: Path) -> list[str]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DatasetError(f"{_where(source, parts)}: not UTF-8 text ({_one_line(error)})") from error
    return [line.strip("\r") for line in text.split("\n") if line.strip()]


def _tiny_class_names(wnids: list[str], files: _TinyFiles, source: Path) -> list[str]:
    if "words.txt" not in files.texts:
        return list(wnids)
    words = {}
    for line in _decode_text(*files.texts["words.txt"], source):
        wnid, _, synonyms = line.partition("\t")
        words[wnid.strip()] = synonyms.split(",")[0].strip()
    return [words.get(wnid) or wnid for wnid in wnids]


def _check_tiny_size(pixels: np.ndarray, where: str) -> None:
    if pixels.shape[:2] != (_TINY_SIZE, _TINY_SIZE):
        h, w = pixels.shape[:2]
        raise DatasetError(f"{where}: image is {w}x{h}, expected {_TINY_SIZE}x{_TINY_SIZE}")


def _tiny_train(files: _TinyFiles, root: tuple[str, ...], label_of: dict[str, int], source: Path) -> SplitData:
    rows = []
    for image_root, wnid, name, pixels in files.train:
        if image_root != root:
            continue
        where = _where(source, (*root, "train", wnid, "images", name))
        if wnid not in label_of:
            raise DatasetError(f"{where}: class {wnid} is not in wnids.txt")
        _check_tiny_size(pixels, where)
        rows.append((label_of[wnid], name, pixels))
    rows.sort(key=lambda row: row[:2])
    empty = sorted(set(label_of) - {wnid for image_root, wnid, _, _ in files.train if image_root == root})
    if empty:
        raise DatasetError(f"{_where(source, (*root, 'train'))}: no images for class {empty[0]}")
    return SplitData(np.stack([p for _, _, p in rows]), np.array([label for label, _, _ in rows], dtype=np.int64))


def _tiny_val(files: _TinyFiles, root: tuple[str, ...], label_of: dict[str, int], source: Path) -> SplitData:
    if "val_annotations.txt" not in files.texts:
        raise DatasetError(f"{source}: missing val/val_annotations.txt")
    parts, data = files.texts["val_annotations.txt"]
    annotations_where = _where(source, parts)
    images = {name: pixels for (image_root, name), pixels in files.val.items() if image_root == root}
    pixels_list, labels = [], []
    for line in _decode_text(parts, data, source):
        fields = line.split("\t")
        if len(fields) < 2:
            raise DatasetError(f"{annotations_where}: expected '<file>\\t<wnid>...', got {line!r}")
        name, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in label_of:
            raise DatasetError(f"{annotations_where}: class {wnid} of {name} is not in wnids.txt")
        if name not in images:
            raise DatasetError(f"{annotations_where}: annotated image val/images/{name} is missing")
        where = _where(source, (*root, "val", "images", name))
        _check_tiny_size(images[name], where)
        pixels_list.append(images.pop(name))
        labels.append(label_of[wnid])
    if images:
        raise DatasetError(f"{_where(source, (*root, 'val', 'images', sorted(images)[0]))}: not in val_annotations.txt")
    if not labels:
        raise DatasetError(f"{annotations_where}: no validation images")
    return SplitData(np.stack(pixels_list), np.array(labels, dtype=np.int64))


def read_tinyimagenet(source: Path | None, options: Mapping[str, Any]) -> ReadResult:
    """Tiny ImageNet from tiny-imagenet-200.zip (or its extracted folder); "test" is the labelled val split."""
    source = _require_source(source, "tinyimagenet")
    files = _TinyFiles()
    with _reading(source):
        for parts, read in iter_source_files(source):
            _collect_tiny_file(files, parts, read, source)
    if "wnids.txt" not in files.texts:
        raise DatasetError(f"{source}: missing wnids.txt (expected the tiny-imagenet-200 layout)")
    wnids_parts, wnids_bytes = files.texts["wnids.txt"]
    root = wnids_parts[:-1]
    wnids = sorted({line.strip() for line in _decode_text(wnids_parts, wnids_bytes, source)})
    if not wnids:
        raise DatasetError(f"{_where(source, wnids_parts)}: no class ids")
    label_of = {wnid: label for label, wnid in enumerate(wnids)}
    train = _tiny_train(files, root, label_of, source)
    test = _tiny_val(files, root, label_of, source)
    return ReadResult(splits={"train": train, "test": test}, class_names=_tiny_class_names(wnids, files, source))


# ---------------------------------------------------------------------------------------------
# cifar10c
# ---------------------------------------------------------------------------------------------


def _cifar10c_labels(labels: np.ndarray | None, source: Path) -> np.ndarray:
    if labels is None:
        raise DatasetError(f"{source}: missing labels.npy")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{source}: labels.npy must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    n = len(labels)
    if n == 0 or n % _SEVERITIES:
        raise DatasetError(f"{source}: labels.npy has {n} rows, expected a positive multiple of {_SEVERITIES}")
    return _integer_labels(labels, f"{source}: labels.npy", len(CIFAR10_CLASS_NAMES))


def _cifar10c_split(images: np.ndarray, labels: np.ndarray, where: str) -> SplitData:
    n = len(labels)
    if images.dtype != np.uint8 or images.shape != (n, 32, 32, 3):
        raise DatasetError(f"{where}: expected uint8 ({n}, 32, 32, 3) to match labels.npy, got {images.dtype} {images.shape}")
    severity = np.arange(n, dtype=np.int64) // (n // _SEVERITIES) + 1
    return SplitData(images=images, labels=labels, extras={"severity": severity})


def read_cifar10c(source: Path | None, options: Mapping[str, Any]) -> ReadResult:
    """CIFAR-10-C: one split per <corruption>.npy (5 severities stacked), extras["severity"] in 1..5."""
    source = _require_source(source, "cifar10c")
    arrays: dict[str, tuple[str, np.ndarray]] = {}
    with _reading(source):
        for parts, read in iter_source_files(source):
            if not parts[-1].endswith(".npy"):
                continue
            name, where = parts[-1][: -len(".npy")], _where(source, parts)
            if name != "labels" and name not in CIFAR10C_CORRUPTIONS:
                raise DatasetError(f"{where}: unknown corruption {name!r}; known: {', '.join(CIFAR10C_CORRUPTIONS)}")
            if name in arrays:
                raise DatasetError(f"{where}: a second {parts[-1]} (first: {arrays[name][0]})")
            arrays[name] = (where, _load_npy(read(), where))
    labels = _cifar10c_labels(arrays.pop("labels", (None, None))[1], source)
    if not arrays:
        raise DatasetError(f"{source}: no <corruption>.npy files found")
    splits = {
        name: _cifar10c_split(arrays[name][1], labels, arrays[name][0])
        for name in CIFAR10C_CORRUPTIONS
        if name in arrays
    }
    return ReadResult(splits=splits, class_names=list(CIFAR10_CLASS_NAMES))


# ---------------------------------------------------------------------------------------------
# imagefolder and shapes
# ---------------------------------------------------------------------------------------------


def read_imagefolder(source: Path | None, options: Mapping[str, Any]) -> ReadResult:
    """Any <split>/<class>/<image> tree, or a .tar/.tar.gz/.tgz/.zip of one; all images the same size."""
    source = _require_source(source, "imagefolder")
    images: list[_TreeImage] = []
    with _reading(source):
        for parts, read in iter_source_files(source):
            if _is_image(parts):
                images.append(_decode_tree_image(parts, read, source))
    return _tree_result(images, source)


_SHAPES_OPTIONS = ("n_train", "n_test", "seed", "size")


def read_shapes(source: Path | None, options: Mapping[str, Any]) -> ReadResult:
    """The generated "shapes" dataset; takes no source, options n_train, n_test, seed, size."""
    if source is not None:
        raise DatasetError(f"shapes is generated and takes no source (got {source})")
    unknown = sorted(set(options) - set(_SHAPES_OPTIONS))
    if unknown:
        raise DatasetError(f"shapes: unknown option {unknown[0]!r}; known: {', '.join(_SHAPES_OPTIONS)}")
    return shapes.generate(**options)
