"""fastpart's training step against plain re-implementations of the code it follows, on fixed batches, models and
starting noise: the official TRADES (trades.py) and MART (mart.py) steps, which the released PART-T and PART-M
keep with the mask's per-element budget, and the released PART step (train_eval_part.py: part_pgd, then CE on
x'), with its mask (the 'jet' reference mode) and its learning-rate schedule. Compared: the adversarial
examples, the loss, the gradients, the parameters and the batch-norm running statistics after several steps.

The re-implementations below are written from reading that code, kept as plain as it is (Variable and .cuda()
aside); the noise a start draws is passed in, drawn from the generator fastpart draws it from.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fastpart.attacks.generators import GeneratorSettings, make_generator
from fastpart.attacks.graphed import graphed_pgd
from fastpart.attacks.pgd import pgd, random_start
from fastpart.budgets import EpsLevels, eps_from_levels
from fastpart.cli import main
from fastpart.config import TrainConfig
from fastpart.data.datasets import DATASETS
from fastpart.errors import FastpartError
from fastpart.objectives import attack_loss_fn, get_objective, natural_probs, trades_attack
from fastpart.part import MaskSettings, eps_levels
from fastpart.resolve import generator_settings, released_milestones, resolve, schedule as run_schedule
from fastpart.step import RunningStatsReplay, train_step

EPS, LOW, ALPHA, STEPS = 8 / 255, 7 / 255, 2 / 255, 4


def model_with_batch_norm(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def batch(seed: int, n: int = 16, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    x[:, :, :2] = 1.0  # saturated pixels: where a start is clipped or not matters
    x[:, :, -1] = 0.0
    return x, torch.randint(0, 10, (n,), generator=g)


def reference_levels(n: int, size: int = 8, seed: int = 0) -> torch.Tensor:
    """PART's per-channel mask of the released code (reference mode) for random CAMs: uint8 (n, 3, size, size)."""
    cams = torch.relu(torch.randn(n, 4, 4, generator=torch.Generator().manual_seed(seed)))
    levels, _ = eps_levels(cams, (size, size), MaskSettings(mode="reference"))
    assert 0 < levels.float().mean() < 1
    return levels


def bn_state(model: nn.Module) -> list[torch.Tensor]:
    return [b.clone() for m in model.modules() if isinstance(m, nn.BatchNorm2d)
            for b in (m.running_mean, m.running_var, m.num_batches_tracked)]


# ---- the code fastpart follows, re-implemented plainly ---------------------------------------------------


def element_wise_clamp(eta: torch.Tensor, epsilon: torch.Tensor) -> torch.Tensor:
    """craft_ae.py: clamp eta into [-epsilon, epsilon] element by element."""
    eta_clamped = torch.where(eta > epsilon, epsilon, eta)
    return torch.where(eta < -epsilon, -epsilon, eta_clamped)


def official_attack(model, x_natural, attack_loss, weighted_eps, normal_noise, step_size, epsilon, perturb_steps):
    """The PGD loop trades.py and mart.py share (weighted_eps not None: the released part_trades.py and
    part_mart.py): from x + 0.001 * normal_noise, not clipped; ``attack_loss(x_adv)`` is the ascended loss.
    ``normal_noise`` stands for torch.randn(x.shape). The model is left in train mode, as there."""
    model.eval()
    x_adv = x_natural.detach() + 0.001 * normal_noise
    for _ in range(perturb_steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss = attack_loss(x_adv)
        grad = torch.autograd.grad(loss, [x_adv])[0]
        x_adv = x_adv.detach() + step_size * torch.sign(grad.detach())
        if weighted_eps is None:
            x_adv = torch.min(torch.max(x_adv, x_natural - epsilon), x_natural + epsilon)
        else:
            x_adv = x_natural + element_wise_clamp(x_adv - x_natural, weighted_eps)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    model.train()
    return torch.clamp(x_adv, 0.0, 1.0).detach()


def official_trades_step(model, optimizer, x_natural, y, weighted_eps, normal_noise, step_size=ALPHA,
                         epsilon=EPS, perturb_steps=STEPS, beta=6.0):
    """trades.py's trades_loss (weighted_eps not None: the released part_trades.py), then backward and step.
    Returns (x_adv, loss)."""
    criterion_kl = nn.KLDivLoss(reduction="sum")
    batch_size = len(x_natural)
    x_adv = official_attack(
        model, x_natural,
        lambda x_adv: criterion_kl(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x_natural), dim=1)),
        weighted_eps, normal_noise, step_size, epsilon, perturb_steps)
    optimizer.zero_grad()
    logits = model(x_natural)
    loss_natural = F.cross_entropy(logits, y)
    loss_robust = (1.0 / batch_size) * criterion_kl(F.log_softmax(model(x_adv), dim=1),
                                                    F.softmax(model(x_natural), dim=1))
    loss = loss_natural + beta * loss_robust
    loss.backward()
    optimizer.step()
    return x_adv, loss.detach()


