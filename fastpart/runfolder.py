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

Every write that matters is atomic (``fastpart.atomic``); a checkpoint is read once, its zip CRCs checked
before ``torch.load(weights_only=True)``, its entries checked against ``CHECKPOINT_SCHEMA``, and the sha256 of
the bytes loaded kept; a file that does not pass is one line naming it (and the field), never a hint to load it
unsafely. A new run whose settings would not read back from JSON as they are is not started. ``load_run`` restores a run's model; ``fastpart.records`` reads the text records for reports.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import warnings
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import torch
import torch.nn as nn

import fastpart
from fastpart.atomic import Field, check_record, output_error, schema_of, write_atomic, write_bytes_atomic
from fastpart.config import TrainConfig
from fastpart.options import part_only, resume_may_change
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
           "RESUME_FIELDS", "append_jsonl", "build_model", "check_recordable", "checkpoint_path",
           "keep_metrics_until", "load_checkpoint", "load_run", "model_options", "read_checkpoint", "read_checkpoint_file",
           "read_metrics", "resume_conflicts", "save_checkpoint"]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Environment and metrics
# ---------------------------------------------------------------------------------------------


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line, fsynced. A write that fails (a full disk, Ctrl-C) leaves the file as it was, not a
    partial line; the failure is one line (``DiskFull``, ``OutputError``)."""
    line = (json.dumps(record) + "\n").encode()
    try:
        with open(path, "ab") as f:
            start = f.tell()
            try:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            except BaseException:
                try:
                    f.truncate(start)
                except OSError:
                    pass  # a partial last line is skipped by read_metrics and dropped by keep_metrics_until
                raise
    except OSError as exc:
        raise output_error(exc, path) or FastpartError(f"cannot write {path} ({exc})") from None


METRIC_NUMBERS = ("loss", "lr", "train_natural_acc", "train_adv_acc", "epoch_seconds", "images", "images_per_second",
                  "mask_seconds", "important_fraction", "degenerate_maps", "eps_scale")  # and test_*, val_*, ema_*


def _is_metric_record(record: Any) -> bool:
    """A metrics line as training writes it: an object with an epoch >= 1 and numbers where numbers belong."""
    if not isinstance(record, dict):
        return False
    epoch = record.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
        return False
    for key, value in record.items():
        if key in METRIC_NUMBERS or key.startswith(("test_", "val_", "ema_")):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                return False
    return not isinstance(record.get("phase", ""), (dict, list))


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The epoch records of a metrics.jsonl and the number of lines skipped: blank lines aside, a line that
    is not a JSON object with an integer ``epoch`` and numbers where measurements belong (a partial last line
    left by a kill during an append, a foreign or hand-damaged line) is skipped and counted."""
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
        if _is_metric_record(record):
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
    write_atomic(path, lambda file: torch.save(payload, file))


def _state_dict(value: dict) -> str | None:
    bad = next((k for k, v in value.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    return None if bad is None else f"is not a state dict (its entry {bad!r} is not a tensor)"


def _rng_state(value: torch.Tensor) -> str | None:
    return None if value.dtype == torch.uint8 and value.dim() == 1 else \
        f"is a {value.dtype} tensor of shape {tuple(value.shape)}, not a random-number state (uint8, 1-D)"


def _count(value: int) -> str | None:
    return None if value >= 0 else f"is {value}, expected a count >= 0"


def _best_state(value: dict) -> str | None:
    epoch, best = value.get("epoch"), value.get("value")
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int)):
        return f"holds an epoch that is not an integer ({epoch!r})"
    if best is not None and (isinstance(best, bool) or not isinstance(best, (int, float))):
        return f"holds a value that is not a number ({best!r})"
    return None


