"""The house: the data flows one way (a module imports only modules of earlier stages), modules stay small,
and the light entry points stay light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fastpart"

# Stages in data-flow order; a module may import only from stages before its own (so modules of one stage
# never import each other: training, evaluation and report stand side by side). Subpackages (loader/, models/,
# kernels/, part/, attacks/) count as one module, except data/, whose modules are stages of their own.
STAGES = [
    ["errors"],
    ["options"],  # the option table's machinery, budgets as users write them
    ["config", "atomic", "modes", "averaging", "budgets"],
    ["precision", "schedules", "inputs", "data.arrays"],  # inputs: the public entry points' argument checks
    ["data.splitfiles", "data.shapes", "data.imageops"],
    ["data.corruptions", "data.sources"],
    ["data.readers"],
    ["data.datasets"],
    ["data.fetch"],  # where a conversion's source comes from
    ["data.convert", "loader", "models", "kernels", "distributed"],
    ["part", "attacks", "objectives", "awp"],  # awp: adversarial weight perturbation of any loss  # the mask stage; the attacks and their generators; the losses
    ["board", "step", "monitor", "runfolder", "provenance", "part_attack"],  # one training step/epoch; training's own
    # accuracy; the run folder; what a run records of where it ran; PART's attack as an object
    ["resolve", "records", "progress"],  # a TrainConfig -> what the stages take; a run's text records; what a run
    # says about itself (its opening line, the estimate of its length)
    ["measurements", "figures", "panels", "interop", "tables"],  # panels: the Figure-2 panel of the report
    ["training", "evaluation", "report"],
    ["cli"],
    ["__main__"],
]
RANK = {name: rank for rank, names in enumerate(STAGES) for name in names}
MAX_LINES = 450


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    if parts[0] == "data" and len(parts) > 1:
        return f"data.{parts[1].removesuffix('.py')}"
    return parts[0].removesuffix(".py")


def _imported(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "fastpart" or len(parts) < 2:
        return None
    return ".".join(parts[1:3]) if parts[1] == "data" and len(parts) > 2 else parts[1]


def fastpart_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module in ("fastpart", "fastpart.data"):
            prefix = "" if node.module == "fastpart" else "data."
            found.update(prefix + alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(_imported(node.module))
        elif isinstance(node, ast.Import):
            found.update(_imported(a.name) for a in node.names)
    return found - {None, "__version__"}


def test_every_module_has_a_stage():
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")} - {"__init__", "data.__init__"}
    assert modules <= set(RANK), f"add {sorted(modules - set(RANK))} to STAGES"


def test_imports_point_one_way():
    for path in PACKAGE.rglob("*.py"):
        own = module_name(path)
        if own in ("__init__", "data.__init__"):
            continue
        for imported in fastpart_imports(path) - {own}:
            assert imported in RANK, f"{path.relative_to(PACKAGE)} imports {imported}, which has no stage"
            assert RANK[imported] < RANK[own], f"{path.relative_to(PACKAGE)} imports {imported} (not an earlier stage)"


def _imported_names(path: Path) -> set[str]:
    return {alias.name for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ImportFrom)
            for alias in node.names}


def test_the_run_configuration_stops_at_the_training_loop():
    """Below ``resolve`` (the step, the masks, the attacks, the loader, training's monitor) nothing takes the
    whole TrainConfig: each piece receives what it needs. Only the run folder, which records it, may."""
    for path in PACKAGE.rglob("*.py"):
        own = module_name(path)
        if own in RANK and RANK[own] < RANK["resolve"] and own not in ("config", "runfolder"):
            assert "TrainConfig" not in _imported_names(path), f"{path.relative_to(PACKAGE)} takes the TrainConfig"


def test_modules_stay_small():
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    big = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not big, f"split these modules by concern: {big}"


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={"OMP_NUM_THREADS": "1", **__import__("os").environ})
    assert result.returncode == 0, result.stderr[-2000:]
    return set(result.stdout.split())


def test_attacks_load_without_the_model_registry_and_training_without_the_dataset_generators():
    assert "timm" not in _modules_after("import fastpart.attacks.pgd, fastpart.attacks.mma, fastpart.attacks.robust")
    loaded = _modules_after("import fastpart.training")
    assert not {"scipy", "fastpart.data.corruptions", "fastpart.data.convert"} & loaded
    assert "torch" not in _modules_after("import fastpart")
    assert "torch" not in _modules_after("from fastpart.cli import build_parser; build_parser()")  # --version, --help


def test_import_and_npz_training_work_without_ffcv(tmp_path):
    """Machines without ffcv (no compiler, other Python) can still convert to .npz, load and train."""
    script = f"""
import sys
sys.modules["ffcv"] = None  # any `import ffcv` now fails
import fastpart, fastpart.loader, fastpart.training
from fastpart.cli import main
assert main(["convert", "shapes", "--n-train", "64", "--n-test", "32", "--format", "npz", "--out", r"{tmp_path}"]) == 0
assert main(["train", "--dataset", "shapes", "--data-dir", r"{tmp_path}", "--model", "resnet18_cifar_w8", "--method", "at", "--epochs", "1",
             "--batch-size", "32", "--steps", "1", "--eval-steps", "1", "--out", r"{tmp_path / 'run'}"]) == 0
assert main(["convert", "shapes", "--n-train", "64", "--n-test", "32", "--out", r"{tmp_path / 'b'}"]) == 0  # auto
assert main(["convert", "shapes", "--n-train", "8", "--n-test", "8", "--format", "beton", "--out", r"{tmp_path / 'c'}"]) == 2
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ffcv is not installed: .npz files" in result.stdout and (tmp_path / "b" / "shapes" / "train.npz").is_file()
    assert "writing .beton needs ffcv" in result.stderr
