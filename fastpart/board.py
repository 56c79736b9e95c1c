"""TensorBoard output of a run (``fastpart train --tensorboard``): ``<run>/tensorboard/`` event files.

Per epoch, every number of the epoch's metrics.jsonl line as a scalar under its own name (``loss``,
``train_adv_acc``, ``test_pgd20_acc``, ...; booleans as 0/1), at step = the epoch. At every mask
refresh, the panel of PART's mask on a few fixed training images: the image, its CAM (min-max scaled)
and the important-pixel mask (white: budget eps, black: eps_low), as ``masks/image``, ``masks/cam`` and
``masks/mask``. Needs the ``tensorboard`` package (``pip install 'fastpart[tensorboard]'``); written by
the process that writes the run folder (rank 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fastpart.errors import FastpartError
from fastpart.loader import to_model_input
from fastpart.part import CamFn, MaskSettings, cam_targets, display_cam, eps_levels

__all__ = ["BOARD", "PANEL_IMAGES", "Board"]

BOARD = "tensorboard"  # the folder in the run folder
PANEL_IMAGES = 8


class Board:
    """A ``SummaryWriter`` on ``folder``, with the two things training logs."""

    def __init__(self, folder: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise FastpartError("--tensorboard needs the tensorboard package: pip install 'fastpart[tensorboard]'") from None
        self.writer = SummaryWriter(log_dir=str(folder))

    def log_epoch(self, record: dict[str, Any]) -> None:
        epoch = int(record["epoch"])
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, float(value), epoch)
        self.writer.flush()

    def log_masks(self, cams_of: CamFn, images: torch.Tensor, labels: torch.Tensor, settings: MaskSettings,
                  epoch: int) -> None:
        """``cams_of(x, labels or None)``: the run's CAM function; images uint8 (B, H, W, 3)."""
        x = to_model_input(images[:PANEL_IMAGES], torch.float32)
        cams = cams_of(x.contiguous(memory_format=torch.channels_last),
                       cam_targets(settings, labels[:PANEL_IMAGES])).float()
        size = tuple(x.shape[-2:])
        levels, _ = eps_levels(cams, size, settings)
        shown = display_cam(cams, size).unsqueeze(1)
        self.writer.add_images("masks/image", x.contiguous().cpu(), epoch)
        self.writer.add_images("masks/cam", shown.cpu(), epoch)
        self.writer.add_images("masks/mask", levels.float().amax(1, keepdim=True).cpu(), epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
