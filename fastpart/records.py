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

from fastpart.atomic import Field, check_record, list_of, map_of
from fastpart.errors import FastpartError
from fastpart.runfolder import CHECKPOINT, CONFIG, CONFIG_SCHEMA, ENV, EVAL, METRICS, read_metrics

__all__ = ["ENV_SCHEMA", "EVAL_SCHEMA", "check_result", "checks_verdict", "PAPER_COLUMNS", "RunRecords", "is_number", "paper_csv", "read_eval", "read_run"]

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
    except OSError as exc:
        raise FastpartError(f"cannot read {path} ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise FastpartError(f"{path} is not valid JSON ({exc})") from None


def _results(results: dict[str, Any]) -> str | None:
    for name, entry in results.items():
        if not isinstance(entry, dict):
            return f"holds {name!r} as {type(entry).__name__}, expected an object"
        for key, types in (("accuracy", (int, float)), ("stderr", (int, float)), ("n", (int,)),
                           ("seconds", (int, float)), ("label", (str,))):
            value = entry.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, types)):
                return f"holds {name!r} with a {key} that is {type(value).__name__}, not a {types[0].__name__}"
    return None


# What `fastpart train` writes as env.json and `fastpart eval` as eval.json (fields added later are optional).
ENV_SCHEMA = {"versions": Field((dict,), False, map_of(str, type(None))), "device": Field((str,)),
              "device_name": Field((str,)), "cpu_count": Field((int, type(None))), "world_size": Field((int,)),
              "threads": Field((int,)), "interop_threads": Field((int,)), "command": Field((list,), False, list_of(str)),
              "source_revision": Field((str, type(None))), "hostname": Field((str,))}
EVAL_SCHEMA = {
    "results": Field((dict,), True, _results), "n": Field((int,)), "epoch": Field((int,)), "seed": Field((int,)),
    "eps": Field((float,)), "alpha": Field((float,)), "precision": Field((str,)), "device": Field((str,)),
    "run": Field((str,)), "checkpoint": Field((str,)), "weights": Field((str,)), "created": Field((str,)),
    "dataset": Field((str,)), "model": Field((str,)), "method": Field((str,)), "fastpart": Field((str,)),
}
RECORDED_SCHEMA = {**CONFIG_SCHEMA, "val_rows": Field((list,), False, list_of(int))}  # config.json


def read_eval(path: Path) -> dict[str, Any]:
    """An eval.json, checked against ``EVAL_SCHEMA``: one line naming the file and the field when it does not fit."""
    return check_record(_read_json(path), EVAL_SCHEMA, str(path))


def read_run(run: str | Path) -> RunRecords:
    """Read config.json, env.json, metrics.jsonl and eval.json (each optional) of a run folder, each checked
    against its schema (one line naming the file and the field that does not fit).

    A folder with neither config.json nor metrics.jsonl is not a run: ``FastpartError``; nor is one whose run
    never finished an epoch (no metrics and no checkpoint: refused or stopped while starting). Unreadable metric
    lines (a run killed mid-write, a damaged line) are skipped and counted.
    """
    path = Path(run)
    if not path.is_dir():
        raise FastpartError(f"no run folder at {path}")
    if not (path / CONFIG).is_file() and not (path / METRICS).is_file():
        raise FastpartError(f"{path} is not a run folder written by `fastpart train` (no {CONFIG} or {METRICS})")
    if not (path / METRICS).is_file() and not (path / CHECKPOINT).is_file():
        raise FastpartError(f"{path} holds no finished epoch (no {METRICS}, no {CHECKPOINT}): its run was refused or "
                            f"stopped before it trained")
    config = check_record(_read_json(path / CONFIG), RECORDED_SCHEMA, str(path / CONFIG)) \
        if (path / CONFIG).is_file() else {}
    env = check_record(_read_json(path / ENV), ENV_SCHEMA, str(path / ENV)) if (path / ENV).is_file() else {}
    try:
        metrics, skipped = read_metrics(path / METRICS)
    except OSError as exc:
        raise FastpartError(f"cannot read {path / METRICS} ({exc.strerror or exc})") from None
    evaluation = read_eval(path / EVAL) if (path / EVAL).is_file() else None
    return RunRecords(path, config, env, metrics, evaluation, skipped)


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


def check_result(check: dict[str, Any]) -> str:  # passed None or absent: the check did not run
    return {True: "pass", False: "FAIL"}.get(check.get("passed"), "skipped")


def checks_verdict(entry: dict[str, Any], names: bool = False) -> str:
    """eval.json's checks counted honestly: '3 passed, 1 skipped', '1 FAILED, 2 passed, 1 skipped' (``names``:
    '1 FAILED: name; 2 passed, 1 skipped'); an entry without its list of checks: its own verdict."""
    checks = [c for c in entry.get("checks", []) if isinstance(c, dict)] if isinstance(entry.get("checks"), list) else []
    if not checks:
        return {True: "passed", False: "FAILED"}.get(entry.get("passed"), "not decided")
    results = [check_result(c) for c in checks]
    failed = [str(c.get("name", "?")) for c, r in zip(checks, results) if r == "FAIL"]
    rest = [f"{results.count(r)} {word}" for r, word in (("pass", "passed"), ("skipped", "skipped")) if r in results]
    if not failed:
        return ", ".join(rest)
    head = f"{len(failed)} FAILED" + (f": {', '.join(failed)}" if names else "")
    return head + ("; " if names and rest else ", " if rest else "") + ", ".join(rest)
