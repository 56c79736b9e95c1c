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
from tqdm import tqdm

from fastpart import distributed
from fastpart.attacks.generators import Generator
from fastpart.averaging import WeightAverage
from fastpart.budgets import Eps
from fastpart.loader import DeviceLoader
from fastpart.objectives import Objective, natural_probs
from fastpart.part import MaskPlan
from fastpart.schedules import Schedule, scaled_budget

__all__ = ["TIMED_BATCHES", "train_epoch", "train_step"]

TIMED_BATCHES = 5  # batches timed for the early estimate of a run's length (after the first)


def _timed(device: torch.device, timer: Callable[[int, float], None], batches: int, since: float | None) -> float:
    """At batch 1: the time the timing starts; at batch TIMED_BATCHES + 1: report the timed batches."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    now = time.perf_counter()
    if since is not None:
        timer(batches - 1, now - since)
    return now


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, objective: Objective, generate: Generator,
               x: torch.Tensor, y: torch.Tensor, eps: Eps, rng: torch.Generator, *,
               autocast_dtype: torch.dtype | None = None, update: nn.Module | None = None,
               average: WeightAverage | None = None) -> torch.Tensor:
    """One attack + SGD update; returns [loss * B, natural correct, adversarial correct] without syncing.

    ``model`` runs the natural forward and the attack (eval mode, input gradients only); ``generate``
    (``fastpart.attacks.generators``) crafts x_adv inside ``eps`` (a float, a tensor or ``EpsLevels``) from
    ``rng``; ``update`` (default: ``model``; the DistributedDataParallel wrapper under several processes)
    runs the train-mode forward whose backward updates the parameters; ``average`` (``--ema``) follows the
    parameters of the plain model after the step.
    """
    update = model if update is None else update
    model.eval()
    with torch.no_grad(), torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        logits_eval = model(x)
    probs = natural_probs(logits_eval) if objective.attack_needs_natural_probs else None
    x_adv = generate(model, x, y, eps, probs, rng)
    model.train()
    with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        logits_adv = update(x_adv)
        logits_nat = update(x) if objective.needs_natural_logits else None
        loss = objective.loss(logits_adv, logits_nat, y, objective.beta)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if average is not None:
        average.update()
    return torch.stack([loss.detach().float() * len(y), (logits_eval.argmax(1) == y).sum().float(),
                        (logits_adv.argmax(1) == y).sum().float()])


def train_epoch(model: nn.Module, loader: DeviceLoader, optimizer: torch.optim.Optimizer, objective: Objective,
                generate: Generator, rng: torch.Generator, *, eps: float = 8 / 255, masks: MaskPlan | None = None,
                autocast_dtype: torch.dtype | None = None, attack_net: nn.Module | None = None,
                update_net: nn.Module | None = None, average: WeightAverage | None = None,
                desc: str = "epoch", timer: Callable[[int, float], None] | None = None,
                schedule: Schedule | None = None, epoch: int = 0) -> dict[str, Any]:
    """One epoch of ``train_step``; returns its metrics record.

    The budget is ``eps`` everywhere, or with ``masks`` PART's per-pixel budget: the levels the loader
    looked up (its aux tensor), or, without them, the model's CAMs of each batch (``--mask-freq 0``; the
    record then has the important fraction and the degenerate maps). ``attack_net`` (default: the model)
    runs the attack and the update, e.g. a torch.compile'd model; ``update_net`` (default: ``attack_net``)
    the update alone, e.g. the DistributedDataParallel wrapper; ``average`` (``--ema``) follows every step.
    With a ``schedule`` (``fastpart.schedules``), epoch ``epoch``'s batches take its budget scale and, when it is
    per batch, its learning rate at t = epoch + batch / batches. ``timer(batches, seconds)`` is called once, with the time of batches 2 to ``TIMED_BATCHES + 1`` (the first
    pays for warm-ups), or of all batches after the first when the epoch is shorter: an early estimate of the
    run's length (one device synchronisation on CUDA).
    Under several processes the record sums every process's shard. Every sum stays on the device until
    the end of the epoch (one host synchronisation per epoch)."""
    sums = torch.zeros(5, device=loader.device)  # loss * B, natural, adversarial, important fraction, degenerate
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
                               autocast_dtype=autocast_dtype, update=update_net, average=average)
        seen += len(y)
        batches += 1
    if loader.device.type == "cuda":
        torch.cuda.synchronize(loader.device)
    seconds = time.perf_counter() - start
    if timer is not None and timed_from is not None and batches <= TIMED_BATCHES + 1 and batches > 1:
        timer(batches - 1, time.perf_counter() - timed_from)
    totals = torch.tensor([*sums.tolist(), seen, batches], dtype=torch.float64)
    loss_sum, natural, adversarial, important, degenerate, seen, batches = distributed.all_reduce_sum(totals).tolist()
    seen, batches = int(seen), int(batches)
    record = {"loss": loss_sum / seen, "train_natural_acc": natural / seen, "train_adv_acc": adversarial / seen,
              "images": seen, "epoch_seconds": seconds, "images_per_second": seen / seconds}
    if per_batch_masks:
        record.update(important_fraction=important / max(batches, 1), degenerate_maps=int(degenerate))
    return record
