"""A short training run end to end on the generated shapes dataset."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastpart
from fastpart.cli import main
from fastpart.config import TrainConfig
from fastpart.errors import FastpartError
from fastpart.kernels import EpsLevels, eps_from_levels
from fastpart.training import train


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    assert main(["convert", "shapes", "--n-train", "400", "--n-test", "100", "--out", str(root), "--format", "npz"]) == 0
    return root


def test_training_learns_and_records_everything(data_dir, tmp_path, capsys):
    torch.set_num_threads(1)
    run = tmp_path / "run"
    code = main(["train", "--dataset", "shapes", "--data-dir", str(data_dir), "--model", "resnet18_cifar_w8",
                 "--method", "at", "--epochs", "4", "--batch-size", "32", "--lr", "0.05", "--steps", "2", "--eval-every", "2",
                 "--out", str(run)])
    assert code == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("shapes resnet18_cifar_w8 at: 4 epochs") and "PGD-20" in summary
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert all(h["wall_seconds"] >= h["epoch_seconds"] for h in history)  # the whole epoch, evaluations included
    assert "s with masks and evaluations)" in summary
    assert history[-1]["loss"] < history[0]["loss"]
    assert "test_natural_acc" in history[1] and "test_natural_acc" in history[3] and "test_natural_acc" not in history[0]
    assert history[-1]["test_pgd20_acc"] <= history[-1]["test_natural_acc"]
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "resnet18_cifar_w8" and config["milestones"] == [3]
    env = json.loads((run / "env.json").read_text())
    assert env["versions"]["torch"] == torch.__version__
    assert env["threads"] == 1 and env["command"] == sys.argv and env["hostname"] == socket.gethostname()
    assert env["source_revision"] is None or re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", env["source_revision"])
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 4 and state["scheduler"]["last_epoch"] == 4


def test_source_revision_is_the_checkout_of_the_package_or_none(tmp_path):
    from fastpart.provenance import source_revision

    here = source_revision()
    if shutil.which("git") and (Path(fastpart.__file__).resolve().parents[1] / ".git").exists():
        head = subprocess.run(["git", "-C", str(Path(fastpart.__file__).parent), "rev-parse", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        assert here is not None and here.split("+")[0] == head
    assert source_revision(tmp_path) is None  # not a git checkout (an installed wheel)


def test_paper_defaults_fill_unset_options():
    from fastpart.resolve import paper_defaults, resolve

    cfg = resolve(TrainConfig(dataset="cifar10", device="cpu"), paper_defaults({"dataset": "cifar10"}))
    assert (cfg.model, cfg.epochs, cfg.batch_size, cfg.lr, cfg.wd, cfg.milestones) == ("resnet18_cifar", 80, 128, 0.01, 2e-4, (60,))
    assert cfg.alpha == pytest.approx(2 / 255) and cfg.precision == "fp32"
    svhn = resolve(TrainConfig(dataset="svhn", epochs=8, lr=0.1), paper_defaults({"dataset": "svhn"}))
    assert (svhn.epochs, svhn.lr, svhn.wd, svhn.milestones) == (8, 0.1, 3.5e-3, (6,)) and svhn.alpha == pytest.approx(1 / 255)
    assert paper_defaults({"dataset": "imagefolder"}) == paper_defaults({"dataset": "cifar10"})


def test_diverging_run_stops_with_a_clear_message(data_dir, tmp_path):
    cfg = TrainConfig(data_dir=str(data_dir), out=str(tmp_path / "run"), model="resnet18_cifar_w8", epochs=2,
                      batch_size=50, lr=1e6, steps=1)
    with pytest.raises(FastpartError, match="loss became"):
        train(cfg)


def test_mma_training_examples_respect_the_mask_weighted_budget(data_dir, tmp_path, monkeypatch):
    import fastpart.attacks.generators as generators  # the training step's generators call mma from there
    from fastpart.part import MaskCache

    seen = []

    def recording_mma(model, x, y, eps, **kwargs):
        x_adv = real_mma(model, x, y, eps, **kwargs)
        seen.append((x, x_adv, eps, kwargs))
        return x_adv

    real_mma = generators.mma
    monkeypatch.setattr(generators, "mma", recording_mma)
    run = tmp_path / "run"
    assert main(["train", "--dataset", "shapes", "--data-dir", str(data_dir), "--model", "resnet18_cifar_w8",
                 "--method", "part", "--ae", "mma", "--epochs", "2", "--burn-in", "1", "--mask-freq", "1",
                 "--batch-size", "50", "--steps", "3", "--eval-steps", "1", "--eval-n", "50", "--eps-delay", "0",
                 "--eps-warmup", "0", "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["ae"] == "mma"
    assert len(seen) == 2 * (400 // 50)
    burn_in, masked = seen[0], seen[-1]
    assert burn_in[2] == pytest.approx(8 / 255) and burn_in[3]["k"] == 3 and burn_in[3]["steps"] == 3
    x, x_adv, levels, _ = masked
    assert isinstance(levels, EpsLevels) and levels.levels.shape == (50, 1, 32, 32)
    eps = eps_from_levels(levels.levels, levels.high, levels.low)
    assert sorted(eps.unique().tolist()) == pytest.approx([7 / 255, 8 / 255])
    assert bool(((x_adv - x).abs() <= eps + 1e-6).all())  # the per-pixel box holds
    low = (eps < 7.5 / 255).expand_as(x)
    assert (x_adv - x).abs()[low].max() > 6 / 255  # and the attack uses the low pixels' budget
    levels = MaskCache(run / "masks")
    assert len(levels.keys()) == 1


def test_unknown_training_attack_is_one_line(data_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--data-dir", str(data_dir), "--ae", "fgsm", "--out", str(tmp_path / "r")])
    assert "invalid choice" in capsys.readouterr().err


def test_compiled_training_runs_and_tracks_eager(data_dir, tmp_path):
    """--compile trains the same model: same checkpoint names, the first epoch's loss within rounding.

    Weights are not compared bit for bit: a compiled backward sums in another order, and on this CPU its
    parameter gradients differ from float64 by up to ~1e-2 of their scale (the next test), which a few
    SGD steps carry into the weights.
    """
    torch.set_num_threads(1)
    common = dict(data_dir=str(data_dir), model="resnet18_cifar_w8", epochs=1, batch_size=100, steps=1,
                  eval_n=50, eval_steps=1, device="cpu")
    eager = train(TrainConfig(out=str(tmp_path / "eager"), **common))
    compiled = train(TrainConfig(out=str(tmp_path / "compiled"), compile=True, **common))
    a = torch.load(tmp_path / "eager" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "compiled" / "checkpoint.pt", weights_only=True)["model"]
    assert list(b) == list(a)  # the plain model's names, not the compiled wrapper's
    assert compiled.history[0]["loss"] == pytest.approx(eager.history[0]["loss"], rel=2e-3)


def test_compiled_model_gradients_stay_within_low_precision_rounding():
    """Measured on this CPU with inductor: eager fp32 gradients within ~1e-5 of float64, compiled within ~1e-2
    of the gradient's scale: within what bf16 training (the CUDA default) rounds anyway."""
    import copy

    import torch.nn.functional as F

    from fastpart.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet18_cifar_w8", num_classes=10)
    x, y = torch.rand(32, 3, 32, 32), torch.randint(0, 10, (32,))
    exact = copy.deepcopy(model).double()
    F.cross_entropy(exact(x.double()), y).backward()

    def gradients(net):
        model.zero_grad()
        F.cross_entropy(net(x), y).backward()
        return [p.grad.double() for p in model.parameters()]

    eager, compiled = gradients(model), gradients(torch.compile(model))
    for e, c, g in zip(eager, compiled, (p.grad for p in exact.parameters())):
        scale = g.abs().max()
        assert (e - g).abs().max() <= 1e-4 * scale
        assert (c - g).abs().max() <= 2e-2 * scale