def official_mart_step(model, optimizer, x_natural, y, weighted_eps, normal_noise, step_size=ALPHA,
                       epsilon=EPS, perturb_steps=STEPS, beta=6.0):
    """mart.py's mart_loss (weighted_eps not None: the released part_mart.py), then backward and step."""
    kl = nn.KLDivLoss(reduction="none")
    batch_size = len(x_natural)
    x_adv = official_attack(model, x_natural, lambda x_adv: F.cross_entropy(model(x_adv), y), weighted_eps,
                            normal_noise, step_size, epsilon, perturb_steps)
    optimizer.zero_grad()
    logits = model(x_natural)
    logits_adv = model(x_adv)
    adv_probs = F.softmax(logits_adv, dim=1)
    tmp1 = torch.argsort(adv_probs, dim=1)[:, -2:]
    new_y = torch.where(tmp1[:, -1] == y, tmp1[:, -2], tmp1[:, -1])
    loss_adv = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), new_y)
    nat_probs = F.softmax(logits, dim=1)
    true_probs = torch.gather(nat_probs, 1, (y.unsqueeze(1)).long()).squeeze()
    loss_robust = (1.0 / batch_size) * torch.sum(
        torch.sum(kl(torch.log(adv_probs + 1e-12), nat_probs), dim=1) * (1.0000001 - true_probs))
    loss = loss_adv + float(beta) * loss_robust
    loss.backward()
    optimizer.step()
    return x_adv, loss.detach()


def released_part_step(model, optimizer, X, y, weighted_eps, uniform_noise, epsilon=EPS, num_steps=STEPS,
                       step_size=ALPHA):
    """train_eval_part.py's train() for one batch: part_pgd (its start: X + U(-epsilon, epsilon), the plain
    epsilon on every pixel, not clipped), then CE on the adversarial batch in train mode."""
    model.eval()
    X_pgd = X.detach() + uniform_noise
    for _ in range(num_steps):
        X_pgd.requires_grad_()
        with torch.enable_grad():
            loss = nn.CrossEntropyLoss()(model(X_pgd), y)
        (grad,) = torch.autograd.grad(loss, [X_pgd])
        eta = step_size * grad.sign()
        X_pgd = X_pgd.detach() + eta
        eta = element_wise_clamp(X_pgd - X, weighted_eps)
        X_pgd = torch.clamp(X + eta, 0, 1.0)
    model.train()
    optimizer.zero_grad()
    out = model(X_pgd.detach())
    loss = F.cross_entropy(out, y)
    loss.backward()
    optimizer.step()
    return X_pgd.detach(), loss.detach()


def released_lr(lr: float, epoch: int, warm_up: int, adjust_first: int = 60, adjust_second: int = 90) -> float:
    """The learning rate of (1-based) epoch ``epoch`` of train_eval_part*.py: the warm-up at lr (the optimizer's
    own), then utils.adjust_learning_rate(args, optimizer, k) with k the PART epoch counted from 1."""
    if epoch <= warm_up:
        return lr
    k = epoch - warm_up
    if k >= adjust_second:
        return lr * 0.01
    if k >= adjust_first:
        return lr * 0.1
    return lr


# ---- fastpart's step, with the same starting noise -------------------------------------------------------


