"""Training under torchrun: two gloo processes on the CPU, launched for real, against one process.

* Sharding: the processes' shards of every global batch are disjoint and, put together, are exactly
  the batch one process with the global batch size gets, with the same crops, flips and masks.
* Same weights: batch norm normalises each process's half of the global batch with its own
  statistics, which changes the gradient by design (measured on resnet18_cifar_w8 at
  initialisation: the weights of the two runs differ by ~0.9x the distance they moved). So the
  comparison uses a model without batch norm (timm's ``test_convnext``, LayerNorm: per-sample) and
  ``--eps 0`` (the attack's random starts come from per-process generators; with a zero budget the
  attack returns the clean batch whatever they draw). What is left is the order of float
  reductions (convolutions over 32 vs 64 images, the gradient all-reduce): measured per-tensor
  difference / distance moved 3e-5 after 10 steps; the test allows 1e-3. A shard taken twice, a
  missing all-reduce or a wrong per-process batch size move the weights by O(1) of that distance.
* Masks: a refresh split over the processes writes a cache file byte-identical to one process's.
* A process killed with SIGKILL fails the run (non-zero exit, bounded time) without damaging the
  checkpoint, and --resume with two processes or one completes it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastpart import distributed
from fastpart.cli import main
from fastpart.config import TrainConfig
from fastpart.data.convert import write_beton, write_npz
from fastpart.data.datasets import SplitData
from fastpart.errors import FastpartError
from fastpart.loader import Augment, DeviceLoader
from fastpart.part import MaskCache
from fastpart.data.shapes import generate_split
from fastpart.part.refresh import mask_slice
from fastpart.resolve import paper_defaults, process_batch_size, resolve

TORCHRUN = Path(sys.executable).with_name("torchrun")
COMMON = ["--dataset", "shapes", "--batch-size", "64", "--eval-steps", "1", "--eval-n", "64", "--lr", "0.01",
          "--precision", "fp32", "--device", "cpu", "--seed", "0"]
# one mask refresh at epoch 0 (burn-in 0) on the initial weights: the same model state for any world size
PART = [*COMMON, "--model", "resnet18_cifar_w8", "--method", "part", "--burn-in", "0", "--mask-freq", "10",
        "--steps", "1"]
TIMEOUT = 300

pytestmark = pytest.mark.skipif(not TORCHRUN.exists(), reason="no torchrun next to the interpreter")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """640 training images: two mask batches (512 + 128), so the refresh is really split over two processes."""
    root = tmp_path_factory.mktemp("data")
    assert main(["convert", "shapes", "--n-train", "640", "--n-test", "64", "--out", str(root), "--format", "npz"]) == 0
    return root


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}  # both runs alike (torchrun sets it for its workers)


def launch(data_dir: Path, out: Path, *args: str, nproc: int = 1) -> subprocess.Popen:
    train = ["-m", "fastpart.cli", "train", *args, "--data-dir", str(data_dir), "--out", str(out)]
    command = ([str(TORCHRUN), "--standalone", f"--nproc_per_node={nproc}", *train] if nproc > 1
               else [sys.executable, *train])
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment())


def finish(process: subprocess.Popen) -> str:
    out, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0, err[-3000:]
    return out


def weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoint.pt", weights_only=True)["model"]


def epochs_done(out: Path) -> int:
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def workers(parent: int) -> dict[int, int]:
    """{RANK: pid} of the worker processes torchrun started."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0") if ppid == parent else []
        except (OSError, IndexError, ValueError):
            continue
        for item in env:
            if item.startswith(b"RANK="):
                found[int(item[5:])] = int(entry.name)
    return found


