"""The data flows one way: a module imports only modules of earlier stages."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fastpart"

# Stages in data-flow order; a module may import only from stages before its own.
STAGES = [
    ["errors"],
    ["config", "atomic"],
    ["arrays", "splitfiles"],
    ["shapes", "corruptions"],
    ["readers"],
    ["datasets"],
    ["convert", "loader", "models", "masks", "kernels", "distributed"],
    ["cam", "attacks", "objectives"],
    ["train"],
    ["evaluate"],
    ["report"],
    ["cli"],
]
RANK = {name: rank for rank, names in enumerate(STAGES) for name in names}


def module_name(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def fastpart_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fastpart."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.module == "fastpart":
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("fastpart."))
    return found


def test_every_module_has_a_stage():
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert modules <= set(RANK), f"add {sorted(modules - set(RANK))} to STAGES"


def test_imports_point_one_way():
    for path in PACKAGE.rglob("*.py"):
        own = module_name(path)
        if own == "__init__":
            continue
        for imported in fastpart_imports(path) - {own}:
            assert RANK[imported] < RANK[own], f"{path.relative_to(PACKAGE)} imports {imported} (a later stage)"


def test_import_and_npz_training_work_without_ffcv(tmp_path):
    """Machines without ffcv (no compiler, other Python) can still convert to .npz, load and train."""
    script = f"""
import sys
sys.modules["ffcv"] = None  # any `import ffcv` now fails
import fastpart, fastpart.loader, fastpart.train
from fastpart.cli import main
assert main(["convert", "shapes", "--n-train", "64", "--n-test", "32", "--format", "npz", "--out", r"{tmp_path}"]) == 0
assert main(["train", "--dataset", "shapes", "--data-dir", r"{tmp_path}", "--model", "resnet18_cifar_w8", "--epochs", "1",
             "--batch-size", "32", "--steps", "1", "--eval-steps", "1", "--out", r"{tmp_path / 'run'}"]) == 0
assert main(["convert", "shapes", "--n-train", "64", "--n-test", "32", "--out", r"{tmp_path / 'b'}"]) == 2
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "writing .beton needs ffcv" in result.stderr
