"""Batched class activation maps (CAMs) on the model's device.

A CAM explains the score ``F_c`` a classifier gives class ``c`` by weighting the K feature maps
``A_k`` (h x w) of one convolutional block — the *CAM layer*, by default ``find_cam_layer(model)``.
With ``G_k = dF_c/dA_k`` the three methods, as pytorch-grad-cam 1.5.7 defines them, are

* GradCAM:  ``alpha_k = mean_ij G_k(i,j)``;                               ``L = ReLU(sum_k alpha_k A_k)``
* XGradCAM: ``alpha_k = sum_ij G_k(i,j) A_k(i,j) / (sum_ij A_k(i,j) + 1e-7)``; ``L = ReLU(sum_k alpha_k A_k)``
* LayerCAM: ``L = ReLU(sum_k ReLU(G_k) * A_k)``  (element-wise, no channel weights)

``class_activation_maps`` returns the raw ``L``: float32, (B, h, w) at the layer's resolution,
neither normalised nor upsampled (the library's map just before its min-max scaling and resize).

Native backend: one forward pass. The network up to the CAM layer runs without autograd; only the
part after it (the head) is differentiated, with ``torch.autograd.grad`` with respect to ``A`` alone,
so no parameter gradient is ever computed. When the layer's output goes straight into global average
pooling and a linear classifier ``W`` (``F_c = sum_k W[c,k] mean_ij A_k(i,j) + b_c``), ``G_k(i,j) =
W[c,k] / (h w)`` everywhere, so GradCAM is the original CAM, ``alpha_k = W[c,k] / (h w)``, and needs
no backward pass at all. A model declares this with a truthy ``cam_layer_feeds_gap_linear``
attribute (then ``model.cam_layer`` must be the layer and ``model.classifier`` the ``nn.Linear``;
fastpart's ``resnet18_cifar`` family does); every other model takes the autograd path.

``grad-cam`` backend: the pytorch-grad-cam classes themselves, as a reference oracle (slow: a full
backward pass, NumPy on the host). It returns the same raw (B, h, w) map: the library's
``get_cam_image`` on the activations and gradients its public ``__call__`` recorded, after the ReLU
the library applies, before ``scale_cam_image``. The library runs the model in eval mode whatever the
caller set; the model's hooks, train/eval modes and parameter gradients are restored afterwards.

XGradCAM is ill-conditioned where the layer's output is signed (WRN's ``block3`` is pre-BN-ReLU):
``sum_ij A_k(i,j)`` can be near 0, so summation order alone (torch vs NumPy) or bf16 moves the map.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from fastpart.config import CAM_BACKENDS, CAM_METHODS
from fastpart.errors import FastpartError
from fastpart.models import find_cam_layer

__all__ = ["CAM_BACKENDS", "CAM_METHODS", "CamFn", "class_activation_maps", "feeds_gap_linear", "predicted_targets"]

# What PART's masks are computed from: (x (B, 3, H, W) in [0, 1], targets (B,) or None) -> raw CAMs (B, h, w).
CamFn = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


GAP_LINEAR_ATTR = "cam_layer_feeds_gap_linear"
XGRADCAM_EPS = 1e-7


def predicted_targets(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``argmax_c f(x)_c`` for each image, without autograd."""
    with torch.no_grad():
        return model(x).argmax(1)


def class_activation_maps(model: nn.Module, x: torch.Tensor, targets: torch.Tensor | None, method: str = "gradcam",
                          layer: nn.Module | None = None, backend: str = "native") -> torch.Tensor:
    """Raw CAMs (B, h, w), float32, >= 0, at the CAM layer's resolution; not normalised, not upsampled.

    ``x``: (B, C, H, W) images in [0, 1]; ``targets``: (B,) classes whose scores are explained, or
    ``None`` for the predicted classes (taken from the same forward pass). ``layer`` defaults to
    ``find_cam_layer(model)``. The caller chooses the model's mode (normally eval); it is left as is.
    Works inside ``torch.no_grad()``/``inference_mode()`` and under autocast.
    """
    if method not in CAM_METHODS:
        raise FastpartError(f"unknown CAM method {method!r}: choose one of {', '.join(CAM_METHODS)}")
    if backend not in CAM_BACKENDS:
        raise FastpartError(f"unknown CAM backend {backend!r}: choose one of {', '.join(CAM_BACKENDS)}")
    if x.ndim != 4:
        raise FastpartError(f"CAM input must be a (B, C, H, W) batch, got shape {tuple(x.shape)}")
    if targets is not None:
        targets = _checked_targets(targets, x)
    layer = find_cam_layer(model) if layer is None else layer
    if backend == "native":
        return _native(model, x, targets, method, layer)
    return _grad_cam_library(model, x, targets, method, layer)[0]


