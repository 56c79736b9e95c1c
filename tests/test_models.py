"""Tests for fastpart.models: the registered CIFAR networks, the factory and CAM-layer lookup."""

from __future__ import annotations

import pytest
import timm
import torch
from pytorch_grad_cam import GradCAM

from fastpart.errors import FastpartError
from fastpart.models import (CIFAR10_MEAN, CIFAR10_STD, MODELS, DMWideResNet, ModelError, Normalize, WideResNet,
                             create_model, find_cam_layer)

X = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
# The wide networks run forwards narrowed (same class and code path, fewer channels); at full size they are
# built here on the meta device only (test_robustbench_models.py runs RobustBench's at full size, once each).
NARROW = {"wrn34_10": {"widen": 2}, "wrn28_10": {"widen": 2}, "wrn34_20": {"widen": 2}, "wrn70_16": {"widen": 1}}
# Parameters at full size for 10 classes (RobustBench's own classes give the same: test_robustbench_models.py)
# and the figures published for these architectures.
FULL_SIZE_PARAMS = {"preact_resnet18": (11_171_146, 11.17e6), "wrn28_10": (36_479_194, 36.5e6),
                    "wrn34_20": (184_531_674, 184.5e6), "wrn70_16": (266_796_506, 266.8e6)}


def small(name: str, **kwargs) -> torch.nn.Module:
    return timm.create_model(name, **{**NARROW.get(name, {}), **kwargs})


def randomised_bn(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random BN statistics and affines, so BN layers are not identities and outputs are not degenerate."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(m.num_features, generator=g))
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.num_features, generator=g))
    return model.eval()


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


def preact_resnet18_count(width: int, classes: int) -> int:
    """Stem conv without BN; per block BN(in) conv BN(out) conv, a bare 1x1 conv shortcut where needed."""
    total, planes = conv(3, width, 3), width
    for i in range(4):
        out = width * 2**i
        total += 2 * planes + conv(planes, out, 3) + 2 * out + conv(out, out, 3) + (conv(planes, out, 1) if i else 0)
        total += 4 * out + 2 * conv(out, out, 3)
        planes = out
    return total + planes * classes + classes


def wrn_count(depth: int, widen: int, classes: int) -> int:
    """TRADES WRN; DeepMind's WRN has the same parameters (another layout, the same shapes)."""
    n, ch = (depth - 4) // 6, (16, 16 * widen, 32 * widen, 64 * widen)
    total = conv(3, 16, 3)
    for cin, cout in zip(ch, ch[1:]):
        total += 2 * cin + conv(cin, cout, 3) + 2 * cout + conv(cout, cout, 3) + conv(cin, cout, 1)
        total += (n - 1) * (4 * cout + 2 * conv(cout, cout, 3))
    return total + 2 * ch[3] + ch[3] * classes + classes


def test_registry() -> None:
    assert {"resnet18_cifar", "resnet18_cifar_w8", "resnet18_cifar_w16", "wrn34_10", "wrn16_2",
            "preact_resnet18", "wrn28_10", "wrn34_20", "wrn70_16"} <= set(MODELS)
    assert all(timm.is_model(name) for name in MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_every_name_builds_at_full_size_like_timm(name: str) -> None:
    """As timm would: by name, with num_classes and the normalisation (on the meta device: no memory, no time)."""
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=7, mean=CIFAR10_MEAN, std=CIFAR10_STD)
        via_factory = create_model(name, 7)
    for m in (model, via_factory):
        assert isinstance(m.classifier, torch.nn.Linear) and m.classifier.out_features == m.num_classes == 7
        assert m.classifier.in_features == m.num_features and m.pretrained_cfg["num_classes"] == 7
        assert any(sub is m.cam_layer for sub in m.modules()) and find_cam_layer(m) is m.cam_layer
        assert any(isinstance(sub, torch.nn.Conv2d) for sub in m.cam_layer.modules())
    assert isinstance(model.normalize, Normalize) and isinstance(via_factory.normalize, torch.nn.Identity)
    assert model.normalize.mean.shape == model.normalize.std.shape == (1, 3, 1, 1)
    with pytest.raises(ModelError, match="mean and std"):
        timm.create_model(name, mean=CIFAR10_MEAN)


