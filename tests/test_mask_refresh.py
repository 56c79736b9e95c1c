"""Whole-split mask refreshes: reused when the key matches, rebuilt when it changes, same with either CAM backend."""

from __future__ import annotations

import pytest
import torch

from fastpart.config import TrainConfig
from fastpart.errors import FastpartError
from fastpart.models import create_model
from fastpart.data.shapes import generate_split
from fastpart.part import MaskCache, MaskPlan, SplitImages, refresh_masks
from fastpart.resolve import mask_plan


def part_cfg(**changes) -> MaskPlan:
    """The mask plan of a PART run with these settings."""
    return mask_plan(TrainConfig(method="part", batch_size=32, precision="fp32", **changes))


def setup(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet18_cifar_w8", num_classes=10).eval()
    for module in model.modules():  # non-trivial batch-norm statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    images, labels, _ = generate_split(96, seed=1)
    return model, torch.from_numpy(images), torch.from_numpy(labels), MaskCache(tmp_path / "masks")


def test_refresh_is_reused_for_the_same_key_and_rebuilt_for_another(tmp_path):
    model, images, labels, cache = setup(tmp_path)
    cfg = part_cfg()
    first = refresh_masks(model, SplitImages.from_tensors(images, labels), cfg, cache, "sha256:data")
    again = refresh_masks(model, SplitImages.from_tensors(images, labels), cfg, cache, "sha256:data")
    assert not first.stats["reused"] and again.stats["reused"] and again.key == first.key
    assert torch.equal(first.levels, again.levels)
    assert first.levels.shape == (96, 1, 32, 32) and 0 < first.stats["important_fraction"] < 0.5

    other_tau = refresh_masks(model, SplitImages.from_tensors(images, labels), part_cfg(tau=0.5),
                              cache, "sha256:data")
    assert other_tau.key != first.key and not other_tau.stats["reused"]
    assert other_tau.levels.float().mean() > first.levels.float().mean()
    with torch.no_grad():
        model.classifier.weight.mul_(1.5).add_(0.01)  # the model changed: new masks
    changed = refresh_masks(model, SplitImages.from_tensors(images, labels), cfg, cache, "sha256:data")
    assert changed.key not in (first.key, other_tau.key) and not changed.stats["reused"]
    assert cache.keys() == [changed.key]  # older masks pruned


def test_native_and_grad_cam_backends_give_the_same_masks(tmp_path):
    model, images, labels, cache = setup(tmp_path)
    native = refresh_masks(model, SplitImages.from_tensors(images, labels), part_cfg(), cache, "a")
    oracle = refresh_masks(model, SplitImages.from_tensors(images, labels), part_cfg(cam_backend="grad-cam"),
                           MaskCache(tmp_path / "oracle"), "a")
    mismatch = (native.levels != oracle.levels).float().mean().item()
    assert mismatch < 1e-3  # only pixels within rounding of the threshold may differ


def test_label_target_differs_from_prediction_target(tmp_path):
    model, images, labels, cache = setup(tmp_path)
    pred = refresh_masks(model, SplitImages.from_tensors(images, labels), part_cfg(), cache, "a")
    label = refresh_masks(model, SplitImages.from_tensors(images, labels), part_cfg(mask_target="label"),
                          cache, "a")
    assert pred.key != label.key and not torch.equal(pred.levels, label.levels)


def test_cam_layer_can_be_chosen_by_name(tmp_path):
    model, images, labels, cache = setup(tmp_path)
    default = refresh_masks(model, SplitImages.from_tensors(images, labels), part_cfg(), cache, "a")
    layer3 = refresh_masks(model, SplitImages.from_tensors(images, labels), part_cfg(cam_layer="layer3"), cache, "a")
    assert default.key != layer3.key and not torch.equal(default.levels, layer3.levels)
    with pytest.raises(FastpartError, match="not a module of the model; top-level modules: .*layer4"):
        refresh_masks(model, SplitImages.from_tensors(images, labels), part_cfg(cam_layer="layer9"), cache, "a")
