"""PART's pixel masks: class activation maps -> per-pixel eps *levels* (uint8, 1 = important pixel -> budget
``eps``, 0 -> ``eps_low``), for a batch (``eps_levels``) or a whole split (``compute_split_levels``).

This module never computes a CAM itself: it receives CAM tensors or a CAM function (``CamFn``, built by
``fastpart.part.plan``), so it depends on neither the models nor ``fastpart.part.cam``.

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

* ``reference``: the released code's procedure (``fastpart.part.released``): torchcam 0.3.2's min-max
  normalisation (no epsilon), PIL bicubic resampling, squaring, matplotlib's 'jet' table, standardisation
  over the 3*H*W RGB values; three levels per pixel, one per colour channel: C = 3. Degenerate maps (flat,
  non-finite, or a one-colour jet image) are flagged as in paper mode, but get level 0 everywhere
  (eps_low), as the released code's NaN gives them.

Levels become the per-element budget of mask-weighted PGD as ``fastpart.budgets.EpsLevels(levels, eps,
eps_low)``. ``cam_targets`` is the one rule for the class a CAM explains (the label when
``target == "label"``, else the prediction); ``display_cam`` the one way a CAM is shown (upsampled
bilinearly and min-max scaled to [0, 1]: the report's figures, TensorBoard).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from fastpart.config import INTERPOLATIONS, MASK_MODES, TARGETS
from fastpart.errors import FastpartError
from fastpart.loader import to_model_input
from fastpart.part.cam import CamFn

__all__ = ["MaskSettings", "cam_targets", "compute_split_levels", "display_cam", "eps_levels", "nonfinite_rows",
           "standardise"]


@dataclass(frozen=True)
class MaskSettings:
    """How CAMs become masks. ``target``: the CAM's class, the prediction (``pred``) or the label;
    ``cam``/``backend``/``layer``: the CAM method, its implementation (``fastpart.part.cam.CAM_BACKENDS``) and
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


def cam_targets(settings: MaskSettings, labels: torch.Tensor | None) -> torch.Tensor | None:
    """The classes a CAM explains: the labels when ``settings.target == "label"`` (then they must be given),
    else None (the CAM explains the prediction of its own forward pass)."""
    if settings.target != "label":
        return None
    if labels is None:
        raise FastpartError("mask target 'label' needs the labels y")
    return labels


def display_cam(cams: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Raw CAMs (B, h, w) -> (B, H, W) float32 for display: upsampled bilinearly, min-max scaled to [0, 1]
    per map (a flat map shows as 0)."""
    shown = F.interpolate(cams.float().unsqueeze(1), size=size, mode="bilinear", align_corners=False)[:, 0]
    lo = shown.flatten(1).amin(1).view(-1, 1, 1)
    hi = shown.flatten(1).amax(1).view(-1, 1, 1)
    return (shown - lo) / torch.where(hi > lo, hi - lo, torch.ones_like(hi))


# ---------------------------------------------------------------------------------------------
# CAM -> levels
# ---------------------------------------------------------------------------------------------


def _check_cams(cams: torch.Tensor) -> None:
    if not isinstance(cams, torch.Tensor) or cams.ndim != 3:
        raise FastpartError(f"CAMs must be a (B, h, w) tensor, got {getattr(cams, 'shape', type(cams))}")
    if not cams.is_floating_point():
        raise FastpartError(f"CAMs must be floating point, got {cams.dtype}")


def nonfinite_rows(maps: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> bool (B,): some value is NaN or infinite."""
    return ~torch.isfinite(maps).flatten(1).all(dim=1)


def standardise(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of (B, ...): z = (v - mean) / std with the population std (np.std, ddof = 0); and std."""
    flat = values.flatten(1)
    mean = flat.mean(dim=1, keepdim=True)
    std = (flat - mean).square().mean(dim=1, keepdim=True).sqrt()
    z = (flat - mean) / torch.where(std > 0, std, torch.ones_like(std))
    return z.view_as(values), std.view(-1)


@torch.no_grad()
def _paper_levels(cams: torch.Tensor, size: tuple[int, int], settings: MaskSettings) -> tuple[torch.Tensor, torch.Tensor]:
    maps = cams.to(torch.promote_types(cams.dtype, torch.float32))
    nonfinite = nonfinite_rows(maps)
    safe = torch.where(torch.isfinite(maps), maps, torch.zeros_like(maps))
    lo = safe.flatten(1).amin(dim=1)
    hi = safe.flatten(1).amax(dim=1)
    flat_map = hi == lo
    span = torch.where(flat_map, torch.ones_like(hi), hi - lo)
    scaled = (safe - lo.view(-1, 1, 1)) / span.view(-1, 1, 1)  # in [0, 1]; z is unchanged by this
    up = F.interpolate(scaled.unsqueeze(1), size=size, mode=settings.interpolation, align_corners=False)
    z, std = standardise(up)
    degenerate = nonfinite | flat_map | (std == 0)
    important = z > settings.tau
    important |= degenerate.view(-1, 1, 1, 1)
    return important.to(torch.uint8), degenerate


def eps_levels(cams: torch.Tensor, size: tuple[int, int], settings: MaskSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw CAMs (B, h, w) -> (levels uint8 (B, C, H, W): 1 = important (eps), 0 = eps_low; degenerate bool (B,)).

    C = 1 in paper mode, 3 in reference mode (see the module docstring for both procedures).
    Degenerate maps are flagged; they get level 1 everywhere in paper mode (eps everywhere, plain AT), level 0
    in reference mode (eps_low everywhere, as the released code).
    """
    _check_cams(cams)
    size = (int(size[0]), int(size[1]))
    if size[0] <= 0 or size[1] <= 0:
        raise FastpartError(f"mask size must be positive, got {size}")
    if settings.mode == "paper":
        return _paper_levels(cams, size, settings)
    from fastpart.part.released import reference_levels  # (it builds on this module's standardise)

    return reference_levels(cams, size, settings)


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
    device = images.device
    _synchronize(device)
    start = time.perf_counter()
    levels = torch.empty((n, settings.channels, height, width), dtype=torch.uint8, device=device)
    important = torch.zeros((), dtype=torch.int64, device=device)
    degenerate = torch.zeros((), dtype=torch.int64, device=device)
    for s in tqdm(range(0, n, batch_size), desc="masks", disable=not progress, leave=False, mininterval=1.0):
        batch = images[s : s + batch_size]
        x = to_model_input(batch, dtype).contiguous(memory_format=torch.channels_last)
        cams = cam_fn(x, cam_targets(settings, labels[s : s + batch_size].to(device)))
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

