"""The Figure-2 panel of ``fastpart report``, after the paper's Figure 2: for a few test images, the image, its
CAM, the important-pixel mask (PART's per-pixel budget: ``eps`` on important pixels, ``eps_low`` elsewhere) and
the size of the perturbation of a mask-weighted PGD-10 under that budget.

* ``compute_panel``: a run's model on a few test images -> ``Panel`` (numpy arrays);
* ``figure2_chart`` / ``figure2``: the drawn figure (matplotlib's Agg canvas, no pyplot) / its PNG bytes;
* ``figure2_section``: the report's markdown about it.

The perturbation column shows |delta| per pixel (the largest over the colour channels) on one colour scale for
the whole figure, from 0 to the largest budget of its panels, with a colour bar in /255 and the important-pixel
mask's outline drawn over it: PART's 8/255 inside the outline and 7/255 outside are told apart at a glance.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from fastpart.attacks.pgd import pgd
from fastpart.budgets import EpsLevels
from fastpart.config import METHODS
from fastpart.data.splitfiles import read_split, split_path
from fastpart.errors import FastpartError
from fastpart.loader import to_model_input
from fastpart.options import budget_label
from fastpart.part import cam_targets, display_cam, eps_levels
from fastpart.resolve import mask_plan
from fastpart.runfolder import load_run

__all__ = ["PANEL_STEPS", "Panel", "compute_panel", "figure2", "figure2_chart", "figure2_section", "panel_indices"]

PANEL_STEPS = 10
OUTLINE = "cyan"  # the mask's outline over the perturbation


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
# The figure
# ---------------------------------------------------------------------------------------------


def perturbation_size(panel: Panel, k: int) -> np.ndarray:
    """|delta| of image ``k`` per pixel, the largest over the colour channels, in units of 1/255: (H, W)."""
    return 255 * np.abs(panel.delta[k]).max(axis=-1)


def mask_outline(panel: Panel, k: int) -> np.ndarray:
    """Image ``k``'s important pixels (any channel's level 1, so the budget eps reaches them) as 0/1 floats: (H, W)."""
    return panel.levels[k].max(axis=0).astype(np.float32)


def _budgets(panels: Sequence[Panel]) -> list[float]:
    """The budgets of the panels in /255, ascending: eps and, for PART panels, eps_low."""
    found = {round(255 * p.eps, 4) for p in panels} | {round(255 * p.eps_low, 4) for p in panels if p.pixel_reweighted}
    return sorted(found)


def figure2_chart(panels: Sequence[Panel]):
    """The drawn Figure 2 (a matplotlib ``Figure``). Rows: each image, for each model (models of one image next to
    each other); columns: image / CAM / mask (white = important, budget eps) / |perturbation| per pixel on one
    scale, 0 to the largest budget, the mask's outline over it (dashed where the run does not use the mask)."""
    from matplotlib.figure import Figure

    n_images = max(len(p.indices) for p in panels)
    rows = [(panel, k) for k in range(n_images) for panel in panels if k < len(panel.indices)]
    fig = Figure(figsize=(10, 2.3 * len(rows)), dpi=100)
    axes = np.atleast_2d(fig.subplots(len(rows), 4, squeeze=False))
    budgets = _budgets(panels)
    several = len(panels) > 1
    shown = None
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
        shown = ax_delta.imshow(perturbation_size(panel, k), cmap="magma", vmin=0, vmax=budgets[-1],
                                interpolation="nearest")
        outline = mask_outline(panel, k)
        if outline.min() < 0.5 < outline.max():  # some pixels important, some not: an outline to draw
            ax_delta.contour(outline, levels=[0.5], colors=OUTLINE, linewidths=1,
                             linestyles="solid" if panel.pixel_reweighted else "dashed")
        head = f"{panel.run_name} ({panel.method})\n" if several else ""
        ax_image.set_ylabel(f"{head}#{panel.indices[k]} {panel.class_name(panel.labels[k])}\n"
                            f"pred {panel.class_name(panel.predictions[k])}, "
                            f"adv {panel.class_name(panel.adversarial_predictions[k])}", fontsize=8)
        used = "" if panel.pixel_reweighted else " (unused)"
        flag = ", degenerate" if panel.degenerate[k] else ""
        ax_mask.set_title(f"mask{used}: {100 * panel.image_fractions()[k]:.1f}%{flag}", fontsize=8)
        budget = (f"eps {budget_label(panel.eps)} in / {budget_label(panel.eps_low)} out" if panel.pixel_reweighted
                  else f"eps {budget_label(panel.eps)}")
        ax_delta.set_title(f"|perturbation|, PGD-{PANEL_STEPS}\n{budget}", fontsize=8)
        ax_cam.set_title("CAM", fontsize=8)
        ax_image.set_title("image", fontsize=8)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    bar = fig.colorbar(shown, ax=list(axes[:, 3]), fraction=0.08, pad=0.03, ticks=sorted({0.0, *budgets}))
    bar.set_label("|perturbation| (/255), largest over RGB", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return fig


def figure2(panels: Sequence[Panel]) -> bytes:
    """``figure2_chart`` as PNG bytes."""
    buffer = io.BytesIO()
    figure2_chart(panels).savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# The markdown
# ---------------------------------------------------------------------------------------------


def panel_lines(panel: Panel, head: str = "") -> list[str]:
    fractions = ", ".join(f"#{i} {100 * f:.2f}%" for i, f in zip(panel.indices, panel.image_fractions()))
    lines = [f"- {head}test images: {', '.join(f'#{i}' for i in panel.indices)}",
             f"- {head}important pixels: {100 * panel.important_fraction():.2f}% of the panel's pixels "
             f"(per image: {fractions})" + ("" if panel.pixel_reweighted else " — shown only, not used by this run")]
    degenerate = sum(panel.degenerate)
    if degenerate:
        lines.append(f"- {head}degenerate maps: {degenerate} (eps everywhere)")
    if panel.pixel_reweighted:
        lines.append(f"- {head}largest |perturbation|: {255 * panel.max_delta(True):.2f}/255 on important pixels "
                     f"(budget {budget_label(panel.eps)}), {255 * panel.max_delta(False):.2f}/255 on the others "
                     f"(budget {budget_label(panel.eps_low)})")
    else:
        largest = max(panel.max_delta(True), panel.max_delta(False))
        lines.append(f"- {head}largest |perturbation|: {255 * largest:.2f}/255 (uniform budget {budget_label(panel.eps)})")
    return lines


def figure2_section(panels: Sequence[Panel], notes: Sequence[str], figure: str | None) -> list[str]:
    lines = ["## Figure 2: CAM, mask and perturbation", ""]
    if figure:
        top = budget_label(max(_budgets(panels)) / 255)
        lines += [f"![figure 2]({figure})", "",
                  "Columns: test image; its CAM (run's CAM settings, fp32); the important-pixel mask (white: budget "
                  "eps, black: eps_low; per colour channel in reference mask mode); the size of the perturbation of a "
                  f"cross-entropy PGD-{PANEL_STEPS} under the run's budget: |perturbation| per pixel, the largest over "
                  f"the colour channels, on one colour scale from 0 to {top} for every row (colour bar in /255), "
                  f"with the mask's outline in {OUTLINE} (dashed: a run that does not use the mask). Row labels: "
                  "index, label, prediction on the image and on the adversarial image.", ""]
        several = len(panels) > 1
        for panel in panels:
            lines += panel_lines(panel, f"{panel.run_name}: " if several else "")
        lines.append("")
    for note in notes:
        lines += [f"Figure-2 panel skipped: {note}", ""]
    return lines
