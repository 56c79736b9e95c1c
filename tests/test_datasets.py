"""Dataset readers and registry: exact round trips from tiny official-format files, and clear errors on bad input."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import tarfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from formats import (
    CIFAR10_PYTHON_ARCHIVE,
    CIFAR10_PYTHON_FOLDER,
    CIFAR10C_ARCHIVE,
    CIFAR10C_FOLDER,
    SVHN_TEST,
    SVHN_TRAIN,
    TINYIMAGENET_ZIP,
    assert_same_result,
    cifar10_python_files,
    corrupt_middle,
    jpeg_bytes,
    make_cifar10_python,
    make_cifar10c,
    make_image_folder,
    make_svhn_mats,
    make_tinyimagenet_zip,
    npy_bytes,
    png_bytes,
    random_images,
    truncate,
    write_png,
    write_random_bytes,
)

from fastpart.data.datasets import (
    CIFAR10_CLASS_NAMES,
    DATASETS,
    DatasetInfo,
    ReadResult,
    SplitData,
    file_checksum,
    get_dataset,
)
from fastpart.data.readers import (
    read_cifar10,
    read_cifar10c,
    read_imagefolder,
    read_shapes,
    read_svhn,
    read_tinyimagenet,
)
from fastpart.errors import DatasetError

NO_OPTIONS: dict = {}


def read(name: str, source: Path | None, options: dict | None = None) -> ReadResult:
    return get_dataset(name).read(source, options or NO_OPTIONS)


@contextmanager
def raises_one_line(match: str) -> Iterator[pytest.ExceptionInfo]:
    """pytest.raises(DatasetError, match=match), and the message must be a single line."""
    with pytest.raises(DatasetError, match=match) as info:
        yield info
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


def test_registry_names_and_types():
    assert list(DATASETS) == ["cifar10", "svhn", "tinyimagenet", "cifar10c", "imagefolder", "shapes"]
    for name, info in DATASETS.items():
        assert isinstance(info, DatasetInfo) and info.name == name
        assert info.description and "\n" not in info.description
        assert callable(info.read)
        for source in info.sources:
            algorithm, _, digest = source.checksum.partition(":")
            assert algorithm in ("md5", "sha256") and len(digest) == {"md5": 32, "sha256": 64}[algorithm]
            assert source.url.endswith(source.filename)


def test_registry_paper_defaults():
    cifar, svhn, tiny = (get_dataset(n).defaults for n in ("cifar10", "svhn", "tinyimagenet"))
    assert (cifar.model, cifar.epochs, cifar.batch_size, cifar.lr, cifar.weight_decay) == ("resnet18_cifar", 80, 128, 0.01, 2e-4)
    assert cifar.alpha == pytest.approx(2 / 255) and cifar.augment and cifar.crop_padding == 4
    assert (svhn.model, svhn.batch_size, svhn.lr, svhn.weight_decay, svhn.augment) == ("resnet18_cifar", 128, 0.01, 3.5e-3, False)
    assert svhn.alpha == pytest.approx(1 / 255)
    assert (tiny.model, tiny.epochs, tiny.batch_size, tiny.lr, tiny.weight_decay) == ("wrn34_10", 80, 512, 0.02, 5e-4)
    assert tiny.alpha == pytest.approx(2 / 255) and tiny.augment and tiny.crop_padding == 4
    shapes = get_dataset("shapes").defaults  # a CPU-sized demo
    assert (shapes.model, shapes.epochs, shapes.batch_size, shapes.lr) == ("resnet18_cifar_w8", 10, 32, 0.02)
    assert get_dataset("imagefolder").defaults is None and get_dataset("cifar10c").defaults is None
    assert (get_dataset("tinyimagenet").num_classes, get_dataset("tinyimagenet").image_size) == (200, 64)
    assert (get_dataset("imagefolder").num_classes, get_dataset("imagefolder").image_size) == (None, None)


def test_registry_official_sources():
    sources = {s.filename: s.checksum for info in DATASETS.values() for s in info.sources}
    assert sources == {
        "cifar-10-python.tar.gz": "md5:c58f30108f718f92721af3b95e74349a",
        "train_32x32.mat": "md5:e26dedcc434d2e4c54c9b2d4a06d8373",
        "test_32x32.mat": "md5:eb5a983be6a315427106f1b164d9cef3",
        "tiny-imagenet-200.zip": "md5:90528d7ca1a48142e341f4ef8d21d0de",
        "CIFAR-10-C.tar": "md5:56bf5dcef84df0e2308c6dcbcbbd8499",
    }
    assert get_dataset("shapes").sources == () and get_dataset("imagefolder").sources == ()


def test_unknown_dataset_lists_known_names():
    with raises_one_line("unknown dataset 'mnist'") as error:
        get_dataset("mnist")
    for name in DATASETS:
        assert name in str(error.value)


def test_file_checksum_streams_md5_and_sha256(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, size=(3 << 20) + 17, dtype=np.uint8).tobytes()
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert file_checksum(path, "md5") == "md5:" + hashlib.md5(data).hexdigest()
    assert file_checksum(path, "sha256") == "sha256:" + hashlib.sha256(data).hexdigest()
    with raises_one_line("unknown checksum algorithm"):
        file_checksum(path, "crc32")
    with raises_one_line("cannot read"):
        file_checksum(tmp_path / "absent.bin", "md5")


@pytest.mark.parametrize("name", ["cifar10", "svhn", "tinyimagenet", "cifar10c", "imagefolder"])
def test_missing_source(tmp_path, name):
    with raises_one_line("no such file or folder") as error:
        read(name, tmp_path / "absent.tar.gz")
    assert "absent.tar.gz" in str(error.value)
    with raises_one_line("source file or folder is required"):
        read(name, None)


# ---------------------------------------------------------------------------------------------
# cifar10: official python archive
# ---------------------------------------------------------------------------------------------


def test_cifar10_python_archive_round_trip(tmp_path):
    expected = make_cifar10_python(tmp_path, n_train=53, n_test=7, seed=3)
    result = read_cifar10(tmp_path / CIFAR10_PYTHON_ARCHIVE, NO_OPTIONS)
    assert_same_result(result, expected)
    assert list(result.splits) == ["train", "test"]
    assert result.class_names == list(CIFAR10_CLASS_NAMES)


@pytest.mark.parametrize("subfolder", [True, False])
def test_cifar10_python_extracted_folder(tmp_path, subfolder):
    expected = make_cifar10_python(tmp_path, archive=False)
    source = tmp_path / CIFAR10_PYTHON_FOLDER if subfolder else tmp_path
    assert_same_result(read("cifar10", source), expected)


def test_cifar10_python_pixel_layout(tmp_path):
    """Rows of b"data" are CHW: the first 1024 bytes are the red plane."""
    expected = make_cifar10_python(tmp_path, n_train=5, n_test=1)
    test_image = read("cifar10", tmp_path / CIFAR10_PYTHON_ARCHIVE).splits["test"].images[0]
    with tarfile.open(tmp_path / CIFAR10_PYTHON_ARCHIVE) as archive:
        batch = pickle.load(archive.extractfile(f"{CIFAR10_PYTHON_FOLDER}/test_batch"), encoding="bytes")
    row = batch[b"data"][0]
    np.testing.assert_array_equal(test_image[..., 0].ravel(), row[:1024])
    np.testing.assert_array_equal(test_image[..., 2].ravel(), row[2048:])
    np.testing.assert_array_equal(test_image, expected.splits["test"].images[0])


def test_cifar10_python_truncated_archive(tmp_path):
    make_cifar10_python(tmp_path)
    source = truncate(tmp_path / CIFAR10_PYTHON_ARCHIVE, 0.5)
    with raises_one_line("truncated") as error:
        read("cifar10", source)
    assert str(source) in str(error.value)


def test_cifar10_corrupt_archive_random_bytes(tmp_path):
    source = write_random_bytes(tmp_path / CIFAR10_PYTHON_ARCHIVE)
    with raises_one_line("cannot read archive"):
        read("cifar10", source)


def test_cifar10_corrupt_archive_middle(tmp_path):
    make_cifar10_python(tmp_path)
    source = corrupt_middle(tmp_path / CIFAR10_PYTHON_ARCHIVE)
    with pytest.raises(DatasetError):
        read("cifar10", source)


def test_cifar10_missing_batch_named(tmp_path):
    make_cifar10_python(tmp_path, archive=False)
    (tmp_path / CIFAR10_PYTHON_FOLDER / "data_batch_3").unlink()
    with raises_one_line("missing data_batch_3"):
        read("cifar10", tmp_path)


def write_cifar_folder(folder: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


@pytest.mark.parametrize(
    "batch, match",
    [
        ({b"data": np.zeros((4, 3000), np.uint8), b"labels": [0] * 4}, r"'data' must be uint8 \(N, 3072\)"),
        ({b"data": np.zeros((4, 3072), np.float32), b"labels": [0] * 4}, r"'data' must be uint8"),
        ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0] * 3}, "3 labels for 4 images"),
        ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 10]}, "label 10 out of range 0..9"),
        ({b"labels": [0]}, "missing key 'data'"),
        ([1, 2, 3], "expected a pickled dict"),
    ],
)
def test_cifar10_bad_batch_contents(tmp_path, batch, match):
    files, _ = cifar10_python_files()
    files[f"{CIFAR10_PYTHON_FOLDER}/data_batch_2"] = pickle.dumps(batch, protocol=2)
    write_cifar_folder(tmp_path, files)
    with raises_one_line(match) as error:
        read("cifar10", tmp_path)
    assert "data_batch_2" in str(error.value)


def test_cifar10_corrupt_pickle(tmp_path):
    files, _ = cifar10_python_files()
    files[f"{CIFAR10_PYTHON_FOLDER}/test_batch"] = files[f"{CIFAR10_PYTHON_FOLDER}/test_batch"][:100]
    write_cifar_folder(tmp_path, files)
    with raises_one_line("test_batch: not a valid CIFAR pickle"):
        read("cifar10", tmp_path)


def test_cifar10_pickle_with_foreign_objects_is_refused(tmp_path):
    files, _ = cifar10_python_files()
    files[f"{CIFAR10_PYTHON_FOLDER}/batches.meta"] = pickle.dumps({b"label_names": Path("x")})
    write_cifar_folder(tmp_path, files)
    with raises_one_line("refusing to load"):
        read("cifar10", tmp_path)


# ---------------------------------------------------------------------------------------------
# cifar10: image trees
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("archive", [None, "tar.gz", "zip"])
def test_cifar10_image_tree_round_trip(tmp_path, archive):
    source, expected = make_image_folder(
        tmp_path, list(reversed(CIFAR10_CLASS_NAMES)), {"train": 3, "test": 2}, archive=archive
    )
    result = read("cifar10", source)
    assert list(result.splits) == ["train", "test"]
    assert_same_result(result, ReadResult({"train": expected.splits["train"], "test": expected.splits["test"]}, expected.class_names))


def test_cifar10_image_tree_wrong_class_names(tmp_path):
    names = list(CIFAR10_CLASS_NAMES[:9]) + ["lorry"]
    source, _ = make_image_folder(tmp_path, names, {"train": 1, "test": 1})
    with raises_one_line("are not the 10 CIFAR-10 classes"):
        read("cifar10", source)


def test_cifar10_image_tree_missing_split(tmp_path):
    source, _ = make_image_folder(tmp_path, CIFAR10_CLASS_NAMES, {"train": 1})
    with raises_one_line("expected split folders train and test"):
        read("cifar10", source)


def test_cifar10_image_tree_wrong_size(tmp_path):
    source, _ = make_image_folder(tmp_path, CIFAR10_CLASS_NAMES, {"train": 1, "test": 1}, size=16)
    with raises_one_line("must be 32x32"):
        read("cifar10", source)


def test_cifar10_empty_folder(tmp_path):
    with raises_one_line("found neither cifar-10-batches-py"):
        read("cifar10", tmp_path)


@pytest.mark.slow
def test_cifar10_real_jpeg_archive(real_cifar10):
    """The reader's output as convert wrote it (the archive is read once per test run: conftest)."""
    from fastpart.data.splitfiles import read_split

    folder, _ = real_cifar10
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["class_names"] == list(CIFAR10_CLASS_NAMES)
    assert list(manifest["splits"]) == ["train", "test"]
    train, test = read_split(folder / "train.npz"), read_split(folder / "test.npz")
    assert train.images.shape == (50000, 32, 32, 3) and test.images.shape == (10000, 32, 32, 3)
    assert np.bincount(train.labels).tolist() == [5000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert np.all(np.diff(train.labels) >= 0) and np.all(np.diff(test.labels) >= 0)  # ordered by class
    # the README's training-set mean
    np.testing.assert_allclose(train.images.reshape(-1, 3).mean(0) / 255, [0.4913, 0.4821, 0.4465], atol=2e-4)


# ---------------------------------------------------------------------------------------------
# imagefolder
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("archive", [None, "tar.gz", "zip"])
def test_imagefolder_round_trip(tmp_path, archive):
    source, expected = make_image_folder(tmp_path, ["zebra", "ant", "moth"], {"train": 3, "val": 1, "test": 2}, size=24, archive=archive)
    result = read_imagefolder(source, NO_OPTIONS)
    assert list(result.splits) == ["test", "train", "val"]
    assert result.class_names == ["ant", "moth", "zebra"]
    assert_same_result(result, expected)


def test_imagefolder_class_union_across_splits(tmp_path):
    """A class present in one split only still gets one label for all splits."""
    rng = np.random.default_rng(0)
    pixels = random_images(rng, 3, 8)
    write_png(tmp_path / "train" / "b" / "1.png", pixels[0])
    write_png(tmp_path / "train" / "c" / "1.png", pixels[1])
    write_png(tmp_path / "test" / "a" / "1.png", pixels[2])
    result = read_imagefolder(tmp_path, NO_OPTIONS)
    assert result.class_names == ["a", "b", "c"]
    assert result.splits["train"].labels.tolist() == [1, 2] and result.splits["test"].labels.tolist() == [0]


def test_imagefolder_sorts_files_and_ignores_other_files(tmp_path):
    rng = np.random.default_rng(1)
    pixels = random_images(rng, 3, 8)
    for name, image in zip(["b.PNG", "a.png", "c.bmp"], pixels):
        path = tmp_path / "train" / "cls" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path, format="BMP" if name.endswith("bmp") else "PNG")
    (tmp_path / "README.md").write_text("notes")
    (tmp_path / "train" / "cls" / "labels.txt").write_text("x")
    write_png(tmp_path / "train" / ".hidden" / "x.png", pixels[0])
    result = read_imagefolder(tmp_path, NO_OPTIONS)
    np.testing.assert_array_equal(result.splits["train"].images, pixels[[1, 0, 2]])


