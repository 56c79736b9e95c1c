"""APGD and the minimum-margin attack: the checkpoint schedule, the losses, step-for-step agreement with the
reference APGD (pyautoattack), exact robust accuracy of linear classifiers, and the attack invariants."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from fastpart.attacks.apgd import apgd, checkpoints, checkpoints_paper
from fastpart.attacks.losses import ce_loss, margin, margin_loss_targeted
from fastpart.attacks.mma import mma, mma_ref, wrong_class_ranking
from fastpart.attacks.robust import robust_accuracy


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def conv_net(seed: int = 0, bn: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Conv2d(3, 8, 3, padding=1)] + ([nn.BatchNorm2d(8)] if bn else [])
    return nn.Sequential(*layers, nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 10)).eval()


def labelled(net: nn.Module, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(n, 3, 8, 8, generator=gen(seed))
    with torch.no_grad():
        return x, net(x).argmax(1)


# ---------------------------------------------------------------- the checkpoint schedule


def recurrence(n_iter: int) -> list[int]:
    """By hand from the reference code: first interval int(0.22 N), shrinking by int(0.03 N) to int(0.06 N)."""
    out, k = [0], max(math.floor(0.22 * n_iter), 1)
    while out[-1] + k <= n_iter:
        out.append(out[-1] + k)
        k = max(k - max(math.floor(0.03 * n_iter), 1), max(math.floor(0.06 * n_iter), 1))
    return out


def test_checkpoints_by_hand():
    assert checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99] == recurrence(100)
    assert checkpoints(20) == [0, 4, 7, 9] + list(range(10, 21)) == recurrence(20)
    # the paper's ceil(p_j N), p = 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99: same for 100, not for 20
    assert checkpoints_paper(100) == checkpoints(100)
    assert checkpoints_paper(20) == [0, 5, 9, 12, 14, 16, 18, 19, 20]
    assert all(checkpoints(n) == recurrence(n) for n in range(1, 130))


def reference_apgd(net, eps, n_iter, loss_fn=None):
    """pyautoattack's APGDAttack, recording the iterations at which it checks the step size."""
    autopgd = pytest.importorskip("pyautoattack.autopgd_base")
    ref = autopgd.APGDAttack(net, n_iter=n_iter, eps=eps, loss="ce", device="cpu")
    if loss_fn is not None:  # its targeted slot takes any per-sample loss
        ref.loss, ref.dlr_loss_targeted = "dlr-targeted", loss_fn
    seen, check = [0], ref.check_oscillation
    ref.check_oscillation = lambda v, j, k, y5, k3=0.75: (seen.append(j + 1), check(v, j, k, y5, k3))[1]
    return ref, seen


@pytest.mark.parametrize("n_iter", [20, 100])
def test_checkpoints_match_the_reference_code(n_iter):
    net = conv_net()
    x, y = labelled(net, 4, 0)
    ref, seen = reference_apgd(net, 8 / 255, n_iter)
    ref.init_hyperparam(x)
    ref.attack_single_run(x, y, x_init=x)
    assert seen == checkpoints(n_iter)


@pytest.mark.parametrize("loss", ["ce", "margin"])
@pytest.mark.parametrize("per_pixel", [False, True])
def test_step_for_step_equal_to_the_reference(loss, per_pixel):
    """Same start: best losses and returned points bit-identical to pyautoattack (step halving, restarts,
    momentum, its <= rule and first-step comparison included)."""
    net = conv_net()
    x, y = labelled(net, 16, 1)
    eps = torch.where(torch.rand(x.shape, generator=gen(2)) < 0.3, 6 / 255, 3 / 255) if per_pixel else 4 / 255
    x0 = (x + eps * (2 * torch.rand(x.shape, generator=gen(3)) - 1)).clamp(0, 1)
    with torch.no_grad():
        target = net(x).sort(1)[1][:, -2]
    loss_fn = ce_loss if loss == "ce" else (lambda z, yy: margin_loss_targeted(z, yy, target))
    ref, _ = reference_apgd(net, eps, 20, None if loss == "ce" else loss_fn)
    ref.init_hyperparam(x)
    x_best, acc, loss_best, x_best_adv = ref.attack_single_run(x, y, x_init=x0)
    mine, mine_loss = apgd(net, x, y, eps, 20, loss_fn, x_init=x0)
    assert torch.equal(mine_loss, loss_best)
    assert torch.equal(mine, torch.where(acc.bool().view(-1, 1, 1, 1), x_best, x_best_adv))
    assert 0 < acc.float().mean() < 1  # both branches of the returned point are exercised
    paper, _ = apgd(net, x, y, eps, 20, loss_fn, x_init=x0, rule="paper")
    assert not torch.equal(paper, mine)  # the comparison can tell the two rules apart


# ---------------------------------------------------------------- losses and target ranking


