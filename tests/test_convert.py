"""`fastpart convert`: every format from tiny official-layout files, manifests, reuse, bad input, crashes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from formats import (
    make_cifar10_python,
    make_cifar10c,
    make_image_folder,
    make_svhn_mats,
    make_tinyimagenet_zip,
    truncate,
    write_random_bytes,
)

import fastpart.data.convert as convert_module
from fastpart.data import datasets
from fastpart.cli import main
from fastpart.data.datasets import ReadResult, SourceFile, file_checksum
from fastpart.loader import read_split



def run(*argv: str) -> int:
    return main(["convert", *map(str, argv)])


def assert_converted(out_dir: Path, expected: ReadResult, suffix: str = ".beton") -> dict:
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["class_names"] == list(expected.class_names)
    assert set(manifest["splits"]) == set(expected.splits)
    for name, split in expected.splits.items():
        arrays = read_split(out_dir / f"{name}{suffix}")
        np.testing.assert_array_equal(arrays.images, split.images)
        np.testing.assert_array_equal(arrays.labels, split.labels)
        np.testing.assert_array_equal(arrays.indices, np.arange(len(split.labels)))
        for key, values in split.extras.items():
            np.testing.assert_array_equal(arrays.extras[key], values)
        entry = manifest["splits"][name]
        assert entry["count"] == len(split.labels)
        assert entry["class_counts"] == np.bincount(split.labels, minlength=len(expected.class_names)).tolist()
        assert entry["sha256"] == file_checksum(out_dir / entry["file"], "sha256")
    h, w = next(iter(expected.splits.values())).images.shape[1:3]
    assert manifest["image_shape"] == [3, h, w]
    return manifest


@pytest.mark.requires_ffcv  # the default output format is .beton
def test_cifar10_official_archive(tmp_path):
    expected = make_cifar10_python(tmp_path / "src", n_train=50, n_test=20)
    source = tmp_path / "src" / "cifar-10-python.tar.gz"
    assert run("cifar10", "--source", source, "--out", tmp_path / "data") == 0
    manifest = assert_converted(tmp_path / "data" / "cifar10", expected)
    pixels = expected.splits["train"].images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(manifest["mean"], pixels.mean(0), atol=1e-6)
    np.testing.assert_allclose(manifest["std"], pixels.std(0), atol=1e-6)
    assert manifest["source"]["fingerprint"] == file_checksum(source, "sha256")
    assert manifest["fastpart_version"]


@pytest.mark.requires_ffcv  # the default output format is .beton
@pytest.mark.parametrize("archive", [None, "tar.gz", "zip"])
def test_imagefolder_tree_and_archives(tmp_path, archive):
    source, expected = make_image_folder(tmp_path / "src", ["cat", "dog", "emu"], {"train": 3, "test": 2}, size=16, archive=archive)
    assert run("imagefolder", "--source", source, "--out", tmp_path / "data", "--name", "pets") == 0
    assert_converted(tmp_path / "data" / "pets", expected)


@pytest.mark.requires_ffcv  # the default output format is .beton
def test_svhn_mats(tmp_path):
    expected = make_svhn_mats(tmp_path / "src", n_train=30, n_test=20)
    assert run("svhn", "--source", tmp_path / "src", "--out", tmp_path / "data") == 0
    assert_converted(tmp_path / "data" / "svhn", expected)
    assert expected.splits["train"].labels.min() == 0  # label 10 in the .mat became digit 0


@pytest.mark.requires_ffcv  # the default output format is .beton
def test_tinyimagenet_zip(tmp_path):
    source, expected = make_tinyimagenet_zip(tmp_path / "src", n_classes=3, n_train_per_class=4, n_val_per_class=2)
    assert run("tinyimagenet", "--source", source, "--out", tmp_path / "data") == 0
    assert_converted(tmp_path / "data" / "tinyimagenet", expected)


@pytest.mark.requires_ffcv  # the default output format is .beton
def test_cifar10c_one_file_per_corruption_with_severity(tmp_path):
    expected = make_cifar10c(tmp_path / "src", corruptions=("gaussian_noise", "fog"), n_per_severity=3)
    assert run("cifar10c", "--source", tmp_path / "src", "--out", tmp_path / "data") == 0
    out = tmp_path / "data" / "cifar10c"
    assert_converted(out, expected)
    assert sorted(p.name for p in out.glob("*.beton")) == ["fog.beton", "gaussian_noise.beton"]
    assert read_split(out / "fog.beton").extras["severity"].tolist() == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5]


@pytest.mark.requires_ffcv  # the default output format is .beton
def test_shapes_with_ground_truth_masks_and_options(tmp_path):
    assert run("shapes", "--n-train", 60, "--n-test", 20, "--seed", 3, "--out", tmp_path / "data") == 0
    from fastpart.data.shapes import generate

    manifest = assert_converted(tmp_path / "data" / "shapes", generate(60, 20, seed=3))
    assert manifest["options"] == {"n_train": 60, "n_test": 20, "seed": 3}
    assert manifest["splits"]["train"]["extras"]["mask"] == {"dtype": "uint8", "shape": [32, 32]}


def test_npz_format_reads_back_identically(tmp_path):
    expected = make_cifar10_python(tmp_path / "src", n_train=25, n_test=10)
    assert run("cifar10", "--source", tmp_path / "src" / "cifar-10-python.tar.gz", "--out", tmp_path / "data", "--format", "npz") == 0
    assert_converted(tmp_path / "data" / "cifar10", expected, suffix=".npz")


@pytest.mark.requires_ffcv  # the default output format is .beton
def test_reuse_force_and_changed_source(tmp_path, capsys):
    make_cifar10_python(tmp_path / "src", n_train=25, n_test=10)
    source = tmp_path / "src" / "cifar-10-python.tar.gz"
    out = tmp_path / "data"
    assert run("cifar10", "--source", source, "--out", out) == 0
    beton = out / "cifar10" / "train.beton"
    first = beton.stat().st_mtime_ns
    assert run("cifar10", "--source", source, "--out", out) == 0
    assert "up to date" in capsys.readouterr().out
    assert beton.stat().st_mtime_ns == first
    assert run("cifar10", "--source", source, "--out", out, "--force") == 0
    assert "converted" in capsys.readouterr().out and beton.stat().st_mtime_ns != first

    second = beton.stat().st_mtime_ns
    beton.write_bytes(beton.read_bytes()[:-10])  # a damaged output is not reused
    assert run("cifar10", "--source", source, "--out", out) == 0
    assert beton.stat().st_mtime_ns != second and "converted" in capsys.readouterr().out

    expected = make_cifar10_python(tmp_path / "src", n_train=25, n_test=10, seed=1)  # same name, new content
    assert run("cifar10", "--source", source, "--out", out) == 0
    assert "converted" in capsys.readouterr().out
    assert_converted(out / "cifar10", expected)


@pytest.mark.requires_ffcv  # the default output format is .beton
def test_generated_options_are_part_of_the_identity(tmp_path, capsys):
    out = tmp_path / "data"
    assert run("shapes", "--n-train", 30, "--n-test", 10, "--out", out) == 0
    assert run("shapes", "--n-train", 40, "--n-test", 10, "--out", out) == 0
    assert "converted" in capsys.readouterr().out.splitlines()[-1]
    assert json.loads((out / "shapes" / "manifest.json").read_text())["splits"]["train"]["count"] == 40


def assert_fails_cleanly(capsys, out: Path, *argv, match: str) -> None:
    assert run(*argv, "--out", out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err
    assert not out.exists() or not any(out.rglob("*.beton")), "nothing may be written on bad input"


def test_bad_inputs_give_one_line_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "data"
    make_cifar10_python(tmp_path / "src", n_train=25, n_test=10)
    good = tmp_path / "src" / "cifar-10-python.tar.gz"
    assert_fails_cleanly(capsys, out, "cifar10", "--source", tmp_path / "nope.tar.gz", match="source not found")
    assert_fails_cleanly(capsys, out, "cifar10", "--source", good, "--checksum", "sha256:" + "0" * 64, match="checksum mismatch")
    truncated = truncate(tmp_path / "src" / "cifar-10-python.tar.gz", 0.5)
    assert_fails_cleanly(capsys, out, "cifar10", "--source", truncated, match=truncated.name)
    corrupt = write_random_bytes(tmp_path / "junk" / "cifar-10-python.tar.gz")
    assert_fails_cleanly(capsys, out, "cifar10", "--source", corrupt, match="cifar-10-python.tar.gz")
    assert_fails_cleanly(capsys, out, "mnist", match="known datasets: cifar10, svhn")
    assert_fails_cleanly(capsys, out, "shapes", "--source", good, match="generated")


def test_wrong_array_shapes_are_refused(tmp_path, capsys):
    make_cifar10c(tmp_path / "src", corruptions=("fog",), n_per_severity=2)
    np.save(tmp_path / "src" / "CIFAR-10-C" / "fog.npy", np.zeros((10, 32, 32), np.uint8))
    assert_fails_cleanly(capsys, tmp_path / "data", "cifar10c", "--source", tmp_path / "src", match="fog.npy")


def test_missing_source_names_the_file_and_where_to_put_it(tmp_path, capsys):
    out = tmp_path / "data"
    assert_fails_cleanly(capsys, out, "cifar10", match="cifar-10-python.tar.gz")
    assert run("svhn", "--out", out) == 2
    err = capsys.readouterr().err
    assert "train_32x32.mat" in err and "test_32x32.mat" in err and str(out / "downloads") in err


@pytest.mark.requires_ffcv  # the default output format is .beton
def test_source_found_in_downloads_folder(tmp_path):
    out = tmp_path / "data"
    expected = make_cifar10_python(out / "downloads", n_train=25, n_test=10)
    assert run("cifar10", "--out", out) == 0
    assert_converted(out / "cifar10", expected)


def official(monkeypatch, name: str, files: list[Path]) -> None:
    """Pretend the given tiny files are the official ones (their checksums become the official ones)."""
    info = datasets.DATASETS[name]
    sources = tuple(
        SourceFile(s.filename, s.url, file_checksum(f, "sha256")) for s, f in zip(info.sources, files)
    )
    monkeypatch.setitem(datasets.DATASETS, name, datasets.DatasetInfo(**{**info.__dict__, "sources": sources}))


@pytest.mark.requires_ffcv  # the default output format is .beton
def test_download_from_a_mirror_verifies_checksums(tmp_path, monkeypatch, capsys):
    mirror = tmp_path / "mirror"
    expected = make_svhn_mats(mirror, n_train=10, n_test=5)
    out = tmp_path / "data"
    # the tiny files do not match the official checksums: refused, nothing kept
    assert run("svhn", "--download", "--mirror", mirror.as_uri(), "--out", out) == 2
    assert "checksum mismatch" in capsys.readouterr().err
    assert not list((out / "downloads").glob("*.mat")) and not (out / "svhn").exists()

    official(monkeypatch, "svhn", [mirror / "train_32x32.mat", mirror / "test_32x32.mat"])
    assert run("svhn", "--download", "--mirror", mirror.as_uri(), "--out", out) == 0
    assert sorted(p.name for p in (out / "downloads").iterdir()) == ["test_32x32.mat", "train_32x32.mat"]
    assert_converted(out / "svhn", expected)


def test_download_failure_is_one_line(tmp_path, capsys):
    assert run("cifar10", "--download", "--mirror", (tmp_path / "empty").as_uri(), "--out", tmp_path / "data") == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # progress lines come before it
    assert last.startswith("fastpart convert: error: download of") and "cifar-10-python.tar.gz" in last


@pytest.mark.requires_ffcv  # the default output format is .beton
def test_a_crash_mid_conversion_leaves_nothing_that_looks_finished(tmp_path, monkeypatch, capsys):
    """A --force conversion killed half-way leaves the conversion it was replacing exactly as it was (the new one
    is written beside it and swapped in only when complete) and nothing half-written."""
    make_cifar10_python(tmp_path / "src", n_train=25, n_test=10)
    source = tmp_path / "src" / "cifar-10-python.tar.gz"
    out = tmp_path / "data"
    assert run("cifar10", "--source", source, "--out", out) == 0
    folder = out / "cifar10"
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    real_write = convert_module.write_beton

    def crash_on_test(path, split, **kw):
        if path.name == "test.beton":
            raise KeyboardInterrupt  # killed half-way through the second split
        return real_write(path, split, **kw)

    monkeypatch.setattr(convert_module, "write_beton", crash_on_test)
    assert run("cifar10", "--source", source, "--out", out, "--force") == 130
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    assert not list(folder.glob(".*.tmp")) and not (out / ".cifar10.partial").exists()
    monkeypatch.setattr(convert_module, "write_beton", real_write)
    capsys.readouterr()
    assert run("cifar10", "--source", source, "--out", out) == 0
    assert "up to date" in capsys.readouterr().out  # the kept conversion is current


def test_a_fresh_output_folder_is_removed_when_writing_fails(tmp_path, monkeypatch):
    def fail(path, split, **kw):
        path.parent.joinpath("partial").write_text("x")
        raise OSError("disk full")

    monkeypatch.setattr(convert_module, "write_beton", fail)
    with pytest.raises(OSError):
        convert_module.convert(convert_module.ConvertConfig("shapes", n_train=20, n_test=10, out=str(tmp_path / "data")))
    assert not (tmp_path / "data" / "shapes").exists()


@pytest.mark.slow
def test_real_cifar10_jpeg_archive(real_cifar10):
    folder, seconds = real_cifar10  # converted once per test run (conftest)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["splits"]["train"]["count"] == 50_000 and manifest["splits"]["test"]["count"] == 10_000
    assert manifest["splits"]["train"]["class_counts"] == [5000] * 10
    assert manifest["splits"]["test"]["class_counts"] == [1000] * 10
    assert manifest["class_names"][:3] == ["airplane", "automobile", "bird"]
    assert seconds < 120, f"reading and converting took {seconds:.1f} s"
    np.testing.assert_allclose(manifest["mean"], [0.4913, 0.4821, 0.4465], atol=2e-4)
    np.testing.assert_allclose(manifest["std"], [0.2452, 0.2428, 0.2606], atol=2e-4)


def test_format_auto_writes_npz_without_ffcv_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(convert_module, "ffcv_installed", lambda: False)
    assert run("shapes", "--n-train", 20, "--n-test", 10, "--out", tmp_path) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "ffcv is not installed: .npz files" in line and line.startswith("shapes: converted")
    assert sorted(p.name for p in (tmp_path / "shapes").glob("*.*")) == ["manifest.json", "test.npz", "train.npz"]
    assert not (tmp_path / ".shapes.partial").exists()
    assert run("shapes", "--n-train", 20, "--n-test", 10, "--out", tmp_path) == 0  # reused, not rebuilt
    assert "up to date" in capsys.readouterr().out


@pytest.mark.requires_ffcv
def test_format_auto_writes_beton_with_ffcv_and_reuses_a_conversion_in_either_format(tmp_path, capsys):
    assert run("shapes", "--n-train", 20, "--n-test", 10, "--out", tmp_path / "a") == 0
    assert json.loads((tmp_path / "a" / "shapes" / "manifest.json").read_text())["format"] == "beton"
    assert "ffcv" not in capsys.readouterr().out
    assert run("shapes", "--n-train", 20, "--n-test", 10, "--out", tmp_path / "b", "--format", "npz") == 0
    capsys.readouterr()
    assert run("shapes", "--n-train", 20, "--n-test", 10, "--out", tmp_path / "b") == 0  # auto keeps the npz
    assert "up to date" in capsys.readouterr().out
    assert json.loads((tmp_path / "b" / "shapes" / "manifest.json").read_text())["format"] == "npz"
