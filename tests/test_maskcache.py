"""PART's mask cache: the key (every input of the masks), bit packing, and the file (atomic, checked)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import fastpart.atomic
import fastpart.part.cache as maskcache_module
from fastpart.errors import FastpartError
from fastpart.part.cache import MaskCache, cache_key, key_inputs, pack_levels, unpack_levels
from fastpart.part import MaskSettings

PAPER = MaskSettings()
REFERENCE = MaskSettings(mode="reference")


# ---------------------------------------------------------------------------------------------
# Cache key
# ---------------------------------------------------------------------------------------------


def small_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    return model.state_dict()


def key(manifest, state, settings, eps, eps_low, precision="fp32", batch_size=512):
    return cache_key(manifest, state, settings, eps, eps_low, precision=precision, batch_size=batch_size)


def test_cache_key_stable_and_sensitive():
    state = small_state()
    key0 = key("abc", state, PAPER, 8 / 255, 7 / 255)
    assert len(key0) == 64 and int(key0, 16) >= 0
    assert key("abc", {k: v.clone() for k, v in state.items()}, MaskSettings(), 8 / 255, 7 / 255) == key0
    assert key("abd", state, PAPER, 8 / 255, 7 / 255) != key0
    assert key("abc", state, PAPER, 8 / 255 + 1e-12, 7 / 255) != key0
    assert key("abc", state, PAPER, 8 / 255, 6 / 255) != key0
    for change in (
        dict(mode="reference"),
        dict(tau=1.5),
        dict(interpolation="bilinear"),
        dict(cam="layercam"),
        dict(target="label"),
        dict(backend="grad-cam"),
        dict(layer="layer3"),
    ):
        assert key("abc", state, MaskSettings(**change), 8 / 255, 7 / 255) != key0
    for name in state:
        changed = {k: v.clone() for k, v in state.items()}
        flat = changed[name].view(-1)
        flat[-1] = flat[-1] + 1
        assert key("abc", changed, PAPER, 8 / 255, 7 / 255) != key0, name
    # every input of the masks: the CAMs' precision and batch size too
    assert key("abc", state, PAPER, 8 / 255, 7 / 255, precision="bf16") != key0
    assert key("abc", state, PAPER, 8 / 255, 7 / 255, batch_size=256) != key0
    retyped = dict(state)
    retyped["0.weight"] = state["0.weight"].double()
    assert key("abc", retyped, PAPER, 8 / 255, 7 / 255) != key0


# ---------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------


def random_levels(n=7, c=3, h=5, w=7, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, size=(n, c, h, w), dtype=np.uint8)


def test_pack_unpack_match_numpy():
    lv = random_levels(9, 1, 3, 5)  # 15 bits per sample: a 1-bit tail
    packed = pack_levels(torch.from_numpy(lv))
    np.testing.assert_array_equal(packed.numpy(), np.packbits(lv.reshape(9, -1), axis=1))
    assert torch.equal(unpack_levels(packed, lv.shape), torch.from_numpy(lv))


def test_cache_round_trip_memmap_and_size(tmp_path):
    cache = MaskCache(tmp_path / "masks")
    lv = random_levels()
    assert not cache.exists("k1")
    stats = {"important_fraction": float(lv.mean()), "degenerate": 2, "n": 7, "seconds": np.float64(0.5)}
    inputs = key_inputs(REFERENCE, 8 / 255, 7 / 255, precision="bf16", batch_size=512)
    path = cache.save("k1", lv, stats, inputs)
    assert path == cache.path("k1") and cache.exists("k1")
    loaded = cache.load("k1")
    assert loaded.dtype == torch.uint8 and loaded.shape == lv.shape
    np.testing.assert_array_equal(loaded.numpy(), lv)
    assert cache.stats("k1") == {"important_fraction": float(lv.mean()), "degenerate": 2, "n": 7, "seconds": 0.5}
    header = cache.header("k1")
    assert header["inputs"]["settings"] == REFERENCE.key_fields() and header["shape"] == [7, 3, 5, 7]
    assert header["inputs"]["precision"] == "bf16" and header["inputs"]["batch_size"] == 512
    packed = cache.open_packed("k1")
    assert isinstance(packed, np.memmap)
    np.testing.assert_array_equal(np.asarray(packed), np.packbits(lv.reshape(7, -1), axis=1))
    row_bytes = math.ceil(3 * 5 * 7 / 8)
    size = path.stat().st_size
    assert size == header["data_offset"] + 7 * row_bytes
    assert header["data_offset"] <= 1024 and header["data_offset"] % 64 == 0
    # torch input and bool levels too
    cache.save("k2", torch.from_numpy(lv).bool(), {})
    assert torch.equal(cache.load("k2"), torch.from_numpy(lv))
    assert sorted(cache.keys()) == ["k1", "k2"]


def test_cache_size_scales_as_bits(tmp_path):
    cache = MaskCache(tmp_path)
    lv = random_levels(200, 1, 32, 32, seed=1)
    path = cache.save("big", lv, {})
    assert abs(path.stat().st_size - lv.size / 8) <= 1024


def test_cache_save_is_atomic_when_fsync_fails(tmp_path, monkeypatch):
    cache = MaskCache(tmp_path)

    def boom(fd):
        raise OSError("disk gone")

    monkeypatch.setattr(fastpart.atomic.os, "fsync", boom)
    with pytest.raises(OSError):
        cache.save("k", random_levels(), {})
    assert list(tmp_path.iterdir()) == []


def test_cache_save_crash_mid_write_keeps_previous_file(tmp_path, monkeypatch):
    cache = MaskCache(tmp_path)
    old = random_levels(seed=1)
    cache.save("k", old, {"v": 1})
    before = cache.path("k").read_bytes()

    real_open = open

    class Failing:
        def __init__(self, f):
            self.f, self.calls = f, 0

        def write(self, data):
            self.calls += 1
            if self.calls == 3:
                raise OSError("killed mid-write")
            return self.f.write(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(maskcache_module, "open", lambda *a, **k: Failing(real_open(*a, **k)), raising=False)
    with pytest.raises(OSError):
        cache.save("k", random_levels(seed=2), {"v": 2})
    monkeypatch.undo()
    assert cache.path("k").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["k.masks"]
    assert torch.equal(cache.load("k"), torch.from_numpy(old))


def test_cache_corrupt_files_raise(tmp_path):
    cache = MaskCache(tmp_path)
    with pytest.raises(FastpartError):
        cache.load("missing")
    lv = random_levels()
    path = cache.save("k", lv, {})
    good = path.read_bytes()

    path.write_bytes(good[:-1])  # truncated
    with pytest.raises(FastpartError, match="truncated"):
        cache.load("k")
    path.write_bytes(good + b"\0")  # trailing bytes
    with pytest.raises(FastpartError):
        cache.load("k")
    path.write_bytes(b"NOTMASKS" + good[8:])  # bad magic
    with pytest.raises(FastpartError):
        cache.load("k")
    path.write_bytes(good[:16] + b"[" + good[17:])  # broken JSON header
    with pytest.raises(FastpartError):
        cache.load("k")
    path.write_bytes(good[:10])  # not even a header
    with pytest.raises(FastpartError):
        cache.load("k")
    flipped = bytearray(good)
    flipped[-1] ^= 0x01  # a flipped bit in the data
    path.write_bytes(bytes(flipped))
    with pytest.raises(FastpartError, match="checksum"):
        cache.load("k")
    path.write_bytes(good)
    (tmp_path / "other.masks").write_bytes(good)  # a file under another key's name
    with pytest.raises(FastpartError):
        cache.load("other")
    assert torch.equal(cache.load("k"), torch.from_numpy(lv))
    with pytest.raises(FastpartError):
        cache.path("../escape")


def test_cache_header_is_json(tmp_path):
    cache = MaskCache(tmp_path)
    path = cache.save("k", random_levels(), {"a": 1})
    raw = path.read_bytes()
    assert raw[:8] == b"FPMASKS1"
    length = int.from_bytes(raw[8:16], "little")
    assert json.loads(raw[16 : 16 + length])["key"] == "k"


def test_cache_prune(tmp_path):
    cache = MaskCache(tmp_path)
    for k in ("a", "b", "c"):
        cache.save(k, random_levels(), {})
    (tmp_path / ".a.masks.xyz.tmp").write_bytes(b"partial")
    (tmp_path / "unrelated.txt").write_text("keep me")
    cache.prune({"b"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.masks", "unrelated.txt"]
    MaskCache(tmp_path / "absent").prune(set())
