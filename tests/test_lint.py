"""The linter, as CI runs it: ruff with the rule set of pyproject.toml ([tool.ruff.lint] says why each rule) over
the package, the tests, the benchmarks and the recipes' Python."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def ruff() -> list[str]:
    beside = Path(sys.executable).with_name("ruff")  # the test extra installs it into this environment
    if beside.is_file():
        return [str(beside)]
    if shutil.which("ruff"):
        return ["ruff"]
    pytest.skip("ruff is not installed (pip install 'fastpart[test]')")


def test_the_code_passes_the_linter():
    result = subprocess.run([*ruff(), "check", "--no-cache", "fastpart", "tests", "benchmarks"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_the_linter_finds_an_undefined_name(tmp_path):
    """The rule set is live: a NameError in a branch no test runs (as `parser` in bench_baseline was) is found."""
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    (tmp_path / "broken.py").write_text("def main(count):\n    if count < 1:\n        parser.error('no')\n")
    result = subprocess.run([*ruff(), "check", "--no-cache", "broken.py"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1 and "F821" in result.stdout and "parser" in result.stdout
