"""PART's mask cache: one split's levels per key, on disk, bit-packed and memory-mapped.

``cache_key`` hashes every input of a split's masks (dataset identity, model weights, mask settings with
the CAM method, backend and layer, budgets, precision, batch size). ``MaskCache`` stores the levels under
that key in ``<folder>/<key>.masks``: an 8-byte magic, an 8-byte little-endian header length, a JSON
header (key, shape, row bytes, crc32, the key's inputs, stats), zero padding to a 64-byte boundary,
then the levels bit-packed per sample (``np.packbits`` layout, big-endian bit order, each sample's
C*H*W bits padded to whole bytes). Files are written atomically and read through ``np.memmap``; a
missing, truncated or corrupt file raises ``FastpartError`` (``CacheMiss`` / ``CorruptCache``), which
the training loop answers by recomputing the masks from the model.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fastpart.atomic import atomic_path
from fastpart.errors import FastpartError
from fastpart.part.levels import MaskSettings

__all__ = ["CacheMiss", "CorruptCache", "MaskCache", "cache_key", "key_inputs", "pack_levels", "unpack_levels"]


class CacheMiss(FastpartError):
    """No cached masks for a key."""


class CorruptCache(FastpartError):
    """A mask cache file exists but cannot be trusted (truncated, wrong header, checksum mismatch)."""


def _update_tensor(h: Any, name: str, tensor: torch.Tensor) -> None:
    t = tensor.detach().to("cpu").contiguous()
    h.update(f"{name}|{str(t.dtype)}|{tuple(t.shape)}\n".encode())
    raw = t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)
    h.update(raw.numpy().data)


def key_inputs(settings: MaskSettings, eps: float, eps_low: float, *, precision: str, batch_size: int) -> dict[str, Any]:
    """Every input of a split's masks except the data and the weights, as the cache header records them."""
    return {"settings": settings.key_fields(), "eps": float(eps), "eps_low": float(eps_low),
            "precision": str(precision), "batch_size": int(batch_size)}


def cache_key(
    manifest_sha: str,
    model_state: dict[str, torch.Tensor],
    settings: MaskSettings,
    eps: float,
    eps_low: float,
    *,
    precision: str,
    batch_size: int,
) -> str:
    """sha256 hex of every input of the masks: the dataset identity, every model tensor (name, dtype, shape,
    bytes in key order), the mask settings (CAM method, backend and layer included), the budgets, the
    autocast precision of the CAMs and their batch size. (Not the device: the same settings give the same
    masks up to the device's float rounding.)"""
    h = hashlib.sha256(b"fastpart-masks-v2\n")
    h.update(f"dataset|{manifest_sha}\n".encode())
    for name, tensor in model_state.items():
        if isinstance(tensor, torch.Tensor):
            _update_tensor(h, name, tensor)
        else:
            h.update(f"{name}|{tensor!r}\n".encode())
    h.update(json.dumps(settings.key_fields(), sort_keys=True).encode())
    h.update(f"|eps={float(eps).hex()}|eps_low={float(eps_low).hex()}".encode())
    h.update(f"|precision={precision}|batch_size={int(batch_size)}".encode())
    return h.hexdigest()


# ---- bit packing (torch, on any device; the np.packbits layout) ------------------------------------------

_BIT_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)


def pack_levels(levels: torch.Tensor) -> torch.Tensor:
    """(N, ...) uint8 in {0, 1} -> (N, ceil(per_sample / 8)) uint8, as np.packbits(axis=1) of the flattened samples."""
    flat = levels.reshape(levels.shape[0], -1).to(torch.uint8)
    pad = (-flat.shape[1]) % 8
    if pad:
        flat = F.pad(flat, (0, pad))
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.int16, device=flat.device)
    return (flat.view(flat.shape[0], -1, 8).to(torch.int16) * weights).sum(dim=-1).to(torch.uint8)


