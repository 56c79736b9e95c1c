"""What ``fastpart eval`` can measure, by name (``--attacks``): a registry of *evaluators*, each a list of
accuracy *items*. (``fastpart.evaluation`` runs them and writes eval.json; ``fastpart.monitor`` is the
accuracy training watches while it runs.)

An item is one accuracy over a data set (the test split, a subset, or one CIFAR-10-C corruption and
severity): per batch, a bool per point (correct / robust under ``fastpart.attacks.robust``'s definition).
An evaluator asks for items and, for compound results (eps-curve, checks, cifar10c), summarises them.
``fastpart.evaluation`` measures the items batch by batch, resumably. The names and conventions are in
``fastpart.evaluation``'s docstring; ``get_evaluator(name)`` knows the patterns pgd<k> and adaptive<k>.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from fastpart.attacks import robust
from fastpart.attacks.mma import mma, mma_ref
from fastpart.attacks.pgd import pgd
from fastpart.config import EvalConfig
from fastpart.errors import FastpartError
from fastpart.budgets import Eps, EpsLevels
from fastpart.part import part_budget
from fastpart.data.splitfiles import dataset_manifest
from fastpart.resolve import mask_settings
from fastpart.runfolder import LoadedRun

UNBOUNDED_EPS, UNBOUNDED_ALPHA, UNBOUNDED_STEPS = 1.0, 0.05, 50
AA_ATTACKS = {"aa-apgd-ce": ["apgd-ce"], "aa-apgd-t": ["apgd-t"], "aa-fab-t": ["fab-t"], "aa-square": ["square"],
              "aa-fast": ["apgd-ce", "apgd-t"]}


# ---------------------------------------------------------------------------------------------
# Context: the model under evaluation and what every attack needs
# ---------------------------------------------------------------------------------------------


@dataclass
class Context:
    run: LoadedRun
    cfg: EvalConfig
    device: torch.device
    autocast: torch.dtype | None
    surrogate: LoadedRun | None = None
    notes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # what attacks record per batch run

    @property
    def model(self) -> nn.Module:
        return self.run.model

    def predict(self, x: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        return robust.predict_labels(model or self.model, self.autocast)(x)


Attack = Callable[[Context, torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, Eps]]


def attacked_correct(ctx: Context, name: str, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator,
                     attack: Attack) -> torch.Tensor:
    """Per-point robustness (``fastpart.attacks.robust``): clean-correct, and still correct on ``attack``'s
    output, which must lie inside the budget the attack returns."""
    return robust.robust_correct(ctx.predict, x, y, lambda xs, ys: attack(ctx, xs, ys, gen), name=name)


# ---------------------------------------------------------------------------------------------
# Attacks
# ---------------------------------------------------------------------------------------------


def pgd_attack(steps: int, eps: float | None = None, alpha: float | None = None, source: str = "model") -> Attack:
    def run(ctx: Context, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, Eps]:
        budget = ctx.cfg.eps if eps is None else eps
        model = ctx.surrogate.model if source == "surrogate" else ctx.model
        x_adv = pgd(model, x, y, budget, ctx.cfg.alpha if alpha is None else alpha, steps, generator=gen,
                    autocast_dtype=ctx.autocast, stop_on_success=source == "model")
        return x_adv, budget

    return run


def mma_attack(ctx: Context, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, Eps]:
    return mma(ctx.model, x, y, ctx.cfg.eps, k=3, steps=20, generator=gen, autocast_dtype=ctx.autocast), ctx.cfg.eps


def mma_ref_attack(ctx: Context, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, Eps]:
    x_adv = mma_ref(ctx.model, x, y, ctx.cfg.eps, k=3, steps=20, alpha=ctx.cfg.alpha, generator=gen,
                    autocast_dtype=ctx.autocast)
    return x_adv, ctx.cfg.eps


def autoattack(attacks: list[str] | None) -> Attack:
    """AutoAttack, the standard version (attacks None) or a subset of its attacks with the standard version's
    settings, through ``fastpart.attacks.autoattack``: its fast path (``--aa-backend fast``, the default: the
    verdicts of the reference, pyautoattack, or the reference itself where the model is not batch-invariant) or
    pyautoattack as-is (``--aa-backend reference``). The seed of a batch is drawn from its generator."""

    def run(ctx: Context, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, Eps]:
        from fastpart.attacks.autoattack import autoattack as run_autoattack

        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen, device=gen.device).item())
        classes = ctx.run.manifest["num_classes"]
        x_adv, info = run_autoattack(ctx.model, x, y, ctx.cfg.eps, attacks=attacks, seed=seed,
                                     n_target_classes=min(9, classes - 1), autocast_dtype=ctx.autocast,
                                     backend=ctx.cfg.aa_backend, progress=True)
        ctx.notes.setdefault("autoattack", []).append(info.to_dict())
        return x_adv.to(x.dtype), ctx.cfg.eps

    return run


def adaptive_budget(ctx: Context, x: torch.Tensor) -> EpsLevels:
    """Pixel-AG on the evaluated model itself: its CAM masks, with the raised budgets."""
    cfg = ctx.run.config
    return part_budget(ctx.model, x, eps=ctx.cfg.adaptive_eps, eps_low=ctx.cfg.adaptive_eps_low,
                       settings=replace(mask_settings(cfg), target="pred"), precision=cfg.precision)


def adaptive_pgd(steps: int) -> Attack:
    def run(ctx: Context, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, Eps]:
        eps = adaptive_budget(ctx, x)
        return pgd(ctx.model, x, y, eps, ctx.cfg.alpha, steps, generator=gen, autocast_dtype=ctx.autocast,
                   stop_on_success=True), eps

    return run


def adaptive_mma(ctx: Context, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, Eps]:
    eps = adaptive_budget(ctx, x)
    return mma(ctx.model, x, y, eps, k=3, steps=20, generator=gen, autocast_dtype=ctx.autocast), eps


def c_manifest(ctx: Context) -> dict[str, Any]:
    return dataset_manifest(ctx.cfg.c_data_dir or ctx.run.config.data_dir, ctx.cfg.c_dataset)


def corruption_splits(ctx: Context) -> list[str]:
    manifest = c_manifest(ctx)
    return [s for s in manifest["splits"]]


# ---------------------------------------------------------------------------------------------
# Items and evaluators
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One accuracy over a data set: per batch, a bool per point (correct / robust)."""

    key: str
    correct: Callable[[Context, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]
    data: str = "test"  # "test", "test@<n>" (a seeded subset of n of them), or "c:<corruption>:<severity>"
    stream: str = ""  # the random stream's name (default: the key); PGD items share one, whatever k and eps

    @property
    def seed_key(self) -> str:
        return self.stream or self.key


def natural_item() -> Item:
    return Item("natural", lambda ctx, x, y, gen: ctx.predict(x) == y)


def attack_item(key: str, attack: Attack, stream: str = "", data: str = "test") -> Item:
    return Item(key, lambda ctx, x, y, gen: attacked_correct(ctx, key, x, y, gen, attack), data=data, stream=stream)


def autoattack_evaluator(name: str, label: str, attacks: list[str] | None) -> Evaluator:
    """AutoAttack (or some of its attacks) on the evaluated images, or on a seeded subset of --aa-n of them."""

    def items(ctx: Context) -> list[Item]:
        data = "test" if ctx.cfg.aa_n is None else f"test@{ctx.cfg.aa_n}"
        return [attack_item(name, autoattack(attacks), data=data)]

    return Evaluator(name, label, items)


def pgd_item(steps: int, eps: float | None = None) -> Item:
    """PGD-k; every PGD item draws the same random start, so PGD-k's path is a prefix of PGD-(k+1)'s."""
    key = f"pgd{steps}" if eps is None else f"pgd{steps}@eps={eps:.6f}"
    return attack_item(key, pgd_attack(steps, eps), stream="pgd")


@dataclass(frozen=True)
class Evaluator:
    name: str
    label: str
    items: Callable[[Context], list[Item]]
    summarise: Callable[[Context, dict[str, dict[str, Any]]], dict[str, Any]] | None = None


def _single(name: str, label: str, item: Callable[[], Item]) -> Evaluator:
    return Evaluator(name, label, lambda ctx: [item()])


def _eps_label(eps: float) -> str:
    return f"{eps * 255:g}/255"


def eps_curve_evaluator() -> Evaluator:
    def items(ctx: Context) -> list[Item]:
        return [pgd_item(20, eps) for eps in ctx.cfg.eps_curve]

    def summarise(ctx: Context, acc: dict[str, dict[str, Any]]) -> dict[str, Any]:
        curve = [{"eps": eps, "accuracy": acc[pgd_item(20, eps).key]["accuracy"]} for eps in ctx.cfg.eps_curve]
        return {"accuracy": None, "curve": curve}

    return Evaluator("eps-curve", "PGD-20 accuracy vs eps", items, summarise)


def checks_evaluator() -> Evaluator:
    """Gradient-masking checks (paper App. H.3)."""

    def items(ctx: Context) -> list[Item]:
        found = [pgd_item(1), pgd_item(20),
                 attack_item("unbounded", pgd_attack(UNBOUNDED_STEPS, UNBOUNDED_EPS, UNBOUNDED_ALPHA))]
        found += [pgd_item(20, eps) for eps in ctx.cfg.eps_curve]
        if ctx.surrogate is not None:
            found.append(attack_item("transfer", pgd_attack(20, source="surrogate")))
        return found

    def summarise(ctx: Context, acc: dict[str, dict[str, Any]]) -> dict[str, Any]:
        a = {k: v["accuracy"] for k, v in acc.items()}
        n = acc["pgd20"]["n"]
        pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731
        checks = [{"name": "iterative_beats_one_step", "passed": a["pgd20"] <= a["pgd1"],
                   "detail": f"PGD-1 {pct(a['pgd1'])} >= PGD-20 {pct(a['pgd20'])}"}]
        if "transfer" in a:
            checks.append({"name": "white_box_beats_transfer", "passed": a["pgd20"] <= a["transfer"],
                           "detail": f"transfer PGD-20 from {ctx.surrogate.run_dir} {pct(a['transfer'])} >= "
                                     f"white-box {pct(a['pgd20'])}"})
        else:
            checks.append({"name": "white_box_beats_transfer", "passed": None,
                           "detail": "skipped: give --surrogate RUN (another trained model) to run it"})
        checks.append({"name": "unbounded_attack_succeeds", "passed": a["unbounded"] == 0.0,
                       "detail": f"PGD-{UNBOUNDED_STEPS} with eps {UNBOUNDED_EPS:g}: {pct(a['unbounded'])} (want 0%)"})
        curve = [(eps, a[pgd_item(20, eps).key]) for eps in sorted(ctx.cfg.eps_curve)]
        rises = [(e0, e1) for (e0, v0), (e1, v1) in zip(curve, curve[1:]) if v1 > v0 + 1 / max(n, 1)]
        checks.append({"name": "accuracy_falls_with_eps", "passed": not rises and curve[-1][1] < curve[0][1],
                       "detail": ", ".join(f"{_eps_label(e)}: {pct(v)}" for e, v in curve)})
        decided = [c["passed"] for c in checks if c["passed"] is not None]
        return {"accuracy": None, "passed": all(decided), "checks": checks}

    return Evaluator("checks", "gradient-masking checks", items, summarise)


def cifar10c_evaluator() -> Evaluator:
    def items(ctx: Context) -> list[Item]:
        splits = corruption_splits(ctx)
        return [Item(f"c:{name}:{s}", lambda c, x, y, g: c.predict(x) == y, data=f"c:{name}:{s}")
                for name in splits for s in range(1, 6)]

    def summarise(ctx: Context, acc: dict[str, dict[str, Any]]) -> dict[str, Any]:
        per: dict[str, dict[str, float]] = {}
        for key, v in acc.items():
            _, name, severity = key.split(":")
            per.setdefault(name, {})[severity] = v["accuracy"]
        values = [a for sev in per.values() for a in sev.values()]
        manifest = c_manifest(ctx)
        generated = bool(manifest.get("generated"))
        return {"accuracy": float(np.mean(values)), "per_corruption": per, "generated": generated,
                "label": "CIFAR-10-C mean" + (" (generated, not the official files)" if generated else "")}

    return Evaluator("cifar10c", "CIFAR-10-C mean", items, summarise)


EVALUATORS: dict[str, Callable[[], Evaluator]] = {
    "natural": lambda: _single("natural", "natural", natural_item),
    "mma": lambda: _single("mma", "MMA (APGD margin loss, top-3 targets, 20 iterations)",
                           lambda: attack_item("mma", mma_attack)),
    "mma-ref": lambda: _single("mma-ref", "MMA, released sign-PGD variant (3 targets, 20 steps)",
                               lambda: attack_item("mma-ref", mma_ref_attack)),
    "aa": lambda: autoattack_evaluator("aa", "AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square)", None),
    **{name: (lambda name=name, attacks=attacks: autoattack_evaluator(
        name, ("APGD-CE + APGD-T (not standard AA)" if name == "aa-fast" else f"AutoAttack's {attacks[0]} alone"),
        attacks)) for name, attacks in AA_ATTACKS.items()},
    "adaptive-mma": lambda: _single("adaptive-mma", "adaptive MMA (Pixel-AG budget of the model's own CAMs)",
                                    lambda: attack_item("adaptive-mma", adaptive_mma)),
    "eps-curve": eps_curve_evaluator,
    "cifar10c": cifar10c_evaluator,
    "checks": checks_evaluator,
}
PATTERNS = {"pgd": re.compile(r"^pgd(\d+)$"), "adaptive": re.compile(r"^adaptive(\d*)$")}


def get_evaluator(name: str) -> Evaluator:
    if name in EVALUATORS:
        return EVALUATORS[name]()
    if m := PATTERNS["pgd"].match(name):
        steps = int(m.group(1))
        return _single(name, f"PGD-{steps} (alpha 2/255, random start, CE)", lambda: pgd_item(steps))
    if m := PATTERNS["adaptive"].match(name):
        steps = int(m.group(1) or 20)
        return _single(name, f"adaptive PGD-{steps} (Pixel-AG budget of the model's own CAMs)",
                       lambda: attack_item(f"adaptive{steps}", adaptive_pgd(steps)))
    known = ", ".join([*EVALUATORS, "pgd<k>", "adaptive<k>"])
    raise FastpartError(f"unknown attack {name!r}; choose from {known}")
