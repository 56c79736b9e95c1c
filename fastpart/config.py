"""Frozen settings, one dataclass per CLI verb and one field per flag.

The CLI builds these from argparse; library users build them directly. Nothing here imports the
rest of fastpart, so every stage may depend on it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, NamedTuple


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
class TrainConfig:
    """Training settings; ``None`` means the dataset's paper default (``fastpart.data.datasets.TrainDefaults``)."""

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
    ema: float | None = None  # decay of the weight average (None: no average)
    val_n: int = 0  # training images held out for validation (0: none)
    val_every: int = 1
    val_steps: int = 10
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    loader: str = "auto"
    workers: int = 0
    compile: bool = False
    compile_mode: str = "default"  # torch.compile mode of --compile and --compile-attack (reduce-overhead: CUDA graphs)
    compile_attack: bool = False  # the whole PGD attack as one compiled graph
    tensorboard: bool = False  # also write <out>/tensorboard/ event files

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> "TrainConfig":
        """The config of a ``to_dict`` (e.g. a run's config.json); unknown keys are ignored, lists become tuples."""
        known = {k: v for k, v in fields.items() if k in cls.__dataclass_fields__}
        if known.get("milestones") is not None:
            known["milestones"] = tuple(known["milestones"])
        return cls(**known)


# The choices users make by name, here so that the command line parses without importing torch.
CAM_METHODS: tuple[str, ...] = ("gradcam", "xgradcam", "layercam")  # fastpart.part.cam
CAM_BACKENDS: tuple[str, ...] = ("native", "grad-cam")
MASK_MODES = ("paper", "reference")  # fastpart.part.levels
INTERPOLATIONS = ("bicubic", "bilinear")
TARGETS = ("pred", "label")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's


class Method(NamedTuple):
    """A training method: its base objective (fastpart.objectives), and whether PGD runs inside PART's
    per-pixel budget."""

    objective: str
    pixel_reweighted: bool


METHODS: dict[str, Method] = {
    "at": Method("at", False),
    "trades": Method("trades", False),
    "mart": Method("mart", False),
    "part": Method("at", True),
    "part-trades": Method("trades", True),
    "part-mart": Method("mart", True),
}
TRAINING_ATTACKS = ("pgd", "mma")  # --ae: the generator of the training adversarial examples
BATCH_SCOPES = ("global", "per-gpu")  # --batch-scope: what --batch-size counts under several processes
PRECISIONS = ("fp32", "bf16", "fp16")  # fastpart.precision maps them to dtypes; "auto" picks one per device

DEFAULT_EVAL_ATTACKS: tuple[str, ...] = ("natural", "pgd20", "mma", "aa")


@dataclass(frozen=True)
class EvalConfig:
    """``fastpart eval`` settings; ``None`` means: take it from the run (its data folder, eps)."""

    run: str
    attacks: tuple[str, ...] = DEFAULT_EVAL_ATTACKS
    checkpoint: str = "last"  # last, best, or a state-dict file fastpart did not write (then model and dataset)
    weights: str = "live"  # live or ema
    model: str | None = None  # a plain state dict's architecture
    dataset: str | None = None  # ... and the converted dataset it is evaluated on
    normalize: str | None = None  # ... and its input normalisation: MEAN/STD (3 values each) or a dataset name
    n: int | None = None
    aa_n: int | None = None  # AutoAttack items on a seeded subset of this many of the evaluated images
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