@pytest.mark.parametrize("name", MODELS)
def test_forward_contract(name: str) -> None:
    model = randomised_bn(small(name, num_classes=7), 0)
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
    size = 8 if isinstance(model, (WideResNet, DMWideResNet)) else 4
    assert captured[0].shape == (2, model.num_features, size, size) == features.shape
    with torch.no_grad():
        if isinstance(model, WideResNet):
            assert torch.allclose(features, model.relu(model.bn1(captured[0])))
        elif isinstance(model, DMWideResNet):
            assert torch.allclose(features, model.relu(model.batchnorm(captured[0])))
        else:
            assert torch.equal(features, captured[0])


@pytest.mark.parametrize("name", MODELS)
def test_gap_linear_declared_exactly_where_true(name: str) -> None:
    """``cam_layer_feeds_gap_linear`` lets GradCAM skip the backward pass: it must hold exactly where declared
    (dF_c/dA = W[c] / (h w) everywhere) and is left off where it does not (the gradient varies over space)."""
    model = randomised_bn(small(name), 1)
    captured = []
    handle = model.cam_layer.register_forward_hook(lambda m, i, o: captured.append(o) or o.retain_grad())
    logits = model(X)
    handle.remove()
    logits[:, 3].sum().backward()
    grad = captured[0].grad
    h, w = grad.shape[-2:]
    constant = model.classifier.weight[3].detach().view(1, -1, 1, 1).expand_as(grad) / (h * w)
    if model.cam_layer_feeds_gap_linear:
        torch.testing.assert_close(grad, constant, rtol=1e-5, atol=1e-9)
    else:
        assert not torch.allclose(grad, grad.mean((2, 3), keepdim=True).expand_as(grad), rtol=1e-3, atol=0)


@pytest.mark.parametrize("name", MODELS)
def test_channels_last_same_logits(name: str) -> None:
    model = small(name, num_classes=10).eval()
    with torch.no_grad():
        dense = model(X)
        model = model.to(memory_format=torch.channels_last)
        torch.testing.assert_close(model(X.to(memory_format=torch.channels_last)), dense, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_same_seed_same_weights(name: str) -> None:
    torch.manual_seed(0)
    a = small(name).state_dict()
    torch.manual_seed(0)
    b = small(name).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_parameter_counts() -> None:
    assert resnet18_count(64, 10) == 11_173_962
    assert n_params(timm.create_model("resnet18_cifar", num_classes=10)) == 11_173_962
    assert n_params(timm.create_model("resnet18_cifar_w8", num_classes=3)) == resnet18_count(8, 3)
    assert n_params(timm.create_model("resnet18_cifar", width=16)) == resnet18_count(16, 10)
    assert n_params(timm.create_model("wrn34_10", num_classes=10)) == wrn_count(34, 10, 10) == 46_160_474
    assert n_params(timm.create_model("wrn16_2", num_classes=7)) == wrn_count(16, 2, 7)
    assert n_params(timm.create_model("wrn16_2", depth=22, widen=4)) == wrn_count(22, 4, 10)
    assert n_params(timm.create_model("preact_resnet18", num_classes=3, width=8)) == preact_resnet18_count(8, 3)
    assert n_params(timm.create_model("wrn70_16", num_classes=7, depth=22, widen=2)) == wrn_count(22, 2, 7)


@pytest.mark.parametrize("name", sorted(FULL_SIZE_PARAMS))
def test_full_size_parameter_counts(name: str) -> None:
    exact, published = FULL_SIZE_PARAMS[name]
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=10)
    assert n_params(model) == exact and abs(exact - published) <= 0.01 * published
    counted = {"preact_resnet18": lambda: preact_resnet18_count(64, 10), "wrn28_10": lambda: wrn_count(28, 10, 10),
               "wrn34_20": lambda: wrn_count(34, 20, 10), "wrn70_16": lambda: wrn_count(70, 16, 10)}[name]()
    assert counted == exact


def test_sub_block1_is_an_unused_copy_of_block1() -> None:
    torch.manual_seed(0)
    model = randomised_bn(timm.create_model("wrn28_10", widen=2, sub_block1=True), 2)
    plain = timm.create_model("wrn28_10", widen=2)
    state = model.state_dict()
    extra = {k for k in state if k.startswith("sub_block1.")}
    assert {k.removeprefix("sub_block1.") for k in extra} == {k.removeprefix("block1.") for k in state
                                                              if k.startswith("block1.")}
    assert n_params(model) - n_params(plain) == n_params(model.block1)
    plain.load_state_dict({k: v for k, v in state.items() if k not in extra}, strict=True)
    with torch.no_grad():
        assert torch.equal(model(X), plain.eval()(X))
    assert n_params(timm.create_model("wrn34_10", sub_block1=True)) == 48_262_586  # TRADES' own checkpoint layout


