"""Every registry, looped over (as timm's tests loop over its models): the methods, the training-time
generators and the evaluators. A new entry is tested by being registered. (The objectives are looped over in
test_objectives, the models in test_models.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from fastpart.attacks.generators import GENERATORS, REACH, GeneratorSettings, make_generator
from fastpart.budgets import EpsLevels, eps_from_levels
from fastpart.config import METHODS, TRAINING_ATTACKS, EvalConfig, TrainConfig
from fastpart.errors import FastpartError
from fastpart.measurements import EVALUATORS, Context, get_evaluator
from fastpart.objectives import OBJECTIVES, get_objective, natural_probs
from fastpart.part import part_budget
from fastpart.runfolder import LoadedRun
from fastpart.step import train_step

EPS = 8 / 255


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 10))


def batch(n: int = 8, size: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    x[:, :, :1] = 1.0  # saturated pixels: the clip to [0, 1] matters
    return x, torch.randint(0, 10, (n,), generator=g)


# ---- methods ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_takes_a_training_step(name):
    method = METHODS[name]
    assert method.objective in OBJECTIVES
    model = tiny_model()
    x, y = batch()
    objective = get_objective(method.objective)
    eps = part_budget(model, x) if method.pixel_reweighted else EPS
    generate = make_generator("pgd", GeneratorSettings(objective.attack_loss, objective.start, 2 / 255, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    sums = train_step(model, optimizer, objective, generate, x, y, eps, torch.Generator().manual_seed(0))
    assert sums.shape == (3,) and torch.isfinite(sums).all() and 0 <= sums[1] <= 8 and 0 <= sums[2] <= 8
    assert model.training  # left in train mode by the update
    assert any(not torch.equal(p, q) for p, q in zip(before, model.parameters()))


# ---- generators ------------------------------------------------------------------------------------------


def test_the_generators_cover_every_training_attack():
    assert set(TRAINING_ATTACKS) <= set(GENERATORS)
    with pytest.raises(FastpartError, match="unknown adversarial example generator 'fgsm'; choose from pgd"):
        make_generator("fgsm", GeneratorSettings(OBJECTIVES["at"].attack_loss))


@pytest.mark.parametrize("name", sorted(GENERATORS))
@pytest.mark.parametrize("objective_name", ["at", "trades"])
def test_every_generator_stays_in_its_budget_is_seeded_and_leaves_the_model_as_it_was(name, objective_name):
    torch._dynamo.reset()
    model = tiny_model().train()
    flags = [p.requires_grad for p in model.parameters()]
    x, y = batch()
    g = torch.Generator().manual_seed(1)
    levels = EpsLevels((torch.rand(8, 1, 8, 8, generator=g) > 0.5).to(torch.uint8), EPS, 2 / 255)
    objective = get_objective(objective_name)
    probs = natural_probs(model.eval()(x)) if objective.attack_needs_natural_probs else None
    model.train()
    generate = make_generator(name, GeneratorSettings(objective.attack_loss, objective.start, 2 / 255, 3))
    for eps in (EPS, levels):
        first = generate(model, x, y, eps, probs, torch.Generator().manual_seed(5))
        again = generate(model, x, y, eps, probs, torch.Generator().manual_seed(5))
        assert torch.equal(first, again)  # the random start comes from the generator alone
        bound = eps if isinstance(eps, float) else eps_from_levels(eps.levels, eps.high, eps.low)
        assert ((first - x).abs() <= REACH.get(name, 1) * bound + 1e-6).all() and first.min() >= 0 and first.max() <= 1
        assert not torch.equal(first, x)
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())


# ---- evaluators ------------------------------------------------------------------------------------------

# cifar10c needs a converted CIFAR-10-C (test_evaluate and test_corruptions run it on generated files)
RUNNABLE = sorted(set(EVALUATORS) - {"cifar10c"}) + ["pgd3", "adaptive2"]


def test_every_evaluator_is_found_by_its_name():
    for name in [*EVALUATORS, "pgd7", "adaptive", "adaptive5"]:
        evaluator = get_evaluator(name)
        assert evaluator.name == name and evaluator.label
    with pytest.raises(FastpartError, match="unknown"):
        get_evaluator("pgd-20")


@pytest.mark.parametrize("name", RUNNABLE)
def test_every_evaluator_measures_no_point_robust_that_is_wrong_clean(name):
    model = tiny_model().eval()
    run = LoadedRun(model, TrainConfig(precision="fp32"), Path("none"), Path("."), 0, {"num_classes": 10})
    # a large budget breaks the points early: AutoAttack's later attacks then have little left to do (its verdicts
    # are checked in test_evaluate and test_autoattack)
    cfg = EvalConfig(run="none", eps=64 / 255, eps_curve=(0.0, 64 / 255))
    ctx = Context(run, cfg, torch.device("cpu"), None)
    x, y = batch(6)
    with torch.no_grad():
        y = model(x).argmax(1)  # every point correct clean: attacks have something to break
    y[0] = (y[0] + 1) % 10  # ... but one
    evaluator = get_evaluator(name)
    items = evaluator.items(ctx)
    assert items and len({item.key for item in items}) == len(items)
    results = {}
    for item in items:
        correct = item.correct(ctx, x, y, torch.Generator().manual_seed(0))
        assert correct.dtype == torch.bool and correct.shape == (6,) and not correct[0]
        results[item.key] = {"accuracy": correct.float().mean().item(), "n": 6}
    if evaluator.summarise is not None:
        assert "accuracy" in evaluator.summarise(ctx, results)


def test_the_attack_names_eval_checks_before_torch_are_the_evaluators():
    """`fastpart eval` refuses unknown attack names before importing torch, from the names in fastpart.config: they
    must be exactly the registry's (a new evaluator is added to both), and the patterns must accept what the
    registry parses and refuse what it refuses."""
    import re

    from fastpart.config import EVAL_ATTACK_PATTERNS, EVAL_ATTACKS

    def accepted(name: str) -> bool:
        return name in EVAL_ATTACKS or any(re.fullmatch(p, name) for p in EVAL_ATTACK_PATTERNS.values())

    assert set(EVAL_ATTACKS) == set(EVALUATORS)
    for name in ("pgd7", "pgd20", "adaptive", "adaptive12", "pgd", "pgd-20", "adaptive-5", "pgd7x", "aa-fab"):
        try:
            parsed = get_evaluator(name).name == name
        except FastpartError:
            parsed = False
        assert accepted(name) == parsed, name
