"""What training watches besides its loss: accuracy on the test split and on a held-out validation split,
and the best checkpoint chosen on the latter (``fastpart eval``, the full evaluation of a finished run,
is ``fastpart.evaluation``).

``split_accuracy`` is natural and PGD-k accuracy (eps, alpha 2/255, uniform start, CE, stop on success)
with ``fastpart.attacks.robust``'s definition, the one ``fastpart eval`` uses: a point is robust when
it is correct clean and attacked. ``holdout`` draws the validation rows of the training split (seeded:
the same rows for the same seed, never trained on, never in a mask refresh). ``collapse_check`` watches
single-step training for catastrophic overfitting (FGSM-RS against PGD accuracy on fixed images). ``BestCheckpoint`` keeps
``best.pt``: the weights of the epoch with the highest validation robust accuracy so far (the first such
epoch on ties), written atomically; its state travels in the checkpoint, so a resumed run keeps it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from fastpart import distributed
from fastpart.atomic import write_atomic
from fastpart.attacks.pgd import pgd
from fastpart.attacks.single_step import fgsm_rs
from fastpart.attacks.robust import predict_labels, robust_correct
from fastpart.errors import FastpartError
from fastpart.loader import DeviceLoader, stream_seed

__all__ = ["COLLAPSE_GAP", "COLLAPSE_N", "EVAL_ALPHA", "BestCheckpoint", "collapse_check", "holdout",
           "split_accuracy"]

EVAL_ALPHA = 2 / 255  # the PGD step of the evaluations during training (the paper's PGD-20)
COLLAPSE_N = 512  # collapse_check's images
COLLAPSE_GAP = 0.3  # FGSM-RS accuracy above PGD's by more than this: catastrophic overfitting


def split_accuracy(model: nn.Module, loader: DeviceLoader, eps: float, steps: int, seed: int,
                   autocast_dtype: torch.dtype | None = None, split: str = "test", limit: int | None = None,
                   prefix: str = "", attacks: tuple[str, ...] = ("pgd",)) -> dict[str, float]:
    """``{prefix}{split}_natural_acc``, ``{prefix}{split}_pgd{steps}_acc`` and ``{prefix}{split}_n`` of
    ``model`` on the first ``limit`` images of ``loader`` (all: None), under autocast ``autocast_dtype``
    (the training precision): PGD-``steps`` at ``eps``. ``attacks`` may add ``"fgsm"`` (FGSM-RS at ``eps``:
    ``{prefix}{split}_fgsm_acc``), measured on the same batches beside PGD.

    Batch b's random start is seeded from (seed, split, b), the same for every attack; under several processes
    rank r evaluates the batches b with b % world_size == r and the counts are summed, so the result does not
    depend on the number of processes.
    """
    model.eval()
    predict = predict_labels(model, autocast_dtype)
    rank, world = distributed.rank(), distributed.world_size()
    counts = torch.zeros(2 + len(attacks), dtype=torch.float64)  # images, natural correct, robust correct per attack
    taken = 0
    stream = "eval-pgd" if split == "test" else f"{split}-pgd"
    loader.set_epoch(0)
    for b, (x, y, *_) in enumerate(loader):
        if limit is not None and taken >= limit:
            break
        if limit is not None:
            x, y = x[: limit - taken], y[: limit - taken]
        taken += len(y)
        if b % world != rank:
            continue
        natural = predict(x) == y
        found = [len(y), int(natural.sum())]
        for name in attacks:
            generator = torch.Generator(loader.device).manual_seed(stream_seed(seed, b, stream))
            attack = _attack(model, name, eps, steps, generator, autocast_dtype)
            label = f"{split} FGSM-RS" if name == "fgsm" else f"{split} PGD-{steps}"
            found.append(int(robust_correct(predict, x, y, attack, eps=eps, name=label, natural=natural).sum()))
        counts += torch.tensor(found, dtype=torch.float64)
    seen, natural, *robust = (int(v) for v in distributed.all_reduce_sum(counts).tolist())
    head = f"{prefix}{split}"
    keys = [f"{head}_{'fgsm' if name == 'fgsm' else f'pgd{steps}'}_acc" for name in attacks]
    return {f"{head}_natural_acc": natural / seen, **{k: r / seen for k, r in zip(keys, robust)}, f"{head}_n": seen}


def _attack(model: nn.Module, name: str, eps: float, steps: int, generator: torch.Generator,
            autocast_dtype: torch.dtype | None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``split_accuracy``'s attack ``name``: FGSM-RS ("fgsm") or PGD-``steps`` with early stop ("pgd")."""
    if name == "fgsm":
        return lambda xs, ys: fgsm_rs(model, xs, ys, eps, generator=generator, autocast_dtype=autocast_dtype)
    return lambda xs, ys: pgd(model, xs, ys, eps, EVAL_ALPHA, steps, generator=generator,
                              autocast_dtype=autocast_dtype, stop_on_success=True)


