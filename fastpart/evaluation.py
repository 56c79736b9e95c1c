"""Evaluation of a trained run: ``fastpart eval RUN --attacks natural,pgd20,mma,aa``.

Every name in ``--attacks`` is an *evaluator* (``EVALUATORS``, plus the patterns pgd<k> and adaptive<k>)
that asks for one or more accuracy *items*; an item is measured batch by batch over the evaluation set
(the test split, or a seeded subset of ``--n`` images; CIFAR-10-C items use the corrupted splits):

    natural          clean accuracy
    pgd<k>           PGD-k, eps 8/255, alpha 2/255, uniform start, CE (the paper's Sec. 4.1 evaluates with pgd20)
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

Every accuracy comes with n and its binomial standard error sqrt(p (1 - p) / n). ``--aa-n N`` runs the
AutoAttack items on a seeded subset of N of the evaluated images (AutoAttack standard costs about 50 times
PGD-20), and says so through their n.

Outputs in the run folder (or --out): eval.json (every result), eval.csv (the paper-table row).
"""


from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

import fastpart
from fastpart.atomic import hold, output_error, write_bytes_atomic, write_json_atomic
from fastpart.config import EvalConfig, check_eval
from fastpart.data.datasets import file_checksum
from fastpart.data.splitfiles import read_split, split_path
from fastpart.errors import FastpartError
from fastpart.measurements import Context, Evaluator, Item, get_evaluator
from fastpart.loader import to_model_input
from fastpart.interop import load_weights
from fastpart.precision import autocast_dtype
from fastpart.records import checks_verdict, paper_csv
from fastpart.resolve import resolve_device
from fastpart.runfolder import CHECKPOINTS, EVAL, EVAL_CSV, EVAL_LOCK, EVAL_PROGRESS, LoadedRun, load_run

Images = tuple[np.ndarray, np.ndarray]  # uint8 (N, H, W, C), int64 (N,)


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


def load_images(ctx: Context, data: str, cache: dict[str, Images]) -> Images:
    if data in cache:
        return cache[data]
    if data == "test":
        arrays = read_split(split_path(ctx.run.config.data_dir, ctx.run.config.dataset, "test"))
        idx = subset_indices(len(arrays.labels), ctx.cfg.n, ctx.cfg.seed)
        cache[data] = (arrays.images[idx], arrays.labels[idx])
        return cache[data]
    if data.startswith("test@"):  # a seeded subset of the evaluated images (e.g. AutoAttack's --aa-n)
        images, labels = load_images(ctx, "test", cache)
        idx = subset_indices(len(labels), int(data[len("test@"):]), ctx.cfg.seed)
        cache[data] = (images[idx], labels[idx])
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
        """The saved progress of the same evaluation (same checkpoint bytes, same settings), checked before it is
        trusted; anything else (other settings, a damaged or hand-edited file) is set aside: start afresh."""
        if path.is_file() and not restart:
            try:
                saved = json.loads(path.read_text())
            except (OSError, ValueError):
                saved = None
            done = saved.get("done") if isinstance(saved, dict) else None
            if saved is None or not _valid_done(done):
                tqdm.write(f"{path}: saved progress is unreadable or damaged; starting afresh")
            elif saved.get("fingerprint") == fingerprint:
                return cls(path, fingerprint, done)
            else:
                tqdm.write(f"{path}: saved progress is for other settings or another checkpoint; starting afresh")
        return cls(path, fingerprint)

    def get(self, key: str, batch: int) -> list[float] | None:
        return self.done.get(key, {}).get(str(batch))

    def put(self, key: str, batch: int, correct: int, count: int, seconds: float) -> None:
        self.done.setdefault(key, {})[str(batch)] = [correct, count, seconds]
        write_json_atomic(self.path, {"fingerprint": self.fingerprint, "done": self.done})


def _valid_done(done: Any) -> bool:
    """eval-progress.json's finished batches: item -> batch -> [correct, count, seconds], numbers all."""
    def numbers(row: Any) -> bool:
        return isinstance(row, list) and len(row) == 3 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in row) and row[0] <= row[1]
    return isinstance(done, dict) and all(
        isinstance(batches, dict) and all(numbers(row) for row in batches.values()) for batches in done.values())


def _loaded_sha256(run: LoadedRun) -> str:
    """The hash of the bytes the run's weights were loaded from (never of the file as it is now: a training
    beside may have replaced it since)."""
    return run.sha256 if run.sha256 is not None else file_checksum(run.checkpoint, "sha256")


