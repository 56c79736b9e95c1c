"""Table 1 over seeds: runs differing only in their seed are one row, mean ± sample std per column, with n."""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

import pytest

from fastpart.cli import main

TRAIN = ["--dataset", "shapes", "--model", "resnet18_cifar_w8", "--method", "at", "--batch-size", "32", "--steps", "1",
         "--epochs", "1",
         "--eval-steps", "1", "--eval-n", "16"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("seeds")
    assert main(["convert", "shapes", "--n-train", "64", "--n-test", "32", "--out", str(root / "data"),
                 "--format", "npz"]) == 0
    found = {}
    for name, extra in (("at0", ["--seed", "0"]), ("at1", ["--seed", "1"]), ("at2", ["--seed", "2"]),
                        ("part0", ["--seed", "0", "--method", "part", "--burn-in", "0", "--mask-freq", "1"])):
        out = root / name
        assert main(["train", *TRAIN, *extra, "--data-dir", str(root / "data"), "--out", str(out)]) == 0
        assert main(["eval", str(out), "--attacks", "natural,pgd2", "--device", "cpu"]) == 0
        found[name] = out
    return found


def test_runs_of_several_seeds_make_one_row_with_mean_and_sample_std(runs, tmp_path, capsys):
    capsys.readouterr()
    assert main(["report", *(str(runs[n]) for n in ("at0", "part0", "at1", "at2")), "--out", str(tmp_path),
                 "--images", "0"]) == 0
    rows = list(csv.DictReader(io.StringIO((tmp_path / "table1.csv").read_text())))
    assert [(r["method"], r["runs"]) for r in rows] == [("at", "3"), ("part", "1")]
    at = [json.loads((runs[n] / "eval.json").read_text())["results"]["natural"]["accuracy"] for n in ("at0", "at1", "at2")]
    assert rows[0]["natural_mean"] == f"{100 * statistics.mean(at):.2f}"
    assert rows[0]["natural_std"] == f"{100 * statistics.stdev(at):.2f}" and rows[0]["natural_n"] == "3"
    assert rows[1]["natural_std"] == "" and rows[1]["natural_n"] == "1"
    assert rows[0]["aa_mean"] == "" and rows[0]["aa_n"] == "0"  # not evaluated
    text = (tmp_path / "report.md").read_text()
    assert "## Table 1: mean ± sample std over seeds" in text
    assert f"| at | shapes | resnet18_cifar_w8 | 3 | {100 * statistics.mean(at):.2f} ± {100 * statistics.stdev(at):.2f} (n=3) |" in text


def test_runs_of_other_settings_are_not_grouped(runs, tmp_path):
    assert main(["report", str(runs["at0"]), str(runs["part0"]), "--out", str(tmp_path), "--images", "0"]) == 0
    assert not (tmp_path / "table1.csv").exists()
    assert "Table 1" not in (tmp_path / "report.md").read_text()


def test_cifar10_rows_are_set_against_the_papers_table1(tmp_path):
    from fastpart.records import RunRecords
    from fastpart.tables import PAPER_TABLE1, group_by_seed, paper_comparison

    def run(seed: int, natural: float) -> RunRecords:
        config = {"dataset": "cifar10", "model": "resnet18_cifar", "method": "part", "seed": seed}
        evaluation = {"results": {"natural": {"accuracy": natural}, "pgd20": {"accuracy": 0.44}}}
        return RunRecords(tmp_path / str(seed), config, {}, [], evaluation)

    groups = group_by_seed([run(0, 0.83), run(1, 0.84)])
    lines = paper_comparison(groups)
    paper = PAPER_TABLE1["part"][0]
    assert f"| part | natural | {paper:.2f} | 83.50 ± 0.71 | {83.5 - paper:+.2f} | 2 |" in lines
    assert f"| part | pgd20 | {PAPER_TABLE1['part'][1]:.2f} | 44.00 ± 0.00 | {44.0 - PAPER_TABLE1['part'][1]:+.2f} | 2 |" in lines
    assert "| part | aa | 41.74 | — | — | 0 |" in lines
    assert paper_comparison(group_by_seed([RunRecords(tmp_path, {"dataset": "shapes", "method": "at"}, {}, [], None)])) == []


def test_part_is_set_against_its_base_seed_by_seed_with_a_t_interval(tmp_path):
    from fastpart.records import RunRecords
    from fastpart.tables import paired_differences, paired_markdown

    def run(method: str, seed: int, natural: float, pgd: float, **extra) -> RunRecords:
        config = {"dataset": "cifar10", "model": "resnet18_cifar_w8", "method": method, "seed": seed, "lr": 0.1, **extra}
        results = {"natural": {"accuracy": natural}, "pgd20": {"accuracy": pgd}}
        return RunRecords(tmp_path / f"{method}{seed}", config, {}, [], {"results": results})

    runs = [run("at", 0, 0.80, 0.40), run("part", 0, 0.82, 0.41, burn_in=5), run("at", 1, 0.78, 0.42),
            run("part", 1, 0.81, 0.42, burn_in=5), run("at", 2, 0.79, 0.41),
            run("part", 2, 0.79, 0.40, burn_in=5),  # PART's own options do not prevent the pairing
            run("part", 3, 0.5, 0.2, lr=0.2)]  # other settings: no AT twin, left out
    pairs = {p.result: p for p in paired_differences(runs)}
    assert set(pairs) == {"natural", "pgd20"} and pairs["natural"].differences == pytest.approx([0.02, 0.03, 0.0])
    mean, low, high = pairs["natural"].interval()
    diffs = [0.02, 0.03, 0.0]
    half = 4.302653 * statistics.stdev(diffs) / 3 ** 0.5  # t(0.975, 2)
    assert mean == pytest.approx(statistics.mean(diffs)) and (low, high) == pytest.approx((mean - half, mean + half))
    rows = paired_markdown(list(pairs.values()))
    assert f"| part − at | natural | {100 * mean:+.2f} | [{100 * low:+.2f}, {100 * high:+.2f}] | 3 |" in rows
