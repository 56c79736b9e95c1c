"""Every recipe in pipelines/ runs end to end in its --smoke mode, so none can rot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PIPELINES = sorted((Path(__file__).resolve().parents[1] / "pipelines").glob("*.sh"))


def test_there_are_recipes():
    assert PIPELINES


CASES = [(recipe, method) for recipe in PIPELINES
         for method in (["at", "part"] if "table1" in recipe.stem else [None])]


@pytest.mark.parametrize("recipe,method", CASES, ids=[f"{r.stem}-{m}" if m else r.stem for r, m in CASES])
def test_smoke(recipe, method, tmp_path):
    fastpart = Path(sys.executable).with_name("fastpart")
    env = {**os.environ, "FASTPART": str(fastpart)}
    options = ["--method", method] if method else []
    result = subprocess.run(
        ["bash", str(recipe), "--smoke", *options, "--out", str(tmp_path / "run"), "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "metrics.jsonl").is_file()
    summary = result.stdout.strip().splitlines()[-1]
    assert "run folder" in summary and (method is None or f" {method}: " in summary)