# ---------------------------------------------------------------------------------------------
# In-process: sharding, batch sizes, refresh slices
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def split_files(tmp_path_factory) -> dict[str, Path]:
    images, labels, masks = generate_split(200, seed=4)
    split = SplitData(images, labels, {"mask": masks})
    folder = tmp_path_factory.mktemp("split")
    write_npz(folder / "train.npz", split)
    files = {"npz": folder / "train.npz"}
    try:
        write_beton(folder / "train.beton", split)
        files["beton"] = folder / "train.beton"
    except FastpartError:  # no ffcv on this machine
        pass
    return files


@pytest.mark.parametrize("backend", ["memory", "ffcv"])
def test_shards_put_together_are_the_global_batches(backend, split_files):
    path = split_files["npz"] if backend == "memory" else split_files.get("beton")
    if path is None:
        pytest.skip("ffcv is not installed")
    options = dict(shuffle=True, seed=3, augment=Augment(4, True), backend=backend)
    aux = torch.arange(200, dtype=torch.float32).view(200, 1, 1, 1).expand(200, 1, 32, 32) * 1.0
    aux = aux + torch.linspace(0, 1, 32).view(1, 1, 1, 32)  # a gradient along x shows crops and flips
    one = DeviceLoader(path, batch_size=48, aux=aux, **options)
    shards = [DeviceLoader(path, batch_size=24, aux=aux, rank=r, world_size=2, **options) for r in range(2)]
    for epoch in (0, 5):
        for loader in (one, *shards):
            loader.set_epoch(epoch)
        expected = list(one)
        pieces = [list(s) for s in shards]
        assert len(one) == len(shards[0]) == len(shards[1]) == len(expected) == 4  # 200 // 48, rest dropped
        seen = set()
        for b, full in enumerate(expected):
            for t, (got0, got1) in enumerate(zip(pieces[0][b], pieces[1][b])):
                assert torch.equal(torch.cat([got0, got1]), full[t]), (epoch, b, t)
            ids = set(pieces[0][b][2].tolist()) | set(pieces[1][b][2].tolist())
            assert len(ids) == 48 and not ids & seen
            seen |= ids
    with pytest.raises(FastpartError, match="drop"):
        DeviceLoader(path, batch_size=24, rank=0, world_size=2, shuffle=False, backend=backend)


def test_batch_scope():
    cfg = resolve(TrainConfig(batch_size=96, device="cpu"), paper_defaults({"dataset": "shapes"}))
    assert process_batch_size(cfg, 1) == 96 and process_batch_size(cfg, 4) == 24
    with pytest.raises(FastpartError, match="does not split over 5 processes"):
        process_batch_size(cfg, 5)
    assert process_batch_size(TrainConfig(batch_size=96, batch_scope="per-gpu"), 5) == 96
    with pytest.raises(FastpartError, match="batch-scope"):
        resolve(TrainConfig(batch_scope="node", device="cpu"), paper_defaults({"dataset": "shapes"}))


@pytest.mark.parametrize("n, batch, world", [(640, 512, 2), (5000, 512, 8), (100, 512, 3), (2048, 512, 4)])
def test_mask_slices_are_contiguous_runs_of_whole_batches(n, batch, world):
    slices = [mask_slice(n, batch, r, world) for r in range(world)]
    assert slices[0].start == 0 and slices[-1].stop == n
    for a, b in zip(slices, slices[1:]):
        assert a.stop == b.start
    assert all(s.start % batch == 0 or s.start == n for s in slices)  # an empty slice when batches < processes


def test_one_process_helpers_are_no_ops():
    assert not distributed.active() and distributed.world_size() == 1 and distributed.is_main()
    t = torch.arange(4.0)
    assert distributed.all_reduce_sum(t) is t and distributed.all_gather(t)[0] is t
    assert distributed.broadcast_object({"a": 1}) == {"a": 1} and distributed.on_main(lambda: 7) == 7
    distributed.barrier()


SILENT_PEER = """
import sys, time
from fastpart import distributed
distributed.init("cpu")
if distributed.rank() == 1:
    time.sleep(60)  # alive, but never joins the collective
start = time.monotonic()
try:
    distributed.barrier()
except distributed.DistributedError as exc:
    print(f"{time.monotonic() - start:.1f}|{exc}")
    sys.exit(3)
"""


