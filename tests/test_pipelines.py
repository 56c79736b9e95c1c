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


@pytest.mark.parametrize("recipe", PIPELINES, ids=[p.stem for p in PIPELINES])
def test_smoke(recipe, tmp_path):
    fastpart = Path(sys.executable).with_name("fastpart")
    env = {**os.environ, "FASTPART": str(fastpart)}
    result = subprocess.run(
        ["bash", str(recipe), "--smoke", "--out", str(tmp_path / "run"), "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "metrics.jsonl").is_file()
    assert "run folder" in result.stdout.strip().splitlines()[-1]
