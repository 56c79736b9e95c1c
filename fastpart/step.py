"""One step and one epoch of adversarial training, free of any run configuration.

``train_step``: the natural forward and the attack with the model in eval mode (input gradients only), then
one optimizer step on the objective's loss with the model in train mode. ``train_epoch``: the steps of one
epoch over a ``DeviceLoader``, under the plain budget or PART's per-pixel budget (a ``MaskPlan``), with every
sum kept on the device until the epoch ends. ``fastpart.training`` runs them for ``fastpart train``; a
user's own loop can call them directly:

    objective = get_objective("trades")
    generate = make_generator("pgd", GeneratorSettings(objective.attack_loss, objective.start, 2 / 255, 10))
    sums = train_step(model, optimizer, objective, generate, x, y, 8 / 255, torch.Generator())
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _NormBase
from tqdm import tqdm

from fastpart import distributed
from fastpart.attacks.generators import Generator
from fastpart.averaging import WeightAverage
from fastpart.awp import AdversarialWeightPerturbation
from fastpart.budgets import Eps, scaled_budget
from fastpart.loader import DeviceLoader
from fastpart.objectives import Objective, natural_probs
from fastpart.part import MaskPlan
from fastpart.schedules import Schedule

__all__ = ["TIMED_BATCHES", "RunningStatsReplay", "train_epoch", "train_step"]

TIMED_BATCHES = 5  # batches timed for the early estimate of a run's length (after the first)


def _timed(device: torch.device, timer: Callable[[int, float], None], batches: int, since: float | None) -> float:
    """At batch 1: the time the timing starts; at batch TIMED_BATCHES + 1: report the timed batches."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    now = time.perf_counter()
    if since is not None:
        timer(batches - 1, now - since)
    return now


class RunningStatsReplay:
    """Replays the running-statistics update of a train-mode forward without running it again.

    A train-mode batch-norm layer with momentum m sets r <- (1 - m) r + m s, s its batch statistic (mean,
    unbiased variance), and counts the batch. A second forward of the same batch with unchanged weights has the
    same s, so its update is r <- (1 - m) r + (r1 - (1 - m) r0), with r0 and r1 the statistics before and after
    the first forward: ``before`` keeps (1 - m) r0, ``after`` m s, ``replay`` applies it (a few fused foreach
    ops, no host synchronisation; float32 rounding of a few units in the last place). Layers whose momentum
    is None (a cumulative average) are not covered: ``exact`` is then False and the caller runs the forward.
    """

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if isinstance(m, _NormBase) and m.track_running_stats
                       and m.training and m.running_mean is not None]
        self.exact = all(m.momentum is not None for m in self.layers)
        self.groups: dict[float, list[nn.Module]] = {}
        for m in self.layers:
            self.groups.setdefault(float(m.momentum or 0.0), []).append(m)
        self.kept: dict[float, list[torch.Tensor]] = {}
        self.counted: list[torch.Tensor] = []

    @staticmethod
    def _buffers(layers: list[nn.Module]) -> list[torch.Tensor]:
        return [b for m in layers for b in (m.running_mean, m.running_var)]

    @torch.no_grad()
    def before(self) -> None:
        self.kept = {m: torch._foreach_mul(self._buffers(layers), 1.0 - m) for m, layers in self.groups.items()}
        self.counted = [layer.num_batches_tracked.clone() for layer in self.layers]

    @torch.no_grad()
    def after(self) -> None:
        for m, layers in self.groups.items():
            self.kept[m] = torch._foreach_sub(self._buffers(layers), self.kept[m])  # r1 - (1 - m) r0 = m s
        self.counted = torch._foreach_sub([layer.num_batches_tracked for layer in self.layers], self.counted)

    @torch.no_grad()
    def replay(self) -> None:
        for m, layers in self.groups.items():
            buffers = self._buffers(layers)
            torch._foreach_mul_(buffers, 1.0 - m)
            torch._foreach_add_(buffers, self.kept[m])
        torch._foreach_add_([layer.num_batches_tracked for layer in self.layers], self.counted)  # 1 (0 if unused)


