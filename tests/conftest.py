"""Shared test setup. Without a CUDA device, Triton kernels run in Triton's interpreter: TRITON_INTERPRET=1
must be set before any ``@triton.jit`` decorator runs, so it is set here, before test modules are imported."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


# ---------------------------------------------------------------------------------------------
# Shared, session-wide data and trained models (each built once per test run)
# ---------------------------------------------------------------------------------------------

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.requires_ffcv`` tests (they write or read .beton files) are skipped where ffcv is missing."""
    import importlib.util

    if importlib.util.find_spec("ffcv") is None:
        skip = pytest.mark.skip(reason="needs ffcv (.beton files): pip install -e '.[ffcv]' (setup.sh does)")
        for item in items:
            if "requires_ffcv" in item.keywords:
                item.add_marker(skip)


SMALL_EPS = 2 / 255  # the trained model's budget: a CPU run learns robustness at this scale in a few epochs


def train_shapes(data: Path, run: Path, epochs: int, seed: int = 0) -> Path:
    """AT of a width-8 ResNet-18 on shapes with a small budget (eps 2/255, 1-step PGD)."""
    from fastpart.cli import main

    assert main(["train", "--dataset", "shapes", "--data-dir", str(data), "--model", "resnet18_cifar_w8",
                 "--method", "at", "--eps", str(SMALL_EPS), "--alpha", str(1 / 255), "--steps", "1", "--epochs",
                 str(epochs), "--batch-size", "32", "--lr", "0.02", "--eval-steps", "1", "--eval-n", "50",
                 "--seed", str(seed), "--out", str(run)]) == 0
    return run


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory) -> Path:
    """Converted shapes (4000 training, 300 test images, npz) for tests that need a model that learned."""
    from fastpart.cli import main

    data = tmp_path_factory.mktemp("shapes") / "data"
    assert main(["convert", "shapes", "--n-train", "4000", "--n-test", "300", "--out", str(data), "--format", "npz"]) == 0
    return data


@pytest.fixture(scope="session")
def trained_shapes(shapes_data) -> Path:
    """A run folder of 6 epochs of AT on ``shapes_data``: natural accuracy well above chance, some robustness."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same model whatever ran before in this process
    try:
        return train_shapes(shapes_data, shapes_data.parent / "trained", epochs=6)
    finally:
        torch.set_num_threads(threads)


REAL_CIFAR10 = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


@pytest.fixture(scope="session")
def real_cifar10(tmp_path_factory) -> tuple[Path, float]:
    """The offline CIFAR-10 JPEG archive read and converted (npz) once: its folder and the seconds it took."""
    import time

    from fastpart.cli import main

    if not REAL_CIFAR10.is_file():
        pytest.skip(f"the offline CIFAR-10 JPEG archive {REAL_CIFAR10} is not present")
    out = tmp_path_factory.mktemp("real")
    start = time.perf_counter()
    assert main(["convert", "cifar10", "--source", str(REAL_CIFAR10), "--out", str(out), "--format", "npz"]) == 0
    return out / "cifar10", time.perf_counter() - start