def test_a_silent_process_makes_the_others_fail_after_the_timeout():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = {**environment(), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            distributed.TIMEOUT_ENV: "3"}
    procs = [subprocess.Popen([sys.executable, "-c", SILENT_PEER], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**base, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(2)]
    try:
        out, err = procs[0].communicate(timeout=60)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert procs[0].returncode == 3, err[-2000:]
    seconds, message = out.strip().split("|", 1)
    assert 2.5 < float(seconds) < 30
    assert message.startswith("rank 0 of 2: another process of the run failed, was killed or did not answer within 3s")


# ---------------------------------------------------------------------------------------------
# Launched for real
# ---------------------------------------------------------------------------------------------


def test_two_processes_reach_the_weights_of_one(data_dir, tmp_path):
    args = [*COMMON, "--model", "test_convnext", "--method", "at", "--epochs", "1", "--eps", "0", "--steps", "1",
            "--awp", "0.01"]  # AWP too: the processes average its gradients, so its perturbation is the global batch's
    finish(launch(data_dir, tmp_path / "one", *args))
    out = finish(launch(data_dir, tmp_path / "two", *args, nproc=2))
    assert out.count("test_convnext at: 1 epochs") == 1  # one summary, from rank 0
    torch.manual_seed(0)
    from fastpart.models import create_model

    initial = create_model("test_convnext", num_classes=10).state_dict()
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    worst = 0.0
    for name, w in one.items():
        if w.is_floating_point():
            moved = (w - initial[name]).norm().item()
            if moved > 0:
                worst = max(worst, (w - two[name]).norm().item() / moved)
    print(f"largest per-tensor |two - one| / |one - initial|: {worst:.2e}")
    assert worst < 1e-3
    h1 = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    h2 = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert h1[0]["images"] == h2[0]["images"] == 640 and h2[0]["loss"] == pytest.approx(h1[0]["loss"], rel=1e-4)
    assert h1[0]["test_n"] == h2[0]["test_n"] == 64
    assert json.loads((tmp_path / "two" / "env.json").read_text())["world_size"] == 2


@pytest.mark.slow
def test_split_refresh_killed_process_and_resume(data_dir, tmp_path):
    finish(launch(data_dir, tmp_path / "one", *PART, "--epochs", "1"))
    run = tmp_path / "two"
    process = launch(data_dir, run, *PART, "--epochs", "3", nproc=2)
    deadline = time.monotonic() + TIMEOUT
    while epochs_done(run) < 1 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    ranks = workers(process.pid)
    assert process.poll() is None and set(ranks) == {0, 1}, "the run ended before it could be killed"
    os.kill(ranks[1], signal.SIGKILL)
    killed_at = time.monotonic()
    try:
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    print(f"the run stopped {time.monotonic() - killed_at:.1f}s after the kill")
    assert process.returncode != 0, err[-3000:]

    # masks of the initial model, split over two processes, byte for byte those of one process
    [reference] = (tmp_path / "one" / "masks").glob("*.masks")
    assert (run / "masks" / reference.name).read_bytes() == reference.read_bytes()
    # the checkpoint is a whole one
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert 1 <= state["epoch"] < 3 and state["mask_key"] == reference.stem
    assert len(MaskCache(run / "masks").load(state["mask_key"])) == 640

    killed = tmp_path / "killed"
    shutil.copytree(run, killed)
    for nproc in (2, 1):  # --out must stay the same: resume the killed run in place, once each way
        shutil.rmtree(run)
        shutil.copytree(killed, run)
        finish(launch(data_dir, run, *PART, "--epochs", "3", "--resume", nproc=nproc))
        history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [h["epoch"] for h in history] == [1, 2, 3] and all(h["phase"] == "masked" for h in history)
        assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 3
        assert not list(run.glob(".*.tmp"))
