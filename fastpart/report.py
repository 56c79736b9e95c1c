"""Reports of finished runs: a markdown page with the evaluation table and training summary, plus PNG figures.

One run (``fastpart report RUN``) -> ``<run>/report/report.md`` with

* the accuracy table of ``eval.json`` (written by ``fastpart eval``), the paper-table CSV row
  (``fastpart.records.paper_csv``, as eval.csv), the gradient-masking checks (counted: passed, FAILED by name,
  skipped: a check that did not run is neither) and the CIFAR-10-C table when present;
* the training summary of ``metrics.jsonl`` and ``training.png`` (loss, train natural/adversarial
  accuracy, test accuracies on the eval epochs; burn-in and masked phases shaded);
* ``eps_curve.png``: accuracy against the budget, when ``eval.json`` holds the curve;
* ``figure2.png``, after the paper's Figure 2: for a few test images, the image, its CAM, the
  important-pixel mask (PART's per-pixel budget: ``eps`` on important pixels, ``eps_low`` elsewhere)
  and |perturbation| per pixel of a mask-weighted PGD-10 under that budget, on one colour scale with the
  mask's outline (runs without masks: the uniform budget; their mask shows what PART's settings would
  mark, unused by the run).

Several runs (``fastpart report A B``) -> a comparison in ``reports/<A name>-vs-<B name>/`` under the
current folder (beside ``runs/``; never inside a run), or ``--out``: the accuracies side by side (table and
grouped bar chart), the training curves overlaid and the Figure-2 rows of every model on the same test
images. Runs that differ only in their seed are also summarised as Table 1 (``fastpart.tables``: mean ±
sample std per column, with n; ``table1.csv``).

Every file is written atomically. The figures are ``fastpart.figures`` and ``fastpart.panels``.
"""


from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

from fastpart.atomic import write_bytes_atomic
from fastpart.errors import FastpartError
from fastpart.figures import (PHASE_COLOURS, accuracy_figure, budget_label, curve_points, eps_curve_figure,
                              num_classes, test_keys, test_label, training_figure)
from fastpart.panels import Panel, compute_panel, figure2, figure2_section
from fastpart.records import RunRecords, check_result, checks_verdict, is_number, paper_csv, read_run
from fastpart.resolve import resolve_device
from fastpart.runfolder import EVAL, METRICS, REPORT
from fastpart.tables import (group_by_seed, paired_differences, paired_markdown, paper_comparison, table1_csv,
                             table1_markdown)

__all__ = ["COMPARISONS", "checks_verdict", "csv_rows", "default_out", "percent", "training_summary", "write_report"]

COMPARISONS = "reports"  # where comparisons of several runs go by default: reports/<a>-vs-<b>/, beside runs/


# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------


def percent(value: Any, digits: int = 2) -> str:
    """0.4365 -> '43.65%'; None or not a number -> '—'."""
    return f"{100 * value:.{digits}f}%" if is_number(value) else "—"


