"""The fast path's FAB-T (FABAttack.perturb / attack_single_run, targeted, one restart, no random start).

FAB takes no random draws, so each point's iterations are its own: a batch's points are split over the
workers, and where the fast path prunes (a reference batch of MIN_BATCH points or more), a point leaves once
it has an adversarial example inside the budget. (Taking the next iteration's gradient in the check's forward
pass saves nothing: on the points that stay robust the check mostly finds an example outside the budget, x1
then shrinks, and the gradient is needed at the shrunk x1.)"""

from __future__ import annotations

from typing import Callable

import torch

from fastpart.attacks.autoattack.common import (FAB_ALPHA_MAX, FAB_BETA, FAB_ETA, FAB_ITERATIONS, _fab_diff,
                                               _projection_linf)


class _FabT:
    """FAB-T for ``_Fast`` (its model calls, workers and reporter)."""

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

    def fab_run(self, im: torch.Tensor, la: torch.Tensor, la_target: torch.Tensor, done_before: int,
                base: int) -> tuple[torch.Tensor, torch.Tensor]:
        """FAB's iterations on bs points all classified correctly: (found (bs,), adv (bs, ...)), found where
        an adversarial example came up, adv the smallest. With bs >= MIN_BATCH the points are split over the
        workers and a point leaves once it has one inside the budget (the reference goes on shrinking it);
        below, as the reference."""
        return self.in_shards(im, lambda done, left: self.reporter.step(done_before + done, base + left),
                              lambda rows, prune, report: self.fab_rows(im[rows], la[rows], la_target[rows], prune,
                                                                        report))

    def fab_rows(self, im2: torch.Tensor, la2: torch.Tensor, la_target2: torch.Tensor, prune: bool,
                 progress: Callable[[int, int], None]) -> tuple[torch.Tensor, torch.Tensor]:
        """attack_single_run's iterations on these rows. ``prune``: they are some of a reference batch of
        MIN_BATCH or more (padded batches, points leaving inside the budget); else the reference's batch as
        it is."""
        bs = len(im2)
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
                progress(counter_iter + 1, len(pos))
        out[pos], res_out[pos] = adv, res2
        progress(FAB_ITERATIONS, len(pos))
        found = res_out < 1e10
        return found, torch.where(found.view(-1, 1, 1, 1), out, im2)
