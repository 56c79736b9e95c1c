"""Tests for fastpart.models: the registered CIFAR networks, the factory and CAM-layer lookup."""

from __future__ import annotations

import pytest
import timm
import torch
from pytorch_grad_cam import GradCAM

from fastpart.errors import FastpartError
from fastpart.models import MODELS, ModelError, WideResNet, create_model, find_cam_layer

X = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv(i: int, o: int, k: int) -> int:
    return i * o * k * k


def resnet18_count(width: int, classes: int) -> int:
    total, planes = conv(3, width, 3) + 2 * width, width
    for i in range(4):
        out = width * 2**i
        total += conv(planes, out, 3) + conv(out, out, 3) + 4 * out
        if i:
            total += conv(planes, out, 1) + 2 * out
        total += 2 * conv(out, out, 3) + 4 * out
        planes = out
    return total + planes * classes + classes


def wrn_count(depth: int, widen: int, classes: int) -> int:
    n, ch = (depth - 4) // 6, (16, 16 * widen, 32 * widen, 64 * widen)
    total = conv(3, 16, 3)
    for cin, cout in zip(ch, ch[1:]):
        total += 2 * cin + conv(cin, cout, 3) + 2 * cout + conv(cout, cout, 3) + conv(cin, cout, 1)
        total += (n - 1) * (4 * cout + 2 * conv(cout, cout, 3))
    return total + 2 * ch[3] + ch[3] * classes + classes


def test_registry() -> None:
    assert {"resnet18_cifar", "resnet18_cifar_w8", "resnet18_cifar_w16", "wrn34_10", "wrn16_2"} <= set(MODELS)
    assert all(timm.is_model(name) for name in MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_forward_contract(name: str) -> None:
    model = timm.create_model(name, num_classes=7).eval()
    assert model.num_classes == 7 and model.get_classifier() is model.classifier
    assert isinstance(model.classifier, torch.nn.Linear) and model.classifier.out_features == 7
    assert find_cam_layer(model) is model.cam_layer
    captured = []
    handle = model.cam_layer.register_forward_hook(lambda m, i, o: captured.append(o.clone()))
    with torch.no_grad():
        logits = model(X)
        features = model.forward_features(X)
        assert torch.equal(logits, model.forward_head(features))
    handle.remove()
    assert logits.shape == (2, 7)
    size = 8 if isinstance(model, WideResNet) else 4
    assert captured[0].shape == (2, model.num_features, size, size) == features.shape
    if isinstance(model, WideResNet):
        with torch.no_grad():
            assert torch.allclose(features, model.relu(model.bn1(captured[0])))
    else:
        assert torch.equal(features, captured[0])


@pytest.mark.parametrize("name", MODELS)
def test_channels_last_same_logits(name: str) -> None:
    model = timm.create_model(name, num_classes=10).eval()
    with torch.no_grad():
        dense = model(X)
        model = model.to(memory_format=torch.channels_last)
        torch.testing.assert_close(model(X.to(memory_format=torch.channels_last)), dense, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_same_seed_same_weights(name: str) -> None:
    torch.manual_seed(0)
    a = timm.create_model(name).state_dict()
    torch.manual_seed(0)
    b = timm.create_model(name).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_parameter_counts() -> None:
    assert resnet18_count(64, 10) == 11_173_962
    assert n_params(timm.create_model("resnet18_cifar", num_classes=10)) == 11_173_962
    assert n_params(timm.create_model("resnet18_cifar_w8", num_classes=3)) == resnet18_count(8, 3)
    assert n_params(timm.create_model("resnet18_cifar", width=16)) == resnet18_count(16, 10)
    assert n_params(timm.create_model("wrn34_10", num_classes=10)) == wrn_count(34, 10, 10) == 46_160_474
    assert n_params(timm.create_model("wrn16_2", num_classes=7)) == wrn_count(16, 2, 7)
    assert n_params(timm.create_model("wrn16_2", depth=22, widen=4)) == wrn_count(22, 4, 10)


def test_normalisation_inside_model() -> None:
    mean, std = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
    torch.manual_seed(0)
    inside = timm.create_model("resnet18_cifar_w8", mean=mean, std=std).eval()
    torch.manual_seed(0)
    outside = timm.create_model("resnet18_cifar_w8").eval()
    normalised = (X - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(inside(X), outside(normalised))
    assert set(inside.state_dict()) - set(outside.state_dict()) == {"normalize.mean", "normalize.std"}


def test_timm_kwargs() -> None:
    with pytest.raises(ValueError, match="pretrained"):
        timm.create_model("resnet18_cifar", pretrained=True)
    with pytest.raises(FastpartError, match="pretrained"):
        create_model("wrn16_2", 10, pretrained=True)
    with pytest.raises(ModelError, match="in_chans"):
        timm.create_model("wrn16_2", in_chans=1)
    with pytest.raises(ModelError, match="drop_rate"):
        timm.create_model("resnet18_cifar_w8", drop_rate=0.5)
    assert timm.create_model("resnet18_cifar_w8", drop_rate=0.0, in_chans=3) is not None
    wrn = timm.create_model("wrn16_2", drop_rate=0.3)
    assert wrn.block2.layer[0].drop_rate == 0.3


def test_create_model_factory() -> None:
    assert create_model("resnet18_cifar_w8", 5).num_classes == 5
    with pytest.raises(FastpartError, match="resnet18_cifar") as info:
        create_model("no_such_net", 10)
    assert "\n" not in str(info.value)


def test_find_cam_layer_on_timm_resnet() -> None:
    model = create_model("resnet18", 10, pretrained=False)
    assert find_cam_layer(model) is model.layer4
    with pytest.raises(FastpartError):
        find_cam_layer(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, 2)))


@pytest.mark.parametrize("name", ["resnet18_cifar_w8", "wrn16_2"])
def test_gradcam_and_input_gradient(name: str) -> None:
    model = timm.create_model(name).eval()
    with GradCAM(model=model, target_layers=[find_cam_layer(model)]) as cam:
        maps = cam(input_tensor=X, targets=None)
    assert maps.shape == (2, 32, 32) and torch.isfinite(torch.from_numpy(maps)).all()
    x = X.clone().requires_grad_(True)
    model(x).logsumexp(1).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_eval_mode_restores_every_submodule_flag():
    from fastpart.models import eval_mode

    model = create_model("resnet18_cifar_w8", num_classes=10).train()
    model.layer1.eval()  # a mixed state, e.g. frozen batch norm in one stage
    before = {name: m.training for name, m in model.named_modules()}
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert {name: m.training for name, m in model.named_modules()} == before
    with pytest.raises(RuntimeError):
        with eval_mode(model):
            raise RuntimeError("boom")
    assert {name: m.training for name, m in model.named_modules()} == before
