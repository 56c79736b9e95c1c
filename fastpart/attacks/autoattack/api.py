"""``autoattack``: the fast path or the reference (pyautoattack as-is), chosen and checked (see the package)."""

from __future__ import annotations

import time
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from fastpart.errors import FastpartError
from fastpart.attacks.autoattack.common import (APGD_ITERATIONS, BACKENDS, FAB_ITERATIONS, SQUARE_QUERIES,
                                               STANDARD_ATTACKS, AttackRecord, AutoAttackInfo, FloatLogits,
                                               ProgressFn, _eval_mode, _Reporter, batch_invariant)

from fastpart.attacks.autoattack.fast import _Fast


# ---------------------------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------------------------


def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, attacks: Sequence[str] | None = None,
               seed: int = 0, n_target_classes: int | None = None, autocast_dtype: torch.dtype | None = None,
               backend: str = "fast", progress: bool | ProgressFn | None = None,
               strict: bool = True, workers: int | None = None) -> tuple[torch.Tensor, AutoAttackInfo]:
    """AutoAttack, L-inf, standard version (or ``attacks``, a subset of its attacks in its order, with the
    standard settings) on images ``x`` in [0, 1] with labels ``y``, inside the budget ``eps``.

    Returns x_adv (the adversarial example of every fooled point, x elsewhere) and ``AutoAttackInfo``.
    ``backend``: "fast" (default; the reference's verdicts, see the module docstring) or "reference"
    (pyautoattack as-is). ``seed``: the seed both take. ``n_target_classes``: APGD-T's and FAB-T's targets
    (default min(9, classes - 1)). ``autocast_dtype``: run the model under autocast, float32 logits out.
    ``progress``: True for a tqdm bar per attack, or a callable taking ``AutoAttackProgress``.
    ``strict``: fall back to the reference when the model is not batch-invariant (else run the fast path
    anyway, whose verdicts may then differ on borderline points; ``info.note`` says so). The model runs in
    eval mode (restored afterwards). ``workers``: the fast path's worker processes on the CPU (default
    ``torch.get_num_threads()``; each computes with one intra-op thread, the caller's setting is restored);
    one elsewhere (other devices, no ``fork``).
    """
    if backend not in BACKENDS:
        raise FastpartError(f"autoattack: backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    names = list(STANDARD_ATTACKS if attacks is None else attacks)
    unknown = [a for a in names if a not in STANDARD_ATTACKS]
    if unknown:
        raise FastpartError(f"autoattack: unknown attacks {unknown}; the standard version's are {list(STANDARD_ATTACKS)}")
    names = [a for a in STANDARD_ATTACKS if a in names]  # the reference's order
    if x.dim() != 4 or len(x) != len(y):
        raise FastpartError(f"autoattack: x must be (N, C, H, W) with N labels, got {tuple(x.shape)} and {tuple(y.shape)}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise FastpartError(f"autoattack: workers must be a positive int, got {workers!r}")
    x, y = x.detach().float().contiguous(), y.detach().long()
    f = FloatLogits(model, autocast_dtype)
    reporter = _Reporter(progress)
    start = time.perf_counter()
    with _eval_mode(model):
        if not len(x):
            info = AutoAttackInfo(backend, names, int(seed), float(eps), 0, 0, 0, 0.0, [],
                                  torch.zeros(0, dtype=torch.bool, device=x.device), 0)
            return x.clone(), info
        with torch.no_grad():
            clean_logits = f(x)
        classes = clean_logits.shape[1]
        targets = min(9, classes - 1) if n_target_classes is None else int(n_target_classes)
        if classes < 4 and "apgd-t" in names:
            raise FastpartError(f"AutoAttack's APGD-T (targeted DLR loss) needs at least 4 classes; this model has {classes}")
        note, count = "", 1
        if backend == "fast":
            cpu = x.device.type == "cpu"
            requested = (workers or torch.get_num_threads()) if cpu else 1  # before one thread is set
            with _one_thread(cpu):
                invariant = batch_invariant(f, x, y, clean_logits)
                if invariant or not strict:
                    if not invariant:
                        note = "the model's results depend on the batch: verdicts may differ from the reference's"
                    runner = _Fast(f, x, y, clean_logits, float(eps), int(seed), targets, reporter, requested)
                    count = runner.workers.count  # one where there is no fork
                    x_adv, robust, records = runner.run(names)
            if not invariant and strict:
                backend, note = "reference", ("fast path not used: the model's results depend on the batch on "
                                              f"{x.device.type} (so pruned batches could change verdicts); ran the reference")
                warnings.warn(f"autoattack: {note}", stacklevel=2)
        if backend == "reference":
            x_adv, robust, records = _reference(f, x, y, float(eps), int(seed), targets, names, reporter)
            backend = "reference" if not note else "reference (fallback)"
    info = AutoAttackInfo(backend, names, int(seed), float(eps), len(x), int((clean_logits.max(1)[1] == y).sum()),
                          int(robust.sum()), time.perf_counter() - start, records, robust, targets, note, count)
    return x_adv, info


@contextmanager
def _one_thread(cpu: bool) -> Iterator[None]:
    """On the CPU, one intra-op thread (the kernels the probe checks and the workers use), restored after."""
    threads = torch.get_num_threads()
    if cpu:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if cpu:
            torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# The reference: pyautoattack as-is, with each attack timed
# ---------------------------------------------------------------------------------------------


def _reference(f: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, seed: int, targets: int,
               names: list[str], reporter: _Reporter) -> tuple[torch.Tensor, torch.Tensor, list[AttackRecord]]:
    try:
        from pyautoattack import AutoAttack
    except ImportError:
        raise FastpartError("the reference AutoAttack needs the pyautoattack package: pip install pyautoattack") from None
    adversary = AutoAttack(f, norm="Linf", eps=eps, version="standard", device=x.device, seed=seed)
    adversary.verbose = False
    adversary.apgd_targeted.n_target_classes = targets
    adversary.fab.n_target_classes = targets
    adversary.attacks_to_run = list(names)
    records: list[AttackRecord] = []
    stages: list[list[int] | None] = []  # the positions of the points each attack ran on
    owner = {"apgd-ce": adversary.apgd, "apgd-t": adversary.apgd_targeted, "fab-t": adversary.fab,
             "square": adversary.square}
    order = iter(names)  # the reference calls the attacks in this order, stopping once none is left robust
    totals = {"apgd-ce": APGD_ITERATIONS, "apgd-t": targets * APGD_ITERATIONS, "fab-t": targets * FAB_ITERATIONS,
              "square": SQUARE_QUERIES}
    with torch.no_grad():
        clean = (f(x).max(1)[1] == y).nonzero().squeeze(1).tolist()

    def positions(xs: torch.Tensor) -> list[int] | None:
        """The positions in x of the rows xs (copies of some of the points of the last stage, in order)."""
        before = stages[-1] if stages else clean
        if before is None:
            return None
        found, j = [], 0
        for row in xs:
            while j < len(before) and not torch.equal(x[before[j]], row):
                j += 1
            if j == len(before):
                return None  # not found: counts only
            found.append(before[j])
            j += 1
        return found

    def timed(perturb: Callable) -> Callable:
        def run(xs: torch.Tensor, ys: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            name = next(order)
            stages.append(positions(xs))
            if records:
                reporter.end(len(xs))
            reporter.begin(name, totals[name], len(xs))
            begin = time.perf_counter()
            out = perturb(xs, ys, *args, **kwargs)
            records.append(AttackRecord(name, time.perf_counter() - begin, len(xs), len(xs)))
            return out

        return run

    for attack in {id(a): a for a in owner.values()}.values():
        attack.perturb = timed(attack.perturb)
    grads = [(p, p.grad) for p in f.parameters()]  # FAB's backward() fills the parameters' .grad: put them back
    try:
        x_adv, y_adv = adversary.run_standard_evaluation(x, y, batch_size=len(x))
    finally:
        for p, g in grads:
            p.grad = g
    robust = y_adv == y
    after = stages[1:] + [robust.nonzero().squeeze(1).tolist()]
    for rec, stage, left, count in zip(records, stages, after, [r.robust_before for r in records[1:]] + [int(robust.sum())]):
        rec.robust_after = count
        rec.fooled = sorted(set(stage) - set(left)) if stage is not None and left is not None else []
    if records:
        reporter.end(int(robust.sum()))
    return x_adv.to(x.dtype), robust, records
