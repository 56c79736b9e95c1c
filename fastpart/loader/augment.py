"""Seeded randomness and batched augmentation on the device, shared by every loader source.

``stream_seed(seed, epoch, purpose)`` gives one independent seeded stream per purpose, so any epoch can be
replayed alone (``epoch_order``: the sample order of an epoch). ``crop_flip_coordinates`` draws a random
crop after zero padding and a horizontal flip per sample, and ``crop_flip`` applies them to images and to
any per-sample tensor laid out (B, H, W, ...), so an auxiliary tensor (PART's masks) gets exactly its
image's crop and flip. ``to_model_input`` is the one conversion of uint8 NHWC images to the model's input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Augment", "aux_from_nhwc", "aux_to_nhwc", "crop_flip", "crop_flip_coordinates", "epoch_order",
           "stream_seed", "to_model_input"]


@dataclass(frozen=True)
class Augment:
    """Random crop after zero padding by ``crop_padding`` pixels (0: no crop) and random horizontal flip."""

    crop_padding: int = 4
    flip: bool = True

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or self.flip


def stream_seed(seed: int, epoch: int, purpose: str) -> int:
    words = [seed, epoch] + list(purpose.encode())
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def epoch_order(num_samples: int, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    """The sample order of one epoch (CPU int64); identical for every source."""
    if not shuffle:
        return torch.arange(num_samples)
    generator = torch.Generator().manual_seed(stream_seed(seed, epoch, "order"))
    return torch.randperm(num_samples, generator=generator)


def crop_flip_coordinates(
    batch: int, height: int, width: int, augment: Augment, generator: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample source rows (B, H) and columns (B, W) into the padded image; flips reverse the columns."""
    span = 2 * augment.crop_padding + 1
    dy = torch.randint(0, span, (batch, 1), generator=generator, device=device)
    dx = torch.randint(0, span, (batch, 1), generator=generator, device=device)
    flip = torch.rand((batch, 1), generator=generator, device=device) < 0.5 if augment.flip else None
    rows = dy + torch.arange(height, device=device)
    ramp = torch.arange(width, device=device)
    cols = dx + (torch.where(flip, ramp.flip(0), ramp) if flip is not None else ramp)
    return rows, cols


def crop_flip(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, padding: int) -> torch.Tensor:
    """Gather ``x`` (B, H, W, ...) at padded coordinates ``rows``/``cols``; pixels outside become 0."""
    batch = x.shape[0]
    if padding:
        pad = [0, 0] * (x.dim() - 3) + [padding, padding, padding, padding]
        x = F.pad(x, pad)
    b = torch.arange(batch, device=x.device)[:, None, None]
    return x[b, rows[:, :, None], cols[:, None, :]]


def to_model_input(images_nhwc: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [0, 1], channels_last in memory (the permute is a view)."""
    return images_nhwc.permute(0, 3, 1, 2).to(dtype).div_(255)


def aux_to_nhwc(aux: torch.Tensor) -> torch.Tensor:
    """(B, ..., H, W) -> (B, H, W, ...) so that it shares the image's gather."""
    return aux.movedim((-2, -1), (1, 2)) if aux.dim() > 3 else aux


def aux_from_nhwc(aux: torch.Tensor, dims: int) -> torch.Tensor:
    return aux.movedim((1, 2), (-2, -1)).contiguous() if dims > 3 else aux
