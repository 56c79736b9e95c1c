"""fastpart.part.cam: native CAMs against the pytorch-grad-cam oracle (its raw maps and its public output),
the GradCAM = CAM shortcut, side effects, shapes, grad/autocast contexts and errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from support import randomised
from torch import nn

from fastpart.part.cam import (
    CAM_BACKENDS,
    CAM_METHODS,
    GAP_LINEAR_ATTR,
    _grad_cam_library,
    class_activation_maps,
    feeds_gap_linear,
    predicted_targets,
)
from fastpart.errors import FastpartError
from fastpart.models import create_model, find_cam_layer

RTOL, ATOL = 1e-4, 1e-5
SIGNED_XGRADCAM_ATOL = 2e-2
PUBLIC_ATOL = 1e-4
INPUT_SIZE = {"resnet18_cifar_w8": 32, "wrn16_2": 32, "resnet18": 64}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tensors here are tiny: intra-op threads only add contention on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {name: randomised(create_model(name, num_classes=10), seed) for seed, name in enumerate(INPUT_SIZE)}


def images(n: int, size: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def labels(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(seed))


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest |actual - expected| over each map's max (what matters after standardisation)."""
    scale = expected.amax((1, 2), keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    return float(((actual - expected).abs() / scale).max())


def assert_maps_close(actual: torch.Tensor, expected: torch.Tensor, atol: float = ATOL) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype == torch.float32
    scale = expected.amax((1, 2), keepdim=True)
    bound = atol * scale + RTOL * expected.abs()
    assert ((actual - expected).abs() <= bound).all(), f"max relative error {relative_error(actual, expected):.2e}"


def public_form(raw: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """pytorch-grad-cam's post-processing of one layer's raw map: min-max, cv2 resize (w, h), clip, min-max."""
    def scaled(img: np.ndarray, target: tuple[int, int] | None = None) -> np.ndarray:
        img = img - img.min()
        img = img / (1e-7 + img.max())
        return cv2.resize(np.float32(img), target) if target else img

    resized = [np.maximum(scaled(img, size[::-1]), 0) for img in raw.numpy()]
    return np.float32([scaled(img) for img in resized])


def map_tolerance(name: str, method: str) -> float:
    """XGradCAM divides by sum_ij A_k(i,j); WRN's block3 output is signed (pre-BN-ReLU), so that sum can
    be near 0 and float32 summation order alone moves the map: up to 6e-3 of its max seen over 50
    random batches (median 5e-6). Everywhere else the maps agree to ~6e-6."""
    return SIGNED_XGRADCAM_ATOL if (name, method) == ("wrn16_2", "xgradcam") else ATOL


@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("name", list(INPUT_SIZE))
def test_native_matches_the_library(models, name: str, batch: int) -> None:
    model, size = models[name], INPUT_SIZE[name]
    x = images(batch, size, seed=batch)
    predicted = predicted_targets(model, x)
    layer = find_cam_layer(model)
    for method in CAM_METHODS:
        for targets in (None, predicted, labels(batch, seed=batch + 1)):
            native = class_activation_maps(model, x, targets, method)
            raw, public = _grad_cam_library(model, x, targets, method, layer)
            assert native.max() > 0, f"{name} {method}: all-zero maps, the test would be vacuous"
            tolerance = map_tolerance(name, method)
            assert_maps_close(native, raw, atol=tolerance)
            np.testing.assert_allclose(public_form(native, (size, size)), public, rtol=0,
                                       atol=max(PUBLIC_ATOL, 2 * tolerance))
        assert torch.equal(class_activation_maps(model, x, None, method),
                           class_activation_maps(model, x, predicted, method))


def test_grad_cam_backend_returns_the_raw_library_map(models) -> None:
    model, x, y = models["wrn16_2"], images(3, 32, 7), labels(3, 8)
    for method in CAM_METHODS:
        got = class_activation_maps(model, x, y, method, backend="grad-cam")
        assert torch.equal(got, _grad_cam_library(model, x, y, method, find_cam_layer(model))[0])
        assert got.shape == (3, 8, 8) and got.dtype == torch.float32 and (got >= 0).all()


@pytest.mark.parametrize("batch", [1, 8])
def test_gap_shortcut_equals_the_autograd_path(models, batch: int) -> None:
    model = models["resnet18_cifar_w8"]
    x, y = images(batch, 32, 3), labels(batch, 4)
    assert feeds_gap_linear(model, model.cam_layer) is model.classifier
    shortcut = class_activation_maps(model, x, y, "gradcam")
    setattr(model, GAP_LINEAR_ATTR, False)
    try:
        assert feeds_gap_linear(model, model.cam_layer) is None
        autograd = class_activation_maps(model, x, y, "gradcam")
    finally:
        delattr(model, GAP_LINEAR_ATTR)
    assert_maps_close(shortcut, autograd)


def test_only_declared_gap_linear_heads_take_the_shortcut(models) -> None:
    resnet = models["resnet18_cifar_w8"]
    assert feeds_gap_linear(resnet, resnet.layer3) is None
    assert feeds_gap_linear(models["wrn16_2"], models["wrn16_2"].cam_layer) is None
    assert feeds_gap_linear(models["resnet18"], find_cam_layer(models["resnet18"])) is None


def no_hooks(model: nn.Module) -> bool:
    return all(not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks) for m in model.modules())


@pytest.mark.parametrize("backend", CAM_BACKENDS)
@pytest.mark.parametrize("method", CAM_METHODS)
def test_leaves_the_model_as_it_was(backend: str, method: str) -> None:
    torch.manual_seed(1)
    model = create_model("wrn16_2", num_classes=10).train()
    model.block1.eval()
    modes = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.fc.weight.grad = marker = torch.ones_like(model.fc.weight)
    class_activation_maps(model, images(2, 32, 0), labels(2, 1), method, backend=backend)
    assert [m.training for m in model.modules()] == modes
    assert model.fc.weight.grad is marker
    assert all(p.grad is None for n, p in model.named_parameters() if n != "fc.weight")
    assert no_hooks(model) and not model.cam_layer._forward_hooks
    if backend == "native":
        assert all(torch.equal(p, state[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize(("name", "side"), [("resnet18_cifar", 4), ("resnet18_cifar_w8", 4), ("wrn16_2", 8)])
def test_shape_dtype_and_sign(models, name: str, side: int) -> None:
    model = models[name] if name in models else randomised(create_model(name, num_classes=10), 9)
    x = images(2, 32, 5)
    for method in CAM_METHODS:
        maps = class_activation_maps(model, x, labels(2, 6), method)
        assert maps.shape == (2, side, side) and maps.dtype == torch.float32
        assert (maps >= 0).all() and torch.isfinite(maps).all() and not maps.requires_grad


def test_works_inside_no_grad_and_inference_mode(models) -> None:
    model, x, y = models["wrn16_2"], images(3, 32, 11), labels(3, 12)
    for method in CAM_METHODS:
        expected = class_activation_maps(model, x, y, method)
        with torch.no_grad():
            assert torch.equal(class_activation_maps(model, x, y, method), expected)
            assert torch.equal(class_activation_maps(model, x, y, method, backend="grad-cam"),
                               class_activation_maps(model, x, y, method, backend="grad-cam"))
        with torch.inference_mode():
            inside = class_activation_maps(model, x.clone(), y, method)
        assert torch.equal(inside, expected)
        assert torch.is_grad_enabled()


def bf16_check(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device_type: str) -> None:
    """float32 maps close to the fp32 ones (correlation over the batch), except XGradCAM on layers whose
    output can be negative (WRN's block3 is pre-BN-ReLU): there its normaliser sum_ij A_k(i,j) nears 0
    and the map is ill-conditioned in bf16, so only its type and sign are checked."""
    well_conditioned = {"gradcam", "layercam"} | ({"xgradcam"} if feeds_gap_linear(model, model.cam_layer) else set())
    for method in CAM_METHODS:
        expected = class_activation_maps(model, x, y, method)
        with torch.autocast(device_type, dtype=torch.bfloat16):
            got = class_activation_maps(model, x, y, method)
        assert got.dtype == torch.float32 and got.shape == expected.shape
        assert (got >= 0).all() and torch.isfinite(got).all()
        if method in well_conditioned:
            correlation = torch.corrcoef(torch.stack([got.flatten(), expected.flatten()]))[0, 1]
            assert correlation > 0.999, (method, float(correlation))


def test_autocast_bf16_cpu(models) -> None:
    for name in ("resnet18_cifar_w8", "wrn16_2"):
        bf16_check(models[name], images(4, 32, 13), labels(4, 14), "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_native_matches_the_library_and_autocast_bf16() -> None:
    torch.manual_seed(0)
    for name in ("resnet18_cifar_w8", "wrn16_2"):
        model = randomised(create_model(name, num_classes=10), 3).cuda()
        x, y = images(8, 32, 15).cuda(), labels(8, 16).cuda()
        for method in CAM_METHODS:
            native = class_activation_maps(model, x, y, method)
            assert native.device == x.device
            library = class_activation_maps(model, x, y, method, backend="grad-cam")
            assert relative_error(native.cpu(), library.cpu()) < max(1e-3, map_tolerance(name, method))
        bf16_check(model, x, y, "cuda")


def test_bad_arguments_raise_one_line_errors(models) -> None:
    model, x = models["resnet18_cifar_w8"], images(2, 32, 0)
    cases = [dict(method="gradcam++"), dict(backend="captum"), dict(targets=torch.zeros(3, dtype=torch.long)),
             dict(targets=torch.zeros(2, 1, dtype=torch.long)), dict(targets=torch.zeros(2)),
             dict(targets=torch.tensor([0, 10])), dict(targets=torch.tensor([-1, 0]))]
    for case in cases:
        kwargs = dict(targets=labels(2, 0)) | case
        with pytest.raises(FastpartError) as info:
            class_activation_maps(model, x, **kwargs)
        assert "\n" not in str(info.value)
    with pytest.raises(FastpartError, match="gradcam, xgradcam, layercam"):
        class_activation_maps(model, x, None, "eigencam")
    with pytest.raises(FastpartError, match="native, grad-cam"):
        class_activation_maps(model, x, None, backend="torchcam")
    assert no_hooks(model)

