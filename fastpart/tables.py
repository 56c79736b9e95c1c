"""The paper's Table 1 from several runs: runs that differ only in their seed form one row, each column the
mean ± sample standard deviation (ddof 1) over the runs that measured it, with their number n.

Runs are grouped by every training setting except the seed and what does not change the result (paths,
resume, evaluation cadence, workers, compile); a row is labelled by method, dataset and model. Values
come from each run's eval.json (``fastpart eval``), in percent.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from typing import Sequence

from fastpart.config import TrainConfig
from fastpart.records import PAPER_COLUMNS, RunRecords, is_number
from fastpart.runfolder import RESUME_MAY_CHANGE

__all__ = ["PAPER_TABLE1", "SeedGroup", "group_by_seed", "paper_comparison", "table1_csv", "table1_markdown"]

# The paper's Table 1 (ResNet-18, CIFAR-10, mean of its runs), percent: natural, PGD-20, MMA, AA.
PAPER_TABLE1 = {
    "at": (82.58, 43.69, 41.80, 41.63), "part": (83.42, 43.65, 41.98, 41.74),
    "trades": (78.16, 48.28, 45.00, 45.05), "part-trades": (79.36, 48.90, 45.90, 45.97),
    "mart": (76.82, 49.86, 45.42, 45.10), "part-mart": (78.67, 50.26, 45.53, 45.19),
}

NOT_GROUPED = RESUME_MAY_CHANGE | {"seed", "device", "loader"}


@dataclass
class SeedGroup:
    """Runs with the same settings but the seed; ``values[column]``: the accuracies (fractions) found."""

    method: str
    dataset: str
    model: str
    runs: list[RunRecords]
    values: dict[str, list[float]]

    def mean_std(self, column: str) -> tuple[float | None, float | None, int]:
        found = self.values.get(column, [])
        if not found:
            return None, None, 0
        mean = sum(found) / len(found)
        std = math.sqrt(sum((v - mean) ** 2 for v in found) / (len(found) - 1)) if len(found) > 1 else None
        return mean, std, len(found)


def _settings(records: RunRecords) -> str:
    fields = {k: records.config.get(k) for k in TrainConfig.__dataclass_fields__ if k not in NOT_GROUPED}
    return json.dumps(fields, sort_keys=True, default=str)


def group_by_seed(runs: Sequence[RunRecords]) -> list[SeedGroup]:
    """Groups of runs with equal settings but the seed, in order of first appearance."""
    groups: dict[str, SeedGroup] = {}
    for records in runs:
        key = _settings(records)
        if key not in groups:
            groups[key] = SeedGroup(str(records.setting("method")), str(records.setting("dataset")),
                                    str(records.setting("model")), [], {c: [] for c in PAPER_COLUMNS})
        group = groups[key]
        group.runs.append(records)
        for column in PAPER_COLUMNS:
            entry = records.results.get(column)
            if isinstance(entry, dict) and is_number(entry.get("accuracy")):
                group.values[column].append(float(entry["accuracy"]))
    return list(groups.values())


def _cell(mean: float | None, std: float | None, n: int) -> str:
    if mean is None:
        return "—"
    return f"{100 * mean:.2f} ± {100 * std:.2f} (n={n})" if std is not None else f"{100 * mean:.2f} (n=1)"


def table1_markdown(groups: Sequence[SeedGroup]) -> list[str]:
    header = ["method", "dataset", "model", "runs", *PAPER_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for g in groups:
        cells = [_cell(*g.mean_std(c)) for c in PAPER_COLUMNS]
        lines.append("| " + " | ".join([g.method, g.dataset, g.model, str(len(g.runs)), *cells]) + " |")
    return lines


def table1_csv(groups: Sequence[SeedGroup]) -> str:
    """method, dataset, model, runs, then per column mean, std and n (percent, two decimals; empty: none)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "dataset", "model", "runs",
                     *[f"{c}_{part}" for c in PAPER_COLUMNS for part in ("mean", "std", "n")]])
    for g in groups:
        row: list[str] = [g.method, g.dataset, g.model, str(len(g.runs))]
        for column in PAPER_COLUMNS:
            mean, std, n = g.mean_std(column)
            row += [f"{100 * mean:.2f}" if mean is not None else "", f"{100 * std:.2f}" if std is not None else "", str(n)]
        writer.writerow(row)
    return buffer.getvalue()


def paper_comparison(groups: Sequence[SeedGroup]) -> list[str]:
    """Markdown rows ``method | column | paper | fastpart | gap (points)`` for the CIFAR-10 groups of methods in
    the paper's Table 1 (empty when there are none)."""
    lines: list[str] = []
    for g in groups:
        if g.dataset != "cifar10" or g.method not in PAPER_TABLE1:
            continue
        for column, paper in zip(PAPER_COLUMNS, PAPER_TABLE1[g.method]):
            mean, std, n = g.mean_std(column)
            ours = "—" if mean is None else (f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if std is not None else ""))
            gap = "—" if mean is None else f"{100 * mean - paper:+.2f}"
            lines.append(f"| {g.method} | {column} | {paper:.2f} | {ours} | {gap} | {n} |")
    if not lines:
        return []
    return ["| method | column | paper | fastpart | gap (points) | runs |", "|---|---|---|---|---|---|", *lines]
