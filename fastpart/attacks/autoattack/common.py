"""What the fast and the reference AutoAttack share: the standard version's settings, the records of a run and
its progress, the model wrapper, the batch-invariance probe, and the small functions of APGD, FAB and Square."""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn


STANDARD_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")
BACKENDS = ("fast", "reference")

# The standard version's settings (pyautoattack.AutoAttack._set_version("standard"), L-inf).
APGD_ITERATIONS = 100
APGD_RHO = 0.75
FAB_ITERATIONS, FAB_ALPHA_MAX, FAB_ETA, FAB_BETA = 100, 0.1, 1.05, 0.9
SQUARE_QUERIES, SQUARE_P_INIT = 5000, 0.8
PROBE_POINTS = 48
MIN_BATCH = 8  # below this many points the fast path computes the reference's batches as they are


# ---------------------------------------------------------------------------------------------
# Results and progress
# ---------------------------------------------------------------------------------------------


@dataclass
class AttackRecord:
    """One attack of the sequence: its wall time, the points still robust before and after it, and the
    positions (in x) of the points it fooled."""

    attack: str
    seconds: float
    robust_before: int
    robust_after: int
    fooled: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"attack": self.attack, "seconds": round(self.seconds, 3), "robust_before": self.robust_before,
                "robust_after": self.robust_after}


@dataclass
class AutoAttackInfo:
    """What ``autoattack`` did: the backend that ran (``fast``, ``reference``, or the reference as the fast
    path's fallback, with the reason in ``note``), the clean and robust counts, per-attack records, and the
    worker threads the fast path computed with (1 for the reference)."""

    backend: str
    attacks: list[str]
    seed: int
    eps: float
    n: int
    clean: int
    robust: int
    seconds: float
    per_attack: list[AttackRecord]
    robust_mask: torch.Tensor
    n_target_classes: int
    note: str = ""
    workers: int = 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: everything but the per-point mask and lists."""
        out = {"backend": self.backend, "attacks": list(self.attacks), "seed": self.seed, "eps": self.eps,
               "n": self.n, "clean": self.clean, "robust": self.robust, "seconds": round(self.seconds, 3),
               "n_target_classes": self.n_target_classes, "workers": self.workers,
               "per_attack": [r.to_dict() for r in self.per_attack]}
        if self.note:
            out["note"] = self.note
        return out


@dataclass
class AutoAttackProgress:
    """A progress report: ``attack`` has done ``done`` of ``total`` units (iterations, targets x iterations,
    queries), ``robust`` points are robust so far, ``seconds`` since the attack started; ``finished`` on the
    attack's last report."""

    attack: str
    done: int
    total: int
    robust: int
    seconds: float
    finished: bool = False


ProgressFn = Callable[[AutoAttackProgress], None]


class _Reporter:
    """Hands progress to a callback, or draws a tqdm bar per attack (``progress=True``), or nothing."""

    def __init__(self, progress: bool | ProgressFn | None, min_interval: float = 0.5):
        self.callback = progress if callable(progress) else None
        self.bars = progress is True
        self.min_interval = min_interval
        self.bar: Any = None
        self.attack, self.total, self.start, self.last = "", 0, 0.0, 0.0

    def begin(self, attack: str, total: int, robust: int) -> None:
        self.attack, self.total, self.start, self.last = attack, total, time.perf_counter(), 0.0
        if self.bars:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=attack, leave=False, mininterval=self.min_interval)
            self.bar.set_postfix(robust=robust)
        self._send(0, robust, False)

    def step(self, done: int, robust: int) -> None:
        now = time.perf_counter()
        if now - self.last < self.min_interval:
            return
        self.last = now
        if self.bar is not None:
            self.bar.n = done
            self.bar.set_postfix(robust=robust, refresh=True)
        self._send(done, robust, False)

    def end(self, robust: int) -> None:
        if self.bar is not None:
            self.bar.n = self.total
            self.bar.set_postfix(robust=robust, refresh=True)
            self.bar.close()
            self.bar = None
        self._send(self.total, robust, True)

    def _send(self, done: int, robust: int, finished: bool) -> None:
        if self.callback is not None:
            self.callback(AutoAttackProgress(self.attack, done, self.total, robust,
                                             time.perf_counter() - self.start, finished))