def _seconds(value: Any) -> str:
    if not is_number(value):
        return "—"
    if value < 60:
        return f"{value:.1f} s"
    hours, rest = divmod(int(round(value)), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _accuracy_cell(name: str, entry: dict[str, Any]) -> str:
    if name == "checks" and ("passed" in entry or "checks" in entry) and not is_number(entry.get("accuracy")):
        return checks_verdict(entry)
    if name == "eps-curve" and not is_number(entry.get("accuracy")):
        return "see eps_curve.png"
    return percent(entry.get("accuracy"))


def csv_rows(runs: Sequence[RunRecords]) -> list[str]:
    """The paper-table CSV of runs' evaluations (``runs.paper_csv``: a header, then one row per run), with
    config.json filling what eval.json lacks."""
    tables = [paper_csv({**{k: r.setting(k, "") for k in ("method", "dataset", "model")}, "results": r.results})
              for r in runs]
    return tables[0].splitlines()[:1] + [t.splitlines()[1] for t in tables] if tables else []


@dataclass
class TrainingSummary:
    epochs: int
    planned: Any
    train_seconds: float
    mask_seconds: float
    images: int
    final: dict[str, Any]
    last_test: dict[str, Any]
    phases: dict[str, int] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float | None:
        return self.images / self.train_seconds if self.train_seconds > 0 else None


def training_summary(records: RunRecords) -> TrainingSummary | None:
    metrics = records.metrics
    if not metrics:
        return None
    epoch_seconds = sum(r.get("epoch_seconds", 0.0) for r in metrics if is_number(r.get("epoch_seconds", 0.0)))
    mask_seconds = sum(r.get("mask_seconds", 0.0) for r in metrics if is_number(r.get("mask_seconds", 0.0)))
    images = int(sum(r.get("images", 0) for r in metrics if is_number(r.get("images", 0))))
    tested = [r for r in metrics if any(k in r for k in test_keys([r]))]
    phases: dict[str, int] = {}
    for r in metrics:
        phases[str(r.get("phase", "?"))] = phases.get(str(r.get("phase", "?")), 0) + 1
    return TrainingSummary(
        epochs=int(metrics[-1].get("epoch", len(metrics))), planned=records.config.get("epochs"),
        train_seconds=epoch_seconds + mask_seconds, mask_seconds=mask_seconds, images=images,
        final=metrics[-1], last_test=tested[-1] if tested else {}, phases=phases)


# ---------------------------------------------------------------------------------------------
# Markdown sections
# ---------------------------------------------------------------------------------------------


def _title(records: RunRecords) -> str:
    return f"{records.setting('method')} · {records.setting('model')} · {records.setting('dataset')}"


def _evaluation_context(records: RunRecords) -> str:
    e = records.evaluation or {}
    parts = [f"precision **{e.get('precision', '?')}**", f"n = {e.get('n', '?')} test images",
             f"seed {e.get('seed', '?')}", f"device {e.get('device', '?')}"]
    if e.get("checkpoint"):
        parts.append(f"checkpoint `{e['checkpoint']}`")
    if e.get("created"):
        parts.append(f"created {e['created']}")
    return "Evaluated in " + ", ".join(parts) + "."


def _accuracy_section(records: RunRecords) -> list[str]:
    lines = ["## Evaluation", ""]
    if records.evaluation is None:
        return lines + [f"No {EVAL} in `{records.path}`: run `fastpart eval {records.path}` for the accuracy "
                        "table. The training summary and curves follow.", ""]
    rows = [[name, entry.get("label", name), _accuracy_cell(name, entry), entry.get("n", "—"),
             _seconds(entry.get("seconds"))]
            for name, entry in records.results.items() if isinstance(entry, dict)]
    lines += [_evaluation_context(records), ""]
    lines += _table(["attack", "description", "accuracy", "n", "time"], rows) if rows else ["(no results in eval.json)"]
    lines += ["", "Paper row (percent; empty: not evaluated):", "", "```csv", *csv_rows([records]), "```", ""]
    return lines


def _training_rows(records: RunRecords) -> list[tuple[str, str]]:
    summary = training_summary(records)
    if summary is None:
        return []
    final, test = summary.final, summary.last_test
    planned = f" of {summary.planned}" if summary.planned not in (None, summary.epochs) else ""
    rows = [
        ("epochs", f"{summary.epochs}{planned}"),
        ("phases", ", ".join(f"{k} {v}" for k, v in summary.phases.items())),
        ("training time", _seconds(summary.train_seconds)
         + (f" (masks {_seconds(summary.mask_seconds)})" if summary.mask_seconds else "")),
        ("images/s", f"{summary.images_per_second:.0f}" if summary.images_per_second else "—"),
        ("final train natural", percent(final.get("train_natural_acc"))),
        ("final train adversarial", percent(final.get("train_adv_acc"))),
        ("final loss", f"{final['loss']:.4f}" if is_number(final.get("loss")) else "—"),
    ]
    for key in test_keys([test]):
        rows.append((f"test {test_label(key)} (epoch {test.get('epoch')}, n {test.get('test_n', '?')})",
                     percent(test.get(key))))
    masked = [r for r in records.metrics if is_number(r.get("important_fraction"))]
    if masked:
        rows.append(("important pixels (last recorded)", percent(masked[-1]["important_fraction"])))
    degenerate = sum(int(r.get("degenerate_maps", 0) or 0) for r in records.metrics)
    if masked or degenerate:
        rows.append(("degenerate maps (all refreshes)", str(degenerate)))
    return rows


def _environment_line(records: RunRecords) -> str:
    env, cfg = records.env, records.config
    versions = env.get("versions", {}) if isinstance(env.get("versions"), dict) else {}
    parts = []
    if env:
        parts.append(f"trained on {env.get('device_name', env.get('device', '?'))} ({env.get('device', '?')})")
    if cfg:
        parts.append(f"batch {cfg.get('batch_size', '?')}, lr {cfg.get('lr', '?')}, PGD-{cfg.get('steps', '?')} "
                     f"step {budget_label(cfg.get('alpha'))}, eps {budget_label(cfg.get('eps'))}"
                     + (f", eps_low {budget_label(cfg.get('eps_low'))}, burn-in {cfg.get('burn_in')}, masks every "
                        f"{cfg.get('mask_freq')}" if str(cfg.get("method", "")).startswith("part") else "")
                     + f", precision {cfg.get('precision', '?')}")
    if versions:
        parts.append(", ".join(f"{k} {versions[k]}" for k in ("fastpart", "torch") if versions.get(k)))
    return ("Settings: " + "; ".join(parts) + ".") if parts else ""


def _training_section(records: RunRecords, figure: str | None) -> list[str]:
    lines = ["## Training", ""]
    rows = _training_rows(records)
    if not rows:
        lines += [f"No epochs recorded in `{records.path / METRICS}`.", ""]
    else:
        lines += _table(["", "value"], rows) + [""]
    if records.skipped_lines:
        lines += [f"({records.skipped_lines} unreadable line(s) of {METRICS} skipped.)", ""]
    environment = _environment_line(records)
    if environment:
        lines += [environment, ""]
    if figure:
        lines += [f"![training curves]({figure})", "",
                  "Training curves: loss, training accuracy (dashed: natural, solid: adversarial) and test accuracy "
                  "on the eval epochs (±1 standard error, binomial; n in the legend); accuracy axes 0-100% with the "
                  "chance level dashed grey" + ("; burn-in (orange) and masked (green) epochs shaded." if any(
                      r.get("phase") in PHASE_COLOURS for r in records.metrics) else "."), ""]
    return lines


def _checks_section(records: RunRecords, heading: str = "## Gradient-masking checks") -> list[str]:
    entry = records.results.get("checks")
    if not isinstance(entry, dict) or not isinstance(entry.get("checks"), list):
        return []
    checks = [c for c in entry["checks"] if isinstance(c, dict)]
    rows = [[c.get("name", "?"), check_result(c), c.get("detail", "")] for c in checks]
    verdict = f"{entry.get('label', 'checks')}: **{checks_verdict(entry, names=True)}**"
    if any(check_result(c) == "FAIL" for c in checks):
        verdict += " — the robust accuracy may be overstated"
    return [heading, "", verdict + ".", ""] + _table(["check", "result", "detail"], rows) + [""]


def _severities(per_corruption: dict[str, Any]) -> list[str]:
    found = {str(s) for values in per_corruption.values() if isinstance(values, dict) for s in values}
    return sorted(found, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))


