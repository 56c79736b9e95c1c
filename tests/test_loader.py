"""The loader: exact round trips, identical backends, seeded order, augmentation shared with aux."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from fastpart.data.convert import write_beton, write_npz
from fastpart.data.datasets import SplitData
from fastpart.errors import FastpartError
from fastpart.loader import (
    Augment,
    DeviceLoader,
    crop_flip,
    crop_flip_coordinates,
    epoch_order,
    read_split,
    split_path,
)
from fastpart.data.shapes import generate_split


@pytest.fixture(scope="module")
def split() -> SplitData:
    images, labels, masks = generate_split(300, seed=5)
    return SplitData(images, labels, {"mask": masks})


@pytest.fixture(scope="module")
def files(split: SplitData, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("loader")
    write_npz(folder / "train.npz", split)
    if importlib.util.find_spec("ffcv") is None:
        return {"npz": folder / "train.npz"}  # the .beton tests are skipped (requires_ffcv)
    write_beton(folder / "train.beton", split)
    return {"beton": folder / "train.beton", "npz": folder / "train.npz"}


def collect(loader: DeviceLoader) -> list[tuple[torch.Tensor, ...]]:
    return [tuple(t.clone() for t in batch) for batch in loader]


@pytest.mark.parametrize("kind", [pytest.param("beton", marks=pytest.mark.requires_ffcv), "npz"])
def test_read_split_round_trips_exactly(kind, files, split):
    arrays = read_split(files[kind])
    np.testing.assert_array_equal(arrays.images, split.images)
    np.testing.assert_array_equal(arrays.labels, split.labels)
    np.testing.assert_array_equal(arrays.indices, np.arange(len(split.labels)))
    np.testing.assert_array_equal(arrays.extras["mask"], split.extras["mask"])


@pytest.mark.requires_ffcv
def test_unshuffled_batches_are_the_file_in_order(files, split):
    loader = DeviceLoader(files["beton"], batch_size=64, shuffle=False, backend="memory")
    batches = collect(loader)
    assert len(loader) == len(batches) == 5  # 300 / 64 -> 4 full + 1 partial, no drop when not shuffling
    images = torch.cat([b[0] for b in batches])
    expected = torch.from_numpy(split.images).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(images, expected)
    assert torch.equal(torch.cat([b[2] for b in batches]), torch.arange(300))
    assert torch.equal(torch.cat([b[1] for b in batches]), torch.from_numpy(split.labels))


@pytest.mark.parametrize("precision,dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_batches_are_channels_last_floats_in_unit_range(files, precision, dtype):
    loader = DeviceLoader(files["npz"], batch_size=32, precision=precision, augment=Augment())
    x, y, i = next(iter(loader))
    assert x.dtype == dtype and x.shape == (32, 3, 32, 32)
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert y.dtype == torch.int64 and i.dtype == torch.int64


@pytest.mark.requires_ffcv
def test_backends_yield_identical_batches(files, split):
    aux = torch.from_numpy(split.extras["mask"])
    options = dict(batch_size=48, seed=11, augment=Augment(4, True), aux=aux)
    loaders = [
        DeviceLoader(files["beton"], backend="memory", **options),
        DeviceLoader(files["beton"], backend="ffcv", **options),
        DeviceLoader(files["npz"], backend="memory", **options),
    ]
    for epoch in (0, 3):
        runs = []
        for loader in loaders:
            loader.set_epoch(epoch)
            runs.append(collect(loader))
        for other in runs[1:]:
            assert len(other) == len(runs[0]) == 300 // 48  # drop_last while shuffling
            for a, b in zip(runs[0], other):
                for ta, tb in zip(a, b):
                    assert torch.equal(ta, tb)


def test_order_is_seeded_per_epoch_and_covers_every_sample(files):
    loader = DeviceLoader(files["npz"], batch_size=50, seed=1)
    first = torch.cat([b[2] for b in loader])
    second = torch.cat([b[2] for b in loader])  # next epoch
    assert sorted(first.tolist()) == list(range(300))
    assert not torch.equal(first, second)
    loader.set_epoch(0)
    assert torch.equal(torch.cat([b[2] for b in loader]), first)
    other_seed = DeviceLoader(files["npz"], batch_size=50, seed=2)
    assert not torch.equal(torch.cat([b[2] for b in other_seed]), first)
    assert torch.equal(epoch_order(300, 1, 0, shuffle=True), first)


@pytest.mark.requires_ffcv
def test_labels_and_indices_stay_paired(files, split):
    loader = DeviceLoader(files["beton"], batch_size=64, seed=4, backend="ffcv", augment=Augment())
    for x, y, i in loader:
        assert torch.equal(y, torch.from_numpy(split.labels)[i])


def test_augmentation_moves_aux_exactly_with_its_image(files, split):
    """aux = a function of the image, so after augmentation it must equal that function of the batch."""
    images = torch.from_numpy(split.images).permute(0, 3, 1, 2)
    aux = (images.int().sum(1) % 251).to(torch.uint8)  # (N, H, W), nonzero almost everywhere
    aux3 = images.flip(1).contiguous()  # (N, 3, H, W): channel-reversed copy
    for stacked in (aux, aux3):
        loader = DeviceLoader(files["npz"], batch_size=64, seed=9, augment=Augment(4, True), aux=stacked)
        flips = crops = 0
        for x, y, i, a in loader:
            pixels = torch.round(x * 255).to(torch.int64)
            expected = (pixels.sum(1) % 251) if stacked.dim() == 3 else pixels.flip(1)
            assert torch.equal(a.to(torch.int64), expected)
            original = images[i].float() / 255
            flips += int((x != original).flatten(1).any(1).sum())
            crops += int((pixels.sum(1) == 0).flatten(1).any(1).sum())  # zero padding came in
        assert flips > 0 and crops > 0


def test_crop_flip_coordinates_cover_all_offsets_and_both_flips():
    generator = torch.Generator().manual_seed(0)
    rows, cols = crop_flip_coordinates(4000, 8, 8, Augment(2, True), generator, torch.device("cpu"))
    assert set(rows[:, 0].tolist()) == set(range(5))
    starts = cols[:, 0]
    assert ((cols[:, 1] - cols[:, 0]) == 1).any() and ((cols[:, 1] - cols[:, 0]) == -1).any()
    assert int(starts.min()) == 0 and int(starts.max()) == 11  # flipped columns start at offset + W - 1


def test_crop_flip_matches_a_per_sample_reference():
    generator = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (16, 10, 12, 3), dtype=torch.uint8)
    rows, cols = crop_flip_coordinates(16, 10, 12, Augment(3, True), generator, torch.device("cpu"))
    out = crop_flip(x, rows, cols, 3)
    padded = torch.nn.functional.pad(x, (0, 0, 3, 3, 3, 3))
    for b in range(16):
        top, left = int(rows[b, 0]), int(cols[b].min())
        crop = padded[b, top : top + 10, left : left + 12]
        flipped = bool(cols[b, 0] > cols[b, 1])
        assert torch.equal(out[b], crop.flip(1) if flipped else crop)


def test_no_augmentation_when_not_asked(files, split):
    loader = DeviceLoader(files["npz"], batch_size=300, shuffle=True, seed=0)
    x, _, i = next(iter(loader))
    expected = torch.from_numpy(split.images).permute(0, 3, 1, 2).float()[i] / 255
    assert torch.equal(x, expected)


@pytest.mark.requires_ffcv
def test_deterministic_across_fresh_loaders(files):
    def run():
        loader = DeviceLoader(files["beton"], batch_size=32, seed=7, augment=Augment(), backend="memory")
        return collect(loader)

    for a, b in zip(run(), run()):
        assert all(torch.equal(ta, tb) for ta, tb in zip(a, b))


def test_bad_inputs_get_clear_errors(files, tmp_path):
    with pytest.raises(FastpartError, match="no such file"):
        DeviceLoader(tmp_path / "missing.beton", batch_size=4)
    with pytest.raises(FastpartError, match="ffcv backend reads .beton"):
        DeviceLoader(files["npz"], batch_size=4, backend="ffcv")
    with pytest.raises(FastpartError, match="unknown precision"):
        DeviceLoader(files["npz"], batch_size=4, precision="int8")
    with pytest.raises(FastpartError, match="aux must have shape"):
        DeviceLoader(files["npz"], batch_size=4, aux=torch.zeros(5, 32, 32))
    with pytest.raises(FastpartError, match="fastpart convert shapes"):
        split_path(tmp_path, "shapes", "train")
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((3, 8, 8), np.uint8), labels=np.zeros(3))
    with pytest.raises(FastpartError, match="uint8 \\(N, H, W, 3\\)"):
        read_split(bad)


def test_split_path_prefers_beton_then_npz(tmp_path):
    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / "train.npz").write_bytes(b"")
    assert split_path(tmp_path, "toy", "train") == folder / "train.npz"
    (folder / "train.beton").write_bytes(b"")
    assert split_path(tmp_path, "toy", "train") == folder / "train.beton"


@pytest.mark.requires_ffcv
def test_streaming_a_beton_keeps_torchs_thread_count(files):
    """ffcv sets torch's threads to its worker count (loader, iterator, its thread): fastpart keeps the caller's, so
    that a run's arithmetic does not depend on the loading path (2 threads after the first batch, under 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        loader = DeviceLoader(files["beton"], batch_size=64, shuffle=True, backend="ffcv", num_workers=2)
        assert torch.get_num_threads() == 1
        for epoch in range(2):
            loader.set_epoch(epoch)
            for _ in loader:
                assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
