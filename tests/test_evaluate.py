"""`fastpart eval`: known answers on a linear model, the ordering of attacks on a trained model,
resumable progress, and the files a user gets."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import fastpart.evaluation as ev
import fastpart.measurements as evs
from fastpart.cli import main
from fastpart.config import EvalConfig, TrainConfig
from fastpart.errors import FastpartError
from conftest import SMALL_EPS, train_shapes
from fastpart.runfolder import EVAL_PROGRESS, LoadedRun

EPS = 8 / 255
MARGIN = 0.02  # points whose exact worst-case margin is within this of 0 are left out of the known-answer test


# ---------------------------------------------------------------------------------------------
# Known answer: a linear classifier's exact L-inf robustness
# ---------------------------------------------------------------------------------------------


def linear_context(classes: int, seed: int = 0) -> tuple[evs.Context, nn.Linear]:
    torch.manual_seed(seed)
    linear = nn.Linear(3 * 4 * 4, classes).double().float()
    model = nn.Sequential(nn.Flatten(), linear).eval()
    run = LoadedRun(model, TrainConfig(), Path("none"), Path("."), 0, {"num_classes": classes})
    return evs.Context(run, EvalConfig(run="none", eps=EPS), torch.device("cpu"), None), linear


def exact_robust(linear: nn.Linear, x: torch.Tensor, y: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Robust iff for every j != y: (w_y - w_j).x + b_y - b_j - eps ||w_y - w_j||_1 > 0 (x +- eps inside [0, 1]).

    Returns (robust, worst margin) per point."""
    w, b = linear.weight.double(), linear.bias.double()
    z = x.flatten(1).double() @ w.T + b
    diff_w = w[y][:, None, :] - w[None, :, :]  # (N, K, D)
    margins = z.gather(1, y[:, None]) - z - eps * diff_w.abs().sum(-1)
    margins.scatter_(1, y[:, None], float("inf"))
    worst = margins.min(1).values
    return worst > 0, worst


