"""Several processes, one model: the process group of a ``torchrun`` launch and the few collectives training needs.

``torchrun`` starts one process per GPU and tells each who it is through the environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``). ``init`` joins them into a process
group: NCCL on CUDA (each process on ``cuda:LOCAL_RANK``), gloo on the CPU. Without those variables
nothing is initialised and every helper behaves as for one process (rank 0 of 1), so the same
training code runs unchanged in a plain ``python`` process.

Collectives have a timeout (``FASTPART_DIST_TIMEOUT`` seconds, default 600): a process that died or
stopped answering makes the others fail with a ``DistributedError`` (one line, naming this rank)
instead of waiting forever. Under ``torchrun`` the launcher also stops the remaining processes as
soon as one exits with an error.

Tensors given to a collective may live on the CPU or on the process's device; with NCCL they travel
through the process's GPU and come back where they were.
"""

from __future__ import annotations

import functools
import os
from datetime import timedelta
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist

from fastpart.errors import FastpartError

TIMEOUT_ENV = "FASTPART_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# what the backends' RuntimeErrors say when a peer died or a collective timed out (DDP raises them as is)
COMMUNICATION_MARKERS = ("gloo", "Gloo", "NCCL", "Connection closed by peer", "Connection reset", "pair closure",
                         "Timed out", "timed out", "Application timeout", "ProcessGroup")

T = TypeVar("T")


class DistributedError(FastpartError):
    """Another process of the run failed, was killed or stopped answering within the timeout."""


# ---------------------------------------------------------------------------------------------
# Who am I
# ---------------------------------------------------------------------------------------------


def launched() -> bool:
    """True inside a ``torchrun`` launch (its variables are set), whatever the world size."""
    return all(v in os.environ for v in LAUNCH_VARIABLES)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise FastpartError(f"environment variable {name}={value!r} is not an integer") from None


def active() -> bool:
    """A process group is initialised (by ``init`` or by the caller)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else _env_int("RANK", 0) if launched() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else _env_int("WORLD_SIZE", 1) if launched() else 1


def local_rank() -> int:
    return _env_int("LOCAL_RANK", 0) if launched() else 0


def is_main() -> bool:
    return rank() == 0


def timeout_seconds() -> float:
    value = os.environ.get(TIMEOUT_ENV)
    if value is None:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise FastpartError(f"{TIMEOUT_ENV}={value!r}: give the collective timeout in seconds (> 0)")
    return seconds


def process_device(device: torch.device) -> torch.device:
    """This process's device: ``cuda`` (no index) becomes ``cuda:LOCAL_RANK`` in a launch; others are kept."""
    device = torch.device(device)
    if not launched() or device.type != "cuda":
        return device
    if device.index is not None and device.index != local_rank() and world_size() > 1:
        raise FastpartError(f"--device {device} in a launch of {world_size()} processes: give --device cuda "
                            f"(each process takes cuda:LOCAL_RANK)")
    return torch.device("cuda", local_rank())


# ---------------------------------------------------------------------------------------------
# Process group
# ---------------------------------------------------------------------------------------------


def init(device: torch.device | str = "cpu") -> bool:
    """Join the process group of a ``torchrun`` launch; returns True when this call initialised it.

    Does nothing (returns False) outside a launch or when a group already exists. NCCL for a CUDA
    ``device`` (which must be this process's ``cuda:LOCAL_RANK``, see ``process_device``), else gloo.
    """
    if not launched() or active():
        return False
    if not dist.is_available():
        raise FastpartError("this torch build has no torch.distributed: run in a single process")
    device = torch.device(device)
    timeout = timedelta(seconds=timeout_seconds())
    if device.type == "cuda":
        if not torch.cuda.is_available() or device.index is None or device.index >= torch.cuda.device_count():
            raise FastpartError(f"rank {rank()} (LOCAL_RANK {local_rank()}) has no device {device}: "
                                f"{torch.cuda.device_count()} GPUs visible; use --nproc_per_node <= the GPU count")
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    try:
        dist.init_process_group(backend=backend, timeout=timeout)
    except (RuntimeError, ValueError) as exc:
        raise DistributedError(f"rank {rank()}: cannot join the process group ({backend}): "
                               f"{_first_line(exc)}") from None
    return True