def unpack_levels(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of ``pack_levels``: (N, row_bytes) uint8 -> uint8 of ``shape`` = (N, ...)."""
    n = shape[0]
    per = math.prod(shape[1:])
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=packed.device)
    bits = torch.bitwise_and(torch.bitwise_right_shift(packed.unsqueeze(-1), shifts), 1)
    return bits.reshape(n, -1)[:, :per].reshape(shape).contiguous()


# ---- the file --------------------------------------------------------------------------------------------

_MAGIC = b"FPMASKS1"
_PREFIX = struct.Struct("<8sQ")
_ALIGN = 64
_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_PACK_CHUNK = 8192  # samples packed per step on the device


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.generic, torch.Tensor)):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


class MaskCache:
    """The levels of whole splits on disk, one bit-packed, memory-mapped file per key (module docstring)."""

    suffix = ".masks"

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise FastpartError(f"invalid mask cache key {key!r}")
        return self.folder / f"{key}{self.suffix}"

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def save(self, key: str, levels: np.ndarray | torch.Tensor, stats: dict[str, Any],
             inputs: dict[str, Any] | None = None) -> Path:
        """Write levels (N, C, H, W) uint8 in {0, 1} under ``key``, atomically; return the file's path.

        ``inputs`` (``key_inputs``: what the key was computed from, besides data and weights) is recorded
        in the header as ``inputs`` for whoever reads the file later."""
        dest = self.path(key)
        tensor = torch.from_numpy(np.ascontiguousarray(levels)) if isinstance(levels, np.ndarray) else levels
        if tensor.ndim != 4 or tensor.dtype not in (torch.uint8, torch.bool):
            raise FastpartError(f"levels must be uint8 (N, C, H, W), got {tensor.dtype} {tuple(tensor.shape)}")
        if tensor.numel() and int(tensor.max()) > 1:
            raise FastpartError("levels must be 0 or 1")
        shape = tuple(int(s) for s in tensor.shape)
        packed = np.concatenate(
            [pack_levels(tensor[s : s + _PACK_CHUNK]).cpu().numpy() for s in range(0, shape[0], _PACK_CHUNK)]
            or [np.zeros((0, (math.prod(shape[1:]) + 7) // 8), np.uint8)]
        )
        header = {
            "format": "fastpart-masks",
            "version": 1,
            "key": key,
            "shape": list(shape),
            "row_bytes": int(packed.shape[1]),
            "bit_order": "big",
            "crc32": zlib.crc32(packed.data),
            "inputs": inputs,
            "stats": stats,
        }
        text = json.dumps(header, default=_json_default).encode()
        offset = _data_offset(len(text))
        with atomic_path(dest) as tmp:
            with open(tmp, "wb") as f:
                f.write(_PREFIX.pack(_MAGIC, len(text)))
                f.write(text)
                f.write(b"\0" * (offset - _PREFIX.size - len(text)))
                f.write(packed.data)
        return dest

    def header(self, key: str) -> dict[str, Any]:
        """The file's JSON header, checked against the file's size; FastpartError if missing or corrupt."""
        path = self.path(key)
        if not path.is_file():
            raise CacheMiss(f"no cached masks for key {key[:12]}… in {self.folder}")
        size = path.stat().st_size
        try:
            with open(path, "rb") as f:
                magic, length = _PREFIX.unpack(f.read(_PREFIX.size))
                if magic != _MAGIC or length > size:
                    raise ValueError("bad magic or header length")
                header = json.loads(f.read(length))
            shape = tuple(int(s) for s in header["shape"])
            row_bytes = int(header["row_bytes"])
            if header.get("key") != key or len(shape) != 4 or row_bytes != (math.prod(shape[1:]) + 7) // 8:
                raise ValueError("header does not match")
        except (ValueError, KeyError, TypeError, struct.error) as exc:
            raise CorruptCache(f"corrupt mask cache file {path} ({exc})") from None
        header["data_offset"] = _data_offset(length)
        expected = header["data_offset"] + shape[0] * row_bytes
        if size != expected:
            raise CorruptCache(f"corrupt mask cache file {path}: {size} bytes, expected {expected} (truncated?)")
        return header

    def open_packed(self, key: str) -> np.ndarray:
        """The packed levels (N, row_bytes) uint8 as a read-only ``np.memmap`` (nothing read yet)."""
        header = self.header(key)
        n, row_bytes = header["shape"][0], header["row_bytes"]
        if n == 0:
            return np.zeros((0, row_bytes), dtype=np.uint8)
        return np.memmap(self.path(key), dtype=np.uint8, mode="r", offset=header["data_offset"], shape=(n, row_bytes))

    def load(self, key: str, device: torch.device | str = "cpu", verify: bool = True) -> torch.Tensor:
        """Levels uint8 (N, C, H, W) in {0, 1} on ``device`` (unpacked there); FastpartError if missing or corrupt."""
        header = self.header(key)
        packed = self.open_packed(key)
        if verify and zlib.crc32(packed) != header["crc32"]:
            raise CorruptCache(f"corrupt mask cache file {self.path(key)} (checksum mismatch)")
        shape = tuple(header["shape"])
        out = torch.empty(shape, dtype=torch.uint8, device=device)
        for s in range(0, shape[0], _PACK_CHUNK):
            chunk = torch.from_numpy(np.array(packed[s : s + _PACK_CHUNK])).to(device)
            out[s : s + chunk.shape[0]] = unpack_levels(chunk, (chunk.shape[0],) + shape[1:])
        del packed
        return out

    def stats(self, key: str) -> dict[str, Any]:
        return self.header(key)["stats"]

    def keys(self) -> list[str]:
        return sorted(p.name[: -len(self.suffix)] for p in self.folder.glob(f"*{self.suffix}") if p.is_file())

    def prune(self, keep: set[str]) -> None:
        """Delete every other key's file (old masks) and temporaries left by a killed writer."""
        if not self.folder.is_dir():
            return
        for key in self.keys():
            if key not in keep:
                (self.folder / f"{key}{self.suffix}").unlink(missing_ok=True)
        for tmp in self.folder.glob(f".*{self.suffix}.*.tmp"):
            tmp.unlink(missing_ok=True)


def _data_offset(header_length: int) -> int:
    return -(-(_PREFIX.size + header_length) // _ALIGN) * _ALIGN