# What save_checkpoint writes (best.pt holds model, config, epoch and the weight average).
CHECKPOINT_SCHEMA: dict[str, Field] = {
    "model": Field((dict,), True, _state_dict),
    "config": Field((dict,), True),
    "epoch": Field((int,), True, _count),
    "optimizer": Field((dict,)),
    "scheduler": Field((dict,)),
    "torch_rng": Field((torch.Tensor,), False, _rng_state),
    "mask_key": Field((str, type(None))),
    "mask_model": Field((dict, type(None)), False, _state_dict),
    "dataset_sha": Field((str, type(None))),
    "ema": Field((dict, type(None))),
    "best": Field((dict, type(None)), False, _best_state),
    "fastpart_version": Field((str,)),
}
RESUME_FIELDS = ("model", "optimizer", "scheduler", "epoch", "config", "torch_rng", "mask_key")  # a --resume needs
CONFIG_SCHEMA = schema_of(TrainConfig)  # a run's settings as recorded (config.json, a checkpoint's config)
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _zip_problem(f: BinaryIO) -> str | None:
    """What is wrong with a zip-format checkpoint (a CRC that does not match its data: flipped bits, a torn copy),
    or None: intact, or not a zip at all (an old-format file; torch.load judges it)."""
    head = f.read(4)
    f.seek(0)
    if head != b"PK\x03\x04":
        return None
    try:
        with zipfile.ZipFile(f) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:  # the zip directory is missing or mangled
        return f"truncated or damaged ({_first_line(exc)})"
    except Exception as exc:  # zlib and other decoders raise their own types on damaged data
        return f"damaged ({_first_line(exc)})"
    return None if bad is None else f"damaged: the data of {bad} fails its CRC check"


def _load_problem(exc: BaseException) -> str:
    """Why torch.load refused a file, in words that never suggest loading it unsafely."""
    text = _ANSI.sub("", str(exc))
    found = _GLOBAL.search(text)
    if found:
        return f"it holds a pickled {found.group(1)} object, which a file of weights never needs (refused unrun)"
    if "Unsupported operand" in text or "invalid load key" in text or "WeightsUnpickler" in text:
        return "it is not a PyTorch file of weights"
    if "central directory" in text or "zip archive" in text:
        return "it is truncated or not a PyTorch file (no zip directory)"
    lines = [line for line in text.splitlines() if line.strip() and "weights_only" not in line
             and "can still be loaded" not in line and "trust" not in line]
    return lines[0].strip() if lines else type(exc).__name__


def _read_verified(f: BinaryIO, path: Path) -> tuple[Any, str]:
    digest = hashlib.sha256()
    while chunk := f.read(1 << 20):
        digest.update(chunk)
    f.seek(0)
    problem = _zip_problem(f)
    if problem:
        raise FastpartError(f"{path} is {problem}; it cannot be trusted: restore it from a copy")
    f.seek(0)
    try:
        with warnings.catch_warnings():  # torch's warnings about pickle protocols are not the user's business
            warnings.simplefilter("ignore")
            payload = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FastpartError(f"cannot load {path}: {_load_problem(exc)}") from None
    return payload, "sha256:" + digest.hexdigest()


def read_checkpoint_file(path: Path) -> tuple[Any, str]:
    """The payload of a torch file and the sha256 of the very bytes it was loaded from.

    The file is opened once; its hash, its integrity check (the zip's CRCs) and ``torch.load(weights_only=True)``
    all read that one open file, so a checkpoint replaced meanwhile (atomically, by a training beside) is
    never loaded as one file and hashed as the other. A damaged or foreign file is one line."""
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise FastpartError(f"cannot read {path} ({exc.strerror or exc})") from None
    with f:
        try:
            return _read_verified(f, Path(path))
        except OSError as exc:
            raise FastpartError(f"cannot read {path} ({exc.strerror or exc})") from None


def read_checkpoint(path: Path, required: tuple[str, ...] = ("model", "config", "epoch"),
                    loaded: list[str] | None = None) -> dict[str, Any]:
    """A checkpoint's payload, loaded with ``weights_only=True`` after its integrity is checked; one line when it
    does not load, lacks ``required`` entries (a file written by something else), or holds an entry of the
    wrong type (``CHECKPOINT_SCHEMA``, its config ``CONFIG_SCHEMA``). ``loaded``: receives the sha256 of the
    bytes loaded. ``required=()``: a foreign file, only loaded."""
    payload, sha256 = read_checkpoint_file(path)
    if loaded is not None:
        loaded.append(sha256)
    if not required:
        return payload
    if not isinstance(payload, dict):
        raise FastpartError(f"{path} is not a fastpart checkpoint (it holds a {type(payload).__name__})")
    missing = [k for k in ("model", "config", "epoch") if k in required and k not in payload]
    if missing:  # a file written by something else; a fastpart checkpoint lacking another entry is named below
        raise FastpartError(f"{path} is not a fastpart checkpoint: it has no {', '.join(missing)}")
    check_record(payload, {k: f._replace(required=k in required) for k, f in CHECKPOINT_SCHEMA.items()}, str(path))
    check_record(payload["config"], CONFIG_SCHEMA, f"{path}: config")
    return payload


