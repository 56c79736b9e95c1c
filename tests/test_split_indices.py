"""Sample indices read back from a split file are 0..N-1 (PART looks each sample's mask up by its index):
other unique indices become their rank, a repeated index is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fastpart.data.arrays import SplitData
from fastpart.errors import FastpartError
from fastpart.loader import DeviceLoader, read_split

requires_ffcv = pytest.mark.requires_ffcv
N = 6
KEPT = np.array([10, 3, 7, 42, 5, 0])  # a subset that kept its original indices
RANKS = [4, 1, 3, 5, 2, 0]


def images() -> np.ndarray:
    x = np.zeros((N, 8, 8, 3), np.uint8)
    x[:, 0, 0, 0] = np.arange(N)  # row k is marked k
    return x


def write_npz(path: Path, indices: np.ndarray) -> Path:
    np.savez(path, images=images(), labels=np.arange(N) % 2, indices=indices)
    return path


class _Rows:
    def __init__(self, indices: np.ndarray) -> None:
        self.images, self.indices = images(), indices

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> tuple:
        return self.images[i], i % 2, int(self.indices[i])


def write_beton(path: Path, indices: np.ndarray) -> Path:
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    fields = {"image": RGBImageField(write_mode="raw"), "label": IntField(), "index": IntField()}
    DatasetWriter(str(path), fields, num_workers=1).from_indexed_dataset(_Rows(indices))
    return path


@pytest.fixture(params=["npz", pytest.param("beton", marks=requires_ffcv)])
def write(request):
    return {"npz": write_npz, "beton": write_beton}[request.param], request.param


def test_unique_indices_become_their_rank_in_the_same_order(tmp_path, write):
    writer, suffix = write
    arrays = read_split(writer(tmp_path / f"subset.{suffix}", KEPT))
    assert arrays.indices.tolist() == RANKS
    assert arrays.images[:, 0, 0, 0].tolist() == list(range(N))  # rows stay where they are


def test_indices_read_back_are_writable_arrays(tmp_path, write):
    """A .beton's indices came back as a read-only view of ffcv's metadata; the loader's torch.from_numpy then
    warned that writing to the tensor is undefined behaviour."""
    writer, suffix = write
    for indices in (np.arange(N), KEPT):  # in file order (returned as read) and renumbered
        arrays = read_split(writer(tmp_path / f"rows.{suffix}", indices))
        assert arrays.indices.flags.writeable and arrays.indices.dtype == np.int64


def test_the_loader_looks_per_sample_tensors_up_by_rank(tmp_path):
    path = write_npz(tmp_path / "subset.npz", KEPT)
    aux = torch.arange(N, dtype=torch.float32)[:, None, None].expand(N, 8, 8).contiguous()  # aux of sample k is k
    batch = next(iter(DeviceLoader(path, batch_size=N, shuffle=False, backend="memory", aux=aux)))
    x, _, indices, looked_up = batch
    assert indices.tolist() == RANKS
    assert looked_up[:, 0, 0].tolist() == RANKS
    assert (x[:, 0, 0, 0] * 255).round().tolist() == list(range(N))


def test_a_repeated_index_is_refused_with_one_line(tmp_path, write):
    writer, suffix = write
    path = writer(tmp_path / f"twice.{suffix}", np.array([4, 1, 2, 1, 0, 3]))
    with pytest.raises(FastpartError, match=r"twice\.\w+: sample index 1 appears 2 times \(rows 1, 3\)") as error:
        read_split(path)
    assert "\n" not in str(error.value)


@requires_ffcv
def test_streaming_a_beton_needs_its_row_numbers_as_indices(tmp_path):
    path = write_beton(tmp_path / "subset.beton", KEPT)
    with pytest.raises(FastpartError, match="not 0..5 in file order"):
        DeviceLoader(path, batch_size=N, shuffle=False, backend="ffcv")
    assert DeviceLoader(path, batch_size=N, shuffle=False, backend="memory").source.indices.tolist() == RANKS


def test_npz_indices_of_the_wrong_shape_or_type_are_refused(tmp_path):
    with pytest.raises(FastpartError, match="'indices' must have shape"):
        read_split(write_npz(tmp_path / "short.npz", np.arange(N - 1)))
    with pytest.raises(FastpartError, match="'indices' must be integers"):
        read_split(write_npz(tmp_path / "float.npz", np.arange(N) + 0.5))


def test_split_data_keeps_its_default_indices():
    split = SplitData(images(), np.zeros(N, np.int64))
    assert split.indices.tolist() == list(range(N)) and split.indices.dtype == np.int64
