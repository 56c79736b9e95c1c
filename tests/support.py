"""Helpers shared by the test files: a deadline for blocks that must not hang, and a run stopped by Ctrl-C."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


class Overran(Exception):
    """The block ran past its deadline (not an OSError: nothing may take it for a full disk)."""


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail (``Overran``) instead of hanging, or decoding for minutes, when the block runs longer than ``seconds``."""
    def expired(signum, frame):
        raise Overran(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def ctrl_c_before_epoch(monkeypatch, before_epoch: int) -> Iterator[None]:
    """Training inside the block stops with KeyboardInterrupt when epoch ``before_epoch`` (1-based) would start."""
    import fastpart.training as training

    real = training.train_epoch

    def stopping(model, loader, optimizer, objective, cfg, epoch, *args, **kwargs):
        if epoch + 1 == before_epoch:
            raise KeyboardInterrupt
        return real(model, loader, optimizer, objective, cfg, epoch, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(training, "train_epoch", stopping)
        yield
