"""Evaluation of a trained run: ``fastpart eval RUN --attacks natural,pgd20,mma,aa``.

Every name in ``--attacks`` is an *evaluator* (``EVALUATORS``, plus the patterns pgd<k> and adaptive<k>)
that asks for one or more accuracy *items*; an item is measured batch by batch over the evaluation set
(the test split, or a seeded subset of ``--n`` images; CIFAR-10-C items use the corrupted splits):

    natural          clean accuracy
    pgd<k>           PGD-k, eps 8/255, alpha 2/255, uniform start, CE (SPEC "Evaluation"; pgd20 is the paper's)
    mma, mma-ref     minimum-margin attack: APGD on the margin loss, top-3 targets, 20 iterations each, on the
                     still-robust points; mma-ref: the released code's sign-PGD variant
    aa               AutoAttack, standard version, through the reference package (pyautoattack)
    aa-fast          APGD-CE + APGD-T of AutoAttack: a quick check, NOT standard AutoAttack
    aa-apgd-ce, aa-apgd-t, aa-fab-t, aa-square: AutoAttack's attacks one at a time
    adaptive, adaptive<k>, adaptive-mma
                     Pixel-AG attacks that use the evaluated model's own CAM masks with raised budgets
                     (important pixels --adaptive-eps, the rest --adaptive-eps-low)
    eps-curve        PGD-20 accuracy at each eps of --eps-curve
    cifar10c         clean accuracy per corruption and severity of a converted (or generated) CIFAR-10-C
    checks           gradient-masking checks (paper App. H.3), each pass/fail with its numbers

Conventions, the same for every attack: the model is in eval mode; a point counts as robust only when it
is classified correctly both clean and under the attack (so robust <= natural); only clean-correct points
are attacked; an iterate that fools the model is kept (PGD stops on success), so more steps never raise
the accuracy for a seed; every adversarial batch is checked to lie inside its budget and [0, 1] before it
is counted. Randomness comes from a generator seeded by (seed, item, batch), so a resumed evaluation gives
the numbers an uninterrupted one would. Progress is saved after every batch in ``eval-progress.json``.

Outputs in the run folder (or --out): eval.json (every result), eval.csv (the paper-table row).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

import fastpart
from fastpart.atomic import write_bytes_atomic, write_json_atomic
from fastpart.attacks.mma import mma, mma_ref
from fastpart.attacks.pgd import pgd
from fastpart.config import EvalConfig
from fastpart.datasets import file_checksum
from fastpart.errors import FastpartError
from fastpart.kernels import Eps, EpsLevels, eps_from_levels
from fastpart.loader import read_split, split_path, to_model_input
from fastpart.masks import eps_levels
from fastpart.train import (
    AUTOCAST,
    LoadedRun,
    cam_function,
    dataset_manifest,
    load_run,
    mask_settings,
    resolve_device,
)

PROGRESS = "eval-progress.json"
RESULTS = "eval.json"
CSV = "eval.csv"
PAPER_COLUMNS = ("natural", "pgd20", "mma", "aa")
UNBOUNDED_EPS, UNBOUNDED_ALPHA, UNBOUNDED_STEPS = 1.0, 0.05, 50
AA_ATTACKS = {"aa-apgd-ce": ["apgd-ce"], "aa-apgd-t": ["apgd-t"], "aa-fab-t": ["fab-t"], "aa-square": ["square"],
              "aa-fast": ["apgd-ce", "apgd-t"]}
BUDGET_SLACK = 1e-5  # float rounding of x_adv - x

Images = tuple[np.ndarray, np.ndarray]  # uint8 (N, H, W, C), int64 (N,)


# ---------------------------------------------------------------------------------------------
# Context: the model under evaluation and what every attack needs
# ---------------------------------------------------------------------------------------------


class _ContiguousGradient(torch.autograd.Function):
    """Identity whose backward hands the input a contiguous gradient (AutoAttack .view()s gradients)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


class _FloatLogits(nn.Module):
    """The model under autocast (if any), returning float32 logits: what AutoAttack is handed."""

    def __init__(self, model: nn.Module, autocast: torch.dtype | None):
        super().__init__()
        self.model, self.autocast = model, autocast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _ContiguousGradient.apply(x) if x.requires_grad else x
        with torch.autocast(x.device.type, dtype=self.autocast, enabled=self.autocast is not None):
            return self.model(x).float()


