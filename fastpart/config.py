"""Frozen settings, one dataclass per CLI verb and one field per flag.

The CLI builds these from argparse; library users build them directly. Nothing here imports the
rest of fastpart, so every stage may depend on it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ConvertConfig:
    dataset: str
    source: str | None = None
    download: bool = False
    mirror: str | None = None
    checksum: str | None = None
    out: str = "data"
    name: str | None = None
    format: str = "beton"
    force: bool = False
    n_train: int | None = None
    n_test: int | None = None
    seed: int | None = None
    generate_from: str | None = None  # cifar10c: corrupt this converted dataset's test split instead
    data_dir: str | None = None  # where --generate-from's dataset was converted (default: out)

    def generator_options(self) -> dict[str, int]:
        """Options of generated datasets (shapes); a changed option means a different dataset."""
        options = {"n_train": self.n_train, "n_test": self.n_test, "seed": self.seed}
        return {k: v for k, v in options.items() if v is not None}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LoaderConfig:
    backend: str = "auto"
    batch_size: int = 128
    device: str = "cpu"
    precision: str = "fp32"
    seed: int = 0
    num_workers: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrainConfig:
    """Training settings; ``None`` means the dataset's paper default (``datasets.TrainDefaults``)."""

    dataset: str = "shapes"
    data_dir: str = "data"
    out: str = "runs/latest"
    resume: bool = False
    method: str = "at"
    model: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    batch_scope: str = "global"
    lr: float | None = None
    wd: float | None = None
    momentum: float = 0.9
    milestones: tuple[int, ...] | None = None
    eps: float = 8 / 255
    eps_low: float = 7 / 255
    alpha: float | None = None
    steps: int = 10
    ae: str = "pgd"
    burn_in: int = 20
    mask_freq: int = 10
    cam: str = "gradcam"
    cam_backend: str = "native"
    cam_layer: str | None = None
    mask_mode: str = "paper"
    mask_target: str = "pred"
    tau: float = 1.0
    interpolation: str = "bicubic"
    eval_every: int = 0
    eval_n: int | None = None
    eval_steps: int = 20
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    loader: str = "auto"
    workers: int = 0
    compile: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_EVAL_ATTACKS: tuple[str, ...] = ("natural", "pgd20", "mma", "aa")


@dataclass(frozen=True)
class EvalConfig:
    """``fastpart eval`` settings; ``None`` means: take it from the run (its data folder, eps)."""

    run: str
    attacks: tuple[str, ...] = DEFAULT_EVAL_ATTACKS
    n: int | None = None
    seed: int = 0
    batch_size: int = 256
    device: str = "auto"
    precision: str = "fp32"
    data_dir: str | None = None
    out: str | None = None
    eps: float = 8 / 255
    alpha: float = 2 / 255
    adaptive_eps: float = 12 / 255
    adaptive_eps_low: float = 8 / 255
    eps_curve: tuple[float, ...] = (0.0, 2 / 255, 4 / 255, 6 / 255, 8 / 255, 12 / 255, 16 / 255)
    surrogate: str | None = None
    c_data_dir: str | None = None
    c_dataset: str = "cifar10c"
    restart: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