# ---------------------------------------------------------------------------------------------
# The model as both backends see it
# ---------------------------------------------------------------------------------------------


class _ContiguousGradient(torch.autograd.Function):
    """Identity whose backward hands the input a contiguous gradient (AutoAttack .view()s gradients)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


class FloatLogits(nn.Module):
    """The model under autocast (if any), returning float32 logits: what both backends attack."""

    def __init__(self, model: nn.Module, autocast: torch.dtype | None = None):
        super().__init__()
        self.model, self.autocast = model, autocast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _ContiguousGradient.apply(x) if x.requires_grad else x
        with torch.autocast(x.device.type, dtype=self.autocast, enabled=self.autocast is not None):
            return self.model(x).float()


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def batch_invariant(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                    full_logits: torch.Tensor | None = None) -> bool:
    """Whether ``f`` computes each point's logits and input gradient bit for bit the same in batches of
    ``MIN_BATCH`` points or more, whatever the other points: the first ``PROBE_POINTS`` points in one batch
    against the same points in batches of 8, 9, 11 and 20, of 16 and 32, of 13 and 35 (fewer points: the
    sizes cut short, a last short batch padded with repeats), and ``full_logits`` (f(x) in one batch, no
    autograd) when given. Fewer than ``MIN_BATCH`` points need no check: the fast path then computes the
    reference's batches as they are."""
    if len(x) < MIN_BATCH:
        return True
    n = min(len(x), PROBE_POINTS)
    xs, ys = x[:n], y[:n]

    def grads(batch: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = len(batch)
        if k < MIN_BATCH:
            batch, labels = _pad(batch), _pad(labels)
        batch = batch.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            logits = f(batch)
            loss = F.cross_entropy(logits, labels, reduction="none").sum()
        return logits.detach()[:k], torch.autograd.grad(loss, [batch])[0][:k]

    logits, grad = grads(xs, ys)
    if full_logits is not None and not torch.equal(full_logits[:n], logits):
        return False
    for plan in ((8, 9, 11, 20), (16, 32), (13, 35)):
        sizes, start = [], 0
        for size in plan:
            if start < n:
                sizes.append(min(size, n - start))
                start += sizes[-1]
        if start < n:
            sizes.append(n - start)
        pieces = [grads(b, lab) for b, lab in zip(xs.split(sizes), ys.split(sizes))]
        if not (torch.equal(torch.cat([p[0] for p in pieces]), logits)
                and torch.equal(torch.cat([p[1] for p in pieces]), grad)):
            return False
    return True


# ---------------------------------------------------------------------------------------------
# The fast path
# ---------------------------------------------------------------------------------------------


def _normalize_linf(t: torch.Tensor) -> torch.Tensor:
    """APGDAttack.normalize (L-inf)."""
    m = t.abs().view(t.shape[0], -1).max(1)[0]
    return t / (m.view(-1, *([1] * (t.dim() - 1))) + 1e-12)


def _check_oscillation(losses: torch.Tensor, j: int, k: int, k3: float = APGD_RHO) -> torch.Tensor:
    """APGDAttack.check_oscillation (its negative indices wrap around to the last, unwritten rows, as there)."""
    t = torch.zeros(losses.shape[1], device=losses.device)
    for counter5 in range(k):
        t += (losses[j - counter5] > losses[j - counter5 - 1]).float()
    return (t <= k * k3 * torch.ones_like(t)).float()


def _dlr_targeted(logits: torch.Tensor, y: torch.Tensor, y_target: torch.Tensor) -> torch.Tensor:
    """APGDAttack_targeted.dlr_loss_targeted."""
    x_sorted, _ = logits.sort(dim=1)
    u = torch.arange(logits.shape[0], device=logits.device)
    return -(logits[u, y] - logits[u, y_target]) / (x_sorted[:, -1] - .5 * (x_sorted[:, -3] + x_sorted[:, -4]) + 1e-12)


def _p_selection(it: int, p_init: float = SQUARE_P_INIT) -> float:
    """SquareAttack.p_selection without rescaling (AutoAttack's Square: resc_schedule=False)."""
    for bound, div in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128),
                       (8000, 256)):
        if it <= bound:
            return p_init / div
    return p_init / 512


