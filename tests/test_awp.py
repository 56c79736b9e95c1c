"""Adversarial weight perturbation against a plain re-implementation of the official code (csdongxian/AWP's
utils_awp.py and its AT/TRADES training loops): a proxy copy of the model, one SGD step of lr 0.01 on the
negated loss, layer-wise relative scaling of the weight tensors of more than one dimension, perturb, the
update, restore."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

from fastpart.awp import AdversarialWeightPerturbation
from fastpart.errors import FastpartError
from fastpart.models import create_model
from fastpart.objectives import get_objective
from fastpart.step import train_step

EPS = 1e-20


# ---- the official code, as written in utils_awp.py ------------------------------------------------------


def diff_in_weights(model, proxy):
    diff_dict = OrderedDict()
    for (old_k, old_w), (new_k, new_w) in zip(model.state_dict().items(), proxy.state_dict().items()):
        if len(old_w.size()) <= 1:
            continue
        if "weight" in old_k:
            diff_w = new_w - old_w
            diff_dict[old_k] = old_w.norm() / (diff_w.norm() + EPS) * diff_w
    return diff_dict


def add_into_weights(model, diff, coeff=1.0):
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in diff:
                param.add_(coeff * diff[name])


def official_diff(model, x_adv, y, x=None, beta=6.0):
    """AdvWeightPerturb.calc_awp (AT) or TRADES_AWP's calc_awp (with x: the TRADES loss)."""
    proxy = copy.deepcopy(model)
    proxy_optim = torch.optim.SGD(proxy.parameters(), lr=0.01)
    proxy.load_state_dict(model.state_dict())
    proxy.train()
    if x is None:
        loss = -F.cross_entropy(proxy(x_adv), y)
    else:
        loss_natural = F.cross_entropy(proxy(x), y)
        loss_robust = F.kl_div(F.log_softmax(proxy(x_adv), dim=1), F.softmax(proxy(x), dim=1), reduction="batchmean")
        loss = -1.0 * (loss_natural + beta * loss_robust)
    proxy_optim.zero_grad()
    loss.backward()
    proxy_optim.step()
    return diff_in_weights(model, proxy)


# ---- fixtures -------------------------------------------------------------------------------------------


def batch(seed: int, n: int = 8):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 32, 32, generator=g)
    x_adv = (x + (torch.rand(x.shape, generator=g) - 0.5) * (16 / 255)).clamp(0, 1)
    return x, x_adv, torch.randint(0, 10, (n,), generator=g)


def model_and_optimizer(seed: int):
    torch.manual_seed(seed)
    model = create_model("resnet18_cifar_w8", num_classes=10)
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)


@pytest.mark.parametrize("seed", [0, 1])
def test_one_at_step_is_the_official_one(seed):
    x, x_adv, y = batch(seed)
    mine, mine_opt = model_and_optimizer(seed)
    theirs, theirs_opt = model_and_optimizer(seed)
    # the official AT_AWP loop: calc_awp, perturb, train-mode forward, step, restore
    diff = official_diff(theirs, x_adv, y)
    add_into_weights(theirs, diff, 0.01)
    theirs.train()
    loss = F.cross_entropy(theirs(x_adv), y)
    theirs_opt.zero_grad()
    loss.backward()
    theirs_opt.step()
    add_into_weights(theirs, diff, -0.01)

    awp = AdversarialWeightPerturbation(mine, 0.01)
    sums = train_step(mine, mine_opt, get_objective("at"), lambda *a: x_adv, x, y, 8 / 255, torch.Generator(), awp=awp)
    assert sums[0].item() == pytest.approx(loss.item() * len(y), rel=1e-6)  # the loss at the perturbed weights
    assert set(awp.names) == set(diff) and len(diff) == 21  # 20 convolutions (3 shortcuts) and the linear layer
    for name, value in theirs.state_dict().items():  # weights and batch-norm statistics alike
        torch.testing.assert_close(mine.state_dict()[name], value, rtol=0, atol=1e-6, msg=name)
    assert awp.last_loss is not None and awp.last_loss.item() < loss.item()  # the perturbation raised the loss