def normal_noise(x: torch.Tensor, seed: int) -> torch.Tensor:
    """torch.randn(x.shape) as fastpart draws it from the step's generator."""
    return torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)


def uniform_noise(x: torch.Tensor, seed: int, eps: float = EPS) -> torch.Tensor:
    """U(-eps, eps) as fastpart draws it from the step's generator: (2u - 1) eps."""
    u = torch.empty_like(x).uniform_(generator=torch.Generator().manual_seed(seed))
    return (2 * u - 1) * eps


# method -> (fastpart's objective, the reference step, the noise it is given, fastpart's start)
METHODS = {
    "trades": ("trades", official_trades_step, normal_noise, None),
    "mart": ("mart", official_mart_step, normal_noise, None),
    "part-released": ("at", released_part_step, uniform_noise, "uniform-unclipped"),  # --numerics released, masked
}


def fastpart_step(model, optimizer, objective_name, x, y, eps, seed, start=None, replay=True, use=None):
    """fastpart.step.train_step with PGD-STEPS from the generator seeded ``seed``; returns (x_adv it crafted,
    loss). ``use``: update on these adversarial examples instead of its own."""
    objective = get_objective(objective_name)
    generate = make_generator("pgd", GeneratorSettings(objective.attack_loss, start or objective.start, ALPHA, STEPS))
    made = []

    def keeping(*args):
        made.append(generate(*args))
        return made[-1] if use is None else use

    sums = train_step(model, optimizer, objective, keeping, x, y, eps, torch.Generator().manual_seed(seed),
                      replay=replay)
    return made[0], sums[0] / len(y)


def both_steps(method, ours, opt, theirs, ref_opt, step, masked, replay=True, inject=False):
    """One step of fastpart and of the reference on batch ``step`` (with a reference-mode mask when ``masked``):
    ((x_adv, loss) of fastpart, (x_adv, loss) of the reference)."""
    objective_name, reference_step, noise, start = METHODS[method]
    x, y = batch(step)
    levels = reference_levels(len(x), seed=step) if masked else None
    weighted = eps_from_levels(levels, EPS, LOW) if masked else None
    ref_adv, ref_loss = reference_step(theirs, ref_opt, x, y, weighted, noise(x, 100 + step))
    eps = EpsLevels(levels, EPS, LOW) if masked else EPS
    adv, loss = fastpart_step(ours, opt, objective_name, x, y, eps, 100 + step, start, replay,
                              use=ref_adv if inject else None)
    return (adv, loss), (ref_adv, ref_loss)


def pair(lr: float = 0.05) -> tuple[tuple[nn.Module, torch.optim.Optimizer], tuple[nn.Module, torch.optim.Optimizer]]:
    """Two identical models with their SGD optimizers (momentum and weight decay, as the released code)."""
    ours = model_with_batch_norm()
    theirs = copy.deepcopy(ours)
    make = lambda m: torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9, weight_decay=2e-4)  # noqa: E731
    return (ours, make(ours)), (theirs, make(theirs))


@torch.no_grad()
def resynchronise(ours, opt, theirs, ref_opt) -> None:
    """The reference's parameters and momenta := fastpart's (not the running statistics)."""
    for p, q in zip(ours.parameters(), theirs.parameters()):
        q.copy_(p)
        ref_opt.state[q]["momentum_buffer"].copy_(opt.state[p]["momentum_buffer"])


def assert_same_step(ours, theirs, x_adv, ref_adv, loss, ref_loss):
    """The same step up to float32 rounding (sums in another order; x + clamp(x' - x) against
    min(max(x', x - eps), x + eps))."""
    assert torch.allclose(x_adv, ref_adv, rtol=0, atol=1e-6), (x_adv - ref_adv).abs().max()
    assert torch.allclose(loss, ref_loss, rtol=1e-6, atol=1e-7), (loss, ref_loss)
    for p, q in zip(ours.parameters(), theirs.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-6), (p.grad - q.grad).abs().max()
        assert torch.allclose(p, q, rtol=1e-6, atol=1e-7)


