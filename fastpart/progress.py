"""What a training run says about itself: the line that opens it, the early estimate of its length, and
durations as people read them.

    fastpart train: part on cifar10 (50,000 training images), resnet18_cifar, 80 epochs (burn-in 20, masks
    every 10), PGD-10 eps 8/255 (7/255 outside the mask), alpha 2/255, batch 128, lr 0.01; cpu fp32; runs/latest
    fastpart train: 80 epochs: about 7 d 17 h on cpu (6 img/s) ...
"""

from __future__ import annotations

from fastpart.config import METHODS, TrainConfig
from fastpart.options import budget_label

__all__ = ["LONG_ON_CPU", "describe", "duration", "estimate"]

LONG_ON_CPU = 3 * 3600  # an estimate above this on a CPU suggests a GPU or a shorter schedule


def duration(seconds: float) -> str:
    """3 d 2 h, 2 h 10 min, 4 min, 40 s."""
    seconds = max(0.0, float(seconds))
    minutes, hours, days = seconds / 60, seconds / 3600, seconds / 86400
    if days >= 1:
        return f"{int(days)} d {int(hours % 24)} h"
    if hours >= 1:
        return f"{int(hours)} h {int(minutes % 60)} min"
    if minutes >= 1:
        return f"{round(minutes)} min"
    return f"{round(seconds)} s"


def describe(cfg: TrainConfig, images: int, start_epoch: int = 0) -> str:
    """The line that opens a run (a resolved config): what will run, on what, where it writes."""
    method = METHODS[cfg.method]
    schedule = f"{cfg.epochs} epochs"
    if method.pixel_reweighted:
        schedule += f" (burn-in {cfg.burn_in}, masks " + (f"every {cfg.mask_freq})" if cfg.mask_freq else
                                                          "per batch)")
    budget = f"eps {budget_label(cfg.eps)}" + (f" ({budget_label(cfg.eps_low)} outside the mask)"
                                               if method.pixel_reweighted else "")
    single = {"fgsm-rs": "FGSM-RS (step 1.25 eps)", "n-fgsm": "N-FGSM (noise 2 eps, step eps)"}
    if cfg.ae in single:
        attack = f"{single[cfg.ae]} {budget}"
    else:
        attack = f"{'PGD' if cfg.ae == 'pgd' else cfg.ae.upper()}-{cfg.steps} {budget}, alpha {budget_label(cfg.alpha)}"
    resumed = f", resuming after epoch {start_epoch}" if start_epoch else ""
    extras = [f"{cfg.activation}" if cfg.activation != "relu" else "",
              f"AWP gamma {cfg.awp:g} from epoch {(cfg.awp_warmup or 0) + 1}" if cfg.awp is not None else "",
              f"label smoothing {cfg.label_smoothing:g}" if cfg.label_smoothing else "",
              f"EMA {cfg.ema:g}" if cfg.ema is not None else ""]
    extra = "".join(f", {e}" for e in extras if e)
    return (f"fastpart train: {cfg.method} on {cfg.dataset} ({images:,} training images), {cfg.model}, {schedule}, "
            f"{attack}, batch {cfg.batch_size}, lr {cfg.lr:g}{extra}; "
            f"{cfg.device} {cfg.precision}; run folder {cfg.out}{resumed}")


def estimate(cfg: TrainConfig, epochs_left: int, batches_per_epoch: int, seconds_per_batch: float,
             batch_size: int) -> str:
    """The early estimate of what is left of a run, from the time of its first batches; on a CPU, a run of
    more than a few hours is pointed to a GPU or a shorter schedule (it is not refused)."""
    seconds = epochs_left * batches_per_epoch * seconds_per_batch
    rate = batch_size / max(seconds_per_batch, 1e-9)
    line = (f"fastpart train: {epochs_left} epochs: about {duration(seconds)} on {cfg.device} ({rate:,.0f} img/s, "
            f"training alone)")
    if cfg.device == "cpu" and seconds > LONG_ON_CPU:
        line += ("; that is long for a CPU: a GPU runs it in a fraction of that, or shorten the schedule "
                 "(--epochs, a smaller --model)")
    return line
