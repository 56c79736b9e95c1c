"""fastpart: fast, tested Pixel-reweighted Adversarial Training (PART, ICML 2024) and its baselines.

The public API (``__all__``), for use in your own training loops; every name is loaded on first use, so
``import fastpart`` costs nothing until then (``fastpart --version`` stays fast):

    data      DeviceLoader, Augment             seeded batches of a converted split on the device
              read_split, split_path            a converted split in host memory; its file
    model     create_model, MODELS              fastpart's CIFAR networks or any timm model
    masks     MaskSettings, part_budget         PART's per-pixel budget of a batch (CAM -> EpsLevels)
              split_levels, eps_levels          ... of a whole split; CAMs -> levels
              class_activation_maps             batched GradCAM / XGradCAM / LayerCAM
    attack    EpsLevels, pgd, apgd, mma         mask-weighted PGD, APGD, the minimum-margin attack
              PGD, PARTAttack                   the same as objects: attack(x, y) -> x_adv; PART's own budget
              robust_accuracy, robust_correct   what counts as robust (one definition)
    objective get_objective, attack_loss_fn,    AT / TRADES / MART losses, by method name (part, part-trades, ...)
              natural_probs, METHODS
    step      train_step                        one attack + optimizer step, as ``fastpart train`` runs it
    runs      TrainConfig, EvalConfig, ConvertConfig, convert, train, evaluate, load_run
    errors    FastpartError                     every error meant for users: one line

Units: images are float tensors in [0, 1], (B, 3, H, W); budgets (eps) are in the same units (8/255). The
attacks default to the field's settings (eps 8/255, alpha 2/255, 10 PGD steps) and refuse, with a one-line
``ValueError``, a budget above 1 (8 for 8/255), images outside [0, 1] (0-255) and float labels.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # what editors and type checkers see; at run time __getattr__ loads each name on first use
    from fastpart.attacks.apgd import apgd as apgd
    from fastpart.attacks.mma import mma as mma
    from fastpart.attacks.objects import PGD as PGD
    from fastpart.part_attack import PARTAttack as PARTAttack
    from fastpart.attacks.pgd import pgd as pgd
    from fastpart.attacks.robust import robust_accuracy as robust_accuracy
    from fastpart.attacks.robust import robust_correct as robust_correct
    from fastpart.budgets import EpsLevels as EpsLevels
    from fastpart.config import METHODS as METHODS
    from fastpart.config import ConvertConfig as ConvertConfig
    from fastpart.config import EvalConfig as EvalConfig
    from fastpart.config import TrainConfig as TrainConfig
    from fastpart.data.convert import convert as convert
    from fastpart.data.splitfiles import read_split as read_split
    from fastpart.data.splitfiles import split_path as split_path
    from fastpart.errors import FastpartError as FastpartError
    from fastpart.evaluation import evaluate as evaluate
    from fastpart.loader import Augment as Augment
    from fastpart.loader import DeviceLoader as DeviceLoader
    from fastpart.models import MODELS as MODELS
    from fastpart.models import create_model as create_model
    from fastpart.objectives import attack_loss_fn as attack_loss_fn
    from fastpart.objectives import get_objective as get_objective
    from fastpart.objectives import natural_probs as natural_probs
    from fastpart.part import MaskSettings as MaskSettings
    from fastpart.part import class_activation_maps as class_activation_maps
    from fastpart.part import eps_levels as eps_levels
    from fastpart.part import part_budget as part_budget
    from fastpart.part import split_levels as split_levels
    from fastpart.runfolder import load_run as load_run
    from fastpart.step import train_step as train_step
    from fastpart.training import train as train

_EXPORTS = {
    "DeviceLoader": "fastpart.loader",
    "Augment": "fastpart.loader",
    "read_split": "fastpart.data.splitfiles",
    "split_path": "fastpart.data.splitfiles",
    "create_model": "fastpart.models",
    "MODELS": "fastpart.models",
    "MaskSettings": "fastpart.part",
    "eps_levels": "fastpart.part",
    "part_budget": "fastpart.part",
    "split_levels": "fastpart.part",
    "class_activation_maps": "fastpart.part",
    "EpsLevels": "fastpart.budgets",
    "pgd": "fastpart.attacks.pgd",
    "apgd": "fastpart.attacks.apgd",
    "mma": "fastpart.attacks.mma",
    "PGD": "fastpart.attacks.objects",
    "PARTAttack": "fastpart.part_attack",
    "robust_accuracy": "fastpart.attacks.robust",
    "robust_correct": "fastpart.attacks.robust",
    "get_objective": "fastpart.objectives",
    "attack_loss_fn": "fastpart.objectives",
    "natural_probs": "fastpart.objectives",
    "train_step": "fastpart.step",
    "METHODS": "fastpart.config",
    "TrainConfig": "fastpart.config",
    "EvalConfig": "fastpart.config",
    "ConvertConfig": "fastpart.config",
    "convert": "fastpart.data.convert",
    "train": "fastpart.training",
    "evaluate": "fastpart.evaluation",
    "load_run": "fastpart.runfolder",
    "FastpartError": "fastpart.errors",
}

__all__ = [  # the names of _EXPORTS, spelled out for tools that read __all__ without running it
    "__version__",
    "DeviceLoader", "Augment", "read_split", "split_path", "create_model", "MODELS",
    "MaskSettings", "eps_levels", "part_budget", "split_levels", "class_activation_maps",
    "EpsLevels", "pgd", "apgd", "mma", "PGD", "PARTAttack", "robust_accuracy", "robust_correct",
    "get_objective", "attack_loss_fn", "natural_probs", "train_step",
    "METHODS", "TrainConfig", "EvalConfig", "ConvertConfig", "convert", "train", "evaluate", "load_run",
    "FastpartError",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fastpart' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
