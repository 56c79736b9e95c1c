"""Reports of finished runs: a markdown page with the evaluation table and training summary, plus PNG figures.

One run (``fastpart report RUN``) -> ``<run>/report/report.md`` with

* the accuracy table of ``eval.json`` (written by ``fastpart eval``), the paper's CSV row
  (``method,natural,pgd20,mma,aa``), the gradient-masking checks and the CIFAR-10-C table when present;
* the training summary of ``metrics.jsonl`` and ``training.png`` (loss, train natural/adversarial
  accuracy, test accuracies on the eval epochs; burn-in and masked phases shaded);
* ``eps_curve.png``: accuracy against the budget, when ``eval.json`` holds the curve;
* ``figure2.png``, after the paper's Figure 2: for a few test images, the image, its CAM, the
  important-pixel mask (PART's per-pixel budget: ``eps`` on important pixels, ``eps_low`` elsewhere)
  and the perturbation of a mask-weighted PGD-10 under that budget (runs without masks: the uniform
  budget; their mask column shows what PART's settings would mark, unused by the run).

Several runs (``fastpart report A B``) -> a comparison in ``<A>/report-vs-<B name>/`` (or ``--out``):
the accuracies side by side (table and grouped bar chart), the training curves overlaid and the
Figure-2 rows of every model on the same test images.

Every file is written atomically. Figures are drawn with matplotlib's Agg canvas, without pyplot, so
no global backend is changed.
"""

from __future__ import annotations

import io
import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from fastpart.atomic import write_bytes_atomic
from fastpart.attacks.pgd import pgd
from fastpart.errors import FastpartError
from fastpart.kernels import EpsLevels
from fastpart.loader import read_split, split_path
from fastpart.masks import eps_levels
from fastpart.train import METHODS, cam_function, load_run, mask_settings, resolve_device

__all__ = ["RunRecords", "Panel", "read_run", "panel_indices", "compute_panel", "write_report", "PAPER_COLUMNS"]

EVAL_FILE = "eval.json"
METRICS_FILE = "metrics.jsonl"
PAPER_COLUMNS = ("natural", "pgd20", "mma", "aa")
PANEL_STEPS = 10
PHASE_COLOURS = {"burn-in": "tab:orange", "masked": "tab:green"}
RUN_COLOURS = ("tab:blue", "tab:red", "tab:green", "tab:purple", "tab:brown", "tab:olive", "tab:cyan")


# ---------------------------------------------------------------------------------------------
# Reading a run folder
# ---------------------------------------------------------------------------------------------


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
    if not (path / "config.json").is_file() and not (path / METRICS_FILE).is_file():
        raise FastpartError(f"{path} is not a run folder written by `fastpart train` (no config.json or {METRICS_FILE})")
    config = _read_json(path / "config.json") if (path / "config.json").is_file() else {}
    env = _read_json(path / "env.json") if (path / "env.json").is_file() else {}
    metrics: list[dict[str, Any]] = []
    skipped = 0
    if (path / METRICS_FILE).is_file():
        for line in (path / METRICS_FILE).read_text().splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                skipped += 1
                continue
            if isinstance(record, dict) and "epoch" in record:
                metrics.append(record)
            else:
                skipped += 1
    evaluation = _read_json(path / EVAL_FILE) if (path / EVAL_FILE).is_file() else None
    if evaluation is not None and not isinstance(evaluation, dict):
        raise FastpartError(f"{path / EVAL_FILE} is not a JSON object")
    return RunRecords(path, config if isinstance(config, dict) else {}, env if isinstance(env, dict) else {},
                      metrics, evaluation, skipped)


# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def percent(value: Any, digits: int = 2) -> str:
    """0.4365 -> '43.65%'; None or not a number -> '—'."""
    return f"{100 * value:.{digits}f}%" if _is_number(value) else "—"