def _cifar10c_section(records: RunRecords) -> list[str]:
    entry = records.results.get("cifar10c")
    per = entry.get("per_corruption") if isinstance(entry, dict) else None
    if not isinstance(per, dict) or not per:
        return []
    severities = _severities(per)
    rows = []
    for corruption, values in per.items():
        values = values if isinstance(values, dict) else {}
        numbers = [values.get(s) for s in severities]
        present = [v for v in numbers if is_number(v)]
        rows.append([corruption] + [percent(v, 1) for v in numbers]
                    + [percent(sum(present) / len(present), 1) if present else "—"])
    mean = percent(entry.get("accuracy"))
    return (["## CIFAR-10-C", "", f"{entry.get('label', 'CIFAR-10-C')}: mean accuracy **{mean}**.", ""]
            + _table(["corruption"] + [f"severity {s}" for s in severities] + ["mean"], rows) + [""])


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


def default_out(runs: Sequence[RunRecords]) -> Path:
    """One run: ``<run>/report``. Several: ``reports/<a>-vs-<b>`` under the current folder, inside no run."""
    if len(runs) == 1:
        return runs[0].path / REPORT
    name = "-vs-".join(r.name for r in runs)
    if len(name) > 120:
        digest = hashlib.sha256("\n".join(str(r.path.resolve()) for r in runs).encode()).hexdigest()[:8]
        name = f"{runs[0].name[:60]}-vs-{len(runs) - 1}-runs-{digest}"
    return Path(COMPARISONS) / name