def shutdown() -> None:
    """Leave the process group (after a barrier when every process got here); safe to call twice."""
    if not active():
        return
    dist.destroy_process_group()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _comm_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn the backend's errors (peer closed the connection, timeout) into one ``DistributedError`` line."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except RuntimeError as exc:  # DistError and its subclasses are RuntimeErrors
            raise as_distributed_error(exc) from None

    return wrapper


def as_distributed_error(exc: BaseException) -> DistributedError:
    return DistributedError(
        f"rank {rank()} of {world_size()}: another process of the run failed, was killed or did not answer "
        f"within {timeout_seconds():.0f}s ({_first_line(exc)}); restart with --resume"
    )


def is_communication_error(exc: BaseException) -> bool:
    """An exception raised by a collective (including DDP's gradient all-reduce inside ``backward``)."""
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(marker in text for marker in COMMUNICATION_MARKERS)


# ---------------------------------------------------------------------------------------------
# Collectives (no-ops for one process)
# ---------------------------------------------------------------------------------------------


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@_comm_errors
def barrier() -> None:
    if active() and world_size() > 1:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


@_comm_errors
def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over the processes, in place (also returned)."""
    if not active() or world_size() == 1:
        return tensor
    device = _comm_device()
    buffer = tensor if tensor.device == device else tensor.to(device)
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    if buffer is not tensor:
        tensor.copy_(buffer)
    return tensor


@_comm_errors
def all_gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every process's ``tensor`` (equal shapes and dtypes on all of them), in rank order, on ``tensor``'s device."""
    if not active() or world_size() == 1:
        return [tensor]
    device = _comm_device()
    local = tensor.contiguous().to(device)
    gathered = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(gathered, local)
    return [t.to(tensor.device) for t in gathered]


@_comm_errors
def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``tensor`` with rank ``src``'s, in place (also returned); shapes must agree."""
    if not active() or world_size() == 1:
        return tensor
    device = _comm_device()
    buffer = tensor if tensor.device == device and tensor.is_contiguous() else tensor.contiguous().to(device)
    dist.broadcast(buffer, src=src)
    if buffer is not tensor:
        tensor.copy_(buffer)
    return tensor


@_comm_errors
def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s picklable ``obj`` on every process (what the others pass is ignored)."""
    if not active() or world_size() == 1:
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src, device=_comm_device() if dist.get_backend() == "nccl" else None)
    return box[0]


def on_main(fn: Callable[[], T]) -> T:
    """``fn()`` run by rank 0 alone (e.g. reading the run folder), its result or its FastpartError on every process."""
    if not active() or world_size() == 1:
        return fn()
    result, error = None, None
    if is_main():
        try:
            result = fn()
        except FastpartError as exc:
            error = str(exc)
    result, error = broadcast_object((result, error))
    if error is not None:
        raise FastpartError(error)
    return result


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Give every process rank ``src``'s buffers (batch-norm running statistics), as DDP does before a forward."""
    if not active() or world_size() == 1:
        return
    for buffer in module.buffers():
        broadcast(buffer.data, src=src)


def check_same(value: Any, what: str) -> None:
    """FastpartError on every process when the processes disagree on ``value`` (rank 0's is the reference)."""
    reference = broadcast_object(value)
    agree = torch.tensor([int(reference == value)], dtype=torch.int64)
    all_reduce_sum(agree)
    if int(agree) != world_size():
        raise DistributedError(f"the {world_size()} processes disagree on {what}")


__all__ = [
    "DistributedError",
    "active",
    "all_gather",
    "all_reduce_sum",
    "as_distributed_error",
    "barrier",
    "broadcast",
    "broadcast_buffers",
    "broadcast_object",
    "check_same",
    "init",
    "is_communication_error",
    "is_main",
    "launched",
    "local_rank",
    "on_main",
    "process_device",
    "rank",
    "shutdown",
    "timeout_seconds",
    "world_size",
]
