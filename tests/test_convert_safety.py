"""`fastpart convert` under stress: two conversions into one folder, a full disk, a killed conversion.

These run conversions in real processes (the lock, the writer's worker processes and a SIGKILL only
show there) and keep the datasets tiny; the .beton cases need ffcv. The process runs what the command
runs (``convert``, a ``FastpartError`` printed as one line, exit status 2) without building the whole
command line, whose parser imports the models (seconds per process).
"""

from __future__ import annotations

import errno
import importlib.util
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
        while not (list((out / "shapes").glob(".train.beton.*.tmp")) and len(descendants(convert.pid)) >= 2):
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
