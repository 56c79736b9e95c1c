"""PGD under a per-pixel L-inf budget: the box, the range, the mode, input-only gradients, and strength."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fastpart.attacks.pgd import pgd
from fastpart.kernels.reference import pgd_step_reference as pgd_step
from fastpart.models import create_model


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return create_model("resnet18_cifar_w8", num_classes=10).eval()


def batch(seed: int, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 32, 32, generator=g)
    x[:, :, :2] = 0.0  # pixels on the [0, 1] edges
    x[:, :, -2:] = 1.0
    return x, torch.randint(0, 10, (n,), generator=g)


def eps_map(seed: int, shape) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.where(torch.rand(shape, generator=g) < 0.3, 8 / 255, 7 / 255)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stays_in_the_per_pixel_box_and_in_range(model, seed):
    x, y = batch(seed)
    eps = eps_map(seed, x.shape)
    x_adv = pgd(model, x, y, eps, alpha=2 / 255, steps=5, generator=torch.Generator().manual_seed(seed))
    assert ((x_adv - x).abs() <= eps + 1e-7).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() > 7.5 / 255  # the high-budget pixels are used


def test_uniform_map_equals_scalar_budget(model):
    x, y = batch(3)
    scalar = pgd(model, x, y, 8 / 255, 2 / 255, 4, generator=torch.Generator().manual_seed(1))
    tensor = pgd(model, x, y, torch.full_like(x, 8 / 255), 2 / 255, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(scalar, tensor)


def test_attack_raises_the_loss(model):
    x, y = batch(4, n=32)
    x_adv = pgd(model, x, y, 8 / 255, 2 / 255, 10, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before, after = F.cross_entropy(model(x), y), F.cross_entropy(model(x_adv), y)
    assert after > before


def test_mode_restored_and_no_parameter_gradients(model):
    model.train()
    x, y = batch(5)
    pgd(model, x, y, 8 / 255, 2 / 255, 2)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    model.eval()


def test_batch_norm_statistics_untouched(model):
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    x, y = batch(6)
    pgd(model, x, y, 8 / 255, 2 / 255, 3)
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    model.eval()


def test_step_matches_its_definition():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 8, 8, generator=g)
    x_adv = (x + (torch.rand(x.shape, generator=g) - 0.5) * 0.1).clamp(0, 1)
    grad = torch.randn(x.shape, generator=g)
    grad[0] = 0  # sign 0: no move
    eps = eps_map(1, x.shape)
    out = pgd_step(x_adv, grad, x, eps, 2 / 255)
    expected = torch.clamp(torch.minimum(torch.maximum(x_adv + 2 / 255 * grad.sign(), x - eps), x + eps), 0, 1)
    assert torch.equal(out, expected)
    assert torch.equal(out[0], torch.clamp(torch.minimum(torch.maximum(x_adv[0], x[0] - eps[0]), x[0] + eps[0]), 0, 1))



def test_the_argument_checks_change_no_result(model):
    """The public call checks its arguments (budgets in [0, 1] units, x in [0, 1], integer labels); training's
    generators skip that (check_inputs=False): the same numbers either way, int32 labels as int64 ones."""
    x, y = batch(7, n=8)
    eps = eps_map(7, x.shape)
    checked = pgd(model, x, y, eps, 2 / 255, 3, generator=torch.Generator().manual_seed(3), stop_on_success=True)
    unchecked = pgd(model, x, y, eps, 2 / 255, 3, generator=torch.Generator().manual_seed(3), stop_on_success=True,
                    check_inputs=False)
    as_int32 = pgd(model, x, y.int(), eps, 2 / 255, 3, generator=torch.Generator().manual_seed(3),
                   stop_on_success=True)
    assert torch.equal(checked, unchecked) and torch.equal(checked, as_int32)
    with pytest.raises(ValueError, match=r"^pgd: eps: budgets are in \[0, 1\] units .*did you mean 8/255\?$"):
        pgd(model, x, y, 8, 2 / 255, 3)
    with pytest.raises(ValueError, match=r"^pgd: images must be in \[0, 1\]"):
        pgd(model, x * 255, y)