def test_the_trades_perturbation_is_the_official_one_and_leaves_the_running_statistics():
    x, x_adv, y = batch(5)
    model, _ = model_and_optimizer(5)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    diff = official_diff(model, x_adv, y, x=x)
    objective = get_objective("part-trades")
    awp = AdversarialWeightPerturbation(model, 0.005)
    directions = awp.direction(lambda: objective.loss(model(x_adv), model(x), y))
    for name, d in zip(awp.names, directions):  # the same loss, summed in another order: float32 rounding
        assert ((d - diff[name]).norm() / diff[name].norm()).item() < 3e-5, name
        assert d.norm().item() == pytest.approx(before[name].norm().item(), rel=1e-5)  # relative to the layer
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing moved, buffers included
    moved = awp.perturb(lambda: objective.loss(model(x_adv), model(x), y))
    for name, w in zip(awp.names, awp.weights):
        assert (w.detach() - before[name]).norm().item() == pytest.approx(0.005 * before[name].norm().item(), rel=1e-4)
    awp.restore(moved)
    for name, w in zip(awp.names, awp.weights):
        torch.testing.assert_close(w.detach(), before[name], rtol=0, atol=1e-7)


def test_label_smoothing_smooths_the_cross_entropy_terms_only():
    x, x_adv, y = batch(7)
    logits_adv, logits_nat = torch.randn(8, 10), torch.randn(8, 10)
    for name in ("at", "trades", "mart"):
        plain, smoothed = get_objective(name), get_objective(name).with_label_smoothing(0.1)
        gap = (smoothed.loss(logits_adv, logits_nat, y) - plain.loss(logits_adv, logits_nat, y)).item()
        ce = logits_adv if name in ("at", "mart") else logits_nat
        expected = (F.cross_entropy(ce, y, label_smoothing=0.1) - F.cross_entropy(ce, y)).item()
        assert gap == pytest.approx(expected, abs=1e-6) and abs(expected) > 1e-3, name
        assert smoothed.attack_loss is plain.attack_loss
    with pytest.raises(FastpartError, match=r"\[0, 1\)"):
        get_objective("at").with_label_smoothing(1.0)


def test_bad_gamma_is_one_line():
    model, _ = model_and_optimizer(0)
    for gamma in (0.0, -0.01, float("nan"), float("inf")):
        with pytest.raises(FastpartError, match="gamma"):
            AdversarialWeightPerturbation(model, gamma)


def test_settings_resolve_to_the_official_warm_ups_and_refuse_what_cannot_run():
    from fastpart.config import TrainConfig
    from fastpart.data.datasets import DATASETS
    from fastpart.resolve import resolve

    defaults = DATASETS["cifar10"].defaults
    warmups = {m: resolve(TrainConfig(method=m, awp=0.01, device="cpu"), defaults).awp_warmup
               for m in ("at", "part", "trades", "part-trades", "mart", "part-mart")}
    assert warmups == {"at": 0, "part": 0, "trades": 10, "part-trades": 10, "mart": 0, "part-mart": 0}
    assert resolve(TrainConfig(method="trades", awp=0.005, awp_warmup=3, device="cpu"), defaults).awp_warmup == 3
    assert resolve(TrainConfig(device="cpu"), defaults).awp_warmup is None
    with pytest.raises(FastpartError, match="--activation silu is an option of .* not of --model preact_resnet18"):
        resolve(TrainConfig(model="preact_resnet18", activation="silu", device="cpu"), defaults)
    for bad, match in (({"awp": 0.0}, "--awp must be a positive gamma"), ({"label_smoothing": -0.1}, "must be in")):
        with pytest.raises(FastpartError, match=match):
            resolve(TrainConfig(device="cpu", **bad), defaults)
