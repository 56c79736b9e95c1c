"""The run folder: what ``fastpart train`` writes, ``fastpart eval`` adds and ``fastpart report`` reads.

    <run>/config.json      the resolved TrainConfig            (train)
    <run>/env.json         versions, device                    (train)
    <run>/metrics.jsonl    one JSON line per epoch             (train; appended, fsynced)
    <run>/checkpoint.pt    model, optimizer, schedule, RNG,    (train; atomic, every epoch)
                           mask key and the weights the masks came from
    <run>/best.pt          weights of the best validation epoch (train --val-n; atomic)
    <run>/masks/           PART's mask cache                   (train; fastpart.part.cache)
    <run>/eval.json, eval.csv, eval-progress.json              (eval)
    <run>/report/          report.md + PNGs                    (report)
    <run>/.train.lock, .eval.lock                              (OS locks: one trainer, one evaluator at a time)

Every write that matters is atomic (``fastpart.atomic``); checkpoints load with
``torch.load(weights_only=True)`` and a file that does not load is one line, never a hint to load it
unsafely. ``load_run`` restores a run's model; ``fastpart.records`` reads the text records for reports.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn as nn

import fastpart
from fastpart import distributed
from fastpart.atomic import atomic_path, write_bytes_atomic
from fastpart.config import TrainConfig, part_only, resume_may_change
from fastpart.data.splitfiles import dataset_manifest
from fastpart.errors import FastpartError
from fastpart.models import create_model

CONFIG = "config.json"
ENV = "env.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"  # with --val-n: the epoch of the highest validation robust accuracy
MASKS = "masks"
EVAL = "eval.json"
EVAL_CSV = "eval.csv"
EVAL_PROGRESS = "eval-progress.json"
REPORT = "report"
TRAIN_LOCK = ".train.lock"  # held by the training process (rank 0) for the whole run
EVAL_LOCK = ".eval.lock"  # held by an evaluation writing into the folder (an evaluation may run beside training)
RESUME_MAY_CHANGE = resume_may_change(TrainConfig)  # the settings a --resume may change (fastpart.config's table)

__all__ = ["BEST", "CHECKPOINT", "CHECKPOINTS", "CONFIG", "ENV", "EVAL", "EVAL_CSV", "EVAL_LOCK", "EVAL_PROGRESS",
           "MASKS", "METRICS", "REPORT", "RESUME_MAY_CHANGE", "TRAIN_LOCK", "LoadedRun", "TrainingState",
           "append_jsonl", "build_model", "checkpoint_path", "environment", "keep_metrics_until", "load_checkpoint",
           "load_run", "read_checkpoint", "read_metrics", "resume_conflicts", "save_checkpoint"]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Environment and metrics
# ---------------------------------------------------------------------------------------------


def environment(device: torch.device) -> dict[str, Any]:
    versions = {"fastpart": fastpart.__version__, "torch": torch.__version__, "python": platform.python_version()}
    for name in ("numpy", "timm", "ffcv", "triton", "numba"):
        try:  # the installed release, without importing it (importing ffcv compiles its kernels: seconds)
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"versions": versions, "device": str(device), "device_name": name, "cpu_count": os.cpu_count(),
            "world_size": distributed.world_size()}


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The epoch records of a metrics.jsonl and the number of lines skipped: blank lines aside, a line that
    is not a JSON object with an integer ``epoch`` (a partial last line left by a kill during an append,
    or a foreign line) is skipped and counted."""
    if not path.is_file():
        return [], 0
    records: list[dict[str, Any]] = []
    skipped = 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            skipped += 1
            continue
        if isinstance(record, dict) and isinstance(record.get("epoch"), int):
            records.append(record)
        else:
            skipped += 1
    return records, skipped


def keep_metrics_until(path: Path, epoch: int) -> list[dict[str, Any]]:
    """Keep the records of epochs 1..``epoch`` (what the checkpoint holds) and drop the rest: lines of an
    epoch a kill interrupted, and unreadable lines. Returns the records kept."""
    records, _ = read_metrics(path)
    kept = [r for r in records if r["epoch"] <= epoch]
    if path.exists():
        write_bytes_atomic(path, "".join(json.dumps(r) + "\n" for r in kept).encode())
    return kept


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


class TrainingState(NamedTuple):
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    generator: torch.Generator