def assert_same_running_stats(ours, theirs):
    for a, b in zip(bn_state(ours), bn_state(theirs)):
        if a.dtype == torch.int64:
            assert torch.equal(a, b), (a, b)  # the number of batches each layer counted
        else:
            assert torch.allclose(a, b, rtol=1e-6, atol=1e-7), (a - b).abs().max()


# ---- items 1-4: one step, and the running statistics over several ----------------------------------------


@pytest.mark.parametrize("method,masked", [("trades", False), ("trades", True), ("mart", False), ("mart", True),
                                           ("part-released", True)])  # (its burn-in: Madry's PGD, 'uniform')
def test_a_step_is_the_code_it_follows(method, masked):
    """From the same model, batch and noise: trades (PART-T masked): x + 0.001 N(0, 1) unclipped for the first
    gradient, then f(x), f(x'), f(x) in train mode; mart (PART-M): the same start (not the uniform box), f(x),
    f(x'); the released PART: part_pgd's start, then f(x'). x_adv, loss, gradients, parameters and running
    statistics, on three batches."""
    for step in range(3):
        (ours, opt), (theirs, ref_opt) = pair()
        (adv, loss), (ref_adv, ref_loss) = both_steps(method, ours, opt, theirs, ref_opt, step, masked)
        assert_same_step(ours, theirs, adv, ref_adv, loss, ref_loss)
        assert_same_running_stats(ours, theirs)


