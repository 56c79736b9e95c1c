"""The fast path: the standard sequence point by point as pyautoattack computes it, settled points leaving early."""

from __future__ import annotations

import math
import time
from typing import Callable

import torch
from torch import nn

from fastpart.attacks.autoattack.common import (APGD_ITERATIONS, FAB_ALPHA_MAX, FAB_BETA, FAB_ETA, FAB_ITERATIONS,
                                               MIN_BATCH, SQUARE_QUERIES, AttackRecord, _ce, _check_oscillation,
                                               _dlr_targeted, _fab_diff, _normalize_linf, _p_selection, _pad,
                                               _projection_linf, _Reporter)



class _Fast:
    """The standard sequence, point by point as in pyautoattack, with settled points leaving early.

    Batches. Where the reference computes a batch of fewer than ``MIN_BATCH`` points, the fast path
    computes exactly that batch, with the reference's contents (it prunes nothing there, and returns what
    the reference returns). Where the reference's batch is larger, the fast path may compute fewer of its
    points, padded to ``MIN_BATCH`` rows, relying on the model's batch invariance from that size up
    (``batch_invariant``)."""

    def __init__(self, f: nn.Module, x: torch.Tensor, y: torch.Tensor, clean_logits: torch.Tensor, eps: float,
                 seed: int, targets: int, reporter: _Reporter):
        self.f, self.x, self.y, self.clean_logits = f, x, y, clean_logits
        self.eps, self.seed, self.targets, self.reporter = eps, seed, targets, reporter
        self.device = x.device

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
        misclassified iterate of each fooled point. With m >= MIN_BATCH a point leaves at its first
        misclassified iterate (the reference returns its last); below, as the reference."""
        eps, n_iter = self.eps, APGD_ITERATIONS
        n_iter_2, n_iter_min, size_decr = max(int(0.22 * n_iter), 1), max(int(0.06 * n_iter), 1), max(int(0.03 * n_iter), 1)
        if y_target is None:
            loss, rows = _ce, (y,)
        else:
            loss, rows = _dlr_targeted, (y, y_target)
        m = len(x)
        prune = m >= MIN_BATCH
        t = 2 * torch.rand(x.shape, generator=gen).to(self.device).detach() - 1
        x_adv = x + eps * torch.ones_like(x).detach() * _normalize_linf(t)
        x_adv = x_adv.clamp(0., 1.)
        x_best = x_adv.clone()
        loss_steps = torch.zeros([n_iter, m], device=self.device)
        logits, loss_indiv, grad = self.grad(x_adv, loss, rows, exact=True)
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

    # -- FAB-T (FABAttack.perturb / attack_single_run, targeted, one restart, no random start) ----

    def fab_t(self, xs: torch.Tensor, ys: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        acc = self.clean_rows(idx).max(1)[1] == ys
        adv = xs.clone()
        for target_class in range(2, self.targets + 2):
            todo = acc.nonzero().squeeze(1)
            if not len(todo):
                break
            m = len(todo)
            x, y = xs[todo], ys[todo]
            clean = self.clean_rows(idx[todo])  # attack_single_run's _get_predicted_label(x) and _predict_fn(x)
            pred = clean.max(1)[1] == y
            adv_c = x.clone()
            if pred.any():
                la_target = clean.sort(dim=-1)[1][:, -target_class]
                sel = pred.nonzero().squeeze(1)
                base = int(acc.sum()) - len(sel)
                found, adv_sel = self.fab_run(x[sel], y[sel], la_target[sel], (target_class - 2) * FAB_ITERATIONS, base)
                adv_c[sel[found]] = adv_sel[found]
            # perturb's check: misclassified and inside the budget
            acc_curr = self.logits(adv_c, exact=True).max(1)[1] == y
            res = (x - adv_c).abs().reshape(m, -1).max(1)[0]
            acc_curr = torch.max(acc_curr, res > self.eps)
            hit = ~acc_curr
            acc[todo[hit]] = False
            adv[todo[hit]] = adv_c[hit]
        return adv

    def fab_run(self, im2: torch.Tensor, la2: torch.Tensor, la_target2: torch.Tensor, done_before: int,
                base: int) -> tuple[torch.Tensor, torch.Tensor]:
        """FAB's iterations on bs points all classified correctly: (found (bs,), adv (bs, ...)), found where
        an adversarial example came up, adv the smallest. With bs >= MIN_BATCH a point leaves once it has one
        inside the budget (the reference goes on shrinking it); below, as the reference."""
        bs = len(im2)
        prune = bs >= MIN_BATCH
        out = im2.clone()
        res_out = 1e10 * torch.ones([bs], device=self.device)
        pos = torch.arange(bs, device=self.device)  # the bs points' positions of the rows still iterated
        im, la, lt = im2, la2, la_target2
        adv = im.clone()
        res2 = 1e10 * torch.ones([bs], device=self.device)
        x1 = im.clone()
        x0 = im.clone().reshape([bs, -1])
        ones = torch.ones([bs, 1, 1, 1], device=self.device)

        for counter_iter in range(FAB_ITERATIONS):
            rows = len(pos)
            _, df, dg2 = self.grad(x1, _fab_diff, (la, lt), exact=not prune)
            with torch.no_grad():
                b = (- df + (dg2 * x1).reshape(x1.shape[0], -1).sum(dim=-1))
                w = dg2.reshape([rows, -1])
                d3 = _projection_linf(torch.cat((x1.reshape([rows, -1]), x0), 0), torch.cat((w, w), 0),
                                     torch.cat((b, b), 0))
                d1 = torch.reshape(d3[:rows], x1.shape)
                d2 = torch.reshape(d3[-rows:], x1.shape)
                a0 = d3.abs().max(dim=1, keepdim=True)[0].view(-1, *[1] * (x1.dim() - 1))
                a0 = torch.max(a0, 1e-8 * torch.ones(a0.shape, device=self.device))
                a1 = a0[:rows]
                a2 = a0[-rows:]
                alpha = torch.min(torch.max(a1 / (a1 + a2), 0 * ones[:rows]), FAB_ALPHA_MAX * ones[:rows])
                x1 = ((x1 + FAB_ETA * d1) * (1 - alpha) + (im + d2 * FAB_ETA) * alpha).clamp(0.0, 1.0)
                is_adv = self.logits(x1, exact=not prune).max(1)[1] != la
                if is_adv.any():
                    t = (x1 - im).reshape([rows, -1]).abs().max(dim=1)[0]
                    better = is_adv & (t < res2)
                    adv = torch.where(better.view(-1, 1, 1, 1), x1, adv)
                    res2 = torch.where(better, t, res2)
                    x1 = torch.where(is_adv.view(-1, 1, 1, 1), im + (x1 - im) * FAB_BETA, x1)
                    if prune:
                        inside = ~(res2 > self.eps)
                        if inside.any():
                            out[pos[inside]], res_out[pos[inside]] = adv[inside], res2[inside]
                            keep = ~inside
                            pos, im, la, lt, adv, res2, x1, x0 = (pos[keep], im[keep], la[keep], lt[keep], adv[keep],
                                                                  res2[keep], x1[keep], x0[keep])
                            if not len(pos):
                                break
            if counter_iter % 10 == 9:
                self.reporter.step(done_before + counter_iter + 1, base + len(pos))
        out[pos], res_out[pos] = adv, res2
        found = res_out < 1e10
        return found, torch.where(found.view(-1, 1, 1, 1), out, im2)

    # -- Square (SquareAttack.perturb / attack_single_run, L-inf, margin loss, one restart) -------

    def square(self, xs: torch.Tensor, ys: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        acc = self.clean_rows(idx).max(1)[1] == ys
        adv = xs.clone()
        gen = torch.Generator().manual_seed(self.seed)
        todo = acc.nonzero().squeeze(1)
        if not len(todo):
            return adv
        x, y = xs[todo], ys[todo]
        x_best = self.square_run(x, y, gen, base=int(acc.sum()) - len(todo))
        acc_curr = self.logits(x_best, exact=True).max(1)[1] == y
        hit = ~acc_curr
        adv[todo[hit]] = x_best[hit]
        return adv

    def margin(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """SquareAttack.margin_and_loss's margin (its loss too, for loss="margin")."""
        logits = self.logits(x, exact=True)
        u = torch.arange(x.shape[0], device=self.device)
        y_corr = logits[u, y].clone()
        logits[u, y] = -float("inf")
        return y_corr - logits.max(dim=-1)[0]

    def square_run(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, base: int) -> torch.Tensor:
        """SquareAttack.attack_single_run (L-inf): x_best of every point. Its batches are the reference's:
        the points not fooled yet, at every query."""
        eps = self.eps
        c, h, w = x.shape[1:]
        n_features = c * h * w
        n_ex_total = x.shape[0]
        with torch.inference_mode():
            x_best = torch.clamp(x + eps * torch.sign(2 * torch.rand([n_ex_total, c, 1, w], generator=gen).to(self.device) - 1),
                                 0., 1.)
            margin_min = self.margin(x_best, y)
            if (margin_min < 0.0).all():
                return x_best.clone()
            loss_min = margin_min.clone()
            # the points still attacked (margin_min > 0), their state compact, written back as they leave
            act = (margin_min > 0.0).nonzero().squeeze(1)
            xb, ya, lo, hi = x_best[act], y[act], x[act] - eps, x[act] + eps
            mm, lm = margin_min[act], loss_min[act]
            for i_iter in range(SQUARE_QUERIES if len(act) else 0):
                p = _p_selection(i_iter)
                s = max(round(math.sqrt(p * n_features / c)), 1)
                s = min(s, min(h, w))
                # SquareAttack.random_int twice, random_choice([c, 1, 1]): five uniform draws per query
                vh = int((0 + (h - s - 0) * torch.rand([1], generator=gen)).long())
                vw = int((0 + (w - s - 0) * torch.rand([1], generator=gen)).long())
                delta = (2. * eps * torch.sign(2 * torch.rand([c, 1, 1], generator=gen) - 1)).to(self.device)
                # x_best + the square, clamped: outside the square x_best is already inside the clamps
                window = (slice(None), slice(None), slice(vh, vh + s), slice(vw, vw + s))
                x_new = xb.clone()
                x_new[window] = torch.clamp(torch.min(torch.max(xb[window] + delta, lo[window]), hi[window]), 0., 1.)
                margin = self.margin(x_new, ya)
                improved = margin < lm
                lm = torch.where(improved, margin, lm)
                improved = improved | (margin <= 0.)
                mm = torch.where(improved, margin, mm)
                xb = torch.where(improved.view(-1, 1, 1, 1), x_new, xb)
                left = mm > 0.0
                if not left.all():
                    gone = ~left
                    x_best[act[gone]], margin_min[act[gone]] = xb[gone], mm[gone]
                    act, xb, ya, lo, hi, mm, lm = act[left], xb[left], ya[left], lo[left], hi[left], mm[left], lm[left]
                    if not len(act):
                        break
                if i_iter % 50 == 49:
                    self.reporter.step(i_iter + 1, base + len(act))
            x_best[act] = xb
            return x_best.clone()
