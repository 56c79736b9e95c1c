"""Helpers shared by the test files: a deadline for blocks that must not hang, a run stopped by Ctrl-C, and
randomised batch norms."""

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

    def stopping(model, loader, *args, **kwargs):
        if loader.epoch + 1 == before_epoch:  # the loader was set to the epoch about to run
            raise KeyboardInterrupt
        return real(model, loader, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(training, "train_epoch", stopping)
        yield


def randomised(model, seed: int):
    """Random BN statistics and affines: an untrained net gives varied, non-trivial CAMs, and a swapped or
    misplaced BN changes the logits. Returns the model in eval mode."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(m.num_features, generator=g))
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.num_features, generator=g))
    return model.eval()
