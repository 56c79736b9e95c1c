"""Models fastpart did not define: any timm name, torchvision names, a misspelt name, and a foreign state dict
evaluated with its input normalisation (timm and torchvision models take normalised inputs; fastpart wraps them
so that attacks still work on images in [0, 1])."""

from __future__ import annotations

import json

import pytest
import torch

from fastpart.cli import main
from fastpart.errors import FastpartError
from fastpart.models import Normalized, create_model, find_cam_layer


def test_a_misspelt_model_name_gets_the_closest_names():
    with pytest.raises(FastpartError, match=r"unknown model 'resnet81' \(did you mean resnet18\?\)"):
        create_model("resnet81", num_classes=10)
    with pytest.raises(FastpartError, match=r"unknown torchvision model 'resnet81' \(did you mean resnet18\?\)"):
        create_model("torchvision:resnet81", num_classes=10)


def test_torchvision_names_build_torchvision_models():
    import torchvision

    forced = create_model("torchvision:resnet18", num_classes=7)
    assert isinstance(forced, torchvision.models.ResNet) and forced.fc.out_features == 7
    only_there = create_model("squeezenet1_0", num_classes=5)  # a name timm does not have
    assert isinstance(only_there, torchvision.models.SqueezeNet)
    assert create_model("resnet18", num_classes=3).__module__.startswith("timm")  # timm's where both have it


def test_normalized_wraps_a_model_without_changing_its_weights_or_cam_layer():
    torch.manual_seed(0)
    inner = create_model("test_resnet", num_classes=4).eval()  # timm's smallest ResNet
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    wrapped = Normalized(inner, mean, std).eval()
    x = torch.rand(2, 3, 32, 32)
    expected = inner((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    torch.testing.assert_close(wrapped(x), expected)
    assert find_cam_layer(wrapped) is find_cam_layer(inner)
    assert set(wrapped.state_dict()) == {f"model.{k}" for k in inner.state_dict()}  # the statistics are not weights


def test_eval_of_a_timm_state_dict_with_its_normalisation(tmp_path, capsys):
    """It ended in a TypeError traceback (the mean and std went to timm's constructor)."""
    assert main(["convert", "shapes", "--n-train", "16", "--n-test", "16", "--format", "npz", "--out",
                 str(tmp_path / "data")]) == 0
    torch.manual_seed(0)
    torch.save(create_model("resnet10t", num_classes=10).state_dict(), tmp_path / "zoo.pt")
    assert main(["eval", "--checkpoint", str(tmp_path / "zoo.pt"), "--model", "resnet10t", "--dataset", "shapes",
                 "--data-dir", str(tmp_path / "data"), "--normalize", "dataset", "--attacks", "natural,pgd2",
                 "--device", "cpu", "--out", str(tmp_path / "eval")]) == 0
    results = json.loads((tmp_path / "eval" / "eval.json").read_text())["results"]
    assert results["natural"]["n"] == 16 and 0 <= results["pgd2"]["accuracy"] <= results["natural"]["accuracy"]