def test_margin_loss_by_hand():
    logits = torch.tensor([[1.0, 2.0, 3.0], [10.0, 0.0, -45.0], [0.0, 60.0, 1.0]])
    y, t = torch.tensor([0, 0, 0]), torch.tensor([2, 2, 1])
    # -max(z_y - z_t + 50, 0): -(1 - 3 + 50), -(10 + 45 + 50), -max(0 - 60 + 50, 0)
    assert margin_loss_targeted(logits, y, t).tolist() == [-48.0, -105.0, 0.0]
    assert margin_loss_targeted(logits, y, t, confidence=0.0).tolist() == [0.0, -55.0, 0.0]
    assert margin(logits, torch.tensor([2, 1, 1])).tolist() == [1.0, -10.0, 59.0]
    ranking = wrong_class_ranking(torch.tensor([[0.1, 0.5, 0.3, 0.9], [0.1, 0.5, 0.3, 0.9]]), torch.tensor([3, 1]))
    assert ranking.tolist() == [[1, 2, 0], [3, 2, 0]]


# ---------------------------------------------------------------- known answer: linear classifiers


def linear_problem(n: int = 256, classes: int = 4, seed: int = 0, scales: tuple[float, ...] = (1.0,)):
    """f(x) = W x + b, rows of W with zero mean (scaled by `scales`); x in [0.3, 0.7] so the budget never
    meets [0, 1]; 10% of labels wrong (naturally misclassified points)."""
    g = gen(seed)
    lin = nn.Linear(192, classes).double()
    with torch.no_grad():
        w = torch.randn(classes, 192, generator=g, dtype=torch.float64)
        scale = torch.tensor(scales, dtype=torch.float64).expand(classes)[:, None]
        lin.weight.copy_((w - w.mean(1, keepdim=True)) * scale)
        lin.bias.copy_(torch.randn(classes, generator=g, dtype=torch.float64))
    net = nn.Sequential(nn.Flatten(), lin).eval()
    x = 0.3 + 0.4 * torch.rand(n, 3, 8, 8, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = net(x).argmax(1)
    y = torch.where(torch.rand(n, generator=g) < 0.1, (y + 1) % classes, y)
    return net, lin, x, y


def pair_margins(lin, x, y, eps):
    """(N, K): (w_y - w_j) x + (b_y - b_j) - sum_i eps_i |w_y,i - w_j,i|, +inf at j = y; a point is robust
    iff every entry is > 0."""
    w, b = lin.weight.detach(), lin.bias.detach()
    d = w[y][:, None, :] - w[None]
    e = (eps * torch.ones_like(x)).flatten(1)
    m = (d * x.flatten(1)[:, None]).sum(-1) + (b[y][:, None] - b[None]) - (d.abs() * e[:, None]).sum(-1)
    return m.scatter(1, y[:, None], float("inf"))


BUDGETS = {"0.005": 0.005, "0.01": 0.01, "map": "map"}


@pytest.mark.parametrize("budget", BUDGETS)
def test_linear_classifier_exact_robust_accuracy(budget):
    net, lin, x, y = linear_problem()
    eps = BUDGETS[budget]
    if budget == "map":
        eps = torch.where(torch.rand(x.shape, generator=gen(9)) < 0.5, 0.005, 0.015).double()
    m = pair_margins(lin, x, y, eps).min(1)[0]
    provably_robust, provably_broken = m > 1e-9, m < -1e-9
    assert (provably_robust | provably_broken).all() and 0.1 < provably_robust.float().mean() < 0.9
    attacks = {
        "apgd-ce": (lambda: apgd(net, x, y, eps, 20, generator=gen(1))[0], 0.03),
        "mma": (lambda: mma(net, x, y, eps, k=3, steps=20, generator=gen(1)), 0.0),
        "mma_ref": (lambda: mma_ref(net, x, y, eps, k=3, generator=gen(1)), 0.0),
    }
    for name, (attack, slack) in attacks.items():
        x_adv = attack()
        assert ((x_adv - x).abs() <= eps + 1e-12).all(), name
        with torch.no_grad():
            robust = net(x_adv).argmax(1) == y
        assert not (~robust & provably_robust).any(), name  # a provably robust point is never broken
        # with 3 wrong classes and k = 3 the margin attacks are exact; CE may leave a few breakable points
        assert (robust & provably_broken).sum() <= math.floor(slack * len(x)), name


@pytest.mark.parametrize("k", [1, 2])
def test_mma_targets_the_most_likely_wrong_classes_in_order(k):
    """With k < 3 a point falls iff it falls toward one of its first k wrong classes (clean-logit order);
    rows of W of unequal size make the most likely wrong class often not the easiest to reach."""
    net, lin, x, y = linear_problem(seed=1, scales=(1.0, 0.3, 3.0, 1.0))
    eps = 0.01
    with torch.no_grad():
        logits = net(x)
    targets = wrong_class_ranking(logits, y)[:, :k]
    m = pair_margins(lin, x, y, eps)
    expected = (logits.argmax(1) == y) & (m.gather(1, targets) > 0).all(1)
    with torch.no_grad():
        robust = net(mma(net, x, y, eps, k=k, steps=20, generator=gen(0))).argmax(1) == y
    assert torch.equal(robust, expected)
    assert not torch.equal(expected, m.min(1)[0] > 0)  # k matters on this problem


# ---------------------------------------------------------------- invariants


def edge_batch(seed: int, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(n, 3, 8, 8, generator=gen(seed))
    x[:, :, :2], x[:, :, -2:] = 0.0, 1.0  # pixels on the [0, 1] edges
    return x, torch.randint(0, 10, (n,), generator=gen(seed + 100))


ATTACK_CALLS = {
    "apgd": lambda net, x, y, eps, **kw: apgd(net, x, y, eps, 10, **kw)[0],
    "apgd-margin": lambda net, x, y, eps, **kw: apgd(
        net, x, y, eps, 10, lambda z, yy: margin_loss_targeted(z, yy, (yy + 1) % 10), **kw
    )[0],
    "mma": lambda net, x, y, eps, **kw: mma(net, x, y, eps, k=3, steps=10, **kw),
    "mma_ref": lambda net, x, y, eps, **kw: mma_ref(net, x, y, eps, k=3, steps=10, **kw),
}


@pytest.mark.parametrize("name", ATTACK_CALLS)
def test_box_range_mode_and_no_parameter_gradients(name):
    net = conv_net(seed=3).train()
    x, y = edge_batch(0)
    eps = torch.where(torch.rand(x.shape, generator=gen(1)) < 0.3, 8 / 255, 2 / 255)
    stats = [b.clone() for b in net.buffers()]
    x_adv = ATTACK_CALLS[name](net, x, y, eps, generator=gen(2))
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert ((x_adv - x).abs() <= eps + 1e-7).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert ((x_adv - x).abs() > 2.5 / 255).any()  # the high-budget pixels are used
    assert net.training and all(torch.equal(a, b) for a, b in zip(stats, net.buffers()))  # ran in eval mode
    assert all(p.grad is None for p in net.parameters())
    # an eps map without the batch dimension broadcasts; bf16 autocast runs and stays in the box
    x_adv = ATTACK_CALLS[name](net, x, y, eps[0], generator=gen(2), autocast_dtype=torch.bfloat16)
    assert ((x_adv - x).abs() <= eps[0] + 1e-7).all() and x_adv.min() >= 0 and x_adv.max() <= 1


def test_uniform_map_equals_scalar_budget():
    net = conv_net(bn=False)
    x, y = labelled(net, 16, 4)
    scalar = apgd(net, x, y, 4 / 255, 10, generator=gen(1))
    tensor = apgd(net, x, y, torch.full_like(x, 4 / 255), 10, generator=gen(1))
    assert torch.equal(scalar[0], tensor[0]) and torch.equal(scalar[1], tensor[1])
    scalar, tensor = (mma(net, x, y, e, steps=5, generator=gen(1)) for e in (4 / 255, torch.full_like(x, 4 / 255)))
    assert torch.equal(scalar, tensor)


def test_more_iterations_never_raise_accuracy():
    """Empirical on a fixed seed (20 steps need not contain the 5-step run): APGD-CE and MMA."""
    net = conv_net(bn=False)
    x, y = labelled(net, 64, 5)
    accs = {}
    for n_iter in (5, 20):
        def apgd_ce(m, xb, yb):
            return apgd(m, xb, yb, 2 / 255, n_iter, generator=gen(0))[0]

        def mm3(m, xb, yb):
            return mma(m, xb, yb, 2 / 255, k=3, steps=n_iter, generator=gen(0))

        accs["apgd", n_iter] = robust_accuracy(net, x, y, apgd_ce, 2 / 255, batch_size=32)
        accs["mma", n_iter] = robust_accuracy(net, x, y, mm3, 2 / 255, batch_size=32)
    assert accs["apgd", 20] <= accs["apgd", 5] and accs["mma", 20] <= accs["mma", 5]
    assert accs["mma", 20] <= accs["apgd", 20] < 1.0 and accs["mma", 20] > 0.0


def test_naturally_misclassified_points_are_returned_clean():
    net = conv_net(bn=False)
    x, y = labelled(net, 8, 6)
    y_wrong = (y + 1) % 10
    assert torch.equal(mma(net, x, y_wrong, 8 / 255, generator=gen(0)), x)
    with torch.no_grad():
        assert (net(mma_ref(net, x, y_wrong, 8 / 255, generator=gen(0))).argmax(1) != y_wrong).all()
