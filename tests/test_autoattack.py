"""fastpart's fast AutoAttack (``fastpart.attacks.autoattack``) against the reference, pyautoattack 0.2.0 run with
the same seed: the same robust points for the standard version and for each of its attacks alone, the same
adversarial examples bit for bit where the fast path computes the reference's batches as they are (fewer
than MIN_BATCH points), the fallback to the reference for a model whose outputs depend on the batch, and the
progress reports and per-attack timings that go into eval.json.

The model: a small ReLU network on 3x8x8 images with fixed seeded weights, at a budget where about half
of the clean-correct points are robust and both APGD-CE and APGD-T fool some (so the comparisons are not
vacuous); two labels are wrong (clean errors, never attacked). A run of the standard version on 32 points
takes a few seconds per backend on a CPU."""

from __future__ import annotations

import itertools
import json
import os
import warnings

import pytest
import torch
from torch import nn

pytest.importorskip("pyautoattack")

from fastpart.attacks import autoattack as aa  # noqa: E402
from fastpart.attacks.autoattack import shards  # noqa: E402
from fastpart.errors import FastpartError  # noqa: E402

EPS, SEED, HW = 0.04, 7, 8


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The fast path keeps the reference's verdicts where the model computes each point alike in any batch; CPU
    kernels do from 8 rows up with one thread (with several, their blocking may follow the batch, the probe
    sees it and the reference runs: the fallback test)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_net() -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * HW * HW, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
    return net.eval()