@dataclass
class Context:
    run: LoadedRun
    cfg: EvalConfig
    device: torch.device
    autocast: torch.dtype | None
    surrogate: LoadedRun | None = None

    @property
    def model(self) -> nn.Module:
        return self.run.model

    def predict(self, x: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(x.device.type, dtype=self.autocast, enabled=self.autocast is not None):
            return (model or self.model)(x).argmax(1)


Attack = Callable[[Context, torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, Eps]]


def check_budget(name: str, x_adv: torch.Tensor, x: torch.Tensor, eps: Eps) -> None:
    """Refuse to count an adversarial batch that leaves its L-inf box or [0, 1]."""
    bound = eps_from_levels(eps.levels, eps.high, eps.low) if isinstance(eps, EpsLevels) else eps
    excess = ((x_adv.float() - x.float()).abs() - bound).max().item() if x.numel() else 0.0
    if excess > BUDGET_SLACK or (x.numel() and (x_adv.min() < 0 or x_adv.max() > 1)):
        raise FastpartError(f"{name}: adversarial examples leave the budget (by {excess:.2e}) or [0, 1]; not counted")


def robust_correct(ctx: Context, name: str, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator,
                   attack: Attack) -> torch.Tensor:
    """Per-point robustness: clean-correct, and still correct on ``attack``'s output."""
    correct = ctx.predict(x) == y
    idx = correct.nonzero().squeeze(1)
    if idx.numel():
        x_adv, eps = attack(ctx, x[idx], y[idx], gen)
        check_budget(name, x_adv, x[idx], eps)
        correct[idx] = ctx.predict(x_adv) == y[idx]
    return correct


# ---------------------------------------------------------------------------------------------
# Attacks
# ---------------------------------------------------------------------------------------------


def pgd_attack(steps: int, eps: float | None = None, alpha: float | None = None, source: str = "model") -> Attack:
    def run(ctx: Context, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, Eps]:
        budget = ctx.cfg.eps if eps is None else eps
        model = ctx.surrogate.model if source == "surrogate" else ctx.model
        x_adv = pgd(model, x, y, budget, ctx.cfg.alpha if alpha is None else alpha, steps, generator=gen,
                    autocast_dtype=ctx.autocast, stop_on_success=source == "model")
        return x_adv, budget

    return run


def mma_attack(ctx: Context, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, Eps]:
    return mma(ctx.model, x, y, ctx.cfg.eps, k=3, n_iter=20, generator=gen, autocast_dtype=ctx.autocast), ctx.cfg.eps


def mma_ref_attack(ctx: Context, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, Eps]:
    x_adv = mma_ref(ctx.model, x, y, ctx.cfg.eps, k=3, steps=20, alpha=ctx.cfg.alpha, generator=gen,
                    autocast_dtype=ctx.autocast)
    return x_adv, ctx.cfg.eps


def autoattack(attacks: list[str] | None) -> Attack:
    """AutoAttack through pyautoattack: the standard version (attacks None) or a subset of its attacks
    with the standard version's settings."""

    def run(ctx: Context, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, Eps]:
        try:
            from pyautoattack import AutoAttack
        except ImportError:
            raise FastpartError("the aa attacks need the pyautoattack package: pip install pyautoattack") from None
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen, device=gen.device).item())
        adversary = AutoAttack(_FloatLogits(ctx.model, ctx.autocast), norm="Linf", eps=ctx.cfg.eps,
                               version="standard", device=ctx.device, seed=seed)
        adversary.verbose = False
        classes = ctx.run.manifest["num_classes"]
        if classes < 4 and (attacks is None or "apgd-t" in attacks):
            raise FastpartError(f"AutoAttack's APGD-T (targeted DLR loss) needs at least 4 classes; this model has {classes}")
        adversary.apgd_targeted.n_target_classes = min(9, classes - 1)
        adversary.fab.n_target_classes = min(9, classes - 1)
        if attacks is not None:
            adversary.attacks_to_run = list(attacks)
        x_adv, _ = adversary.run_standard_evaluation(x.contiguous(), y, batch_size=len(x))
        return x_adv.to(x.dtype), ctx.cfg.eps

    return run


def adaptive_budget(ctx: Context, x: torch.Tensor) -> EpsLevels:
    """Pixel-AG on the evaluated model itself: its CAM masks, with the raised budgets."""
    cams = cam_function(ctx.model, ctx.run.config)(x, None)
    levels, _ = eps_levels(cams, tuple(x.shape[-2:]), mask_settings(ctx.run.config))
    return EpsLevels(levels, ctx.cfg.adaptive_eps, ctx.cfg.adaptive_eps_low)