def _panels(runs: Sequence[RunRecords], n_images: int, device: str, data_dir: str | None,
            bar: tqdm) -> tuple[list[Panel], list[str]]:
    panels, notes = [], []
    if n_images <= 0:
        return panels, ["--images 0."]
    for records in runs:
        bar.set_description(f"report: figure 2 of {records.name}")
        try:
            panels.append(compute_panel(records.path, n_images, device, data_dir))
        except FastpartError as exc:
            hint = "" if data_dir else " (pass --data-dir where the converted dataset lives)"
            notes.append(f"`{records.name}`: {exc}{hint}")
        bar.update()
    return panels, notes


def write_report(runs: Sequence[str | Path], out: str | Path | None = None, n_images: int = 4,
                 device: str = "cpu", data_dir: str | None = None, progress: bool = True) -> Path:
    """Write the report of one run, or the comparison of several, and return the markdown's path.

    ``out``: the report folder (default ``default_out``: ``<run>/report``, or ``reports/<a>-vs-<b>``); it receives
    ``report.md`` and its PNG figures, each written atomically. ``n_images``: test images in the Figure-2 panel
    (0: none). ``data_dir`` overrides where the runs' converted datasets live; without the dataset the panel is
    skipped with a note. ``progress``: a progress bar on stderr when it is a terminal (False: none).
    """
    if not runs:
        raise FastpartError("give at least one run folder")
    if n_images < 0:
        raise FastpartError(f"--images must be >= 0, got {n_images}")
    device = resolve_device(device)
    records = [read_run(r) for r in runs]
    folder = Path(out) if out is not None else default_out(records)
    if folder.exists() and not folder.is_dir():
        raise FastpartError(f"--out {folder} exists and is not a folder")
    steps = (len(records) if n_images > 0 else 0) + 1  # the slow parts: each run's panel, then the figures
    with tqdm(total=steps, desc="report", unit="step", leave=False, disable=None if progress else True) as bar:
        panels, notes = _panels(records, n_images, device, data_dir, bar)
        bar.set_description("report: figures")
        classes = [num_classes(r, data_dir) for r in records]
        figures: dict[str, bytes] = {}
        if any(r.metrics for r in records):
            figures["training.png"] = training_figure([r for r in records if r.metrics],
                                                      [c for r, c in zip(records, classes) if r.metrics])
        if any(curve_points(r) for r in records):
            figures["eps_curve.png"] = eps_curve_figure(records, classes)
        if panels:
            figures["figure2.png"] = figure2(panels)
        bar.update()
    groups = group_by_seed(records)
    if len(records) == 1:
        lines = _single_markdown(records[0], panels, notes, figures)
    else:
        names = _attack_names(records)
        if names:
            figures["accuracy.png"] = accuracy_figure(records, names, classes)
        lines = _comparison_markdown(records, panels, notes, figures, names)
        if len(groups) < len(records):  # some runs differ only by their seed: Table 1 with mean ± std
            lines[2:2] = ["## Table 1: mean ± sample std over seeds (percent)", "", *table1_markdown(groups), "",
                          "Runs differing only in their seed form one row; `table1.csv` holds the same numbers.", ""]
            figures["table1.csv"] = table1_csv(groups).encode()
    paired = paired_markdown(paired_differences(records))
    if paired:
        lines[2:2] = ["## PART against its base, paired by seed", "", *paired, "",
                      "Differences of the same seed's runs (same data order and initial weights), in points; the "
                      "interval is Student's t over the seeds.", ""]
    against_paper = paper_comparison(groups)
    if against_paper:
        lines[2:2] = ["## Against the paper's Table 1 (ResNet-18, CIFAR-10)", "", *against_paper, "",
                      "Gap: fastpart minus the paper, in points; the paper's numbers are the means of its runs.", ""]
    for name, data in figures.items():
        write_bytes_atomic(folder / name, data)
    markdown = folder / "report.md"
    write_bytes_atomic(markdown, ("\n".join(lines).rstrip() + "\n").encode())
    return markdown