def save_checkpoint(path: Path, state: TrainingState, epoch: int, mask_key: str | None, cfg: TrainConfig,
                    extra: dict[str, Any] | None = None) -> None:
    """Rank 0's state (every process holds the same model, optimizer and schedule at the end of an epoch);
    ``extra``: more entries (e.g. the weights the masks came from)."""
    payload = {
        "model": state.model.state_dict(), "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(), "epoch": epoch, "mask_key": mask_key,
        "torch_rng": torch.get_rng_state(),  # the attack generator is reseeded per epoch
        "config": cfg.to_dict(), "fastpart_version": fastpart.__version__, **(extra or {}),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_checkpoint(path: Path, required: tuple[str, ...] = ("model", "config", "epoch")) -> dict[str, Any]:
    """A checkpoint's payload, loaded with ``weights_only=True``; one line when it does not load or lacks
    ``required`` entries (a file written by something else)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a checkpoint is written atomically, so this is not a half-written file
        raise FastpartError(f"cannot load {path}: {_first_line(exc)}") from None
    if not isinstance(payload, dict):
        raise FastpartError(f"{path} is not a fastpart checkpoint (it holds a {type(payload).__name__})")
    missing = [k for k in required if k not in payload]
    if missing:
        raise FastpartError(f"{path} is not a fastpart checkpoint: it has no {', '.join(missing)}")
    return payload


def resume_conflicts(saved: dict[str, Any], current: TrainConfig) -> list[str]:
    """The settings of ``current`` that differ from the checkpoint's (those a resume may change aside)."""
    defaults = TrainConfig().to_dict()  # settings added after the checkpoint was written had their default
    ignored = RESUME_MAY_CHANGE | (set() if current.pixel_reweighted else part_only(TrainConfig))  # no masks: moot
    old = {k: saved.get(k, defaults.get(k)) for k in defaults if k not in ignored}
    new = {k: v for k, v in current.to_dict().items() if k not in ignored}
    return sorted(k for k in new if old.get(k) != new[k] and not (
        isinstance(new[k], tuple) and list(new[k]) == old.get(k)))


def load_checkpoint(payload: dict[str, Any], state: TrainingState) -> tuple[int, str | None]:
    """Restore ``state`` in place from a payload checked by ``resume_conflicts``; returns (epochs done, mask key)."""
    state.model.load_state_dict(payload["model"])
    state.optimizer.load_state_dict(payload["optimizer"])
    state.scheduler.load_state_dict(payload["scheduler"])
    torch.set_rng_state(payload["torch_rng"])
    return int(payload["epoch"]), payload["mask_key"]


@dataclass
class LoadedRun:
    """A trained model restored from a run folder or checkpoint file, in eval mode."""

    model: nn.Module
    config: TrainConfig
    checkpoint: Path
    run_dir: Path
    epoch: int
    manifest: dict[str, Any]


CHECKPOINTS = {"last": CHECKPOINT, "best": BEST}  # --checkpoint: which file of a run folder
WEIGHTS = ("live", "ema")  # --weights: the trained weights, or their moving average (--ema)


def checkpoint_path(run_or_checkpoint: str | Path, which: str = "last") -> Path:
    """The checkpoint file of a run folder (``which``: last or best), or the file itself."""
    if which not in CHECKPOINTS:
        raise FastpartError(f"unknown checkpoint {which!r}; choose from {', '.join(CHECKPOINTS)}")
    path = Path(run_or_checkpoint)
    if path.is_dir():
        path = path / CHECKPOINTS[which]
    if not path.is_file():
        hint = " (best.pt is written by runs trained with --val-n)" if which == "best" else ""
        raise FastpartError(f"no checkpoint at {path}: give a run folder written by `fastpart train` or its "
                            f"{CHECKPOINTS[which]}{hint}")
    return path


def _listed(what: str, names: list[str], shown: int = 4) -> list[str]:
    if not names:
        return []
    more = f" (+{len(names) - shown} more)" if len(names) > shown else ""
    return [f"{what}: {', '.join(names[:shown])}{more}"]


def build_model(name: str, num_classes: int, device: str | torch.device, state: dict[str, torch.Tensor],
                what: str, **kwargs: Any) -> nn.Module:
    """``create_model(name, num_classes)`` with ``state`` loaded strictly, in eval mode on ``device``
    (channels_last on CUDA); one line naming ``what`` when the weights do not fit."""
    model = create_model(name, num_classes=num_classes, **kwargs)
    expected = model.state_dict()
    problems = _listed("missing keys", [k for k in expected if k not in state])
    problems += _listed("unexpected keys", [k for k in state if k not in expected])
    problems += _listed("size mismatch", [f"{k} {tuple(v.shape)} (model: {tuple(expected[k].shape)})"
                                          for k, v in state.items() if k in expected and v.shape != expected[k].shape])
    if problems:
        raise FastpartError(f"{what} does not fit model {name} with {num_classes} classes: {'; '.join(problems)}")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise FastpartError(f"{what} does not fit model {name} with {num_classes} classes: {_first_line(exc)}") from None
    device = torch.device(device)
    model = model.to(device).eval()
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model


def load_run(run_or_checkpoint: str | Path, device: str | torch.device = "cpu", data_dir: str | None = None,
             checkpoint: str = "last", weights: str = "live") -> LoadedRun:
    """Restore the model of a run (folder or checkpoint file) on ``device``; ``data_dir`` overrides the run's.

    ``checkpoint``: ``last`` (checkpoint.pt) or ``best`` (best.pt, with --val-n) of a run folder;
    ``weights``: ``live`` (the trained weights) or ``ema`` (their moving average, with --ema).
    """
    if weights not in WEIGHTS:
        raise FastpartError(f"unknown weights {weights!r}; choose from {', '.join(WEIGHTS)}")
    path = checkpoint_path(run_or_checkpoint, checkpoint)
    payload = read_checkpoint(path)
    try:
        cfg = TrainConfig.from_dict(payload["config"])
    except (TypeError, ValueError, AttributeError) as exc:
        raise FastpartError(f"{path} has an unreadable config: {_first_line(exc)}") from None
    if data_dir is not None:
        cfg = replace(cfg, data_dir=data_dir)
    state = payload["model"] if weights == "live" else payload.get("ema")
    if state is None:
        raise FastpartError(f"{path} holds no weight average: train with --ema DECAY for --weights ema")
    manifest = dataset_manifest(cfg.data_dir, cfg.dataset)
    model = build_model(cfg.model, manifest["num_classes"], device, state, str(path))
    return LoadedRun(model, cfg, path, path.parent, int(payload["epoch"]), manifest)
