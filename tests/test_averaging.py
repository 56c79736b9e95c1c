"""Beyond the paper's recipe: the weight average (--ema), the held-out validation split (--val-n) and the
best checkpoint; resumed exactly; evaluated with --weights and --checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from support import ctrl_c_before_epoch

from fastpart.averaging import WeightAverage
from fastpart.cli import main
from fastpart.errors import FastpartError
from fastpart.monitor import holdout

ARGS = ["--dataset", "shapes", "--model", "resnet18_cifar_w8", "--batch-size", "32", "--steps", "1",
        "--eval-steps", "1", "--eval-n", "16", "--seed", "2", "--method", "part", "--epochs", "4", "--burn-in", "1",
        "--mask-freq", "2", "--ema", "0.8", "--val-n", "32", "--val-steps", "2", "--eval-every", "2", "--lr", "0.05",
        "--ae", "n-fgsm", "--awp", "0.01", "--awp-warmup", "1", "--label-smoothing", "0.1", "--activation", "silu"]
# (the options of single-step training, AWP, label smoothing and SiLU ride along: the resume test below is
# their bit-identical-resume test)
N_TRAIN = 128


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    assert main(["convert", "shapes", "--n-train", str(N_TRAIN), "--n-test", "32", "--out", str(root),
                 "--format", "npz"]) == 0
    return root


def test_weight_average_equals_the_hand_computed_average():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    average = WeightAverage(model, decay=0.9)
    expected = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for step in range(5):
        x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 3, (8,))
        optimizer.zero_grad()
        nn.functional.cross_entropy(model.train()(x), y).backward()
        optimizer.step()
        average.update()
        for n, p in model.named_parameters():
            expected[n] = 0.9 * expected[n] + 0.1 * p.detach().double()
    averaged = dict(average.module.named_parameters())
    for n, value in expected.items():
        assert torch.allclose(averaged[n].double(), value, atol=1e-6), n
        assert not torch.equal(averaged[n], dict(model.named_parameters())[n])  # an average, not a copy
    for mine, theirs in zip(average.module.buffers(), model.buffers()):  # buffers copied, not averaged
        assert torch.equal(mine, theirs)
    with pytest.raises(FastpartError):
        WeightAverage(model, decay=1.0)


def test_validation_rows_are_seeded_and_disjoint_from_training():
    train, val = holdout(100, 20, seed=3)
    assert len(val) == 20 and len(train) == 80
    assert not set(train) & set(val) and set(train) | set(val) == set(range(100))
    again = holdout(100, 20, seed=3)
    assert np.array_equal(again[1], val) and not np.array_equal(holdout(100, 20, seed=4)[1], val)
    assert holdout(100, 0, 3) == (None, None)
    with pytest.raises(FastpartError, match="--val-n"):
        holdout(100, 100, 3)


def test_a_training_subset_is_the_same_for_every_seed_and_never_meets_the_validation_rows():
    train, val = holdout(100, 0, seed=3, train_n=30)
    assert val is None and len(train) == 30 and np.array_equal(train, holdout(100, 0, seed=5, train_n=30)[0])
    train, val = holdout(100, 20, seed=3, train_n=50)
    assert len(train) == 50 and len(val) == 20 and not set(train) & set(val)
    with pytest.raises(FastpartError, match="--train-n must be between 1 and 80"):
        holdout(100, 20, 3, train_n=81)


def test_a_run_on_a_training_subset_trains_on_it_alone(data_dir, tmp_path):
    assert main(["train", *ARGS[:12], "--method", "at", "--epochs", "1", "--train-n", "64", "--data-dir",
                 str(data_dir), "--out", str(tmp_path / "run")]) == 0
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert record["images"] == 64 and json.loads((tmp_path / "run" / "config.json").read_text())["train_n"] == 64


@pytest.fixture(scope="module")
def straight(data_dir, tmp_path_factory) -> dict:
    """One uninterrupted run, with what the mask refreshes and the loaders were given."""
    import fastpart.training as training

    out = tmp_path_factory.mktemp("runs") / "straight"
    seen: dict = {"refresh": [], "averages": [], "loaders": []}
    real_refresh, real_average, real_loader = training.refresh_masks, training.WeightAverage, training.DeviceLoader

    def refresh(model, *args, **kwargs):
        seen["refresh"].append(model)
        return real_refresh(model, *args, **kwargs)

    def average(*args, **kwargs):
        made = real_average(*args, **kwargs)
        seen["averages"].append(made)
        return made

    def loader(*args, **kwargs):
        made = real_loader(*args, **kwargs)
        seen["loaders"].append(made)
        return made

    patch = pytest.MonkeyPatch()
    patch.setattr(training, "refresh_masks", refresh)
    patch.setattr(training, "WeightAverage", average)
    patch.setattr(training, "DeviceLoader", loader)
    try:
        assert main(["train", *ARGS, "--data-dir", str(data_dir), "--out", str(out)]) == 0
    finally:
        patch.undo()
    seen["out"] = out
    return seen


def test_masks_come_from_the_live_model_and_never_see_the_validation_rows(straight):
    (average,) = straight["averages"]
    assert straight["refresh"] and all(m is average.source and m is not average.module for m in straight["refresh"])
    config = json.loads((straight["out"] / "config.json").read_text())
    val_rows = set(config["val_rows"])
    assert config["val_n"] == 32 == len(val_rows)
    train_loader, val_loader = straight["loaders"][:2]
    assert set(train_loader.subset.tolist()) == set(range(N_TRAIN)) - val_rows
    assert set(val_loader.subset.tolist()) == val_rows
    (cache,) = (straight["out"] / "masks").glob("*.masks")
    from fastpart.part import MaskCache

    header = MaskCache(cache.parent).header(cache.stem)
    assert header["shape"][0] == N_TRAIN - 32  # masks of the training rows only


def test_metrics_report_live_and_averaged_models_and_best_is_the_best_validation_epoch(straight):
    records = [json.loads(line) for line in (straight["out"] / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        assert {"val_natural_acc", "val_pgd2_acc", "ema_val_natural_acc", "ema_val_pgd2_acc"} <= set(r)
    assert {"test_pgd1_acc", "ema_test_pgd1_acc"} <= set(records[-1])
    values = [r["ema_val_pgd2_acc"] for r in records]
    best = torch.load(straight["out"] / "best.pt", weights_only=True)
    assert best["epoch"] == 1 + values.index(max(values)) and best["selected_by"] == "ema_val_pgd2_acc"
    checkpoint = torch.load(straight["out"] / "checkpoint.pt", weights_only=True)
    assert checkpoint["best"]["epoch"] == best["epoch"] and "ema" in checkpoint and "ema" in best


def test_resume_with_average_and_best_checkpoint_is_bit_identical(straight, data_dir, tmp_path, monkeypatch):
    out = tmp_path / "killed"
    with ctrl_c_before_epoch(monkeypatch, before_epoch=3):
        assert main(["train", *ARGS, "--data-dir", str(data_dir), "--out", str(out)]) == 130
    assert main(["train", *ARGS, "--data-dir", str(data_dir), "--out", str(out), "--resume"]) == 0
    for name in ("checkpoint.pt", "best.pt"):
        a = torch.load(straight["out"] / name, weights_only=True)
        b = torch.load(out / name, weights_only=True)
        assert a["epoch"] == b["epoch"], name
        for part in ("model", "ema"):
            assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), (name, part)
    lines = [(straight["out"] / "metrics.jsonl").read_text(), (out / "metrics.jsonl").read_text()]
    drop = ("epoch_seconds", "images_per_second", "mask_seconds", "wall_seconds")
    a, b = ([{k: v for k, v in json.loads(line).items() if k not in drop} for line in t.splitlines()] for t in lines)
    assert a == b


def test_the_new_options_are_recorded_and_restored(straight):
    from fastpart.runfolder import load_run

    records = [json.loads(line) for line in (straight["out"] / "metrics.jsonl").read_text().splitlines()]
    assert "awp_loss" not in records[0] and all("awp_loss" in r for r in records[1:])  # after --awp-warmup 1
    assert all(r["loss"] > r["awp_loss"] for r in records[1:])  # the perturbed weights' loss is the higher
    assert all({"collapse_fgsm_acc", "collapse_pgd1_acc", "collapsed"} <= set(r) for r in records)
    config = json.loads((straight["out"] / "config.json").read_text())
    assert (config["ae"], config["awp"], config["awp_warmup"], config["label_smoothing"], config["activation"]) == (
        "n-fgsm", 0.01, 1, 0.1, "silu")
    for weights in ("live", "ema"):
        model = load_run(straight["out"], weights=weights).model
        assert any(isinstance(m, torch.nn.SiLU) for m in model.modules())
        assert not any(isinstance(m, torch.nn.ReLU) for m in model.modules())


def test_eval_takes_the_best_checkpoint_and_the_averaged_weights(straight, tmp_path, capsys):
    run = straight["out"]
    results = {}
    for checkpoint in ("last", "best"):
        for weights in ("live", "ema"):
            out = tmp_path / f"{checkpoint}-{weights}"
            assert main(["eval", str(run), "--attacks", "natural", "--device", "cpu", "--checkpoint", checkpoint,
                         "--weights", weights, "--out", str(out)]) == 0
            record = json.loads((out / "eval.json").read_text())
            assert record["weights"] == weights and record["checkpoint"].endswith(f"{checkpoint}.pt" if checkpoint == "best" else "checkpoint.pt")
            results[checkpoint, weights] = record["epoch"]
    best_epoch = torch.load(run / "best.pt", weights_only=True)["epoch"]
    assert results["best", "live"] == results["best", "ema"] == best_epoch and results["last", "live"] == 4
    capsys.readouterr()
    no_average = tmp_path / "plain"
    data_dir = json.loads((run / "config.json").read_text())["data_dir"]
    assert main(["train", *ARGS[:12], "--epochs", "1", "--data-dir", data_dir, "--out", str(no_average)]) == 0
    capsys.readouterr()
    assert main(["eval", str(no_average), "--attacks", "natural", "--device", "cpu", "--weights", "ema"]) == 2
    assert main(["eval", str(no_average), "--attacks", "natural", "--device", "cpu", "--checkpoint", "best"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "holds no weight average" in err[0] and "best.pt is written by runs trained with --val-n" in err[1]
