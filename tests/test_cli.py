"""The command line: help for every verb and option, version, and errors as one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

import fastpart
from fastpart.cli import build_parser, main


def verbs() -> list[str]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return sorted(sub.choices)


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"fastpart {fastpart.__version__}"


def test_top_level_help_lists_every_verb(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert {"convert", "train"} <= set(verbs())
    for verb in verbs():
        assert verb in out


@pytest.mark.parametrize("verb", verbs())
def test_every_option_of_every_verb_is_described(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([verb, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    for action in sub.choices[verb]._actions:
        for flag in action.option_strings:
            assert flag in out
        assert action.help, f"{verb}: {action.option_strings or action.dest} has no help text"


def test_convert_help_lists_the_known_datasets(capsys):
    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    out = capsys.readouterr().out
    for name in ("cifar10", "svhn", "tinyimagenet", "cifar10c", "imagefolder", "shapes"):
        assert name in out


def test_no_verb_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "convert" in capsys.readouterr().out


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "fastpart.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("fastpart ")
    scripts = subprocess.run([sys.executable, "-c", "import importlib.metadata as m; print([e.value for e in m.entry_points(group='console_scripts') if e.name == 'fastpart'])"], capture_output=True, text=True)
    assert "fastpart.cli:main" in scripts.stdout


def test_train_without_converted_data_is_one_clear_line(tmp_path, capsys):
    assert main(["train", "--dataset", "shapes", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "fastpart convert shapes" in err


def test_train_with_a_corrupt_manifest_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "shapes").mkdir()
    (tmp_path / "shapes" / "manifest.json").write_text("{ truncated")
    assert main(["train", "--dataset", "shapes", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no readable manifest" in err and "fastpart convert shapes" in err
