"""The paper's recipes in pipelines/: one per Table 1 row, each a thin call of table1.sh, whose --smoke mode
runs convert -> train -> eval -> report end to end, so none can rot."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from fastpart.data.datasets import DATASETS
from fastpart.config import METHODS

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = ROOT / "pipelines"
ROWS = [(d, m) for d in ("cifar10", "svhn", "tinyimagenet") for m in METHODS]
RECIPES = {"part_ema_awp": "strong", "part_nfgsm": "cheap"}  # recipe.sh's recipes beyond the paper


def test_one_recipe_per_table1_row_each_calling_the_driver():
    recipes = {p.stem for p in PIPELINES.glob("*.sh")} - {"table1", "reproduce_at_part", "cpu_study", "recipe",
                                                          *RECIPES}
    assert recipes == {f"{d}_{m}" for d, m in ROWS}
    for d, m in ROWS:
        text = (PIPELINES / f"{d}_{m}.sh").read_text()
        assert d in DATASETS
        assert re.search(rf'table1\.sh" --dataset {d} --method {m} "\$@"', text), f"{d}_{m}.sh"


def smoke(recipe: Path, out: Path, data: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "FASTPART": str(Path(sys.executable).with_name("fastpart"))}
    return subprocess.run(["bash", str(recipe), "--smoke", "--out", str(out), "--data-dir", str(data)],
                          capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


# In --smoke mode a recipe's dataset only names the run and every recipe runs the same driver (checked above),
# so one recipe covers it, over two seeds, with an objective the other smokes leave out (they run AT and PART):
# PART-T. MART and every other method train end to end in test_part, test_train and test_objectives.
@pytest.mark.slow
def test_smoke_over_seeds_reports_table1(data, tmp_path):
    env = {**os.environ, "FASTPART": str(Path(sys.executable).with_name("fastpart"))}
    result = subprocess.run(["bash", str(PIPELINES / "svhn_part-trades.sh"), "--smoke", "--seeds", "0,1", "--out",
                             str(tmp_path / "run"), "--data-dir", str(data)], capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for seed in (0, 1):
        run = tmp_path / f"run_seed{seed}"
        config = json.loads((run / "config.json").read_text())
        assert (config["seed"], config["method"]) == (seed, "part-trades")
        assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
        record = json.loads((run / "eval.json").read_text())
        assert list(record["results"]) == ["natural", "pgd20", "mma", "aa-fast"] and record["n"] == 16
        assert record["results"]["aa-fast"]["n"] == 8
        assert (run / "eval.csv").read_text().splitlines()[1].startswith("part-trades,shapes,resnet18_cifar_w8,")
    assert result.stdout.strip().splitlines()[-1] == str(tmp_path / "run_seeds" / "report.md")
    table = (tmp_path / "run_seeds" / "table1.csv").read_text().splitlines()
    assert len(table) == 2 and table[1].startswith("part-trades,shapes,resnet18_cifar_w8,2,")


@pytest.mark.slow
def test_smoke_of_the_gpu_study_and_the_paired_cpu_study_it_runs(tmp_path):
    """benchmarks/gpu_study.sh --smoke runs pipelines/cpu_study.sh (AT and PART of one seed, evaluated, reported
    with their paired difference), resumes it in a second call without retraining, runs the baseline, and brings
    back at most the 8 files a GPU call returns."""
    out = tmp_path / "out"
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_study.sh"), str(out), "--smoke"],
                            capture_output=True, text=True, timeout=900,
                            env={**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and {"at-metrics.jsonl", "part-metrics.jsonl", "at-eval.json", "part-eval.json",
                                "report.md", "steps.txt", "rest.tar.gz"} <= set(files)
    steps = (out / "steps.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in steps] == ["study", "study-rest", "baseline"]
    assert steps[0].startswith("study: exit 0") and steps[1].startswith("study-rest: exit 0")
    for method in ("at", "part"):
        record = json.loads((out / f"{method}-eval.json").read_text())
        assert record["method"] == method and record["results"]["aa-fast"]["n"] == 4 and record["results"]["natural"]["n"] == 16
    assert "## PART against its base, paired by seed" in (out / "report.md").read_text()
    with tarfile.open(out / "rest.tar.gz") as archive:
        names = archive.getnames()
        command = next(n for n in names if n.endswith("study/command.txt"))
        recorded = archive.extractfile(command).read().decode()
    assert "cpu_study.sh" in recorded and "--smoke" in recorded and "--out" in recorded  # the options as given
    assert any(n.endswith("study-rest.log") for n in names)
    assert not any(n.endswith(".pt") for n in names)  # no checkpoints come back


@pytest.mark.slow
def test_smoke_of_the_strong_and_the_cheap_recipe(data, tmp_path):
    """PART + EMA + AWP and N-FGSM-PART, convert -> train -> eval -> report at tiny scale, through their callers."""
    expected = {"strong": {"awp": 0.01, "ema": 0.8, "ae": "pgd"}, "cheap": {"awp": None, "ema": None, "ae": "n-fgsm"}}
    for caller, recipe in RECIPES.items():
        assert f'recipe.sh" {recipe} "$@"' in (PIPELINES / f"{caller}.sh").read_text()
        run = tmp_path / recipe
        result = smoke(PIPELINES / f"{caller}.sh", run, data)
        assert result.returncode == 0, result.stderr[-3000:]
        config = json.loads((run / "config.json").read_text())
        assert {k: config[k] for k in expected[recipe]} == expected[recipe] and config["method"] == "part"
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert len(records) == 2 and all("collapsed" in r for r in records)  # the collapse check of both
        assert ("awp_loss" in records[-1]) == (recipe == "strong")
        record = json.loads((run / "eval.json").read_text())
        assert list(record["results"]) == ["natural", "pgd20"] and record["n"] == 16
        assert (record["checkpoint"].endswith("best.pt"), record["weights"]) == (
            (True, "ema") if recipe == "strong" else (False, "live"))
        assert (run / "report" / "report.md").is_file()
    bad = subprocess.run(["bash", str(PIPELINES / "recipe.sh"), "fastest"], capture_output=True, text=True)
    assert bad.returncode == 2 and "choose a recipe: strong (PART + EMA + AWP) or cheap (N-FGSM-PART)" in bad.stderr


def test_the_reproduction_is_the_study_at_the_papers_scale():
    bad = subprocess.run(["bash", str(PIPELINES / "reproduce_at_part.sh"), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown option --bogus" in bad.stderr  # its options go to cpu_study.sh
    text = (PIPELINES / "reproduce_at_part.sh").read_text()
    assert 'cpu_study.sh" --full --seeds 0' in text


def test_unknown_option_is_refused():
    bad = subprocess.run(["bash", str(PIPELINES / "cifar10_at.sh"), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown option --bogus" in bad.stderr
    bad = subprocess.run(["bash", str(PIPELINES / "cifar10_at.sh"), "--seeds", "0,x"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--seeds takes comma-separated integers" in bad.stderr