@pytest.mark.parametrize("replay", [True, False], ids=["replayed", "forward"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_running_statistics_after_several_steps(method, replay):
    """Six steps each; after each, the reference takes fastpart's parameters and momenta, and fastpart updates on the
    reference's adversarial examples, so that float32 rounding cannot flip the sign of a gradient within rounding
    of 0 in a later attack: the running statistics then follow each implementation's own forwards alone. (The
    attack of every step is compared too: a few elements in 100 may differ by such flips, which TRADES's first
    gradient, at 0.001 N(0, 1) from x, is prone to, and which cascade through the later steps.)"""
    (ours, opt), (theirs, ref_opt) = pair()
    for step in range(6):
        masked = step % 2 == 1 or method == "part-released"  # plain and masked budgets in turn
        (adv, _), (ref_adv, _) = both_steps(method, ours, opt, theirs, ref_opt, step, masked, replay, inject=True)
        assert ((adv - ref_adv).abs() > 1e-6).float().mean() <= 0.05
        assert_same_running_stats(ours, theirs)
        resynchronise(ours, opt, theirs, ref_opt)
    counts = {"trades": 3, "mart": 2, "part-released": 1}[method]  # train-mode forwards per step
    assert int(ours[1].num_batches_tracked) == 6 * counts


def test_the_replayed_update_equals_a_third_forward():
    """The replay of TRADES's second f(x) against running it (without gradients): from the same state, the same
    step bit for bit but the statistics, which agree within a few float32 units in the last place."""
    for step in range(3):
        (a, opt_a), (b, opt_b) = pair()
        x, y = batch(20 + step)
        adv_a, loss_a = fastpart_step(a, opt_a, "trades", x, y, EPS, seed=step, replay=True)
        adv_b, loss_b = fastpart_step(b, opt_b, "trades", x, y, EPS, seed=step, replay=False)
        assert torch.equal(adv_a, adv_b) and torch.equal(loss_a, loss_b)
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
        assert_same_running_stats(a, b)
        assert int(a[1].num_batches_tracked) == 3


def test_replay_covers_momentum_none_by_running_the_forward():
    model = model_with_batch_norm().train()
    model[1].momentum = None  # a cumulative average: not replayed, the forward runs again
    assert not RunningStatsReplay(model).exact
    reference = copy.deepcopy(model)
    opt, ref_opt = (torch.optim.SGD(m.parameters(), lr=0.05) for m in (model, reference))
    x, y = batch(30)
    fastpart_step(model, opt, "trades", x, y, EPS, seed=7)
    official_trades_step(reference, ref_opt, x, y, None, normal_noise(x, 7))
    assert_same_running_stats(model, reference)


@pytest.mark.parametrize("start", ["normal-unclipped", "uniform-unclipped"])
@pytest.mark.parametrize("steps", [0, 1, 3])
def test_unclipped_starts_end_in_the_budget_and_the_image_range(start, steps):
    x, y = batch(40)
    model = model_with_batch_norm().eval()
    for eps in (EPS, 1e-4, EpsLevels(reference_levels(len(x)), EPS, 1e-4)):
        x0 = random_start(x, eps, start, torch.Generator().manual_seed(1))
        assert x0.min() < 0 or x0.max() > 1  # the start itself is not clipped ...
        loss_fn = attack_loss_fn(get_objective("trades"), natural_probs(model(x)))
        adv = pgd(model, x, y, eps, ALPHA, steps, loss_fn=loss_fn, start=start,
                  generator=torch.Generator().manual_seed(1))
        bound = eps if isinstance(eps, float) else eps_from_levels(eps.levels, eps.high, eps.low)
        assert adv.min() >= 0 and adv.max() <= 1 and ((adv - x).abs() <= bound + 1e-7).all()  # ... the result is
        if steps == 0:  # the compiled attack's early return too
            same = graphed_pgd(model, x, y, eps, ALPHA, 0, trades_attack, natural_probs(model(x)), start=start,
                               generator=torch.Generator().manual_seed(1))
            assert torch.equal(same, adv)


def test_the_normal_starts_draw_the_same_noise():
    x, _ = batch(41)
    raw = random_start(x, EPS, "normal-unclipped", torch.Generator().manual_seed(3))
    torch.testing.assert_close(raw, x + 0.001 * normal_noise(x, 3), rtol=0, atol=0)
    clipped = random_start(x, EPS, "normal", torch.Generator().manual_seed(3))
    assert torch.equal(clipped, raw.clamp(0, 1))


def test_released_part_start_ignores_the_mask_and_is_not_clipped():
    x, _ = batch(50, n=64)
    levels = EpsLevels(reference_levels(64), EPS, LOW)
    x0 = random_start(x, levels, "uniform-unclipped", torch.Generator().manual_seed(2))
    torch.testing.assert_close(x0, x + uniform_noise(x, 2), rtol=0, atol=0)
    noise = (x0 - x).abs()
    assert noise.max() <= EPS + 1e-7 and (noise[levels.levels == 0] > LOW + 1e-4).any()  # 8/255 where the mask says 7
    assert x0.max() > 1 and x0.min() < 0


# ---- the switch: --numerics released ---------------------------------------------------------------------


def test_released_numerics_start_each_phase_as_the_released_code():
    cfg = resolve(TrainConfig(dataset="c", method="part", numerics="released", epochs=8, device="cpu"),
                  DATASETS["cifar10"].defaults)
    objective = get_objective("at")
    assert generator_settings(cfg, objective, masked=True).start == METHODS["part-released"][3]  # part_pgd
    assert generator_settings(cfg, objective).start == "uniform"  # the burn-in: torchattacks' PGD, Madry's start
    official = resolve(TrainConfig(dataset="c", method="part", epochs=8, device="cpu"), DATASETS["cifar10"].defaults)
    assert generator_settings(official, objective, masked=True).start == "uniform"


def test_released_numerics_resolve_to_the_released_mask_and_schedule():
    defaults = DATASETS["cifar10"].defaults
    cfg = resolve(TrainConfig(dataset="c", method="part-trades", numerics="released", epochs=80, device="cpu"),
                  defaults)
    assert (cfg.mask_mode, cfg.burn_in, cfg.milestones) == ("reference", 20, (79, 109))
    assert generator_settings(cfg, get_objective("trades"), masked=True).start == "normal-unclipped"
    official = resolve(TrainConfig(dataset="c", method="part", epochs=80, device="cpu"), defaults)
    assert (official.mask_mode, official.milestones) == ("paper", (60,))
    given = resolve(TrainConfig(dataset="c", method="part", numerics="released", epochs=80, milestones=(50,),
                                device="cpu"), defaults)
    assert given.milestones == (50,)  # --milestones wins
    forced = resolve(TrainConfig(dataset="c", method="mart", pgd_start="uniform", epochs=8, device="cpu"), defaults)
    assert generator_settings(forced, get_objective("mart")).start == "uniform"  # the uniform start stays an option


@pytest.mark.parametrize("epochs,burn_in", [(80, 20), (120, 10), (8, 2)])
def test_released_learning_rate_schedule(epochs, burn_in):
    """Epoch by epoch, the lr of the released loop (warm-up, then adjust_learning_rate per PART epoch) against
    the resolved milestones, as the MultiStepLR of fastpart train and as fastpart.schedules compute it."""
    cfg = resolve(TrainConfig(dataset="c", method="part-mart", numerics="released", epochs=epochs, burn_in=burn_in,
                              device="cpu"), DATASETS["cifar10"].defaults)
    lr, milestones = cfg.lr, cfg.milestones
    assert milestones == released_milestones(burn_in) and cfg.lr_schedule == "step"
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(milestones), gamma=0.1)
    plan = run_schedule(cfg)
    decayed = []
    for epoch in range(epochs):  # 0-based, as fastpart counts
        expected = released_lr(lr, epoch + 1, burn_in)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12)
        assert plan.lr_at(epoch) == pytest.approx(expected, rel=1e-12)
        decayed.append(expected < lr)
        optimizer.step()
        scheduler.step()
    if (epochs, burn_in) == (80, 20):
        assert decayed == [False] * 79 + [True]  # only the last epoch