def adaptive_pgd(steps: int) -> Attack:
    def run(ctx: Context, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, Eps]:
        eps = adaptive_budget(ctx, x)
        return pgd(ctx.model, x, y, eps, ctx.cfg.alpha, steps, generator=gen, autocast_dtype=ctx.autocast,
                   stop_on_success=True), eps

    return run


def adaptive_mma(ctx: Context, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, Eps]:
    eps = adaptive_budget(ctx, x)
    budget = eps_from_levels(eps.levels, eps.high, eps.low, x.dtype)
    return mma(ctx.model, x, y, budget, k=3, n_iter=20, generator=gen, autocast_dtype=ctx.autocast), eps


# ---------------------------------------------------------------------------------------------
# Items and evaluators
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One accuracy over a data set: per batch, a bool per point (correct / robust)."""

    key: str
    correct: Callable[[Context, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]
    data: str = "test"  # "test", or "c:<corruption>:<severity>"
    stream: str = ""  # the random stream's name (default: the key); PGD items share one, whatever k and eps

    @property
    def seed_key(self) -> str:
        return self.stream or self.key


def natural_item() -> Item:
    return Item("natural", lambda ctx, x, y, gen: ctx.predict(x) == y)


def attack_item(key: str, attack: Attack, stream: str = "") -> Item:
    return Item(key, lambda ctx, x, y, gen: robust_correct(ctx, key, x, y, gen, attack), stream=stream)


def pgd_item(steps: int, eps: float | None = None) -> Item:
    """PGD-k; every PGD item draws the same random start, so PGD-k's path is a prefix of PGD-(k+1)'s."""
    key = f"pgd{steps}" if eps is None else f"pgd{steps}@eps={eps:.6f}"
    return attack_item(key, pgd_attack(steps, eps), stream="pgd")


@dataclass(frozen=True)
class Evaluator:
    name: str
    label: str
    items: Callable[[Context], list[Item]]
    summarise: Callable[[Context, dict[str, dict[str, Any]]], dict[str, Any]] | None = None


def _single(name: str, label: str, item: Callable[[], Item]) -> Evaluator:
    return Evaluator(name, label, lambda ctx: [item()])


def _eps_label(eps: float) -> str:
    return f"{eps * 255:g}/255"


def eps_curve_evaluator() -> Evaluator:
    def items(ctx: Context) -> list[Item]:
        return [pgd_item(20, eps) for eps in ctx.cfg.eps_curve]

    def summarise(ctx: Context, acc: dict[str, dict[str, Any]]) -> dict[str, Any]:
        curve = [{"eps": eps, "accuracy": acc[pgd_item(20, eps).key]["accuracy"]} for eps in ctx.cfg.eps_curve]
        return {"accuracy": None, "curve": curve}

    return Evaluator("eps-curve", "PGD-20 accuracy vs eps", items, summarise)


def checks_evaluator() -> Evaluator:
    """Gradient-masking checks (paper App. H.3)."""

    def items(ctx: Context) -> list[Item]:
        found = [pgd_item(1), pgd_item(20),
                 attack_item("unbounded", pgd_attack(UNBOUNDED_STEPS, UNBOUNDED_EPS, UNBOUNDED_ALPHA))]
        found += [pgd_item(20, eps) for eps in ctx.cfg.eps_curve]
        if ctx.surrogate is not None:
            found.append(attack_item("transfer", pgd_attack(20, source="surrogate")))
        return found

    def summarise(ctx: Context, acc: dict[str, dict[str, Any]]) -> dict[str, Any]:
        a = {k: v["accuracy"] for k, v in acc.items()}
        n = acc["pgd20"]["n"]
        pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731
        checks = [{"name": "iterative_beats_one_step", "passed": a["pgd20"] <= a["pgd1"],
                   "detail": f"PGD-1 {pct(a['pgd1'])} >= PGD-20 {pct(a['pgd20'])}"}]
        if "transfer" in a:
            checks.append({"name": "white_box_beats_transfer", "passed": a["pgd20"] <= a["transfer"],
                           "detail": f"transfer PGD-20 from {ctx.surrogate.run_dir} {pct(a['transfer'])} >= "
                                     f"white-box {pct(a['pgd20'])}"})
        else:
            checks.append({"name": "white_box_beats_transfer", "passed": None,
                           "detail": "skipped: give --surrogate RUN (another trained model) to run it"})
        checks.append({"name": "unbounded_attack_succeeds", "passed": a["unbounded"] == 0.0,
                       "detail": f"PGD-{UNBOUNDED_STEPS} with eps {UNBOUNDED_EPS:g}: {pct(a['unbounded'])} (want 0%)"})
        curve = [(eps, a[pgd_item(20, eps).key]) for eps in sorted(ctx.cfg.eps_curve)]
        rises = [(e0, e1) for (e0, v0), (e1, v1) in zip(curve, curve[1:]) if v1 > v0 + 1 / max(n, 1)]
        checks.append({"name": "accuracy_falls_with_eps", "passed": not rises and curve[-1][1] < curve[0][1],
                       "detail": ", ".join(f"{_eps_label(e)}: {pct(v)}" for e, v in curve)})
        decided = [c["passed"] for c in checks if c["passed"] is not None]
        return {"accuracy": None, "passed": all(decided), "checks": checks}

    return Evaluator("checks", "gradient-masking checks", items, summarise)


def cifar10c_evaluator() -> Evaluator:
    def items(ctx: Context) -> list[Item]:
        splits = corruption_splits(ctx)
        return [Item(f"c:{name}:{s}", lambda c, x, y, g: c.predict(x) == y, data=f"c:{name}:{s}")
                for name in splits for s in range(1, 6)]

    def summarise(ctx: Context, acc: dict[str, dict[str, Any]]) -> dict[str, Any]:
        per: dict[str, dict[str, float]] = {}
        for key, v in acc.items():
            _, name, severity = key.split(":")
            per.setdefault(name, {})[severity] = v["accuracy"]
        values = [a for sev in per.values() for a in sev.values()]
        manifest = c_manifest(ctx)
        generated = bool(manifest.get("generated"))
        return {"accuracy": float(np.mean(values)), "per_corruption": per, "generated": generated,
                "label": "CIFAR-10-C mean" + (" (generated, not the official files)" if generated else "")}

    return Evaluator("cifar10c", "CIFAR-10-C mean", items, summarise)


EVALUATORS: dict[str, Callable[[], Evaluator]] = {
    "natural": lambda: _single("natural", "natural", natural_item),
    "mma": lambda: _single("mma", "MMA (APGD margin loss, top-3 targets, 20 iterations)",
                           lambda: attack_item("mma", mma_attack)),
    "mma-ref": lambda: _single("mma-ref", "MMA, released sign-PGD variant (3 targets, 20 steps)",
                               lambda: attack_item("mma-ref", mma_ref_attack)),
    "aa": lambda: _single("aa", "AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square)",
                          lambda: attack_item("aa", autoattack(None))),
    **{name: (lambda name=name, attacks=attacks: _single(
        name, ("APGD-CE + APGD-T (not standard AA)" if name == "aa-fast" else f"AutoAttack's {attacks[0]} alone"),
        lambda: attack_item(name, autoattack(attacks)))) for name, attacks in AA_ATTACKS.items()},
    "adaptive-mma": lambda: _single("adaptive-mma", "adaptive MMA (Pixel-AG budget of the model's own CAMs)",
                                    lambda: attack_item("adaptive-mma", adaptive_mma)),
    "eps-curve": eps_curve_evaluator,
    "cifar10c": cifar10c_evaluator,
    "checks": checks_evaluator,
}
PATTERNS = {"pgd": re.compile(r"^pgd(\d+)$"), "adaptive": re.compile(r"^adaptive(\d*)$")}


def get_evaluator(name: str) -> Evaluator:
    if name in EVALUATORS:
        return EVALUATORS[name]()
    if m := PATTERNS["pgd"].match(name):
        steps = int(m.group(1))
        return _single(name, f"PGD-{steps} (alpha 2/255, random start, CE)", lambda: pgd_item(steps))
    if m := PATTERNS["adaptive"].match(name):
        steps = int(m.group(1) or 20)
        return _single(name, f"adaptive PGD-{steps} (Pixel-AG budget of the model's own CAMs)",
                       lambda: attack_item(f"adaptive{steps}", adaptive_pgd(steps)))
    known = ", ".join([*EVALUATORS, "pgd<k>", "adaptive<k>"])
    raise FastpartError(f"unknown attack {name!r}; choose from {known}")


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def subset_indices(total: int, n: int | None, seed: int) -> np.ndarray:
    """The evaluation subset: all points in order, or ``n`` drawn without replacement (sorted) for a seed."""
    if n is None or n >= total:
        return np.arange(total)
    if n < 1:
        raise FastpartError(f"--n must be >= 1, got {n}")
    gen = torch.Generator().manual_seed(seed)
    return np.sort(torch.randperm(total, generator=gen)[:n].numpy())


def c_manifest(ctx: Context) -> dict[str, Any]:
    return dataset_manifest(ctx.cfg.c_data_dir or ctx.run.config.data_dir, ctx.cfg.c_dataset)


def corruption_splits(ctx: Context) -> list[str]:
    manifest = c_manifest(ctx)
    return [s for s in manifest["splits"]]


def load_images(ctx: Context, data: str, cache: dict[str, Images]) -> Images:
    if data in cache:
        return cache[data]
    if data == "test":
        arrays = read_split(split_path(ctx.run.config.data_dir, ctx.run.config.dataset, "test"))
        idx = subset_indices(len(arrays.labels), ctx.cfg.n, ctx.cfg.seed)
        cache[data] = (arrays.images[idx], arrays.labels[idx])
        return cache[data]
    _, name, severity = data.split(":")
    key = f"c:{name}"
    if key not in cache:
        root = ctx.cfg.c_data_dir or ctx.run.config.data_dir
        arrays = read_split(split_path(root, ctx.cfg.c_dataset, name))
        cache[key] = (arrays.images, arrays.labels, arrays.extras["severity"])  # type: ignore[assignment]
    images, labels, severities = cache[key]  # type: ignore[misc]
    rows = np.flatnonzero(severities == int(severity))
    rows = rows[subset_indices(len(rows), ctx.cfg.n, ctx.cfg.seed)]
    return images[rows], labels[rows]


def to_device(images: np.ndarray, labels: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x = to_model_input(torch.from_numpy(np.ascontiguousarray(images)).to(device), torch.float32)
    return x, torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)


def batch_generator(seed: int, key: str, batch: int, device: torch.device) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{key}:{batch}".encode()).digest()
    return torch.Generator(device).manual_seed(int.from_bytes(digest[:8], "little") % (2**63))


# ---------------------------------------------------------------------------------------------
# Progress: every finished batch is saved; a matching file is resumed
# ---------------------------------------------------------------------------------------------


@dataclass
class Progress:
    path: Path
    fingerprint: dict[str, Any]
    done: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path, fingerprint: dict[str, Any], restart: bool) -> "Progress":
        if path.is_file() and not restart:
            try:
                saved = json.loads(path.read_text())
            except (OSError, ValueError):
                saved = {}
            if saved.get("fingerprint") == fingerprint:
                return cls(path, fingerprint, saved.get("done", {}))
            tqdm.write(f"{path}: saved progress is for other settings or another checkpoint; starting afresh")
        return cls(path, fingerprint)

    def get(self, key: str, batch: int) -> list[float] | None:
        return self.done.get(key, {}).get(str(batch))

    def put(self, key: str, batch: int, correct: int, count: int, seconds: float) -> None:
        self.done.setdefault(key, {})[str(batch)] = [correct, count, seconds]
        write_json_atomic(self.path, {"fingerprint": self.fingerprint, "done": self.done})


def fingerprint(ctx: Context) -> dict[str, Any]:
    settings = {k: v for k, v in ctx.cfg.to_dict().items() if k not in ("attacks", "out", "restart", "device", "run")}
    return {"checkpoint": file_checksum(ctx.run.checkpoint, "sha256"), "settings": json.loads(json.dumps(settings)),
            "surrogate": file_checksum(ctx.surrogate.checkpoint, "sha256") if ctx.surrogate else None,
            "fastpart": fastpart.__version__}


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def measure(ctx: Context, item: Item, progress: Progress, cache: dict[str, Images]) -> dict[str, Any]:
    """Accuracy of one item over its data, resuming finished batches from ``progress``."""
    images, labels = load_images(ctx, item.data, cache)
    bs = ctx.cfg.batch_size
    batches = math.ceil(len(labels) / bs)
    for b in tqdm(range(batches), desc=item.key, leave=False, mininterval=1.0):
        if progress.get(item.key, b) is not None:
            continue
        x, y = to_device(images[b * bs:(b + 1) * bs], labels[b * bs:(b + 1) * bs], ctx.device)
        start = time.perf_counter()
        correct = item.correct(ctx, x, y, batch_generator(ctx.cfg.seed, item.seed_key, b, ctx.device))
        progress.put(item.key, b, int(correct.sum()), len(y), time.perf_counter() - start)
    rows = [progress.get(item.key, b) for b in range(batches)]
    correct, count, seconds = (sum(r[i] for r in rows) for i in range(3))
    return {"accuracy": correct / count if count else float("nan"), "n": int(count), "seconds": seconds}


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Run every evaluator of ``cfg.attacks`` on the run's model; write and return eval.json's content."""
    if cfg.precision not in AUTOCAST:
        raise FastpartError(f"unknown precision {cfg.precision!r}; choose from {', '.join(AUTOCAST)}")
    if cfg.batch_size < 1:
        raise FastpartError("--batch-size must be >= 1")
    evaluators = [get_evaluator(name) for name in dict.fromkeys(cfg.attacks)]
    device = torch.device(resolve_device(cfg.device))
    run = load_run(cfg.run, device, cfg.data_dir)
    surrogate = load_run(cfg.surrogate, device, cfg.data_dir) if cfg.surrogate else None
    ctx = Context(run, cfg, device, AUTOCAST[cfg.precision], surrogate)
    out = Path(cfg.out) if cfg.out else run.run_dir
    out.mkdir(parents=True, exist_ok=True)
    progress = Progress.open(out / PROGRESS, fingerprint(ctx), cfg.restart)
    cache: dict[str, Images] = {}
    results: dict[str, Any] = {}
    for evaluator in evaluators:
        measured = {item.key: measure(ctx, item, progress, cache) for item in evaluator.items(ctx)}
        total_n = next(iter(measured.values()))["n"] if measured else 0
        entry = {"label": evaluator.label, "n": total_n, "seconds": sum(m["seconds"] for m in measured.values())}
        if evaluator.summarise is None:
            entry.update(accuracy=next(iter(measured.values()))["accuracy"])
        else:
            entry.update(evaluator.summarise(ctx, measured))
        results[evaluator.name] = entry
        tqdm.write(summary_line(evaluator.name, entry))
    record = {
        "run": str(run.run_dir), "checkpoint": str(run.checkpoint), "epoch": run.epoch,
        "dataset": run.config.dataset, "model": run.config.model, "method": run.config.method,
        "n": len(load_images(ctx, "test", cache)[1]), "seed": cfg.seed, "precision": cfg.precision,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "eps": cfg.eps, "alpha": cfg.alpha, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "fastpart": fastpart.__version__, "results": results,
    }
    write_json_atomic(out / RESULTS, record)
    write_bytes_atomic(out / CSV, paper_csv(record).encode())
    return record


