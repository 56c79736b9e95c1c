"""The fast path of training: no host synchronisation per batch, and the compiled attack (one graph for every
PGD step) equal to the eager one."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import fastpart.training as training
from fastpart.attacks.graphed import graphed_pgd
from fastpart.attacks.pgd import pgd
from fastpart.cli import main
from fastpart.kernels import EpsLevels
from fastpart.objectives import attack_loss_fn, get_objective, natural_probs

SYNCING = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "numpy")
TRAIN = ["--dataset", "shapes", "--model", "resnet18_cifar_w8", "--epochs", "2", "--steps", "2", "--eval-steps", "1",
         "--eval-n", "16"]
PART_SCHEDULE = {"part": ["--burn-in", "1", "--mask-freq", "1"], "part-trades": ["--burn-in", "1", "--mask-freq", "1"]}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    assert main(["convert", "shapes", "--n-train", "160", "--n-test", "32", "--out", str(root), "--format", "npz"]) == 0
    return root


@pytest.mark.parametrize("method", ["at", "part", "part-trades"])
def test_an_epoch_synchronises_with_the_host_a_fixed_number_of_times(data_dir, tmp_path, monkeypatch, method):
    """Every tensor method that makes the host wait for the device is counted while epochs run: the count must
    not grow with the number of batches (5 batches vs 2), so nothing in the hot loop reads a value per batch."""
    counts: collections.Counter = collections.Counter()
    real_methods = {name: getattr(torch.Tensor, name) for name in SYNCING}
    real_epoch = training.train_epoch

    def counting(*args, **kwargs):
        with monkeypatch.context() as patch:
            for name, real in real_methods.items():
                def counted(self, *a, _name=name, _real=real, **k):
                    counts[_name] += 1
                    return _real(self, *a, **k)
                patch.setattr(torch.Tensor, name, counted)
            return real_epoch(*args, **kwargs)

    monkeypatch.setattr(training, "train_epoch", counting)
    per_batch_size = {}
    for batch_size in ("80", "32"):
        counts.clear()
        assert main(["train", *TRAIN, "--method", method, *PART_SCHEDULE.get(method, []), "--batch-size", batch_size,
                     "--data-dir", str(data_dir), "--out", str(tmp_path / batch_size)]) == 0
        per_batch_size[batch_size] = dict(counts)
    assert per_batch_size["80"] == per_batch_size["32"], per_batch_size  # 2 vs 5 batches an epoch
    assert sum(per_batch_size["32"].values()) <= 2 * 2  # two reads an epoch: the sums and their all-reduce


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 10))


@pytest.mark.parametrize("method,levels", [("at", False), ("trades", True)])
def test_compiled_attack_is_one_graph_equal_to_the_eager_attack(method, levels):
    model = tiny_model().train()
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(16, 3, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
    x[:, :, :2] = 1.0
    eps = EpsLevels((torch.rand(16, 1, 8, 8, generator=g) > 0.6).to(torch.uint8), 8 / 255, 2 / 255) if levels else 8 / 255
    objective = get_objective(method)
    probs = natural_probs(model.eval()(x)) if objective.attack_needs_natural_probs else None
    model.train()
    torch._dynamo.reset()
    # fullgraph=True inside graphed_pgd: a graph break raises instead of running eagerly
    fast = graphed_pgd(model, x, y, eps, 2 / 255, 4, objective.attack_loss, probs, start=objective.start,
                       generator=torch.Generator().manual_seed(1))
    eager = pgd(model, x, y, eps, 2 / 255, 4, loss_fn=attack_loss_fn(objective, probs), start=objective.start,
                generator=torch.Generator().manual_seed(1))
    assert model.training and all(p.grad is None for p in model.parameters())
    differing = (fast != eager).float().mean().item()
    assert differing <= 1e-3, differing  # fused float rounding may flip the sign of a gradient within rounding of 0
    bound = eps if isinstance(eps, float) else torch.where(eps.levels.bool(), 8 / 255, 2 / 255)
    assert ((fast - x).abs() <= bound + 1e-6).all() and fast.min() >= 0 and fast.max() <= 1


def test_training_with_the_compiled_attack_tracks_eager(data_dir, tmp_path):
    # timm's smallest ResNet keeps the compile short on the CPU; the code path is the one every model takes
    base = [*TRAIN, "--model", "test_resnet", "--method", "part", "--epochs", "1", "--burn-in", "0",
            "--batch-size", "80", "--data-dir", str(data_dir)]
    assert main(["train", *base, "--out", str(tmp_path / "eager")]) == 0
    assert main(["train", *base, "--compile-attack", "--out", str(tmp_path / "fast")]) == 0
    eager, fast = ([json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
                   for name in ("eager", "fast"))
    for a, b in zip(eager, fast):
        assert abs(a["loss"] - b["loss"]) < 2e-3 and a["phase"] == b["phase"]