def _no_statistics(update: nn.Module, objective: Objective,
                   inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None, list[Callable]]:
    """A model without running statistics: each input's forward once."""
    logits = {name: update(inputs[name]) for name in dict.fromkeys(objective.forwards)}
    return logits["adv"], logits.get("nat"), []


def _update_forwards(update: nn.Module, model: nn.Module, objective: Objective, x: torch.Tensor,
                     x_adv: torch.Tensor, replay: bool) -> tuple[torch.Tensor, torch.Tensor | None, list[Callable]]:
    """The objective's train-mode forwards in its order (``Objective.forwards``). A repeated input's forward is run
    again without gradients (``replay`` False, or a layer ``RunningStatsReplay`` does not cover) or replayed on
    the running statistics: then returned, to be called after the backward (a train-mode backward does not read
    the running statistics, but autograd would see them changed in place). Returns (logits of x', logits of x or
    None, the replays)."""
    inputs = {"nat": x, "adv": x_adv}
    repeated = {name for i, name in enumerate(objective.forwards) if name in objective.forwards[:i]}
    stats = RunningStatsReplay(model) if repeated else None
    if stats is not None and not stats.layers:
        return _no_statistics(update, objective, inputs)
    stats = stats if stats is not None and stats.exact and replay else None
    logits: dict[str, torch.Tensor] = {}
    replays: list[Callable] = []
    for name in objective.forwards:
        if name in logits:
            if stats is not None:
                replays.append(stats.replay)
            else:
                with torch.no_grad():
                    update(inputs[name])
            continue
        if stats is not None and name in repeated:
            stats.before()
        logits[name] = update(inputs[name])
        if stats is not None and name in repeated:
            stats.after()
    return logits["adv"], logits.get("nat"), replays


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, objective: Objective, generate: Generator,
               x: torch.Tensor, y: torch.Tensor, eps: Eps, rng: torch.Generator, *,
               autocast_dtype: torch.dtype | None = None, update: nn.Module | None = None,
               average: WeightAverage | None = None, replay: bool = True,
               awp: AdversarialWeightPerturbation | None = None) -> torch.Tensor:
    """One attack + SGD update; returns [loss * B, natural correct, adversarial correct] without syncing.

    ``model`` runs the natural forward and the attack (eval mode, input gradients only); ``generate``
    (``fastpart.attacks.generators``) crafts x_adv inside ``eps`` (a float, a tensor or ``EpsLevels``) from
    ``rng``; ``update`` (default: ``model``; the DistributedDataParallel wrapper under several processes)
    runs the train-mode forwards whose backward updates the parameters, in the objective's order (AT: x';
    TRADES: x, x', x; MART: x, x'), which sets the batch-norm running statistics as the authors' code does;
    TRADES's second forward of x is replayed on the statistics (``replay`` False: run again without
    gradients); ``awp`` (``--awp``, ``fastpart.awp``) moves the weights to where the objective's loss on x' is
    higher before the update's forwards and takes the move back after the step; ``average`` (``--ema``)
    follows the parameters of the plain model after the step.
    """
    update = model if update is None else update
    model.eval()
    with torch.no_grad(), torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        logits_eval = model(x)
    probs = natural_probs(logits_eval) if objective.attack_needs_natural_probs else None
    x_adv = generate(model, x, y, eps, probs, rng)
    model.train()
    moved = None
    with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        if awp is not None:
            moved = awp.perturb(lambda: objective.loss(
                model(x_adv), model(x) if objective.needs_natural_logits else None, y, objective.beta))
        logits_adv, logits_nat, replays = _update_forwards(update, model, objective, x, x_adv, replay)
        loss = objective.loss(logits_adv, logits_nat, y, objective.beta)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    for replayed in replays:
        replayed()
    optimizer.step()
    if moved is not None:
        awp.restore(moved)
    if average is not None:
        average.update()
    return torch.stack([loss.detach().float() * len(y), (logits_eval.argmax(1) == y).sum().float(),
                        (logits_adv.argmax(1) == y).sum().float()])


