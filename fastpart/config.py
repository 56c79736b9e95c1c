"""Frozen settings: one dataclass per CLI verb, one field per option, and each field declares its option.

Every field of ``TrainConfig`` and ``EvalConfig`` carries its option's description (``option(...)``: help,
group, kind, choices, unit, whether only PART uses it, whether a resume may change it). The command line
(``fastpart.cli``: grouped ``--help``), config files (``--config run.toml``), a run's ``config.json``, the resume
check and the checks of ``check_train`` all read this one table, so no option is written twice.

Budgets and step sizes are in [0, 1] pixel units (``fastpart.options.parse_budget`` reads ``8/255``).
``check_train`` refuses impossible settings with one line before anything heavy is imported. Nothing here
imports torch or the rest of fastpart beyond its error type and its option table (``fastpart.options``),
so every stage may depend on it.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

from fastpart.errors import FastpartError
from fastpart.options import budget_label, did_you_mean, option, options, parse_budget, part_only

# ---------------------------------------------------------------------------------------------
# Names users choose among, here so that the command line parses without importing torch
# ---------------------------------------------------------------------------------------------

CAM_METHODS: tuple[str, ...] = ("gradcam", "xgradcam", "layercam")  # fastpart.part.cam
CAM_BACKENDS: tuple[str, ...] = ("native", "grad-cam")
MASK_MODES = ("paper", "reference")  # fastpart.part.levels
INTERPOLATIONS = ("bicubic", "bilinear")
TARGETS = ("pred", "label")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's
TRAINING_ATTACKS = ("pgd", "mma", "fgsm-rs", "n-fgsm")  # --ae: the generator of the training adversarial examples
BATCH_SCOPES = ("global", "per-gpu")  # --batch-scope: what --batch-size counts under several processes
PRECISIONS = ("fp32", "bf16", "fp16")  # fastpart.precision maps them to dtypes; "auto" picks one per device
LOADERS = ("auto", "memory", "ffcv")
LR_SCHEDULES = ("step", "onecycle")  # fastpart.schedules
PGD_STARTS = ("uniform", "normal-unclipped", "uniform-unclipped", "normal", "none")  # fastpart.attacks.pgd
ACTIVATIONS = ("relu", "silu")  # --activation of fastpart's CIFAR ResNet-18 and WideResNets (fastpart.models.cifar)
NUMERICS = ("official", "released")  # --numerics: the authors' TRADES/MART code, or the released PART code's step
DEFAULT_EVAL_ATTACKS: tuple[str, ...] = ("natural", "pgd20", "mma", "aa")
EVAL_ATTACKS: tuple[str, ...] = ("natural", "mma", "mma-ref", "aa", "aa-fast", "aa-apgd-ce", "aa-apgd-t", "aa-fab-t",
                                 "aa-square", "adaptive-mma", "eps-curve", "cifar10c", "checks")  # fastpart.measurements
EVAL_ATTACK_PATTERNS = {"pgd<k>": r"pgd\d+", "adaptive<k>": r"adaptive\d*"}  # PGD-k; adaptive PGD-k (default 20)
ATTACK_ALIASES = {"autoattack": "aa", "pgd": "pgd20", "clean": "natural", "auto-attack": "aa", "apgd": "aa-apgd-ce",
                  "fab": "aa-fab-t", "square": "aa-square"}  # names users reach for, and fastpart's for them


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
PART_METHODS = tuple(name for name, m in METHODS.items() if m.pixel_reweighted)

# ---------------------------------------------------------------------------------------------
# The verbs' configs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvertConfig:
    dataset: str
    source: str | None = None
    download: bool = False
    mirror: str | None = None
    checksum: str | None = None
    out: str = "data"
    name: str | None = None
    format: str = "auto"  # auto: .beton where ffcv is installed (or as the conversion already there), else .npz
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


PAPER = "the dataset's paper setting"


@dataclass(frozen=True)
class TrainConfig:
    """Training settings; ``None`` means: the dataset's paper default (``fastpart.data.datasets.TrainDefaults``),
    or what the field's help says."""

    # data
    dataset: str | None = option(None, "converted dataset (a folder under --data-dir); default: the only one there",
                                 "data", shown=False)
    data_dir: str = option("data", "where `fastpart convert --out` wrote", "data", resume=True)
    loader: str = option("auto", "loader backend: memory (the split on the device), ffcv (streamed), or auto",
                         "data", choices=LOADERS)
    workers: int = option(0, "ffcv decoding threads (0: all cores)", "data", "int", resume=True)
    train_n: int | None = option(None, "train on a fixed subset of N training images, the same for every seed "
                                 "(default: all)", "data", "int", metavar="N", shown=False)
    # method
    method: str = option("part", "part, part-trades, part-mart (PART with AT, TRADES, MART), or the baselines at, "
                         "trades, mart", "method", choices=tuple(METHODS))
    model: str | None = option(None, f"fastpart, RobustBench or timm model name (default: {PAPER})", "method",
                               shown=False)
    seed: int = option(0, "seed of weights, order, augmentation, attacks", "method", "int")
    activation: str = option("relu", "activation of the CIFAR ResNet-18 and the TRADES-style WideResNets "
                             "(resnet18_cifar*, wrn* but wrn70_16)", "method", choices=ACTIVATIONS)
    label_smoothing: float = option(0.0, "label smoothing of the training loss's cross-entropy terms (not of the "
                                    "attack's)", "method", "float", metavar="S")
    awp: float | None = option(None, "adversarial weight perturbation of relative size GAMMA per layer (Wu et al., "
                               "NeurIPS 2020; their 0.01 for AT, 0.005 for TRADES)", "method", "float",
                               metavar="GAMMA", shown=False)
    awp_warmup: int | None = option(None, "epochs before --awp starts (default: 10 for trades and part-trades, 0 "
                                    "otherwise, as the official code)", "method", "int", metavar="EPOCHS",
                                    shown=False)
    # PART
    eps_low: float = option(7 / 255, "budget of the pixels the mask does not mark important", "part", "budget",
                            part=True)
    burn_in: int | None = option(None, "epochs of the plain base method before masks are used (default: a quarter "
                                 "of --epochs, the paper's 20 of 80)", "part", "int", part=True, shown=False)
    mask_freq: int = option(10, "recompute the masks every N epochs after the burn-in (0: per batch, no cache)",
                            "part", "int", part=True)
    cam: str = option("gradcam", "class activation map method", "part", choices=CAM_METHODS, part=True)
    cam_backend: str = option("native", "native batched CAMs, or the pytorch-grad-cam package", "part",
                              choices=CAM_BACKENDS, part=True)
    cam_layer: str | None = option(None, "module whose output the CAM explains (default: the model's last conv "
                                   "block, e.g. layer4 of ResNet-18)", "part", part=True, shown=False)
    mask_mode: str = option("paper", "paper (per pixel, standardised map > tau) or reference (the released code, "
                            "per channel)", "part", choices=MASK_MODES, part=True)
    mask_target: str = option("pred", "the class the CAM explains: the prediction or the label", "part",
                              choices=TARGETS, part=True)
    tau: float = option(1.0, "threshold on the standardised CAM", "part", "float", part=True)
    interpolation: str = option("bicubic", "CAM upsampling", "part", choices=INTERPOLATIONS, part=True)
    numerics: str = option("official", "official: the paper's mask and lr schedule; released: the released PART "
                           "code's step: jet mask (--mask-mode reference, torchcam 0.3.2), start under the mask "
                           "(part: x + U(-eps, eps) per pixel, unclipped), lr / 10 from the 60th epoch after the "
                           "burn-in, / 100 from the 90th (unless --milestones). Trades and mart start and update "
                           "batch norm as their official code either way", "part", choices=NUMERICS, part=True)
    # attack
    eps: float = option(8 / 255, "L-inf budget (of the important pixels, with PART)", "attack", "budget")
    alpha: float | None = option(None, f"PGD step size (default: {PAPER}: 2/255, SVHN 1/255)", "attack", "budget",
                                 shown=False)
    steps: int = option(10, "attack steps (PGD; MMA: APGD iterations per target)", "attack", "int")
    pgd_start: str | None = option(None, "PGD's start: uniform (clip(x + U(-eps, eps), 0, 1) per pixel, Madry et "
                                   "al.), normal-unclipped (x + 0.001 N(0, 1), the first gradient there: the official "
                                   "TRADES and MART code), uniform-unclipped (the released PART code's), normal "
                                   "(clipped: fastpart 0.1's TRADES), none; default: uniform for at and part, "
                                   "normal-unclipped for trades, mart, part-trades and part-mart", "attack",
                                   choices=PGD_STARTS, shown=False)
    ae: str = option("pgd", "training adversarial examples: pgd (the objective's loss), mma (minimum-margin, top-3 "
                     "targets; PART's App. H.4), or one step: fgsm-rs (uniform start, step 1.25 eps, Wong et al.) or "
                     "n-fgsm (noise 2 eps, step eps, no projection, de Jorge et al.), per pixel under PART's masks",
                     "attack", choices=TRAINING_ATTACKS)
    # schedule
    epochs: int | None = option(None, f"epochs (default: {PAPER}, 80)", "schedule", "int", shown=False)
    batch_size: int | None = option(None, f"batch size (default: {PAPER}); see --batch-scope", "schedule", "int",
                                    shown=False)
    batch_scope: str = option("global", "under torchrun: global (--batch-size is split over the processes) or "
                              "per-gpu (each process takes --batch-size); the lr is not rescaled", "schedule",
                              choices=BATCH_SCOPES)
    lr: float | None = option(None, f"SGD learning rate (default: {PAPER})", "schedule", "float", shown=False)
    wd: float | None = option(None, f"weight decay (default: {PAPER})", "schedule", "float", shown=False)
    momentum: float = option(0.9, "SGD momentum", "schedule", "float")
    milestones: tuple[int, ...] | None = option(None, "epochs where the lr drops 10x (default: 75%% of the epochs)",
                                                "schedule", "ints", shown=False)
    lr_schedule: str | None = option(None, "step: lr / 10 at the milestones (the paper); onecycle: linear from 0 up "
                                     "to --lr at 2/5 of the epochs, then down to 0, per batch (Wong et al., ICLR "
                                     f"2020) (default: {PAPER}: step; the shapes demo: onecycle)", "schedule",
                                     choices=LR_SCHEDULES, shown=False)
    lr_warmup: float = option(0.0, "epochs of a linear learning-rate warm-up from 0, per batch (step schedule)",
                              "schedule", "float", metavar="EPOCHS")
    eps_warmup: float | None = option(None, "epochs over which the budget rises linearly from 0 after --eps-delay, "
                                      "per batch (eps and PART's eps-low alike, their ratio kept; the step size "
                                      f"stays) (default: {PAPER}: 0; the shapes demo: a fifth of the epochs)",
                                      "schedule", "float", metavar="EPOCHS", shown=False)
    eps_delay: float | None = option(None, "epochs of clean training (budget 0) before the budget ramp (default: "
                                     f"{PAPER}: 0; the shapes demo: a tenth of the epochs)", "schedule", "float",
                                     metavar="EPOCHS", shown=False)
    ema: float | None = option(None, "keep an exponential moving average of the weights with this decay (e.g. "
                               "0.999; buffers copied); evaluations report both models", "schedule", "float",
                               metavar="DECAY", shown=False)
    # evaluation
    eval_every: int = option(0, "test natural + PGD accuracy every k epochs (0: at the end only)", "evaluation",
                             "int", resume=True)
    eval_n: int | None = option(None, "evaluate on a seeded subset of this many test images (default: all)",
                                "evaluation", "int", shown=False)
    eval_steps: int = option(20, "PGD steps of the test-set evaluation", "evaluation", "int")
    val_n: int = option(0, "hold out a seeded subset of N training images for natural + PGD accuracy every "
                        "--val-every epochs; the best epoch is kept as best.pt", "evaluation", "int", metavar="N")
    val_every: int = option(1, "validate every k epochs (with --val-n)", "evaluation", "int")
    val_steps: int = option(10, "PGD steps of the validation", "evaluation", "int")
    # fast path
    device: str = option("auto", "cpu, cuda, cuda:N or auto", "fast")
    precision: str = option("auto", "autocast precision of the model (auto: bf16 on CUDA, fp32 on CPU)", "fast",
                            choices=("auto", *PRECISIONS))
    compile: bool = option(False, "torch.compile the model for the attack and the update", "fast", "flag",
                           resume=True)
    compile_attack: bool = option(False, "compile each PGD step (forward, input gradient, step) as one graph",
                                  "fast", "flag", resume=True)
    compile_mode: str = option("default", "torch.compile mode of --compile and --compile-attack (reduce-overhead: "
                               "CUDA graphs)", "fast", choices=COMPILE_MODES, resume=True)
    # output
    out: str = option("runs/latest", "run folder: config, metrics, checkpoints, masks", "output", resume=True)
    resume: bool = option(False, "continue the run in --out from its last checkpoint (its config.json gives "
                          "every setting not given here)", "output", "flag", resume=True)
    tensorboard: bool = option(False, "also write TensorBoard event files to <out>/tensorboard", "output", "flag",
                               resume=True)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """The config of a ``to_dict`` (e.g. a run's config.json); unknown keys are ignored, lists become tuples."""
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        known = {k: tuple(v) if isinstance(v, list) else v for k, v in known.items()}
        return cls(**known)

    @property
    def pixel_reweighted(self) -> bool:
        return self.method in METHODS and METHODS[self.method].pixel_reweighted


