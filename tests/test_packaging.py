"""The package as a researcher gets it: dependency ranges (not pins) that keep the torch of the environment it goes
into, the exact tested set in constraints.txt, names that type checkers see, a source distribution whose tests run,
and a wheel that installs into another environment and trains from there."""

from __future__ import annotations

import ast
import email
import email.policy
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest brings tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
EXTRAS = PROJECT["optional-dependencies"]
REQUIREMENTS = [Requirement(r) for r in [*PROJECT["dependencies"], *(r for rs in EXTRAS.values() for r in rs)]]


def constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"constraints.txt: {line!r} is not NAME==VERSION"
            pins[canonical(name)] = version
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ---------------------------------------------------------------------------------------------
# Metadata and the tested set (no build)
# ---------------------------------------------------------------------------------------------


def test_dependencies_are_ranges_with_a_tested_lower_bound():
    """No pins: an exact version of torch (or numpy, timm, ...) would make `pip install fastpart` replace the one
    already installed. Every requirement has a lower bound and no upper bound."""
    for req in REQUIREMENTS:
        operators = {spec.operator for spec in req.specifier}
        assert ">=" in operators, f"{req}: give the lowest tested version as >="
        assert operators == {">="}, f"{req}: ranges only (>=); pins or caps replace what researchers have installed"
    names = {canonical(Requirement(r).name) for r in PROJECT["dependencies"]}
    assert {"torch", "numpy", "timm"} <= names
    assert "triton" not in names  # comes with torch's CUDA builds, at the version that torch needs


def test_constraints_pin_every_dependency_inside_its_range():
    """constraints.txt is the exact set setup.sh installs (and CI tests): every dependency and extra pinned,
    each pin inside the range pyproject.toml gives."""
    pins = constraints()
    for req in REQUIREMENTS:
        name = canonical(req.name)
        assert name in pins, f"constraints.txt has no pin for {req.name}"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} is outside {req}"
    assert "fastpart" not in pins
    commands = [line for line in (ROOT / "setup.sh").read_text().splitlines()
                if "pip install" in line and not line.lstrip().startswith("#") and "--upgrade" not in line]
    resolved = [line for line in commands if "--no-deps" not in line]
    assert resolved and all("-c constraints.txt" in line for line in resolved), resolved
    for line in commands:  # the test-only packages installed --no-deps: pinned, at constraints.txt's versions
        for name, version in re.findall(r"([A-Za-z0-9_.-]+)==([^\s'\"]+)", line):
            assert pins.get(canonical(name)) == version, f"setup.sh installs {name}=={version}"


def test_the_environment_running_the_tests_is_inside_the_ranges():
    optional = {canonical(Requirement(r).name) for rs in EXTRAS.values() for r in rs}
    for req in REQUIREMENTS:
        try:
            installed = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            assert canonical(req.name) in optional, f"{req.name} is not installed"
            continue  # an extra that is not installed here
        assert req.specifier.contains(Version(installed).base_version, prereleases=True), f"{req.name} {installed}"