def test_imagefolder_wrapped_in_one_folder(tmp_path):
    with tarfile.open(tmp_path / "wrapped.tar", "w") as archive:
        for split in ("train", "test"):
            data = png_bytes(np.full((4, 4, 3), 7, np.uint8))
            info = tarfile.TarInfo(f"mydata/{split}/cls/0.png")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    result = read_imagefolder(tmp_path / "wrapped.tar", NO_OPTIONS)
    assert list(result.splits) == ["test", "train"] and result.class_names == ["cls"]


def test_imagefolder_grayscale_and_rgba_become_rgb(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    Image.fromarray(np.full((4, 4), 9, np.uint8), mode="L").save(tmp_path / "train" / "a" / "gray.png")
    Image.fromarray(np.full((4, 4, 4), 200, np.uint8), mode="RGBA").save(tmp_path / "train" / "a" / "rgba.png")
    images = read_imagefolder(tmp_path, NO_OPTIONS).splits["train"].images
    assert images.shape == (2, 4, 4, 3)
    assert images[0].tolist() == np.full((4, 4, 3), 9).tolist() and images[1].max() == 200


def test_imagefolder_mixed_sizes_names_file_and_size(tmp_path):
    source, _ = make_image_folder(tmp_path, ["a", "b"], {"train": 2})
    write_png(source / "train" / "b" / "0001.png", np.zeros((20, 30, 3), np.uint8))
    with raises_one_line(r"train/b/0001.png: image is 30x20, expected 32x32"):
        read_imagefolder(source, NO_OPTIONS)


def test_imagefolder_wrong_depth(tmp_path):
    write_png(tmp_path / "train" / "x.png", np.zeros((4, 4, 3), np.uint8))
    with raises_one_line(r"train/x.png: expected images at <split>/<class>/<file>"):
        read_imagefolder(tmp_path, NO_OPTIONS)


def test_imagefolder_no_images(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with raises_one_line("no images"):
        read_imagefolder(tmp_path, NO_OPTIONS)


def test_imagefolder_corrupt_image_named(tmp_path):
    source, _ = make_image_folder(tmp_path, ["a"], {"train": 2})
    truncate(source / "train" / "a" / "0001.png", 0.5)
    with raises_one_line(r"train/a/0001.png: cannot decode image"):
        read_imagefolder(source, NO_OPTIONS)


@pytest.mark.parametrize("archive", ["tar.gz", "zip"])
def test_imagefolder_truncated_archive(tmp_path, archive):
    source, _ = make_image_folder(tmp_path, ["a", "b"], {"train": 4}, archive=archive)
    truncate(source, 0.6)
    with raises_one_line("cannot read archive"):
        read_imagefolder(source, NO_OPTIONS)


@pytest.mark.parametrize("name", ["data.zip", "data.tar.gz", "data.tgz", "data.tar", "data.bin"])
def test_imagefolder_random_bytes_archive(tmp_path, name):
    source = write_random_bytes(tmp_path / name)
    with raises_one_line("cannot read archive"):
        read_imagefolder(source, NO_OPTIONS)


# ---------------------------------------------------------------------------------------------
# svhn
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pick", ["folder", SVHN_TRAIN, SVHN_TEST])
def test_svhn_round_trip(tmp_path, pick):
    expected = make_svhn_mats(tmp_path, n_train=11, n_test=6, seed=2)
    source = tmp_path if pick == "folder" else tmp_path / pick
    result = read_svhn(source, NO_OPTIONS)
    assert_same_result(result, expected)
    assert result.class_names == [str(d) for d in range(10)]
    assert 0 in result.splits["train"].labels and result.splits["train"].labels.max() <= 9


def test_svhn_missing_file_named(tmp_path):
    make_svhn_mats(tmp_path)
    (tmp_path / SVHN_TEST).unlink()
    with raises_one_line(f"missing {SVHN_TEST}"):
        read("svhn", tmp_path)


def test_svhn_truncated_mat(tmp_path):
    make_svhn_mats(tmp_path)
    truncate(tmp_path / SVHN_TRAIN, 0.5)
    with raises_one_line(f"{SVHN_TRAIN}: cannot read MATLAB file"):
        read("svhn", tmp_path)


def test_svhn_random_bytes(tmp_path):
    make_svhn_mats(tmp_path)
    write_random_bytes(tmp_path / SVHN_TEST)
    with raises_one_line(f"{SVHN_TEST}: cannot read MATLAB file"):
        read("svhn", tmp_path)


@pytest.mark.parametrize(
    "X, y, match",
    [
        (np.zeros((32, 32, 3, 4), np.float64), np.ones((4, 1)), r"X must be uint8 \(32, 32, 3, N\)"),
        (np.zeros((28, 28, 3, 4), np.uint8), np.ones((4, 1)), r"X must be uint8 \(32, 32, 3, N\)"),
        (np.zeros((32, 32, 3, 4), np.uint8), np.ones((3, 1)), r"y must have shape \(4, 1\)"),
        (np.zeros((32, 32, 3, 4), np.uint8), np.array([[1], [2], [0], [3]]), "label 0 out of range 1..10"),
        (np.zeros((32, 32, 3, 4), np.uint8), np.array([[1], [2], [11], [3]]), "label 11 out of range 1..10"),
        (np.zeros((32, 32, 3, 2), np.uint8), np.array([[1.5], [2]]), "whole numbers"),
    ],
)
def test_svhn_wrong_arrays(tmp_path, X, y, match):
    from scipy.io import savemat

    make_svhn_mats(tmp_path)
    savemat(str(tmp_path / SVHN_TRAIN), {"X": X, "y": y})
    with raises_one_line(match) as error:
        read("svhn", tmp_path)
    assert SVHN_TRAIN in str(error.value)


def test_svhn_missing_variable(tmp_path):
    from scipy.io import savemat

    make_svhn_mats(tmp_path)
    savemat(str(tmp_path / SVHN_TEST), {"X": np.zeros((32, 32, 3, 1), np.uint8)})
    with raises_one_line("missing variable 'y'"):
        read("svhn", tmp_path)


# ---------------------------------------------------------------------------------------------
# tinyimagenet
# ---------------------------------------------------------------------------------------------


def test_tinyimagenet_zip_round_trip(tmp_path):
    source, expected = make_tinyimagenet_zip(tmp_path, n_classes=4, n_train_per_class=12, n_val_per_class=3, seed=5)
    result = read_tinyimagenet(source, NO_OPTIONS)
    assert list(result.splits) == ["train", "test"]
    assert_same_result(result, expected)
    assert result.splits["train"].images.shape == (48, 64, 64, 3)
    assert result.class_names[0].startswith("class ")


def test_tinyimagenet_extracted_folder_and_no_words(tmp_path):
    source, expected = make_tinyimagenet_zip(tmp_path)
    with zipfile.ZipFile(source) as archive:
        archive.extractall(tmp_path / "extracted")
    root = tmp_path / "extracted" / "tiny-imagenet-200"
    wnids = sorted((root / "wnids.txt").read_text().split())
    (root / "words.txt").unlink()
    result = read("tinyimagenet", root)
    assert_same_result(result, ReadResult(expected.splits, wnids))


def test_tinyimagenet_grayscale_jpegs_become_rgb(tmp_path):
    source, expected = make_tinyimagenet_zip(tmp_path, grayscale_some=True)
    images = read("tinyimagenet", source).splits["train"].images
    gray = [np.array_equal(im[..., 0], im[..., 1]) and np.array_equal(im[..., 1], im[..., 2]) for im in images]
    assert any(gray) and not all(gray)


def rewrite_zip(source: Path, edit) -> None:
    """Rewrites a zip with edit({name: bytes}) applied."""
    with zipfile.ZipFile(source) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    edit(files)
    with zipfile.ZipFile(source, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)


def test_tinyimagenet_missing_annotations(tmp_path):
    source, _ = make_tinyimagenet_zip(tmp_path)
    rewrite_zip(source, lambda files: files.pop("tiny-imagenet-200/val/val_annotations.txt"))
    with raises_one_line("missing val/val_annotations.txt"):
        read("tinyimagenet", source)


def test_tinyimagenet_missing_wnids(tmp_path):
    source, _ = make_tinyimagenet_zip(tmp_path)
    rewrite_zip(source, lambda files: files.pop("tiny-imagenet-200/wnids.txt"))
    with raises_one_line("missing wnids.txt"):
        read("tinyimagenet", source)


def test_tinyimagenet_annotated_image_missing(tmp_path):
    source, _ = make_tinyimagenet_zip(tmp_path)
    rewrite_zip(source, lambda files: files.pop("tiny-imagenet-200/val/images/val_1.JPEG"))
    with raises_one_line("annotated image val/images/val_1.JPEG is missing"):
        read("tinyimagenet", source)


def test_tinyimagenet_unknown_wnid_in_annotations(tmp_path):
    source, _ = make_tinyimagenet_zip(tmp_path)

    def edit(files):
        key = "tiny-imagenet-200/val/val_annotations.txt"
        lines = files[key].decode().splitlines()
        lines[0] = "val_0.JPEG\tn99999999\t0\t0\t1\t1"
        files[key] = "\n".join(lines).encode()

    rewrite_zip(source, edit)
    with raises_one_line("class n99999999 of val_0.JPEG is not in wnids.txt"):
        read("tinyimagenet", source)


def test_tinyimagenet_wrong_image_size(tmp_path):
    source, _ = make_tinyimagenet_zip(tmp_path)

    def edit(files):
        name = next(n for n in files if "/train/" in n and n.endswith(".JPEG"))
        files[name] = jpeg_bytes(np.zeros((32, 32, 3), np.uint8))

    rewrite_zip(source, edit)
    with raises_one_line("image is 32x32, expected 64x64"):
        read("tinyimagenet", source)


def test_tinyimagenet_truncated_and_random_zip(tmp_path):
    source, _ = make_tinyimagenet_zip(tmp_path)
    truncate(source, 0.7)
    with raises_one_line(f"{TINYIMAGENET_ZIP}: cannot read archive"):
        read("tinyimagenet", source)
    write_random_bytes(source)
    with raises_one_line(f"{TINYIMAGENET_ZIP}: cannot read archive"):
        read("tinyimagenet", source)


# ---------------------------------------------------------------------------------------------
# cifar10c
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("archive", [False, True])
def test_cifar10c_round_trip(tmp_path, archive):
    expected = make_cifar10c(tmp_path, corruptions=("fog", "gaussian_noise", "saturate"), n_per_severity=3, archive=archive)
    source = tmp_path / CIFAR10C_ARCHIVE if archive else tmp_path / CIFAR10C_FOLDER
    result = read_cifar10c(source, NO_OPTIONS)
    assert list(result.splits) == ["gaussian_noise", "fog", "saturate"]
    assert result.class_names == list(CIFAR10_CLASS_NAMES)
    assert_same_result(result, expected)
    assert result.splits["fog"].extras["severity"].tolist() == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5]
    assert result.splits["fog"].extras["severity"].dtype == np.int64


def test_cifar10c_unknown_corruption(tmp_path):
    make_cifar10c(tmp_path)
    (tmp_path / CIFAR10C_FOLDER / "sepia.npy").write_bytes(npy_bytes(np.zeros((20, 32, 32, 3), np.uint8)))
    with raises_one_line("unknown corruption 'sepia'"):
        read("cifar10c", tmp_path)


def test_cifar10c_missing_labels(tmp_path):
    make_cifar10c(tmp_path)
    (tmp_path / CIFAR10C_FOLDER / "labels.npy").unlink()
    with raises_one_line("missing labels.npy"):
        read("cifar10c", tmp_path)


def test_cifar10c_no_corruptions(tmp_path):
    make_cifar10c(tmp_path, corruptions=())
    with raises_one_line("no <corruption>.npy files"):
        read("cifar10c", tmp_path)


@pytest.mark.parametrize(
    "name, array, match",
    [
        ("fog.npy", np.zeros((20, 32, 32), np.uint8), r"expected uint8 \(20, 32, 32, 3\)"),
        ("fog.npy", np.zeros((20, 32, 32, 3), np.float32), r"expected uint8 \(20, 32, 32, 3\)"),
        ("fog.npy", np.zeros((15, 32, 32, 3), np.uint8), r"expected uint8 \(20, 32, 32, 3\)"),
        ("labels.npy", np.zeros(18, np.uint8), "positive multiple of 5"),
        ("labels.npy", np.full(20, 10, np.uint8), "label 10 out of range 0..9"),
        ("labels.npy", np.zeros((20, 1), np.uint8), "1-D integer array"),
    ],
)
def test_cifar10c_wrong_arrays(tmp_path, name, array, match):
    make_cifar10c(tmp_path, n_per_severity=4)
    (tmp_path / CIFAR10C_FOLDER / name).write_bytes(npy_bytes(array))
    with raises_one_line(match):
        read("cifar10c", tmp_path)


def test_cifar10c_corrupt_npy(tmp_path):
    make_cifar10c(tmp_path)
    truncate(tmp_path / CIFAR10C_FOLDER / "fog.npy", 0.5)
    with raises_one_line("fog.npy: not a valid .npy file"):
        read("cifar10c", tmp_path)


def test_cifar10c_truncated_tar(tmp_path):
    make_cifar10c(tmp_path, archive=True)
    truncate(tmp_path / CIFAR10C_ARCHIVE, 0.5)
    with raises_one_line("cannot read archive"):
        read("cifar10c", tmp_path / CIFAR10C_ARCHIVE)


# ---------------------------------------------------------------------------------------------
# shapes
# ---------------------------------------------------------------------------------------------


def test_shapes_reads_generator():
    pytest.importorskip("fastpart.data.shapes")
    from fastpart.data import shapes

    result = read("shapes", None, {"n_train": 20, "n_test": 10, "seed": 1})
    expected = shapes.generate(n_train=20, n_test=10, seed=1)
    assert_same_result(result, expected)
    assert result.class_names == list(shapes.CLASS_NAMES)


def test_shapes_rejects_source_and_unknown_options(tmp_path):
    with raises_one_line("takes no source"):
        read_shapes(tmp_path, NO_OPTIONS)
    with raises_one_line("unknown option 'colour'"):
        read_shapes(None, {"colour": 1})


def test_split_data_checks_shapes():
    with pytest.raises(DatasetError):
        SplitData(np.zeros((2, 4, 4, 3), np.uint8), np.zeros(3, np.int64))


def test_tar_gz_with_bad_crc_is_rejected(tmp_path):
    """tarfile alone never checks the gzip CRC; the reader does, by reading the stream to its end."""
    make_cifar10_python(tmp_path)
    path = tmp_path / CIFAR10_PYTHON_ARCHIVE
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # first byte of the CRC-32 trailer
    path.write_bytes(bytes(data))
    with raises_one_line("CRC check failed"):
        read("cifar10", path)
