"""The PNG figures of ``fastpart report`` that chart a run's records (the Figure-2 panel is ``fastpart.panels``).

* ``training_figure``: loss, train natural/adversarial accuracy and the test accuracies of the eval
  epochs against the epoch, burn-in and masked phases shaded; several runs overlaid.
* ``eps_curve_figure``: accuracy against the budget (eval.json's eps-curve), the training eps marked.
* ``accuracy_figure``: grouped bars, one group per attack, one bar per run.

Accuracy axes run from 0 to 100% with the chance level (100 / number of classes, ``num_classes``) drawn
dashed, so a run at chance cannot pass for a trend; measured test accuracies carry their n (in the legend) and
±1 standard error (eval.json's ``stderr`` where the record has one, else binomial from n).

Figures are drawn with matplotlib's Agg canvas, without pyplot, so no global backend is changed; each
``*_figure`` function returns the PNG's bytes, ``training_chart`` the drawn ``Figure``.
"""

from __future__ import annotations

import io
import math
import re
from typing import Any, Sequence

from fastpart.data.splitfiles import dataset_manifest
from fastpart.errors import FastpartError
from fastpart.records import RunRecords, is_number

__all__ = ["accuracy_figure", "chance_level", "eps_curve_figure", "num_classes", "standard_error", "training_chart",
           "training_figure"]

PHASE_COLOURS = {"burn-in": "tab:orange", "masked": "tab:green"}
COLLAPSE_STYLE = {"color": "black", "linestyle": "-.", "linewidth": 1.5, "gid": "collapsed"}  # an epoch whose
# collapse check found PGD accuracy far below FGSM-RS's
RUN_COLOURS = ("tab:blue", "tab:red", "tab:green", "tab:purple", "tab:brown", "tab:olive", "tab:cyan")
CHANCE_STYLE = {"color": "grey", "linestyle": "--", "linewidth": 1}


def budget_label(value: Any) -> str:
    """8/255 -> '8.00/255'; not a number -> '?'."""
    return f"{255 * value:.2f}/255" if is_number(value) else "?"


def test_keys(metrics: list[dict[str, Any]]) -> list[str]:
    """``test_natural_acc`` first, then the other ``test_*_acc`` keys in order of appearance."""
    keys: list[str] = []
    for record in metrics:
        for key in record:
            if re.fullmatch(r"test_.+_acc", key) and key not in keys:
                keys.append(key)
    return sorted(keys, key=lambda k: k != "test_natural_acc")


def test_label(key: str) -> str:
    name = key[len("test_"):-len("_acc")]
    match = re.fullmatch(r"pgd(\d+)", name)
    return f"PGD-{match.group(1)}" if match else name


# ---------------------------------------------------------------------------------------------
# Chance, n and standard error
# ---------------------------------------------------------------------------------------------


def num_classes(records: RunRecords, data_dir: str | None = None) -> int | None:
    """The run's number of classes: its converted dataset's manifest (in ``data_dir``, else the run's data_dir),
    else the dataset registry's; None where neither knows (an imagefolder dataset no longer on disk)."""
    dataset = records.setting("dataset", None)
    if not isinstance(dataset, str):
        return None
    folder = data_dir or records.config.get("data_dir")
    if isinstance(folder, str):
        try:
            classes = dataset_manifest(folder, dataset).get("num_classes")
        except (FastpartError, OSError, ValueError, AttributeError):
            classes = None
        if isinstance(classes, int) and not isinstance(classes, bool) and classes > 1:
            return classes
    from fastpart.data.datasets import DATASETS

    info = DATASETS.get(dataset)
    return info.num_classes if info is not None else None


def chance_level(classes: int | None) -> float | None:
    """The accuracy of guessing, in percent: 100 / classes; None where the number of classes is unknown."""
    return 100 / classes if isinstance(classes, int) and classes > 1 else None


def standard_error(accuracy: Any, n: Any) -> float | None:
    """The binomial standard error of an accuracy measured on n images (as ``fastpart eval`` records it)."""
    if not is_number(accuracy) or not is_number(n) or n <= 0:
        return None
    return math.sqrt(max(0.0, accuracy * (1 - accuracy)) / n)


def _n_label(ns: Sequence[Any]) -> str:
    found = sorted({int(n) for n in ns if is_number(n)})
    if not found:
        return ""
    return f"n={found[0]}" if len(found) == 1 else f"n={found[0]}–{found[-1]}"


def _chance_lines(ax, levels: Sequence[float | None]) -> None:
    for level in sorted({round(v, 6) for v in levels if v is not None}):
        ax.axhline(level, **CHANCE_STYLE, label=f"chance ({level:.3g}%)")


