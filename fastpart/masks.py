"""PART's pixel masks: class activation maps -> per-pixel eps levels, their schedule and their cache.

This module turns CAMs into *levels* (uint8, 1 = important pixel -> budget ``eps``, 0 -> ``eps_low``),
and never computes a CAM itself: it receives CAM tensors (``eps_levels``) or a callable
(``compute_split_levels``), so it depends on neither the models nor ``fastpart.cam``.

Two mask modes (``MaskSettings.mode``):

* ``paper`` (default; the paper's Pixel-AG mask, Sec. 3): the raw CAM L (B, h, w) is upsampled to the
  image size with ``torch.nn.functional.interpolate`` (``bicubic`` or ``bilinear``,
  ``align_corners=False``), standardised per image, z = (L - mean L) / std L with the *population*
  std (ddof = 0, numpy's ``np.std`` convention, which the released code uses), and a pixel is
  important iff z > tau. One level per pixel, shared by the three colour channels: C = 1.
  Standardisation is affine invariant, so the map is min-max scaled to [0, 1] *before* upsampling;
  this changes nothing mathematically and keeps float32 rounding relative to the map's range. A
  degenerate map -- any non-finite value, or a flat map (max == min, so std = 0) -- gets level 1
  everywhere (eps everywhere: plain AT for that image) and is flagged.

* ``reference``: the released code's procedure (JiachengZ01/PART, ``utils.py``:
  ``craft_weight_matrix``, ``process_overlay``, ``generate_weighted_eps``), reproduced on the device,
  batched: torchcam's min-max normalisation of the CAM (float32: L -= min; L /= max + 1e-8), PIL
  resampling of that float image (mode "F", ``Image.BICUBIC``: Keys kernel a = -0.5, taps clipped at
  the borders and renormalised, horizontal pass then vertical pass, each rounded to float32),
  squaring, matplotlib's 256-entry 'jet' table indexed like ``Colormap.__call__`` indexes floats
  (``int(x * 256)``, 256 -> 255, above -> the "over" colour = entry 255), RGB only,
  ``(255 * rgb).astype(double) / 255``, standardisation over all 3*H*W values of the image
  (population std, float64), the result cast to float32, and important iff it is > tau (the
  released code: > 1). Three levels per pixel, one per colour channel: C = 3. Only non-finite maps
  are degenerate here (a flat map yields a valid jet image, and the released code uses it).
  The float "F" image is what the released pins (torchvision 0.14) give: their ``to_pil_image`` keeps
  a float32 ndarray unscaled; current torchvision (0.29) turns it into uint8 first (and ``** 2`` would
  then wrap around), so the released code must not be re-run on a current torchvision for comparison.

Levels become the per-element budget of mask-weighted PGD as ``fastpart.kernels.EpsLevels(levels, eps,
eps_low)`` (``eps_from_levels`` expands them to floats).

Schedule: ``refresh_epochs`` lists the 0-based epochs before which the masks of the whole training
split are recomputed (end of burn-in, then every ``mask_freq`` epochs). ``compute_split_levels``
computes a whole split's levels on the device from the un-augmented images. Their on-disk cache is
``fastpart.maskcache``; the training-side plumbing (CAM function, refresh, per-batch budget) is
``fastpart.part``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from fastpart.config import INTERPOLATIONS, MASK_MODES, TARGETS
from fastpart.errors import FastpartError


JET_SIZE = 256  # matplotlib's default lut size (rcParams["image.lut"]), as cm.get_cmap('jet') gives it
TORCHCAM_EPS = 1e-8  # torchcam's _CAM._normalize: cams /= cams.max() + eps

CamFn = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@dataclass(frozen=True)
class MaskSettings:
    """How CAMs become masks. ``target``: the CAM's class, the prediction (``pred``) or the label;
    ``cam``/``backend``/``layer``: the CAM method, its implementation (``fastpart.cam.CAM_BACKENDS``) and
    the module it explains."""

    mode: str = "paper"
    tau: float = 1.0
    interpolation: str = "bicubic"
    cam: str = "gradcam"
    target: str = "pred"
    layer: str | None = None  # the CAM layer's module name; None: the model's default
    backend: str = "native"

    def __post_init__(self) -> None:
        if self.mode not in MASK_MODES:
            raise FastpartError(f"mask mode must be one of {', '.join(MASK_MODES)}, got {self.mode!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise FastpartError(
                f"mask interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}"
            )
        if self.target not in TARGETS:
            raise FastpartError(f"mask target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if not isinstance(self.cam, str) or not self.cam:
            raise FastpartError(f"mask cam must be a method name, got {self.cam!r}")
        if not isinstance(self.backend, str) or not self.backend:
            raise FastpartError(f"mask cam backend must be a backend name, got {self.backend!r}")
        if not math.isfinite(float(self.tau)):
            raise FastpartError(f"mask tau must be finite, got {self.tau!r}")

    @property
    def channels(self) -> int:
        """Levels per pixel: 1 in paper mode (shared by R, G, B), 3 in reference mode."""
        return 1 if self.mode == "paper" else 3

    def key_fields(self) -> dict[str, Any]:
        """All fields, for the cache key and the cache header."""
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# CAM -> levels
# ---------------------------------------------------------------------------------------------


def _check_cams(cams: torch.Tensor) -> None:
    if not isinstance(cams, torch.Tensor) or cams.ndim != 3:
        raise FastpartError(f"CAMs must be a (B, h, w) tensor, got {getattr(cams, 'shape', type(cams))}")
    if not cams.is_floating_point():
        raise FastpartError(f"CAMs must be floating point, got {cams.dtype}")


def _nonfinite_rows(maps: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> bool (B,): some value is NaN or infinite."""
    return ~torch.isfinite(maps).flatten(1).all(dim=1)


