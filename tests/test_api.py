"""The public Python API: what ``import fastpart`` exports resolves, is documented, and the README's example
runs as written."""

from __future__ import annotations

import ast
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import fastpart
from fastpart.attacks.generators import GeneratorSettings, make_generator
from fastpart.budgets import EpsLevels, eps_from_levels
from fastpart.objectives import OBJECTIVES, ce_attack

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_exported_name_resolves_and_is_documented():
    assert set(fastpart.__all__) == {"__version__", *fastpart._EXPORTS}
    for name in fastpart.__all__:
        value = getattr(fastpart, name)
        if callable(value):
            assert (value.__doc__ or "").strip(), f"fastpart.{name} has no docstring"
    assert "train" in dir(fastpart) and fastpart.train.__module__ == "fastpart.training"


def readme_block(heading: str) -> str:
    text = README.read_text()
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_training_loop_runs_verbatim(tmp_path):
    from fastpart.cli import main

    assert main(["convert", "shapes", "--n-train", "256", "--n-test", "32", "--out", str(tmp_path / "data"),
                 "--format", "npz"]) == 0
    code = readme_block("## Use fastpart in your own training loop")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.fullmatch(r"PGD-20 accuracy of the last batch: \d+\.\d%\n", result.stdout)


def test_python_dash_m_fastpart_is_the_command(tmp_path):
    result = subprocess.run([sys.executable, "-m", "fastpart", "--version"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == f"fastpart {fastpart.__version__}"
    bad = subprocess.run([sys.executable, "-m", "fastpart", "train", "--dataset", "nothing", "--data-dir",
                          str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("fastpart train: error: no readable manifest")



# ---- the attacks' defaults and argument checks, the attack objects, the objectives by method name ----------


def test_the_type_checking_imports_list_the_exported_names():
    tree = ast.parse(Path(fastpart.__file__).read_text())
    guarded = next(node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    imported = {alias.asname or alias.name: node.module for node in guarded.body for alias in node.names}
    assert imported == fastpart._EXPORTS
    assert {"PGD", "PARTAttack", "train_step"} <= set(fastpart.__all__)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 10)).eval()


def tiny_batch(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_the_attacks_take_the_fields_defaults():
    defaults = {name: {k: p.default for k, p in inspect.signature(getattr(fastpart, name)).parameters.items()}
                for name in ("pgd", "apgd", "mma")}
    assert (defaults["pgd"]["eps"], defaults["pgd"]["alpha"], defaults["pgd"]["steps"]) == (8 / 255, 2 / 255, 10)
    assert (defaults["apgd"]["eps"], defaults["apgd"]["steps"]) == (8 / 255, 100)
    assert (defaults["mma"]["eps"], defaults["mma"]["k"], defaults["mma"]["steps"]) == (8 / 255, 3, 20)
    model, (x, y) = tiny_model(), tiny_batch()
    plain = fastpart.pgd(model, x, y, generator=seeded())
    assert torch.equal(plain, fastpart.pgd(model, x, y, 8 / 255, 2 / 255, 10, generator=seeded()))
    assert (plain - x).abs().max() <= 8 / 255 + 1e-6


def test_a_budget_in_0_255_units_is_refused_with_the_fraction_it_meant():
    model, (x, y) = tiny_model(), tiny_batch()
    levels = EpsLevels(torch.zeros(len(x), 1, 8, 8, dtype=torch.uint8), 8, 7)
    calls = {
        "pgd eps": lambda: fastpart.pgd(model, x, y, eps=8),
        "pgd alpha": lambda: fastpart.pgd(model, x, y, alpha=2),
        "pgd levels": lambda: fastpart.pgd(model, x, y, levels),
        "apgd": lambda: fastpart.apgd(model, x, y, 8, 5),
        "mma": lambda: fastpart.mma(model, x, y, 8, steps=5),
        "part_budget": lambda: fastpart.part_budget(model, x, eps=8, eps_low=7 / 255),
        "part_budget eps_low": lambda: fastpart.part_budget(model, x, eps=8 / 255, eps_low=7),
        "robust_accuracy": lambda: fastpart.robust_accuracy(model, x, y, lambda m, xb, yb: xb, eps=8),
        "PGD": lambda: fastpart.PGD(model, eps=8),
        "PARTAttack": lambda: fastpart.PARTAttack(model, eps_low=7),
    }
    for what, call in calls.items():
        with pytest.raises(ValueError, match=r"budgets are in \[0, 1\] units \(images are in \[0, 1\]\): "
                                             r"did you mean [278]/255\?$") as info:
            call()
        assert "\n" not in str(info.value), what
    for bad in (-1 / 255, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="a budget must be a finite number >= 0"):
            fastpart.pgd(model, x, y, eps=bad)
        with pytest.raises(ValueError, match="a budget must be a finite number >= 0"):
            fastpart.part_budget(model, x, eps=bad)
    with pytest.raises(ValueError, match=r"budget map with values in \[8, 8\]"):
        fastpart.pgd(model, x, y, torch.full_like(x, 8.0))
    with pytest.raises(ValueError, match="steps must be an integer >= 0"):
        fastpart.pgd(model, x, y, steps=-1)


def test_images_outside_0_1_and_float_labels_are_refused_and_int32_labels_taken():
    model, (x, y) = tiny_model(), tiny_batch()
    calls = {
        "pgd": lambda x, y: fastpart.pgd(model, x, y, steps=1),
        "apgd": lambda x, y: fastpart.apgd(model, x, y, steps=1)[0],
        "mma": lambda x, y: fastpart.mma(model, x, y, steps=1),
        "robust_accuracy": lambda x, y: fastpart.robust_accuracy(model, x, y, lambda m, xb, yb: xb, 8 / 255),
        "PGD": lambda x, y: fastpart.PGD(model, steps=1)(x, y),
        "PARTAttack": lambda x, y: fastpart.PARTAttack(model, steps=1)(x, y),
    }
    for name, call in {**calls, "part_budget": lambda x, y: fastpart.part_budget(model, x, y)}.items():
        with pytest.raises(ValueError, match=r"images must be in \[0, 1\], got values in \[.*, 2\d\d"):
            call(x * 255, y)
        with pytest.raises(ValueError, match="images x must be a float tensor"):
            call((x * 255).to(torch.uint8), y)
        with pytest.raises(ValueError, match="labels y must be a tensor of class indices of an integer dtype, got "
                                             "torch.float32"):
            call(x, y.float())
    with pytest.raises(ValueError, match=r"labels y must have shape \(6,\)"):
        fastpart.pgd(model, x, y[:3])
    for name, call in calls.items():  # int32 labels give what int64 ones give
        torch.manual_seed(0)
        as_int32 = call(x, y.int())
        torch.manual_seed(0)
        assert as_int32 == call(x, y) if name == "robust_accuracy" else torch.equal(as_int32, call(x, y)), name


def test_the_training_generators_skip_the_argument_checks():
    """The public functions read the images' range on the host; training's per-batch generators must not (a host
    synchronisation a batch): they pass check_inputs=False, so nothing is checked (or refused) there."""
    model, (x, y) = tiny_model(), tiny_batch()
    for name in ("pgd", "mma"):
        generate = make_generator(name, GeneratorSettings(ce_attack, steps=2))
        wide = generate(model, x * 2, y, 8 / 255, None, seeded())  # outside [0, 1]: not looked at
        assert wide.shape == x.shape and torch.isfinite(wide).all()


def test_pgd_and_part_attack_objects_are_the_functions_with_settings_fixed():
    model, (x, y) = tiny_model(), tiny_batch()
    attack = fastpart.PGD(model, eps=4 / 255, alpha=1 / 255, steps=3, generator=seeded(1))
    assert torch.equal(attack(x, y), fastpart.pgd(model, x, y, 4 / 255, 1 / 255, 3, generator=seeded(1)))
    assert repr(attack).startswith("PGD(eps=") and fastpart.PGD(model).steps == 10

    part = fastpart.PARTAttack(model, eps=8 / 255, eps_low=2 / 255, alpha=2 / 255, steps=5, generator=seeded(2))
    budget = part.budget(x, y)
    assert isinstance(budget, EpsLevels) and (budget.high, budget.low) == (8 / 255, 2 / 255)
    assert torch.equal(budget.levels, fastpart.part_budget(model, x, eps=8 / 255, eps_low=2 / 255).levels)
    x_adv = part(x, y.int())
    assert torch.equal(x_adv, fastpart.pgd(model, x, y, budget, 2 / 255, 5, generator=seeded(2)))
    per_pixel = eps_from_levels(budget.levels, budget.high, budget.low)
    assert ((x_adv - x).abs() <= per_pixel + 1e-6).all() and x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() > 2 / 255 + 1e-6  # the important pixels take the larger budget
    assert not model.training


def test_get_objective_takes_every_method_name_and_suggests_the_closest():
    for name, method in fastpart.METHODS.items():
        assert fastpart.get_objective(name) is OBJECTIVES[method.objective]
    assert fastpart.get_objective("part-trades").name == "trades"
    with pytest.raises(fastpart.FastpartError, match=r"^unknown objective 'part-trade' \(did you mean part-trades\?\); "
                                                     r"choose from at, trades, mart, part, part-trades, part-mart$"):
        fastpart.get_objective("part-trade")


def test_train_step_and_the_attack_losses_are_public():
    import fastpart.attacks
    from fastpart.attacks import losses
    from fastpart.step import train_step

    assert "losses" in fastpart.attacks.__all__ and losses.ce_loss is fastpart.attacks.losses.ce_loss
    assert fastpart.train_step is train_step
    model, (x, y) = tiny_model(), tiny_batch()
    objective = fastpart.get_objective("part")
    generate = make_generator("pgd", GeneratorSettings(objective.attack_loss, objective.start, steps=2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sums = fastpart.train_step(model, optimizer, objective, generate, x, y, fastpart.part_budget(model, x), seeded())
    assert sums.shape == (3,) and torch.isfinite(sums).all()
