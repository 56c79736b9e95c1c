"""`fastpart convert` under stress: two conversions into one folder, a full disk, a killed or interrupted
conversion, a conversion that replaces another, images far larger than memory should hold.

These run conversions in real processes (the lock, the writer's worker processes and a SIGKILL only
show there) and keep the datasets tiny; the .beton cases need ffcv. The process runs what the command
runs (``convert``, a ``FastpartError`` printed as one line, exit status 2) without building the whole
command line, whose parser imports the models (seconds per process).
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from faults import faulty_disk, leftovers, lost, snapshot
from support import deadline

import fastpart.data.convert as convert_module
from fastpart.atomic import DiskFull, hold

requires_ffcv = pytest.mark.requires_ffcv
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# `fastpart convert DATASET --option value --flag ...`, as the command runs it
CONVERT = """
import sys
from fastpart.config import ConvertConfig
from fastpart.data.convert import convert, summary
from fastpart.errors import FastpartError
options, args = {}, sys.argv[2:]
while args:
    key = args.pop(0).removeprefix("--").replace("-", "_")
    options[key] = True if not args or args[0].startswith("--") else args.pop(0)
options = {k: int(v) if k in ("n_train", "n_test", "seed") else v for k, v in options.items()}
try:
    print(summary(convert(ConvertConfig(sys.argv[1], **options))))
except FastpartError as exc:
    print(f"fastpart convert: error: {exc}", file=sys.stderr)
    sys.exit(2)