def collapse_check(model: nn.Module, loader: DeviceLoader, eps: float, steps: int, seed: int,
                   autocast_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Catastrophic overfitting, seen (single-step training: Wong et al. 2020, de Jorge et al. 2022): on the
    first ``COLLAPSE_N`` images of ``loader`` (the same every epoch), accuracy under FGSM-RS and under PGD-``steps``
    at ``eps``; ``collapsed`` when PGD's falls more than ``COLLAPSE_GAP`` below FGSM-RS's. Keys ``collapse_...``."""
    found = split_accuracy(model, loader, eps, steps, seed, autocast_dtype, "collapse", COLLAPSE_N,
                           attacks=("pgd", "fgsm"))
    found["collapsed"] = found["collapse_fgsm_acc"] - found[f"collapse_pgd{steps}_acc"] > COLLAPSE_GAP
    return found


def holdout(n: int, val_n: int, seed: int, train_n: int | None = None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(training rows, validation rows) of a split of ``n`` images, each sorted; None for all rows (training) and
    for no validation (val_n 0).

    The validation rows are a seeded draw of ``val_n``; ``train_n`` keeps a subset of the other rows for training,
    the same for every seed (a fixed training set, so runs of several seeds differ only in their randomness)."""
    if not 0 <= val_n < n:
        raise FastpartError(f"--val-n must be between 1 and {n - 1} (the training split has {n} images), got {val_n}")
    val = None
    rest = np.arange(n)
    if val_n:
        generator = torch.Generator().manual_seed(stream_seed(seed, 0, "validation"))
        order = torch.randperm(n, generator=generator).numpy()
        val, rest = np.sort(order[:val_n]), np.sort(order[val_n:])
    if train_n is None:
        return (None if val is None else rest), val
    if not 0 < train_n <= len(rest):
        raise FastpartError(f"--train-n must be between 1 and {len(rest)} (the training images left), got {train_n}")
    fixed = torch.Generator().manual_seed(stream_seed(0, 0, "training-subset"))
    return np.sort(rest[torch.randperm(len(rest), generator=fixed).numpy()[:train_n]]), val


class BestCheckpoint:
    """``best.pt`` of a run: the epoch whose ``metric`` (a metrics.jsonl key) is the highest so far."""

    def __init__(self, path: Path, metric: str, state: dict[str, Any] | None = None) -> None:
        self.path, self.metric = path, metric
        self.epoch: int | None = (state or {}).get("epoch")
        self.value: float | None = (state or {}).get("value")

    def state(self) -> dict[str, Any]:
        return {"metric": self.metric, "epoch": self.epoch, "value": self.value}

    def offer(self, record: dict[str, Any], weights: dict[str, dict[str, torch.Tensor]], config: dict[str, Any]) -> bool:
        """Write best.pt when ``record`` beats the best so far; ``weights``: "model" and optionally "ema"
        state dicts; ``config``: the run's settings (``TrainConfig.to_dict()``). Returns whether it did."""
        value = record.get(self.metric)
        if value is None or (self.value is not None and value <= self.value):
            return False
        self.epoch, self.value = int(record["epoch"]), float(value)
        payload = {**weights, "epoch": self.epoch, "config": config, "selected_by": self.metric,
                   "value": self.value, "record": record}
        write_atomic(self.path, lambda file: torch.save(payload, file))
        return True