def train_epoch(model: nn.Module, loader: DeviceLoader, optimizer: torch.optim.Optimizer, objective: Objective,
                generate: Generator, rng: torch.Generator, *, eps: float = 8 / 255, masks: MaskPlan | None = None,
                autocast_dtype: torch.dtype | None = None, attack_net: nn.Module | None = None,
                update_net: nn.Module | None = None, average: WeightAverage | None = None,
                awp: AdversarialWeightPerturbation | None = None, desc: str = "epoch", timer: Callable[[int, float], None] | None = None,
                schedule: Schedule | None = None, epoch: int = 0) -> dict[str, Any]:
    """One epoch of ``train_step``; returns its metrics record.

    The budget is ``eps`` everywhere, or with ``masks`` PART's per-pixel budget: the levels the loader
    looked up (its aux tensor), or, without them, the model's CAMs of each batch (``--mask-freq 0``; the
    record then has the important fraction and the degenerate maps). ``attack_net`` (default: the model)
    runs the attack and the update, e.g. a torch.compile'd model; ``update_net`` (default: ``attack_net``)
    the update alone, e.g. the DistributedDataParallel wrapper; ``average`` (``--ema``) follows every step;
    ``awp`` (``--awp``) perturbs the weights of every step (the record then has ``awp_loss``: the training loss
    at the unperturbed weights, beside ``loss`` at the perturbed ones).
    With a ``schedule`` (``fastpart.schedules``), epoch ``epoch``'s batches take its budget scale and, when it is
    per batch, its learning rate at t = epoch + batch / batches. ``timer(batches, seconds)`` is called once, with the time of batches 2 to ``TIMED_BATCHES + 1`` (the first
    pays for warm-ups), or of all batches after the first when the epoch is shorter: an early estimate of the
    run's length (one device synchronisation on CUDA).
    Under several processes the record sums every process's shard. Every sum stays on the device until
    the end of the epoch (one host synchronisation per epoch)."""
    sums = torch.zeros(6, device=loader.device)  # loss * B, natural, adversarial, important, degenerate, AWP loss * B
    seen = batches = per_batch_masks = 0
    attack_net = model if attack_net is None else attack_net
    update_net = attack_net if update_net is None else update_net
    start = time.perf_counter()
    timed_from = None
    per_epoch = max(len(loader), 1)
    for batch in tqdm(loader, desc=desc, leave=False, mininterval=1.0, disable=not distributed.is_main()):
        if timer is not None and batches in (1, TIMED_BATCHES + 1):
            timed_from = _timed(loader.device, timer, batches, timed_from)
        x, y, _, aux = batch if len(batch) == 4 else (*batch, None)
        t = epoch + batches / per_epoch
        if schedule is not None and schedule.per_batch:
            for group in optimizer.param_groups:
                group["lr"] = schedule.lr_at(t)
        budget = eps
        if masks is not None and aux is not None:
            budget = masks.budget(aux)
        elif masks is not None:
            budget, stats = masks.batch_budget(model, x, y)
            sums[3] += stats["important"]
            sums[4] += stats["degenerate"]
            per_batch_masks += 1
        if schedule is not None:
            budget = scaled_budget(budget, schedule.eps_scale(t))
        sums[:3] += train_step(attack_net, optimizer, objective, generate, x, y, budget, rng,
                               autocast_dtype=autocast_dtype, update=update_net, average=average, awp=awp)
        if awp is not None:
            sums[5] += awp.last_loss.float() * len(y)
        seen += len(y)
        batches += 1
    if loader.device.type == "cuda":
        torch.cuda.synchronize(loader.device)
    seconds = time.perf_counter() - start
    if timer is not None and timed_from is not None and batches <= TIMED_BATCHES + 1 and batches > 1:
        timer(batches - 1, time.perf_counter() - timed_from)
    totals = torch.tensor([*sums.tolist(), seen, batches], dtype=torch.float64)
    loss_sum, natural, adversarial, important, degenerate, awp_sum, seen, batches = \
        distributed.all_reduce_sum(totals).tolist()
    seen, batches = int(seen), int(batches)
    record = {"loss": loss_sum / seen, "train_natural_acc": natural / seen, "train_adv_acc": adversarial / seen,
              "images": seen, "epoch_seconds": seconds, "images_per_second": seen / seconds}
    if awp is not None:
        record["awp_loss"] = awp_sum / seen
    if per_batch_masks:
        record.update(important_fraction=important / max(batches, 1), degenerate_maps=int(degenerate))
    return record
