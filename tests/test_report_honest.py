"""What `fastpart report` says must not overstate: the checks' verdict counts passed, failed and skipped; Figure 2
shows |perturbation| on one scale with the mask's outline; training curves keep the chance level and the test
accuracies' n and standard error in view; comparisons are written outside the runs; --quiet prints one line.

The runs here are fake folders (config.json, metrics.jsonl, eval.json): no training, no dataset."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from fastpart.cli import main
from fastpart.records import read_run

CHECKS = [{"name": "iterative_beats_one_step", "passed": True, "detail": "PGD-1 50.00% >= PGD-20 40.00%"},
          {"name": "white_box_beats_transfer", "passed": None,
           "detail": "skipped: give --surrogate RUN (another trained model) to run it"},
          {"name": "unbounded_attack_succeeds", "passed": True, "detail": "PGD-100 with eps 1: 0.00% (want 0%)"},
          {"name": "accuracy_falls_with_eps", "passed": True, "detail": "0/255: 80.00%, 8/255: 40.00%"}]


def fake_run(folder: Path, checks: list[dict] | None = None, accuracy: float = 0.1, name_n: int = 32) -> Path:
    """A run folder as `fastpart train` and `fastpart eval` leave it, without a checkpoint (report reads text)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({
        "method": "at", "dataset": "shapes", "model": "resnet18_cifar_w8", "epochs": 3, "eps": 8 / 255,
        "data_dir": str(folder / "no-data")}))
    lines = [{"epoch": e, "phase": "plain", "loss": 2.3, "train_natural_acc": accuracy + 0.01 * e,
              "train_adv_acc": accuracy, "test_natural_acc": accuracy + 0.02 * e, "test_pgd1_acc": accuracy,
              "test_n": name_n} for e in (1, 2, 3)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    results = {"natural": {"accuracy": 0.5, "stderr": math.sqrt(0.25 / 100), "n": 100, "seconds": 1.0,
                           "label": "natural"}}
    if checks is not None:
        decided = [c["passed"] for c in checks if c["passed"] is not None]
        results["checks"] = {"accuracy": None, "n": 100, "seconds": 1.0, "label": "gradient-masking checks",
                             "passed": all(decided), "checks": checks}
    (folder / "eval.json").write_text(json.dumps({"method": "at", "dataset": "shapes", "model": "resnet18_cifar_w8",
                                                  "n": 100, "results": results}))
    return folder


def report_text(run: Path, capsys) -> str:
    assert main(["report", str(run), "--images", "0"]) == 0
    return Path(capsys.readouterr().out.strip().splitlines()[-1]).read_text()


# 1. the checks' verdict ------------------------------------------------------------------------------------------


def test_a_skipped_check_is_skipped_and_the_verdict_counts_it(tmp_path, capsys):
    text = report_text(fake_run(tmp_path / "run", CHECKS), capsys)
    assert "| white_box_beats_transfer | skipped |" in text
    assert "| white_box_beats_transfer | FAIL |" not in text
    assert "all passed" not in text
    assert "gradient-masking checks: **3 passed, 1 skipped**" in text
    assert "| checks | gradient-masking checks | 3 passed, 1 skipped |" in text  # the accuracy table's row


def test_a_failed_check_is_never_all_passed(tmp_path, capsys):
    checks = [{**CHECKS[0], "passed": False}, *CHECKS[1:]]
    text = report_text(fake_run(tmp_path / "run", checks), capsys)
    assert "all passed" not in text
    assert "| iterative_beats_one_step | FAIL |" in text
    assert "gradient-masking checks: **1 FAILED: iterative_beats_one_step; 2 passed, 1 skipped** — the robust accuracy" in text
    assert "| checks | gradient-masking checks | 1 FAILED, 2 passed, 1 skipped |" in text


def test_checks_that_all_pass_say_so_with_their_count(tmp_path, capsys):
    checks = [c for c in CHECKS if c["passed"] is not None]
    text = report_text(fake_run(tmp_path / "run", checks), capsys)
    assert "gradient-masking checks: **3 passed**" in text and "skipped" not in text.split("## Training")[0]


# 2. Figure 2: |delta| on one scale, the mask's outline -----------------------------------------------------------


def panel(pixel_reweighted: bool, eps: float, eps_low: float, seed: int = 0):
    from fastpart.panels import Panel

    rng = np.random.default_rng(seed)
    levels = np.zeros((2, 1, 8, 8), dtype=np.uint8)
    levels[:, :, :, :4] = 1  # the left half important
    budget = np.where(levels.transpose(0, 2, 3, 1) == 1, eps, eps_low if pixel_reweighted else eps)
    delta = (budget * rng.choice([-1.0, 1.0], size=(2, 8, 8, 3)) * rng.uniform(0.5, 1, size=(2, 8, 8, 3)))
    return Panel(run_name=f"run{seed}", method="part" if pixel_reweighted else "at", pixel_reweighted=pixel_reweighted,
                 indices=[0, 1], images=rng.uniform(size=(2, 8, 8, 3)).astype(np.float32), labels=[0, 1],
                 predictions=[0, 1], adversarial_predictions=[1, 1],
                 cams=rng.uniform(size=(2, 8, 8)).astype(np.float32), levels=levels, degenerate=[False, False],
                 delta=delta.astype(np.float32), eps=eps, eps_low=eps_low)


def test_figure2_shows_the_size_of_the_perturbation_on_one_scale_with_the_mask_outline():
    from fastpart.panels import figure2_chart

    part, at = panel(True, 8 / 255, 7 / 255), panel(False, 12 / 255, 12 / 255, seed=1)
    fig = figure2_chart([part, at])
    rows = [ax for ax in fig.axes if ax.get_title().startswith("|perturbation|")]
    assert len(rows) == 4  # 2 images x 2 models
    for ax, (p, k) in zip(rows, [(part, 0), (at, 0), (part, 1), (at, 1)]):
        shown = np.asarray(ax.images[0].get_array())
        assert shown.shape == (8, 8)  # one value per pixel, not RGB noise
        np.testing.assert_allclose(shown, 255 * np.abs(p.delta[k]).max(axis=-1), rtol=1e-5)
        assert ax.images[0].get_clim() == pytest.approx((0, 12))  # one scale: 0 to the largest budget of the figure
        assert ax.collections, "the mask's outline (a contour at 0.5) is drawn over the perturbation"
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert any("/255" in label for label in labels), labels  # the colour bar, in /255
    colourbar = next(ax for ax in fig.axes if "/255" in ax.get_ylabel())
    ticks = [float(t) for t in colourbar.get_yticks()]
    assert {7.0, 8.0, 12.0} <= {round(t, 4) for t in ticks}  # the budgets are marked on the bar


def test_figure2_single_part_panel_reaches_eps_only_inside_the_outline():
    from fastpart.panels import figure2_chart

    p = panel(True, 8 / 255, 7 / 255)
    fig = figure2_chart([p])
    ax = next(ax for ax in fig.axes if ax.get_title().startswith("|perturbation|"))
    shown = np.asarray(ax.images[0].get_array())
    assert ax.images[0].get_clim() == pytest.approx((0, 8))
    assert shown[:, 4:].max() <= 7 + 1e-4 and shown[:, :4].max() > 7  # 8/255 inside the mask, 7/255 outside


# 3. training curves: chance, n and standard error ----------------------------------------------------------------


def test_number_of_classes_from_the_manifest_else_the_registry(tmp_path):
    from fastpart.figures import chance_level, num_classes

    records = read_run(fake_run(tmp_path / "run"))
    assert num_classes(records) == 10  # shapes, from the registry: its data is not on disk
    assert main(["convert", "shapes", "--n-train", "20", "--n-test", "10", "--out", str(tmp_path / "data"),
                 "--format", "npz"]) == 0
    manifest = tmp_path / "data" / "shapes" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "num_classes": 4}))
    assert num_classes(records, str(tmp_path / "data")) == 4  # the converted dataset's manifest first
    manifest.write_text("{damaged")
    assert num_classes(records, str(tmp_path / "data")) == 10  # unreadable: the registry
    unknown = read_run(fake_run(tmp_path / "other"))
    unknown.config["dataset"] = "my-imagefolder"
    assert num_classes(unknown) is None
    assert chance_level(10) == pytest.approx(10.0) and chance_level(None) is None


