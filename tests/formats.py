"""Builders of tiny datasets in the official file formats, for tests of readers, convert, loaders and the CLI.

Each builder writes real files (pickled CIFAR batches in a real tar.gz, MATLAB .mat files, a
Tiny ImageNet zip of JPEGs, CIFAR-10-C .npy files, PNG image trees) with seeded random pixels
and returns the ``ReadResult`` a correct reader must produce from them, so tests can check
exact round trips. Helpers at the end produce bad inputs (truncated or random files).

Where the files go:
* ``make_cifar10_python(dir)``: ``dir/cifar-10-python.tar.gz`` (``archive=False``: ``dir/cifar-10-batches-py/``)
* ``make_svhn_mats(dir)``: ``dir/train_32x32.mat`` and ``dir/test_32x32.mat``
* ``make_cifar10c(dir)``: ``dir/CIFAR-10-C/*.npy`` (``archive=True``: ``dir/CIFAR-10-C.tar``)
* ``make_image_folder`` and ``make_tinyimagenet_zip`` return the path to pass as source.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from fastpart.data.datasets import CIFAR10_CLASS_NAMES, ReadResult, SplitData

CIFAR10_PYTHON_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_PYTHON_FOLDER = "cifar-10-batches-py"
CIFAR10C_FOLDER = "CIFAR-10-C"
CIFAR10C_ARCHIVE = "CIFAR-10-C.tar"
SVHN_TRAIN = "train_32x32.mat"
SVHN_TEST = "test_32x32.mat"
TINYIMAGENET_ZIP = "tiny-imagenet-200.zip"


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def random_images(rng: np.random.Generator, n: int, size: int = 32) -> np.ndarray:
    """uint8 (n, size, size, 3) random pixels."""
    return rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def random_labels(rng: np.random.Generator, n: int, num_classes: int = 10) -> np.ndarray:
    return rng.integers(0, num_classes, size=n).astype(np.int64)


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1_500_000_000
    archive.addfile(info, io.BytesIO(data))


def _write_files(files: Mapping[str, bytes], folder: Path) -> None:
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _write_tar(files: Mapping[str, bytes], path: Path, mode: str = "w:gz") -> None:
    with tarfile.open(path, mode) as archive:
        for name, data in files.items():
            _add_bytes(archive, name, data)


def _write_zip(files: Mapping[str, bytes], path: Path) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)


# ---------------------------------------------------------------------------------------------
# CIFAR-10 (python version)
# ---------------------------------------------------------------------------------------------


def cifar_batch_bytes(images: np.ndarray, labels: np.ndarray, batch_label: str) -> bytes:
    """A batch pickled like the official files: b"data" uint8 (N, 3072) CHW rows, b"labels", b"filenames", b"batch_label"."""
    batch = {
        b"batch_label": batch_label.encode(),
        b"labels": [int(label) for label in labels],
        b"data": np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(len(images), -1),
        b"filenames": [f"image_{i:05d}.png".encode() for i in range(len(images))],
    }
    return pickle.dumps(batch, protocol=2)


def cifar_meta_bytes(class_names: Sequence[str] = CIFAR10_CLASS_NAMES) -> bytes:
    meta = {
        b"num_cases_per_batch": 10000,
        b"label_names": [name.encode() for name in class_names],
        b"num_vis": 3072,
    }
    return pickle.dumps(meta, protocol=2)


def cifar10_python_files(n_train: int = 50, n_test: int = 20, seed: int = 0) -> tuple[dict[str, bytes], ReadResult]:
    """{path inside the archive: bytes} of cifar-10-batches-py, and the expected ReadResult."""
    rng = _rng(seed)
    train_images, train_labels = random_images(rng, n_train), random_labels(rng, n_train)
    test_images, test_labels = random_images(rng, n_test), random_labels(rng, n_test)
    files = {f"{CIFAR10_PYTHON_FOLDER}/batches.meta": cifar_meta_bytes()}
    for i, rows in enumerate(np.array_split(np.arange(n_train), 5), start=1):
        files[f"{CIFAR10_PYTHON_FOLDER}/data_batch_{i}"] = cifar_batch_bytes(
            train_images[rows], train_labels[rows], f"training batch {i} of 5"
        )
    files[f"{CIFAR10_PYTHON_FOLDER}/test_batch"] = cifar_batch_bytes(test_images, test_labels, "testing batch 1 of 1")
    files[f"{CIFAR10_PYTHON_FOLDER}/readme.html"] = b"<html>CIFAR-10</html>\n"
    expected = ReadResult(
        splits={"train": SplitData(train_images, train_labels), "test": SplitData(test_images, test_labels)},
        class_names=list(CIFAR10_CLASS_NAMES),
    )
    return files, expected


def make_cifar10_python(dir: Path, n_train: int = 50, n_test: int = 20, seed: int = 0, archive: bool = True) -> ReadResult:
    """dir/cifar-10-python.tar.gz (or the extracted dir/cifar-10-batches-py/ when archive=False); returns the expected data."""
    files, expected = cifar10_python_files(n_train, n_test, seed)
    dir.mkdir(parents=True, exist_ok=True)
    if archive:
        _write_tar(files, dir / CIFAR10_PYTHON_ARCHIVE)
    else:
        _write_files(files, dir)
    return expected


# ---------------------------------------------------------------------------------------------
# Image trees
# ---------------------------------------------------------------------------------------------


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(pixels))


def make_image_folder(
    dir: Path,
    class_names: Sequence[str],
    n_per_class: Mapping[str, int],
    size: int = 32,
    seed: int = 0,
    archive: str | None = None,
) -> tuple[Path, ReadResult]:
    """PNG tree <split>/<class>/NNNN.png under dir/images (archive "tar.gz" -> dir/images.tar.gz, "zip" -> dir/images.zip).

    Returns (path to pass as source, expected ReadResult): splits sorted by name, classes sorted,
    images of a split ordered by label then file name.
    """
    if archive not in (None, "tar.gz", "zip"):
        raise ValueError(f"archive must be None, 'tar.gz' or 'zip', got {archive!r}")
    rng = _rng(seed)
    sorted_names = sorted(class_names)
    files: dict[str, bytes] = {}
    splits = {}
    for split in sorted(n_per_class):
        images, labels = [], []
        for label, class_name in enumerate(sorted_names):
            pixels = random_images(rng, n_per_class[split], size)
            for i, image in enumerate(pixels):
                files[f"{split}/{class_name}/{i:04d}.png"] = png_bytes(image)
            images.append(pixels)
            labels.append(np.full(len(pixels), label, dtype=np.int64))
        splits[split] = SplitData(np.concatenate(images), np.concatenate(labels))
    dir.mkdir(parents=True, exist_ok=True)
    if archive is None:
        path = dir / "images"
        _write_files(files, path)
    elif archive == "tar.gz":
        path = dir / "images.tar.gz"
        _write_tar(files, path)
    else:
        path = dir / "images.zip"
        _write_zip(files, path)
    return path, ReadResult(splits=splits, class_names=sorted_names)


# ---------------------------------------------------------------------------------------------
# SVHN
# ---------------------------------------------------------------------------------------------


def write_svhn_mat(path: Path, images: np.ndarray, digits: np.ndarray) -> None:
    """A .mat like the official: X uint8 (32, 32, 3, N), y float64 (N, 1) with 10 for digit 0."""
    from scipy.io import savemat

    y = np.where(digits == 0, 10, digits).astype(np.float64).reshape(-1, 1)
    savemat(str(path), {"X": np.ascontiguousarray(images.transpose(1, 2, 3, 0)), "y": y})


def make_svhn_mats(dir: Path, n_train: int = 30, n_test: int = 20, seed: int = 0) -> ReadResult:
    """dir/train_32x32.mat and dir/test_32x32.mat; returns the expected data (labels 0..9, classes "0".."9")."""
    rng = _rng(seed)
    dir.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, n, name in (("train", n_train, SVHN_TRAIN), ("test", n_test, SVHN_TEST)):
        images, digits = random_images(rng, n), random_labels(rng, n)
        digits[0] = 0  # always exercise the "10 means 0" rule
        write_svhn_mat(dir / name, images, digits)
        splits[split] = SplitData(images, digits)
    return ReadResult(splits=splits, class_names=[str(d) for d in range(10)])


# ---------------------------------------------------------------------------------------------
# Tiny ImageNet
# ---------------------------------------------------------------------------------------------


def jpeg_bytes(pixels: np.ndarray, grayscale: bool = False) -> bytes:
    image = Image.fromarray(pixels)
    if grayscale:
        image = image.convert("L")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def decoded_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _smooth_images(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Blocky pixels (8x8 blocks), so JPEG keeps them recognisable."""
    blocks = rng.integers(0, 256, size=(n, size // 8, size // 8, 3), dtype=np.uint8)
    return blocks.repeat(8, axis=1).repeat(8, axis=2)


def make_tinyimagenet_zip(
    dir: Path,
    n_classes: int = 3,
    n_train_per_class: int = 4,
    n_val_per_class: int = 2,
    seed: int = 0,
    grayscale_some: bool = True,
) -> tuple[Path, ReadResult]:
    """dir/tiny-imagenet-200.zip in the official layout (wnids.txt unsorted, words.txt, train/<wnid>/images/*.JPEG
    with <wnid>_boxes.txt, val/images + val_annotations.txt, unlabelled test/images); JPEG files, some grayscale.

    Returns (zip path, expected ReadResult): labels = index of the wnid in sorted(wnids), class names
    = first synonym in words.txt, train ordered by label then file name, test (= val) in
    val_annotations.txt order; pixels are what PIL decodes from the JPEG bytes (convert RGB).
    """
    rng = _rng(seed)
    wnids = [f"n{int(code):08d}" for code in rng.choice(10**8, size=n_classes, replace=False)]
    sorted_wnids = sorted(wnids)
    names = {wnid: f"class {wnid[-3:]}" for wnid in wnids}
    root = "tiny-imagenet-200"
    files: dict[str, bytes] = {
        f"{root}/wnids.txt": "".join(f"{wnid}\n" for wnid in wnids).encode(),
        f"{root}/words.txt": (
            "n00000001\tentity\n"
            + "".join(f"{wnid}\t{names[wnid]}, synonym of {wnid}\n" for wnid in sorted_wnids)
        ).encode(),
    }
    counter = 0

    def encode(pixels: np.ndarray) -> bytes:
        nonlocal counter
        counter += 1
        return jpeg_bytes(pixels, grayscale=grayscale_some and counter % 3 == 0)

    train_rows = []
    for wnid in wnids:
        pixels = _smooth_images(rng, n_train_per_class, 64)
        for i, image in enumerate(pixels):
            name = f"{wnid}_{i}.JPEG"
            data = encode(image)
            files[f"{root}/train/{wnid}/images/{name}"] = data
            train_rows.append((sorted_wnids.index(wnid), name, decoded_rgb(data)))
        files[f"{root}/train/{wnid}/{wnid}_boxes.txt"] = "".join(
            f"{wnid}_{i}.JPEG\t0\t0\t63\t63\n" for i in range(n_train_per_class)
        ).encode()
    train_rows.sort(key=lambda row: row[:2])

    val_wnids = [wnid for wnid in wnids for _ in range(n_val_per_class)]
    rng.shuffle(val_wnids)
    annotations, val_images, val_labels = [], [], []
    for i, wnid in enumerate(val_wnids):
        data = encode(_smooth_images(rng, 1, 64)[0])
        files[f"{root}/val/images/val_{i}.JPEG"] = data
        annotations.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63\n")
        val_images.append(decoded_rgb(data))
        val_labels.append(sorted_wnids.index(wnid))
    files[f"{root}/val/val_annotations.txt"] = "".join(annotations).encode()
    files[f"{root}/test/images/test_0.JPEG"] = encode(_smooth_images(rng, 1, 64)[0])

    dir.mkdir(parents=True, exist_ok=True)
    path = dir / TINYIMAGENET_ZIP
    _write_zip(files, path)
    expected = ReadResult(
        splits={
            "train": SplitData(
                np.stack([p for _, _, p in train_rows]), np.array([label for label, _, _ in train_rows], dtype=np.int64)
            ),
            "test": SplitData(np.stack(val_images), np.array(val_labels, dtype=np.int64)),
        },
        class_names=[names[wnid] for wnid in sorted_wnids],
    )
    return path, expected


# ---------------------------------------------------------------------------------------------
# CIFAR-10-C
# ---------------------------------------------------------------------------------------------


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def make_cifar10c(
    dir: Path,
    corruptions: Sequence[str] = ("gaussian_noise", "fog"),
    n_per_severity: int = 4,
    seed: int = 0,
    archive: bool = False,
) -> ReadResult:
    """dir/CIFAR-10-C/<corruption>.npy uint8 (5n, 32, 32, 3) + labels.npy uint8 (5n,) (archive=True: dir/CIFAR-10-C.tar).

    Returns the expected data: one split per corruption, in CIFAR10C_CORRUPTIONS order, extras
    {"severity": int64 1..5}.
    """
    from fastpart.data.datasets import CIFAR10C_CORRUPTIONS

    rng = _rng(seed)
    n = 5 * n_per_severity
    labels = random_labels(rng, n)
    severity = np.repeat(np.arange(1, 6, dtype=np.int64), n_per_severity)
    files = {f"{CIFAR10C_FOLDER}/labels.npy": npy_bytes(labels.astype(np.uint8))}
    splits = {}
    for corruption in corruptions:
        images = random_images(rng, n)
        files[f"{CIFAR10C_FOLDER}/{corruption}.npy"] = npy_bytes(images)
        splits[corruption] = SplitData(images, labels, extras={"severity": severity})
    dir.mkdir(parents=True, exist_ok=True)
    if archive:
        _write_tar(files, dir / CIFAR10C_ARCHIVE, mode="w")
    else:
        _write_files(files, dir)
    order = [name for name in CIFAR10C_CORRUPTIONS if name in splits]
    return ReadResult(splits={name: splits[name] for name in order}, class_names=list(CIFAR10_CLASS_NAMES))


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------


def truncate(path: Path, keep_fraction: float) -> Path:
    """Cuts a file to its first keep_fraction of bytes (in place); returns the path."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])
    return path


def write_random_bytes(path: Path, n_bytes: int = 4096, seed: int = 0) -> Path:
    """A file of random bytes (a corrupt archive / image / .mat / .npy)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_rng(seed).integers(0, 256, size=n_bytes, dtype=np.uint8).tobytes())
    return path


def corrupt_middle(path: Path, n_bytes: int = 64, seed: int = 0) -> Path:
    """Overwrites n_bytes in the middle of a file with random bytes (in place); returns the path."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + n_bytes] = _rng(seed).integers(0, 256, size=n_bytes, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def assert_same_result(actual: ReadResult, expected: ReadResult) -> None:
    """Exact equality: split names and order, pixels, labels, extras, class names."""
    assert list(actual.splits) == list(expected.splits)
    assert actual.class_names == expected.class_names
    for name, split in expected.splits.items():
        got = actual.splits[name]
        assert got.images.dtype == np.uint8 and got.labels.dtype == np.int64, name
        np.testing.assert_array_equal(got.images, split.images, err_msg=name)
        np.testing.assert_array_equal(got.labels, split.labels, err_msg=name)
        assert sorted(got.extras) == sorted(split.extras), name
        for key, values in split.extras.items():
            np.testing.assert_array_equal(got.extras[key], values, err_msg=f"{name}.{key}")