def _standardise(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of (B, ...): z = (v - mean) / std with the population std (np.std, ddof = 0); and std."""
    flat = values.flatten(1)
    mean = flat.mean(dim=1, keepdim=True)
    std = (flat - mean).square().mean(dim=1, keepdim=True).sqrt()
    z = (flat - mean) / torch.where(std > 0, std, torch.ones_like(std))
    return z.view_as(values), std.view(-1)


@torch.no_grad()
def _paper_levels(cams: torch.Tensor, size: tuple[int, int], settings: MaskSettings) -> tuple[torch.Tensor, torch.Tensor]:
    maps = cams.to(torch.promote_types(cams.dtype, torch.float32))
    nonfinite = _nonfinite_rows(maps)
    safe = torch.where(torch.isfinite(maps), maps, torch.zeros_like(maps))
    lo = safe.flatten(1).amin(dim=1)
    hi = safe.flatten(1).amax(dim=1)
    flat_map = hi == lo
    span = torch.where(flat_map, torch.ones_like(hi), hi - lo)
    scaled = (safe - lo.view(-1, 1, 1)) / span.view(-1, 1, 1)  # in [0, 1]; z is unchanged by this
    up = F.interpolate(scaled.unsqueeze(1), size=size, mode=settings.interpolation, align_corners=False)
    z, std = _standardise(up)
    degenerate = nonfinite | flat_map | (std == 0)
    important = z > settings.tau
    important |= degenerate.view(-1, 1, 1, 1)
    return important.to(torch.uint8), degenerate


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
    """torchcam's ``_CAM._normalize`` per map, in float32: L -= min L; L /= max L + 1e-8."""
    maps = cams.to(torch.float32)
    maps = maps - maps.flatten(1).amin(dim=1).view(-1, 1, 1)
    return maps / (maps.flatten(1).amax(dim=1).view(-1, 1, 1) + TORCHCAM_EPS)


@torch.no_grad()
def _reference_levels(cams: torch.Tensor, size: tuple[int, int], settings: MaskSettings) -> tuple[torch.Tensor, torch.Tensor]:
    nonfinite = _nonfinite_rows(cams)
    safe = torch.where(torch.isfinite(cams), cams, torch.zeros_like(cams))
    heat = torchcam_normalize(safe)
    overlay = pil_resize(heat, size, settings.interpolation)
    squared = overlay * overlay  # np.asarray(overlay) ** 2 on a float32 array
    rgb = _overlay_table_cached(str(cams.device))[jet_indices(squared)]  # (B, H, W, 3) float64
    rgb = rgb.permute(0, 3, 1, 2)  # (B, 3, H, W)
    z, std = _standardise(rgb)
    degenerate = nonfinite | (std == 0)
    # torch.clamp(z, 1, z.max()).float() > 1  <=>  float32(z) > 1; tau generalises the threshold 1.
    important = z.to(torch.float32) > settings.tau
    important |= degenerate.view(-1, 1, 1, 1)
    return important.to(torch.uint8).contiguous(), degenerate


def eps_levels(cams: torch.Tensor, size: tuple[int, int], settings: MaskSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw CAMs (B, h, w) -> (levels uint8 (B, C, H, W): 1 = important (eps), 0 = eps_low; degenerate bool (B,)).

    C = 1 in paper mode, 3 in reference mode (see the module docstring for both procedures).
    Degenerate maps get level 1 everywhere (eps everywhere, plain AT) and are flagged.
    """
    _check_cams(cams)
    size = (int(size[0]), int(size[1]))
    if size[0] <= 0 or size[1] <= 0:
        raise FastpartError(f"mask size must be positive, got {size}")
    if settings.mode == "paper":
        return _paper_levels(cams, size, settings)
    return _reference_levels(cams, size, settings)


# ---------------------------------------------------------------------------------------------
# Schedule
# ---------------------------------------------------------------------------------------------


def refresh_epochs(epochs: int, burn_in: int, mask_freq: int) -> list[int]:
    """0-based epochs before which the split's masks are (re)computed: burn_in, burn_in + freq, ... < epochs.

    Defaults (80, 20, 10) -> [20, 30, 40, 50, 60, 70]. ``mask_freq`` 0 (masks per batch, no cache)
    or ``burn_in >= epochs`` -> [].
    """
    if epochs < 0 or burn_in < 0 or mask_freq < 0:
        raise FastpartError(f"epochs, burn-in and mask frequency must be >= 0, got {epochs}, {burn_in}, {mask_freq}")
    if mask_freq == 0 or burn_in >= epochs:
        return []
    return list(range(burn_in, epochs, mask_freq))


# ---------------------------------------------------------------------------------------------
# A whole split
# ---------------------------------------------------------------------------------------------


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compute_split_levels(
    cam_fn: CamFn,
    images: torch.Tensor,
    labels: torch.Tensor,
    settings: MaskSettings,
    batch_size: int = 1024,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Un-augmented images (N, H, W, 3) uint8 -> levels (N, C, H, W) uint8 on the images' device, and stats.

    ``cam_fn(x, targets)``: x float ``dtype`` (B, 3, H, W) in [0, 1], channels_last; ``targets`` is the
    labels (B,) when ``settings.target == "label"``, else None (cam_fn uses its argmax prediction);
    returns raw CAMs (B, h, w). Stats: important_fraction (over all N*C*H*W levels), degenerate
    (count of images), seconds, n.
    """
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
        raise FastpartError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {tuple(images.shape)}")
    n, height, width, _ = images.shape
    if labels.shape != (n,):
        raise FastpartError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    if batch_size <= 0:
        raise FastpartError(f"batch size must be positive, got {batch_size}")
    from tqdm import tqdm

    device = images.device
    _synchronize(device)
    start = time.perf_counter()
    levels = torch.empty((n, settings.channels, height, width), dtype=torch.uint8, device=device)
    important = torch.zeros((), dtype=torch.int64, device=device)
    degenerate = torch.zeros((), dtype=torch.int64, device=device)
    for s in tqdm(range(0, n, batch_size), desc="masks", disable=not progress, leave=False, mininterval=1.0):
        batch = images[s : s + batch_size]
        x = batch.permute(0, 3, 1, 2).to(dtype).div_(255).contiguous(memory_format=torch.channels_last)
        targets = labels[s : s + batch_size].to(device) if settings.target == "label" else None
        cams = cam_fn(x, targets)
        if cams.ndim != 3 or cams.shape[0] != batch.shape[0]:
            raise FastpartError(f"cam_fn returned {tuple(cams.shape)} for a batch of {batch.shape[0]} images")
        lv, deg = eps_levels(cams.detach(), (height, width), settings)
        levels[s : s + batch.shape[0]] = lv
        important += lv.sum(dtype=torch.int64)
        degenerate += deg.sum(dtype=torch.int64)
    _synchronize(device)
    total = levels.numel()
    stats = {
        "important_fraction": float(important.item()) / total if total else 0.0,
        "degenerate": int(degenerate.item()),
        "seconds": time.perf_counter() - start,
        "n": int(n),
    }
    return levels, stats


__all__ = [
    "INTERPOLATIONS",
    "MASK_MODES",
    "TARGETS",
    "MaskSettings",
    "compute_split_levels",
    "eps_levels",
    "jet_indices",
    "jet_table",
    "pil_resample_taps",
    "pil_resize",
    "refresh_epochs",
    "torchcam_normalize",
]