@dataclass(frozen=True)
class EvalConfig:
    """``fastpart eval`` settings; ``None`` means: take it from the run (its data folder, eps). ``run`` is the
    positional RUN (a run folder or its checkpoint.pt; "" with --checkpoint FILE)."""

    run: str
    # data
    checkpoint: str = option("last", "the run's last checkpoint, its best validation epoch (best.pt, trained with "
                             "--val-n), or a plain state dict fastpart did not write, e.g. a RobustBench zoo file "
                             "(then --model, --dataset)", "data", metavar="last|best|FILE")
    weights: str = option("live", "the trained weights, or their moving average (trained with --ema)", "data",
                          choices=("live", "ema"))
    model: str | None = option(None, "with --checkpoint FILE: the registered architecture of the state dict", "data")
    dataset: str | None = option(None, "with --checkpoint FILE: the converted dataset to evaluate on (under "
                                 "--data-dir)", "data")
    normalize: str | None = option(None, "with --checkpoint FILE: the model's input normalisation, MEAN,STD or "
                                   "M1,M2,M3,S1,S2,S3 or 'dataset' (the dataset's statistics); default: none, the "
                                   "model takes [0, 1] images", "data", metavar="MEAN,STD")
    data_dir: str | None = option(None, "where the converted dataset lives (default: the run's --data-dir)", "data")
    c_data_dir: str | None = option(None, "cifar10c: where the converted CIFAR-10-C lives (default: --data-dir)",
                                    "data")
    c_dataset: str = option("cifar10c", "cifar10c: its folder name", "data")
    # evaluation
    attacks: tuple[str, ...] = option(DEFAULT_EVAL_ATTACKS, "comma-separated (the list below)", "evaluation", "names",
                                      shown=",".join(DEFAULT_EVAL_ATTACKS))
    n: int | None = option(None, "evaluate a seeded subset of N test images (default: all)", "evaluation", "int",
                           metavar="N")
    aa_n: int | None = option(None, "run the aa attacks on a seeded subset of N of the evaluated images (default: "
                              "all of them)", "evaluation", "int", metavar="N")
    aa_backend: str = option("fast", "AutoAttack: fast (fastpart's: the reference's verdicts, settled points leave "
                             "early; the reference itself where the model's results depend on the batch) or "
                             "reference (pyautoattack as it is)", "evaluation", choices=("fast", "reference"))
    seed: int = option(0, "subset and attack seed", "evaluation", "int")
    eps: float = option(8 / 255, "L-inf budget", "evaluation", "budget")
    alpha: float = option(2 / 255, "PGD step", "evaluation", "budget")
    adaptive_eps: float = option(12 / 255, "adaptive attacks: budget of the CAM-important pixels", "evaluation",
                                 "budget")
    adaptive_eps_low: float = option(8 / 255, "adaptive attacks: budget of the other pixels", "evaluation", "budget")
    eps_curve: tuple[float, ...] = option((0.0, 2 / 255, 4 / 255, 6 / 255, 8 / 255, 12 / 255, 16 / 255),
                                          "budgets of eps-curve and checks", "evaluation", "budgets",
                                          shown="0 to 16/255")
    surrogate: str | None = option(None, "checks: another run whose PGD-20 examples are transferred", "evaluation",
                                   metavar="RUN")
    # fast path
    batch_size: int = option(256, "images per batch", "fast", "int")
    device: str = option("auto", "cpu, cuda, cuda:N or auto", "fast")
    precision: str = option("fp32", "autocast precision of the model under attack", "fast", choices=PRECISIONS)
    # output
    out: str | None = option(None, "folder for eval.json / eval.csv (default: the run folder)", "output")
    restart: bool = option(False, "ignore saved progress and start afresh", "output", "flag")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Checks that need nothing but the settings and the file system (before torch is imported)