def points(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(n, 3, HW, HW, generator=torch.Generator().manual_seed(100))
    with torch.no_grad():
        y = small_net()(x).argmax(1)
    y[:2] = (y[:2] + 1) % 10  # two clean errors
    return x, y


class BatchDependent(nn.Module):
    """Logits that move with the batch's mean: not batch-invariant."""

    def __init__(self) -> None:
        super().__init__()
        self.net = small_net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + 1e-3 * x.mean()


def run(backend: str, n: int = 32, attacks=None, seed: int = SEED, model: nn.Module | None = None, **kwargs):
    x, y = points(n)
    return aa.autoattack(model or small_net(), x, y, EPS, attacks=attacks, seed=seed, backend=backend, **kwargs)


@pytest.fixture(scope="module")
def standard():
    """The standard version on 32 points, both backends, with their progress reports."""
    out = {}
    for backend in aa.BACKENDS:
        events = []
        x_adv, info = run(backend, progress=events.append)
        out[backend] = (x_adv, info, events)
    return out


def test_standard_version_has_the_references_robust_points(standard):
    _, fast, _ = standard["fast"]
    x_adv_ref, ref, _ = standard["reference"]
    assert fast.backend == "fast" and ref.backend == "reference" and not fast.note
    assert fast.clean == ref.clean == 30 and fast.n == 32
    assert torch.equal(fast.robust_mask, ref.robust_mask)
    assert 0 < fast.robust < fast.clean  # robust and non-robust points: not vacuous
    assert [r.attack for r in fast.per_attack] == [r.attack for r in ref.per_attack] == list(aa.STANDARD_ATTACKS)
    for f, r in zip(fast.per_attack, ref.per_attack):  # the same points fooled by each attack of the sequence
        assert (f.fooled, f.robust_before, f.robust_after) == (r.fooled, r.robust_before, r.robust_after), f.attack
    assert sum(bool(r.fooled) for r in fast.per_attack) >= 2  # APGD-CE and APGD-T both fool points here
    # the reference's record agrees with its output: exactly the robust points are classified correctly there
    _, y = points(32)
    with torch.no_grad():
        assert torch.equal(small_net()(x_adv_ref).argmax(1) == y, ref.robust_mask)


def test_fast_adversarial_examples_fool_and_stay_in_the_budget(standard):
    x_adv, fast, _ = standard["fast"]
    x, y = points(32)
    assert (x_adv - x).abs().max() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        clean = small_net()(x).argmax(1) == y
        still = small_net()(x_adv).argmax(1) == y
    fooled = clean & ~fast.robust_mask
    assert fooled.any() and not still[fooled].any()
    assert torch.equal(x_adv[fast.robust_mask], x[fast.robust_mask])


@pytest.mark.parametrize("attack", aa.STANDARD_ATTACKS)
def test_each_attack_alone_has_the_references_robust_points(attack):
    (x_fast, fast), (x_ref, ref) = run("fast", attacks=[attack]), run("reference", attacks=[attack])
    assert fast.backend == "fast"
    assert torch.equal(fast.robust_mask, ref.robust_mask)
    assert fast.per_attack[0].fooled == ref.per_attack[0].fooled
    assert 0 < fast.robust < fast.clean  # the attack fools some points and not others
    if attack == "square":  # Square's batches are the reference's at every query: the same examples
        assert torch.equal(x_fast, x_ref)


@pytest.mark.parametrize("attack", [*aa.STANDARD_ATTACKS, None])
def test_below_min_batch_the_adversarial_examples_are_the_references_bit_for_bit(attack):
    n = aa.MIN_BATCH - 2
    (x_fast, fast), (x_ref, ref) = run("fast", n=n, attacks=None if attack is None else [attack]), \
        run("reference", n=n, attacks=None if attack is None else [attack])
    assert fast.backend == "fast"
    assert torch.equal(fast.robust_mask, ref.robust_mask)
    assert any(r.fooled for r in fast.per_attack)  # some adversarial examples to compare
    assert torch.equal(x_fast, x_ref)


class Processes(nn.Module):
    """The model, noting (as files in ``folder``) the processes that call it."""

    def __init__(self, folder) -> None:
        super().__init__()
        self.net, self.folder = small_net(), folder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (self.folder / str(os.getpid())).touch()
        return self.net(x)


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """The standard version on 48 points, the fast path with two worker processes (shards from 16 points up),
    and the reference."""
    folder = tmp_path_factory.mktemp("callers")
    events: list = []
    fast = run("fast", n=48, workers=2, model=Processes(folder), progress=events.append)
    return fast, run("reference", n=48), events, {int(p.name) for p in folder.iterdir()}


def test_worker_processes_keep_the_references_verdicts(two_workers):
    (_, fast), (_, ref), events, callers = two_workers
    assert fast.backend == "fast" and fast.workers == 2 and fast.to_dict()["workers"] == 2
    assert len(callers - {os.getpid()}) >= 2  # workers computed shards
    assert torch.equal(fast.robust_mask, ref.robust_mask) and 0 < fast.robust < fast.clean
    for f, r in zip(fast.per_attack, ref.per_attack):
        assert (f.fooled, f.robust_before, f.robust_after) == (r.fooled, r.robust_before, r.robust_after), f.attack
    for attack in aa.STANDARD_ATTACKS:  # the shards' progress as one report: units done never go back
        done = [e.done for e in events if e.attack == attack]
        assert len(done) > 2 and done == sorted(done)


def test_square_in_shards_keeps_the_references_examples_and_runs_again_where_its_batch_got_small(monkeypatch):
    """Shards pad their points to MIN_BATCH rows: the reference's numbers while its own batch (the points not
    fooled yet) has MIN_BATCH points or more. At a budget where Square fools most points it falls below that,
    and Square runs again as one shard: the examples stay the reference's bit for bit."""
    passes = []
    map_shards = shards.Workers.map

    def spy(self, fn, parts, report):
        passes.append(len(parts))
        return map_shards(self, fn, parts, report)

    monkeypatch.setattr(shards.Workers, "map", spy)
    x, y = points(32)
    results = [aa.autoattack(small_net(), x, y, 0.1, attacks=["square"], seed=SEED, backend=b, workers=w)
               for b, w in (("fast", 2), ("reference", None))]
    (x_fast, fast), (x_ref, ref) = results
    assert passes == [2, 1]  # two shards, then one
    assert torch.equal(fast.robust_mask, ref.robust_mask) and torch.equal(x_fast, x_ref)
    assert fast.per_attack[0].fooled and fast.per_attack[0].robust_after < aa.MIN_BATCH


class Odd(Exception):
    """An exception that cannot be pickled (its class is not importable by name)."""


Odd.__qualname__ = "nowhere.Odd"


class FailsAfter(nn.Module):
    """The model, raising ``error`` from its ``calls``-th call on (counted in each process)."""

    def __init__(self, calls: int, error: Exception) -> None:
        super().__init__()
        self.net, self.calls, self.error = small_net(), calls, error

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls -= 1
        if self.calls < 0:
            raise self.error
        return self.net(x)


def test_a_failing_worker_stops_the_run_with_its_error_and_the_threads_are_restored():
    torch.set_num_threads(2)
    try:
        x, y = points(32)
        with pytest.raises(RuntimeError, match="boom"):
            aa.autoattack(FailsAfter(40, RuntimeError("boom")), x, y, EPS, attacks=["apgd-ce"], seed=SEED, workers=2)
        assert torch.get_num_threads() == 2
        with pytest.raises(shards.WorkerError, match="worker . failed(.|\n)*Odd: odd"):
            aa.autoattack(FailsAfter(40, Odd("odd")), x, y, EPS, attacks=["apgd-ce"], seed=SEED, workers=2)
        _, info = aa.autoattack(small_net(), x, y, EPS, attacks=["apgd-ce"], seed=SEED)
        assert info.workers == 2 and torch.get_num_threads() == 2  # workers: the caller's threads by default
    finally:
        torch.set_num_threads(1)


def test_the_seed_is_the_references():
    """Bit-equality above is not a coincidence of attacks that find the same points: another seed gives other
    examples."""
    n = aa.MIN_BATCH - 2
    x_other, other = run("fast", n=n, attacks=["square"], seed=SEED + 1)
    x_ref, ref = run("reference", n=n, attacks=["square"])
    x, y = points(n)
    with torch.no_grad():
        clean = small_net()(x).argmax(1) == y
    fooled = clean & ~other.robust_mask & ~ref.robust_mask  # fooled under both seeds
    assert fooled.any() and not torch.equal(x_other[fooled], x_ref[fooled])


def test_progress_reports_each_attack_with_the_points_still_robust(standard):
    for backend in aa.BACKENDS:
        _, info, events = standard[backend]
        starts = [e for e in events if e.done == 0 and not e.finished]
        ends = [e for e in events if e.finished]
        assert [e.attack for e in starts] == [e.attack for e in ends] == [r.attack for r in info.per_attack]
        for rec, start, end in zip(info.per_attack, starts, ends):
            assert (start.robust, end.robust) == (rec.robust_before, rec.robust_after)
            assert end.done == end.total > 0 and end.seconds > 0
        if backend == "fast":  # reports within the attacks too (the reference's run is a black box)
            steps = [e for e in events if 0 < e.done and not e.finished]
            assert steps and all(e.total >= e.done for e in steps)


def test_timings_and_counts_go_into_json(standard):
    for backend in aa.BACKENDS:
        _, info, _ = standard[backend]
        record = json.loads(json.dumps(info.to_dict()))
        assert record["backend"] == backend and record["seed"] == SEED and record["n"] == 32
        assert record["robust"] == int(info.robust_mask.sum()) and record["clean"] == info.clean
        attacks = record["per_attack"]
        assert [a["attack"] for a in attacks] == list(aa.STANDARD_ATTACKS)
        assert all(a["seconds"] > 0 for a in attacks)
        assert sum(a["seconds"] for a in attacks) <= record["seconds"] + 0.01
        assert attacks[0]["robust_before"] == info.clean and attacks[-1]["robust_after"] == info.robust
        assert all(a["robust_after"] == b["robust_before"] for a, b in itertools.pairwise(attacks))


class Counting(nn.Module):
    """The model, counting the images it computes with a backward pass and without."""

    def __init__(self) -> None:
        super().__init__()
        self.net, self.grad_images, self.images = small_net(), 0, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            self.grad_images += len(x)
        else:
            self.images += len(x)
        return self.net(x)


def test_fooled_points_leave_the_fast_attacks_early():
    work = {}
    for backend in aa.BACKENDS:
        model = Counting()
        _, info = run(backend, attacks=["apgd-ce"], model=model)
        work[backend] = (model.grad_images, model.images, info.robust)
    (fast_grad, fast_fwd, fast_robust), (ref_grad, ref_fwd, ref_robust) = work["fast"], work["reference"]
    assert fast_robust == ref_robust
    # the reference iterates all 30 clean-correct points 100 times; the fast path drops each once fooled
    assert ref_grad == 30 * 101 and fast_grad < 0.8 * ref_grad and fast_fwd < ref_fwd


def test_tqdm_progress_runs():
    _, info = run("fast", attacks=["apgd-ce"], progress=True)
    assert info.per_attack[0].seconds > 0


def test_batch_invariance_probe():
    x, y = points(32)
    assert aa.batch_invariant(aa.FloatLogits(small_net()), x, y)
    assert not aa.batch_invariant(aa.FloatLogits(BatchDependent()), x, y)


def test_a_batch_dependent_model_falls_back_to_the_reference():
    with pytest.warns(UserWarning, match="fast path not used"):
        x_adv, info = run("fast", attacks=["apgd-ce"], model=BatchDependent())
    assert info.backend == "reference (fallback)" and "depend on the batch" in info.note
    x_ref, ref = run("reference", attacks=["apgd-ce"], model=BatchDependent())
    assert torch.equal(x_adv, x_ref) and torch.equal(info.robust_mask, ref.robust_mask)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, forced = run("fast", attacks=["apgd-ce"], model=BatchDependent(), strict=False)
    assert forced.backend == "fast" and "may differ" in forced.note


def test_the_model_is_left_as_it_was():
    net = small_net().train()
    grads_before = [p.grad for p in net.parameters()]
    x, y = points(aa.MIN_BATCH)
    for backend in aa.BACKENDS:
        aa.autoattack(net, x, y, EPS, attacks=["fab-t"], seed=SEED, backend=backend, n_target_classes=1)
        assert net.training and all(m.training for m in net.modules())
        assert [p.grad for p in net.parameters()] == grads_before  # the reference's FAB fills .grad: put back


def test_bad_arguments_are_refused():
    x, y = points(4)
    with pytest.raises(FastpartError, match="backend"):
        aa.autoattack(small_net(), x, y, EPS, backend="quick")
    for workers in (0, 1.5, True):
        with pytest.raises(FastpartError, match="workers"):
            aa.autoattack(small_net(), x, y, EPS, workers=workers)
    with pytest.raises(FastpartError, match="unknown attacks"):
        aa.autoattack(small_net(), x, y, EPS, attacks=["apgd-dlr"])
    three = nn.Sequential(small_net(), nn.Linear(10, 3))
    with pytest.raises(FastpartError, match="at least 4 classes"):
        aa.autoattack(three, x, y % 3, EPS, attacks=["apgd-t"])
    empty_adv, empty = aa.autoattack(small_net(), x[:0], y[:0], EPS)
    assert empty_adv.shape == (0, 3, HW, HW) and empty.n == 0 and empty.robust == 0
