"""The paper's Table 1 from several runs: runs that differ only in their seed form one row, each column the
mean ± sample standard deviation (ddof 1) over the runs that measured it, with their number n.

Runs are grouped by every training setting except the seed and what does not change the result (paths,
resume, evaluation cadence, workers, compile); a row is labelled by method, dataset and model. Values
come from each run's eval.json (``fastpart eval``), in percent.

``paired_differences``: a PART method against its base (part - at, part-trades - trades, part-mart - mart) over
runs with the same settings and seed, per result of eval.json: the mean difference in points and its 95%
interval (Student's t over the seeds), the way a paired study reports one method against another.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from typing import Sequence

from fastpart.config import METHODS, TrainConfig
from fastpart.options import part_only
from fastpart.records import PAPER_COLUMNS, RunRecords, is_number
from fastpart.runfolder import RESUME_MAY_CHANGE

__all__ = ["PAPER_TABLE1", "PairedDifference", "SeedGroup", "group_by_seed", "paired_differences", "paired_markdown",
           "paper_comparison", "table1_csv", "table1_markdown"]

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


@dataclass
class PairedDifference:
    """One result of a PART method minus its base over the seeds both ran: differences in fractions."""

    method: str
    base: str
    result: str
    differences: list[float]

    def interval(self, level: float = 0.95) -> tuple[float, float | None, float | None]:
        """(mean, low, high) of the mean difference, Student's t interval over the seeds (None with one seed)."""
        n = len(self.differences)
        mean = sum(self.differences) / n
        if n < 2:
            return mean, None, None
        from scipy.stats import t

        sd = math.sqrt(sum((d - mean) ** 2 for d in self.differences) / (n - 1))
        half = float(t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
        return mean, mean - half, mean + half


def _pairing_key(records: RunRecords) -> str:
    ignored = NOT_GROUPED | part_only(TrainConfig) | {"method"}
    return json.dumps({k: records.config.get(k) for k in TrainConfig.__dataclass_fields__ if k not in ignored},
                      sort_keys=True, default=str)


def paired_differences(runs: Sequence[RunRecords]) -> list[PairedDifference]:
    """Every result measured by a PART run and by the run of its base method with the same settings and seed."""
    by_key = {(_pairing_key(r), r.config.get("method"), r.config.get("seed")): r for r in runs}
    found: dict[tuple[str, str, str], PairedDifference] = {}
    for (key, method, seed), part in by_key.items():
        if method not in METHODS or not METHODS[method].pixel_reweighted:
            continue
        base_method = METHODS[method].objective
        base = by_key.get((key, base_method, seed))
        if base is None:
            continue
        for result, entry in part.results.items():
            other = base.results.get(result)
            if isinstance(entry, dict) and isinstance(other, dict) and is_number(entry.get("accuracy")) \
                    and is_number(other.get("accuracy")):
                pair = found.setdefault((method, base_method, result), PairedDifference(method, base_method, result, []))
                pair.differences.append(float(entry["accuracy"]) - float(other["accuracy"]))
    return list(found.values())


def paired_markdown(pairs: Sequence[PairedDifference]) -> list[str]:
    """Markdown rows: comparison, result, mean difference and its 95% interval in points, seeds."""
    lines = ["| comparison | result | mean difference (points) | 95% interval | seeds |", "|---|---|---|---|---|"]
    for p in pairs:
        mean, low, high = p.interval()
        interval = "—" if low is None else f"[{100 * low:+.2f}, {100 * high:+.2f}]"
        lines.append(f"| {p.method} − {p.base} | {p.result} | {100 * mean:+.2f} | {interval} | {len(p.differences)} |")
    return lines if pairs else []
