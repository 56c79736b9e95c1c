"""Generated CIFAR-10-C: every corruption and severity, seeds, severity order, known answers, the CLI."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
from formats import make_cifar10_python

from fastpart.cli import main
from fastpart.data.corruptions import CORRUPTIONS, SEVERITIES, corrupt, generate_cifar10c
from fastpart.data.datasets import CIFAR10C_CORRUPTIONS
from fastpart.errors import DatasetError, FastpartError
from fastpart.loader import read_split, split_path
from fastpart.data.shapes import generate_split

# Published parameters that grow in strength with severity, so the change they make should grow too.
STRICTLY_STRONGER = (
    "gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "defocus_blur", "gaussian_blur",
    "zoom_blur", "fog", "brightness", "contrast", "pixelate", "jpeg_compression",
)
# Not ordered by strength in the published parameters: saturate first desaturates (1-2), then
# oversaturates (3-5); elastic_transform's random affine shrinks while its elastic field grows.
UNORDERED = ("saturate", "elastic_transform")


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return generate_split(48, seed=5)[0]


def mean_change(corrupted: np.ndarray, clean: np.ndarray) -> float:
    return float(np.abs(corrupted.astype(np.int64) - clean).mean())


# ---------------------------------------------------------------------------------------------
# The registry and corrupt()
# ---------------------------------------------------------------------------------------------


def test_registry_holds_the_official_corruptions_in_order():
    assert tuple(CORRUPTIONS) == CIFAR10C_CORRUPTIONS
    for name, corruption in CORRUPTIONS.items():
        assert corruption.name == name
        assert len(corruption.severities) == len(SEVERITIES) == 5
        assert all(isinstance(params, tuple) for params in corruption.severities)
    assert [n for n, c in CORRUPTIONS.items() if c.approximated] == ["motion_blur", "snow", "frost"]


def test_every_corruption_and_severity_gives_uint8_images_of_the_same_shape(images):
    clean = images[:16]
    before = clean.copy()
    for name in CORRUPTIONS:
        for severity in SEVERITIES:
            out = corrupt(clean, name, severity, seed=0)
            assert out.dtype == np.uint8 and out.shape == clean.shape, (name, severity)
            assert mean_change(out, clean) > 0, (name, severity)
    np.testing.assert_array_equal(clean, before)  # the input is never modified


def test_same_seed_same_bytes_other_seed_differs_for_random_corruptions(images):
    clean = images[:16]
    for name, corruption in CORRUPTIONS.items():
        first = corrupt(clean, name, 3, seed=7)
        np.testing.assert_array_equal(first, corrupt(clean, name, 3, seed=7), err_msg=name)
        other = corrupt(clean, name, 3, seed=8)
        assert np.array_equal(first, other) != corruption.random, name


def test_each_chunk_of_images_has_its_own_random_stream(images, monkeypatch):
    import fastpart.data.corruptions as corruptions

    whole = corrupt(images, "gaussian_noise", 2, seed=1)
    monkeypatch.setattr(corruptions, "CHUNK", 16)
    chunked = corrupt(images, "gaussian_noise", 2, seed=1)
    assert not np.array_equal(whole, chunked)  # three streams now
    np.testing.assert_array_equal(chunked, corrupt(images, "gaussian_noise", 2, seed=1))


def test_change_grows_with_severity(images):
    changes = {
        name: [mean_change(corrupt(images, name, s, seed=0), images) for s in SEVERITIES] for name in CORRUPTIONS
    }
    for name in STRICTLY_STRONGER:
        assert all(np.diff(changes[name]) > 0), (name, changes[name])
    ordered = [name for name in CORRUPTIONS if name not in UNORDERED]
    for name in ordered:
        assert changes[name][4] > changes[name][0], (name, changes[name])
    average = np.mean([changes[name] for name in ordered], axis=0)
    assert all(np.diff(average) > 0), average


def test_bad_arguments_are_one_clear_error(images):
    with pytest.raises(FastpartError, match="unknown corruption 'rain'; known: gaussian_noise"):
        corrupt(images, "rain", 1, seed=0)
    for severity in (0, 6, 2.0, True, None):
        with pytest.raises(FastpartError, match="severity must be an integer from 1 to 5"):
            corrupt(images, "fog", severity, seed=0)
    with pytest.raises(FastpartError, match="seed must be a non-negative integer"):
        corrupt(images, "fog", 1, seed=-1)
    for bad in (images[..., 0], images.astype(np.float32), np.zeros((2, 64, 64, 3), np.uint8), images.tolist()):
        with pytest.raises(DatasetError, match=r"uint8 images \(N, 32, 32, 3\)"):
            corrupt(bad, "fog", 1, seed=0)


# ---------------------------------------------------------------------------------------------
# Known answers: the deterministic colour corruptions, computed by hand with exact fractions
# ---------------------------------------------------------------------------------------------

QUADRANTS = ((201, 99, 52), (0, 0, 0), (128, 128, 128), (251, 101, 47))


def quadrant_image() -> np.ndarray:
    image = np.zeros((1, 32, 32, 3), np.uint8)
    for k, colour in enumerate(QUADRANTS):
        image[0, 16 * (k // 2) : 16 * (k // 2 + 1), 16 * (k % 2) : 16 * (k % 2 + 1)] = colour
    return image


def assert_truncated(out: np.ndarray, exact: list[list[Fraction]]) -> None:
    """Each quadrant's colour is the exact value clipped to [0, 255] and truncated, as np.uint8 does.

    Where the exact value is a whole number, floating point may land just below it: one less is accepted.
    """
    for k, values in enumerate(exact):
        got = out[0, 16 * (k // 2), 16 * (k % 2)]
        assert (out[0, 16 * (k // 2) : 16 * (k // 2 + 1), 16 * (k % 2) : 16 * (k % 2 + 1)] == got).all()
        for channel, value in enumerate(values):
            value = min(max(value, Fraction(0)), Fraction(255))
            expected = int(value)  # floor for values >= 0
            allowed = {expected, expected - 1} if value == expected else {expected}
            assert int(got[channel]) in allowed, (QUADRANTS[k], channel, float(value), got)


def fraction(x: float) -> Fraction:
    return Fraction(str(x))


def test_brightness_known_answer():
    image = quadrant_image()
    for severity, (shift,) in enumerate(CORRUPTIONS["brightness"].severities, start=1):
        exact = []
        for colour in QUADRANTS:
            v = Fraction(max(colour), 255)
            if v == 0:  # black has no hue: all channels become the shifted value
                exact.append([fraction(shift) * 255] * 3)
            else:  # same hue and saturation, value raised: every channel scales by v' / v
                raised = min(v + fraction(shift), Fraction(1))
                exact.append([c * raised / v for c in colour])
        assert_truncated(corrupt(image, "brightness", severity, seed=0), exact)


def test_contrast_known_answer():
    image = quadrant_image()
    means = [Fraction(sum(c[ch] for c in QUADRANTS), 4) for ch in range(3)]  # per image and channel
    for severity, (scale,) in enumerate(CORRUPTIONS["contrast"].severities, start=1):
        exact = [[(c[ch] - means[ch]) * fraction(scale) + means[ch] for ch in range(3)] for c in QUADRANTS]
        assert_truncated(corrupt(image, "contrast", severity, seed=0), exact)


def test_saturate_known_answer():
    image = quadrant_image()
    for severity, (scale, shift) in enumerate(CORRUPTIONS["saturate"].severities, start=1):
        exact = []
        for colour in QUADRANTS:
            v = Fraction(max(colour))
            s = (v - min(colour)) / v if v else Fraction(0)
            s_new = min(max(s * fraction(scale) + fraction(shift), Fraction(0)), Fraction(1))
            if s == 0:  # grey has hue 0 (red): red stays at v, green and blue drop to v (1 - s')
                exact.append([v, v * (1 - s_new), v * (1 - s_new)])
            else:  # same hue and value: each channel's distance below v scales by s' / s
                exact.append([v - (v - c) * s_new / s for c in colour])
        assert_truncated(corrupt(image, "saturate", severity, seed=0), exact)


# ---------------------------------------------------------------------------------------------
# generate_cifar10c: the official reader's layout
# ---------------------------------------------------------------------------------------------


def test_generate_cifar10c_layout(images):
    clean, labels = images[:8], np.arange(8) % 10
    splits = generate_cifar10c(clean, labels, seed=3, names=["fog", "contrast"])
    assert list(splits) == ["fog", "contrast"]
    for name, split in splits.items():
        assert split.images.shape == (40, 32, 32, 3) and split.images.dtype == np.uint8
        np.testing.assert_array_equal(split.labels, np.tile(labels, 5))
        assert split.labels.dtype == np.int64
        np.testing.assert_array_equal(split.extras["severity"], np.repeat(np.arange(1, 6), 8))
        assert split.extras["severity"].dtype == np.int64
        for s in SEVERITIES:
            np.testing.assert_array_equal(split.images[8 * (s - 1) : 8 * s], corrupt(clean, name, s, seed=3))
    everything = generate_cifar10c(clean[:2], labels[:2], seed=3)
    assert tuple(everything) == CIFAR10C_CORRUPTIONS
    np.testing.assert_array_equal(everything["fog"].images, generate_cifar10c(clean[:2], labels[:2], 3, ["fog"])["fog"].images)
    two = generate_cifar10c(clean, labels, seed=3, names=["fog"], severities=(5, 2))["fog"]
    np.testing.assert_array_equal(two.extras["severity"], [5] * 8 + [2] * 8)
    np.testing.assert_array_equal(two.images[8:], splits["fog"].images[8:16])
    with pytest.raises(DatasetError, match="labels must be integers"):
        generate_cifar10c(clean, labels[:3], seed=0)
    with pytest.raises(FastpartError, match="unknown corruption"):
        generate_cifar10c(clean, labels, seed=0, names=["fog", "hail"])


# ---------------------------------------------------------------------------------------------
# fastpart convert cifar10c --generate-from cifar10
# ---------------------------------------------------------------------------------------------


def convert(*argv) -> int:
    return main(["convert", *map(str, argv)])


@pytest.mark.requires_ffcv
def test_cli_generates_cifar10c_from_converted_cifar10(tmp_path, capsys):
    source_format, out_format = "beton", "npz"  # .beton written and read back: next test
    expected = make_cifar10_python(tmp_path / "src", n_train=10, n_test=12)
    data = tmp_path / "data"
    assert convert("cifar10", "--source", tmp_path / "src" / "cifar-10-python.tar.gz", "--out", data,
                   "--format", source_format) == 0
    n = 6
    args = ("cifar10c", "--generate-from", "cifar10", "--out", data, "--n-test", n, "--seed", 4, "--format", out_format)
    assert convert(*args) == 0
    assert "generated from cifar10 test with seed 4, not the official files" in capsys.readouterr().out

    out = data / "cifar10c"
    manifest = json.loads((out / "manifest.json").read_text())
    source_manifest = json.loads((data / "cifar10" / "manifest.json").read_text())
    assert manifest["generated"] is True and manifest["official"] is False
    assert manifest["source"]["official"] is False
    assert manifest["generated_from"] == {
        "dataset": "cifar10", "name": "cifar10", "split": "test", "file": f"test.{source_format}",
        "sha256": source_manifest["splits"]["test"]["sha256"], "count": n,
    }
    assert manifest["seed"] == 4 and manifest["options"] == {"n_test": n, "seed": 4}
    assert manifest["approximated"] == ["motion_blur", "snow", "frost"]
    assert manifest["class_names"] == source_manifest["class_names"]
    assert list(manifest["splits"]) == list(CIFAR10C_CORRUPTIONS)
    assert sorted(p.name for p in out.glob(f"*.{out_format}")) == sorted(f"{c}.{out_format}" for c in CIFAR10C_CORRUPTIONS)

    test = expected.splits["test"]
    reference = generate_cifar10c(test.images[:n], test.labels[:n], seed=4, names=["glass_blur", "saturate"])
    for name in CIFAR10C_CORRUPTIONS:
        assert manifest["splits"][name]["count"] == 5 * n
        assert manifest["splits"][name]["extras"] == {"severity": {"dtype": "int64", "shape": []}}
        arrays = read_split(split_path(data, "cifar10c", name))
        np.testing.assert_array_equal(arrays.labels, np.tile(test.labels[:n], 5))
        np.testing.assert_array_equal(arrays.extras["severity"], np.repeat(np.arange(1, 6), n))
        if name in reference:
            np.testing.assert_array_equal(arrays.images, reference[name].images)

    files = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    assert convert(*args) == 0  # nothing changed: reused as is
    assert "up to date" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == files

    assert convert(*args[:-4], "--seed", 5, "--format", out_format) == 0  # another seed is another dataset
    assert "converted" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["seed"] == 5
    reseeded = read_split(split_path(data, "cifar10c", "gaussian_noise")).images
    seed_4 = generate_cifar10c(test.images[:n], test.labels[:n], seed=4, names=["gaussian_noise"])
    assert reseeded.shape == (5 * n, 32, 32, 3)
    assert not np.array_equal(reseeded, seed_4["gaussian_noise"].images)


@pytest.mark.requires_ffcv
def test_cli_writes_generated_cifar10c_as_beton_the_loader_reads(tmp_path):
    expected = make_cifar10_python(tmp_path / "src", n_train=10, n_test=3)
    data = tmp_path / "data"
    assert convert("cifar10", "--source", tmp_path / "src" / "cifar-10-python.tar.gz", "--out", data,
                   "--format", "npz") == 0
    assert convert("cifar10c", "--generate-from", "cifar10", "--out", data) == 0
    test = expected.splits["test"]
    reference = generate_cifar10c(test.images, test.labels, seed=0, names=["zoom_blur", "spatter"])
    for name, split in reference.items():
        arrays = read_split(data / "cifar10c" / f"{name}.beton")
        np.testing.assert_array_equal(arrays.images, split.images)
        np.testing.assert_array_equal(arrays.labels, split.labels)
        np.testing.assert_array_equal(arrays.extras["severity"], split.extras["severity"])
    manifest = json.loads((data / "cifar10c" / "manifest.json").read_text())
    assert manifest["format"] == "beton" and manifest["generated_from"]["count"] == 3 and manifest["seed"] == 0


def assert_one_line_error(capsys, *argv, match: str) -> str:
    assert convert(*argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and match in err, err
    return err


def test_cli_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    data = tmp_path / "data"
    err = assert_one_line_error(capsys, "cifar10c", "--generate-from", "cifar10", "--out", data,
                                match="cifar10 is not converted")
    assert f"fastpart convert cifar10 --out {data}" in err
    assert not (data / "cifar10c").exists()

    make_cifar10_python(tmp_path / "src", n_train=10, n_test=4)
    assert convert("cifar10", "--source", tmp_path / "src" / "cifar-10-python.tar.gz", "--out", data, "--format", "npz") == 0
    capsys.readouterr()
    assert_one_line_error(capsys, "cifar10c", "--generate-from", "cifar10", "--out", data, "--n-test", 5,
                          match="--n-test 5 is more than the 4 images")
    assert_one_line_error(capsys, "cifar10c", "--generate-from", "cifar10", "--out", data, "--source", tmp_path,
                          match="--source does not go with --generate-from")
    assert_one_line_error(capsys, "shapes", "--generate-from", "cifar10", "--out", data,
                          match="--generate-from applies to cifar10c, not shapes")
    assert_one_line_error(capsys, "cifar10c", "--generate-from", "cifar10", "--out", data, "--seed", -1,
                          match="--seed must be 0 or more")
    assert_one_line_error(capsys, "cifar10c", "--out", data, "--data-dir", data,
                          match="--data-dir goes with --generate-from only")
    assert not (data / "cifar10c").exists()

    # a source elsewhere, named by --data-dir; a damaged source split is refused
    other = tmp_path / "other"
    assert convert("cifar10c", "--generate-from", "cifar10", "--data-dir", data, "--out", other, "--format", "npz") == 0
    assert (other / "cifar10c" / "manifest.json").is_file()
    test_file = data / "cifar10" / "test.npz"
    test_file.write_bytes(test_file.read_bytes()[:-7])
    assert_one_line_error(capsys, "cifar10c", "--generate-from", "cifar10", "--data-dir", data, "--out", other,
                          "--format", "npz", match="does not match its manifest")
