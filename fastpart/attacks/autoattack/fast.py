"""The fast path: the standard sequence point by point as pyautoattack computes it, settled points leaving early,
the points of a batch split over worker processes (``shards``)."""

from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn

from fastpart.attacks.autoattack.common import (APGD_ITERATIONS, FAB_ITERATIONS, MIN_BATCH, SQUARE_QUERIES,
                                               AttackRecord, _ce, _check_oscillation, _dlr_targeted,
                                               _normalize_linf, _pad, _Reporter)
from fastpart.attacks.autoattack.fab import _FabT
from fastpart.attacks.autoattack.shards import Workers, gather
from fastpart.attacks.autoattack.square import _Square


class _Fast(_FabT, _Square):
    """The standard sequence, point by point as in pyautoattack, with settled points leaving early.

    Batches. Where the reference computes a batch of fewer than ``MIN_BATCH`` points, the fast path
    computes exactly that batch, with the reference's contents (it prunes nothing there, and returns what
    the reference returns). Where the reference's batch is larger, the fast path may compute fewer of its
    points, padded to ``MIN_BATCH`` rows, relying on the model's batch invariance from that size up
    (``batch_invariant``); such a batch's points may also be split over the ``workers`` processes."""

    def __init__(self, f: nn.Module, x: torch.Tensor, y: torch.Tensor, clean_logits: torch.Tensor, eps: float,
                 seed: int, targets: int, reporter: _Reporter, workers: int = 1):
        self.f, self.x, self.y, self.clean_logits = f, x, y, clean_logits
        self.eps, self.seed, self.targets, self.reporter = eps, seed, targets, reporter
        self.device = x.device
        self.workers = Workers(workers)

    # -- model calls -----------------------------------------------------------------------------

    def logits(self, x: torch.Tensor, exact: bool) -> torch.Tensor:
        """f(x) without autograd. ``exact``: x is a batch the reference computes as it is; else x holds
        some points of a reference batch of ``MIN_BATCH`` or more (padded to that size here)."""
        with torch.inference_mode():
            if not exact and len(x) < MIN_BATCH:
                return self.f(_pad(x))[:len(x)]
            return self.f(x)

    def grad(self, x: torch.Tensor, loss: Callable[..., torch.Tensor], rows: tuple[torch.Tensor, ...],
             exact: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, per-point loss, d sum(loss) / dx) at x; ``rows``: the loss's per-point arguments;
        ``exact`` as for ``logits``."""
        n = len(x)
        if not exact and n < MIN_BATCH:
            x, rows = _pad(x), tuple(_pad(r) for r in rows)
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self.f(x)
            loss_indiv = loss(logits, *rows)
            grad = torch.autograd.grad(loss_indiv.sum(), [x])[0].detach()
        return logits.detach()[:n], loss_indiv.detach()[:n], grad[:n]

    def clean_rows(self, idx: torch.Tensor) -> torch.Tensor:
        """The clean logits of the points ``idx`` as the reference gets them computing just these points."""
        if len(idx) == len(self.x) or len(idx) >= MIN_BATCH:
            return self.clean_logits[idx]
        return self.logits(self.x[idx], exact=True)

    def in_shards(self, like: torch.Tensor, report: Callable[[int, int], None],
                  fn: Callable[[torch.Tensor, bool, Callable[[int, int], None]], tuple[torch.Tensor, torch.Tensor]]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """``fn(rows, prune, report)`` on the m = len(like) points of a reference batch, returning (flags (m,),
        rows (m, ...)): below ``MIN_BATCH`` points all of them as the reference computes them (no pruning);
        else pruned and split over the workers, the shards' results gathered (``like`` where none wrote)."""
        m = len(like)
        if m < MIN_BATCH:
            return fn(torch.arange(m, device=self.device), False, report)
        shards = self.workers.shards(m, self.device)
        results = self.workers.map(lambda rows, part: fn(rows, True, part), shards, report)
        return gather(shards, results, like)

    # -- the sequence (AutoAttack.run_standard_evaluation) ----------------------------------------

    def run(self, names: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[AttackRecord]]:
        x, y = self.x, self.y
        robust = self.clean_logits.max(1)[1] == y
        x_adv = x.clone()
        records = []
        totals = {"apgd-ce": APGD_ITERATIONS, "apgd-t": self.targets * APGD_ITERATIONS,
                  "fab-t": self.targets * FAB_ITERATIONS, "square": SQUARE_QUERIES}
        attacks = {"apgd-ce": self.apgd_ce, "apgd-t": self.apgd_t, "fab-t": self.fab_t, "square": self.square}
        for name in names:
            idx = robust.nonzero().squeeze(1)
            n = len(idx)
            if n == 0:
                break
            begin = time.perf_counter()
            self.reporter.begin(name, totals[name], n)
            xs, ys = x[idx], y[idx]
            adv = attacks[name](xs, ys, idx)
            # the reference's check of the attack's output: its n points in one batch
            false = self.logits(adv, exact=True).max(1)[1] != ys
            fooled = idx[false]
            robust[fooled] = False
            x_adv[fooled] = adv[false]
            records.append(AttackRecord(name, time.perf_counter() - begin, n, n - len(fooled), fooled.tolist()))
            self.reporter.end(int(robust.sum()))
        return x_adv, robust, records

    # -- APGD (APGDAttack.attack_single_run, L-inf, one restart) ----------------------------------

    def apgd(self, x: torch.Tensor, y: torch.Tensor, y_target: torch.Tensor | None, gen: torch.Generator,
             progress: Callable[[int, int], None]) -> tuple[torch.Tensor, torch.Tensor]:
        """APGD on the m points x (all classified correctly): (fooled (m,), adv (m, ...)), adv a
        misclassified iterate of each fooled point. The random start is drawn for all m points, as the
        reference draws it; with m >= MIN_BATCH the points are split over the workers, and a point leaves
        at its first misclassified iterate (the reference returns its last); below, as the reference."""
        t = 2 * torch.rand(x.shape, generator=gen).to(self.device).detach() - 1
        x_adv = x + self.eps * torch.ones_like(x).detach() * _normalize_linf(t)
        x_adv = x_adv.clamp(0., 1.)
        return self.in_shards(x, progress, lambda rows, prune, report: self.apgd_run(
            x[rows], y[rows], None if y_target is None else y_target[rows], x_adv[rows], prune, report))

    def apgd_run(self, x: torch.Tensor, y: torch.Tensor, y_target: torch.Tensor | None, x_adv: torch.Tensor,
                 prune: bool, progress: Callable[[int, int], None]) -> tuple[torch.Tensor, torch.Tensor]:
        """APGDAttack.attack_single_run's iterations from the start x_adv. ``prune``: the points are some of a
        reference batch of MIN_BATCH or more (a point leaves at its first misclassified iterate); else the
        reference's batch as it is."""
        eps, n_iter = self.eps, APGD_ITERATIONS
        n_iter_2, n_iter_min, size_decr = max(int(0.22 * n_iter), 1), max(int(0.06 * n_iter), 1), max(int(0.03 * n_iter), 1)
        if y_target is None:
            loss, rows = _ce, (y,)
        else:
            loss, rows = _dlr_targeted, (y, y_target)
        m = len(x)
        x_best = x_adv.clone()
        loss_steps = torch.zeros([n_iter, m], device=self.device)
        logits, loss_indiv, grad = self.grad(x_adv, loss, rows, exact=not prune)
        grad_best = grad.clone()
        acc = logits.max(1)[1] == y
        loss_best = loss_indiv.clone()
        step_size = 2. * eps * torch.ones([m, 1, 1, 1], device=self.device)
        x_adv_old = x_adv.clone()
        k, counter3 = n_iter_2, 0
        loss_best_last_check, reduced_last_check = loss_best.clone(), torch.ones_like(loss_best)

        fooled = torch.zeros(m, dtype=torch.bool, device=self.device)
        adv = x.clone()
        pos = torch.arange(m, device=self.device)  # the m points' positions of the rows still attacked
        state = [x, *rows, x_adv, x_best, grad, grad_best, loss_best, step_size, x_adv_old,
                 loss_best_last_check, reduced_last_check]

        def settle(misclassified: torch.Tensor, iterate: torch.Tensor) -> None:
            nonlocal pos, loss_steps, state
            fooled[pos[misclassified]] = True
            adv[pos[misclassified]] = iterate[misclassified]
            if prune:
                keep = ~misclassified
                pos, loss_steps = pos[keep], loss_steps[:, keep]
                state = [s[keep] for s in state]

        if not acc.all():
            settle(~acc, x_adv)
        for i in range(n_iter):
            if not len(pos):
                break
            x, *rows, x_adv, x_best, grad, grad_best, loss_best, step_size, x_adv_old, \
                loss_best_last_check, reduced_last_check = state
            y = rows[0]
            with torch.no_grad():
                grad2 = x_adv - x_adv_old
                x_adv_old = x_adv.clone()
                a = 0.75 if i > 0 else 1.0
                x_adv_1 = x_adv + step_size * torch.sign(grad)
                x_adv_1 = torch.clamp(torch.min(torch.max(x_adv_1, x - eps), x + eps), 0.0, 1.0)
                x_adv_1 = torch.clamp(torch.min(torch.max(x_adv + (x_adv_1 - x_adv) * a + grad2 * (1 - a), x - eps),
                                                x + eps), 0.0, 1.0)
                x_adv = x_adv_1 + 0.
            if i < n_iter - 1:
                logits, loss_indiv, grad = self.grad(x_adv, loss, tuple(rows), exact=not prune)
            else:  # the last iterate's gradient is never used: its logits and loss only
                logits = self.logits(x_adv, exact=not prune).clone()
                loss_indiv = loss(logits, *rows)
            with torch.no_grad():
                misclassified = logits.max(1)[1] != y
                iterate = x_adv.clone() if misclassified.any() else None
                y1 = loss_indiv.clone()
                loss_steps[i] = y1 + 0
                better = (y1 > loss_best).view(-1, 1, 1, 1)
                x_best = torch.where(better, x_adv, x_best)
                grad_best = torch.where(better, grad, grad_best)
                loss_best = torch.where(better.view(-1), y1, loss_best)
                counter3 += 1
                if counter3 == k:
                    fl_osc = _check_oscillation(loss_steps, i, k)
                    fl_reduce_no_impr = (1. - reduced_last_check) * (loss_best_last_check >= loss_best).float()
                    fl_osc = torch.max(fl_osc, fl_reduce_no_impr)
                    reduced_last_check, loss_best_last_check = fl_osc.clone(), loss_best.clone()
                    osc = (fl_osc > 0).view(-1, 1, 1, 1)
                    step_size = torch.where(osc, step_size / 2.0, step_size)
                    x_adv = torch.where(osc, x_best, x_adv)
                    grad = torch.where(osc, grad_best, grad)
                    k = max(k - size_decr, n_iter_min)
                    counter3 = 0
            state = [x, *rows, x_adv, x_best, grad, grad_best, loss_best, step_size, x_adv_old,
                     loss_best_last_check, reduced_last_check]
            if iterate is not None:
                settle(misclassified, iterate)
            if i % 10 == 9:
                progress(i + 1, int((~fooled).sum()))
        progress(n_iter, int((~fooled).sum()))
        return fooled, adv

    def apgd_ce(self, xs: torch.Tensor, ys: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """APGDAttack.perturb, loss "ce", one restart."""
        acc = self.clean_rows(idx).max(1)[1] == ys  # perturb's predictions on its points
        adv = xs.clone()
        gen = torch.Generator().manual_seed(self.seed)
        todo = acc.nonzero().squeeze(1)
        if len(todo):
            base = int(acc.sum()) - len(todo)
            fooled, adv_curr = self.apgd(xs[todo], ys[todo], None, gen,
                                         progress=lambda i, left: self.reporter.step(i, base + left))
            adv[todo[fooled]] = adv_curr[fooled]
        return adv

    def apgd_t(self, xs: torch.Tensor, ys: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """APGDAttack_targeted.perturb: the targets 2 .. n_target_classes + 1 (by the clean logits' rank),
        one restart each, each on the points not fooled yet."""
        acc = self.clean_rows(idx).max(1)[1] == ys
        adv = xs.clone()
        gen = torch.Generator().manual_seed(self.seed)
        for target_class in range(2, self.targets + 2):
            todo = acc.nonzero().squeeze(1)
            if not len(todo):
                break
            y_target = self.clean_rows(idx[todo]).sort(dim=1)[1][:, -target_class]
            done_before, base = (target_class - 2) * APGD_ITERATIONS, int(acc.sum()) - len(todo)
            fooled, adv_curr = self.apgd(xs[todo], ys[todo], y_target, gen,
                                         progress=lambda i, left, d=done_before, b=base: self.reporter.step(d + i, b + left))
            acc[todo[fooled]] = False
            adv[todo[fooled]] = adv_curr[fooled]
        return adv
