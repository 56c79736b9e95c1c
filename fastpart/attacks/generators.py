"""The generators of training's adversarial examples, by name: the training step asks this registry.

A generator is made once per run from ``GeneratorSettings`` (the objective's attack loss and start, the
step size, the number of steps, the autocast dtype) and called per batch:

    generate = make_generator("pgd", GeneratorSettings(ce_attack, steps=10))
    x_adv = generate(model, x, y, eps, probs, rng)   # eps: float, tensor or EpsLevels; probs: softmax(f(x)) or None

``probs`` is the natural prediction softmax(f(x)) (float32, detached) for objectives whose attack needs it
(TRADES), else None; ``rng`` seeds the random start. Every generator runs the model in eval mode with its
parameters frozen (input gradients only) and returns x_adv inside the budget and [0, 1]. They call the attacks
with ``check_inputs=False``: no host synchronisation per batch for the public functions' argument checks.

    pgd           PGD ascending the objective's attack loss (Madry et al.; PART's mask-weighted PGD under
                  ``EpsLevels``), ``fastpart.attacks.pgd``
    pgd-compiled  the same, each step one ``torch.compile`` graph (``fastpart.attacks.graphed``; --compile-attack)
    mma           the minimum-margin attack, top-3 targets, APGD with its own margin loss (PART's App. H.4;
                  ``--ae mma``), ``fastpart.attacks.mma``
    fgsm-rs       one signed step of 1.25 eps_i from a uniform start, projected (Wong et al., ICLR 2020;
                  ``--ae fgsm-rs``), ``fastpart.attacks.single_step``
    n-fgsm        one signed step of eps_i from noise U(-2 eps_i, 2 eps_i), not projected (de Jorge et al.,
                  NeurIPS 2022; ``--ae n-fgsm``), ``fastpart.attacks.single_step``

The single-step generators take their own start and step (the papers', scaled per pixel by the budget) and
ignore ``start``, ``alpha`` and ``steps``. Every generator's examples lie inside the budget and [0, 1] but
N-FGSM's, which lie within ``REACH["n-fgsm"]`` = 3 budgets of x (its noise is not projected).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from fastpart.attacks.graphed import graphed_pgd
from fastpart.attacks.mma import mma
from fastpart.attacks.pgd import pgd
from fastpart.attacks.single_step import N_FGSM_NOISE, fgsm_rs, n_fgsm
from fastpart.budgets import Eps
from fastpart.errors import FastpartError

__all__ = ["GENERATORS", "REACH", "SINGLE_STEP", "Generator", "GeneratorSettings", "make_generator"]

AttackLoss = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
Generator = Callable[[nn.Module, torch.Tensor, torch.Tensor, Eps, "torch.Tensor | None", torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class GeneratorSettings:
    """What a training-time generator is made from. ``attack_loss(logits_adv, y, probs)`` -> per-sample losses
    (B,) (``fastpart.objectives``); ``start``: the random start (uniform, normal, none)."""

    attack_loss: AttackLoss
    start: str = "uniform"
    alpha: float = 2 / 255
    steps: int = 10
    autocast_dtype: torch.dtype | None = None
    compile_mode: str = "default"  # pgd-compiled: the torch.compile mode


def _pgd(s: GeneratorSettings) -> Generator:
    def generate(model, x, y, eps, probs, rng):
        return pgd(model, x, y, eps, s.alpha, s.steps, loss_fn=lambda logits, labels: s.attack_loss(logits, labels, probs),
                   start=s.start, generator=rng, autocast_dtype=s.autocast_dtype, check_inputs=False)

    return generate


def _pgd_compiled(s: GeneratorSettings) -> Generator:
    def generate(model, x, y, eps, probs, rng):
        return graphed_pgd(model, x, y, eps, s.alpha, s.steps, s.attack_loss, probs, start=s.start, generator=rng,
                           autocast_dtype=s.autocast_dtype, mode=s.compile_mode)

    return generate


def _mma(s: GeneratorSettings) -> Generator:
    def generate(model, x, y, eps, probs, rng):
        return mma(model, x, y, eps, k=3, steps=s.steps, generator=rng, autocast_dtype=s.autocast_dtype,
                   check_inputs=False)

    return generate


def _single_step(attack: Callable[..., torch.Tensor]) -> Callable[[GeneratorSettings], Generator]:
    def factory(s: GeneratorSettings) -> Generator:
        def generate(model, x, y, eps, probs, rng):
            return attack(model, x, y, eps, loss_fn=lambda logits, labels: s.attack_loss(logits, labels, probs),
                          generator=rng, autocast_dtype=s.autocast_dtype, check_inputs=False)

        return generate

    return factory


GENERATORS: dict[str, Callable[[GeneratorSettings], Generator]] = {
    "pgd": _pgd,
    "pgd-compiled": _pgd_compiled,
    "mma": _mma,
    "fgsm-rs": _single_step(fgsm_rs),
    "n-fgsm": _single_step(n_fgsm),
}
SINGLE_STEP = ("fgsm-rs", "n-fgsm")  # one gradient per example: training watches them for catastrophic overfitting
REACH = {"n-fgsm": 1 + N_FGSM_NOISE}  # how far from x a generator's examples may lie, in budgets (others: 1)


def make_generator(name: str, settings: GeneratorSettings) -> Generator:
    """The generator registered as ``name``, made from ``settings``."""
    factory = GENERATORS.get(name)
    if factory is None:
        raise FastpartError(f"unknown adversarial example generator {name!r}; choose from {', '.join(GENERATORS)}")
    return factory(settings)
