"""Worker processes for the fast path: the points of one attack's batch split into shards, computed side by side.

On the CPU every worker computes with one intra-op thread (``torch.set_num_threads(1)``): the batch-invariance
probe checks those kernels, and a shard's points are then computed bit for bit as in the whole batch. A
worker is a forked copy of the process (the model and the batch shared copy-on-write) that computes one
shard and sends back its result and its progress through a pipe; the attacks are Python loops of small
tensor operations, which threads would serialise on the GIL. A shard is a strided slice of the batch (points
that stay robust are spread over the shards). Below ``W * MIN_BATCH`` points, or where there is no ``fork``,
there is one shard, computed in the calling process."""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
import traceback
import warnings
from multiprocessing.connection import Connection, Pipe, wait
from typing import Any, Callable, Sequence

import torch

from fastpart.attacks.autoattack.common import MIN_BATCH

Report = Callable[[int, int], None]
ShardFn = Callable[[torch.Tensor, Report], Any]


def can_fork() -> bool:
    """Whether worker processes are available here (Linux: fork; not macOS, whose fork breaks system libraries)."""
    return hasattr(os, "fork") and sys.platform.startswith("linux")


class WorkerError(RuntimeError):
    """A worker failed with an exception that could not be sent back as it was."""


class Workers:
    """``count`` worker processes per batch of shards; ``count == 1``: everything in the calling process."""

    def __init__(self, count: int):
        self.count = count if can_fork() else 1

    def shards(self, m: int, device: torch.device) -> list[torch.Tensor]:
        """The positions of each shard of m points (strided): one shard below ``count * MIN_BATCH`` points."""
        if self.count == 1 or m < self.count * MIN_BATCH:
            return [torch.arange(m, device=device)]
        return [torch.arange(k, m, self.count, device=device) for k in range(self.count)]

    def map(self, fn: ShardFn, shards: Sequence[torch.Tensor], report: Report) -> list[Any]:
        """``fn(positions, part)`` for every shard, side by side, the shards' ``part(done, left)`` reaching
        ``report`` as one (``ShardProgress``). A worker's exception is raised here once the others are stopped
        (so is the caller's KeyboardInterrupt)."""
        progress = ShardProgress(report, [len(rows) for rows in shards])
        if len(shards) == 1:
            return [fn(shards[0], progress.part(0))]
        children: dict[Connection, tuple[int, int]] = {}
        try:
            for k, rows in enumerate(shards):
                receive, send = Pipe(duplex=False)
                with warnings.catch_warnings():  # Python 3.12 warns on fork with threads; the child uses none
                    warnings.simplefilter("ignore", DeprecationWarning)
                    pid = os.fork()
                if pid == 0:
                    _child(fn, rows, send)  # never returns
                send.close()
                children[receive] = (pid, k)
            results: list[Any] = [None] * len(shards)
            pending = dict(children)
            while pending:
                for conn in wait(list(pending)):
                    k = pending[conn][1]
                    try:
                        message = pickle.loads(conn.recv_bytes())
                    except EOFError:
                        raise WorkerError(f"autoattack: worker {k} ended without a result") from None
                    if message[0] == "progress":
                        progress.part(k)(*message[1:])
                    elif message[0] == "result":
                        results[k] = message[1]
                        del pending[conn]
                    else:
                        error, text = message[1], message[2]
                        if error is None:
                            raise WorkerError(f"autoattack: worker {k} failed:\n{text}")
                        raise error
            return results
        finally:
            for conn, (pid, _) in children.items():
                conn.close()
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                os.waitpid(pid, 0)


def _child(fn: ShardFn, rows: torch.Tensor, send: Connection) -> None:
    """A worker: compute the shard, send progress and the result (or the exception), leave at once."""
    code = 0
    try:
        torch.set_num_threads(1)
        result = fn(rows, lambda done, left: send.send_bytes(pickle.dumps(("progress", done, left))))
        send.send_bytes(pickle.dumps(("result", result)))
    except BaseException as error:  # noqa: BLE001 - everything goes back to the parent
        code = 1
        text = traceback.format_exc()
        try:
            payload = pickle.dumps(("error", error, text))
            pickle.loads(payload)
        except Exception:  # noqa: BLE001 - an exception that does not survive pickling: its text
            payload = pickle.dumps(("error", None, text))
        try:
            send.send_bytes(payload)
        except BaseException:  # noqa: BLE001 - the parent is gone
            pass
    finally:
        os._exit(code)


class ShardProgress:
    """The shards' progress as one report: the units done, on average over the shards, and the points the
    shards still attack, summed. ``part(k)`` is shard k's ``(done, left)`` callback."""

    def __init__(self, report: Report, sizes: Sequence[int]):
        self.report = report
        self.done, self.left = [0] * len(sizes), list(sizes)
        self.lock = threading.Lock()

    def part(self, k: int) -> Report:
        def update(done: int, left: int) -> None:
            with self.lock:
                self.done[k], self.left[k] = done, left
                self.report(sum(self.done) // len(self.done), sum(self.left))

        return update


def gather(shards: Sequence[torch.Tensor], results: Sequence[tuple[torch.Tensor, torch.Tensor]],
           like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The shards' ``(flags, rows)`` results as one batch: flags (m,) bool, and rows (m, ...) that are
    ``like``'s where no shard wrote."""
    flags, rows = torch.zeros(len(like), dtype=torch.bool, device=like.device), like.clone()
    for positions, (flags_k, rows_k) in zip(shards, results):
        flags[positions], rows[positions] = flags_k, rows_k
    return flags, rows
