"""Checkpoints: a run killed mid-epoch (SIGKILL) and resumed ends with the same weights as one never stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastpart.cli import main
from fastpart.config import TrainConfig
from fastpart.errors import FastpartError
from fastpart.training import train

ARGS = ["--dataset", "shapes", "--model", "resnet18_cifar_w8", "--method", "part", "--epochs", "4",
        "--burn-in", "1", "--mask-freq", "1", "--batch-size", "32", "--steps", "2", "--eval-steps", "1",
        "--eval-n", "32", "--lr", "0.05", "--seed", "3"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    assert main(["convert", "shapes", "--n-train", "320", "--n-test", "64", "--out", str(root), "--format", "npz"]) == 0
    return root


def launch(data_dir: Path, out: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "fastpart.cli", "train", *ARGS, "--data-dir", str(data_dir), "--out", str(out), *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def epochs_done(out: Path) -> int:
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoint.pt", weights_only=True)["model"]


@pytest.mark.slow
def test_killed_run_resumes_to_identical_weights(data_dir, tmp_path):
    straight = launch(data_dir, tmp_path / "straight")
    assert straight.wait(timeout=600) == 0, straight.stderr.read()[-2000:]

    killed = launch(data_dir, tmp_path / "killed")
    deadline = time.monotonic() + 600
    while epochs_done(tmp_path / "killed") < 2 and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # into the third epoch (a mask refresh epoch)
    assert killed.poll() is None, "the run finished before it could be killed"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    interrupted_at = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)["epoch"]
    assert 2 <= interrupted_at < 4

    resumed = launch(data_dir, tmp_path / "killed", "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-2000:]
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "killed")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    history = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    straight_history = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [h["loss"] for h in history] == [h["loss"] for h in straight_history]
    assert len(list((tmp_path / "killed" / "masks").glob("*.masks"))) == 1  # old masks pruned


def test_existing_run_needs_resume_and_same_settings(data_dir, tmp_path):
    cfg = TrainConfig(data_dir=str(data_dir), out=str(tmp_path / "run"), model="resnet18_cifar_w8", epochs=1,
                      batch_size=64, steps=1, eval_steps=1, eval_n=32)
    train(cfg)
    with pytest.raises(FastpartError, match="--resume"):
        train(cfg)
    with pytest.raises(FastpartError, match="other settings.*lr"):
        train(TrainConfig(**{**cfg.to_dict(), "resume": True, "lr": 0.5}))
    finished = train(TrainConfig(**{**cfg.to_dict(), "resume": True}))  # nothing left to do: reports, trains nothing
    assert [h["epoch"] for h in finished.history] == [1]
