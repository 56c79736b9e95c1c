"""PART's ``reference`` mask mode: the released code's CAM -> levels procedure, batched on the device.

The released code's procedure (JiachengZ01/PART, ``utils.py``:
``craft_weight_matrix``, ``process_overlay``, ``generate_weighted_eps``), reproduced on the device,
batched: torchcam's min-max normalisation of the CAM as the released code's pinned torchcam 0.3.2 does it
(float32: L -= min; L /= max, without the later versions' + 1e-8), PIL
resampling of that float image (mode "F", ``Image.BICUBIC``: Keys kernel a = -0.5, taps clipped at
the borders and renormalised, horizontal pass then vertical pass, each rounded to float32),
squaring, matplotlib's 256-entry 'jet' table indexed like ``Colormap.__call__`` indexes floats
(``int(x * 256)``, 256 -> 255, above -> the "over" colour = entry 255), RGB only,
``(255 * rgb).astype(double) / 255``, standardisation over all 3*H*W values of the image
(population std, float64), the result cast to float32, and important iff it is > tau (the
released code: > 1). Three levels per pixel, one per colour channel: C = 3.
Degenerate maps, counted as in paper mode: a flat map (an all-zero CAM: 0 / 0 in torchcam 0.3.2), a
non-finite one, or a jet image of one colour (std 0). The released code computes NaN for them (NaN -> PIL
-> matplotlib's "bad" colour, transparent black -> 0 / 0 in the standardisation), and NaN > 1 is false:
no important pixel, eps_low everywhere; so do these levels (paper mode falls back to eps instead).
The float "F" image is what the released pins (torchvision 0.14) give: their ``to_pil_image`` keeps
a float32 ndarray unscaled; current torchvision (0.29) turns it into uint8 first (and ``** 2`` would
then wrap around), so the released code must not be re-run on a current torchvision for comparison.
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np
import torch

from fastpart.part.levels import MaskSettings, nonfinite_rows, standardise

__all__ = ["JET_SIZE", "TORCHCAM_VERSION", "jet_indices", "jet_table", "pil_resample_taps", "pil_resize",
           "reference_levels", "torchcam_normalize"]

JET_SIZE = 256  # matplotlib's default lut size (rcParams["image.lut"]), as cm.get_cmap('jet') gives it
TORCHCAM_VERSION = "0.3.2"  # the released code's pin: _CAM._normalize divides by the max, no epsilon (0.4 adds 1e-8)


# PIL's resampling filters (Pillow src/libImaging/Resample.c), evaluated with the same double arithmetic.
def _pil_bicubic(x: float) -> float:
    a = -0.5
    if x < 0.0:
        x = -x
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def _pil_bilinear(x: float) -> float:
    if x < 0.0:
        x = -x
    if x < 1.0:
        return 1.0 - x
    return 0.0


_PIL_FILTERS: dict[str, tuple[float, Callable[[float], float]]] = {
    "bicubic": (2.0, _pil_bicubic),
    "bilinear": (1.0, _pil_bilinear),
}


@functools.lru_cache(maxsize=64)
def pil_resample_taps(in_size: int, out_size: int, interpolation: str) -> tuple[np.ndarray, np.ndarray]:
    """PIL's 1-D resampling pass (``precompute_coeffs``): tap indices int64 and weights float64, (out_size, K).

    Output pixel xx is centred at (xx + 0.5) * in / out; the filter is stretched by the scale when
    shrinking; taps outside the image are dropped and the remaining weights renormalised. Rows are
    padded to K taps with weight 0 (at the end, so PIL's summation order is kept).
    """
    support0, kernel = _PIL_FILTERS[interpolation]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = support0 * filterscale
    inv = 1.0 / filterscale
    rows: list[tuple[int, list[float]]] = []
    for xx in range(out_size):
        center = 0.0 + (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        taps = [kernel((x - center + 0.5) * inv) for x in range(xmin, xmax)]
        total = 0.0
        for w in taps:
            total += w
        if total != 0.0:
            taps = [w / total for w in taps]
        rows.append((xmin, taps))
    width = max(len(taps) for _, taps in rows)
    index = np.zeros((out_size, width), dtype=np.int64)
    weight = np.zeros((out_size, width), dtype=np.float64)
    for xx, (xmin, taps) in enumerate(rows):
        index[xx, :] = xmin
        index[xx, : len(taps)] = np.arange(xmin, xmin + len(taps))
        weight[xx, : len(taps)] = taps
    return index, weight


def _pil_pass(maps: torch.Tensor, out_size: int, interpolation: str) -> torch.Tensor:
    """Resample the last axis like PIL's 32-bit pass: a double sum over the taps in order, stored as float32."""
    index, weight = pil_resample_taps(maps.shape[-1], out_size, interpolation)
    index_t = torch.from_numpy(index).to(maps.device)
    weight_t = torch.from_numpy(weight).to(maps.device)
    values = maps.double()
    total = torch.zeros(maps.shape[:-1] + (out_size,), dtype=torch.float64, device=maps.device)
    for t in range(index.shape[1]):
        product = values[..., index_t[:, t]] * weight_t[:, t]  # rounded, then added: no fused multiply-add
        total = total + product
    return total.float()


def pil_resize(maps: torch.Tensor, size: tuple[int, int], interpolation: str = "bicubic") -> torch.Tensor:
    """(B, h, w) float32 -> (B, H, W) float32 as PIL resizes a mode "F" image to (W, H), batched on the device.

    Separable passes, horizontal first then vertical (Pillow's order; a pass whose size is unchanged is
    skipped), each accumulated in double and stored as float32 like PIL's image buffers.
    (Recent Pillow runs the vertical pass first when it shrinks and the horizontal one grows; CAM
    upsampling grows both, where the order is the same.)
    """
    rows, cols = size
    out = maps.to(torch.float32)
    if cols != out.shape[-1]:
        out = _pil_pass(out, cols, interpolation)
    if rows != out.shape[-2]:
        out = _pil_pass(out.transpose(-1, -2), rows, interpolation).transpose(-1, -2)
    return out.contiguous()


@functools.lru_cache(maxsize=1)
def _jet_rgb_numpy() -> np.ndarray:
    """matplotlib 'jet' (256 entries) RGB as float64 (256, 3)."""
    import matplotlib

    cmap = matplotlib.colormaps["jet"].resampled(JET_SIZE)
    return np.asarray(cmap(np.arange(JET_SIZE)), dtype=np.float64)[:, :3].copy()


def jet_table(device: torch.device | str = "cpu") -> torch.Tensor:
    """matplotlib's 256-entry 'jet' RGB table, float64 (256, 3), on ``device``."""
    return _jet_table_cached(str(torch.device(device)))


@functools.lru_cache(maxsize=8)
def _jet_table_cached(device: str) -> torch.Tensor:
    return torch.from_numpy(_jet_rgb_numpy()).to(device)


@functools.lru_cache(maxsize=8)
def _overlay_table_cached(device: str) -> torch.Tensor:
    # process_overlay: (255 * rgb).astype(np.double) / 255, applied entry-wise, so once on the table.
    return torch.from_numpy((255 * _jet_rgb_numpy()).astype(np.double) / 255).to(device)


def jet_indices(values: torch.Tensor) -> torch.Tensor:
    """Row of matplotlib's 256-entry table that ``Colormap.__call__`` picks for float values.

    x * 256 truncated toward zero; exactly 256 (x == 1) -> 255; above -> "over" (jet's over colour is
    entry 255); below 0 -> "under" (entry 0). Values must be finite (NaN is matplotlib's "bad").
    """
    scaled = values * JET_SIZE  # a power of two: exact in any float dtype, as in matplotlib
    return scaled.clamp(0, JET_SIZE - 1).to(torch.int64)


def torchcam_normalize(cams: torch.Tensor) -> torch.Tensor:
    """torchcam 0.3.2's ``_CAM._normalize`` per map, in float32: L -= min L; L /= max L (a flat map -> NaN)."""
    maps = cams.to(torch.float32)
    maps = maps - maps.flatten(1).amin(dim=1).view(-1, 1, 1)
    return maps / maps.flatten(1).amax(dim=1).view(-1, 1, 1)


@torch.no_grad()
def reference_levels(cams: torch.Tensor, size: tuple[int, int],
                     settings: MaskSettings) -> tuple[torch.Tensor, torch.Tensor]:
    safe = torch.where(torch.isfinite(cams), cams, torch.zeros_like(cams))
    heat = torchcam_normalize(safe)
    degenerate = nonfinite_rows(cams) | nonfinite_rows(heat)  # non-finite, or flat (0 / 0)
    heat = torch.where(degenerate.view(-1, 1, 1), torch.zeros_like(heat), heat)
    overlay = pil_resize(heat, size, settings.interpolation)
    squared = overlay * overlay  # np.asarray(overlay) ** 2 on a float32 array
    rgb = _overlay_table_cached(str(cams.device))[jet_indices(squared)]  # (B, H, W, 3) float64
    rgb = rgb.permute(0, 3, 1, 2)  # (B, 3, H, W)
    z, std = standardise(rgb)
    degenerate |= std == 0
    # torch.clamp(z, 1, z.max()).float() > 1  <=>  float32(z) > 1; tau generalises the threshold 1. A degenerate
    # map's z is NaN in the released code: nothing is important.
    important = z.to(torch.float32) > settings.tau
    important &= ~degenerate.view(-1, 1, 1, 1)
    return important.to(torch.uint8).contiguous(), degenerate
