"""Training objectives of the base methods AT, TRADES and MART, as one table.

Each objective says how PGD starts, which loss the attack ascends, and which loss the update descends.
With z = f(x) the natural logits, z' = f(x') the adversarial logits, p = softmax(z), p' = softmax(z'),
B the batch size and K the number of classes:

    AT     (Madry et al. 2018)  attack  sum_i CE(z'_i, y_i)
                                loss    mean_i CE(z'_i, y_i)
    TRADES (Zhang et al. 2019)  attack  sum_i sum_k p_ik (log p_ik - log p'_ik)          (p detached)
                                loss    mean_i CE(z_i, y_i) + beta * [sum_i sum_k p_ik (log p_ik - log p'_ik)] / B
    MART   (Wang et al. 2020)   attack  sum_i CE(z'_i, y_i)
                                loss    mean_i [CE(z'_i, y_i) - log(1.0001 - p'_{i,y'_i} + 1e-12)]
                                        + beta * mean_i [sum_k p_ik (log p_ik - log(p'_ik + 1e-12))]
                                                        * (1.0000001 - p_{i,y_i})
                                where y'_i = the most likely wrong class under p'_i (the top class of p'_i,
                                or the second one when the top class is y_i).

beta = 6 for TRADES and MART. The numerics follow the authors' code: yaodongyu/TRADES trades.py
(nn.KLDivLoss(size_average=False), i.e. a sum, divided by the batch size) and YisenWang/MART mart.py
(the 1.0001, 1e-12 and 1.0000001 constants, nn.KLDivLoss(reduction='none') on log(p' + 1e-12), the
top-2 trick for y'). KL terms use torch's convention 0 * log 0 = 0. Logits are cast to float32 first, so
bf16 logits (autocast) give float32 losses.

Around the losses, each objective also follows its authors' code (``Objective.start`` and ``.forwards``):

    start     PGD's start (``fastpart.attacks.pgd.STARTS``): AT uniform in the per-pixel box, clipped (Madry
              et al.; the released PART code's burn-in); TRADES and MART x + 0.001 N(0, 1), not clipped: the
              first attack gradient is taken there (trades.py, mart.py; the released PART-T and PART-M).
              ``released_start``: the start of the released PART code's masked phase (part_pgd:
              x + U(-8/255, 8/255) on every pixel, whatever the mask, not clipped); TRADES and MART keep theirs.
    forwards  the train-mode forwards of the update, in order, which set the batch-norm running statistics:
              AT x'; TRADES x, x', x (trades.py evaluates f(x) twice: the natural loss and the KL target);
              MART x, x'. A repeated input's forward is not run again: its batch statistics are the first
              one's, so ``fastpart.step`` replays that update of the running statistics.

Methods (``fastpart.config.METHODS``): at, trades, mart, and their pixel-reweighted versions part,
part-trades, part-mart (PART, PART-T, PART-M: the same objective, PGD inside PART's per-pixel budget after
the burn-in); ``get_objective`` takes any of them.

Example:
    objective = get_objective("trades")
    logits_nat = model(x)  # eval mode
    probs = natural_probs(logits_nat)
    x_adv = pgd(model, x, y, loss_fn=attack_loss_fn(objective, probs), start=objective.start)  # 8/255, 2/255, 10
    loss = objective.loss(model(x_adv), model(x), y)  # train mode; beta: the objective's own (6), or given
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F

from fastpart.config import METHODS
from fastpart.errors import FastpartError
from fastpart.options import did_you_mean

AttackLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
TrainLoss = Callable[..., torch.Tensor]  # (logits_adv, logits_nat | None, y, beta[, smoothing]) -> scalar

TRADES_BETA = 6.0
MART_BETA = 6.0
MART_BCE_ONE = 1.0001  # mart.py: log(1.0001 - adv_probs + 1e-12)
MART_LOG_EPS = 1e-12  # mart.py: log(adv_probs + 1e-12) and the BCE term above
MART_WEIGHT_ONE = 1.0000001  # mart.py: (1.0000001 - true_probs)


# ---- building blocks (all float32) -------------------------------------------------------------------


def natural_probs(logits_nat: torch.Tensor) -> torch.Tensor:
    """softmax(f(x)) in float32, detached: TRADES's attack target, computed once per batch."""
    return F.softmax(logits_nat.detach().float(), dim=1)


