"""AutoAttack cost: fastpart's fast AutoAttack, the reference (pyautoattack, as fastpart's reference backend
calls it) and torchattacks' AutoAttack, side by side on the same points of the same trained model, with
where the time goes.

Every implementation runs the standard version (L-inf, --eps, seed --seed) on the same --n test points,
one after the other in one process, the model wrapped in one counting layer: per attack, its wall and CPU
seconds, the points still robust before and after it, the model's forward calls, the images it forwarded
without autograd and with a backward pass, the seconds inside the model's forward and backward, and
the rest (host work: the attacks' own arithmetic, FAB's projections, Python). fastpart's verdicts are
compared point by point with the reference's (they must agree: ``verdicts_equal``); torchattacks' with
both (its AutoAttack runs APGD, APGD-T and FAB-T with 10 iterations, where the standard version runs 100,
and Square with a rescaled schedule, so it may disagree).

    python benchmarks/bench_autoattack.py --data-dir data                     # CIFAR-10 converted in data/
    python benchmarks/bench_autoattack.py --data-dir data --n 200 --checkpoint runs/at/checkpoint.pt
    python benchmarks/bench_autoattack.py --data-dir data --only fast reference

The model: --checkpoint (a fastpart run folder or checkpoint file, or a plain state dict), else a
width-8 ResNet-18 adversarially trained here for --train-batches batches of PGD-3 (eps 8/255) on the
training split, kept in --cache-dir for the next run. torchattacks is needed for its column only
(``pip install torchattacks --no-deps``). Writes autoattack-<device>.json and .md into --results.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import multiprocessing
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import device_name, synchronize, table, write_result  # noqa: E402

from fastpart.attacks.autoattack import FloatLogits, autoattack  # noqa: E402
from fastpart.models import create_model  # noqa: E402

IMPLEMENTATIONS = ("fast", "reference", "torchattacks")
LABELS = {"fast": "fastpart fast", "reference": "pyautoattack (reference)", "torchattacks": "torchattacks"}
TORCHATTACKS_NAMES = {"APGD": "apgd-ce", "APGDT": "apgd-t", "FAB": "fab-t", "Square": "square"}


def build_parser() -> argparse.ArgumentParser:
    """The options of this benchmark."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data-dir", default="data", help="where `fastpart convert` wrote the dataset")
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--model", default="resnet18_cifar_w8")
    parser.add_argument("--checkpoint", type=Path, help="trained weights (run folder, checkpoint file or state dict)")
    parser.add_argument("--train-batches", type=int, default=150,
                        help="without --checkpoint: batches of 128 of PGD-3 adversarial training")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the model trained here is kept")
    parser.add_argument("--n", type=int, default=32, help="test points attacked (a seeded subset, as fastpart's --aa-n)")
    parser.add_argument("--chunk", type=int, help="attack the points in chunks of this many, the implementations "
                        "taking turns chunk by chunk (evens out a busy machine's load; default: one chunk)")
    parser.add_argument("--eps", type=float, default=8 / 255)
    parser.add_argument("--seed", type=int, default=0, help="AutoAttack's seed (all three implementations)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--only", nargs="+", choices=IMPLEMENTATIONS, help="run only these implementations")
    parser.add_argument("--results", type=Path, default=common.RESULTS, help="folder for the JSON and Markdown")
    return parser


# ---------------------------------------------------------------------------------------------
# Data and model
# ---------------------------------------------------------------------------------------------


