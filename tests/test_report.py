"""`fastpart report`: markdown and figures of real (tiny) runs, single and compared, and its errors."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastpart.cli import main
from fastpart.data.splitfiles import read_split, split_path
from fastpart.part import eps_levels
from fastpart.panels import compute_panel, panel_indices
from fastpart.resolve import mask_plan
from fastpart.runfolder import load_run

TRAIN = ["--dataset", "shapes", "--model", "resnet18_cifar_w8", "--epochs", "2", "--batch-size", "32", "--steps", "1",
         "--eval-steps", "1", "--eval-n", "32", "--device", "cpu"]


def eval_json(run: Path, method: str, accuracies: dict[str, float], extra: bool) -> dict:
    labels = {"natural": "natural", "pgd20": "PGD-20 (eps 8/255, alpha 2/255)", "mma": "MMA (k 3, 20 iterations)",
              "aa": "AutoAttack standard", "aa-fast": "APGD-CE + APGD-T (not standard AA)"}
    results = {name: {"accuracy": acc, "n": 64, "seconds": 1.5, "label": labels[name]} for name, acc in accuracies.items()}
    if extra:
        results["eps-curve"] = {"accuracy": None, "n": 64, "seconds": 4.0, "label": "PGD-20 accuracy vs eps",
                                "curve": [{"eps": e / 255, "accuracy": a} for e, a in [(0, 0.83), (4, 0.6), (8, 0.44), (16, 0.1)]]}
        results["cifar10c"] = {"accuracy": 0.7, "n": 64, "seconds": 9.0, "label": "CIFAR-10-C mean (generated)",
                               "per_corruption": {"gaussian_noise": {"1": 0.81, "2": 0.72, "3": 0.63, "4": 0.54, "5": 0.45},
                                                  "fog": {"1": 0.9, "2": 0.85, "3": 0.8, "4": 0.75, "5": 0.7}}}
        results["checks"] = {"accuracy": None, "n": 64, "seconds": 3.0, "label": "gradient-masking checks", "passed": False,
                             "checks": [{"name": "pgd1_vs_pgd20", "passed": True, "detail": "PGD-1 52.1% > PGD-20 44.0%"},
                                        {"name": "unbounded_reaches_zero", "passed": False, "detail": "eps 1: 3.1% left"}]}
    return {"run": str(run), "checkpoint": str(run / "checkpoint.pt"), "dataset": "shapes", "model": "resnet18_cifar_w8",
            "method": method, "n": 64, "seed": 0, "precision": "fp32", "device": "cpu", "created": "2026-01-01T00:00:00",
            "results": results}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report")
    data = root / "data"
    assert main(["convert", "shapes", "--n-train", "200", "--n-test", "64", "--out", str(data), "--format", "npz"]) == 0
    part, at = root / "part", root / "at"
    assert main(["train", *TRAIN, "--data-dir", str(data), "--method", "part", "--burn-in", "1", "--mask-freq", "1",
                 "--out", str(part)]) == 0
    assert main(["train", *TRAIN, "--data-dir", str(data), "--method", "at", "--eval-every", "1", "--out", str(at)]) == 0
    (part / "eval.json").write_text(json.dumps(eval_json(part, "part", {
        "natural": 0.8342, "pgd20": 0.4365, "mma": 0.4198, "aa": 0.4174}, extra=True)))
    (at / "eval.json").write_text(json.dumps(eval_json(at, "at", {
        "natural": 0.8258, "pgd20": 0.4369, "mma": 0.4180, "aa-fast": 0.4163}, extra=False)))
    return {"root": root, "data": data, "part": part, "at": at}


def check_png(path: Path, min_size: int = 200) -> None:
    assert path.is_file(), path
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert min(image.size) >= min_size, image.size
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert pixels.std() > 10, f"{path.name} looks blank"


def linked_pngs(markdown: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", markdown)


def test_single_run_report(runs, capsys):
    assert main(["report", str(runs["part"]), "--images", "3"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == runs["part"] / "report" / "report.md"
    text = path.read_text()
    assert text.startswith("# part · resnet18_cifar_w8 · shapes")
    for row in ("| natural | natural | 83.42% | 64 |", "| pgd20 | PGD-20 (eps 8/255, alpha 2/255) | 43.65% |",
                "| mma | MMA (k 3, 20 iterations) | 41.98% |", "| aa | AutoAttack standard | 41.74% |"):
        assert row in text
    assert "precision **fp32**" in text
    assert "method,dataset,model,natural,pgd20,mma,aa\npart,shapes,resnet18_cifar_w8,83.42,43.65,41.98,41.74\n" in text
    assert "| unbounded_reaches_zero | FAIL | eps 1: 3.1% left |" in text and "| pgd1_vs_pgd20 | pass |" in text
    assert "gradient-masking checks: **1 FAILED: unbounded_reaches_zero; 1 passed** — the robust accuracy may be" in text
    assert "all passed" not in text
    assert "| gaussian_noise | 81.0% | 72.0% | 63.0% | 54.0% | 45.0% | 63.0% |" in text
    assert "| epochs | 2 |" in text and "| phases | burn-in 1, masked 1 |" in text
    metrics = [json.loads(line) for line in (runs["part"] / "metrics.jsonl").read_text().splitlines()]
    assert f"| final train adversarial | {100 * metrics[-1]['train_adv_acc']:.2f}% |" in text
    assert f"| test PGD-1 (epoch 2, n 32) | {100 * metrics[-1]['test_pgd1_acc']:.2f}% |" in text
    links = linked_pngs(text)
    assert set(links) == {"training.png", "eps_curve.png", "figure2.png"}
    for name in links:
        check_png(path.parent / name)
    assert not list(path.parent.glob(".*.tmp"))


def fractions_in(text: str, head: str = "") -> tuple[list[int], float, dict[int, str]]:
    indices = re.search(rf"- {re.escape(head)}test images: (.+)", text).group(1)
    found = re.search(rf"- {re.escape(head)}important pixels: ([\d.]+)% of the panel's pixels \(per image: ([^)]*)\)", text)
    per_image = dict(re.findall(r"#(\d+) ([\d.]+%)", found.group(2)))
    return [int(i) for i in re.findall(r"#(\d+)", indices)], float(found.group(1)), {int(k): v for k, v in per_image.items()}


def test_figure2_mask_matches_eps_levels(runs):
    markdown = (runs["part"] / "report" / "report.md")
    if not markdown.exists():
        assert main(["report", str(runs["part"]), "--images", "3"]) == 0
    indices, total, per_image = fractions_in(markdown.read_text())
    # recompute the masks independently: the run's model, CAM and mask settings on the same test images
    loaded = load_run(runs["part"], "cpu")
    cfg = loaded.config
    arrays = read_split(split_path(cfg.data_dir, cfg.dataset, "test"))
    assert indices == panel_indices(arrays.labels, 3)
    assert len(set(arrays.labels[indices].tolist())) == 3  # one image per class first
    x = torch.from_numpy(arrays.images[indices]).permute(0, 3, 1, 2).float().div(255)
    levels, degenerate = eps_levels(mask_plan(cfg).cam_function(loaded.model)(x, None), (32, 32), mask_plan(cfg).settings)
    assert levels.shape == (3, 1, 32, 32) and not degenerate.any()
    assert total == pytest.approx(100 * float(levels.float().mean()), abs=0.006)
    for i, index in enumerate(indices):
        assert per_image[index] == f"{100 * float(levels[i].float().mean()):.2f}%"
    assert 0 < total < 100
    # the panel's perturbation respects the per-pixel budget: eps on important pixels, eps_low elsewhere
    panel = compute_panel(runs["part"], 3)
    assert np.array_equal(panel.levels, levels.numpy())
    important = np.broadcast_to(panel.levels.transpose(0, 2, 3, 1), panel.delta.shape) == 1
    assert np.abs(panel.delta[~important]).max() <= cfg.eps_low + 1e-6
    assert np.abs(panel.delta[important]).max() <= cfg.eps + 1e-6
    assert np.abs(panel.delta[important]).max() > cfg.eps_low + 1e-4  # important pixels use the larger budget


def test_comparison_of_two_runs(runs, capsys):
    out = runs["root"] / "compare"
    assert main(["report", str(runs["part"]), str(runs["at"]), "--out", str(out), "--images", "2"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == out / "report.md"
    text = path.read_text()
    assert "| attack | part | at | Δ at − part (points) |" in text
    assert "| natural | 83.42% | 82.58% | -0.84 |" in text
    assert "| pgd20 | 43.65% | 43.69% | +0.04 |" in text
    assert "| aa | 41.74% | — | — |" in text and "| aa-fast | — | 41.63% | — |" in text
    assert "part,shapes,resnet18_cifar_w8,83.42,43.65,41.98,41.74\nat,shapes,resnet18_cifar_w8,82.58,43.69,41.80,\n" in text  # aa-fast is not AutoAttack
    assert "| phases | burn-in 1, masked 1 | plain 2 |" in text
    part_indices, _, _ = fractions_in(text, "part: ")
    at_indices, _, _ = fractions_in(text, "at: ")
    assert part_indices == at_indices  # both models on the same test images
    assert "shown only, not used by this run" in text.split("- at: important pixels")[1].splitlines()[0]
    links = linked_pngs(text)
    assert {"accuracy.png", "training.png", "figure2.png", "eps_curve.png"} <= set(links)
    for name in links:
        check_png(out / name)
    with Image.open(out / "figure2.png") as figure:
        assert figure.size[1] > 600  # 2 images x 2 models = 4 rows of about 200 pixels


def test_comparison_default_folder(runs, capsys, monkeypatch):
    monkeypatch.chdir(runs["root"])
    assert main(["report", str(runs["part"]), str(runs["at"]), "--images", "0"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == Path("reports") / "part-vs-at" / "report.md"  # beside the runs, inside neither
    assert not (runs["part"] / "report-vs-at").exists()
    assert "Figure-2 panel skipped: --images 0." in path.read_text()
    assert not (path.parent / "figure2.png").exists()


def test_without_eval_json_or_data_a_training_report(runs, capsys):
    copy = runs["root"] / "no-eval"
    shutil.copytree(runs["part"], copy, ignore=shutil.ignore_patterns("report*", "eval.json"))
    missing = runs["root"] / "nowhere"
    assert main(["report", str(copy), "--data-dir", str(missing)]) == 0
    path = Path(capsys.readouterr().out.strip())
    text = path.read_text()
    assert "No eval.json in" in text and f"fastpart eval {copy}" in text
    assert "| attack |" not in text and "```csv" not in text
    assert "| epochs | 2 |" in text
    assert "Figure-2 panel skipped: `no-eval`:" in text and str(missing) in text
    assert linked_pngs(text) == ["training.png"]
    check_png(path.parent / "training.png")


@pytest.mark.parametrize("make", ["missing", "not-a-run", "bad-eval"])
def test_errors_are_one_line_and_exit_2(runs, tmp_path, capsys, make):
    target = tmp_path / make
    if make == "not-a-run":
        target.mkdir()
    elif make == "bad-eval":
        shutil.copytree(runs["at"], target, ignore=shutil.ignore_patterns("report*"))
        (target / "eval.json").write_text("{not json")
    assert main(["report", str(target)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastpart report: error: ") and str(target) in lines[0]
    assert not (target / "report").exists()


def test_negative_image_count_is_an_error(runs, capsys):
    assert main(["report", str(runs["at"]), "--images", "-1"]) == 2
    assert "--images must be >= 0" in capsys.readouterr().err
