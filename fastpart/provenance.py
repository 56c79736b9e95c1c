"""Where and how a run ran, for its env.json: library versions, the device, threads, the command line, the source
revision and the host. ``environment`` is what ``fastpart train`` records; ``source_revision`` the git commit of
the fastpart source that runs (None for an installed wheel)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

import fastpart
from fastpart import distributed

__all__ = ["environment", "source_revision"]


def environment(device: torch.device) -> dict[str, Any]:
    versions = {"fastpart": fastpart.__version__, "torch": torch.__version__, "python": platform.python_version()}
    for name in ("numpy", "timm", "ffcv", "triton", "numba"):
        try:  # the installed release, without importing it (importing ffcv compiles its kernels: seconds)
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"versions": versions, "device": str(device), "device_name": name, "cpu_count": os.cpu_count(),
            "world_size": distributed.world_size(), "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(), "command": list(sys.argv),
            "source_revision": source_revision(), "hostname": socket.gethostname()}


def source_revision(folder: Path = Path(fastpart.__file__).resolve().parent) -> str | None:
    """The git commit of the fastpart source that runs (``+dirty`` when files differ from it); None outside a
    git checkout (an installed wheel) or without git."""
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        if Path(git("rev-parse", "--show-toplevel")).resolve() != folder.parent:
            return None  # a checkout of something else holds this installed package
        revision = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", str(folder))
    except (OSError, subprocess.SubprocessError):
        return None
    return revision + ("+dirty" if dirty else "")
