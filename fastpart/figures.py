"""The PNG figures of ``fastpart report``, and the Figure-2 panel they draw.

* ``training_figure``: loss, train natural/adversarial accuracy and the test accuracies of the eval
  epochs against the epoch, burn-in and masked phases shaded; several runs overlaid.
* ``eps_curve_figure``: accuracy against the budget (eval.json's eps-curve), the training eps marked.
* ``accuracy_figure``: grouped bars, one group per attack, one bar per run.
* ``figure2``: after the paper's Figure 2, for a few test images, the image, its CAM, the important-pixel
  mask (PART's per-pixel budget) and the perturbation of a mask-weighted PGD-10 (``compute_panel``).

Figures are drawn with matplotlib's Agg canvas, without pyplot, so no global backend is changed; each
function returns the PNG's bytes.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from fastpart.attacks.pgd import pgd
from fastpart.data.splitfiles import read_split, split_path
from fastpart.errors import FastpartError
from fastpart.budgets import EpsLevels
from fastpart.config import METHODS
from fastpart.loader import to_model_input
from fastpart.part import cam_targets, display_cam, eps_levels
from fastpart.records import RunRecords, is_number
from fastpart.resolve import mask_plan
from fastpart.runfolder import load_run

__all__ = ["Panel", "accuracy_figure", "compute_panel", "eps_curve_figure", "figure2", "panel_indices",
           "training_figure"]

PANEL_STEPS = 10
PHASE_COLOURS = {"burn-in": "tab:orange", "masked": "tab:green"}
RUN_COLOURS = ("tab:blue", "tab:red", "tab:green", "tab:purple", "tab:brown", "tab:olive", "tab:cyan")


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

    The CAM and mask follow the run's mask settings (its ``MaskPlan``'s CAM function and
    ``fastpart.part.eps_levels``, exactly as PART's training does); the perturbation is a cross-entropy
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
    x = to_model_input(torch.from_numpy(np.ascontiguousarray(arrays.images[indices])).to(device), torch.float32)
    x = x.contiguous()
    y = torch.as_tensor(arrays.labels[indices], dtype=torch.long, device=device)
    size = (int(x.shape[-2]), int(x.shape[-1]))
    with torch.no_grad():
        predictions = model(x).argmax(1)
    plan = mask_plan(cfg)
    cams = plan.cam_function(model)(x, cam_targets(plan.settings, y)).float()
    levels, degenerate = eps_levels(cams, size, plan.settings)
    pixel_reweighted = METHODS[cfg.method].pixel_reweighted if cfg.method in METHODS else cfg.method.startswith("part")
    eps = EpsLevels(levels, cfg.eps, cfg.eps_low) if pixel_reweighted else cfg.eps
    alpha = cfg.alpha if cfg.alpha is not None else 2 / 255
    generator = torch.Generator(device).manual_seed(cfg.seed)
    x_adv = pgd(model, x, y, eps, alpha, PANEL_STEPS, generator=generator)
    with torch.no_grad():
        adversarial_predictions = model(x_adv).argmax(1)
    shown = display_cam(cams, size)
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
        for j, key in enumerate(test_keys(records.metrics)):
            epochs, values = _scaled(_series(records.metrics, key))
            test_ax.plot(epochs, values, marker="o", color=colour if not single else RUN_COLOURS[j % len(RUN_COLOURS)],
                         linestyle=("--", "-", ":", "-.")[j % 4] if not single else "-",
                         label=f"{tag}{test_label(key)}")
        if single:
            for phase, start, stop in _phase_spans(records.metrics):
                for ax in (loss_ax, train_ax, test_ax):
                    ax.axvspan(start, stop, color=PHASE_COLOURS[phase], alpha=0.12, linewidth=0)
        else:
            masked = [r["epoch"] for r in records.metrics if r.get("phase") == "masked" and is_number(r.get("epoch"))]
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


def curve_points(records: RunRecords) -> list[tuple[float, float]]:
    entry = records.results.get("eps-curve")
    curve = entry.get("curve") if isinstance(entry, dict) else None
    if not isinstance(curve, list):
        return []
    return [(p["eps"], p["accuracy"]) for p in curve
            if isinstance(p, dict) and is_number(p.get("eps")) and is_number(p.get("accuracy"))]


def eps_curve_figure(runs: Sequence[RunRecords]) -> bytes:
    """Accuracy against the L-inf budget (x in units of 1/255), one line per run; the training eps marked."""
    fig = _figure(6, 4)
    ax = fig.subplots()
    for i, records in enumerate(runs):
        points = curve_points(records)
        if not points:
            continue
        colour = RUN_COLOURS[i % len(RUN_COLOURS)]
        ax.plot([255 * e for e, _ in points], [100 * a for _, a in points], marker="o", color=colour,
                label=records.name if len(runs) > 1 else records.results["eps-curve"].get("label", "accuracy"))
    train_eps = runs[0].config.get("eps")
    if is_number(train_eps):
        ax.axvline(255 * train_eps, color="grey", linestyle=":", label=f"training eps {budget_label(train_eps)}")
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
        heights = [100 * v if is_number(v) else 0.0 for v in values]
        bars = ax.bar(xs, heights, width, label=records.name, color=RUN_COLOURS[i % len(RUN_COLOURS)])
        for bar, v in zip(bars, values):
            if is_number(v):
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
        budget = (f"eps {budget_label(panel.eps)} / {budget_label(panel.eps_low)}" if panel.pixel_reweighted
                  else f"eps {budget_label(panel.eps)}")
        ax_delta.set_title(f"PGD-{PANEL_STEPS}, {budget}", fontsize=8)
        ax_cam.set_title("CAM", fontsize=8)
        ax_image.set_title("image", fontsize=8)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    return _png(fig)
