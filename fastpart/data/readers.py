"""Readers of datasets' official file formats: a local file or folder -> ``ReadResult`` (uint8 arrays).

Readers validate everything they read and raise ``DatasetError`` with one clear line on bad input,
before anything is written. The files come from ``sources`` (a folder, or a tar/zip archive read as
a stream), every read bounded by a limit on the file's size and on an image's width x height.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fastpart.data import shapes
from fastpart.data.arrays import ReadResult, SplitData
from fastpart.data.sources import (
    ANY_IMAGE, IMAGE_SUFFIXES, METADATA_BYTES, NPY_BYTES, ImageLimit, ReadBytes, integer_labels, is_image, iter_source_files, load_npy, location, one_line, read_image, reading, require_source, text, unpickle_dict,
)
from fastpart.errors import DatasetError

Reader = Callable[[Path | None, Mapping[str, Any]], ReadResult]


CIFAR10_CLASS_NAMES: tuple[str, ...] = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# The 15 benchmark corruptions of Hendrycks & Dietterich (2019), then the 4 extra ones.
CIFAR10C_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
    "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
    "jpeg_compression", "speckle_noise", "gaussian_blur", "spatter", "saturate",
)

_CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_PYTHON_FILES = (*_CIFAR_TRAIN_BATCHES, "test_batch", "batches.meta")
_CIFAR_PIXELS = 32 * 32 * 3
_SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
_TINY_SIZE = 64
_CIFAR_IMAGE = ImageLimit.of_size(32, 32)
_TINY_IMAGE = ImageLimit.of_size(_TINY_SIZE, _TINY_SIZE)
_SEVERITIES = 5


# ---------------------------------------------------------------------------------------------
# Image trees: split/class/file (optionally under one wrapping folder)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TreeImage:
    parts: tuple[str, ...]  # path parts inside the source
    row: int  # in the source's ImageStore
    size: tuple[int, int]  # height, width
    where: str
    alpha_dropped: bool = False


def _store():  # imported on use: the readers load without the image operations (scipy)
    from fastpart.data.imageops import ImageStore
    return ImageStore()


def _tree_layout(images: list[_TreeImage]) -> tuple[int, list[tuple[str, str, str, _TreeImage]]]:
    """How many wrapping folders (0 or 1) and (split, class, file name, image) for every image: paths must be
    split/class/file, all under at most one wrapping folder."""
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
    return skip, layout


def _check_same_size(layout: list[tuple[str, str, str, _TreeImage]]) -> None:
    first = layout[0][3]
    height, width = first.size
    for *_, image in layout:
        if image.size != (height, width):
            h, w = image.size
            raise DatasetError(f"{image.where}: image is {w}x{h}, expected {width}x{height} like {first.where}")


def _dropped(images: list[_TreeImage], folders: list[tuple[str, ...]], skip: int) -> dict[str, Any]:
    """What the tree leaves out: alpha channels with transparent pixels, class folders without images."""
    dropped: dict[str, Any] = {}
    alpha = sum(image.alpha_dropped for image in images)
    if alpha:
        dropped["alpha_channels"] = alpha
    wrapper = images[0].parts[:skip]
    filled = {image.parts[: skip + 2] for image in images}
    empty = sorted({"/".join(parts) for parts in folders
                    if len(parts) == skip + 2 and parts[:skip] == wrapper and parts not in filled})
    if empty:
        dropped["empty_class_folders"] = empty
    return dropped


def _tree_result(images: list[_TreeImage], source: Path, folders: list[tuple[str, ...]], store) -> ReadResult:
    """Splits = top folders (sorted), classes = sorted union of class folders, files sorted by name within a class."""
    if not images:
        raise DatasetError(f"{source}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    skip, layout = _tree_layout(images)
    _check_same_size(layout)
    class_names = sorted({class_name for _, class_name, _, _ in layout})
    label_of = {name: label for label, name in enumerate(class_names)}
    splits = {}
    for split in sorted({split for split, *_ in layout}):
        rows = sorted(((label_of[class_name], file, image) for name, class_name, file, image in layout if name == split),
                      key=lambda row: row[:2])
        splits[split] = SplitData(images=store.stack([image.row for _, _, image in rows]),
                                  labels=np.array([label for label, _, _ in rows], dtype=np.int64))
    return ReadResult(splits=splits, class_names=class_names, dropped=_dropped(images, folders, skip))


def _read_tree_image(parts: tuple[str, ...], read: ReadBytes, source: Path, limit: ImageLimit, store) -> _TreeImage:
    where = location(source, parts)
    pixels, alpha_dropped = read_image(read, where, limit)
    return _TreeImage(parts, store.add(pixels), pixels.shape[:2], where, alpha_dropped)


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
    labels = integer_labels(entry["labels"], where, num_classes)
    if len(labels) != len(data):
        raise DatasetError(f"{where}: {len(labels)} labels for {len(data)} images")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _cifar_python_result(files: dict[str, tuple[str, bytes]], source: Path) -> ReadResult:
    missing = [name for name in _CIFAR_PYTHON_FILES if name not in files]
    if missing:
        raise DatasetError(f"{source}: missing {', '.join(missing)} of cifar-10-batches-py")
    meta_where, meta_bytes = files["batches.meta"]
    meta = unpickle_dict(meta_bytes, meta_where)
    names = meta.get("label_names")
    if not isinstance(names, (list, tuple)) or len(names) != len(CIFAR10_CLASS_NAMES):
        raise DatasetError(f"{meta_where}: 'label_names' must list {len(CIFAR10_CLASS_NAMES)} class names")
    class_names = [text(name) for name in names]

    def batch(name: str) -> tuple[np.ndarray, np.ndarray]:
        where, data = files[name]
        return _cifar_batch(unpickle_dict(data, where), where, len(class_names))

    train = [batch(name) for name in _CIFAR_TRAIN_BATCHES]
    test_images, test_labels = batch("test_batch")
    splits = {
        "train": SplitData(np.concatenate([i for i, _ in train]), np.concatenate([l for _, l in train])),
        "test": SplitData(test_images, test_labels),
    }
    return ReadResult(splits=splits, class_names=class_names)


def _cifar_tree_result(images: list[_TreeImage], source: Path, folders: list[tuple[str, ...]], store) -> ReadResult:
    result = _tree_result(images, source, folders, store)
    if tuple(result.class_names) != CIFAR10_CLASS_NAMES:
        raise DatasetError(f"{source}: class folders {', '.join(result.class_names)} are not the 10 CIFAR-10 classes "
                           f"{', '.join(CIFAR10_CLASS_NAMES)}")
    if set(result.splits) != {"train", "test"}:
        raise DatasetError(f"{source}: expected split folders train and test, found {', '.join(result.splits)}")
    size = result.splits["train"].images.shape[1:3]
    if size != (32, 32):
        raise DatasetError(f"{source}: CIFAR-10 images must be 32x32, found {size[1]}x{size[0]}")
    splits = {"train": result.splits["train"], "test": result.splits["test"]}
    return ReadResult(splits=splits, class_names=result.class_names, dropped=result.dropped)


def read_cifar10(source: Path | None, options: Mapping[str, Any]) -> ReadResult:
    """CIFAR-10 from cifar-10-python.tar.gz (or its extracted folder) or from a train/test/<class>/<image> tree or archive."""
    source = require_source(source, "cifar10")
    batches: dict[str, tuple[str, bytes]] = {}
    images: list[_TreeImage] = []
    folders: list[tuple[str, ...]] = []
    store = _store()
    with reading(source):
        for parts, read in iter_source_files(source, folders):
            if parts[-1] in _CIFAR_PYTHON_FILES:
                if parts[-1] in batches:
                    raise DatasetError(f"{source}: two copies of {parts[-1]}: {batches[parts[-1]][0]} and {'/'.join(parts)}")
                batches[parts[-1]] = (location(source, parts), read(METADATA_BYTES, "a CIFAR-10 batch file"))
            elif is_image(parts) and not batches:
                images.append(_read_tree_image(parts, read, source, _CIFAR_IMAGE, store))
    if batches:
        return _cifar_python_result(batches, source)
    if images:
        return _cifar_tree_result(images, source, folders, store)
    raise DatasetError(f"{source}: found neither cifar-10-batches-py (data_batch_1..5, test_batch, batches.meta) "
                       "nor train/<class>/<image> and test/<class>/<image> files")


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
        raise DatasetError(f"{path}: cannot read MATLAB file, it may be truncated or corrupt ({one_line(error)})") from error
    for key in ("X", "y"):
        if key not in contents:
            raise DatasetError(f"{path}: missing variable {key!r}")
    images, raw_labels = contents["X"], contents["y"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[:3] != (32, 32, 3):
        raise DatasetError(f"{path}: X must be uint8 (32, 32, 3, N), got {images.dtype} {images.shape}")
    n = images.shape[3]
    if raw_labels.shape not in ((n, 1), (n,)):
        raise DatasetError(f"{path}: y must have shape ({n}, 1) for {n} images, got {raw_labels.shape}")
    labels = integer_labels(raw_labels.reshape(-1), str(path), 10, offset=1) % 10  # label 10 is digit 0
    return SplitData(images=np.ascontiguousarray(images.transpose(3, 0, 1, 2)), labels=labels)


def read_svhn(source: Path | None, options: Mapping[str, Any]) -> ReadResult:
    """SVHN from the folder holding train_32x32.mat and test_32x32.mat (or the path of one of them)."""
    source = require_source(source, "svhn")
    folder = source if source.is_dir() else source.parent
    paths = {split: folder / name for split, name in _SVHN_FILES.items()}
    missing = [path.name for path in paths.values() if not path.is_file()]  # is_file: a regular file (not a FIFO)
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
    train: list[tuple[tuple[str, ...], str, str, int]] = field(default_factory=list)  # (root, wnid, file, store row)
    val: dict[tuple[tuple[str, ...], str], int] = field(default_factory=dict)  # (root, file) -> store row
    alpha_dropped: int = 0  # images with transparent pixels
    store: Any = field(default_factory=_store)  # the decoded pixels


_TINY_TEXT_FILES = ("wnids.txt", "words.txt", "val_annotations.txt")


def _collect_tiny_file(files: _TinyFiles, parts: tuple[str, ...], read: ReadBytes, source: Path) -> None:
    name = parts[-1]
    if name in _TINY_TEXT_FILES:
        if name in files.texts:
            raise DatasetError(f"{source}: two copies of {name}: {'/'.join(files.texts[name][0])} and {'/'.join(parts)}")
        files.texts[name] = (parts, read(METADATA_BYTES, "a text file"))
    elif not is_image(parts):
        return
    elif len(parts) >= 4 and parts[-2] == "images" and parts[-4] == "train":
        decoded = read_image(read, location(source, parts), _TINY_IMAGE)
        files.train.append((parts[:-4], parts[-3], name, files.store.add(decoded.pixels)))
        files.alpha_dropped += decoded.alpha_dropped
    elif len(parts) >= 3 and parts[-3:-1] == ("val", "images"):
        decoded = read_image(read, location(source, parts), _TINY_IMAGE)
        files.val[(parts[:-3], name)] = files.store.add(decoded.pixels)
        files.alpha_dropped += decoded.alpha_dropped


def _decode_text(parts: tuple[str, ...], data: bytes, source: Path) -> list[str]:
    try:
        content = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DatasetError(f"{location(source, parts)}: not UTF-8 text ({one_line(error)})") from error
    return [line.strip("\r") for line in content.split("\n") if line.strip()]


def _tiny_class_names(wnids: list[str], files: _TinyFiles, source: Path) -> list[str]:
    if "words.txt" not in files.texts:
        return list(wnids)
    words = {}
    for line in _decode_text(*files.texts["words.txt"], source):
        wnid, _, synonyms = line.partition("\t")
        words[wnid.strip()] = synonyms.split(",")[0].strip()
    return [words.get(wnid) or wnid for wnid in wnids]


def _check_tiny_size(shape: tuple[int, ...], where: str) -> None:
    if shape[:2] != (_TINY_SIZE, _TINY_SIZE):
        h, w = shape[:2]
        raise DatasetError(f"{where}: image is {w}x{h}, expected {_TINY_SIZE}x{_TINY_SIZE}")


def _tiny_train(files: _TinyFiles, root: tuple[str, ...], label_of: dict[str, int], source: Path) -> SplitData:
    rows = []
    for image_root, wnid, name, row in files.train:
        if image_root != root:
            continue
        where = location(source, (*root, "train", wnid, "images", name))
        if wnid not in label_of:
            raise DatasetError(f"{where}: class {wnid} is not in wnids.txt")
        _check_tiny_size(files.store.shapes[row], where)
        rows.append((label_of[wnid], name, row))
    rows.sort(key=lambda row: row[:2])
    empty = sorted(set(label_of) - {wnid for image_root, wnid, _, _ in files.train if image_root == root})
    if empty:
        raise DatasetError(f"{location(source, (*root, 'train'))}: no images for class {empty[0]}")
    return SplitData(files.store.stack([r for _, _, r in rows]), np.array([label for label, _, _ in rows], dtype=np.int64))


def _tiny_val(files: _TinyFiles, root: tuple[str, ...], label_of: dict[str, int], source: Path) -> SplitData:
    if "val_annotations.txt" not in files.texts:
        raise DatasetError(f"{source}: missing val/val_annotations.txt")
    parts, data = files.texts["val_annotations.txt"]
    annotations_where = location(source, parts)
    images = {name: row for (image_root, name), row in files.val.items() if image_root == root}
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
        where = location(source, (*root, "val", "images", name))
        _check_tiny_size(files.store.shapes[images[name]], where)
        pixels_list.append(images.pop(name))
        labels.append(label_of[wnid])
    if images:
        raise DatasetError(f"{location(source, (*root, 'val', 'images', sorted(images)[0]))}: not in val_annotations.txt")
    if not labels:
        raise DatasetError(f"{annotations_where}: no validation images")
    return SplitData(files.store.stack(pixels_list), np.array(labels, dtype=np.int64))


def read_tinyimagenet(source: Path | None, options: Mapping[str, Any]) -> ReadResult:
    """Tiny ImageNet from tiny-imagenet-200.zip (or its extracted folder); "test" is the labelled val split."""
    source = require_source(source, "tinyimagenet")
    files = _TinyFiles()
    with reading(source):
        for parts, read in iter_source_files(source):
            _collect_tiny_file(files, parts, read, source)
    if "wnids.txt" not in files.texts:
        raise DatasetError(f"{source}: missing wnids.txt (expected the tiny-imagenet-200 layout)")
    wnids_parts, wnids_bytes = files.texts["wnids.txt"]
    root = wnids_parts[:-1]
    wnids = sorted({line.strip() for line in _decode_text(wnids_parts, wnids_bytes, source)})
    if not wnids:
        raise DatasetError(f"{location(source, wnids_parts)}: no class ids")
    label_of = {wnid: label for label, wnid in enumerate(wnids)}
    train = _tiny_train(files, root, label_of, source)
    test = _tiny_val(files, root, label_of, source)
    dropped = {"alpha_channels": files.alpha_dropped} if files.alpha_dropped else {}
    return ReadResult({"train": train, "test": test}, _tiny_class_names(wnids, files, source), dropped)


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
    return integer_labels(labels, f"{source}: labels.npy", len(CIFAR10_CLASS_NAMES))


def _cifar10c_split(images: np.ndarray, labels: np.ndarray, where: str) -> SplitData:
    n = len(labels)
    if images.dtype != np.uint8 or images.shape != (n, 32, 32, 3):
        raise DatasetError(f"{where}: expected uint8 ({n}, 32, 32, 3) to match labels.npy, got {images.dtype} {images.shape}")
    severity = np.arange(n, dtype=np.int64) // (n // _SEVERITIES) + 1
    return SplitData(images=images, labels=labels, extras={"severity": severity})


def read_cifar10c(source: Path | None, options: Mapping[str, Any]) -> ReadResult:
    """CIFAR-10-C: one split per <corruption>.npy (5 severities stacked), extras["severity"] in 1..5."""
    source = require_source(source, "cifar10c")
    arrays: dict[str, tuple[str, np.ndarray]] = {}
    store = _store()  # each corruption's 150 MB waits on the disk while the others are read
    with reading(source):
        for parts, read in iter_source_files(source):
            if not parts[-1].endswith(".npy"):
                continue
            name, where = parts[-1][: -len(".npy")], location(source, parts)
            if name != "labels" and name not in CIFAR10C_CORRUPTIONS:
                raise DatasetError(f"{where}: unknown corruption {name!r}; known: {', '.join(CIFAR10C_CORRUPTIONS)}")
            if name in arrays:
                raise DatasetError(f"{where}: a second {parts[-1]} (first: {arrays[name][0]})")
            arrays[name] = (where, store.keep(load_npy(read(NPY_BYTES, "a CIFAR-10-C .npy file"), where)))
    labels = _cifar10c_labels(arrays.pop("labels", (None, None))[1], source)
    if not arrays:
        raise DatasetError(f"{source}: no <corruption>.npy files found")
    splits = {name: _cifar10c_split(arrays[name][1], labels, arrays[name][0]) for name in CIFAR10C_CORRUPTIONS if name in arrays}
    return ReadResult(splits=splits, class_names=list(CIFAR10_CLASS_NAMES))


# ---------------------------------------------------------------------------------------------
# imagefolder and shapes
# ---------------------------------------------------------------------------------------------


def read_imagefolder(source: Path | None, options: Mapping[str, Any]) -> ReadResult:
    """Any <split>/<class>/<image> tree, or a .tar/.tar.gz/.tgz/.zip of one; all images the same size."""
    source = require_source(source, "imagefolder")
    images: list[_TreeImage] = []
    folders: list[tuple[str, ...]] = []
    store = _store()
    with reading(source):
        for parts, read in iter_source_files(source, folders):
            if is_image(parts):
                images.append(_read_tree_image(parts, read, source, ANY_IMAGE, store))
    return _tree_result(images, source, folders, store)


_SHAPES_OPTIONS = ("n_train", "n_test", "seed", "size")


def read_shapes(source: Path | None, options: Mapping[str, Any]) -> ReadResult:
    """The generated "shapes" dataset; takes no source, options n_train, n_test, seed, size."""
    if source is not None:
        raise DatasetError(f"shapes is generated and takes no source (got {source})")
    unknown = sorted(set(options) - set(_SHAPES_OPTIONS))
    if unknown:
        raise DatasetError(f"shapes: unknown option {unknown[0]!r}; known: {', '.join(_SHAPES_OPTIONS)}")
    return shapes.generate(**options)