def load_split(data_dir: str, dataset: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, C, H, W) and labels of a converted split."""
    from fastpart.data.splitfiles import read_split, split_path

    data = read_split(split_path(data_dir, dataset, split))
    images = torch.from_numpy(np.ascontiguousarray(data.images)).permute(0, 3, 1, 2).contiguous()
    return images, torch.from_numpy(np.asarray(data.labels, dtype=np.int64))


def load_weights(model: nn.Module, path: Path) -> None:
    file = path / "checkpoint.pt" if path.is_dir() else path
    state = torch.load(file, map_location="cpu", weights_only=False)
    if isinstance(state, dict):
        for key in ("model", "state_dict", "model_state", "ema"):
            if isinstance(state.get(key), dict) and state[key]:
                state = state[key]
                break
    model.load_state_dict({k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()})


def adversarial_training(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batches: int, seed: int,
                         device: torch.device, eps: float = 8 / 255, steps: int = 3, batch_size: int = 128) -> None:
    """PGD-AT (random start, ``steps`` steps of 2.5 eps / steps), SGD with a one-cycle schedule, flips."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=batches, pct_start=0.25)
    alpha = 2.5 * eps / steps
    order = torch.randperm(len(labels), generator=gen)
    start = time.perf_counter()
    for b in range(batches):
        at = (b * batch_size) % (len(order) - batch_size + 1)
        i = order[at:at + batch_size]
        x = (images[i].float() / 255).to(device)
        y = labels[i].to(device)
        flip = (torch.rand(len(x), generator=gen) < 0.5).to(device)
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        model.eval()
        delta = ((torch.rand(x.shape, generator=gen) * 2 - 1) * eps).to(device)
        for _ in range(steps):
            delta.requires_grad_(True)
            loss = F.cross_entropy(model((x + delta).clamp(0, 1)), y)
            grad, = torch.autograd.grad(loss, [delta])
            delta = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps)
        model.train()
        loss = F.cross_entropy(model((x + delta).clamp(0, 1)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
        if b % 50 == 0 or b == batches - 1:
            print(f"  training batch {b + 1}/{batches}: loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)",
                  flush=True)
    model.eval()


def trained_model(args: argparse.Namespace, classes: int, device: torch.device) -> tuple[nn.Module, str]:
    model = create_model(args.model, num_classes=classes)
    if args.checkpoint is not None:
        load_weights(model, args.checkpoint)
        return model.to(device).eval(), str(args.checkpoint)
    cache = args.cache_dir / f"bench-autoattack-{args.model}-{args.dataset}-{args.train_batches}b-seed{args.seed}.pt"
    if cache.is_file():
        model.load_state_dict(torch.load(cache, map_location="cpu", weights_only=True))
        return model.to(device).eval(), f"PGD-3 AT, {args.train_batches} batches of 128 (cached: {cache})"
    print(f"training {args.model}: PGD-3 AT, {args.train_batches} batches of 128", flush=True)
    images, labels = load_split(args.data_dir, args.dataset, "train")
    model = model.to(device)
    adversarial_training(model, images, labels, args.train_batches, args.seed, device)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, cache)
    return model.eval(), f"PGD-3 AT, {args.train_batches} batches of 128 (trained here, kept in {cache})"


# ---------------------------------------------------------------------------------------------
# The profile: a counting layer around the model, snapshots per attack
# ---------------------------------------------------------------------------------------------


class _Stamp(torch.autograd.Function):
    """Identity; its backward notes the time (at the logits: the model's backward starts; at the input:
    it has ended)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, counter: "CountingModel", end: bool) -> torch.Tensor:
        ctx.counter, ctx.end = counter, end
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        counter = ctx.counter
        counter.sync()
        if ctx.end:
            counter.add(backward_s=time.perf_counter() - counter.local.backward_start, backward_images=len(grad))
        else:
            counter.local.backward_start = time.perf_counter()
        return grad, None, None


COUNTS = ("calls", "images", "grad_images", "backward_images", "forward_s", "backward_s")


class CountingModel(nn.Module):
    """The model, its forward calls, images and seconds counted (with a backward pass where autograd runs).
    The counts live in shared memory, so the calls of fastpart's worker processes (forked) add up too: the
    seconds are then process-seconds."""

    def __init__(self, model: nn.Module, device: torch.device):
        super().__init__()
        self.model, self.device = model, device
        self.counts = torch.zeros(len(COUNTS), dtype=torch.float64).share_memory_()
        self.lock, self.local = multiprocessing.Lock(), threading.local()

    def reset(self) -> None:
        self.counts.zero_()

    def add(self, **amounts: float) -> None:
        with self.lock:
            for name, amount in amounts.items():
                self.counts[COUNTS.index(name)] += amount

    def sync(self) -> None:
        synchronize(self.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grad = torch.is_grad_enabled() and x.requires_grad
        self.sync()
        start = time.perf_counter()
        if grad:
            x = _Stamp.apply(x, self, True)
        out = self.model(x)
        if grad:
            out = _Stamp.apply(out, self, False)
        self.sync()
        self.add(forward_s=time.perf_counter() - start, calls=1, images=len(x), grad_images=len(x) if grad else 0)
        return out

    def snapshot(self) -> dict[str, float]:
        self.sync()
        with self.lock:
            counts = dict(zip(COUNTS, self.counts.tolist()))
        return {"wall": time.perf_counter(), "cpu": cpu_seconds(), **counts}


def cpu_seconds() -> float:
    """CPU time of this process and of its ended children (fastpart's worker processes)."""
    t = os.times()
    return time.process_time() + t.children_user + t.children_system


def attack_row(name: str, before: dict[str, float], after: dict[str, float], robust_before: int,
               robust_after: int, workers: int = 1) -> dict[str, Any]:
    """One attack's counts; with ``workers`` processes calling the model, host_s is the process-seconds (wall x
    workers) outside it."""
    d = {k: after[k] - before[k] for k in before}
    model_s = d["forward_s"] + d["backward_s"]
    busy = d["wall"] * workers
    return {"attack": name, "seconds": round(d["wall"], 2), "cpu_s": round(d["cpu"], 2),
            "robust": f"{robust_before} -> {robust_after}", "robust_before": robust_before,
            "robust_after": robust_after, "forward_calls": int(d["calls"]),
            "images_no_grad": int(d["images"] - d["grad_images"]), "images_fwd_bwd": int(d["grad_images"]),
            "model_forward_s": round(d["forward_s"], 2), "model_backward_s": round(d["backward_s"], 2),
            "host_s": round(busy - model_s, 2), "host_share": round((busy - model_s) / max(busy, 1e-9), 3),
            "s_per_robust_point": round(d["wall"] / robust_after, 3) if robust_after else None, "workers": workers}


# ---------------------------------------------------------------------------------------------
# The implementations
# ---------------------------------------------------------------------------------------------


def run_fastpart(backend: str, counting: CountingModel, x: torch.Tensor, y: torch.Tensor, eps: float,
                 seed: int) -> tuple[torch.Tensor, list[dict[str, Any]], dict[str, Any]]:
    """fastpart's autoattack (fast or reference backend): robust mask, per-attack rows, info. The fast path
    runs with its default workers (torch's thread count, on the CPU)."""
    workers = torch.get_num_threads() if backend == "fast" and x.device.type == "cpu" else 1
    snaps: dict[str, dict[str, float]] = {}
    rows: list[dict[str, Any]] = []
    before: dict[str, int] = {}

    def progress(event: Any) -> None:
        if event.done == 0 and not event.finished:
            snaps[event.attack] = counting.snapshot()
            before[event.attack] = event.robust
        if event.finished:
            rows.append(attack_row(event.attack, snaps[event.attack], counting.snapshot(), before[event.attack],
                                   event.robust, workers))

    _, info = autoattack(counting, x, y, eps, seed=seed, backend=backend, progress=progress)
    return info.robust_mask.cpu(), rows, info.to_dict()


def run_torchattacks(counting: CountingModel, x: torch.Tensor, y: torch.Tensor, eps: float, seed: int,
                     classes: int) -> tuple[torch.Tensor, list[dict[str, Any]], dict[str, Any]]:
    import torchattacks

    # FloatLogits: float32 logits and contiguous input gradients (torchattacks' FAB .view()s them)
    # torchattacks puts the model it is given in the mode it was in (train mode for a fresh module): eval mode
    attack = torchattacks.AutoAttack(FloatLogits(counting).eval(), norm="Linf", eps=eps, version="standard",
                                     n_classes=classes, seed=seed)
    rows: list[dict[str, Any]] = []
    for sub in attack._autoattack.attacks:
        forward = sub.forward

        def timed(images: torch.Tensor, labels: torch.Tensor, forward: Callable = forward,
                  name: str = TORCHATTACKS_NAMES.get(type(sub).__name__, type(sub).__name__)) -> torch.Tensor:
            before = counting.snapshot()
            out = forward(images, labels)
            after = counting.snapshot()
            with torch.no_grad():
                left = int((counting.model(out).argmax(1) == labels).sum())
            rows.append(attack_row(name, before, after, len(images), left))
            return out

        sub.forward = timed
    with torch.no_grad():
        clean = counting.model(x).argmax(1) == y
    x_adv = attack(x[clean], y[clean])  # torchattacks attacks what it is given: the clean-correct points
    robust = torch.zeros_like(clean)
    with torch.no_grad():
        robust[clean] = counting.model(x_adv).argmax(1) == y[clean]
    settings = {"version": "standard", "steps": {"APGD": attack._autoattack.attacks[0].steps,
                                                 "APGDT": attack._autoattack.attacks[1].steps,
                                                 "FAB": attack._autoattack.attacks[2].steps,
                                                 "Square": attack._autoattack.attacks[3].n_queries},
                "square_rescaled_schedule": bool(attack._autoattack.attacks[3].rescale_schedule)}
    return robust.cpu(), rows, {"settings": settings, "torchattacks": torchattacks.__version__}


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def where_time_goes(runs: dict[str, dict[str, Any]], floor: dict[str, Any]) -> list[str]:
    """Sentences on the profile (the Markdown's analysis)."""
    lines = []
    for impl, run in runs.items():
        rows = run["attacks"]
        total = sum(r["seconds"] for r in rows) or 1e-9
        model = sum(r["model_forward_s"] + r["model_backward_s"] for r in rows)
        workers = max((r.get("workers", 1) for r in rows), default=1)
        busy = total * workers
        parts = ", ".join(f"{r['attack']} {100 * r['seconds'] / total:.0f}%" for r in rows)
        threads = f" ({workers} worker processes: process-seconds)" if workers > 1 else ""
        lines.append(f"- {LABELS[impl]}: {run['seconds']:.1f} s; of the attacks' time{threads} {100 * model / busy:.0f}% "
                     f"in the model (forward + backward), {100 * (1 - model / busy):.0f}% host work; by attack: {parts}.")
    ref, fast = runs.get("reference"), runs.get("fast")
    if ref and fast:
        by = {r["attack"]: r for r in fast["attacks"]}
        for r in ref["attacks"]:
            f = by.get(r["attack"])
            if f:
                lines.append(f"  - {r['attack']}: reference {r['seconds']:.1f} s ({r['images_fwd_bwd']} images forward+backward, "
                             f"{r['images_no_grad']} forward only, host {r['host_s']:.1f} s) -> fast {f['seconds']:.1f} s "
                             f"({f['images_fwd_bwd']} fwd+bwd, {f['images_no_grad']} fwd, host {f['host_s']:.1f} s); "
                             f"points robust after it: {r['robust_after']}")
    bound = (floor or {}).get("fast") or (floor or {}).get("reference")
    if bound:
        per = ", ".join(f"{a} {v:.1f} s" for a, v in bound["per_attack"].items())
        text = (f"- The floor for the reference's results: the points that stay robust get every iteration of every "
                f"attack, {bound['seconds']:.1f} s of model time in one thread at {1e3 * bound['s_per_image_fwd_bwd']:.2f} "
                f"ms per image forward+backward and {1e3 * bound['s_per_image_fwd']:.2f} ms forward ({per})")
        if "torchattacks" in runs:
            text += (f"; torchattacks takes {runs['torchattacks']['seconds']:.1f} s in all, running APGD, APGD-T and "
                     f"FAB-T with 10 iterations instead of 100")
        lines.append(text + ".")
    return lines


def markdown(record: dict[str, Any]) -> str:
    out = [f"# AutoAttack: fastpart fast vs pyautoattack vs torchattacks ({record['device']})", "",
           (f"Standard version, L-inf eps {record['eps']:.6f} ({record['eps'] * 255:g}/255), seed {record['seed']}, "
           f"{record['n']} test points of {record['dataset']}, model {record['model']} ({record['weights']}); "
           f"torch {record['torch']}, {record['threads']} thread(s); points attacked in chunks of {record['chunk']}, "
           f"the implementations taking turns; load average {record['load_avg']} (seconds are wall time; cpu_s "
           f"the CPU time of the process and its workers, steadier on a shared machine)."), "",
           "## Side by side", "", md_table(record["summary"]), "",
           "## Where the time goes", ""]
    out += record["analysis"]
    for impl, run in record["runs"].items():
        cols = ["attack", "seconds", "cpu_s", "robust", "forward_calls", "images_no_grad", "images_fwd_bwd",
                "model_forward_s", "model_backward_s", "host_s", "host_share", "s_per_robust_point"]
        out += ["", f"### {LABELS[impl]}", "", md_table([{c: r.get(c) for c in cols} for r in run["attacks"]])]
    return "\n".join(out) + "\n"


def md_table(rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def merge_rows(chunks: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per-attack rows of several chunks summed."""
    merged: dict[str, dict[str, Any]] = {}
    workers: dict[str, int] = {}  # per attack: the worker processes of its rows (one implementation's: the same)
    for rows in chunks:
        for r in rows:
            m = merged.setdefault(r["attack"], {k: 0 for k in r if k not in ("attack", "robust", "host_share",
                                                                              "s_per_robust_point", "workers")})
            workers[r["attack"]] = r.get("workers", 1)
            for k in m:
                m[k] = round(m[k] + r[k], 4)
    out = []
    for name, m in merged.items():
        out.append({"attack": name, "seconds": round(m["seconds"], 2), "cpu_s": round(m["cpu_s"], 2),
                    "robust": f"{m['robust_before']} -> {m['robust_after']}", **{k: v for k, v in m.items()
                                                                                  if k not in ("seconds", "cpu_s")},
                    "host_share": round(m["host_s"] / max(m["seconds"] * workers[name], 1e-9), 3),
                    "workers": workers[name],
                    "s_per_robust_point": round(m["seconds"] / m["robust_after"], 3) if m["robust_after"] else None})
    return out


def floor_seconds(run: dict[str, Any], targets: int) -> dict[str, Any] | None:
    """Model time that any implementation of the standard attacks with the reference's results spends on
    the points that stay robust through each attack (they get every iteration: APGD-CE 101 forward-backward
    passes, APGD-T 101 per target, FAB-T 100 forward-backward and 100 forward passes per target, Square
    5001 forward passes), at this run's measured seconds per image."""
    rows = {r["attack"]: r for r in run["attacks"]}
    grad_rows = [r for r in run["attacks"] if r["images_fwd_bwd"] and r["attack"].startswith("apgd")]
    fwd_rows = [r for r in run["attacks"] if r["attack"] == "square" and r["images_no_grad"]]
    if not grad_rows or not fwd_rows:
        return None
    c_fb = sum(r["model_forward_s"] + r["model_backward_s"] for r in grad_rows) / sum(r["images_fwd_bwd"] for r in grad_rows)
    c_f = sum(r["model_forward_s"] for r in fwd_rows) / sum(r["images_no_grad"] for r in fwd_rows)
    work = {"apgd-ce": 101 * c_fb, "apgd-t": targets * 101 * c_fb, "fab-t": targets * 100 * (c_fb + c_f),
            "square": 5001 * c_f}
    per = {a: round(rows[a]["robust_after"] * w, 2) for a, w in work.items() if a in rows}
    return {"seconds": round(sum(per.values()), 2), "per_attack": per, "s_per_image_fwd_bwd": round(c_fb, 6),
            "s_per_image_fwd": round(c_f, 6)}


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    common.RESULTS = args.results
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    images, labels = load_split(args.data_dir, args.dataset, "test")
    classes = int(labels.max()) + 1
    model, weights = trained_model(args, classes, device)
    n = min(args.n, len(labels))
    pick = torch.randperm(len(labels), generator=torch.Generator().manual_seed(args.seed))[:n].sort().values
    x = (images[pick].float() / 255).to(device).contiguous()
    y = labels[pick].to(device)
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    implementations = []
    for impl in args.only or IMPLEMENTATIONS:
        if impl == "torchattacks":
            try:
                import torchattacks  # noqa: F401
            except ImportError:
                print("torchattacks is not installed (pip install torchattacks --no-deps): skipped", flush=True)
                continue
        implementations.append(impl)
    counting = CountingModel(model, device)
    load = f"{os.getloadavg()[0]:.1f}"
    chunk = args.chunk or n
    totals = {impl: {"seconds": 0.0, "cpu_s": 0.0, "rows": [], "masks": [], "info": []} for impl in implementations}
    for at in range(0, n, chunk):
        xs, ys = x[at:at + chunk], y[at:at + chunk]
        for impl in implementations:
            print(f"running {LABELS[impl]} on points {at}..{at + len(xs) - 1} of {n} ...", flush=True)
            counting.reset()
            start, cpu = time.perf_counter(), cpu_seconds()
            if impl == "torchattacks":
                mask, rows, info = run_torchattacks(counting, xs, ys, args.eps, args.seed, classes)
            else:
                mask, rows, info = run_fastpart(impl, counting, xs, ys, args.eps, args.seed)
            synchronize(device)
            seconds, cpu_s = time.perf_counter() - start, cpu_seconds() - cpu
            model.eval()
            t = totals[impl]
            t["seconds"] += seconds
            t["cpu_s"] += cpu_s
            t["rows"].append(rows)
            t["masks"].append(mask)
            t["info"].append(info)
            print(f"  {seconds:.1f} s, robust {int(mask.sum())}/{len(xs)}", flush=True)
    runs: dict[str, dict[str, Any]] = {}
    masks: dict[str, torch.Tensor] = {}
    for impl, t in totals.items():
        masks[impl] = torch.cat(t["masks"])
        runs[impl] = {"seconds": round(t["seconds"], 2), "cpu_s": round(t["cpu_s"], 2), "robust": int(masks[impl].sum()),
                      "attacks": merge_rows(t["rows"]), "info": t["info"]}
    summary = []
    for impl, run in runs.items():
        row = {"implementation": LABELS[impl], "seconds": run["seconds"], "cpu_s": run["cpu_s"],
               "images_per_s": round(n / run["seconds"], 3), "clean_acc": f"{100 * clean:.2f}%",
               "robust_acc": f"{100 * run['robust'] / n:.2f}%"}
        if "reference" in masks and impl != "reference":
            row["same_verdicts_as_reference"] = f"{int((masks[impl] == masks['reference']).sum())}/{n}"
        if "reference" in runs and impl != "reference":
            row["speedup_vs_reference"] = round(runs["reference"]["seconds"] / run["seconds"], 2)
        if "torchattacks" in runs and impl != "torchattacks":
            row["speed_vs_torchattacks"] = round(runs["torchattacks"]["seconds"] / run["seconds"], 2)
        summary.append(row)
    print(f"{args.model} on {device_name(device)}: {n} points, eps {args.eps * 255:g}/255, seed {args.seed}")
    print(table(summary, list(dict.fromkeys(k for r in summary for k in r))))
    verdicts_equal = bool(torch.equal(masks["fast"], masks["reference"])) if {"fast", "reference"} <= set(masks) else None
    targets = min(9, classes - 1)
    floor = {impl: floor_seconds(run, targets) for impl, run in runs.items() if impl in ("fast", "reference")}
    payload = {"dataset": args.dataset, "model": args.model, "weights": weights, "n": n, "chunk": chunk,
               "eps": args.eps, "seed": args.seed, "threads": torch.get_num_threads(),
               "load_avg": f"{load} -> {os.getloadavg()[0]:.1f}", "clean_acc": clean, "verdicts_equal": verdicts_equal,
               "summary": summary, "floor": floor, "runs": runs}
    payload["analysis"] = where_time_goes(runs, floor)
    path = write_result("autoattack", device, payload)
    record = json.loads(path.read_text())
    md = path.with_suffix(".md")
    md.write_text(markdown(record))
    print("\n".join(payload["analysis"]))
    print(path)
    print(md)
    if verdicts_equal is False:
        raise SystemExit("fastpart's fast AutoAttack disagrees with the reference on some points")


if __name__ == "__main__":
    main()
