"""--tensorboard: every metrics.jsonl number per epoch, and the mask panel at each refresh, read back with
TensorBoard's own reader."""

from __future__ import annotations

import json

import pytest

from fastpart.cli import main

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")


def test_event_files_hold_the_metrics_and_the_mask_panel(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main(["convert", "shapes", "--n-train", "64", "--n-test", "32", "--out", str(tmp_path / "data"),
                 "--format", "npz"]) == 0
    run = tmp_path / "run"
    assert main(["train", "--dataset", "shapes", "--data-dir", str(tmp_path / "data"), "--model", "resnet18_cifar_w8",
                 "--method", "part", "--epochs", "3", "--burn-in", "1", "--mask-freq", "1", "--batch-size", "32",
                 "--steps", "1", "--eval-steps", "1", "--eval-n", "16", "--eval-every", "1", "--tensorboard",
                 "--out", str(run)]) == 0
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    scalars = set(events.Tags()["scalars"])
    for record in records:
        for key, value in record.items():
            if key == "epoch" or not isinstance(value, (int, float)):
                continue
            assert key in scalars, key
            found = {e.step: e.value for e in events.Scalars(key)}
            assert found[record["epoch"]] == pytest.approx(float(value), rel=1e-6), key
    assert {"loss", "train_adv_acc", "test_pgd1_acc", "important_fraction"} <= scalars
    images = events.Tags()["images"]
    assert {"masks/image", "masks/cam", "masks/mask"} <= set(images)
    assert [e.step for e in events.Images("masks/mask")] == [2, 3]  # the refreshes before epochs 2 and 3


def test_without_the_extra_the_flag_is_one_line(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    assert main(["convert", "shapes", "--n-train", "64", "--n-test", "32", "--out", str(tmp_path / "data"),
                 "--format", "npz"]) == 0
    assert main(["train", "--dataset", "shapes", "--data-dir", str(tmp_path / "data"), "--model", "resnet18_cifar_w8",
                 "--method", "at", "--epochs", "1", "--batch-size", "32", "--steps", "1", "--eval-steps", "1", "--tensorboard",
                 "--out", str(tmp_path / "run")]) == 2
    assert "pip install 'fastpart[tensorboard]'" in capsys.readouterr().err