# ---------------------------------------------------------------------------------------------
# Presentation
# ---------------------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def summary_line(name: str, entry: dict[str, Any]) -> str:
    n, seconds = entry.get("n") or 0, entry.get("seconds", 0.0)
    rate = f"{1000 * seconds / n:.1f} s per 1,000 images" if n else ""
    if entry.get("accuracy") is not None:
        head = f"{name}: {100 * entry['accuracy']:.2f}%"
    elif "checks" in entry:
        head = f"{name}: {'pass' if entry['passed'] else 'FAIL'}"
    else:
        head = f"{name}:"
    return f"{head} (n={n}, {seconds:.1f}s, {rate}) {entry['label']}"


def paper_csv(record: dict[str, Any]) -> str:
    """A header and one row: method, dataset, model, then natural / PGD-20 / MMA / AA in percent."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "dataset", "model", *PAPER_COLUMNS])
    results = record["results"]
    writer.writerow([record["method"], record["dataset"], record["model"],
                     *(_pct(results.get(c, {}).get("accuracy")) for c in PAPER_COLUMNS)])
    return buffer.getvalue()


def table(record: dict[str, Any]) -> str:
    rows = [("attack", "accuracy %", "n", "seconds", "s / 1k img", "")]
    for name, entry in record["results"].items():
        acc = entry.get("accuracy")
        shown = _pct(acc) if acc is not None else ("pass" if entry.get("passed") else "FAIL" if "checks" in entry else "-")
        n = entry.get("n") or 0
        rows.append((name, shown, str(n), f"{entry['seconds']:.1f}",
                     f"{1000 * entry['seconds'] / n:.1f}" if n else "", entry["label"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    head = (f"{record['method']} {record['model']} on {record['dataset']} (epoch {record['epoch']}), "
            f"n={record['n']}, seed {record['seed']}, {record['precision']} on {record['device']}")
    return head + "\n" + "\n".join(lines)
