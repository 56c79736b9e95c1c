"""The fast path's Square (SquareAttack.perturb / attack_single_run, L-inf, margin loss, one restart).

The reference's random draws do not depend on the points (per query: the square's corner and its sign per
channel, the same for every point), so they are drawn once, in the reference's order, and every shard
replays them. One shard computes the reference's batches as they are (the points not fooled yet, at every
query). Several shards compute their points padded to ``MIN_BATCH`` rows, which keeps the reference's
numbers only while the reference's batch has ``MIN_BATCH`` points or more: the shards count their points
at every query, and where the total fell below that, Square runs again as one shard."""

from __future__ import annotations

import math
from itertools import zip_longest
from typing import Callable

import torch

from fastpart.attacks.autoattack.common import MIN_BATCH, SQUARE_QUERIES, _p_selection

Draw = tuple[int, int, int, torch.Tensor]  # the square's side, its top row, its left column, its delta per channel


class _Square:
    """Square for ``_Fast`` (its model calls, workers and reporter)."""

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

    def margin(self, x: torch.Tensor, y: torch.Tensor, exact: bool = True) -> torch.Tensor:
        """SquareAttack.margin_and_loss's margin (its loss too, for loss="margin")."""
        logits = self.logits(x, exact=exact)
        u = torch.arange(x.shape[0], device=self.device)
        y_corr = logits[u, y].clone()
        logits[u, y] = -float("inf")
        return y_corr - logits.max(dim=-1)[0]

    def square_draws(self, gen: torch.Generator, c: int, h: int, w: int) -> list[Draw]:
        """Every query's draws as the reference makes them: SquareAttack.random_int twice and
        random_choice([c, 1, 1]), five uniform draws per query (c = 3)."""
        n_features, draws = c * h * w, []
        for i_iter in range(SQUARE_QUERIES):
            p = _p_selection(i_iter)
            s = max(round(math.sqrt(p * n_features / c)), 1)
            s = min(s, min(h, w))
            vh = int((0 + (h - s - 0) * torch.rand([1], generator=gen)).long())
            vw = int((0 + (w - s - 0) * torch.rand([1], generator=gen)).long())
            delta = (2. * self.eps * torch.sign(2 * torch.rand([c, 1, 1], generator=gen) - 1)).to(self.device)
            draws.append((s, vh, vw, delta))
        return draws

    def square_run(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, base: int) -> torch.Tensor:
        """SquareAttack.attack_single_run (L-inf): x_best of every point."""
        eps = self.eps
        c, h, w = x.shape[1:]
        with torch.inference_mode():
            x_best = torch.clamp(x + eps * torch.sign(2 * torch.rand([len(x), c, 1, w], generator=gen).to(self.device) - 1),
                                 0., 1.)
            margin_min = self.margin(x_best, y)
            if (margin_min < 0.0).all():
                return x_best.clone()
            act = (margin_min > 0.0).nonzero().squeeze(1)  # the points still attacked
            if not len(act):
                return x_best.clone()
            draws = self.square_draws(gen, c, h, w)

            def queries(shards: list[torch.Tensor], exact: bool) -> list[tuple[torch.Tensor, list[int]]]:
                return self.workers.map(lambda rows, report: self.square_rows(
                    x_best[act[rows]], margin_min[act[rows]], x[act[rows]], y[act[rows]], draws, exact, report),
                    shards, lambda done, left: self.reporter.step(done, base + left))

            shards = self.workers.shards(len(act), self.device)
            results = queries(shards, exact=len(shards) == 1)
            counts = [sum(col) for col in zip_longest(*(r[1] for r in results), fillvalue=0)]
            if len(shards) > 1 and any(0 < n < MIN_BATCH for n in counts):
                # the reference's batch fell below MIN_BATCH at some query: again, as one shard
                shards = [torch.arange(len(act), device=self.device)]
                results = queries(shards, exact=True)
            for rows, (xb, _) in zip(shards, results):
                x_best[act[rows]] = xb
            return x_best.clone()

    def square_rows(self, x_best: torch.Tensor, margin_min: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                    draws: list[Draw], exact: bool, progress: Callable[[int, int], None]) -> tuple[torch.Tensor, list[int]]:
        """The queries on these points (margin_min > 0 for all, the loss = the margin): their x_best at the
        end, and how many of them each query computed. ``exact``: they are the reference's batch (else
        padded to MIN_BATCH rows)."""
        eps = self.eps
        counts: list[int] = []
        with torch.inference_mode():
            x_best = x_best.clone()
            # the points still attacked, their state compact, written back as they leave
            act = torch.arange(len(x), device=self.device)
            xb, ya, lo, hi = x_best.clone(), y, x - eps, x + eps
            mm, lm = margin_min.clone(), margin_min.clone()
            for i_iter, (s, vh, vw, delta) in enumerate(draws):
                counts.append(len(act))
                # x_best + the square, clamped: outside the square x_best is already inside the clamps
                window = (slice(None), slice(None), slice(vh, vh + s), slice(vw, vw + s))
                x_new = xb.clone()
                x_new[window] = torch.clamp(torch.min(torch.max(xb[window] + delta, lo[window]), hi[window]), 0., 1.)
                margin = self.margin(x_new, ya, exact)
                improved = margin < lm
                lm = torch.where(improved, margin, lm)
                improved = improved | (margin <= 0.)
                mm = torch.where(improved, margin, mm)
                xb = torch.where(improved.view(-1, 1, 1, 1), x_new, xb)
                left = mm > 0.0
                if not left.all():
                    gone = ~left
                    x_best[act[gone]] = xb[gone]
                    act, xb, ya, lo, hi, mm, lm = act[left], xb[left], ya[left], lo[left], hi[left], mm[left], lm[left]
                    if not len(act):
                        break
                if i_iter % 50 == 49:
                    progress(i_iter + 1, len(act))
            x_best[act] = xb
        progress(len(draws), len(act))
        return x_best, counts