def _projection_linf(points_to_project: torch.Tensor, w_hyperplane: torch.Tensor,
                     b_hyperplane: torch.Tensor) -> torch.Tensor:
    """pyautoattack.fab_projections.projection_linf, the same numbers row by row, without its copies of the
    rows it selects (every row is searched; a row's result is selected at the end)."""
    t, w, b = points_to_project, w_hyperplane.clone(), b_hyperplane.clone()

    sign = 2 * ((w * t).sum(1) - b >= 0) - 1
    w.mul_(sign.unsqueeze(1))
    b.mul_(sign)

    a = (w < 0).float()
    d = (a - t) * (w != 0).float()

    p = a - t * (2 * a - 1)
    indp = torch.argsort(p, dim=1)

    b = b - (w * t).sum(1)
    b0 = (w * d).sum(1)

    indp2 = indp.flip((1,))
    ws = w.gather(1, indp2)
    bs2 = - ws * d.gather(1, indp2)

    s = torch.cumsum(ws.abs(), dim=1)
    sb = torch.cumsum(bs2, dim=1) + b0.unsqueeze(1)

    b2 = sb[:, -1] - s[:, -1] * p.gather(1, indp[:, 0:1]).squeeze(1)
    c_l = b - b2 > 0
    c2 = (b - b0 > 0) & (~c_l)
    lb = torch.zeros(len(w), device=w.device)
    ub = torch.full_like(lb, w.shape[1] - 1)
    nitermax = math.ceil(math.log2(w.shape[1]))

    for counter in range(nitermax):
        counter4 = torch.floor((lb + ub) / 2)

        counter2 = counter4.long().unsqueeze(1)
        indcurr = indp.gather(1, indp.size(1) - 1 - counter2)
        b2 = (sb.gather(1, counter2) - s.gather(1, counter2) * p.gather(1, indcurr)).squeeze(1)
        c = b - b2 > 0

        lb = torch.where(c, counter4, lb)
        ub = torch.where(c, ub, counter4)

    lb2 = lb.long().unsqueeze(1)
    lmbd_l = torch.clamp_min((b - sb[:, -1]) / (-s[:, -1]), min=0).unsqueeze(-1)
    lmbd_2 = torch.clamp_min((b - sb.gather(1, lb2).squeeze(1)) / (-s.gather(1, lb2).squeeze(1)), min=0).unsqueeze(-1)
    d = torch.where(c_l.unsqueeze(1), (2 * a - 1) * lmbd_l, d)
    d = torch.where(c2.unsqueeze(1), torch.min(lmbd_2, d) * a + torch.max(-lmbd_2, d) * (1 - a), d)

    return d * (w != 0).float()


def _pad(t: torch.Tensor) -> torch.Tensor:
    """Rows repeated to MIN_BATCH rows."""
    return t[torch.arange(MIN_BATCH, device=t.device) % len(t)]


def _ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def _fab_diff(logits: torch.Tensor, la: torch.Tensor, la_target: torch.Tensor) -> torch.Tensor:
    """FABAttack_PT.get_diff_logits_grads_batch_targeted's diffy."""
    u = torch.arange(logits.shape[0], device=logits.device)
    return -(logits[u, la] - logits[u, la_target])