def test_training_curves_show_chance_full_range_and_error_bars(tmp_path):
    from fastpart.figures import training_chart

    records = read_run(fake_run(tmp_path / "run", accuracy=0.1))
    fig = training_chart([records], [10])
    loss_ax, train_ax, test_ax = fig.axes[:3]
    for ax in (train_ax, test_ax):
        assert ax.get_ylim() == pytest.approx((0, 100))  # no zoom: 10% +- noise cannot look like a trend
        chance = [line for line in ax.get_lines() if "chance" in str(line.get_label())]
        assert chance and np.allclose(chance[0].get_ydata(), 10.0) and chance[0].get_linestyle() == "--"
    assert len(test_ax.containers) == 2  # one error-bar series per test accuracy
    p, n = records.metrics[0]["test_natural_acc"], records.metrics[0]["test_n"]
    bars = test_ax.containers[0]
    segments = bars.lines[2][0].get_segments()
    assert np.ptp(segments[0][:, 1]) == pytest.approx(2 * 100 * math.sqrt(p * (1 - p) / n), rel=1e-6)
    legend = [t.get_text() for t in test_ax.get_legend().get_texts()]
    assert any("n=32" in t for t in legend), legend



def test_a_collapsed_epoch_is_marked_on_every_panel(tmp_path):
    from fastpart.figures import training_chart

    run = fake_run(tmp_path / "run", accuracy=0.3)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        line["collapsed"] = line["epoch"] == 2  # the collapse check's flag in metrics.jsonl
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    fig = training_chart([read_run(run)], [10])
    for ax in fig.axes[:3]:
        marks = [line for line in ax.get_lines() if line.get_gid() == "collapsed"]
        assert len(marks) == 1 and list(marks[0].get_xdata()) == [2, 2]
    legend = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert "collapsed" in legend
    plain = training_chart([read_run(fake_run(tmp_path / "plain"))], [10])
    assert not any(line.get_gid() == "collapsed" for ax in plain.axes for line in ax.get_lines())