def _accuracy_axis(ax, levels: Sequence[float | None], top: float = 100) -> None:
    _chance_lines(ax, levels)
    ax.set_ylim(0, top)


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def _phase_spans(metrics: list[dict[str, Any]]) -> list[tuple[str, float, float]]:
    """Contiguous epochs of one phase -> (phase, first - 0.5, last + 0.5)."""
    spans: list[tuple[str, float, float]] = []
    for record in metrics:
        phase, epoch = record.get("phase"), record.get("epoch")
        if phase not in PHASE_COLOURS or not is_number(epoch):
            continue
        if spans and spans[-1][0] == phase and spans[-1][2] == epoch - 0.5:
            spans[-1] = (phase, spans[-1][1], epoch + 0.5)
        else:
            spans.append((phase, epoch - 0.5, epoch + 0.5))
    return spans


def _series(metrics: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    points = [(r["epoch"], r[key]) for r in metrics if is_number(r.get(key)) and is_number(r.get("epoch"))]
    return [p[0] for p in points], [p[1] for p in points]


def _test_points(metrics: list[dict[str, Any]], key: str) -> tuple[list[float], list[float], list[float], list[Any]]:
    """Epochs, accuracies and standard errors (percent) and n of one test accuracy: the record's own
    ``test_<attack>_stderr`` where it has one, else binomial from ``test_n`` (0 where n is unknown)."""
    epochs, values, errors, ns = [], [], [], []
    for r in metrics:
        if is_number(r.get(key)) and is_number(r.get("epoch")):
            own = r.get(key[:-len("_acc")] + "_stderr")
            error = own if is_number(own) else standard_error(r[key], r.get("test_n"))
            epochs.append(r["epoch"])
            values.append(100 * r[key])
            errors.append(100 * error if error is not None else 0.0)
            ns.append(r.get("test_n"))
    return epochs, values, errors, ns


def training_chart(runs: Sequence[RunRecords], classes: Sequence[int | None] | None = None):
    """Loss, train natural/adversarial accuracy and test accuracies per epoch, one colour per run (a ``Figure``).

    Accuracy axes 0-100% with the chance level of ``classes`` (one number of classes per run) dashed; test
    accuracies with ±1 standard error bars and their n in the legend. One run: burn-in and masked phases shaded.
    Several: a dotted line where each run's masked phase starts. A black dash-dot line marks each epoch whose collapse
    check (single-step training, ``--awp``) found the run collapsed.
    """
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    fig = _figure(15, 4)
    loss_ax, train_ax, test_ax = fig.subplots(1, 3)
    single = len(runs) == 1
    for i, records in enumerate(runs):
        colour = RUN_COLOURS[i % len(RUN_COLOURS)]
        tag = "" if single else f"{records.name}: "
        loss_ax.plot(*_series(records.metrics, "loss"), marker=".", color=colour, label=f"{tag}loss")
        train_ax.plot(*(_scaled(_series(records.metrics, "train_natural_acc"))), marker=".", color=colour,
                      linestyle="--", label=f"{tag}natural")
        train_ax.plot(*(_scaled(_series(records.metrics, "train_adv_acc"))), marker=".", color=colour,
                      label=f"{tag}adversarial")
        for j, key in enumerate(test_keys(records.metrics)):
            epochs, values, errors, ns = _test_points(records.metrics, key)
            n = _n_label(ns)
            test_ax.errorbar(epochs, values, yerr=errors, marker="o", capsize=3,
                             color=colour if not single else RUN_COLOURS[j % len(RUN_COLOURS)],
                             linestyle=("--", "-", ":", "-.")[j % 4] if not single else "-",
                             label=f"{tag}{test_label(key)}" + (f" ({n})" if n else ""))
        collapsed = [r["epoch"] for r in records.metrics if r.get("collapsed") is True and is_number(r.get("epoch"))]
        for epoch in collapsed:  # the collapse check of single-step and AWP runs (fastpart.monitor.collapse_check)
            for ax in (loss_ax, train_ax, test_ax):
                first = ax is train_ax and epoch == collapsed[0]
                ax.axvline(epoch, **COLLAPSE_STYLE, label=f"{tag}collapsed" if first else None)
        if single:
            for phase, start, stop in _phase_spans(records.metrics):
                for ax in (loss_ax, train_ax, test_ax):
                    ax.axvspan(start, stop, color=PHASE_COLOURS[phase], alpha=0.12, linewidth=0)
        else:
            masked = [r["epoch"] for r in records.metrics if r.get("phase") == "masked" and is_number(r.get("epoch"))]
            if masked:
                for ax in (loss_ax, train_ax, test_ax):
                    ax.axvline(min(masked) - 0.5, color=colour, linestyle=":", linewidth=1)
    levels = [chance_level(c) for c in (classes or [])]
    for ax in (train_ax, test_ax):
        _accuracy_axis(ax, levels)
    loss_ax.set_title("training loss")
    train_ax.set_title("training accuracy (%)")
    test_ax.set_title("test accuracy on eval epochs (%), ±1 s.e.")
    for ax in (loss_ax, train_ax, test_ax):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if single and ax is loss_ax:
            phases = {p for p, _, _ in _phase_spans(runs[0].metrics)}
            handles += [Patch(color=PHASE_COLOURS[p], alpha=0.3) for p in PHASE_COLOURS if p in phases]
            labels += [p for p in PHASE_COLOURS if p in phases]
        if handles:
            ax.legend(handles, labels, fontsize=8)
    if not single and any(r.get("phase") == "masked" for records in runs for r in records.metrics):
        fig.suptitle("dotted lines: start of each run's masked phase", fontsize=9, y=1.03)
    return fig


def training_figure(runs: Sequence[RunRecords], classes: Sequence[int | None] | None = None) -> bytes:
    """``training_chart`` as PNG bytes."""
    return _png(training_chart(runs, classes))


def _scaled(series: tuple[list[float], list[float]]) -> tuple[list[float], list[float]]:
    return series[0], [100 * v for v in series[1]]


def curve_points(records: RunRecords) -> list[tuple[float, float]]:
    entry = records.results.get("eps-curve")
    curve = entry.get("curve") if isinstance(entry, dict) else None
    if not isinstance(curve, list):
        return []
    return [(p["eps"], p["accuracy"]) for p in curve
            if isinstance(p, dict) and is_number(p.get("eps")) and is_number(p.get("accuracy"))]


def eps_curve_figure(runs: Sequence[RunRecords], classes: Sequence[int | None] | None = None) -> bytes:
    """Accuracy against the L-inf budget (x in units of 1/255), one line per run with ±1 s.e. (binomial, the
    curve's n); the training eps marked, the chance level dashed."""
    fig = _figure(6, 4)
    ax = fig.subplots()
    for i, records in enumerate(runs):
        points = curve_points(records)
        if not points:
            continue
        entry = records.results["eps-curve"]
        n = entry.get("n")
        errors = [100 * (standard_error(a, n) or 0.0) for _, a in points]
        label = records.name if len(runs) > 1 else entry.get("label", "accuracy")
        ax.errorbar([255 * e for e, _ in points], [100 * a for _, a in points], yerr=errors, marker="o", capsize=3,
                    color=RUN_COLOURS[i % len(RUN_COLOURS)], label=label + (f" ({_n_label([n])})" if is_number(n) else ""))
    train_eps = runs[0].config.get("eps")
    if is_number(train_eps):
        ax.axvline(255 * train_eps, color="grey", linestyle=":", label=f"training eps {budget_label(train_eps)}")
    _accuracy_axis(ax, [chance_level(c) for c in (classes or [])])
    ax.set_xlabel("eps (/255)")
    ax.set_ylabel("accuracy (%), ±1 s.e.")
    ax.set_title("accuracy vs eps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def accuracy_figure(runs: Sequence[RunRecords], names: Sequence[str], classes: Sequence[int | None] | None = None) -> bytes:
    """Grouped bars: one group per attack, one bar per run, value labels in percent, ±1 s.e. (eval.json's
    ``stderr``, else binomial from n) and each run's n in the legend; the chance level dashed."""
    fig = _figure(max(6.0, 1.3 * len(names) * len(runs)), 4)
    ax = fig.subplots()
    width = 0.8 / len(runs)
    for i, records in enumerate(runs):
        entries = [records.results.get(n, {}) for n in names]
        values = [e.get("accuracy") for e in entries]
        errors = [e.get("stderr") if is_number(e.get("stderr")) else standard_error(e.get("accuracy"), e.get("n"))
                  for e in entries]
        xs = [k + (i - (len(runs) - 1) / 2) * width for k in range(len(names))]
        heights = [100 * v if is_number(v) else 0.0 for v in values]
        n = _n_label([e.get("n") for e, v in zip(entries, values) if is_number(v)])
        yerr = [100 * e if e is not None else 0.0 for e in errors]
        bars = ax.bar(xs, heights, width, yerr=yerr, capsize=3, label=records.name + (f" ({n})" if n else ""),
                      color=RUN_COLOURS[i % len(RUN_COLOURS)])
        for bar, v, e in zip(bars, values, yerr):
            if is_number(v):  # the value above its error bar
                ax.annotate(f"{100 * v:.1f}", (bar.get_x() + bar.get_width() / 2, bar.get_height() + e),
                            xytext=(0, 2), textcoords="offset points", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names)
    _accuracy_axis(ax, [chance_level(c) for c in (classes or [])], top=110)
    ax.set_ylabel("accuracy (%), ±1 s.e.")
    ax.set_title("test accuracy per attack")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)
