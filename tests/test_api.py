"""The public Python API: what ``import fastpart`` exports resolves, is documented, and the README's example
runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import fastpart

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_exported_name_resolves_and_is_documented():
    assert set(fastpart.__all__) == {"__version__", *fastpart._EXPORTS}
    for name in fastpart.__all__:
        value = getattr(fastpart, name)
        if callable(value):
            assert (value.__doc__ or "").strip(), f"fastpart.{name} has no docstring"
    assert "train" in dir(fastpart) and fastpart.train.__module__ == "fastpart.training"


def readme_block(heading: str) -> str:
    text = README.read_text()
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_training_loop_runs_verbatim(tmp_path):
    from fastpart.cli import main

    assert main(["convert", "shapes", "--n-train", "256", "--n-test", "32", "--out", str(tmp_path / "data"),
                 "--format", "npz"]) == 0
    code = readme_block("## Use fastpart in your own training loop")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.fullmatch(r"PGD-20 accuracy of the last batch: \d+\.\d%\n", result.stdout)


def test_python_dash_m_fastpart_is_the_command(tmp_path):
    result = subprocess.run([sys.executable, "-m", "fastpart", "--version"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == f"fastpart {fastpart.__version__}"
    bad = subprocess.run([sys.executable, "-m", "fastpart", "train", "--dataset", "nothing", "--data-dir",
                          str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("fastpart train: error: no readable manifest")
