"""The per-batch schedules of a run, as functions of the training time t = epoch + batch / batches (0 at the
start, ``epochs`` at the end), so that a resumed run recomputes them exactly, with no state to save.

    step      the paper's schedule: lr / 10 at each milestone epoch (``fastpart train``'s MultiStepLR), after an
              optional linear warm-up from 0 over ``lr_warmup`` epochs
    onecycle  Wong, Rice & Kolter, "Fast is better than free: revisiting adversarial training" (ICLR 2020):
              lr rises linearly from 0 to --lr at 2/5 of the epochs, then falls linearly to 0 at the end
    eps ramp  ``eps_delay`` D and ``eps_warmup`` E: the budget is 0 (clean training) until t = D, then
              eps * min(1, (t - D) / E) (PART's eps and eps_low alike, so their ratio is kept; the attack's
              step size stays), as fast adversarial training ramps its budget. A network at initialisation
              that is attacked from the first step (even with a small budget) collapses to the uniform
              prediction for epochs: the clean start is what lets a short run learn at once

``Schedule.per_batch`` says whether the learning rate is set batch by batch (a warm-up or one-cycle);
without it the step schedule is the MultiStepLR of the paper's recipe, exactly as before.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

__all__ = ["ONECYCLE_PEAK", "Schedule"]

ONECYCLE_PEAK = 0.4  # the one-cycle peak, as a fraction of the epochs (Wong et al.: 2/5)


@dataclass(frozen=True)
class Schedule:
    """Learning rate and budget scale against the training time t (in epochs)."""

    lr: float
    epochs: int
    kind: str = "step"  # step or onecycle
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    lr_warmup: float = 0.0  # epochs of linear warm-up from 0 (step schedule)
    eps_warmup: float = 0.0  # epochs of the linear budget ramp from 0
    eps_delay: float = 0.0  # epochs of clean training (budget 0) before the ramp

    @property
    def per_batch(self) -> bool:
        """The learning rate changes within an epoch (set before every batch)."""
        return self.kind != "step" or self.lr_warmup > 0

    def lr_at(self, t: float) -> float:
        if self.kind == "onecycle":
            peak = ONECYCLE_PEAK * self.epochs
            if t <= peak:
                return self.lr * t / peak
            return self.lr * max(0.0, (self.epochs - t) / (self.epochs - peak))
        decayed = self.lr * self.gamma ** bisect_right(sorted(self.milestones), int(t))
        return decayed * min(1.0, t / self.lr_warmup) if self.lr_warmup > 0 else decayed

    def eps_scale(self, t: float) -> float:
        """The fraction of the budget in use at time t: 1 after the ramp (or without one)."""
        if t < self.eps_delay:
            return 0.0
        return min(1.0, (t - self.eps_delay) / self.eps_warmup) if self.eps_warmup > 0 else 1.0
