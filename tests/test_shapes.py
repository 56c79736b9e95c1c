"""Tests for the embedded "shapes" dataset: format, determinism, balance, masks, visibility, learnability."""

from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np
import pytest

from fastpart.data.datasets import ReadResult
from fastpart.errors import DatasetError
from fastpart.data.shapes import CLASS_NAMES, generate, generate_split

N_CLASSES = 10


@pytest.fixture(scope="module")
def split() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return generate_split(2000, seed=11)


def _digests(images: np.ndarray) -> set[bytes]:
    return {hashlib.sha1(image.tobytes()).digest() for image in images}


def _dilate(masks: np.ndarray, steps: int) -> np.ndarray:
    """4-neighbour binary dilation of boolean (n, h, w) masks."""
    out = masks.copy()
    for _ in range(steps):
        p = np.pad(out, ((0, 0), (1, 1), (1, 1)))
        out = p[:, 1:-1, 1:-1] | p[:, :-2, 1:-1] | p[:, 2:, 1:-1] | p[:, 1:-1, :-2] | p[:, 1:-1, 2:]
    return out


def _region_mean(images: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Mean colour (n, 3) of each image over its boolean region (n, h, w)."""
    return (images * region[..., None]).sum((1, 2)) / region.sum((1, 2))[:, None]


def _mask_descriptors(masks: np.ndarray) -> np.ndarray:
    """Translation-, scale- and rotation-invariant shape features of binary masks."""
    m = masks.astype(np.float64)
    ys, xs = np.mgrid[0 : m.shape[1], 0 : m.shape[2]] + 0.5
    area = m.sum((1, 2))
    dx = xs - ((m * xs).sum((1, 2)) / area)[:, None, None]
    dy = ys - ((m * ys).sum((1, 2)) / area)[:, None, None]
    radius = np.hypot(dx, dy) / np.sqrt(area)[:, None, None]
    edges = np.linspace(0.0, 1.2, 13)
    shells = [(radius >= lo) & (radius < hi) & (m > 0) for lo, hi in zip(edges[:-1], edges[1:])]
    radial = np.stack([shell.sum((1, 2)) for shell in shells], axis=1) / area[:, None]
    mxx, myy, mxy = ((m * a * b).sum((1, 2)) / area for a, b in ((dx, dx), (dy, dy), (dx, dy)))
    half_trace = (mxx + myy) / 2
    spread = np.sqrt(np.maximum(half_trace**2 - (mxx * myy - mxy**2), 0.0))
    return np.column_stack([radial, (half_trace - spread) / (half_trace + spread), 2 * half_trace / area])


def _nearest_centroid_accuracy(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray
) -> float:
    mean, std = train_x.mean(0), train_x.std(0) + 1e-9
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    centroids = np.stack([train_x[train_y == k].mean(0) for k in range(N_CLASSES)])
    predicted = ((test_x[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    return float((predicted == test_y).mean())


def test_class_names_are_ten_distinct_strings() -> None:
    assert len(CLASS_NAMES) == N_CLASSES
    assert len(set(CLASS_NAMES)) == N_CLASSES
    assert all(isinstance(name, str) and name for name in CLASS_NAMES)


@pytest.mark.parametrize("n, size", [(1, 32), (13, 32), (7, 16), (5, 45)])
def test_split_shapes_and_dtypes(n: int, size: int) -> None:
    images, labels, masks = generate_split(n, seed=3, size=size)
    assert images.shape == (n, size, size, 3) and images.dtype == np.uint8
    assert labels.shape == (n,) and labels.dtype == np.int64
    assert masks.shape == (n, size, size) and masks.dtype == np.uint8
    assert set(np.unique(masks)) <= {0, 1}
    assert labels.min() >= 0 and labels.max() < N_CLASSES


def test_same_arguments_give_byte_identical_output() -> None:
    first, second = generate_split(300, seed=5), generate_split(300, seed=5)
    for a, b in zip(first, second):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


def test_different_seeds_give_different_images() -> None:
    images_a, labels_a, _ = generate_split(300, seed=5)
    images_b, labels_b, _ = generate_split(300, seed=6)
    assert not np.array_equal(labels_a, labels_b)
    assert not _digests(images_a) & _digests(images_b)


@pytest.mark.parametrize("n", [1, 9, 10, 37, 1000])
def test_labels_are_balanced(n: int) -> None:
    _, labels, _ = generate_split(n, seed=2)
    counts = np.bincount(labels, minlength=N_CLASSES)
    assert counts.sum() == n
    assert set(counts) <= {n // N_CLASSES, n // N_CLASSES + 1}


def test_label_order_is_shuffled_by_the_seed() -> None:
    _, labels_a, _ = generate_split(1000, seed=2)
    _, labels_b, _ = generate_split(1000, seed=4)
    assert not np.array_equal(labels_a, np.arange(1000) % N_CLASSES)
    assert not np.array_equal(labels_a, np.sort(labels_a))
    assert (labels_a != labels_b).mean() > 0.5


def test_generate_returns_disjoint_deterministic_read_result() -> None:
    result = generate(n_train=1000, n_test=300, seed=9)
    assert isinstance(result, ReadResult)
    assert result.class_names == list(CLASS_NAMES)
    assert set(result.splits) == {"train", "test"}
    for name, n in (("train", 1000), ("test", 300)):
        data = result.splits[name]
        assert data.images.shape == (n, 32, 32, 3)
        assert set(data.extras) == {"mask"}
        assert data.extras["mask"].shape == (n, 32, 32) and data.extras["mask"].dtype == np.uint8
    assert not _digests(result.splits["train"].images) & _digests(result.splits["test"].images)
    again = generate(n_train=1000, n_test=300, seed=9)
    for name in ("train", "test"):
        assert again.splits[name].images.tobytes() == result.splits[name].images.tobytes()
        assert again.splits[name].extras["mask"].tobytes() == result.splits[name].extras["mask"].tobytes()
    other = generate(n_train=1000, n_test=300, seed=10)
    assert not _digests(other.splits["train"].images) & _digests(result.splits["train"].images)


@pytest.mark.parametrize("size", [16, 32, 45])
def test_masks_cover_8_to_35_percent_and_stay_inside_the_frame(size: int) -> None:
    _, _, masks = generate_split(1000, seed=7, size=size)
    fraction = masks.reshape(len(masks), -1).mean(1)
    assert fraction.min() >= 0.08 and fraction.max() <= 0.35
    border = np.concatenate([masks[:, 0], masks[:, -1], masks[:, :, 0], masks[:, :, -1]], axis=1)
    assert border.max() == 0


def test_object_pixels_are_flat_and_the_mask_matches_them(split: tuple[np.ndarray, ...]) -> None:
    images, _, masks = split
    inside = masks.astype(bool)
    object_colour = _region_mean(images.astype(np.float64), inside)
    distance = np.linalg.norm(images - object_colour[:, None, None, :], axis=-1)
    assert np.percentile(distance[inside], 99.9) < 25.0
    just_outside = _dilate(inside, 1) & ~inside
    assert distance[just_outside].min() > 60.0


def test_object_contrasts_with_surrounding_background(split: tuple[np.ndarray, ...]) -> None:
    images, _, masks = split
    inside = masks.astype(bool)
    surround = _dilate(inside, 2) & ~inside
    colours = images.astype(np.float64)
    contrast = np.linalg.norm(_region_mean(colours, inside) - _region_mean(colours, surround), axis=1)
    assert contrast.min() > 80.0


def test_background_is_textured_not_flat(split: tuple[np.ndarray, ...]) -> None:
    images, _, masks = split
    background = ~_dilate(masks.astype(bool), 1)
    colours = images.astype(np.float64)
    squared = ((colours - _region_mean(colours, background)[:, None, None]) ** 2).sum(-1)
    spread = np.sqrt((squared * background).sum((1, 2)) / background.sum((1, 2)))
    assert np.median(spread) > 12.0


def test_mask_geometry_identifies_the_class(split: tuple[np.ndarray, ...]) -> None:
    """Rotation-invariant mask features + nearest centroid: well above the 10% chance level."""
    _, labels, masks = split
    _, test_labels, test_masks = generate_split(1000, seed=12)
    accuracy = _nearest_centroid_accuracy(
        _mask_descriptors(masks), labels, _mask_descriptors(test_masks), test_labels
    )
    assert accuracy > 0.6


def test_colour_and_area_do_not_reveal_the_class(split: tuple[np.ndarray, ...]) -> None:
    """Object colour, background colour and object area alone: nearest centroid stays near chance."""

    def cues(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        inside, colours = masks.astype(bool), images.astype(np.float64)
        area = inside.mean((1, 2))[:, None]
        return np.hstack([_region_mean(colours, inside), _region_mean(colours, ~inside), area])

    images, labels, masks = split
    test_images, test_labels, test_masks = generate_split(1000, seed=12)
    train_cues, test_cues = cues(images, masks), cues(test_images, test_masks)
    accuracy = _nearest_centroid_accuracy(train_cues, labels, test_cues, test_labels)
    assert accuracy < 0.2


def test_small_cnn_learns_the_classes_from_pixels(split: tuple[np.ndarray, ...]) -> None:
    """A 3-layer conv net, 5 epochs on 2000 images (a few CPU seconds): >= 80% test accuracy (chance 10%)."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def tensors(images: np.ndarray, labels: np.ndarray) -> tuple:
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().float() / 255.0
        return pixels, torch.from_numpy(labels)

    def block(c_in: int, c_out: int) -> list:
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]

    net = nn.Sequential(
        *block(3, 16), nn.MaxPool2d(2), *block(16, 32), nn.MaxPool2d(2), *block(32, 32),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(32, N_CLASSES),
    )
    train_x, train_y = tensors(split[0], split[1])
    test_images, test_labels, _ = generate_split(1000, seed=12)
    test_x, test_y = tensors(test_images, test_labels)
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(0)
    try:
        for _ in range(5):
            for batch in torch.randperm(len(train_x), generator=order).split(64):
                loss = nn.functional.cross_entropy(net(train_x[batch]), train_y[batch])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        net.eval()
        with torch.no_grad():
            accuracy = (net(test_x).argmax(1) == test_y).float().mean().item()
    finally:
        torch.set_num_threads(threads)
    assert accuracy >= 0.8


@pytest.mark.parametrize(
    "call",
    [
        lambda: generate_split(0, seed=0),
        lambda: generate_split(-5, seed=0),
        lambda: generate_split(2.5, seed=0),
        lambda: generate_split(True, seed=0),
        lambda: generate_split(10, seed=-1),
        lambda: generate_split(10, seed="0"),
        lambda: generate_split(10, seed=0, size=15),
        lambda: generate_split(10, seed=0, size=32.0),
        lambda: generate(n_train=0),
        lambda: generate(n_test=0),
        lambda: generate(seed=-3),
        lambda: generate(size=8),
    ],
)
def test_bad_arguments_raise_one_line_dataset_error(call: Callable[[], object]) -> None:
    with pytest.raises(DatasetError) as error:
        call()
    message = str(error.value)
    assert message and "\n" not in message