"""


def convert_command(*argv, prelude: str = "") -> list[str]:
    return [sys.executable, "-c", prelude + CONVERT, *map(str, argv)]


def run_convert(*argv, prelude: str = "", timeout: float = 60) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(convert_command(*argv, prelude=prelude), capture_output=True, text=True,
                              timeout=timeout, env=ENV)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`fastpart convert` still running after {timeout} s")


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, (result.returncode, result.stderr[-3000:])
    assert lines[0].startswith("fastpart convert: error: ")
    return lines[0]


def assert_nothing_half_written(folder: Path) -> None:
    if folder.exists():
        assert not list(folder.glob(".*.tmp")), sorted(p.name for p in folder.iterdir())
        assert not (folder / "manifest.json").exists()
    assert not leftovers(folder.parent), leftovers(folder.parent)  # no partial conversion beside it either


# ---------------------------------------------------------------------------------------------
# Two conversions into one folder
# ---------------------------------------------------------------------------------------------


def test_a_second_conversion_into_the_same_folder_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "data"
    with hold(out / ".shapes.lock", "conversion"):  # what a first `fastpart convert shapes --out data` holds
        result = run_convert("shapes", "--n-train", 20, "--n-test", 10, "--format", "npz", "--out", out)
    line = one_error_line(result)
    assert f"pid {os.getpid()}" in line and "shapes" in line
    assert not (out / "shapes").exists()
    # once the first one is gone, the folder is free again
    assert run_convert("shapes", "--n-train", 20, "--n-test", 10, "--format", "npz", "--out", out).returncode == 0


def test_the_lock_names_the_output_folder_and_survives_its_removal(tmp_path):
    out = tmp_path / "data"
    cfg = convert_module.ConvertConfig("shapes", n_train=20, n_test=10, format="npz", out=str(out), name="toy")
    convert_module.convert(cfg)
    assert (out / ".toy.lock").is_file()  # beside the output folder, which --force may recreate
    with hold(out / ".toy.lock", "conversion"):
        result = run_convert("shapes", "--n-train", 20, "--n-test", 10, "--format", "npz", "--out", out,
                             "--name", "toy", "--force")
    assert "pid" in one_error_line(result)
    assert json.loads((out / "toy" / "manifest.json").read_text())["splits"]["train"]["count"] == 20


# ---------------------------------------------------------------------------------------------
# A full disk
# ---------------------------------------------------------------------------------------------

def shapes_config(out: Path, fmt: str = "beton", n_train: int = 1000) -> convert_module.ConvertConfig:
    return convert_module.ConvertConfig("shapes", n_train=n_train, n_test=10, format=fmt, out=str(out))


@requires_ffcv
def test_a_full_disk_in_the_beton_writer_is_disk_full_and_leaves_nothing(tmp_path, monkeypatch):
    from ffcv.memory_allocator import MemoryAllocator

    flush = MemoryAllocator.flush_page

    def flush_page(self):  # in ffcv's writer processes: the second page of a worker meets a full disk
        if self.my_page >= 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return flush(self)

    monkeypatch.setattr(MemoryAllocator, "flush_page", flush_page)
    out = tmp_path / "data"
    with deadline(60), pytest.raises(DiskFull) as error:
        convert_module.convert(shapes_config(out, n_train=1500))
    message = str(error.value)
    assert "\n" not in message and f"no space left on the disk of {out / 'shapes'}" in message
    assert_nothing_half_written(out / "shapes")


def test_a_full_disk_while_writing_npz_is_disk_full_and_leaves_nothing(tmp_path, monkeypatch):
    def savez(file, **arrays):
        file.write(b"PK" + bytes(1000))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", savez)
    out = tmp_path / "data"
    with pytest.raises(DiskFull, match="no space left on the disk of"):
        convert_module.convert(convert_module.ConvertConfig("shapes", n_train=20, n_test=10, format="npz", out=str(out)))
    assert not (out / "shapes").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MiB tmpfs (mounting needs root; skipped where that is not allowed)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.mark.parametrize("fmt", [pytest.param("beton", marks=requires_ffcv), "npz"])
def test_a_real_full_disk_is_disk_full_and_leaves_nothing(small_disk, fmt):
    with deadline(60), pytest.raises(DiskFull) as error:
        convert_module.convert(shapes_config(small_disk, fmt))
    assert f"no space left on the disk of {small_disk / 'shapes'}" in str(error.value)
    assert "\n" not in str(error.value)
    assert_nothing_half_written(small_disk / "shapes")


# ---------------------------------------------------------------------------------------------
# A killed conversion
# ---------------------------------------------------------------------------------------------

def convert_slowly(out: Path) -> None:
    """A beton conversion whose writer processes take 5 ms a sample (a fork of this process: ffcv is loaded)."""
    import ffcv.writer

    handle = ffcv.writer.handle_sample

    def handle_sample(*args):
        time.sleep(0.005)
        return handle(*args)

    ffcv.writer.handle_sample = handle_sample
    convert_module.convert(shapes_config(out, n_train=4000))


def _parents() -> dict[int, int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":  # a zombie is dead, whoever reaps it
            parents[int(stat.parent.name)] = int(fields[1])
    return parents


def descendants(pid: int) -> set[int]:
    parents, found, frontier = _parents(), set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def shared_memory_of(pids: set[int]) -> set[str]:
    segments = set()
    for pid in pids:
        try:
            segments |= {line[line.index("/dev/shm/"):].removesuffix(" (deleted)")
                         for line in Path(f"/proc/{pid}/maps").read_text().splitlines() if "/dev/shm/" in line}
        except OSError:
            pass
    return segments


@requires_ffcv
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_the_writer_processes_die_with_a_killed_conversion(tmp_path):
    out = tmp_path / "data"
    convert = multiprocessing.get_context("fork").Process(target=convert_slowly, args=(out,))
    convert.start()
    children: set[int] = set()
    try:
        until = time.monotonic() + 60
        while not (list((out / ".shapes.partial").glob(".train.beton.*.tmp")) and len(descendants(convert.pid)) >= 2):
            assert convert.is_alive() and time.monotonic() < until, "the writer never started"
            time.sleep(0.02)
        time.sleep(0.3)  # mid-write: 4000 samples take the two workers 10 s
        children = descendants(convert.pid)
        segments = shared_memory_of(children | {convert.pid})
        assert segments, "the writer holds its metadata in shared memory"
        os.kill(convert.pid, signal.SIGKILL)
        convert.join()
        until = time.monotonic() + 5
        while (children & set(_parents()) or any(Path(s).exists() for s in segments)) and time.monotonic() < until:
            time.sleep(0.05)
        assert not children & set(_parents()), f"still alive: {sorted(children & set(_parents()))}"
        assert not [s for s in segments if Path(s).exists()], "shared memory left in /dev/shm"
    finally:
        if convert.is_alive():
            convert.kill()
        for pid in children & set(_parents()):  # the writer processes this test started, if they outlived it
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# ---------------------------------------------------------------------------------------------
# A .beton write stopped early ends at once (its writer processes' queue is dropped, not waited on)
# ---------------------------------------------------------------------------------------------

# Before its workers take them, the writer queues every work item in a pipe; once the pipe is full, a process
# that exits waits for ever to flush the rest, unless the queue is dropped. One row per work item fills the pipe
# with 3,000 images, as 1,000 rows per item do with about 5,000 (the slow variant). The conversion runs in a fork
# of this process (ffcv is loaded once), which exits as any process does, running its exit handlers.


def _full_from_the_first_page(monkeypatch) -> None:
    real_open = open

    class Full:
        def __init__(self, file):
            self.file = file

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.file.__exit__(*exc)

    def full_open(file, mode="r", *args, **kwargs):  # the writers' file (opened to append pages) meets a full disk
        handle = real_open(file, mode, *args, **kwargs)
        return Full(handle) if "a" in mode and str(file).endswith(".tmp") else handle

    monkeypatch.setattr("builtins.open", full_open)


def _in_a_fork(target, *args, seconds: float = 60) -> int:
    """Run ``target(*args)`` in a fork of this process (in a session of its own) and return its exit status;
    fail if it has not ended, exit handlers included, within ``seconds``."""
    import ffcv.writer  # noqa: F401  (loaded here, once: the fork inherits it)

    def run():
        os.setsid()  # its own process group: a Ctrl-C sent to it reaches it and its writer processes only
        sys.exit(target(*args))

    process = multiprocessing.get_context("fork").Process(target=run)
    process.start()
    process.join(seconds)
    if process.is_alive():
        os.killpg(process.pid, signal.SIGKILL)
        process.join()
        pytest.fail(f"still running after {seconds} s: the conversion hung")
    return process.exitcode


def _convert_on_a_full_disk(out: Path, n_train: int, chunk: int, monkeypatch) -> int:
    import fastpart.data.splitfiles as splitfiles

    monkeypatch.setattr(splitfiles, "WRITE_CHUNK", chunk)
    _full_from_the_first_page(monkeypatch)
    try:
        convert_module.convert(shapes_config(out, n_train=n_train))
    except DiskFull as error:
        return 0 if f"no space left on the disk of {out / 'shapes'}" in str(error) else 3
    return 4


@requires_ffcv
@pytest.mark.parametrize("n_train,chunk", [(3000, 1), pytest.param(6000, 1000, marks=pytest.mark.slow)])
def test_a_full_disk_early_in_a_large_beton_write_ends_at_once(tmp_path, monkeypatch, n_train, chunk):
    out = tmp_path / "data"
    assert _in_a_fork(_convert_on_a_full_disk, out, n_train, chunk, monkeypatch) == 0
    assert_nothing_half_written(out / "shapes")


def _interrupted_conversion(out: Path, monkeypatch) -> int:
    import ffcv.writer

    import fastpart.data.splitfiles as splitfiles
    from fastpart.cli import main

    monkeypatch.setattr(splitfiles, "WRITE_CHUNK", 1)
    handle = ffcv.writer.handle_sample

    def slow(*args):
        time.sleep(0.002)
        return handle(*args)

    monkeypatch.setattr(ffcv.writer, "handle_sample", slow)
    with open(out.parent / "stderr", "w", buffering=1) as err:
        monkeypatch.setattr(sys, "stderr", err)
        return main(["convert", "shapes", "--n-train", "3000", "--n-test", "10", "--out", str(out)])


@requires_ffcv
def test_ctrl_c_early_in_a_beton_write_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    out = tmp_path / "data"
    import threading

    status: list[int] = []
    runner = threading.Thread(target=lambda: status.append(_in_a_fork(_interrupted_conversion, out, monkeypatch)))
    runner.start()
    until = time.monotonic() + 60
    while not list((out / ".shapes.partial").glob(".train.beton.*.tmp")) and runner.is_alive():
        assert time.monotonic() < until, "the writer never started"
        time.sleep(0.02)
    time.sleep(0.2)  # its writer processes have started
    pids = [pid for pid in descendants(os.getpid()) if os.getpgid(pid) == pid]
    for pid in pids:
        os.killpg(pid, signal.SIGINT)  # Ctrl-C at a terminal: the conversion's whole process group
    runner.join()
    assert status == [130], status
    assert (tmp_path / "stderr").read_text().strip().splitlines() == ["fastpart convert: interrupted"]
    assert not (out / "shapes").exists() and not leftovers(out)


# ---------------------------------------------------------------------------------------------
# A conversion that replaces another loses nothing until it is complete
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("code,after", [(errno.ENOSPC, 0), (errno.ENOSPC, 100_000), (errno.EROFS, 0)])
def test_a_failed_forced_conversion_keeps_the_one_it_was_replacing(tmp_path, monkeypatch, code, after):
    out = tmp_path / "data"
    convert_module.convert(shapes_config(out, "npz", n_train=64))
    before = snapshot(out)
    with faulty_disk(monkeypatch, out, code, after) as disk:
        with pytest.raises(convert_module.FastpartError) as error:
            convert_module.convert(convert_module.ConvertConfig("shapes", n_train=80, n_test=10, format="npz",
                                                                out=str(out), force=True))
    assert disk.hits and "\n" not in str(error.value) and str(out) in str(error.value)
    assert not lost(before, out) and snapshot(out) == before and not leftovers(out)
    assert convert_module.convert(shapes_config(out, "npz", n_train=64)).reused  # still current


def test_a_conversion_killed_during_its_swap_is_recovered(tmp_path):
    out = tmp_path / "data"
    convert_module.convert(shapes_config(out, "npz", n_train=64))
    before = snapshot(out / "shapes")
    os.replace(out / "shapes", out / ".shapes.replaced")  # killed between the swap's two renames
    (out / ".shapes.partial").mkdir()
    (out / ".shapes.partial" / "train.npz").write_bytes(b"half")
    assert convert_module.convert(shapes_config(out, "npz", n_train=64)).reused
    assert snapshot(out / "shapes") == before and not leftovers(out)


# ---------------------------------------------------------------------------------------------
# Memory: one image at a time, whatever the number and size of the images
# ---------------------------------------------------------------------------------------------


def _image_tree(root: Path, count: int, size: int) -> Path:
    from formats import write_png

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    for i in range(count):  # smooth images: quick to encode, the size of their pixels is what counts
        pixels = (ramp[None, :, None] * rng.uniform(0.2, 1.0, 3) + ramp[:, None, None] * 0.1) % 256
        write_png(root / "train" / f"c{i % 2}" / f"{i}.png", pixels.astype(np.uint8))
    return root


def _peak_traced(source: Path, out: Path, fmt: str = "npz") -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        convert_module.convert(convert_module.ConvertConfig("imagefolder", source=str(source), out=str(out),
                                                            format=fmt))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_holds_one_image_at_a_time_not_the_split(tmp_path):
    size = 512
    image = size * size * 3
    few = _peak_traced(_image_tree(tmp_path / "few", 2, size), tmp_path / "out-few")
    many = _peak_traced(_image_tree(tmp_path / "many", 24, size), tmp_path / "out-many")
    assert many < few + 2 * image, (few, many)  # 22 more images: they wait on the disk, not in memory
    assert many < 4 * image + (24 << 20), many  # one image, blocks of statistics and of the .npz writer
    assert not leftovers(tmp_path / "out-many") and not (tmp_path / "out-many" / "imagefolder" / ".spool").exists()


@pytest.mark.slow
def test_four_4000_pixel_images_take_a_bounded_amount_of_memory(tmp_path):
    size = 4000
    peak = _peak_traced(_image_tree(tmp_path / "src", 4, size), tmp_path / "out")
    assert peak < 6 * size * size * 3 + (32 << 20), f"{peak / 2**20:.0f} MiB"  # it took 3.3 GB


# ---------------------------------------------------------------------------------------------
# A split is checked when it is opened: damaged, or not what its manifest says, is one line
# ---------------------------------------------------------------------------------------------


@requires_ffcv
@pytest.mark.parametrize("damage", ["truncated", "other-shape", "label-out-of-range"])
def test_a_damaged_or_mismatched_beton_is_one_line_when_opened(tmp_path, damage):
    import torch

    from fastpart.data.arrays import SplitData
    from fastpart.data.splitfiles import read_split, write_beton
    from fastpart.errors import FastpartError
    from fastpart.loader import DeviceLoader

    out = tmp_path / "data"
    convert_module.convert(shapes_config(out, n_train=40))
    path = out / "shapes" / "train.beton"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size - 100])
    else:
        good = read_split(path)
        images = np.zeros((40, 24, 24, 3), np.uint8) if damage == "other-shape" else good.images
        labels = np.where(np.arange(40) == 3, 17, good.labels) if damage == "label-out-of-range" else good.labels
        write_beton(path, SplitData(images, labels, good.extras))
    words = {"truncated": "truncated", "other-shape": "24x24", "label-out-of-range": "label 17"}[damage]
    for backend in ("memory", "ffcv"):
        with pytest.raises(FastpartError, match=words) as error:
            DeviceLoader(path, batch_size=8, device=torch.device("cpu"), backend=backend)
        assert str(path) in str(error.value) and "\n" not in str(error.value)
