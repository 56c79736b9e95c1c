"""The design's commands, verbatim: `fastpart convert cifar10` then `fastpart train --epochs 80 --mask-freq 10`
train PART on CIFAR-10 with the paper's settings; mistakes in how a run is asked for are one line, before torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from formats import make_cifar10_python

from fastpart.cli import main
from fastpart.config import TrainConfig

# The paper's Appendix G (SPEC.md's table): model, epochs, batch, lr, weight decay, alpha; for every dataset eps
# 8/255, eps_low 7/255, PGD-10, lr / 10 at epoch 60, burn-in 20, masks every 10, PART.
PAPER = {
    "cifar10": ("resnet18_cifar", 80, 128, 0.01, 2e-4, 2 / 255),
    "svhn": ("resnet18_cifar", 80, 128, 0.01, 3.5e-3, 1 / 255),
    "tinyimagenet": ("wrn34_10", 80, 512, 0.02, 5e-4, 2 / 255),
}


@pytest.mark.parametrize("dataset", sorted(PAPER))
def test_train_with_no_options_resolves_the_papers_settings(dataset):
    from fastpart.resolve import paper_defaults, resolve

    cfg = resolve(TrainConfig(dataset=dataset, device="cpu"), paper_defaults({"dataset": dataset}))
    model, epochs, batch, lr, wd, alpha = PAPER[dataset]
    assert (cfg.method, cfg.model, cfg.epochs, cfg.batch_size, cfg.lr, cfg.wd) == ("part", model, epochs, batch, lr, wd)
    assert cfg.alpha == pytest.approx(alpha) and cfg.eps == pytest.approx(8 / 255) and cfg.eps_low == pytest.approx(7 / 255)
    assert (cfg.steps, cfg.milestones, cfg.burn_in, cfg.mask_freq, cfg.momentum) == (10, (60,), 20, 10, 0.9)


def test_the_burn_in_defaults_to_a_quarter_of_the_epochs():
    from fastpart.resolve import paper_defaults, resolve

    shapes = paper_defaults({"dataset": "shapes"})
    assert resolve(TrainConfig(dataset="shapes", epochs=10, device="cpu"), shapes).burn_in == 2
    assert resolve(TrainConfig(dataset="shapes", epochs=3, device="cpu"), shapes).burn_in == 0
    assert resolve(TrainConfig(dataset="shapes", method="at", epochs=3, device="cpu"), shapes).burn_in is None


def run_cli(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """``fastpart ARGS`` in a fresh process; its stdout also says whether torch was imported."""
    code = ("import sys\nfrom fastpart.cli import main\ntry:\n    code = main(sys.argv[1:])\n"
            "except SystemExit as exit:\n    code = exit.code\n"
            "print('torch imported' if 'torch' in sys.modules else 'no torch')\nsys.exit(code)")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("args, message", [
    (["runs/nope"], "no run at runs/nope: give a run folder written by `fastpart train`"),
    (["run", "--attacks", "natural,autoattack"], "unknown attack 'autoattack' (did you mean aa?)"),
    (["run", "--attacks", "pgd-20"], "unknown attack 'pgd-20'"),
    (["run", "--n", "0"], "--n must be >= 1, got 0"),
    (["run", "--checkpoint", "best"], "no best.pt in run (best.pt is written by runs trained with --val-n)"),
    (["--checkpoint", "zoo.pt"], "--checkpoint zoo.pt: no such file"),
    (["--checkpoint", "run/checkpoint.pt"], "a state dict file needs --model NAME and --dataset D"),
    (["run", "--eps", "8"], "did you mean 8/255?"),
])
def test_a_mistaken_evaluation_is_one_line_before_torch_is_imported(tmp_path, args, message):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"")  # never opened: the mistake is found first
    result = run_cli(["eval", *args], tmp_path)
    assert result.returncode == 2 and result.stdout.strip() == "no torch"
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr


def converted_shapes(folder: Path, name: str = "shapes") -> None:
    assert main(["convert", "shapes", "--n-train", "64", "--n-test", "32", "--format", "npz",
                 "--out", str(folder), "--name", name]) == 0


@pytest.mark.parametrize("args, message", [
    (["--method", "at", "--mask-freq", "5"], "--mask-freq applies to part, part-trades, part-mart; with --method at "
                                             "there are no masks"),
    (["--method", "trades", "--eps-low", "6/255", "--tau", "0.5"], "--eps-low, --tau apply to part"),
    (["--epochs", "10", "--burn-in", "10"], "--burn-in 10 is not shorter than --epochs 10"),
    (["--epoch", "3"], "unrecognized arguments: --epoch 3"),
    (["--method", "parts"], "invalid choice 'parts' (did you mean part?)"),
    (["--eps", "8"], "budgets are in [0, 1] units (images are in [0, 1]): did you mean 8/255?"),
    (["--lr", "-1"], "--lr must be a positive number, got -1.0"),
    (["--awp-warmup", "5"], "--awp-warmup 5: give epochs >= 0 with --awp GAMMA"),
])
def test_a_mistaken_run_is_one_line_before_torch_is_imported(tmp_path, args, message):
    converted_shapes(tmp_path / "data")
    result = run_cli(["train", *args, "--out", str(tmp_path / "run")], tmp_path)
    assert result.returncode == 2 and result.stdout.strip() == "no torch"
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()


def test_the_dataset_defaults_to_the_only_one_converted(tmp_path):
    none = run_cli(["train", "--epochs", "1"], tmp_path)
    assert none.returncode == 2 and none.stdout.strip() == "no torch"
    assert "no converted dataset in data: run `fastpart convert cifar10`" in none.stderr
    assert "`fastpart convert shapes`" in none.stderr and len(none.stderr.strip().splitlines()) == 1
    converted_shapes(tmp_path / "data", "one")
    converted_shapes(tmp_path / "data", "two")
    several = run_cli(["train", "--epochs", "1"], tmp_path)
    assert several.returncode == 2 and several.stdout.strip() == "no torch"
    assert "data holds several converted datasets (one, two): choose one with --dataset" in several.stderr
    misspelt = run_cli(["train", "--dataset", "on"], tmp_path)
    assert misspelt.returncode == 2 and "(did you mean one?)" in misspelt.stderr
    not_converted = run_cli(["train", "--dataset", "svhn"], tmp_path)
    assert "run `fastpart convert svhn --out data` first" in not_converted.stderr


def test_eval_and_report_default_to_where_train_writes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for verb in ("eval", "report"):
        result = run_cli([verb], tmp_path)
        assert result.returncode == 2 and "runs/latest" in result.stderr, result.stderr


@pytest.mark.slow
def test_the_designs_two_commands_verbatim_start_part_on_cifar10_and_resume(tmp_path):
    """In an empty folder with the official archive where convert's message says to put it, the two commands
    convert CIFAR-10 and start PART with the paper's settings; interrupted once its first checkpoint exists,
    the same command with --resume continues it from there."""
    make_cifar10_python(tmp_path / "data" / "downloads", n_train=128, n_test=16)  # one batch of 128 an epoch
    assert run_cli(["convert", "cifar10"], tmp_path).returncode == 0
    command = [sys.executable, "-m", "fastpart", "train", "--epochs", "80", "--mask-freq", "10"]
    first = until_printed(command, tmp_path, "epoch 1/80 (burn-in)")  # printed once its checkpoint is written
    assert "fastpart train: part on cifar10 (128 training images), resnet18_cifar, 80 epochs (burn-in 20, masks " \
           "every 10), PGD-10 eps 8/255 (7/255 outside the mask), alpha 2/255, batch 128, lr 0.01; cpu fp32; run " \
           "folder runs/latest" in first
    assert "epoch 1/80 (burn-in): loss" in first and "left" in first  # with the estimate of what is left
    resumed = until_printed(command + ["--resume"], tmp_path, "resuming after epoch 1")
    assert "fastpart train: part on cifar10" in resumed
    run = tmp_path / "runs" / "latest"
    config = json.loads((run / "config.json").read_text())
    settings = {k: config[k] for k in ("dataset", "method", "model", "epochs", "batch_size", "lr", "wd", "burn_in",
                                       "mask_freq", "steps", "milestones")}
    assert settings == {"dataset": "cifar10", "method": "part", "model": "resnet18_cifar", "epochs": 80,
                        "batch_size": 128, "lr": 0.01, "wd": 2e-4, "burn_in": 20, "mask_freq": 10, "steps": 10,
                        "milestones": [60]}
    assert config["eps"] == pytest.approx(8 / 255) and config["eps_low"] == pytest.approx(7 / 255)


def until_printed(command: list[str], cwd: Path, text: str, timeout: float = 600) -> str:
    """Run ``command`` until its output shows ``text``, then kill it (an interrupted run); returns the output."""
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True)
    reader.start()
    deadline = time.time() + timeout
    while not any(text in line for line in lines):
        assert process.poll() is None and time.time() < deadline, "".join(lines)[-3000:]
        time.sleep(0.2)
    process.kill()
    process.wait()
    reader.join(timeout=10)
    return "".join(lines)



def test_the_estimate_reads_as_a_duration_and_points_a_long_cpu_run_to_a_gpu():
    from fastpart.progress import duration, estimate
    from fastpart.resolve import paper_defaults, resolve

    assert [duration(s) for s in (40, 240, 7800, 266400)] == ["40 s", "4 min", "2 h 10 min", "3 d 2 h"]
    cfg = resolve(TrainConfig(dataset="cifar10", device="cpu"), paper_defaults({"dataset": "cifar10"}))
    line = estimate(cfg, 80, 390, 20.0, 128)  # 6.4 img/s
    assert line.startswith("fastpart train: 80 epochs: about 7 d 5 h on cpu (6 img/s") and "a GPU" in line
    assert "GPU" not in estimate(cfg, 1, 10, 1.0, 128)


def test_an_epoch_times_its_first_batches_once(tmp_path):
    import torch

    from fastpart.attacks.generators import GeneratorSettings, make_generator
    from fastpart.data.splitfiles import split_path
    from fastpart.loader import DeviceLoader
    from fastpart.models import create_model
    from fastpart.objectives import get_objective
    from fastpart.step import TIMED_BATCHES, train_epoch

    converted_shapes(tmp_path / "data")
    model = create_model("resnet18_cifar_w8", num_classes=10)
    objective = get_objective("at")
    generate = make_generator("pgd", GeneratorSettings(objective.attack_loss, steps=1))
    calls = []
    for batch_size, expected in ((8, TIMED_BATCHES), (16, 3)):  # 8 batches an epoch; 4
        calls.clear()
        loader = DeviceLoader(split_path(tmp_path / "data", "shapes", "train"), batch_size=batch_size)
        train_epoch(model, loader, torch.optim.SGD(model.parameters(), lr=0.01), objective, generate,
                    torch.Generator(), timer=lambda n, s: calls.append((n, s)))
        assert len(calls) == 1 and calls[0][0] == expected and calls[0][1] > 0