def linear_data(classes: int, n: int = 400, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = 0.2 + 0.6 * torch.rand(n, 3, 4, 4, generator=gen)  # x +- eps stays inside [0, 1]: no clipping
    return x, torch.randint(0, classes, (n,), generator=gen)


@pytest.mark.parametrize("attack,classes", [("pgd20", 2), ("mma", 4), ("mma-ref", 4), ("aa-fast", 4), ("aa", 4)])
def test_attacks_reach_the_exact_robust_accuracy_of_a_linear_model(attack, classes):
    ctx, linear = linear_context(classes)
    x, y = linear_data(classes)
    robust, worst = exact_robust(linear, x, y, EPS)
    clear = worst.abs() > MARGIN
    item = evs.get_evaluator(attack).items(ctx)[0]
    found = item.correct(ctx, x, y, ev.batch_generator(0, item.seed_key, 0, ctx.device))
    assert 0.1 < robust[clear].float().mean() < 0.9  # the case is not trivial
    assert torch.equal(found[clear], robust[clear])  # no point reported robust that is not, and none lost
    assert not found[~robust & clear].any()
    if attack.startswith("aa"):  # what eval.json reports of AutoAttack: per attack, its time and the robust points
        summary = ev.autoattack_summary(ctx.notes["autoattack"])
        names = [r["attack"] for r in summary["per_attack"]]
        assert names == (["apgd-ce", "apgd-t", "fab-t", "square"] if attack == "aa" else ["apgd-ce", "apgd-t"])
        first, last = summary["per_attack"][0], summary["per_attack"][-1]
        with torch.no_grad():
            clean = int((ctx.model(x).argmax(1) == y).sum())  # only clean-correct points are attacked
        assert summary["points"] == first["robust_before"] == clean
        assert last["robust_after"] == int(found.sum()) and all(r["seconds"] >= 0 for r in summary["per_attack"])


# ---------------------------------------------------------------------------------------------
# A trained model: the attacks' ordering, files, resume
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(trained_shapes) -> Path:
    return trained_shapes


def eval_config(run: Path, attacks: tuple[str, ...], out: Path, **kw) -> EvalConfig:
    settings = dict(n=96, batch_size=48, eps=SMALL_EPS, alpha=0.5 / 255, device="cpu")
    return EvalConfig(run=str(run), attacks=attacks, out=str(out), **{**settings, **kw})


@pytest.mark.slow
def test_attack_ordering_on_a_trained_model(trained, tmp_path):
    attacks = ("natural", "pgd1", "pgd5", "pgd20", "mma", "aa-fast")  # standard AA: the linear model's closed form
    record = ev.evaluate(replace(eval_config(trained, attacks, tmp_path), n=32, batch_size=32))
    acc = {k: v["accuracy"] for k, v in record["results"].items()}
    assert acc["natural"] > 0.3  # the model learned something: the ordering below is not vacuous
    assert all(acc[a] <= acc["natural"] for a in attacks)
    assert acc["pgd1"] >= acc["pgd5"] >= acc["pgd20"]
    assert acc["aa-fast"] <= acc["pgd20"]
    assert acc["pgd20"] < acc["natural"]
    assert record["precision"] == "fp32" and record["n"] == 32


def test_more_pgd_steps_never_raise_accuracy_point_by_point(trained):
    from fastpart.runfolder import load_run

    run = load_run(trained)
    ctx = evs.Context(run, eval_config(trained, (), Path(".")), torch.device("cpu"), None)
    images, labels = ev.load_images(ctx, "test", {})
    x, y = ev.to_device(images[:64], labels[:64], ctx.device)
    previous = None
    for steps in (1, 2, 4, 8):
        item = evs.pgd_item(steps)
        robust = item.correct(ctx, x, y, ev.batch_generator(0, item.seed_key, 0, ctx.device))
        if previous is not None:
            assert not (robust & ~previous).any()
        previous = robust


def test_files_table_and_csv_row(trained, tmp_path, capsys):
    code = main(["eval", str(trained), "--attacks", "natural,pgd20,eps-curve,checks", "--n", "48", "--batch-size",
                 "48", "--eps", str(SMALL_EPS), "--eps-curve", "0", str(1 / 255), str(SMALL_EPS), str(8 / 255),
                 "--device", "cpu", "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    record = json.loads((tmp_path / "eval.json").read_text())
    results = record["results"]
    assert list(results) == ["natural", "pgd20", "eps-curve", "checks"]
    assert f"{100 * results['pgd20']['accuracy']:.2f}" in out
    curve = results["eps-curve"]["curve"]
    assert curve[0]["accuracy"] == pytest.approx(results["natural"]["accuracy"])  # eps 0 is the clean accuracy
    assert curve[2]["accuracy"] == pytest.approx(results["pgd20"]["accuracy"])  # the same PGD-20 at the same eps
    checks = {c["name"]: c for c in results["checks"]["checks"]}
    assert checks["unbounded_attack_succeeds"]["passed"] and checks["iterative_beats_one_step"]["passed"]
    assert checks["white_box_beats_transfer"]["passed"] is None  # no surrogate given
    rows = list(csv.reader((tmp_path / "eval.csv").read_text().splitlines()))
    assert rows[0] == ["method", "dataset", "model", "natural", "pgd20", "mma", "aa"]
    assert rows[1][:5] == ["at", "shapes", "resnet18_cifar_w8", f"{100 * results['natural']['accuracy']:.2f}",
                           f"{100 * results['pgd20']['accuracy']:.2f}"] and rows[1][5:] == ["", ""]


@pytest.mark.slow
def test_transfer_check_with_a_surrogate(trained, shapes_data, tmp_path):
    surrogate = train_shapes(shapes_data, tmp_path / "surrogate", epochs=1, seed=1)
    record = ev.evaluate(eval_config(trained, ("pgd20", "checks"), tmp_path, surrogate=str(surrogate),
                                     eps_curve=(0.0, SMALL_EPS)))
    check = next(c for c in record["results"]["checks"]["checks"] if c["name"] == "white_box_beats_transfer")
    assert check["passed"] is True and "transfer" in check["detail"]


def test_interrupted_evaluation_resumes_to_the_same_numbers(trained, tmp_path, monkeypatch):
    attacks = ("natural", "pgd10", "mma")
    whole = ev.evaluate(eval_config(trained, attacks, tmp_path / "whole"))

    calls = {"n": 0}
    real = evs.attacked_correct

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # pgd10's 2 batches are done; mma's first batch dies
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(evs, "attacked_correct", dying)
    with pytest.raises(KeyboardInterrupt):
        ev.evaluate(eval_config(trained, attacks, tmp_path / "split"))
    progress = json.loads((tmp_path / "split" / EVAL_PROGRESS).read_text())["done"]
    assert set(progress) == {"natural", "pgd10"} and len(progress["pgd10"]) == 2

    calls["n"] = -100
    resumed = ev.evaluate(eval_config(trained, attacks, tmp_path / "split"))
    assert calls["n"] == -100 + 2  # only mma's two batches ran again
    for name in attacks:
        assert resumed["results"][name]["accuracy"] == whole["results"][name]["accuracy"]


def test_other_settings_do_not_reuse_saved_progress(trained, tmp_path):
    ev.evaluate(eval_config(trained, ("pgd5",), tmp_path))
    saved = json.loads((tmp_path / EVAL_PROGRESS).read_text())
    ev.evaluate(eval_config(trained, ("pgd5",), tmp_path, seed=1))
    again = json.loads((tmp_path / EVAL_PROGRESS).read_text())
    assert again["fingerprint"] != saved["fingerprint"]


def test_adaptive_attack_uses_the_models_own_masks(trained, tmp_path, monkeypatch):
    seen = []
    real = evs.adaptive_budget

    def recording(ctx, x):
        budget = real(ctx, x)
        seen.append(budget)
        return budget

    monkeypatch.setattr(evs, "adaptive_budget", recording)
    record = ev.evaluate(eval_config(trained, ("natural", "adaptive10"), tmp_path, adaptive_eps=4 / 255,
                                     adaptive_eps_low=SMALL_EPS))
    assert record["results"]["adaptive10"]["accuracy"] <= record["results"]["natural"]["accuracy"]
    budget = seen[0]
    assert (budget.high, budget.low) == (4 / 255, SMALL_EPS)
    assert 0 < budget.levels.float().mean() < 1  # some pixels important, some not


def test_an_attack_leaving_its_budget_is_refused(trained, tmp_path, monkeypatch):
    def cheating(steps, eps=None, alpha=None, source="model"):
        return lambda ctx, x, y, gen: ((x + 3 * SMALL_EPS).clamp(0, 1), ctx.cfg.eps)

    monkeypatch.setattr(evs, "pgd_attack", cheating)
    with pytest.raises(FastpartError, match="leave the budget"):
        ev.evaluate(eval_config(trained, ("pgd3",), tmp_path))


def test_bad_input_is_one_line(trained, tmp_path, capsys):
    assert main(["eval", str(trained), "--attacks", "natural,fgsm", "--out", str(tmp_path)]) == 2
    assert main(["eval", str(tmp_path / "nothing"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "unknown attack 'fgsm'" in err[0] and "no run at" in err[1]


def test_autoattack_needs_four_classes():
    ctx, _ = linear_context(3)
    x, y = linear_data(3, n=8)
    item = evs.get_evaluator("aa").items(ctx)[0]
    with pytest.raises(FastpartError, match="at least 4 classes"):
        item.correct(ctx, x, y, ev.batch_generator(0, item.seed_key, 0, ctx.device))


def test_accuracy_falls_with_corruption_severity(trained, tmp_path):
    """Corruptions of the test images, as CIFAR-10-C's official files lay them out, converted and evaluated."""
    from fastpart.data.corruptions import generate_cifar10c
    from fastpart.loader import read_split, split_path

    test = read_split(split_path(json.loads((trained / "config.json").read_text())["data_dir"], "shapes", "test"))
    names = ["gaussian_noise", "contrast", "pixelate", "defocus_blur", "fog"]
    splits = generate_cifar10c(test.images[:100], test.labels[:100], seed=0, names=names)
    source = tmp_path / "CIFAR-10-C"
    source.mkdir()
    for name, split in splits.items():
        np.save(source / f"{name}.npy", split.images)
    np.save(source / "labels.npy", next(iter(splits.values())).labels.astype(np.uint8))
    assert main(["convert", "cifar10c", "--source", str(source), "--out", str(tmp_path / "c"), "--format", "npz"]) == 0
    record = ev.evaluate(eval_config(trained, ("natural", "cifar10c"), tmp_path, c_data_dir=str(tmp_path / "c"), n=None))
    per = record["results"]["cifar10c"]["per_corruption"]
    assert sorted(per) == sorted(names) and all(sorted(v) == ["1", "2", "3", "4", "5"] for v in per.values())
    by_severity = [np.mean([per[c][str(s)] for c in names]) for s in range(1, 6)]
    assert all(b <= a + 0.02 for a, b in zip(by_severity, by_severity[1:]))  # falls, up to 2 points of noise
    assert by_severity[-1] < by_severity[0] - 0.1
    assert record["results"]["cifar10c"]["accuracy"] == pytest.approx(np.mean(by_severity))


def test_subset_is_seeded_and_sorted():
    a, b = ev.subset_indices(1000, 100, 0), ev.subset_indices(1000, 100, 0)
    assert (a == b).all() and len(set(a.tolist())) == 100 and (a[1:] > a[:-1]).all()
    assert not (ev.subset_indices(1000, 100, 1) == a).all()
    assert (ev.subset_indices(10, None, 0) == range(10)).all()


@pytest.mark.slow
def test_autoattack_on_a_seeded_subset_reports_its_n_and_standard_error(trained, tmp_path):
    record = ev.evaluate(replace(eval_config(trained, ("natural", "aa-fast"), tmp_path), n=48, aa_n=5))
    natural, aa = record["results"]["natural"], record["results"]["aa-fast"]
    assert natural["n"] == 48 and aa["n"] == 5
    for entry in (natural, aa):
        p = entry["accuracy"]
        assert entry["stderr"] == pytest.approx((p * (1 - p) / entry["n"]) ** 0.5)
    again = ev.evaluate(replace(eval_config(trained, ("aa-fast",), tmp_path / "again"), n=48, aa_n=5))
    assert again["results"]["aa-fast"]["accuracy"] == aa["accuracy"]  # the same seeded subset
