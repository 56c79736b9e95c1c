"""A short training run end to end on the generated shapes dataset."""

from __future__ import annotations

import json

import pytest
import torch

from fastpart.cli import main
from fastpart.config import TrainConfig
from fastpart.errors import FastpartError
from fastpart.train import train


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    assert main(["convert", "shapes", "--n-train", "400", "--n-test", "100", "--out", str(root), "--format", "npz"]) == 0
    return root


def test_training_learns_and_records_everything(data_dir, tmp_path, capsys):
    torch.set_num_threads(1)
    run = tmp_path / "run"
    code = main(["train", "--dataset", "shapes", "--data-dir", str(data_dir), "--model", "resnet18_cifar_w8",
                 "--epochs", "4", "--batch-size", "32", "--lr", "0.05", "--steps", "2", "--eval-every", "2",
                 "--out", str(run)])
    assert code == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("shapes resnet18_cifar_w8 at: 4 epochs") and "PGD-20" in summary
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[-1]["loss"] < history[0]["loss"]
    assert "test_natural_acc" in history[1] and "test_natural_acc" in history[3] and "test_natural_acc" not in history[0]
    assert history[-1]["test_pgd20_acc"] <= history[-1]["test_natural_acc"]
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "resnet18_cifar_w8" and config["milestones"] == [3]
    assert json.loads((run / "env.json").read_text())["versions"]["torch"] == torch.__version__
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 4 and state["scheduler"]["last_epoch"] == 4


def test_paper_defaults_fill_unset_options():
    from fastpart.train import paper_defaults, resolve

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
