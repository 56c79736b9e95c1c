"""Faults around a run folder: two processes at once, refused resumes, lost masks, moved folders, full disks,
damaged metrics and checkpoints, a diverging first epoch, TRADES' start. Every case goes through the
command line, as a user meets it: one line on stderr and exit status 2, and nothing lost or half-written."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from support import ctrl_c_before_epoch

from fastpart.cli import main

TRAIN = ["--dataset", "shapes", "--model", "resnet18_cifar_w8", "--method", "at", "--batch-size", "32", "--steps", "1",
         "--eval-steps", "1", "--eval-n", "16", "--seed", "1"]
PART = ["--method", "part", "--epochs", "3", "--burn-in", "1", "--mask-freq", "2"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    assert main(["convert", "shapes", "--n-train", "96", "--n-test", "32", "--out", str(root), "--format", "npz"]) == 0
    return root


def train(data_dir: Path, out: Path, *extra: str) -> int:
    return main(["train", *TRAIN, "--data-dir", str(data_dir), "--out", str(out), *extra])


def one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("fastpart ")]
    assert len(err) == 1, err
    return err[0]


def launch(*args: str, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fastpart.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"})


# ---------------------------------------------------------------------------------------------
# Lose nothing
# ---------------------------------------------------------------------------------------------


def test_a_run_folder_is_held_by_one_training_process(data_dir, tmp_path):
    out = tmp_path / "run"
    first = launch("train", *TRAIN, "--epochs", "30", "--data-dir", str(data_dir), "--out", str(out))
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.poll() is None, first.stderr.read()[-2000:]
    second = launch("train", *TRAIN, "--epochs", "30", "--data-dir", str(data_dir), "--out", str(out), "--resume")
    _, err = second.communicate(timeout=120)
    first.kill()
    first.wait()
    assert second.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "in use by another fastpart process" in lines[0] and f"pid {first.pid}" in lines[0]
    # the lock dies with its holder (SIGKILL): the folder is free at once for the resume
    from fastpart.atomic import hold

    with hold(out / ".train.lock", "run folder"):
        pass


def test_an_evaluation_folder_is_held_by_one_process(data_dir, tmp_path, capsys):
    from fastpart.atomic import hold

    out = tmp_path / "run"
    assert train(data_dir, out, "--epochs", "1") == 0
    with hold(out / ".eval.lock", "evaluation folder"):
        assert main(["eval", str(out), "--attacks", "natural", "--n", "8", "--device", "cpu"]) == 2
    assert "in use by another fastpart process" in one_error_line(capsys)
    assert not (out / "eval.json").exists()
    with hold(out / ".train.lock", "run folder"):  # an evaluation may run beside a training
        assert main(["eval", str(out), "--attacks", "natural", "--n", "8", "--device", "cpu"]) == 0
    assert (out / "eval.json").exists()


def test_a_refused_resume_writes_nothing(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(data_dir, out, "--epochs", "1") == 0
    before = {name: (out / name).read_bytes() for name in ("config.json", "env.json", "metrics.jsonl", "checkpoint.pt")}
    assert train(data_dir, out, "--epochs", "1", "--lr", "0.5", "--resume") == 2
    assert "other settings" in one_error_line(capsys)
    assert {name: (out / name).read_bytes() for name in before} == before


def interrupted(data_dir: Path, out: Path, monkeypatch, before_epoch: int) -> None:
    """Train PART into ``out`` and stop (Ctrl-C) when epoch ``before_epoch`` (1-based) would start."""
    with ctrl_c_before_epoch(monkeypatch, before_epoch):
        assert train(data_dir, out, *PART) == 130


def test_lost_or_corrupt_masks_are_recomputed_to_the_same_bits(data_dir, tmp_path, capsys, monkeypatch):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert train(data_dir, straight, *PART) == 0
    interrupted(data_dir, broken, monkeypatch, before_epoch=3)  # after the first masked epoch
    masks = sorted((broken / "masks").glob("*.masks"))
    assert len(masks) == 1
    original = masks[0].read_bytes()
    shutil.rmtree(broken / "masks")
    assert main(["train", *TRAIN, *PART, "--data-dir", str(data_dir), "--out", str(broken), "--resume"]) == 0
    rebuilt = sorted((broken / "masks").glob("*.masks"))
    assert [p.name for p in rebuilt] == [masks[0].name] and rebuilt[0].read_bytes() == original
    a = torch.load(straight / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(broken / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same run as one that never lost its masks
    # a finished run resumes with its masks gone, and with a corrupt file
    shutil.rmtree(broken / "masks")
    assert main(["train", *TRAIN, *PART, "--data-dir", str(data_dir), "--out", str(broken), "--resume"]) == 0
    capsys.readouterr()


def test_corrupt_masks_of_a_resumed_run_are_recomputed(data_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    interrupted(data_dir, out, monkeypatch, before_epoch=3)
    (path,) = (out / "masks").glob("*.masks")
    original = path.read_bytes()
    damaged = bytearray(original)
    damaged[-1] ^= 0xFF
    path.write_bytes(bytes(damaged))
    assert main(["train", *TRAIN, *PART, "--data-dir", str(data_dir), "--out", str(out), "--resume"]) == 0
    assert "recomputing" in capsys.readouterr().out
    assert path.read_bytes() == original


def test_resume_compares_resolved_paths_and_a_moved_folder_resumes(data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *TRAIN, "--epochs", "1", "--data-dir", str(data_dir), "--out", "./runs/x"]) == 0
    assert main(["train", *TRAIN, "--epochs", "2", "--data-dir", str(data_dir), "--out", "runs/x", "--resume"]) == 2
    for out in ("runs/x", str(tmp_path / "runs" / "x")):  # same run, other spellings
        assert main(["train", *TRAIN, "--epochs", "1", "--data-dir", str(data_dir), "--out", out, "--resume"]) == 0
    shutil.move("runs/x", "moved")
    shutil.copytree(data_dir, "data-copy")
    assert main(["train", *TRAIN, "--epochs", "1", "--data-dir", "data-copy", "--out", "moved", "--resume"]) == 0


def test_resume_refuses_other_training_data(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(data_dir, out, "--epochs", "1") == 0
    other = tmp_path / "other"
    assert main(["convert", "shapes", "--n-train", "96", "--n-test", "32", "--seed", "5", "--out", str(other),
                 "--format", "npz"]) == 0
    capsys.readouterr()
    assert main(["train", *TRAIN, "--epochs", "1", "--data-dir", str(other), "--out", str(out), "--resume"]) == 2
    assert "other training data" in one_error_line(capsys)


# ---------------------------------------------------------------------------------------------
# Never blow up: full disks, damaged files
# ---------------------------------------------------------------------------------------------


def test_a_full_disk_while_training_is_one_line(data_dir, tmp_path, capsys, monkeypatch):
    def full(obj, f, *args, **kwargs):
        f.write(b"partial") if hasattr(f, "write") else Path(f).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    assert train(data_dir, tmp_path / "run", "--epochs", "1") == 2
    line = one_error_line(capsys)
    assert "no space left on the disk of" in line and str(tmp_path / "run") in line
    assert not list((tmp_path / "run").glob(".*.tmp")) and not (tmp_path / "run" / "checkpoint.pt").exists()


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_a_really_full_disk_while_training_is_one_line(data_dir, tmp_path):
    disk = tmp_path / "disk"
    if not _tmpfs(disk, "600k"):
        pytest.skip("cannot mount a small tmpfs here")
    try:
        run = launch("train", *TRAIN, "--epochs", "1", "--data-dir", str(data_dir), "--out", str(disk / "run"))
        _, err = run.communicate(timeout=300)
        assert run.returncode == 2, err[-2000:]
        lines = [line for line in err.splitlines() if line.startswith("fastpart ")]  # tqdm's lines aside
        assert len(lines) == 1 and "no space left on the disk of" in lines[0], err[-2000:]
        assert "Traceback" not in err and not list((disk / "run").glob(".*.tmp"))
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_damaged_metrics_lines_do_not_stop_a_resume(data_dir, tmp_path):
    out = tmp_path / "run"
    assert train(data_dir, out, "--epochs", "2") == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text(lines[0] + "\n" + '{"note": "no epoch"}\n' + lines[1] + "\n" + '{"epoch": 3, "lo')
    assert train(data_dir, out, "--epochs", "3", "--resume") == 2  # other settings, not a traceback
    assert train(data_dir, out, "--epochs", "2", "--resume") == 0
    kept = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in kept] == [1, 2]


@pytest.mark.parametrize("content", ["garbage", "foreign", "no-keys"])
def test_a_bad_checkpoint_is_one_line_without_unsafe_advice(data_dir, tmp_path, capsys, content):
    out = tmp_path / "run"
    assert train(data_dir, out, "--epochs", "1") == 0
    path = out / "checkpoint.pt"
    if content == "garbage":
        path.write_bytes(b"not a torch file at all")
    elif content == "foreign":
        torch.save({"model": Path("a pickled object weights_only refuses")}, path)
    else:
        torch.save({"weights": torch.zeros(3)}, path)
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as warned:  # torch's pickle warnings are not the user's business
        warnings.simplefilter("always")
        assert train(data_dir, out, "--epochs", "1", "--resume") == 2
        assert main(["eval", str(out), "--attacks", "natural", "--n", "8", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(str(path) in line for line in err), err
    assert not any(word in line for line in err for word in ("weights_only", "Traceback", "can still be loaded",
                                                                "trust", "\x1b["))
    assert not [w for w in warned if "pickle" in str(w.message) or "weights_only" in str(w.message)]
    what = {"garbage": "not a PyTorch file", "foreign": "pathlib.PosixPath", "no-keys": "not a fastpart checkpoint"}
    assert all(what[content] in line for line in err), err


def test_divergence_in_the_first_epoch_names_no_checkpoint(data_dir, tmp_path, capsys):
    assert train(data_dir, tmp_path / "run", "--epochs", "2", "--lr", "1e30") == 2
    line = one_error_line(capsys)
    assert "epoch 1" in line and "no checkpoint was written" in line and "(epoch 0)" not in line


def test_trades_start_stays_in_the_box_and_the_image_range():
    from fastpart.attacks.pgd import pgd, random_start

    x = torch.rand(16, 3, 8, 8)
    x[:, :, :2], x[:, :, -2:] = 0.0, 1.0
    y = torch.randint(0, 4, (16,))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 4))
    gen = torch.Generator().manual_seed(0)
    for eps in (8 / 255, 1e-4):
        start = random_start(x, eps, "normal", gen)
        assert start.min() >= 0 and start.max() <= 1 and (start - x).abs().max() <= eps + 1e-7
        adv = pgd(model, x, y, eps, 2 / 255, 0, start="normal", generator=gen)
        assert adv.min() >= 0 and adv.max() <= 1 and (adv - x).abs().max() <= eps + 1e-7


# ---------------------------------------------------------------------------------------------
# No run is started that cannot be resumed; a refused run leaves no records; other data is named
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("odd", [["--tau", "nan"], ["--tau", "inf"]])
def test_a_run_that_could_not_be_resumed_is_not_started(data_dir, tmp_path, capsys, odd):
    out = tmp_path / "run"
    assert train(data_dir, out, *PART, *odd) == 2  # a NaN equals nothing: its resume would be refused for ever
    line = one_error_line(capsys)
    assert f"--tau {odd[1]}" in line and "JSON" in line
    assert not (out / "config.json").exists() and not (out / "checkpoint.pt").exists()


@pytest.mark.parametrize("budget", ["300", "-1", "8/0", "nan"])
def test_budgets_outside_any_sane_range_are_one_line_before_anything_runs(data_dir, tmp_path, capsys, budget):
    with pytest.raises(SystemExit) as exit_info:  # the parser's refusal: one line and status 2
        train(data_dir, tmp_path / "run", "--eps", budget)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "budget" in err[0] and "--eps" in err[0], err
    assert not (tmp_path / "run").exists()


def test_a_refused_resume_of_a_run_started_with_odd_settings_is_one_line(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(data_dir, out, "--epochs", "1", "--eps", "0", "--eval-steps", "0") == 0  # odd, but resumable
    before = {name: (out / name).read_bytes() for name in ("config.json", "checkpoint.pt", "metrics.jsonl")}
    assert train(data_dir, out, "--epochs", "1", "--eps", "1/255", "--eval-steps", "0", "--resume") == 2
    line = one_error_line(capsys)
    assert "other settings" in line and line.endswith(": eps")
    assert {name: (out / name).read_bytes() for name in before} == before
    assert train(data_dir, out, "--epochs", "1", "--eps", "0", "--eval-steps", "0", "--resume") == 0


@pytest.mark.parametrize("refusal", [["--model", "no_such_model"], ["--batch-size", "1000"]])
def test_a_refused_new_run_leaves_no_records_and_no_report(data_dir, tmp_path, capsys, refusal):
    out = tmp_path / "run"
    assert main(["train", *TRAIN, "--epochs", "1", "--data-dir", str(data_dir), "--out", str(out), *refusal]) == 2
    one_error_line(capsys)
    assert not (out / "config.json").exists() and not (out / "env.json").exists()
    assert main(["report", str(out), "--images", "0"]) == 2
    assert "not a run folder" in one_error_line(capsys)


def test_a_run_out_of_memory_in_its_first_batch_is_one_line_and_not_reported_as_a_run(data_dir, tmp_path, capsys,
                                                                                    monkeypatch):
    import fastpart.training as training

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried "
                           "to allocate 68719476736 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(training, "train_epoch", out_of_memory)
    out = tmp_path / "run"
    assert train(data_dir, out, "--epochs", "1") == 2
    assert "out of memory" in one_error_line(capsys)
    assert not (out / "config.json").exists() and not (out / "env.json").exists()  # no epoch finished: no run
    assert main(["report", str(out), "--images", "0"]) == 2
    assert "not a run folder" in one_error_line(capsys)


def test_resume_against_other_data_under_the_same_name_names_the_data(data_dir, tmp_path, capsys):
    from formats import make_image_folder

    out = tmp_path / "run"
    assert train(data_dir, out, "--epochs", "1") == 0
    other = tmp_path / "other"  # a `shapes` folder of other images (another kind of dataset: other paper settings)
    source, _ = make_image_folder(tmp_path / "src", [f"c{i}" for i in range(10)], {"train": 7, "test": 2}, size=32)
    assert main(["convert", "imagefolder", "--source", str(source), "--name", "shapes", "--out", str(other),
                 "--format", "npz"]) == 0
    capsys.readouterr()
    assert main(["train", *TRAIN, "--epochs", "1", "--data-dir", str(other), "--out", str(out), "--resume"]) == 2
    line = one_error_line(capsys)
    assert "other training data" in line and "other settings" not in line and "sha256:" in line


# ---------------------------------------------------------------------------------------------
# Ctrl-C while the command starts
# ---------------------------------------------------------------------------------------------

CTRL_C_WHILE_IMPORTING = """
import builtins, os, signal, sys
real, target = builtins.__import__, sys.argv[1]
def ctrl_c_at(name, *args, **kwargs):  # Ctrl-C arrives while the module `target` is imported
    if name == target and not getattr(ctrl_c_at, "sent", False):
        ctrl_c_at.sent = True
        os.kill(os.getpid(), signal.SIGINT)
    return real(name, *args, **kwargs)
builtins.__import__ = ctrl_c_at
sys.argv = ["fastpart", "convert", "--help"]
from fastpart.cli import main
sys.exit(main())
"""


@pytest.mark.parametrize("target", ["fastpart.config", "fastpart.data.datasets"])  # the command's imports; the parser's
def test_ctrl_c_while_the_command_starts_is_one_line(target):
    result = subprocess.run([sys.executable, "-c", CTRL_C_WHILE_IMPORTING, target], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 130 and result.stderr.strip().splitlines() == ["fastpart: interrupted"], result.stderr