def _seconds(value: Any) -> str:
    if not _is_number(value):
        return "—"
    if value < 60:
        return f"{value:.1f} s"
    hours, rest = divmod(int(round(value)), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def _budget(value: Any) -> str:
    return f"{255 * value:.2f}/255" if _is_number(value) else "?"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _accuracy_cell(name: str, entry: dict[str, Any]) -> str:
    if name == "checks" and "passed" in entry and not _is_number(entry.get("accuracy")):
        return "all passed" if entry["passed"] else "FAILED"
    if name == "eps-curve" and not _is_number(entry.get("accuracy")):
        return "see eps_curve.png"
    return percent(entry.get("accuracy"))


def csv_row(records: RunRecords) -> str:
    """The paper row ``method,natural,pgd20,mma,aa`` in percent with two decimals; missing -> empty."""
    results = records.results
    cells = [str(records.setting("method"))]
    for key in PAPER_COLUMNS:
        value = results.get(key, {}).get("accuracy") if isinstance(results.get(key), dict) else None
        cells.append(f"{100 * value:.2f}" if _is_number(value) else "")
    return ",".join(cells)


def _test_keys(metrics: list[dict[str, Any]]) -> list[str]:
    """``test_natural_acc`` first, then the other ``test_*_acc`` keys in order of appearance."""
    keys: list[str] = []
    for record in metrics:
        for key in record:
            if re.fullmatch(r"test_.+_acc", key) and key not in keys:
                keys.append(key)
    return sorted(keys, key=lambda k: k != "test_natural_acc")


def _test_label(key: str) -> str:
    name = key[len("test_"):-len("_acc")]
    match = re.fullmatch(r"pgd(\d+)", name)
    return f"PGD-{match.group(1)}" if match else name


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
    epoch_seconds = sum(r.get("epoch_seconds", 0.0) for r in metrics if _is_number(r.get("epoch_seconds", 0.0)))
    mask_seconds = sum(r.get("mask_seconds", 0.0) for r in metrics if _is_number(r.get("mask_seconds", 0.0)))
    images = int(sum(r.get("images", 0) for r in metrics if _is_number(r.get("images", 0))))
    tested = [r for r in metrics if any(k in r for k in _test_keys([r]))]
    phases: dict[str, int] = {}
    for r in metrics:
        phases[str(r.get("phase", "?"))] = phases.get(str(r.get("phase", "?")), 0) + 1
    return TrainingSummary(
        epochs=int(metrics[-1].get("epoch", len(metrics))), planned=records.config.get("epochs"),
        train_seconds=epoch_seconds + mask_seconds, mask_seconds=mask_seconds, images=images,
        final=metrics[-1], last_test=tested[-1] if tested else {}, phases=phases)


# ---------------------------------------------------------------------------------------------
# The Figure-2 panel: image / CAM / mask / perturbation
# ---------------------------------------------------------------------------------------------


@dataclass
class Panel:
    """One model's Figure-2 rows on the chosen test images (numpy, images NHWC in [0, 1])."""

    run_name: str
    method: str
    pixel_reweighted: bool
    indices: list[int]
    images: np.ndarray        # (B, H, W, 3) float32
    labels: list[int]
    predictions: list[int]
    adversarial_predictions: list[int]
    cams: np.ndarray          # (B, H, W) float32, CAM upsampled and min-max scaled to [0, 1]
    levels: np.ndarray        # (B, C, H, W) uint8, 1 = important (eps)
    degenerate: list[bool]
    delta: np.ndarray         # (B, H, W, 3) float32, x_adv - x
    eps: float
    eps_low: float
    class_names: list[str] | None = None

    def important_fraction(self) -> float:
        """Share of (pixel, channel-level) entries marked important, over all the panel's images."""
        return float(self.levels.astype(np.float64).mean())

    def image_fractions(self) -> list[float]:
        return [float(v) for v in self.levels.reshape(len(self.levels), -1).astype(np.float64).mean(axis=1)]

    def max_delta(self, important: bool) -> float:
        """Largest |delta| over the entries whose level is 1 (``important``) or 0; 0 when there are none."""
        levels = np.broadcast_to(self.levels.transpose(0, 2, 3, 1), self.delta.shape)
        chosen = np.abs(self.delta)[levels == (1 if important else 0)]
        return float(chosen.max()) if chosen.size else 0.0

    def class_name(self, label: int) -> str:
        if self.class_names and 0 <= label < len(self.class_names):
            return str(self.class_names[label])
        return str(label)


def panel_indices(labels: np.ndarray, n: int) -> list[int]:
    """``n`` test-image indices, ascending: the first image of each class in file order, then the next images."""
    labels = np.asarray(labels)
    n = max(0, min(int(n), len(labels)))
    chosen: list[int] = []
    seen: set[int] = set()
    for i, label in enumerate(labels.tolist()):
        if len(chosen) == n:
            break
        if label not in seen:
            seen.add(label)
            chosen.append(i)
    for i in range(len(labels)):
        if len(chosen) == n:
            break
        if i not in chosen:
            chosen.append(i)
    return sorted(chosen)


def compute_panel(run: str | Path, n_images: int = 4, device: str | torch.device = "cpu",
                  data_dir: str | None = None) -> Panel:
    """Load the run's model and compute its Figure-2 rows (fp32) on ``n_images`` test images.

    The CAM and mask follow the run's mask settings (``fastpart.train.cam_function`` and
    ``fastpart.masks.eps_levels``, exactly as PART's training does); the perturbation is a cross-entropy
    PGD-10 (the run's step size, uniform start seeded by the run's seed) under the per-pixel budget
    ``EpsLevels(levels, eps, eps_low)`` for PART methods, else under the uniform ``eps``.
    Raises ``FastpartError`` when the checkpoint or the test split cannot be read.
    """
    loaded = load_run(run, device, data_dir=data_dir)
    cfg = replace(loaded.config, precision="fp32")
    model = loaded.model
    device = next(model.parameters()).device
    arrays = read_split(split_path(cfg.data_dir, cfg.dataset, "test"))
    indices = panel_indices(arrays.labels, n_images)
    if not indices:
        raise FastpartError(f"the test split of {cfg.dataset} is empty")
    x = torch.from_numpy(np.ascontiguousarray(arrays.images[indices])).to(device)
    x = x.permute(0, 3, 1, 2).float().div(255).contiguous()
    y = torch.as_tensor(arrays.labels[indices], dtype=torch.long, device=device)
    size = (int(x.shape[-2]), int(x.shape[-1]))
    with torch.no_grad():
        predictions = model(x).argmax(1)
    settings = mask_settings(cfg)
    cams = cam_function(model, cfg)(x, y if cfg.mask_target == "label" else None).float()
    levels, degenerate = eps_levels(cams, size, settings)
    pixel_reweighted = METHODS[cfg.method].pixel_reweighted if cfg.method in METHODS else cfg.method.startswith("part")
    eps = EpsLevels(levels, cfg.eps, cfg.eps_low) if pixel_reweighted else cfg.eps
    alpha = cfg.alpha if cfg.alpha is not None else 2 / 255
    generator = torch.Generator(device).manual_seed(cfg.seed)
    x_adv = pgd(model, x, y, eps, alpha, PANEL_STEPS, generator=generator)
    with torch.no_grad():
        adversarial_predictions = model(x_adv).argmax(1)
    shown = torch.nn.functional.interpolate(cams.unsqueeze(1), size=size, mode="bilinear", align_corners=False)[:, 0]
    lo = shown.flatten(1).amin(1).view(-1, 1, 1)
    hi = shown.flatten(1).amax(1).view(-1, 1, 1)
    shown = (shown - lo) / torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    return Panel(
        run_name=Path(loaded.run_dir).resolve().name, method=cfg.method, pixel_reweighted=pixel_reweighted,
        indices=indices, images=x.permute(0, 2, 3, 1).cpu().numpy(), labels=y.tolist(),
        predictions=predictions.tolist(), adversarial_predictions=adversarial_predictions.tolist(),
        cams=shown.cpu().numpy(), levels=levels.cpu().numpy(), degenerate=degenerate.cpu().tolist(),
        delta=(x_adv - x).permute(0, 2, 3, 1).cpu().numpy(), eps=float(cfg.eps), eps_low=float(cfg.eps_low),
        class_names=loaded.manifest.get("class_names"))


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
        if phase not in PHASE_COLOURS or not _is_number(epoch):
            continue
        if spans and spans[-1][0] == phase and spans[-1][2] == epoch - 0.5:
            spans[-1] = (phase, spans[-1][1], epoch + 0.5)
        else:
            spans.append((phase, epoch - 0.5, epoch + 0.5))
    return spans


def _series(metrics: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    points = [(r["epoch"], r[key]) for r in metrics if _is_number(r.get(key)) and _is_number(r.get("epoch"))]
    return [p[0] for p in points], [p[1] for p in points]


def training_figure(runs: Sequence[RunRecords]) -> bytes:
    """Loss, train natural/adversarial accuracy and test accuracies per epoch; one colour per run.

    One run: burn-in and masked phases shaded. Several: a dotted line where each run's masked phase starts.
    """
    from matplotlib.patches import Patch

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
        for j, key in enumerate(_test_keys(records.metrics)):
            epochs, values = _scaled(_series(records.metrics, key))
            test_ax.plot(epochs, values, marker="o", color=colour if not single else RUN_COLOURS[j % len(RUN_COLOURS)],
                         linestyle=("--", "-", ":", "-.")[j % 4] if not single else "-",
                         label=f"{tag}{_test_label(key)}")
        if single:
            for phase, start, stop in _phase_spans(records.metrics):
                for ax in (loss_ax, train_ax, test_ax):
                    ax.axvspan(start, stop, color=PHASE_COLOURS[phase], alpha=0.12, linewidth=0)
        else:
            masked = [r["epoch"] for r in records.metrics if r.get("phase") == "masked" and _is_number(r.get("epoch"))]
            if masked:
                for ax in (loss_ax, train_ax, test_ax):
                    ax.axvline(min(masked) - 0.5, color=colour, linestyle=":", linewidth=1)
    loss_ax.set_title("training loss")
    train_ax.set_title("training accuracy (%)")
    test_ax.set_title("test accuracy on eval epochs (%)")
    from matplotlib.ticker import MaxNLocator

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
    return _png(fig)


def _scaled(series: tuple[list[float], list[float]]) -> tuple[list[float], list[float]]:
    return series[0], [100 * v for v in series[1]]


def _curve_points(records: RunRecords) -> list[tuple[float, float]]:
    entry = records.results.get("eps-curve")
    curve = entry.get("curve") if isinstance(entry, dict) else None
    if not isinstance(curve, list):
        return []
    return [(p["eps"], p["accuracy"]) for p in curve
            if isinstance(p, dict) and _is_number(p.get("eps")) and _is_number(p.get("accuracy"))]


def eps_curve_figure(runs: Sequence[RunRecords]) -> bytes:
    """Accuracy against the L-inf budget (x in units of 1/255), one line per run; the training eps marked."""
    fig = _figure(6, 4)
    ax = fig.subplots()
    for i, records in enumerate(runs):
        points = _curve_points(records)
        if not points:
            continue
        colour = RUN_COLOURS[i % len(RUN_COLOURS)]
        ax.plot([255 * e for e, _ in points], [100 * a for _, a in points], marker="o", color=colour,
                label=records.name if len(runs) > 1 else records.results["eps-curve"].get("label", "accuracy"))
    train_eps = runs[0].config.get("eps")
    if _is_number(train_eps):
        ax.axvline(255 * train_eps, color="grey", linestyle=":", label=f"training eps {_budget(train_eps)}")
    ax.set_xlabel("eps (/255)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("accuracy vs eps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def accuracy_figure(runs: Sequence[RunRecords], names: Sequence[str]) -> bytes:
    """Grouped bars: one group per attack, one bar per run, value labels in percent."""
    fig = _figure(max(6.0, 1.3 * len(names) * len(runs)), 4)
    ax = fig.subplots()
    width = 0.8 / len(runs)
    for i, records in enumerate(runs):
        values = [records.results.get(n, {}).get("accuracy") for n in names]
        xs = [k + (i - (len(runs) - 1) / 2) * width for k in range(len(names))]
        heights = [100 * v if _is_number(v) else 0.0 for v in values]
        bars = ax.bar(xs, heights, width, label=records.name, color=RUN_COLOURS[i % len(RUN_COLOURS)])
        for bar, v in zip(bars, values):
            if _is_number(v):
                ax.annotate(f"{100 * v:.1f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title("test accuracy per attack")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def figure2(panels: Sequence[Panel]) -> bytes:
    """Rows: each image, for each model (models of one image next to each other); columns: image / CAM /
    mask (white = important, budget eps) / perturbation mapped from [-eps, eps] to [0, 1]."""
    n_images = max(len(p.indices) for p in panels)
    rows = [(panel, k) for k in range(n_images) for panel in panels if k < len(panel.indices)]
    fig = _figure(9, 2.3 * len(rows))
    axes = np.atleast_2d(fig.subplots(len(rows), 4, squeeze=False))
    several = len(panels) > 1
    for row, (panel, k) in enumerate(rows):
        ax_image, ax_cam, ax_mask, ax_delta = axes[row]
        image = np.clip(panel.images[k], 0, 1)
        ax_image.imshow(image, interpolation="nearest")
        ax_cam.imshow(image, interpolation="nearest")
        ax_cam.imshow(panel.cams[k], cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")
        levels = panel.levels[k]
        if levels.shape[0] == 1:
            ax_mask.imshow(levels[0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        else:
            ax_mask.imshow(levels[:3].transpose(1, 2, 0).astype(np.float32), interpolation="nearest")
        ax_delta.imshow(np.clip(0.5 + panel.delta[k] / (2 * panel.eps), 0, 1), interpolation="nearest")
        head = f"{panel.run_name} ({panel.method})\n" if several else ""
        ax_image.set_ylabel(f"{head}#{panel.indices[k]} {panel.class_name(panel.labels[k])}\n"
                            f"pred {panel.class_name(panel.predictions[k])}, "
                            f"adv {panel.class_name(panel.adversarial_predictions[k])}", fontsize=8)
        used = "" if panel.pixel_reweighted else " (unused)"
        flag = ", degenerate" if panel.degenerate[k] else ""
        ax_mask.set_title(f"mask{used}: {100 * panel.image_fractions()[k]:.1f}%{flag}", fontsize=8)
        budget = (f"eps {_budget(panel.eps)} / {_budget(panel.eps_low)}" if panel.pixel_reweighted
                  else f"eps {_budget(panel.eps)}")
        ax_delta.set_title(f"PGD-{PANEL_STEPS}, {budget}", fontsize=8)
        ax_cam.set_title("CAM", fontsize=8)
        ax_image.set_title("image", fontsize=8)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    return _png(fig)


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
        return lines + [f"No {EVAL_FILE} in `{records.path}`: run `fastpart eval {records.path}` for the accuracy "
                        "table. The training summary and curves follow.", ""]
    rows = [[name, entry.get("label", name), _accuracy_cell(name, entry), entry.get("n", "—"),
             _seconds(entry.get("seconds"))]
            for name, entry in records.results.items() if isinstance(entry, dict)]
    lines += [_evaluation_context(records), ""]
    lines += _table(["attack", "description", "accuracy", "n", "time"], rows) if rows else ["(no results in eval.json)"]
    lines += ["", "Paper row (percent; empty: not evaluated):", "", "```csv",
              "method," + ",".join(PAPER_COLUMNS), csv_row(records), "```", ""]
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
        ("final loss", f"{final['loss']:.4f}" if _is_number(final.get("loss")) else "—"),
    ]
    for key in _test_keys([test]):
        rows.append((f"test {_test_label(key)} (epoch {test.get('epoch')}, n {test.get('test_n', '?')})",
                     percent(test.get(key))))
    masked = [r for r in records.metrics if _is_number(r.get("important_fraction"))]
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
                     f"step {_budget(cfg.get('alpha'))}, eps {_budget(cfg.get('eps'))}"
                     + (f", eps_low {_budget(cfg.get('eps_low'))}, burn-in {cfg.get('burn_in')}, masks every "
                        f"{cfg.get('mask_freq')}" if str(cfg.get("method", "")).startswith("part") else "")
                     + f", precision {cfg.get('precision', '?')}")
    if versions:
        parts.append(", ".join(f"{k} {versions[k]}" for k in ("fastpart", "torch") if versions.get(k)))
    return ("Settings: " + "; ".join(parts) + ".") if parts else ""


def _training_section(records: RunRecords, figure: str | None) -> list[str]:
    lines = ["## Training", ""]
    rows = _training_rows(records)
    if not rows:
        lines += [f"No epochs recorded in `{records.path / METRICS_FILE}`.", ""]
    else:
        lines += _table(["", "value"], rows) + [""]
    if records.skipped_lines:
        lines += [f"({records.skipped_lines} unreadable line(s) of {METRICS_FILE} skipped.)", ""]
    environment = _environment_line(records)
    if environment:
        lines += [environment, ""]
    if figure:
        lines += [f"![training curves]({figure})", "",
                  "Training curves: loss, training accuracy (dashed: natural, solid: adversarial) and test accuracy "
                  "on the eval epochs" + ("; burn-in (orange) and masked (green) epochs shaded." if any(
                      r.get("phase") in PHASE_COLOURS for r in records.metrics) else "."), ""]
    return lines


def _checks_section(records: RunRecords, heading: str = "## Gradient-masking checks") -> list[str]:
    entry = records.results.get("checks")
    if not isinstance(entry, dict) or not isinstance(entry.get("checks"), list):
        return []
    rows = [[c.get("name", "?"), "pass" if c.get("passed") else "FAIL", c.get("detail", "")]
            for c in entry["checks"] if isinstance(c, dict)]
    verdict = "all passed" if entry.get("passed") else "at least one FAILED: the robust accuracy may be overstated"
    return ([heading, "", f"{entry.get('label', 'checks')}: **{verdict}**.", ""]
            + _table(["check", "result", "detail"], rows) + [""])


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
        present = [v for v in numbers if _is_number(v)]
        rows.append([corruption] + [percent(v, 1) for v in numbers]
                    + [percent(sum(present) / len(present), 1) if present else "—"])
    mean = percent(entry.get("accuracy"))
    return (["## CIFAR-10-C", "", f"{entry.get('label', 'CIFAR-10-C')}: mean accuracy **{mean}**.", ""]
            + _table(["corruption"] + [f"severity {s}" for s in severities] + ["mean"], rows) + [""])


def _panel_lines(panel: Panel, head: str = "") -> list[str]:
    fractions = ", ".join(f"#{i} {100 * f:.2f}%" for i, f in zip(panel.indices, panel.image_fractions()))
    lines = [f"- {head}test images: {', '.join(f'#{i}' for i in panel.indices)}",
             f"- {head}important pixels: {100 * panel.important_fraction():.2f}% of the panel's pixels "
             f"(per image: {fractions})" + ("" if panel.pixel_reweighted else " — shown only, not used by this run")]
    degenerate = sum(panel.degenerate)
    if degenerate:
        lines.append(f"- {head}degenerate maps: {degenerate} (eps everywhere)")
    if panel.pixel_reweighted:
        lines.append(f"- {head}largest |perturbation|: {255 * panel.max_delta(True):.2f}/255 on important pixels "
                     f"(budget {_budget(panel.eps)}), {255 * panel.max_delta(False):.2f}/255 on the others "
                     f"(budget {_budget(panel.eps_low)})")
    else:
        largest = max(panel.max_delta(True), panel.max_delta(False))
        lines.append(f"- {head}largest |perturbation|: {255 * largest:.2f}/255 (uniform budget {_budget(panel.eps)})")
    return lines


def _figure2_section(panels: Sequence[Panel], notes: Sequence[str], figure: str | None) -> list[str]:
    lines = ["## Figure 2: CAM, mask and perturbation", ""]
    if figure:
        lines += [f"![figure 2]({figure})", "",
                  f"Columns: test image; its CAM (run's CAM settings, fp32); the important-pixel mask (white: budget "
                  f"eps, black: eps_low; per colour channel in reference mask mode); the perturbation of a "
                  f"cross-entropy PGD-{PANEL_STEPS} under the run's budget, mapped from "
                  "[-eps, eps] to [0, 1]. Row labels: index, label, prediction on the image and on the adversarial "
                  "image.", ""]
        several = len(panels) > 1
        for panel in panels:
            lines += _panel_lines(panel, f"{panel.run_name}: " if several else "")
        lines.append("")
    for note in notes:
        lines += [f"Figure-2 panel skipped: {note}", ""]
    return lines


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


def _default_out(runs: Sequence[RunRecords]) -> Path:
    if len(runs) == 1:
        return runs[0].path / "report"
    return runs[0].path / ("report-vs-" + "-".join(r.name for r in runs[1:]))


def _panels(runs: Sequence[RunRecords], n_images: int, device: str, data_dir: str | None) -> tuple[list[Panel], list[str]]:
    panels, notes = [], []
    if n_images <= 0:
        return panels, ["--images 0."]
    for records in runs:
        try:
            panels.append(compute_panel(records.path, n_images, device, data_dir))
        except FastpartError as exc:
            hint = "" if data_dir else " (pass --data-dir where the converted dataset lives)"
            notes.append(f"`{records.name}`: {exc}{hint}")
    return panels, notes


def write_report(runs: Sequence[str | Path], out: str | Path | None = None, n_images: int = 4,
                 device: str = "cpu", data_dir: str | None = None) -> Path:
    """Write the report of one run, or the comparison of several, and return the markdown's path.

    ``out``: the report folder (default ``<run>/report`` for one run, ``<first run>/report-vs-<second
    run name>`` for two); it receives ``report.md`` and its PNG figures, each written atomically.
    ``n_images``: test images in the Figure-2 panel (0: none). ``data_dir`` overrides where the runs'
    converted datasets live; without the dataset the panel is skipped with a note.
    """
    if not runs:
        raise FastpartError("give at least one run folder")
    if n_images < 0:
        raise FastpartError(f"--images must be >= 0, got {n_images}")
    device = resolve_device(device)
    records = [read_run(r) for r in runs]
    folder = Path(out) if out is not None else _default_out(records)
    if folder.exists() and not folder.is_dir():
        raise FastpartError(f"--out {folder} exists and is not a folder")
    panels, notes = _panels(records, n_images, device, data_dir)
    figures: dict[str, bytes] = {}
    if any(r.metrics for r in records):
        figures["training.png"] = training_figure([r for r in records if r.metrics])
    if any(_curve_points(r) for r in records):
        figures["eps_curve.png"] = eps_curve_figure(records)
    if panels:
        figures["figure2.png"] = figure2(panels)
    if len(records) == 1:
        lines = _single_markdown(records[0], panels, notes, figures)
    else:
        names = _attack_names(records)
        if names:
            figures["accuracy.png"] = accuracy_figure(records, names)
        lines = _comparison_markdown(records, panels, notes, figures, names)
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
    lines += _figure2_section(panels, notes, "figure2.png" if "figure2.png" in figures else None)
    return lines


def _attack_names(runs: Sequence[RunRecords]) -> list[str]:
    """Attacks with a numeric accuracy in at least one run, in order of first appearance."""
    names: list[str] = []
    for records in runs:
        for name, entry in records.results.items():
            if isinstance(entry, dict) and _is_number(entry.get("accuracy")) and name not in names:
                names.append(name)
    return names


def _comparison_markdown(runs: list[RunRecords], panels: list[Panel], notes: list[str], figures: dict[str, bytes],
                         names: list[str]) -> list[str]:
    lines = ["# Comparison: " + " vs ".join(f"{r.name} ({_title(r)})" for r in runs), ""]
    lines += [f"- `{r.name}`: `{r.path}`" for r in runs] + [""]
    lines += ["## Evaluation", ""]
    for r in runs:
        lines.append(f"- `{r.name}`: " + (_evaluation_context(r) if r.evaluation is not None
                                          else f"no {EVAL_FILE} (run `fastpart eval {r.path}`)."))
    lines.append("")
    if names:
        two = len(runs) == 2
        header = ["attack"] + [r.name for r in runs] + ([f"Δ {runs[1].name} − {runs[0].name} (points)"] if two else [])
        rows = []
        for name in names:
            values = [r.results.get(name, {}).get("accuracy") for r in runs]
            row = [name] + [percent(v) for v in values]
            if two:
                row.append(f"{100 * (values[1] - values[0]):+.2f}" if all(_is_number(v) for v in values) else "—")
            rows.append(row)
        lines += _table(header, rows) + ["", "![accuracies side by side](accuracy.png)", ""]
        lines += ["Paper rows (percent):", "", "```csv", "method," + ",".join(PAPER_COLUMNS)]
        lines += [csv_row(r) for r in runs if r.evaluation is not None] + ["```", ""]
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
                  "One colour per run; dashed: natural, solid: adversarial.", ""]
    lines += _figure2_section(panels, notes, "figure2.png" if "figure2.png" in figures else None)
    return lines