def test_normalisation_inside_model() -> None:
    mean, std = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
    normalised = (X - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    for name, in_state_dict in (("resnet18_cifar_w8", True), ("wrn16_2", True), ("preact_resnet18", False),
                                ("wrn28_10", False), ("wrn70_16", False)):
        torch.manual_seed(0)
        inside = small(name, mean=mean, std=std).eval()
        torch.manual_seed(0)
        outside = small(name).eval()
        with torch.no_grad():
            torch.testing.assert_close(inside(X), outside(normalised))
        added = {"normalize.mean", "normalize.std"} if in_state_dict else set()
        assert set(inside.state_dict()) - set(outside.state_dict()) == added, name
        outside.load_state_dict(inside.state_dict(), strict=not in_state_dict)


def test_timm_kwargs() -> None:
    with pytest.raises(ValueError, match="pretrained"):
        timm.create_model("resnet18_cifar", pretrained=True)
    with pytest.raises(FastpartError, match="pretrained"):
        create_model("wrn16_2", 10, pretrained=True)
    with pytest.raises(ModelError, match="in_chans"):
        timm.create_model("wrn16_2", in_chans=1)
    for name in ("resnet18_cifar_w8", "preact_resnet18", "wrn70_16"):
        with pytest.raises(ModelError, match="drop_rate"):
            timm.create_model(name, drop_rate=0.5)
    with pytest.raises(ModelError, match="6n\\+4"):
        timm.create_model("wrn70_16", depth=20)
    assert timm.create_model("resnet18_cifar_w8", drop_rate=0.0, in_chans=3) is not None
    wrn = timm.create_model("wrn16_2", drop_rate=0.3)
    assert wrn.block2.layer[0].drop_rate == 0.3
    assert isinstance(small("wrn70_16", act_layer=torch.nn.ReLU).layer[1].block[0].relu_0, torch.nn.ReLU)


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


@pytest.mark.parametrize("name, kwargs", [("resnet18_cifar_w8", {}), ("wrn16_2", {}), ("preact_resnet18", {"width": 8}),
                                          ("wrn70_16", {"depth": 16, "widen": 1})])
def test_gradcam_and_input_gradient(name: str, kwargs: dict) -> None:
    model = timm.create_model(name, **kwargs).eval()
    with GradCAM(model=model, target_layers=[find_cam_layer(model)]) as cam:
        maps = cam(input_tensor=X, targets=None)
    assert maps.shape == (2, 32, 32) and torch.isfinite(torch.from_numpy(maps)).all()
    x = X.clone().requires_grad_(True)
    model(x).logsumexp(1).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_eval_mode_restores_every_submodule_flag():
    from fastpart.modes import eval_mode

    model = create_model("resnet18_cifar_w8", num_classes=10).train()
    model.layer1.eval()  # a mixed state, e.g. frozen batch norm in one stage
    before = {name: m.training for name, m in model.named_modules()}
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert {name: m.training for name, m in model.named_modules()} == before
    with pytest.raises(RuntimeError), eval_mode(model):
        raise RuntimeError("boom")
    assert {name: m.training for name, m in model.named_modules()} == before


@pytest.mark.parametrize("name", MODELS)
def test_activation_option_where_the_registry_says(name: str) -> None:
    """fastpart's CIFAR networks take activation="silu": the same state dict, SiLU in every place ReLU was,
    other logits; the others refuse it (and ``fastpart train --activation silu`` refuses them in one line)."""
    from fastpart.models import ACTIVATION_MODELS

    if name not in ACTIVATION_MODELS:
        with pytest.raises(TypeError):
            small(name, num_classes=7, activation="silu")
        return
    torch.manual_seed(0)
    relu = randomised_bn(small(name, num_classes=7), 0)
    silu = small(name, num_classes=7, activation="silu").eval()
    silu.load_state_dict(relu.state_dict())  # strict: the activation holds no weights
    count = lambda m, kind: sum(isinstance(sub, kind) for sub in m.modules())  # noqa: E731
    assert count(silu, torch.nn.SiLU) == count(relu, torch.nn.ReLU) > 0 and count(silu, torch.nn.ReLU) == 0
    assert not torch.allclose(silu(X), relu(X))
    with pytest.raises(ModelError, match="unknown activation"):
        small(name, num_classes=7, activation="gelu")