def check_recordable(cfg: TrainConfig) -> None:
    """Refuse, before a new run starts, settings that a resume could not read back as they were (a NaN, which
    JSON cannot hold and which equals nothing, not even itself): such a run could never be resumed."""
    values = cfg.to_dict()
    odd = sorted(k for k, v in values.items() if isinstance(v, float) and not math.isfinite(v))
    if odd:
        shown = ", ".join(f"--{k.replace('_', '-')} {values[k]}" for k in odd)
        raise FastpartError(f"{shown}: a run records its settings as JSON to be resumed, and this is not a number "
                            f"JSON can hold; give a finite number")
    recorded = json.loads(json.dumps(values))
    changed = resume_conflicts(recorded, cfg)
    if changed:
        raise FastpartError(f"the settings {', '.join(changed)} do not read back as they were written: such a run "
                            f"could not be resumed")


def resume_conflicts(saved: dict[str, Any], current: TrainConfig) -> list[str]:
    """The settings of ``current`` that differ from the checkpoint's (those a resume may change aside)."""
    defaults = TrainConfig().to_dict()  # settings added after the checkpoint was written had their default
    ignored = RESUME_MAY_CHANGE | (set() if current.pixel_reweighted else part_only(TrainConfig))  # no masks: moot
    old = {k: saved.get(k, defaults.get(k)) for k in defaults if k not in ignored}
    new = {k: v for k, v in current.to_dict().items() if k not in ignored}
    return sorted(k for k in new if old.get(k) != new[k] and not (
        isinstance(new[k], tuple) and list(new[k]) == old.get(k)))


def load_checkpoint(payload: dict[str, Any], state: TrainingState, where: str = "the checkpoint") -> tuple[int, str | None]:
    """Restore ``state`` in place from a payload checked by ``resume_conflicts``; returns (epochs done, mask key).
    Entries that do not fit this run's model, optimizer or schedule are one line naming ``where``."""
    for name, restore in (("model", state.model.load_state_dict), ("optimizer", state.optimizer.load_state_dict),
                          ("scheduler", state.scheduler.load_state_dict), ("torch_rng", torch.set_rng_state)):
        try:
            restore(payload[name])
        except (KeyError, ValueError, RuntimeError, TypeError, IndexError, AttributeError) as exc:
            raise FastpartError(f"{where}: its {name} does not fit this run ({_first_line(exc)})") from None
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
    sha256: str | None = None  # of the bytes the weights were loaded from ("sha256:<hex>")


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


def model_options(cfg: TrainConfig) -> dict[str, Any]:
    """The keyword arguments of ``create_model`` a run's config asks for (``--activation`` other than relu)."""
    return {} if cfg.activation == "relu" else {"activation": cfg.activation}


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
    loaded: list[str] = []
    payload = read_checkpoint(path, loaded=loaded)
    try:
        cfg = TrainConfig.from_dict(payload["config"])
    except (TypeError, ValueError, AttributeError) as exc:
        raise FastpartError(f"{path} has an unreadable config: {_first_line(exc)}") from None
    if not isinstance(cfg.dataset, str) or not isinstance(cfg.model, str):
        raise FastpartError(f"{path}: config: the fields 'dataset' and 'model' must name the run's data and model")
    if data_dir is not None:
        cfg = replace(cfg, data_dir=data_dir)
    state = payload["model"] if weights == "live" else payload.get("ema")
    if state is None:
        raise FastpartError(f"{path} holds no weight average: train with --ema DECAY for --weights ema")
    manifest = dataset_manifest(cfg.data_dir, cfg.dataset)
    model = build_model(cfg.model, manifest["num_classes"], device, state, str(path), **model_options(cfg))
    return LoadedRun(model, cfg, path, path.parent, int(payload["epoch"]), manifest, loaded[0])