def _single_markdown(records: RunRecords, panels: list[Panel], notes: list[str], figures: dict[str, bytes]) -> list[str]:
    lines = [f"# {_title(records)}", "", f"Run folder: `{records.path}`.", ""]
    lines += _accuracy_section(records)
    if "eps_curve.png" in figures:
        lines += ["![accuracy vs eps](eps_curve.png)", ""]
    lines += _checks_section(records)
    lines += _cifar10c_section(records)
    lines += _training_section(records, "training.png" if "training.png" in figures else None)
    lines += figure2_section(panels, notes, "figure2.png" if "figure2.png" in figures else None)
    return lines


def _attack_names(runs: Sequence[RunRecords]) -> list[str]:
    """Attacks with a numeric accuracy in at least one run, in order of first appearance."""
    names: list[str] = []
    for records in runs:
        for name, entry in records.results.items():
            if isinstance(entry, dict) and is_number(entry.get("accuracy")) and name not in names:
                names.append(name)
    return names


def _comparison_markdown(runs: list[RunRecords], panels: list[Panel], notes: list[str], figures: dict[str, bytes],
                         names: list[str]) -> list[str]:
    lines = ["# Comparison: " + " vs ".join(f"{r.name} ({_title(r)})" for r in runs), ""]
    lines += [f"- `{r.name}`: `{r.path}`" for r in runs] + [""]
    lines += ["## Evaluation", ""]
    for r in runs:
        lines.append(f"- `{r.name}`: " + (_evaluation_context(r) if r.evaluation is not None
                                          else f"no {EVAL} (run `fastpart eval {r.path}`)."))
    lines.append("")
    if names:
        two = len(runs) == 2
        header = ["attack"] + [r.name for r in runs] + ([f"Δ {runs[1].name} − {runs[0].name} (points)"] if two else [])
        rows = []
        for name in names:
            values = [r.results.get(name, {}).get("accuracy") for r in runs]
            row = [name] + [percent(v) for v in values]
            if two:
                row.append(f"{100 * (values[1] - values[0]):+.2f}" if all(is_number(v) for v in values) else "—")
            rows.append(row)
        lines += _table(header, rows) + ["", "![accuracies side by side](accuracy.png)", ""]
        lines += ["Paper rows (percent):", "", "```csv", *csv_rows([r for r in runs if r.evaluation is not None]),
                  "```", ""]
    if "eps_curve.png" in figures:
        lines += ["![accuracy vs eps](eps_curve.png)", ""]
    for r in runs:
        lines += _checks_section(r, f"### Gradient-masking checks: {r.name}")
    corrupted = [r for r in runs if isinstance(r.results.get("cifar10c"), dict)]
    if corrupted:
        lines += ["## CIFAR-10-C", ""] + _table(
            ["run", "mean accuracy", "label"],
            [[r.name, percent(r.results["cifar10c"].get("accuracy")), r.results["cifar10c"].get("label", "")]
             for r in corrupted]) + [""]
    lines += ["## Training", ""]
    tables = {r.name: dict(_training_rows(r)) for r in runs}
    keys: list[str] = []
    for table in tables.values():
        keys += [k for k in table if k not in keys]
    if keys:
        lines += _table([""] + [r.name for r in runs], [[k] + [tables[r.name].get(k, "—") for r in runs] for k in keys])
        lines.append("")
    for r in runs:
        environment = _environment_line(r)
        if environment:
            lines.append(f"- `{r.name}`: {environment}")
    lines.append("")
    if "training.png" in figures:
        lines += ["![training curves overlaid](training.png)", "",
                  "One colour per run; dashed: natural, solid: adversarial; test accuracies ±1 standard error "
                  "with n in the legend; chance level dashed grey.", ""]
    lines += figure2_section(panels, notes, "figure2.png" if "figure2.png" in figures else None)
    return lines