def feeds_gap_linear(model: nn.Module, layer: nn.Module) -> nn.Linear | None:
    """The linear classifier ``layer``'s output reaches through global average pooling alone, when the
    model declares it (see the module docstring); ``None`` otherwise."""
    declared = getattr(model, GAP_LINEAR_ATTR, False)
    classifier = getattr(model, "classifier", None)
    if declared and layer is getattr(model, "cam_layer", None) and isinstance(classifier, nn.Linear):
        return classifier
    return None


def _checked_targets(targets: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(targets, torch.Tensor) or targets.shape != (x.shape[0],):
        shape = tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__
        raise FastpartError(f"CAM targets must be a ({x.shape[0]},) tensor of class indices, got {shape}")
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise FastpartError(f"CAM targets must be integer class indices, got dtype {targets.dtype}")
    return targets.to(device=x.device, dtype=torch.long)


def _check_logits(logits: torch.Tensor, targets: torch.Tensor | None, batch: int) -> None:
    if logits.ndim != 2 or logits.shape[0] != batch:
        raise FastpartError(f"CAMs need (B, classes) logits, the model returned shape {tuple(logits.shape)}")
    if targets is not None and targets.numel() and not 0 <= int(targets.min()) <= int(targets.max()) < logits.shape[1]:
        raise FastpartError(f"CAM targets must lie in [0, {logits.shape[1]}), got "
                            f"[{int(targets.min())}, {int(targets.max())}]")


def _native(model: nn.Module, x: torch.Tensor, targets: torch.Tensor | None, method: str,
            layer: nn.Module) -> torch.Tensor:
    classifier = feeds_gap_linear(model, layer) if method == "gradcam" else None
    with torch.inference_mode(False):
        activations, logits = _forward_capturing(model, x, layer, differentiate_head=classifier is None)
        _check_logits(logits, targets, x.shape[0])
        if targets is None:
            targets = logits.detach().argmax(1)
        if classifier is not None:
            weights = classifier.weight.detach()[targets].float() / activations[0, 0].numel()
            return _weighted_sum(weights, activations.detach().float())
        scores = logits.gather(1, targets[:, None])
        grads = torch.autograd.grad(scores.sum(), activations)[0]
        return _METHODS[method](activations.detach().float(), grads.float())


def _forward_capturing(model: nn.Module, x: torch.Tensor, layer: nn.Module,
                       differentiate_head: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and the layer's output ``A``; the graph, if any, starts at ``A`` (a leaf)."""
    captured: list[torch.Tensor] = []

    def hook(module: nn.Module, inputs: object, output: object) -> torch.Tensor:
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            raise FastpartError(f"the CAM layer {type(module).__name__} must output a (B, K, h, w) tensor")
        if captured:
            raise FastpartError(f"the CAM layer {type(module).__name__} ran more than once in one forward pass")
        activations = output.detach().requires_grad_(differentiate_head)
        captured.append(activations)
        torch.set_grad_enabled(differentiate_head)
        return activations.clone()

    handle = layer.register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        handle.remove()
    if not captured:
        raise FastpartError(f"the CAM layer {type(layer).__name__} did not run in the model's forward pass")
    return captured[0], logits


def _weighted_sum(weights: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    return (weights[:, :, None, None] * activations).sum(1).clamp_min(0)


def _gradcam(activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    return _weighted_sum(grads.mean((2, 3)), activations)


def _xgradcam(activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    total = activations.sum((2, 3), keepdim=True)
    return _weighted_sum((grads * activations / (total + XGRADCAM_EPS)).sum((2, 3)), activations)


def _layercam(activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    return (grads.clamp_min(0) * activations).sum(1).clamp_min(0)


_METHODS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "gradcam": _gradcam, "xgradcam": _xgradcam, "layercam": _layercam,
}


def _grad_cam_library(model: nn.Module, x: torch.Tensor, targets: torch.Tensor | None, method: str,
                      layer: nn.Module) -> tuple[torch.Tensor, np.ndarray]:
    """pytorch-grad-cam's raw map (B, h, w) as a tensor on ``x``'s device, and its public output
    (min-max scaled, resized to H x W with cv2), from one call of the library."""
    from pytorch_grad_cam import GradCAM, LayerCAM, XGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam_class = {"gradcam": GradCAM, "xgradcam": XGradCAM, "layercam": LayerCAM}[method]
    library_targets = None if targets is None else [ClassifierOutputTarget(int(c)) for c in targets.tolist()]
    modes = [(module, module.training) for module in model.modules()]
    grads = [(p, p.grad) for p in model.parameters()]
    cam = cam_class(model=model, target_layers=[layer])
    try:
        with torch.inference_mode(False), torch.enable_grad():
            public = cam(input_tensor=x, targets=library_targets)
        recorded = cam.activations_and_grads
        activations = recorded.activations[0].numpy()
        gradients = recorded.gradients[0].numpy()
        raw = np.maximum(cam.get_cam_image(x, layer, library_targets, activations, gradients, False), 0)
    finally:
        cam.activations_and_grads.release()
        for module, training in modes:
            module.training = training
        for p, grad in grads:
            p.grad = grad
    return torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32)).to(x.device), public
