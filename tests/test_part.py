"""PART end to end on the generated shapes dataset: it learns, and its masks find the objects.

The shapes dataset stores each image's ground-truth object mask, so the important pixels that
PART's GradCAM masks select can be compared with where the object really is. The budget is scaled
down (eps 2/255 for important pixels, 1/255 for the rest) so that a CPU run of a few epochs learns.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fastpart.cli import main
from fastpart.loader import read_split
from fastpart.part import MaskCache

COMMON = ["--dataset", "shapes", "--model", "resnet18_cifar_w8", "--eps", str(2 / 255), "--eps-low", str(1 / 255),
          "--alpha", str(1 / 255), "--batch-size", "32", "--lr", "0.02", "--steps", "1", "--eval-steps", "5", "--seed", "0"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    assert main(["convert", "shapes", "--n-train", "4000", "--n-test", "500", "--out", str(root), "--format", "npz"]) == 0
    return root


@pytest.fixture(scope="module")
def part_run(data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("part")
    assert main(["train", *COMMON, "--method", "part", "--epochs", "6", "--burn-in", "2", "--mask-freq", "1",
                 "--milestones", "6", "--data-dir", str(data_dir), "--out", str(out)]) == 0
    return out


def history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_part_learns(part_run):
    h = history(part_run)
    assert [r["phase"] for r in h] == ["burn-in"] * 2 + ["masked"] * 4
    assert h[-1]["loss"] < 0.5 * h[0]["loss"]
    assert h[-1]["test_natural_acc"] > 0.5  # chance: 0.1 (measured: 0.78)
    assert h[-1]["test_pgd5_acc"] > 0.3


@pytest.mark.slow
def test_masks_are_refreshed_on_schedule(part_run):
    h = history(part_run)
    refreshed = [r["epoch"] for r in h if "mask_seconds" in r]
    assert refreshed == [3, 4, 5, 6]  # end of the burn-in, then every epoch
    for r in h[2:]:
        assert 0.05 < r["important_fraction"] < 0.5 and r["degenerate_maps"] == 0 and not r["mask_reused"]
    assert len(list((part_run / "masks").glob("*.masks"))) == 1


@pytest.mark.slow
def test_important_pixels_overlap_the_objects(part_run, data_dir):
    """IoU of the cached important-pixel mask with the ground-truth object mask, against chance."""
    state = torch.load(part_run / "checkpoint.pt", weights_only=True)
    levels = MaskCache(part_run / "masks").load(state["mask_key"])[:, 0].bool()
    objects = torch.from_numpy(read_split(data_dir / "shapes" / "train.npz").extras["mask"]).bool()
    intersection = (levels & objects).flatten(1).sum(1).float()
    union = (levels | objects).flatten(1).sum(1).float()
    iou = (intersection / union).mean().item()
    p, q = levels.float().mean().item(), objects.float().mean().item()
    chance = p * q / (p + q - p * q)  # expected IoU of independent masks with these coverages
    print(f"IoU {iou:.3f} vs chance {chance:.3f} (important {p:.3f}, object {q:.3f})")
    assert iou > 0.2 and iou > 2 * chance  # measured: IoU 0.33-0.45 vs chance 0.10


@pytest.mark.slow
@pytest.mark.parametrize("method", ["part-trades", "part-mart"])
def test_part_trades_and_part_mart_train(method, data_dir, tmp_path):
    assert main(["train", *COMMON, "--method", method, "--epochs", "2", "--burn-in", "1", "--mask-freq", "1",
                 "--train-n", "800", "--eval-n", "100", "--data-dir", str(data_dir), "--out", str(tmp_path)]) == 0
    h = history(tmp_path)
    assert [r["phase"] for r in h] == ["burn-in", "masked"]
    assert all(0 < r["loss"] < 50 for r in h)
    assert 0.05 < h[1]["important_fraction"] < 0.5 and h[1]["degenerate_maps"] == 0


@pytest.mark.slow
def test_per_batch_masks_without_cache(data_dir, tmp_path):
    assert main(["train", *COMMON, "--method", "part", "--epochs", "2", "--burn-in", "1", "--mask-freq", "0",
                 "--train-n", "800", "--eval-n", "64", "--data-dir", str(data_dir), "--out", str(tmp_path)]) == 0
    h = history(tmp_path)
    assert "mask_seconds" not in h[1] and 0.0 < h[1]["important_fraction"] < 1.0
    assert not (tmp_path / "masks").exists() or not list((tmp_path / "masks").glob("*.masks"))