def kl_sum(logits_adv: torch.Tensor, probs_nat: torch.Tensor) -> torch.Tensor:
    """sum_i KL(p_i || softmax(z'_i)) = KLDivLoss(reduction='sum')(log_softmax(z'), p), as TRADES."""
    return F.kl_div(F.log_softmax(logits_adv.float(), dim=1), probs_nat.float(), reduction="sum")


def most_likely_wrong_class(probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MART's y': the top class of each row, or the runner-up where the top class is the label."""
    top2 = probs.topk(2, dim=1).indices
    return torch.where(top2[:, 0] == y, top2[:, 1], top2[:, 0])


def mart_bce(logits_adv: torch.Tensor, y: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """mean_i [CE(z'_i, y_i) - log(1.0001 - p'_{i,y'_i} + 1e-12)] (MART's boosted CE; CE label-smoothed by
    ``smoothing``)."""
    logits_adv = logits_adv.float()
    probs_adv = F.softmax(logits_adv, dim=1)
    wrong = most_likely_wrong_class(probs_adv, y)
    margin = F.nll_loss(torch.log(MART_BCE_ONE - probs_adv + MART_LOG_EPS), wrong)
    return F.cross_entropy(logits_adv, y, label_smoothing=smoothing) + margin


def mart_weighted_kl(logits_adv: torch.Tensor, logits_nat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """mean_i [sum_k KL_k(p_i || p'_i)] * (1.0000001 - p_{i,y_i}), with log(p' + 1e-12) as in mart.py."""
    probs_adv = F.softmax(logits_adv.float(), dim=1)
    probs_nat = F.softmax(logits_nat.float(), dim=1)
    kl = F.kl_div(torch.log(probs_adv + MART_LOG_EPS), probs_nat, reduction="none").sum(dim=1)
    true_probs = probs_nat.gather(1, y.unsqueeze(1)).squeeze(1)
    return (kl * (MART_WEIGHT_ONE - true_probs)).sum() / logits_adv.shape[0]


def _require(tensor: torch.Tensor | None, what: str, objective: str) -> torch.Tensor:
    if tensor is None:
        raise FastpartError(f"the {objective} objective needs {what}; got None")
    return tensor


# ---- attack losses: (logits_adv, y, natural_probs | None) -> per-sample losses (B,) ---------------------
# (the attacks' loss contract, fastpart.attacks.losses: PGD ascends their sum)


def ce_attack(logits_adv: torch.Tensor, y: torch.Tensor, probs_nat: torch.Tensor | None = None) -> torch.Tensor:
    return F.cross_entropy(logits_adv.float(), y, reduction="none")


def trades_attack(logits_adv: torch.Tensor, y: torch.Tensor, probs_nat: torch.Tensor | None) -> torch.Tensor:
    probs = _require(probs_nat, "natural probabilities for its attack", "trades").float()
    return F.kl_div(F.log_softmax(logits_adv.float(), dim=1), probs, reduction="none").sum(dim=1)


# ---- training losses: (logits_adv, logits_nat | None, y, beta[, smoothing]) -> scalar ---------------------
# (smoothing: label smoothing of their cross-entropy terms, ``--label-smoothing``, passed only when not 0; the KL
# terms and the attack losses are unchanged)


def at_loss(logits_adv: torch.Tensor, logits_nat: torch.Tensor | None, y: torch.Tensor, beta: float = 0.0,
            smoothing: float = 0.0) -> torch.Tensor:
    return F.cross_entropy(logits_adv.float(), y, label_smoothing=smoothing)


def trades_loss(logits_adv: torch.Tensor, logits_nat: torch.Tensor | None, y: torch.Tensor, beta: float = TRADES_BETA,
                smoothing: float = 0.0) -> torch.Tensor:
    logits_nat = _require(logits_nat, "natural logits", "trades").float()
    robust = kl_sum(logits_adv, F.softmax(logits_nat, dim=1)) / logits_adv.shape[0]
    return F.cross_entropy(logits_nat, y, label_smoothing=smoothing) + float(beta) * robust


def mart_loss(logits_adv: torch.Tensor, logits_nat: torch.Tensor | None, y: torch.Tensor, beta: float = MART_BETA,
              smoothing: float = 0.0) -> torch.Tensor:
    logits_nat = _require(logits_nat, "natural logits", "mart")
    return mart_bce(logits_adv, y, smoothing) + float(beta) * mart_weighted_kl(logits_adv, logits_nat, y)


# ---- the table -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Objective:
    """One base method: how PGD starts, what it ascends, what the update descends, which forwards it runs."""

    name: str
    start: str  # PGD start (fastpart.attacks.pgd.STARTS): "uniform" (AT) or "normal-unclipped" (TRADES, MART)
    needs_natural_logits: bool  # the training loss uses f(x)
    attack_loss: AttackLoss  # (logits_adv, y, natural_probs | None) -> per-sample losses (B,)
    train_loss: TrainLoss  # (logits_adv, logits_nat | None, y, beta[, smoothing]) -> scalar batch-mean loss; see loss
    beta: float = 0.0
    attack_needs_natural_probs: bool = False  # the attack uses softmax(f(x)) (TRADES): compute it first
    forwards: tuple[str, ...] | None = None  # train-mode forwards in order ("nat": x, "adv": x'; a repeat is
    # replayed); None: x, x' when the loss uses f(x), else x' alone
    released_start: str = ""  # the released PART code's start under PART's mask ("": ``start``)
    label_smoothing: float = 0.0  # of the training loss's cross-entropy terms (``with_label_smoothing``)

    def __post_init__(self) -> None:
        if self.forwards is None:
            object.__setattr__(self, "forwards", ("nat", "adv") if self.needs_natural_logits else ("adv",))
        if "adv" not in self.forwards or ("nat" in self.forwards) != self.needs_natural_logits:
            raise ValueError(f"objective {self.name!r}: forwards {self.forwards} must hold 'adv', and 'nat' exactly "
                             f"when needs_natural_logits ({self.needs_natural_logits})")

    def loss(self, logits_adv: torch.Tensor, logits_nat: torch.Tensor | None, y: torch.Tensor,
             beta: float | None = None) -> torch.Tensor:
        """The scalar batch-mean training loss; ``beta`` None: the objective's own (``self.beta``)."""
        beta = self.beta if beta is None else beta
        if self.label_smoothing:  # a four-argument loss of one's own still serves without label smoothing
            return self.train_loss(logits_adv, logits_nat, y, beta, self.label_smoothing)
        return self.train_loss(logits_adv, logits_nat, y, beta)

    def with_label_smoothing(self, smoothing: float) -> "Objective":
        """This objective with its cross-entropy terms label-smoothed by ``smoothing`` in [0, 1) (Szegedy et al.
        2016; ``F.cross_entropy(label_smoothing=...)``), as the strongest ResNet-18 entries of RobustBench train."""
        if not 0.0 <= smoothing < 1.0:
            raise FastpartError(f"label smoothing must be in [0, 1), got {smoothing}")
        return replace(self, label_smoothing=float(smoothing))

    def start_for(self, numerics: str = "official", masked: bool = False) -> str:
        """PGD's start under ``numerics`` (``fastpart.config.NUMERICS``) in the burn-in or under PART's mask."""
        if numerics == "released" and masked and self.released_start:
            return self.released_start
        return self.start


OBJECTIVES: dict[str, Objective] = {
    "at": Objective("at", "uniform", False, ce_attack, at_loss, released_start="uniform-unclipped"),
    "trades": Objective("trades", "normal-unclipped", True, trades_attack, trades_loss, TRADES_BETA, True,
                        forwards=("nat", "adv", "nat")),
    "mart": Objective("mart", "normal-unclipped", True, ce_attack, mart_loss, MART_BETA),  # forwards x, x'
}


def get_objective(name: str) -> Objective:
    """The ``Objective`` of a method: a base method (``at``, ``trades``, ``mart``) or any name of
    ``fastpart.config.METHODS``, whose base it is (``part`` -> at, ``part-trades`` -> trades, ``part-mart`` -> mart).
    An unknown name: ``FastpartError``, one line, with the closest name."""
    if isinstance(name, str):
        base = METHODS[name].objective if name in METHODS else name  # at, trades and mart are their own base
        if base in OBJECTIVES:
            return OBJECTIVES[base]
    choices = list(dict.fromkeys([*OBJECTIVES, *METHODS]))
    raise FastpartError(f"unknown objective {name!r}{did_you_mean(str(name), choices)}; "
                        f"choose from {', '.join(choices)}")


def attack_loss_fn(
    objective: Objective, natural_probs: torch.Tensor | None = None
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Bind softmax(f(x)) (detached, float32) into the attacks' (logits, y) -> per-sample loss signature."""
    if objective.attack_needs_natural_probs:
        _require(natural_probs, "natural probabilities for its attack", objective.name)
    probs = None if natural_probs is None else natural_probs.detach().float()
    attack = objective.attack_loss

    def loss_fn(logits_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return attack(logits_adv, y, probs)

    return loss_fn