def test_released_numerics_are_checked_before_training(tmp_path, capsys):
    base = ["train", "--dataset", "shapes", "--data-dir", str(tmp_path), "--numerics", "released"]
    for extra, words in ((["--method", "at"], "applies to part"), (["--mask-mode", "paper"], "drop --mask-mode"),
                         (["--lr-schedule", "onecycle"], "step schedule")):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    with pytest.raises(SystemExit):
        main([*base, "--pgd-start", "gaussian"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "choose from uniform, normal-unclipped, uniform-unclipped, normal, none" in err[0], err
    with pytest.raises(FastpartError, match="step schedule"):
        resolve(TrainConfig(dataset="c", numerics="released", lr_schedule="onecycle", device="cpu"),
                DATASETS["cifar10"].defaults)


def test_help_says_which_start_each_method_takes(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split()).replace("- ", "-")  # argparse wraps after hyphens
    for words in ("--numerics {official,released}", "--pgd-start", "default: uniform for at and part, "
                  "normal-unclipped for trades, mart, part-trades and part-mart", "torchcam 0.3.2"):
        assert words in text, words


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    assert main(["convert", "shapes", "--n-train", "64", "--n-test", "16", "--out", str(root), "--format", "npz"]) == 0
    return root


def test_a_released_run_records_its_numerics(data_dir, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "shapes", "--data-dir", str(data_dir), "--model", "resnet18_cifar_w8",
                 "--method", "part", "--numerics", "released", "--epochs", "2", "--burn-in", "1", "--mask-freq", "1",
                 "--steps", "1", "--batch-size", "32", "--eval-steps", "1", "--eval-n", "16", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["numerics"], config["mask_mode"], config["milestones"]) == ("released", "reference", [60, 90])
    assert (config["lr_schedule"], config["eps_delay"], config["eps_warmup"]) == ("step", 0, 0)  # not the demo's ramp
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["phase"] for m in metrics] == ["burn-in", "masked"]
    assert all(np.isfinite(m["loss"]) for m in metrics)


def test_a_model_without_batch_norm_runs_each_forward_once():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    calls = []
    model.register_forward_hook(lambda m, i, o: calls.append(torch.is_grad_enabled()))
    x, y = batch(70)
    for replay in (True, False):
        calls.clear()
        fastpart_step(model, torch.optim.SGD(model.parameters(), lr=0.1), "trades", x, y, EPS, seed=1, replay=replay)
        assert calls[-2:] == [True, True]  # f(x), f(x') for the update; no third one (the attack's are before)
        assert calls.count(True) == 2 + STEPS + 0 and len(calls) == 2 + STEPS + 1  # + the eval-mode f(x)
