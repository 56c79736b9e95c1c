"""A run folder's text records, for reports and tables: settings, environment, per-epoch metrics and the
evaluation, read without loading a model (``read_run``), and the paper-table CSV of an evaluation
(``paper_csv``). The folder's layout is ``fastpart.runfolder``'s.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastpart.errors import FastpartError
from fastpart.runfolder import CONFIG, ENV, EVAL, METRICS, read_metrics

__all__ = ["PAPER_COLUMNS", "RunRecords", "is_number", "paper_csv", "read_run"]

PAPER_COLUMNS = ("natural", "pgd20", "mma", "aa")  # the paper's Table 1 columns, as eval.json names them


@dataclass
class RunRecords:
    """What a run folder holds as text: settings, environment, per-epoch metrics and the evaluation."""

    path: Path
    config: dict[str, Any]
    env: dict[str, Any]
    metrics: list[dict[str, Any]]
    evaluation: dict[str, Any] | None
    skipped_lines: int = 0

    @property
    def name(self) -> str:
        return self.path.resolve().name

    def setting(self, key: str, default: Any = "?") -> Any:
        """A setting from config.json, else from eval.json, else ``default``."""
        value = self.config.get(key)
        if value is None and self.evaluation is not None:
            value = self.evaluation.get(key)
        return default if value is None else value

    @property
    def results(self) -> dict[str, dict[str, Any]]:
        if self.evaluation is None:
            return {}
        results = self.evaluation.get("results")
        return results if isinstance(results, dict) else {}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FastpartError(f"cannot read {path}: {exc}") from None


def read_run(run: str | Path) -> RunRecords:
    """Read config.json, env.json, metrics.jsonl and eval.json (each optional) of a run folder.

    A folder with neither config.json nor metrics.jsonl is not a run: ``FastpartError``. Unreadable
    metric lines (a run killed mid-write) are skipped and counted.
    """
    path = Path(run)
    if not path.is_dir():
        raise FastpartError(f"no run folder at {path}")
    if not (path / CONFIG).is_file() and not (path / METRICS).is_file():
        raise FastpartError(f"{path} is not a run folder written by `fastpart train` (no {CONFIG} or {METRICS})")
    config = _read_json(path / CONFIG) if (path / CONFIG).is_file() else {}
    env = _read_json(path / ENV) if (path / ENV).is_file() else {}
    metrics, skipped = read_metrics(path / METRICS)
    evaluation = _read_json(path / EVAL) if (path / EVAL).is_file() else None
    if evaluation is not None and not isinstance(evaluation, dict):
        raise FastpartError(f"{path / EVAL} is not a JSON object")
    return RunRecords(path, config if isinstance(config, dict) else {}, env if isinstance(env, dict) else {},
                      metrics, evaluation, skipped)


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool): what a JSON record holds where a measurement was made."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _percent_cell(value: Any) -> str:
    return f"{100 * value:.2f}" if is_number(value) else ""


def paper_csv(evaluation: dict[str, Any]) -> str:
    """The paper-table CSV of an eval.json record: a header and one row, method, dataset, model, then
    natural / PGD-20 / MMA / AA in percent with two decimals (empty where not measured)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "dataset", "model", *PAPER_COLUMNS])
    results = evaluation.get("results") if isinstance(evaluation.get("results"), dict) else {}
    cells = [_percent_cell(results[c].get("accuracy")) if isinstance(results.get(c), dict) else ""
             for c in PAPER_COLUMNS]
    writer.writerow([evaluation.get("method", ""), evaluation.get("dataset", ""), evaluation.get("model", ""), *cells])
    return buffer.getvalue()