# ---------------------------------------------------------------------------------------------


def check_eval(cfg: EvalConfig) -> None:
    """One line for an impossible ``fastpart eval``, before torch is imported: unknown attack names (with a
    did-you-mean), counts below 1, a run or checkpoint file that is not there, a foreign state dict without its
    architecture and dataset."""
    for name in cfg.attacks:
        if name in EVAL_ATTACKS or any(re.fullmatch(p, name) for p in EVAL_ATTACK_PATTERNS.values()):
            continue
        hint = f" (did you mean {ATTACK_ALIASES[name]}?)" if name in ATTACK_ALIASES else \
            did_you_mean(name, EVAL_ATTACKS)
        raise FastpartError(f"unknown attack {name!r}{hint}; choose from {', '.join([*EVAL_ATTACKS, *EVAL_ATTACK_PATTERNS])}")
    if not cfg.attacks:
        raise FastpartError("--attacks is empty: name at least one, e.g. natural,pgd20")
    for name in ("n", "aa_n", "batch_size"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise FastpartError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if cfg.checkpoint in ("last", "best"):
        if cfg.model is not None or cfg.normalize is not None:
            raise FastpartError("--model and --normalize are for plain state dicts: give --checkpoint FILE")
        if not cfg.run:
            raise FastpartError("give the run folder to evaluate (or --checkpoint FILE --model NAME --dataset D)")
        run = Path(cfg.run)
        if not run.exists():
            raise FastpartError(f"no run at {run}: give a run folder written by `fastpart train` (or its checkpoint.pt)")
        wanted = run / ("best.pt" if cfg.checkpoint == "best" else "checkpoint.pt")
        if run.is_dir() and not wanted.is_file():
            more = " (best.pt is written by runs trained with --val-n)" if cfg.checkpoint == "best" else ""
            raise FastpartError(f"no {wanted.name} in {run}{more}: is it a run folder written by `fastpart train`?")
    else:
        if not Path(cfg.checkpoint).is_file():
            raise FastpartError(f"--checkpoint {cfg.checkpoint}: no such file (or give last or best)")
        if cfg.model is None or cfg.dataset is None:
            raise FastpartError(f"--checkpoint {cfg.checkpoint}: a state dict file needs --model NAME and --dataset D "
                                f"(and --data-dir where D is converted)")
        if cfg.weights != "live":
            raise FastpartError("--weights ema is for fastpart runs trained with --ema")


def converted_datasets(data_dir: str) -> list[str]:
    """The datasets converted under ``data_dir`` (folders holding a manifest.json), sorted."""
    folder = Path(data_dir)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / "manifest.json").is_file())