# 4. where a comparison goes; 5. --quiet ----------------------------------------------------------------------------


def test_a_comparison_is_written_outside_the_runs(tmp_path, capsys, monkeypatch):
    a, b = fake_run(tmp_path / "runs" / "a"), fake_run(tmp_path / "runs" / "b")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["report", str(a), str(b), "--images", "0"]) == 0
    captured = capsys.readouterr()
    path = Path(captured.out.strip())
    assert path == Path("reports") / "a-vs-b" / "report.md" and (work / path).is_file()
    assert "reports/a-vs-b" in captured.err  # where it went, and how to choose
    assert not list(a.glob("report*")) and not list(b.glob("report*"))
    out = tmp_path / "chosen"
    assert main(["report", str(a), str(b), "--images", "0", "--out", str(out)]) == 0
    assert Path(capsys.readouterr().out.strip()) == out / "report.md"  # --out still wins


def test_a_single_run_report_stays_in_the_run(tmp_path, capsys):
    run = fake_run(tmp_path / "run")
    assert main(["report", str(run), "--images", "0"]) == 0
    assert Path(capsys.readouterr().out.strip()) == run / "report" / "report.md"


@pytest.mark.parametrize("quiet", [False, True])
def test_quiet_prints_only_the_path(tmp_path, capsys, monkeypatch, quiet):
    a, b = fake_run(tmp_path / "a"), fake_run(tmp_path / "b")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)  # a terminal: progress bars would show
    assert main(["report", str(a), str(b), "--images", "0", *(["--quiet"] if quiet else [])]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(Path("reports") / "a-vs-b" / "report.md")
    if quiet:
        assert captured.err == ""
    else:
        assert "step" in captured.err  # the progress bar (a terminal only)
        assert "reports/a-vs-b" in captured.err.splitlines()[-1]  # the note on where the comparison went


def test_evals_own_table_counts_the_checks_as_the_report_does():
    """`fastpart eval` printed `checks: pass` when a check had been skipped (its verdict ignores skips)."""
    from fastpart.evaluation import summary_line, table

    skipped = {"accuracy": None, "passed": True, "n": 8, "seconds": 1.0, "label": "checks", "checks": [
        {"name": "iterative_beats_one_step", "passed": True}, {"name": "white_box_beats_transfer", "passed": None}]}
    failed = {**skipped, "passed": False, "checks": [*skipped["checks"], {"name": "unbounded_attack_succeeds",
                                                                           "passed": False}]}
    assert "checks: 1 passed, 1 skipped" in summary_line("checks", skipped)
    assert "checks: 1 FAILED: unbounded_attack_succeeds; 1 passed, 1 skipped" in summary_line("checks", failed)
    text = table({"results": {"checks": skipped}, "method": "at", "model": "m", "dataset": "shapes", "epoch": 1,
                  "n": 8, "seed": 0, "precision": "fp32", "device": "cpu"})
    assert "1 passed, 1 skipped" in text and " pass " not in text
