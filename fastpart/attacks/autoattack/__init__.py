"""AutoAttack (Croce & Hein, ICML 2020), L-inf, standard version: a fast implementation that keeps the
reference's verdicts, and the reference itself (the ``pyautoattack`` package, called as-is).

    x_adv, info = autoattack(model, x, y, eps=8 / 255, seed=seed)                       # fast (default)
    x_adv, info = autoattack(model, x, y, eps=8 / 255, seed=seed, backend="reference")  # pyautoattack
    info.robust_mask            # bool (N,): clean-correct and not fooled by any attack
    info.per_attack             # per attack: seconds, points robust before and after, points it fooled
    info.to_dict()              # JSON-ready (for eval.json)

The seed. Both backends take an int ``seed``; the reference backend passes it to
``pyautoattack.AutoAttack(..., seed=seed)``, which seeds torch's global CPU generator with it at the start
of every attack. ``fastpart eval`` draws it per evaluated batch as
``int(torch.randint(0, 2**31 - 1, (1,), generator=batch_generator(seed, item, batch, device)))``.

Verdicts. With the same seed, a point is robust under ``backend="fast"`` exactly when it is robust under
the reference: pyautoattack 0.2.0's ``AutoAttack(model, norm="Linf", eps=eps, version="standard",
seed=seed)`` with ``n_target_classes = min(9, classes - 1)`` for APGD-T and FAB-T (fastpart's setting),
``attacks_to_run`` = ``attacks`` and ``run_standard_evaluation(x, y, batch_size=len(x))``. The fast path
computes for every point what the reference computes for it (the same operations in the same order, the
same random numbers from a ``torch.Generator`` seeded like the reference seeds the global one) and leaves
out only work that cannot change a verdict:

* a point leaves an attack as soon as its verdict is settled: APGD-CE / APGD-T once an iterate is
  misclassified (the reference iterates it to the end and keeps a later misclassified iterate), FAB-T once
  it has an adversarial example inside the budget (the reference goes on shrinking it);
* FAB-T takes the input gradient only (the reference's ``backward()`` also fills the parameters' ``.grad``);
* no defence checks (5 + 2 forward passes and a ``sys.settrace`` forward); the clean logits are computed
  once, not again by every attack and target;
* Square: no cross-entropy it does not use, the step's arithmetic on the new square only (elsewhere
  the reference's clamps leave the pixels as they are), compact state instead of gathers and scatters
  of the whole batch every query, ``torch.inference_mode``.

Every point's computation is thus the reference's, but in batches of other sizes (points leave early).
That keeps the results only if the model computes each point the same whatever else is in its batch.
CPU kernels do from some batch size up with one intra-op thread (measured: a batch of one differs in the
last bit from larger ones, and a linear layer's backward in batches of two or three; with two threads some
batch sizes of 8 to 35 differ too), so where the reference computes a batch of fewer than ``MIN_BATCH``
points the fast path computes exactly that batch (and then prunes nothing and returns the reference's
examples bit for bit), and where it prunes a larger batch it pads what is left to ``MIN_BATCH`` rows.

Worker processes. On the CPU the fast path computes with one intra-op thread, in ``workers`` forked processes
(default ``torch.get_num_threads()``, the caller's setting restored afterwards; Linux only, elsewhere one):
the points of a batch of ``workers * MIN_BATCH`` or more are split into strided shards computed side by side
(``shards.py``), each sending its progress and result back through a pipe. The
attacks' random draws are made once for the whole batch, in the reference's order (APGD's start for all its
points, Square's squares, the same for every point), so a shard computes its points as the whole batch
would. (Square's own batch shrinks as it fools points: where it fell below ``MIN_BATCH`` at some query,
Square runs again as one shard, ``square.py``.) ``autoattack`` checks the invariance on the points at hand first, with the kernels it will use
(``batch_invariant``: the logits and input gradients of 48 points in one batch against batches of 8 to 35
points, and against the clean logits computed as the caller computes them: four forward-backward passes of
48 points) and runs the reference where it does not hold (``info.backend`` says which ran;
``strict=False`` runs the fast path anyway). On a GPU, cuDNN picks its algorithms by batch size, so expect
the fallback there.

Where the time goes (``benchmarks/bench_autoattack.py`` measures it): nearly all of it in the model, on the
points that stay robust. Each such point gets every iteration of every attack in the reference and in any
implementation with the reference's results: 101 forward-backward passes (APGD-CE), 909 (APGD-T), 900
forward-backward plus 900 forward passes and FAB's projections (FAB-T), 5001 forward passes (Square). The
fast path cuts what the reference spends on the other points and the repeated work, and spreads the floor
over its workers; an
implementation below it (torchattacks' AutoAttack runs APGD, APGD-T and FAB-T with 10 iterations) computes
a weaker attack.

In ``fastpart eval``: per evaluated batch, on its clean-correct points,
``autoattack(ctx.model, x, y, eps, attacks=..., seed=seed, autocast_dtype=ctx.autocast, backend=...)`` with
the seed drawn as above; ``info.to_dict()`` (per-attack seconds and robust counts) for eval.json. The
reference backend, like pyautoattack, reseeds torch's global generator; the fast path leaves it alone.
"""

from fastpart.attacks.autoattack.api import autoattack
from fastpart.attacks.autoattack.common import (BACKENDS, MIN_BATCH, STANDARD_ATTACKS, AttackRecord, AutoAttackInfo,
                                               AutoAttackProgress, FloatLogits, batch_invariant)

__all__ = ["BACKENDS", "MIN_BATCH", "STANDARD_ATTACKS", "AttackRecord", "AutoAttackInfo", "AutoAttackProgress",
           "FloatLogits", "autoattack", "batch_invariant"]
