"""Shared test setup. Without a CUDA device, Triton kernels run in Triton's interpreter: TRITON_INTERPRET=1
must be set before any ``@triton.jit`` decorator runs, so it is set here, before test modules are imported."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
