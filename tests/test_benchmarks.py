"""The benchmark suite: the released-code-style baseline (its masks are fastpart's, its JSON is consistent)
and run_all's summary of a result folder."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_baseline  # noqa: E402
import run_all  # noqa: E402

from fastpart.config import TrainConfig  # noqa: E402
from fastpart.part import MaskSettings, eps_levels  # noqa: E402
from fastpart.models import create_model, find_cam_layer  # noqa: E402
from fastpart.resolve import mask_plan  # noqa: E402


def test_baseline_masks_equal_fastpart_masks():
    torch.manual_seed(0)
    model = create_model("resnet18_cifar_w8", num_classes=10).eval()
    x = torch.rand(12, 3, 32, 32)
    x[0] = 0.5  # a flat image too
    levels, degenerate = bench_baseline.per_sample_levels(model, find_cam_layer(model), x)
    cams = mask_plan(TrainConfig(cam_backend="native", batch_size=32, precision="fp32")).cam_function(model)(x, None)
    expected, expected_degenerate = eps_levels(cams, (32, 32), MaskSettings())
    assert levels.shape == expected.shape == (12, 1, 32, 32) and levels.dtype == torch.uint8
    assert degenerate == int(expected_degenerate.sum())
    assert 0 < levels.float().mean() < 0.5  # a real mask: some important pixels, not all
    assert torch.equal(levels, expected)


def test_baseline_model_is_left_without_hooks():
    model = create_model("resnet18_cifar_w8", num_classes=10)
    layer = find_cam_layer(model)
    bench_baseline.per_sample_levels(model, layer, torch.rand(2, 3, 32, 32))
    assert not layer._forward_hooks


def test_plain_pgd_stays_in_the_per_pixel_budget():
    torch.manual_seed(0)
    model = create_model("resnet18_cifar_w8", num_classes=10)
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    eps = torch.where(torch.rand(4, 1, 32, 32) < 0.3, 8 / 255, 7 / 255)
    x_adv = bench_baseline.plain_pgd(model, x, y, eps, 2 / 255, 3)
    assert ((x_adv - x).abs() <= eps + 1e-6).all() and x_adv.min() >= 0 and x_adv.max() <= 1
    assert all(p.grad is not None for p in model.parameters())  # the released code's wasted parameter gradients


def test_baseline_script_writes_consistent_json(tmp_path):
    cmd = [sys.executable, str(BENCH / "bench_baseline.py"), "--n", "128", "--batch-size", "32", "--batches", "2",
           "--fastpart-epochs", "2", "--device", "cpu", "--results", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (path,) = tmp_path.glob("baseline-*.json")
    record = json.loads(path.read_text())
    runs = {r["run"]: r for r in record["runs"]}
    base = runs[bench_baseline.BASELINE]["images_per_s"]
    assert base > 0 and record["baseline"]["images"] == 64
    for freq in (1, 10):
        run = runs[f"fastpart part mask-freq {freq}"]
        assert run["images_per_s"] > 0
        assert run["speedup_vs_baseline"] == pytest.approx(run["images_per_s"] / base, abs=1e-3)
        assert record["speedup"][f"mask-freq {freq}"] == run["speedup_vs_baseline"]
    assert set(record["baseline"]["phase_seconds"]) == {"data", "mask", "attack", "update"}


# ---------------------------------------------------------------------------------------------
# run_all
# ---------------------------------------------------------------------------------------------

SLUG = "test-gpu-x1"


def synthetic_results(folder: Path) -> None:
    """Small result files in the formats the benchmark scripts write."""
    head = {"device": "Test GPU x1", "torch": "2.14.1", "time": "2026-11-25T23:00:00+0000"}
    files = {
        "loader": {"source": "random", "augment": "crop 4 + flip", "ffcv_available": False, "rows": [
            {"backend": "memory", "batch": 128, "precision": "fp32", "images": 49920, "seconds": 0.5,
             "images_per_s": 99840}]},
        "kernel": {"copy_GB_s": 4000.0, "iters": 50, "repeats": 5, "triton_interpreted": False,
                   "eps_kinds": {"map": "float32 (B, 1, H, W)", "levels": "uint8 (B, 1, H, W)"}, "rows": [
            {"size": "cifar-512", "shape": "512x3x32x32", "dtype": "fp32", "layout": "channels_last", "eps": "levels",
             "backend": "reference", "us_per_step": 170.0, "MB_per_step": 25.69, "GB_s": 150.0, "pct_copy": 3.75,
             "exact": True},
            {"size": "large-64M", "shape": "64x3x576x576", "dtype": "fp32", "layout": "channels_last", "eps": "levels",
             "backend": "reference", "us_per_step": 1530.0, "MB_per_step": 1040.45, "GB_s": 680.0, "pct_copy": 17.0,
             "exact": True},
            {"size": "large-64M", "shape": "64x3x576x576", "dtype": "fp32", "layout": "channels_last", "eps": "levels",
             "backend": "auto", "us_per_step": 300.0, "MB_per_step": 1040.45, "GB_s": 3000.0, "pct_copy": 75.0,
             "exact": True},
            {"size": "large-64M", "shape": "64x3x576x576", "dtype": "fp32", "layout": "channels_last", "eps": "levels",
             "backend": "triton-v1", "us_per_step": 330.0, "MB_per_step": 1040.45, "GB_s": 3200.0, "pct_copy": 80.0,
             "exact": True},
            {"size": "large-64M", "shape": "64x3x576x576", "dtype": "fp32", "layout": "channels_last", "eps": "levels",
             "backend": "triton-v2", "us_per_step": 260.0, "MB_per_step": 1040.45, "GB_s": 3600.0, "pct_copy": 90.0,
             "exact": True},
            {"size": "large-64M", "shape": "64x3x576x576", "dtype": "fp32", "layout": "channels_last", "eps": "map",
             "backend": "triton-v2", "us_per_step": 250.0, "MB_per_step": 1104.15, "GB_s": 3900.0, "pct_copy": 97.5,
             "exact": True}]},
        "attack": {"steps": 10, "autocast": "torch.bfloat16", "rows": [
            {"model": "resnet18_cifar", "batch": 128, "backend": "reference", "ms_per_attack": 60.0,
             "ms_in_steps": 2.3, "step_share": 0.038, "images_per_s": 2133, "speedup_vs_reference": 1.0},
            {"model": "resnet18_cifar", "batch": 128, "backend": "triton", "ms_per_attack": 50.0,
             "ms_in_steps": 1.4, "step_share": 0.028, "images_per_s": 2560, "speedup_vs_reference": 1.2},
            {"model": "resnet18_cifar", "batch": 512, "backend": "reference", "ms_per_attack": 90.0,
             "ms_in_steps": 1.8, "step_share": 0.02, "images_per_s": 5689, "speedup_vs_reference": 1.0},
            {"model": "resnet18_cifar", "batch": 512, "backend": "triton", "ms_per_attack": 60.0,
             "ms_in_steps": 0.8, "step_share": 0.013, "images_per_s": 8533, "speedup_vs_reference": 1.5},
            {"model": "resnet18_cifar (compiled)", "batch": 512, "backend": "triton", "ms_per_attack": 45.0,
             "images_per_s": 11378, "compile_s": 8.1, "speedup_vs_reference": 2.0}]},
        "train": {"dataset": "cifar10", "model": "resnet18_cifar", "epochs": 3, "batch_size": 128, "runs": [
            {"run": "at", "images_per_s": 5000.0, "epochs_measured": 2, "mask_refresh_s": None, "cost_vs_at": 1.0},
            {"run": "part mask-freq 1", "images_per_s": 4000.0, "epochs_measured": 2, "mask_refresh_s": 2.5,
             "cost_vs_at": 1.25},
            {"run": "part mask-freq 10", "images_per_s": 4900.0, "epochs_measured": 2, "mask_refresh_s": None,
             "cost_vs_at": 1.02}],
            "mask_refresh": [{"backend": "native", "seconds_per_1000": 0.01},
                             {"backend": "grad-cam", "seconds_per_1000": 0.5}]},
        "baseline": {"dataset": "cifar10", "model": "resnet18_cifar", "batch_size": 128, "n_train": None,
                     "fastpart_epochs": 3, "baseline_masks": "per batch on the fly, every epoch",
                     "baseline": {"images_per_s": 200.0, "images": 1280, "batches": 10, "seconds": 6.4,
                                  "phase_seconds": {"data": 0.5, "mask": 4.0, "attack": 1.7, "update": 0.2}},
                     "runs": [{"run": bench_baseline.BASELINE, "images_per_s": 200.0, "precision": "fp32",
                               "speedup_vs_baseline": 1.0},
                              {"run": "fastpart part mask-freq 1", "images_per_s": 4000.0, "precision": "bf16",
                               "speedup_vs_baseline": 20.0},
                              {"run": "fastpart part mask-freq 10", "images_per_s": 4800.0, "precision": "bf16",
                               "speedup_vs_baseline": 24.0}],
                     "speedup": {"mask-freq 1": 20.0, "mask-freq 10": 24.0}},
    }
    for name, payload in files.items():
        (folder / f"{name}-{SLUG}.json").write_text(json.dumps({"benchmark": name, **head, **payload}, indent=2))
    # an older kernel --small file of the same device is ignored in favour of the newer full one
    older = {"benchmark": "kernel", **head, "time": "2026-11-24T00:00:00+0000", "copy_GB_s": 10.0, "rows": []}
    (folder / f"kernel-small-{SLUG}.json").write_text(json.dumps(older))
    (folder / "train-other-device.json").write_text("{}")


def test_run_all_collect_only(tmp_path):
    synthetic_results(tmp_path)
    assert run_all.main(["--collect-only", "--device-slug", SLUG, "--results", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / f"summary-{SLUG}.json").read_text())
    h = summary["headline"]
    assert h["part_at_cost_ratio_mask_freq_10"] == pytest.approx(5000 / 4900, abs=1e-3)
    assert h["part_at_cost_ratio_mask_freq_1"] == pytest.approx(1.25)
    assert h["speedup_vs_baseline_mask_freq_1"] == pytest.approx(20.0)
    assert h["speedup_vs_baseline_mask_freq_10"] == pytest.approx(24.0)
    assert h["attack_batch"] == 512
    assert h["attack_speedup_triton_vs_reference"] == pytest.approx(1.5)
    assert h["attack_speedup_compiled_triton_vs_reference"] == pytest.approx(2.0)
    assert h["kernel_size"] == "large-64M" and h["kernel_eps"] == "levels"
    assert h["kernel_pct_copy_triton"] == pytest.approx(90.0)  # best Triton variant on level budgets
    assert h["kernel_pct_copy_auto"] == pytest.approx(75.0)
    assert summary["benchmarks"]["kernel"]["file"] == f"kernel-{SLUG}.json"
    assert all(summary["benchmarks"][n]["status"] == "collected" for n in run_all.BENCHMARKS)

    md = (tmp_path / f"summary-{SLUG}.md").read_text()
    assert "PART/AT cost ratio, mask-freq 10: **1.02**" in md and "(paper: 1.76" in md
    assert "mask-freq 10: **24.0x**" in md and "**1.5x** at batch 512" in md
    for name in run_all.BENCHMARKS:
        assert f"## {name}" in md
    assert len(re.findall(r"^\| run \|", md, flags=re.M)) == 2  # train's and the baseline's run tables

    png = (tmp_path / f"summary-{SLUG}.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_run_all_collect_only_with_missing_files(tmp_path):
    assert run_all.main(["--collect-only", "--device-slug", "nothing-here", "--results", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary-nothing-here.json").read_text())
    assert all(b["status"] == "no result" for b in summary["benchmarks"].values())
    assert (tmp_path / "summary-nothing-here.png").is_file()
    assert "- no results" in (tmp_path / "summary-nothing-here.md").read_text()


@pytest.mark.parametrize("gpu", [False, True])
def test_run_all_passes_only_options_the_scripts_take(gpu, tmp_path):
    for name in run_all.BENCHMARKS:
        args = run_all.benchmark_args(name, gpu, "cifar10" if gpu else None, str(tmp_path) if gpu else None,
                                      None) if name != "loader" else run_all.benchmark_args(name, gpu, None, None, None)
        parser = importlib.import_module(f"bench_{name}").build_parser()
        parser.parse_args(args)  # an option the script does not take, or a bad value, exits here
        with pytest.raises(SystemExit):
            parser.parse_args([*args, "--no-such-option"])  # the check is not vacuous
        cmd = run_all.command(name, args, tmp_path)
        assert str(tmp_path) in cmd


def test_baseline_refuses_a_count_below_one_with_its_usage_not_a_traceback():
    result = subprocess.run([sys.executable, str(BENCH / "bench_baseline.py"), "--fastpart-epochs", "0"],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--batches, --fastpart-epochs and --mask-freqs must be >= 1" in result.stderr
