"""AT / TRADES / MART objectives: hand-computed values, MART's wrong class, sums vs means, gradient
directions, the table, dtypes, and a TRADES attack through PGD."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn as nn

from fastpart.attacks.pgd import pgd, random_start
from fastpart.config import METHODS
from fastpart.errors import FastpartError
from fastpart.objectives import (
    OBJECTIVES,
    Objective,
    attack_loss_fn,
    get_objective,
    kl_sum,
    mart_weighted_kl,
    most_likely_wrong_class,
    natural_probs,
)

# B = 2, K = 3. Row 0: the adversarial top class is the label (MART's y' = runner-up, class 1);
# row 1: the top class (1) is not the label (2), so y' = the top class.
Z_ADV = [[2.0, 0.5, -1.0], [0.1, 1.5, 0.3]]
Z_NAT = [[1.0, 0.0, 0.5], [-0.5, 2.0, 1.0]]
Y = [0, 2]
Y_WRONG = [1, 1]


# ---- plain-python references -------------------------------------------------------------------------


def softmax(row: list[float]) -> list[float]:
    exps = [math.exp(v) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def ce(row: list[float], label: int) -> float:
    return -math.log(softmax(row)[label])


def kl(p: list[float], q: list[float], eps: float = 0.0) -> float:
    return sum(pk * (math.log(pk) - math.log(qk + eps)) for pk, qk in zip(p, q))


def hand_at() -> float:
    return sum(ce(z, y) for z, y in zip(Z_ADV, Y)) / len(Y)


def hand_trades(beta: float) -> float:
    natural = sum(ce(z, y) for z, y in zip(Z_NAT, Y)) / len(Y)
    robust = sum(kl(softmax(n), softmax(a)) for n, a in zip(Z_NAT, Z_ADV)) / len(Y)
    return natural + beta * robust


def hand_mart(beta: float) -> float:
    bce = robust = 0.0
    for a, n, y, wrong in zip(Z_ADV, Z_NAT, Y, Y_WRONG):
        p_adv, p_nat = softmax(a), softmax(n)
        bce += ce(a, y) - math.log(1.0001 - p_adv[wrong] + 1e-12)
        robust += kl(p_nat, p_adv, eps=1e-12) * (1.0000001 - p_nat[y])
    return bce / len(Y) + beta * robust / len(Y)


def tensors(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.tensor(Z_ADV, dtype=dtype), torch.tensor(Z_NAT, dtype=dtype), torch.tensor(Y)


def close(value: torch.Tensor, expected: float, tol: float = 1e-6) -> bool:
    return abs(value.item() - expected) <= tol


# ---- the table ---------------------------------------------------------------------------------------


def test_table_covers_exactly_the_three_methods():
    assert set(OBJECTIVES) == {"at", "trades", "mart"}
    for name, objective in OBJECTIVES.items():
        assert objective.name == name
        assert get_objective(name) is objective


def test_starts_betas_and_natural_logits():
    at, trades, mart = (OBJECTIVES[n] for n in ("at", "trades", "mart"))
    # Madry's start for AT; the official trades.py and mart.py start from x + 0.001 N(0, 1), unclipped
    assert (at.start, trades.start, mart.start) == ("uniform", "normal-unclipped", "normal-unclipped")
    # the released PART code's masked phase starts from x + U(-eps, eps) (part_pgd); PART-T and PART-M keep theirs
    assert [o.start_for("released", masked=True) for o in (at, trades, mart)] == [
        "uniform-unclipped", "normal-unclipped", "normal-unclipped"]
    assert [o.start_for("released", masked=False) for o in (at, trades, mart)] == [o.start for o in (at, trades, mart)]
    assert [o.start_for("official", masked=True) for o in (at, trades, mart)] == [o.start for o in (at, trades, mart)]
    # the train-mode forwards of the update: trades.py runs f(x), f(x'), f(x); mart.py f(x), f(x')
    assert (at.forwards, trades.forwards, mart.forwards) == (("adv",), ("nat", "adv", "nat"), ("nat", "adv"))
    assert trades.beta == 6.0 and mart.beta == 6.0
    assert not at.needs_natural_logits and trades.needs_natural_logits and mart.needs_natural_logits
    assert [o.attack_needs_natural_probs for o in (at, trades, mart)] == [False, True, False]


def test_unknown_objective_lists_the_names():
    with pytest.raises(FastpartError, match=r"^unknown objective 'madry' \(did you mean mart\?\); choose from at, "
                                            r"trades, mart, part, part-trades, part-mart$"):
        get_objective("madry")
    with pytest.raises(FastpartError, match=r"^unknown objective 'fgsm'; choose from at, trades"):
        get_objective("fgsm")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_name_gives_its_base_objective(name):
    assert get_objective(name) is OBJECTIVES[METHODS[name].objective]


@pytest.mark.parametrize("name", ["at", "trades", "mart"])
def test_the_loss_takes_the_objectives_own_beta_unless_given(name):
    adv, nat, y = tensors()
    objective = OBJECTIVES[name]
    assert torch.equal(objective.loss(adv, nat, y), objective.loss(adv, nat, y, objective.beta))
    changed = dataclasses.replace(objective, beta=1.5)  # the default is the objective's beta, not the function's
    assert torch.equal(changed.loss(adv, nat, y), objective.loss(adv, nat, y, 1.5))
    hand = {"at": hand_at(), "trades": hand_trades(1.5), "mart": hand_mart(1.5)}[name]
    assert close(changed.loss(adv, nat, y), hand)


@pytest.mark.parametrize("name", ["trades", "mart"])
def test_missing_natural_logits_is_a_clear_error(name):
    adv, _, y = tensors()
    with pytest.raises(FastpartError, match="natural logits"):
        OBJECTIVES[name].loss(adv, None, y, 6.0)


def test_trades_attack_without_natural_probs_is_a_clear_error():
    with pytest.raises(FastpartError, match="natural probabilities"):
        attack_loss_fn(OBJECTIVES["trades"], None)


# ---- values --------------------------------------------------------------------------------------------


def test_at_loss_is_mean_ce_on_adversarial_logits():
    adv, nat, y = tensors()
    objective = OBJECTIVES["at"]
    assert close(objective.loss(adv, nat, y, objective.beta), hand_at())
    assert close(objective.loss(adv, None, y, objective.beta), hand_at())


def test_trades_loss_matches_hand_value_with_default_beta():
    adv, nat, y = tensors()
    objective = OBJECTIVES["trades"]
    assert close(objective.loss(adv, nat, y, objective.beta), hand_trades(6.0))
    assert close(objective.loss(adv, nat, y, 1.0), hand_trades(1.0))


def test_trades_loss_with_identical_logits_is_plain_ce():
    _, nat, y = tensors()
    natural_ce = sum(ce(z, label) for z, label in zip(Z_NAT, Y)) / len(Y)
    assert close(OBJECTIVES["trades"].loss(nat.clone(), nat, y, 6.0), natural_ce)


def test_mart_loss_matches_hand_value_with_default_beta():
    adv, nat, y = tensors()
    objective = OBJECTIVES["mart"]
    assert close(objective.loss(adv, nat, y, objective.beta), hand_mart(6.0))
    assert close(objective.loss(adv, nat, y, 0.0), hand_mart(0.0))


def test_mart_constants_keep_a_sliver_of_kl_and_bound_the_log():
    """A confidently correct natural point (p_y = 1 in float32) still weighs its KL by 1.0000001 - 1, and
    log(p' + 1e-12) caps the KL at -log(1e-12) when p' underflows."""
    nat, adv, y = torch.tensor([[100.0, 0.0, 0.0]]), torch.tensor([[-20.0, 20.0, 0.0]]), torch.tensor([0])
    capped_kl = -math.log(1e-12)  # 27.63, not the 40 of log p'_0 = -40
    assert mart_weighted_kl(adv, nat, y).item() == pytest.approx(capped_kl * 1e-7, rel=0.25)


def test_mart_wrong_class_is_the_most_likely_non_label():
    probs = torch.tensor(
        [
            [0.6, 0.1, 0.3],  # label 0 on top -> runner-up 2
            [0.6, 0.1, 0.3],  # label 2 not on top -> top 0
            [0.2, 0.5, 0.3],  # label 0 last -> top 1
            [0.25, 0.15, 0.6],  # label 2 on top -> runner-up 0
        ]
    )
    y = torch.tensor([0, 2, 0, 2])
    assert most_likely_wrong_class(probs, y).tolist() == [2, 0, 1, 0]
    adv, _, y_hand = tensors()
    assert most_likely_wrong_class(torch.softmax(adv, 1), y_hand).tolist() == Y_WRONG


def test_attack_losses_match_hand_values_per_sample():
    adv, nat, y = tensors()
    probs = natural_probs(nat)
    ces = [ce(z, label) for z, label in zip(Z_ADV, Y)]
    kls = [kl(softmax(n), softmax(a)) for n, a in zip(Z_NAT, Z_ADV)]
    for name, probs_or_none, expected in (("at", None, ces), ("mart", None, ces), ("trades", probs, kls)):
        losses = attack_loss_fn(OBJECTIVES[name], probs_or_none)(adv, y)
        assert losses.shape == (2,)  # the attacks' contract: one loss per sample
        assert all(close(v, e) for v, e in zip(losses, expected)) and close(losses.sum(), sum(expected))


# ---- sums vs means, gradients ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_attack_loss_is_per_sample_and_training_loss_a_mean(name):
    adv, nat, y = tensors()
    objective = OBJECTIVES[name]
    adv2, nat2, y2 = torch.cat([adv, adv]), torch.cat([nat, nat]), torch.cat([y, y])
    single = attack_loss_fn(objective, natural_probs(nat))(adv, y)
    double = attack_loss_fn(objective, natural_probs(nat2))(adv2, y2)
    assert torch.allclose(double, torch.cat([single, single]), atol=1e-6)
    assert torch.allclose(double.sum(), 2 * single.sum(), atol=1e-6)
    beta = objective.beta
    assert torch.allclose(objective.loss(adv2, nat2, y2, beta), objective.loss(adv, nat, y, beta), atol=1e-6)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_attack_gradient_increases_the_attack_loss(name):
    adv, nat, y = tensors()
    loss_fn = attack_loss_fn(OBJECTIVES[name], natural_probs(nat))
    adv.requires_grad_(True)
    before = loss_fn(adv, y).sum()
    (grad,) = torch.autograd.grad(before, adv)
    assert grad.abs().sum() > 0
    with torch.no_grad():
        assert loss_fn(adv + 1e-2 * grad, y).sum() > before
        assert loss_fn(adv + 1e-2 * grad.sign(), y).sum() > before
        assert loss_fn(adv - 1e-2 * grad, y).sum() < before


def test_trades_attack_targets_are_detached():
    _, nat, y = tensors()
    nat.requires_grad_(True)
    loss = attack_loss_fn(OBJECTIVES["trades"], torch.softmax(nat, 1))(torch.zeros(2, 3, requires_grad=True), y).sum()
    assert loss.grad_fn is not None
    (grad_nat,) = torch.autograd.grad(loss, nat, allow_unused=True)
    assert grad_nat is None


def test_trades_attack_gradient_vanishes_at_the_natural_point():
    """Why TRADES starts from x + 0.001 N(0, 1): KL(p || p') has zero gradient at p' = p."""
    _, nat, y = tensors()
    start = nat.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(attack_loss_fn(OBJECTIVES["trades"], natural_probs(nat))(start, y).sum(), start)
    assert grad.abs().max() < 1e-6


# ---- dtypes ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_bf16_logits_give_the_fp32_loss_in_float32(name):
    objective = OBJECTIVES[name]
    adv, nat, y = tensors()
    adv16, nat16, _ = tensors(torch.bfloat16)
    full = objective.loss(adv, nat, y, objective.beta)
    half = objective.loss(adv16, nat16, y, objective.beta)
    assert half.dtype == torch.float32 and full.dtype == torch.float32
    assert abs(half.item() - full.item()) < 1e-2
    attack = attack_loss_fn(objective, natural_probs(nat16))(adv16, y)
    assert attack.dtype == torch.float32


# ---- through PGD -----------------------------------------------------------------------------------------


def test_trades_attack_through_pgd_raises_the_kl_term():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5)).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 4, 4, generator=g)
    y = torch.randint(0, 5, (8,), generator=g)
    objective = OBJECTIVES["trades"]
    with torch.no_grad():
        probs = natural_probs(model(x))
    loss_fn = attack_loss_fn(objective, probs)
    eps = 8 / 255
    start, seed = objective.start, torch.Generator().manual_seed(1)
    x_adv = pgd(model, x, y, eps, 2 / 255, 5, loss_fn=loss_fn, start=start, generator=seed)
    x_start = random_start(x, eps, objective.start, torch.Generator().manual_seed(1))
    assert (x_adv - x).abs().max() <= eps + 1e-6
    with torch.no_grad():
        kl_start, kl_adv = kl_sum(model(x_start), probs), kl_sum(model(x_adv), probs)
    assert kl_adv > 10 * kl_start
    assert not any(p.grad is not None for p in model.parameters())


def test_an_objective_made_without_forwards_gets_them_from_whether_its_loss_uses_f_x():
    """A user's objective whose loss uses f(x) got no natural logits in the update (forwards defaulted to x' alone):
    the forwards follow needs_natural_logits unless given, and contradicting it is refused."""
    from fastpart.attacks.generators import GeneratorSettings, make_generator
    from fastpart.attacks.losses import ce_loss
    from fastpart.step import train_step

    seen = []

    def loss(logits_adv, logits_nat, y, beta):
        seen.append(logits_nat)
        return nn.functional.cross_entropy(logits_adv, y) + beta * nn.functional.cross_entropy(logits_nat, y)

    mine = Objective("mine", "uniform", True, lambda logits, y, probs: ce_loss(logits, y), loss, 0.5)
    assert mine.forwards == ("nat", "adv")
    assert Objective("plain", "uniform", False, OBJECTIVES["at"].attack_loss, OBJECTIVES["at"].train_loss).forwards \
        == ("adv",)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(3))
    x, y = torch.rand(4, 3, 6, 6), torch.tensor([0, 1, 2, 0])
    model(x)
    generate = make_generator("pgd", GeneratorSettings(mine.attack_loss, "uniform", 2 / 255, 1))
    train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), mine, generate, x, y, 8 / 255,
               torch.Generator().manual_seed(0))
    assert len(seen) == 1 and seen[0] is not None and seen[0].shape == (4, 3)
    with pytest.raises(ValueError, match="'nat' exactly when needs_natural_logits"):
        Objective("bad", "uniform", True, mine.attack_loss, loss, forwards=("adv",))
    with pytest.raises(ValueError, match="must hold 'adv'"):
        Objective("bad", "uniform", True, mine.attack_loss, loss, forwards=("nat",))