def default_dataset(data_dir: str) -> str:
    """The one converted dataset under ``data_dir``; one line when there is none or there are several."""
    found = converted_datasets(data_dir)
    if len(found) == 1:
        return found[0]
    if found:
        raise FastpartError(f"{data_dir} holds several converted datasets ({', '.join(found)}): choose one with "
                            f"--dataset")
    raise FastpartError(f"no converted dataset in {data_dir}: run `fastpart convert cifar10` (the official "
                        f"cifar-10-python.tar.gz in {Path(data_dir) / 'downloads'}), or `fastpart convert shapes` "
                        f"for a demo that needs no download")


def check_train(cfg: TrainConfig, given: set[str] | None = None) -> None:
    """Refuse impossible training settings with one line, before anything heavy runs. ``given``: the options set
    by the user (flags or a config file); PART's options among them are refused for a method without masks."""
    for f in options(TrainConfig):
        choices, value = f.metadata["choices"], getattr(cfg, f.name)
        if choices and value is not None and value not in choices:
            raise FastpartError(f"unknown --{f.name.replace('_', '-')} {value!r}{did_you_mean(str(value), choices)}; "
                                f"choose from {', '.join(choices)}")
    if given is not None and not cfg.pixel_reweighted:
        extra = sorted(part_only(TrainConfig) & given)
        if extra:
            flags = ", ".join("--" + name.replace("_", "-") for name in extra)
            raise FastpartError(f"{flags} {'applies' if len(extra) == 1 else 'apply'} to {', '.join(PART_METHODS)}; "
                                f"with --method {cfg.method} there are no masks")
    for name in ("epochs", "batch_size"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise FastpartError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    for name in ("steps", "eval_steps", "val_steps", "val_n", "eval_every", "workers", "mask_freq"):
        if getattr(cfg, name) < 0:
            raise FastpartError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}")
    if cfg.val_every < 1:
        raise FastpartError(f"--val-every must be >= 1, got {cfg.val_every}")
    if cfg.train_n is not None and cfg.train_n < 1:
        raise FastpartError(f"--train-n must be >= 1, got {cfg.train_n}")
    if cfg.eval_n is not None and cfg.eval_n < 1:
        raise FastpartError(f"--eval-n must be >= 1, got {cfg.eval_n}")
    for name in ("eps", "eps_low", "alpha"):
        value = getattr(cfg, name)
        if value is not None:
            parse_budget(value)  # in [0, 1]
    if cfg.pixel_reweighted and cfg.eps_low > cfg.eps:
        raise FastpartError(f"need eps-low <= eps, got eps-low {budget_label(cfg.eps_low)} and eps "
                            f"{budget_label(cfg.eps)}")
    if cfg.lr is not None and not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise FastpartError(f"--lr must be a positive number, got {cfg.lr}")
    if cfg.wd is not None and not (math.isfinite(cfg.wd) and cfg.wd >= 0):
        raise FastpartError(f"--wd must be a number >= 0, got {cfg.wd}")
    if not (math.isfinite(cfg.momentum) and 0 <= cfg.momentum < 1):
        raise FastpartError(f"--momentum must be in [0, 1), got {cfg.momentum}")
    if not (math.isfinite(cfg.label_smoothing) and 0 <= cfg.label_smoothing < 1):
        raise FastpartError(f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if cfg.awp is not None and not (math.isfinite(cfg.awp) and cfg.awp > 0):
        raise FastpartError(f"--awp must be a positive gamma, e.g. 0.01; got {cfg.awp}")
    if cfg.awp_warmup is not None and (cfg.awp is None or cfg.awp_warmup < 0):
        raise FastpartError(f"--awp-warmup {cfg.awp_warmup}: give epochs >= 0 with --awp GAMMA")
    if cfg.ema is not None and not 0 < cfg.ema < 1:
        raise FastpartError(f"--ema must be a decay in (0, 1), e.g. 0.999; got {cfg.ema}")
    if cfg.burn_in is not None and cfg.burn_in < 0:
        raise FastpartError(f"--burn-in must be >= 0, got {cfg.burn_in}")
    if cfg.pixel_reweighted and cfg.burn_in is not None and cfg.epochs is not None and cfg.burn_in >= cfg.epochs:
        raise FastpartError(f"--burn-in {cfg.burn_in} is not shorter than --epochs {cfg.epochs}: this PART run would "
                            f"never use a mask; lower --burn-in, or train --method "
                            f"{METHODS[cfg.method].objective}")
    for name in ("lr_warmup", "eps_warmup", "eps_delay"):
        value = getattr(cfg, name)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise FastpartError(f"--{name.replace('_', '-')} must be a number of epochs >= 0, got {value}")
    released = cfg.pixel_reweighted and cfg.numerics == "released"
    if released and ("mask_mode" in (given or ()) and cfg.mask_mode != "reference" or cfg.lr_schedule == "onecycle"):
        raise FastpartError("--numerics released has the released code's mask and step schedule: drop --mask-mode and "
                            "--lr-schedule, or use --numerics official")
    if cfg.lr_schedule == "onecycle" and cfg.lr_warmup:
        raise FastpartError("--lr-warmup is for the step schedule: the one-cycle schedule warms up by itself")
    if cfg.milestones is not None and any(m < 0 for m in cfg.milestones):
        raise FastpartError(f"--milestones must be epochs >= 0, got {list(cfg.milestones)}")