def fingerprint(ctx: Context) -> dict[str, Any]:
    settings = {k: v for k, v in ctx.cfg.to_dict().items() if k not in ("attacks", "out", "restart", "device", "run")}
    return {"checkpoint": _loaded_sha256(ctx.run), "settings": json.loads(json.dumps(settings)),
            "surrogate": _loaded_sha256(ctx.surrogate) if ctx.surrogate else None,
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


def autoattack_summary(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """AutoAttack's batches run in this call (a resumed evaluation's earlier batches are not among them): the
    backends that ran, the points attacked, and per attack its seconds and the points still robust before and
    after it."""
    per_attack: dict[str, dict[str, float]] = {}
    for info in batches:
        for record in info["per_attack"]:
            total = per_attack.setdefault(record["attack"], {"seconds": 0.0, "robust_before": 0, "robust_after": 0})
            for key in total:
                total[key] += record[key]
    return {"backends": sorted({info["backend"] for info in batches}), "points": sum(info["n"] for info in batches),
            "per_attack": [{"attack": name, **{k: round(v, 3) if k == "seconds" else int(v) for k, v in t.items()}}
                           for name, t in per_attack.items()]}


def evaluated_model(cfg: EvalConfig, device: torch.device) -> LoadedRun:
    """The model under evaluation: a run's (``--checkpoint last|best``, ``--weights live|ema``), or a plain
    state dict fastpart did not write (``--checkpoint FILE --model NAME --dataset D``)."""
    check_eval(cfg)  # the settings' mistakes, one line each (the CLI checked them before importing torch)
    if cfg.checkpoint in CHECKPOINTS:
        return load_run(cfg.run, device, cfg.data_dir, checkpoint=cfg.checkpoint, weights=cfg.weights)
    return load_weights(cfg.checkpoint, cfg.model, cfg.dataset, cfg.data_dir or "data", device, cfg.normalize)


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Run every evaluator of ``cfg.attacks`` on the run's model; write and return eval.json's content."""
    autocast = autocast_dtype(cfg.precision)
    if cfg.batch_size < 1:
        raise FastpartError("--batch-size must be >= 1")
    evaluators = [get_evaluator(name) for name in dict.fromkeys(cfg.attacks)]
    device = torch.device(resolve_device(cfg.device))
    run = evaluated_model(cfg, device)
    surrogate = load_run(cfg.surrogate, device, cfg.data_dir) if cfg.surrogate else None
    ctx = Context(run, cfg, device, autocast, surrogate)
    out = Path(cfg.out) if cfg.out else run.run_dir
    with hold(out / EVAL_LOCK, f"evaluation folder {out}"):
        return _evaluate(ctx, evaluators, out)


def _evaluate(ctx: Context, evaluators: list[Evaluator], out: Path) -> dict[str, Any]:
    cfg, run, device = ctx.cfg, ctx.run, ctx.device
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(exc, out / EVAL) or FastpartError(f"cannot write {out} ({exc})") from None
    progress = Progress.open(out / EVAL_PROGRESS, fingerprint(ctx), cfg.restart)
    cache: dict[str, Images] = {}
    results: dict[str, Any] = {}
    for evaluator in evaluators:
        ctx.notes.clear()
        measured = {item.key: measure(ctx, item, progress, cache) for item in evaluator.items(ctx)}
        total_n = next(iter(measured.values()))["n"] if measured else 0
        entry = {"label": evaluator.label, "n": total_n, "seconds": sum(m["seconds"] for m in measured.values())}
        if evaluator.summarise is None:
            accuracy = next(iter(measured.values()))["accuracy"]
            entry.update(accuracy=accuracy, stderr=math.sqrt(accuracy * (1 - accuracy) / total_n) if total_n else None)
        else:
            entry.update(evaluator.summarise(ctx, measured))
        if ctx.notes.get("autoattack"):
            entry["autoattack"] = autoattack_summary(ctx.notes["autoattack"])
        results[evaluator.name] = entry
        tqdm.write(summary_line(evaluator.name, entry))
    record = {
        "run": str(run.run_dir), "checkpoint": str(run.checkpoint), "weights": cfg.weights, "epoch": run.epoch,
        "dataset": run.config.dataset, "model": run.config.model, "method": run.config.method,
        "n": len(load_images(ctx, "test", cache)[1]), "seed": cfg.seed, "precision": cfg.precision,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "eps": cfg.eps, "alpha": cfg.alpha, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "fastpart": fastpart.__version__, "results": results,
    }
    write_json_atomic(out / EVAL, record)
    write_bytes_atomic(out / EVAL_CSV, paper_csv(record).encode())
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
        error = f" ± {100 * entry['stderr']:.2f}" if entry.get("stderr") is not None else ""
        head = f"{name}: {100 * entry['accuracy']:.2f}%{error}"
    elif "checks" in entry:
        head = f"{name}: {checks_verdict(entry, names=True)}"
    else:
        head = f"{name}:"
    return f"{head} (n={n}, {seconds:.1f}s, {rate}) {entry['label']}"


def table(record: dict[str, Any]) -> str:
    rows = [("attack", "accuracy %", "± s.e.", "n", "seconds", "s / 1k img", "")]
    for name, entry in record["results"].items():
        acc = entry.get("accuracy")
        shown = _pct(acc) if acc is not None else (checks_verdict(entry) if "checks" in entry else "-")
        error = _pct(entry.get("stderr"))
        n = entry.get("n") or 0
        rows.append((name, shown, error, str(n), f"{entry['seconds']:.1f}",
                     f"{1000 * entry['seconds'] / n:.1f}" if n else "", entry["label"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    head = (f"{record['method']} {record['model']} on {record['dataset']} (epoch {record['epoch']}), "
            f"n={record['n']}, seed {record['seed']}, {record['precision']} on {record['device']}")
    return head + "\n" + "\n".join(lines)
