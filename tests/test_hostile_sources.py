"""Sources that should not exhaust memory, hang or lose data quietly: huge images behind small files,
members larger than any image, FIFOs and devices posing as images, 16-bit and transparent images,
class folders without images."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from formats import write_png
from PIL import Image
from support import deadline

from fastpart.cli import main
from fastpart.config import ConvertConfig
from fastpart.data.convert import convert
from fastpart.data.datasets import CIFAR10_CLASS_NAMES
from fastpart.data.readers import read_cifar10, read_imagefolder
from fastpart.errors import DatasetError

NO_OPTIONS: dict = {}


@contextmanager
def refused(match: str, seconds: float = 10) -> Iterator[None]:
    """A one-line DatasetError matching ``match``, raised within ``seconds``."""
    with deadline(seconds), pytest.raises(DatasetError, match=match) as error:
        yield
    assert "\n" not in str(error.value)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@pytest.fixture(scope="module")
def huge_png() -> bytes:
    """A valid 12000x12000 black RGB PNG (432 MB of pixels) in under 2 MB."""
    width = height = 12000
    rows = bytes(100 * (3 * width + 1))  # filter byte 0 and black pixels, 100 rows at a time
    packer = zlib.compressobj(1)
    idat = b"".join(packer.compress(rows) for _ in range(height // 100)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Bounded reads
# ---------------------------------------------------------------------------------------------


def test_huge_images_in_a_small_tar_are_refused_from_their_headers(tmp_path, huge_png):
    with pytest.warns(Image.DecompressionBombWarning):  # PIL only warns, and would decode 432 MB each
        assert Image.open(io.BytesIO(huge_png)).size == (12000, 12000)
    members = {f"train/a/{i}.png": huge_png for i in range(4)} | {"test/a/0.png": _png(np.zeros((8, 8, 3), np.uint8))}
    source = _tar(tmp_path / "bomb.tar", members)
    with refused(r"bomb.tar: train/a/0.png: image is 12000x12000, larger than the 64 megapixels allowed", seconds=5):
        read_imagefolder(source, NO_OPTIONS)


def test_an_image_larger_than_the_dataset_holds_is_refused_before_decoding(tmp_path):
    members = {f"{split}/{name}/0.png": _png(np.zeros((32, 32, 3), np.uint8))
               for split in ("train", "test") for name in CIFAR10_CLASS_NAMES}
    members["train/cat/1.png"] = _png(np.zeros((64, 64, 3), np.uint8))
    source = _tar(tmp_path / "cifar.tar", members)
    with refused(r"train/cat/1.png: image is 64x64, larger than the 32x32 allowed here"):
        read_cifar10(source, NO_OPTIONS)


def test_a_zip_member_larger_than_any_image_is_refused_from_its_header(tmp_path):
    source = tmp_path / "big.zip"
    with zipfile.ZipFile(source, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("train/a/0.png", _png(np.zeros((8, 8, 3), np.uint8)))
        with archive.open("train/a/big.png", "w", force_zip64=True) as member:  # 400 MiB of zeros, 2 MB zipped
            block = bytes(8 << 20)
            for _ in range(50):
                member.write(block)
    assert source.stat().st_size < 4 << 20
    with refused(r"big.zip: train/a/big.png: 400.0 MiB, more than the \S+ MiB allowed for an image of at most "
                 r"64 megapixels", seconds=5):
        read_imagefolder(source, NO_OPTIONS)


def test_a_member_larger_than_a_cifar_image_is_refused_from_its_header(tmp_path):
    source = tmp_path / "cifar.zip"
    with zipfile.ZipFile(source, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("train/cat/0.png", bytes(2 << 20))
    with refused(r"train/cat/0.png: 2.0 MiB, more than the 1.0 MiB allowed for an image of at most 32x32"):
        read_cifar10(source, NO_OPTIONS)


# ---------------------------------------------------------------------------------------------
# Only regular files are read
# ---------------------------------------------------------------------------------------------


def _tree(root: Path) -> Path:
    write_png(root / "train" / "a" / "0.png", np.zeros((4, 4, 3), np.uint8))
    write_png(root / "test" / "a" / "0.png", np.zeros((4, 4, 3), np.uint8))
    return root


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_a_symlink_to_a_device_is_refused(tmp_path):
    source = _tree(tmp_path / "src")
    (source / "train" / "a" / "zero.png").symlink_to("/dev/zero")
    with refused(r"train/a/zero.png: not a regular file \(a character device, through a symlink\)"):
        read_imagefolder(source, NO_OPTIONS)


def test_a_fifo_is_refused_without_blocking(tmp_path):
    source = _tree(tmp_path / "src")
    os.mkfifo(source / "train" / "a" / "pipe.png")
    with refused(r"train/a/pipe.png: not a regular file \(a FIFO\)", seconds=5):
        read_imagefolder(source, NO_OPTIONS)


def test_files_the_reader_does_not_need_are_never_opened(tmp_path):
    source = _tree(tmp_path / "src")
    os.mkfifo(source / "train" / "a" / "notes.txt")
    (source / "train" / "a" / "link.txt").symlink_to(tmp_path / "nowhere")  # broken
    with deadline(5):
        assert read_imagefolder(source, NO_OPTIONS).splits["train"].images.shape == (1, 4, 4, 3)


def test_a_fifo_as_the_source_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "data.zip"
    os.mkfifo(fifo)
    with refused("neither a regular file nor a folder", seconds=5):
        convert(ConvertConfig("imagefolder", source=str(fifo), out=str(tmp_path / "out"), format="npz"))


# ---------------------------------------------------------------------------------------------
# Nothing lost quietly
# ---------------------------------------------------------------------------------------------


def test_16_bit_grayscale_is_scaled_to_8_bits_not_clipped(tmp_path):
    values = np.array([[1000, 22000], [65535, 0]], dtype=np.uint16)
    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
        Image.fromarray(values).save(tmp_path / split / "a" / "deep.png")
    assert Image.open(tmp_path / "train" / "a" / "deep.png").mode.startswith("I")
    images = read_imagefolder(tmp_path, NO_OPTIONS).splits["train"].images
    expected = np.floor(values.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)  # 4, 86, 255, 0
    np.testing.assert_array_equal(images[0], np.repeat(expected[..., None], 3, axis=-1))


@pytest.mark.parametrize("archive", [None, "zip", "gztar"])
def test_transparency_and_class_folders_without_images_are_reported(tmp_path, capsys, archive):
    root = tmp_path / "src"
    write_png(root / "train" / "a" / "0.png", np.full((4, 4, 3), 10, np.uint8))
    Image.fromarray(np.full((4, 4, 4), 200, np.uint8), mode="RGBA").save(root / "train" / "a" / "see-through.png")
    Image.fromarray(np.full((4, 4, 4), 255, np.uint8), mode="RGBA").save(root / "train" / "a" / "opaque.png")
    write_png(root / "test" / "a" / "0.png", np.full((4, 4, 3), 20, np.uint8))
    (root / "train" / "b").mkdir()  # a class folder left empty
    (root / "test" / "c").mkdir()
    (root / "test" / "c" / "README.txt").write_text("no images here")
    source = Path(shutil.make_archive(str(tmp_path / "tree"), archive, root)) if archive else root

    assert main(["convert", "imagefolder", "--source", str(source), "--out", str(tmp_path / "out"), "--format", "npz"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "dropped the alpha channel (transparency) of 1 image" in line
    assert "2 class folders without images (test/c, train/b)" in line
    manifest = json.loads((tmp_path / "out" / "imagefolder" / "manifest.json").read_text())
    assert manifest["dropped"] == {"alpha_channels": 1, "empty_class_folders": ["test/c", "train/b"]}
    assert manifest["class_names"] == ["a"] and manifest["splits"]["train"]["count"] == 3


def test_nothing_dropped_says_nothing(tmp_path, capsys):
    _tree(tmp_path / "src")
    assert main(["convert", "imagefolder", "--source", str(tmp_path / "src"), "--out", str(tmp_path / "out"),
                 "--format", "npz"]) == 0
    assert "; dropped" not in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "imagefolder" / "manifest.json").read_text())["dropped"] == {}


# ---------------------------------------------------------------------------------------------
# Images waiting on the disk (a conversion's spool) read back exactly as held in memory
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["imagefolder", "cifar10-tree", "tinyimagenet", "cifar10c"])
def test_images_spooled_on_the_disk_are_the_images_decoded(tmp_path, dataset):
    from formats import assert_same_result, make_cifar10c, make_image_folder, make_tinyimagenet_zip

    from fastpart.data.imageops import spooling
    from fastpart.data.readers import read_cifar10c, read_tinyimagenet

    if dataset == "imagefolder":
        source, expected = make_image_folder(tmp_path / "src", ["a", "b"], {"train": 3, "test": 2}, size=12)
        read = read_imagefolder
    elif dataset == "cifar10-tree":
        source, expected = make_image_folder(tmp_path / "src", CIFAR10_CLASS_NAMES, {"train": 1, "test": 1},
                                             archive="tar.gz")
        read = read_cifar10
    elif dataset == "tinyimagenet":
        source, expected = make_tinyimagenet_zip(tmp_path / "src")
        read = read_tinyimagenet
    else:
        expected, source, read = make_cifar10c(tmp_path / "src"), tmp_path / "src", read_cifar10c
    with spooling(tmp_path / "spool"):
        spooled = read(source, NO_OPTIONS)
    in_memory = read(source, NO_OPTIONS)  # without a spool, as before
    assert_same_result(spooled, in_memory)
    assert all(isinstance(split.images, np.memmap) for split in spooled.splits.values())  # not held in memory
    assert {k: v.labels.tolist() for k, v in in_memory.splits.items()} == \
        {k: v.labels.tolist() for k, v in expected.splits.items()}
    assert all(np.array_equal(in_memory.splits[k].images, v.images) for k, v in expected.splits.items())