def test_type_checkers_see_every_public_name():
    """`import fastpart` stays lazy (``__getattr__``), but the ``if TYPE_CHECKING:`` block imports every public
    name from the module that ``__getattr__`` loads it from, so editors resolve ``fastpart.pgd`` and the rest;
    ``__all__`` is a literal list, and the package ships ``py.typed``."""
    import fastpart

    tree = ast.parse((ROOT / "fastpart" / "__init__.py").read_text())
    blocks = [node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"]
    assert len(blocks) == 1
    seen = {}
    for node in blocks[0].body:
        assert isinstance(node, ast.ImportFrom), ast.unparse(node)
        for alias in node.names:
            assert alias.asname == alias.name, f"{alias.name}: re-export it as `import {alias.name} as {alias.name}`"
            seen[alias.name] = node.module
    assert seen == fastpart._EXPORTS
    literal = next(node.value for node in tree.body if isinstance(node, ast.Assign)
                   and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["__all__"])
    assert ast.literal_eval(literal) == fastpart.__all__
    assert (ROOT / "fastpart" / "py.typed").is_file()
    assert PYPROJECT["tool"]["setuptools"]["package-data"]["fastpart"] == ["py.typed"]


# ---------------------------------------------------------------------------------------------
# The built distributions
# ---------------------------------------------------------------------------------------------

SOURCE_FOLDERS = ("fastpart", "tests", "pipelines", "benchmarks")  # with the top-level files: what an sdist may take


def _copy_ignore(folder: str, names: list[str]) -> set[str]:
    skipped = {n for n in names if n == "__pycache__" or n.endswith((".egg-info", ".beton", ".npz", ".pt", ".pyc"))}
    if Path(folder) == ROOT:  # not .venv, .git, data/, runs/, build/ ...
        skipped |= {n for n in names if (ROOT / n).is_dir() and n not in SOURCE_FOLDERS}
    return skipped


def _build(hook: str, source: Path, out: Path) -> Path:
    """A PEP 517 hook of setuptools (what `python -m build` calls), run in ``source``; the file it wrote."""
    out.mkdir(parents=True, exist_ok=True)
    code = f"import sys; from setuptools import build_meta; print(build_meta.{hook}(sys.argv[1]))"
    result = subprocess.run([sys.executable, "-c", code, str(out)], cwd=source, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return out / result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> tuple[Path, Path]:
    """(sdist, wheel): the sdist built from a copy of this tree, the wheel built from the unpacked sdist (as
    `python -m build` does), so a file the sdist leaves out and the wheel needs fails here."""
    setuptools = pytest.importorskip("setuptools")
    if Version(setuptools.__version__) < Version("77"):
        pytest.skip(f"building needs setuptools >= 77 (SPDX license metadata); this is {setuptools.__version__}")
    tmp = tmp_path_factory.mktemp("dists")
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=_copy_ignore)
    sdist = _build("build_sdist", source, tmp / "dist")
    with tarfile.open(sdist) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(tmp / "unpacked", filter="data")
        else:  # a Python without extraction filters; the archive was built just now
            tar.extractall(tmp / "unpacked")
    (unpacked,) = (tmp / "unpacked").iterdir()
    wheel = _build("build_wheel", unpacked, tmp / "dist")
    return sdist, wheel


def test_the_sdist_holds_the_tests_their_helpers_and_the_scripts(dists):
    sdist, _ = dists
    with tarfile.open(sdist) as tar:
        top, *_ = tar.getnames()[0].split("/")
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    expected = {"LICENSE", "README.md", "PACKAGE.md", "CHANGELOG.md", "constraints.txt", "setup.sh", "pyproject.toml",
                "fastpart/py.typed", "tests/conftest.py", "tests/support.py", "tests/formats.py"}
    for folder, pattern in (("tests", "*.py"), ("fastpart", "**/*.py"), ("pipelines", "*.sh"), ("benchmarks", "*.py"),
                            ("benchmarks", "*.sh")):
        expected |= {p.relative_to(ROOT).as_posix() for p in (ROOT / folder).glob(pattern)
                     if "__pycache__" not in p.parts}
    assert not expected - names, f"the sdist leaves out {sorted(expected - names)}"
    assert not {n for n in names if n.endswith((".pyc", ".beton", ".npz", ".pt")) or "__pycache__" in n}


def test_the_wheel_is_the_package_its_license_and_a_description_that_starts_with_pip_install(dists):
    _, wheel = dists
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = email.message_from_bytes(zf.read(f"{info}/METADATA"), policy=email.policy.compat32)
        entry_points = zf.read(f"{info}/entry_points.txt").decode()
    assert {n.split("/")[0] for n in names} == {"fastpart", info}  # no tests/ or benchmarks/ package
    assert "fastpart/py.typed" in names and f"{info}/licenses/LICENSE" in names
    assert "fastpart = fastpart.cli:main" in entry_points
    assert metadata["License-Expression"] == "MIT"
    assert "fastpart developers" in (metadata["Author"] or metadata["Author-email"] or "")
    assert "Typing :: Typed" in metadata.get_all("Classifier")
    requires = [Requirement(r) for r in metadata.get_all("Requires-Dist")]
    assert {(canonical(r.name), str(r.specifier)) for r in requires} == {
        (canonical(r.name), str(r.specifier)) for r in REQUIREMENTS}  # pyproject's ranges (extras with a marker)
    assert metadata["Description-Content-Type"] == "text/markdown"
    description = metadata.get_payload()
    first_code = description.split("```bash\n", 1)[1].splitlines()[0]
    assert first_code.startswith("pip install fastpart"), first_code
    assert "setup.sh" not in description.split("\n## ", 1)[0]  # the opening speaks of pip, not of a checkout


# ---------------------------------------------------------------------------------------------
# The wheel installed into another environment
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_installed_wheel_converts_and_trains_from_another_folder(dists, tmp_path):
    """A fresh virtual environment that reuses this one's torch and the other heavy dependencies (a .pth file to
    this environment's site-packages: nothing downloaded), the wheel installed into it (not editable, no
    dependencies, no index), then the package description's commands and its Python example run in a folder
    outside the source tree: the installed copy runs, not this checkout."""
    _, wheel = dists
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=300)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    parents = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (Path(site) / "parent-environment.pth").write_text("".join(f"{p}\n" for p in parents))
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    environ.update(OMP_NUM_THREADS="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    run = lambda *args, timeout=600: subprocess.run(  # noqa: E731
        [str(a) for a in args], cwd=work, env=environ, capture_output=True, text=True, timeout=timeout)
    work = tmp_path / "work"
    work.mkdir()

    result = run(sys.executable, "-m", "pip", "--python", python, "install",  # this environment's pip, into the new
                 "--no-deps", "--no-index", "--no-cache-dir", wheel)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    where = run(python, "-c", "import importlib.metadata as m, fastpart, torch; "
                "print(fastpart.__file__); print(m.version('fastpart')); print(torch.__file__)")
    assert where.returncode == 0, where.stderr[-2000:]
    module, version, torch_file = where.stdout.split()
    assert Path(module).is_relative_to(site) and not Path(module).is_relative_to(ROOT), module
    assert version == __import__("fastpart").__version__
    assert any(Path(torch_file).is_relative_to(p) for p in parents), torch_file  # this environment's torch
    assert (Path(module).parent / "py.typed").is_file()

    fastpart = env_dir / "bin" / "fastpart"
    converted = run(fastpart, "convert", "shapes", "--format", "npz", "--n-train", "192", "--n-test", "32")
    assert converted.returncode == 0, converted.stderr[-2000:]
    assert (work / "data" / "shapes" / "train.npz").is_file()
    trained = run(fastpart, "train", "--dataset", "shapes", "--method", "at", "--epochs", "1", "--model",
                  "resnet18_cifar_w8", "--batch-size", "32", "--steps", "1", "--eval-n", "16", "--eval-steps", "1",
                  "--out", "run")
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    assert "shapes resnet18_cifar_w8 at: 1 epochs" in trained.stdout
    assert (work / "run" / "config.json").is_file()

    with zipfile.ZipFile(wheel) as zf:
        metadata = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    example = metadata.split("```python\n", 1)[1].split("```", 1)[0]  # the package description's example
    ran = run(python, "-c", example)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "PGD-20 accuracy of the last batch" in ran.stdout
