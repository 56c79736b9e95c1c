"""The single-step generators (``fastpart.attacks.single_step``) against plain re-implementations of the papers'
code: FGSM-RS as Wong et al.'s train_fgsm.py computes it and N-FGSM as de Jorge et al.'s train.py does (both in
perturbation space, with their clamps), on fresh random images, under one budget and under PART's per-pixel
budget; the fused path (one budget: PGD-1 with the step kernel) against the plain one."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fastpart.attacks.single_step import fgsm_rs, n_fgsm
from fastpart.budgets import EpsLevels, eps_from_levels

EPS = 8 / 255


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 10)).eval()


def images(seed: int) -> tuple[torch.Tensor, torch.Tensor, EpsLevels]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(16, 3, 8, 8, generator=g)
    x[:, :, :1] = 1.0  # saturated rows: the clamps to [0, 1] matter
    x[:, :, 1:2] = 0.0
    levels = (torch.rand(16, 1, 8, 8, generator=g) > 0.5).to(torch.uint8)
    return x, torch.randint(0, 10, (16,), generator=g), EpsLevels(levels, EPS, 7 / 255)


def papers_step(net: nn.Module, x: torch.Tensor, y: torch.Tensor, eps, u: torch.Tensor, noise: float, alpha: float,
                clip: bool) -> torch.Tensor:
    """delta ~ U(-noise eps, noise eps) clamped so x + delta is in [0, 1]; delta += alpha eps sign(grad); clamp
    delta to [-eps, eps] when ``clip``; clamp x + delta to [0, 1] (train_fgsm.py, N-FGSM's train.py)."""
    delta = (2 * u - 1) * noise * eps
    delta = torch.max(torch.min(delta, 1 - x), -x).requires_grad_(True)
    loss = F.cross_entropy(net(x + delta), y)
    grad = torch.autograd.grad(loss, delta)[0]
    delta = delta.detach() + alpha * eps * torch.sign(grad)
    if clip:
        delta = torch.max(torch.min(delta, eps * torch.ones_like(delta)), -eps * torch.ones_like(delta))
    delta = torch.max(torch.min(delta, 1 - x), -x)
    return x + delta


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("per_pixel", [False, True])
@pytest.mark.parametrize("name", ["fgsm-rs", "n-fgsm"])
def test_single_step_is_the_papers_code(name, per_pixel, seed):
    net = model()
    x, y, levels = images(seed)
    eps = levels if per_pixel else EPS
    e = eps_from_levels(levels.levels, levels.high, levels.low) if per_pixel else EPS
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(100 + seed))  # the start's draws
    attack, noise, alpha, clip = (fgsm_rs, 1.0, 1.25, True) if name == "fgsm-rs" else (n_fgsm, 2.0, 1.0, False)
    x_adv = attack(net, x, y, eps, generator=torch.Generator().manual_seed(100 + seed))
    expected = papers_step(net, x, y, e, u, noise, alpha, clip)
    # the papers compute in perturbation space, fastpart in image space: the same up to rounding
    assert torch.allclose(x_adv, expected, atol=1e-6, rtol=0)
    reach = (noise + alpha) * e if not clip else e
    assert ((x_adv - x).abs() <= reach + 1e-6).all() and x_adv.min() >= 0 and x_adv.max() <= 1
    if not clip:  # N-FGSM leaves the box: its examples are not PGD's
        assert ((x_adv - x).abs() > e + 1e-6).any()


def test_the_fused_fgsm_rs_is_the_plain_one():
    """One budget for every pixel: PGD-1 with alpha 1.25 eps and the step kernel; the same budget as a
    per-pixel map takes the plain step; the same draws give the same examples."""
    net = model()
    x, y, _ = images(2)
    fused = fgsm_rs(net, x, y, EPS, generator=torch.Generator().manual_seed(7))
    plain = fgsm_rs(net, x, y, torch.full_like(x, EPS), generator=torch.Generator().manual_seed(7))
    assert torch.allclose(fused, plain, atol=1e-7, rtol=0)


def test_bad_budgets_are_refused():
    x, y, _ = images(0)
    for attack in (fgsm_rs, n_fgsm):
        with pytest.raises(ValueError, match="8/255"):
            attack(model(), x, y, 8)


def test_n_fgsm_part_trains_on_shapes_without_collapse_and_records_the_check(shapes_data, tmp_path):
    """N-FGSM-PART (masks after a 1-epoch burn-in; 3 epochs of 4,000 images) on shapes at a small budget: robust
    accuracy above chance, and every epoch's metrics carry the collapse check (FGSM-RS against PGD on fixed
    images), not collapsed."""
    import json

    from conftest import SMALL_EPS
    from fastpart.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", "--dataset", "shapes", "--data-dir", str(shapes_data), "--model", "resnet18_cifar_w8",
                     "--method", "part", "--ae", "n-fgsm", "--eps", str(SMALL_EPS), "--eps-low", str(SMALL_EPS / 2),
                     "--epochs", "3", "--burn-in", "1", "--mask-freq", "2", "--batch-size", "32", "--lr", "0.02",
                     "--lr-schedule", "step", "--eval-steps", "2", "--eval-n", "100", "--seed", "0",
                     "--out", str(tmp_path / "run")]) == 0
    finally:
        torch.set_num_threads(threads)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in records] == ["burn-in", "masked", "masked"]
    for r in records:
        assert {"collapse_natural_acc", "collapse_fgsm_acc", "collapse_pgd2_acc", "collapse_n"} <= set(r)
        assert r["collapsed"] is False and r["collapse_n"] == 300
    last = records[-1]
    assert last["test_pgd2_acc"] > 0.2 and last["collapse_pgd2_acc"] > 0.2  # chance: 0.1; measured 0.31, 0.29
