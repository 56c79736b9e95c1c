"""The rule for failures, one table: every writer and reader of fastpart meets the faults that happen to files
(a full disk after N bytes, a read-only disk, Ctrl-C in the middle of a write, a file truncated, with a bit
flipped, garbage, a record with a field missing or of the wrong type, a file replaced between two reads), and
every case must end as the rule says:

* one line on stderr (``fastpart VERB: error: ...`` naming the file, or ``fastpart VERB: interrupted``), no
  traceback, exit status 2 (130 for Ctrl-C);
* nothing written by an earlier successful step is lost (every file that was there is still there, whole; an
  appended line is not a loss), and no temporary or half-written folder is left;
* where the case says so, the same command without the fault then succeeds (a run stays resumable).

A new writer or reader joins the table in one line: ``Case(name, command, fault, status, words)``. The world every
case starts from (a converted dataset, a run interrupted after its first epoch, its evaluation) is built once.
"""

from __future__ import annotations

import errno
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from faults import copy_tree, damage, faulty_disk, leftovers, lost, snapshot, swapped
from support import ctrl_c_before_epoch

from fastpart.cli import main

ENOSPC, EROFS = errno.ENOSPC, errno.EROFS
RESTATED = ("run/config.json", "run/env.json")  # restated whole by every start of the run (a resume sets "resume")
TRAIN = ["--dataset", "shapes", "--model", "resnet18_cifar_w8", "--method", "at", "--batch-size", "32", "--steps", "1",
         "--eval-steps", "1", "--eval-n", "8", "--seed", "1", "--epochs", "2", "--device", "cpu"]


# ---------------------------------------------------------------------------------------------
# The commands (of a world folder w) and the faults
# ---------------------------------------------------------------------------------------------

def resume(w: Path) -> list[str]:
    return ["train", *TRAIN, "--data-dir", "data", "--out", "run", "--resume"]


def new_run(w: Path) -> list[str]:
    return ["train", *TRAIN, "--data-dir", "data", "--out", "new"]


def evaluate(w: Path) -> list[str]:
    return ["eval", "run", "--attacks", "natural", "--n", "8", "--device", "cpu", "--data-dir", "data",
            "--restart"]


def resume_eval(w: Path) -> list[str]:
    return ["eval", "run", "--attacks", "natural", "--n", "8", "--device", "cpu", "--data-dir", "data"]


def report(w: Path) -> list[str]:
    return ["report", "run", "--images", "0"]


def report_through_a_file(w: Path) -> list[str]:
    (w / "a-file").write_text("not a folder")
    return ["report", "run", "--images", "0", "--out", "a-file/report"]


def export(w: Path) -> list[str]:
    return ["export", "run", "--robustbench", "zoo"]


def export_through_a_file(w: Path) -> list[str]:
    (w / "a-file").write_text("not a folder")
    return ["export", "run", "--robustbench", "a-file"]


def reconvert(w: Path) -> list[str]:
    return ["convert", "shapes", "--n-train", "64", "--n-test", "32", "--format", "npz", "--out", "data",
            "--force", "--seed", "1"]


@dataclass(frozen=True)
class Disk:
    """Writes under the world fail: ``code`` (ENOSPC after ``after`` bytes, EROFS at once) in files whose name
    holds ``target``; ``interrupt``: Ctrl-C at that byte instead."""

    code: int = ENOSPC
    after: int = 0
    target: str = ""
    interrupt: bool = False


@dataclass(frozen=True)
class Damage:
    """``file`` (relative to the world) damaged before the command: see ``faults.damage``."""

    file: str
    how: str
    change: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Swap:
    """``file`` replaced by ``by`` (both relative to the world) right after its first open for reading."""

    file: str
    by: str


@dataclass(frozen=True)
class Case:
    name: str
    command: Callable[[Path], list[str]]
    fault: Disk | Damage | Swap
    status: int = 2
    words: tuple[str, ...] = ()  # what the one line must say (any case)
    then_ok: bool = False  # the command without the fault then succeeds
    check: Callable[[Path], None] | None = None  # more to check in the world afterwards


def labels_17(labels: np.ndarray) -> np.ndarray:
    return np.where(np.arange(len(labels)) == 5, 17, labels)


def wider(images: np.ndarray) -> np.ndarray:
    return np.zeros((len(images), 48, 40, 3), np.uint8)


def evaluated_the_loaded_weights(w: Path) -> None:
    """The progress of the evaluation is filed under the checkpoint whose weights were evaluated (the one before
    the swap), not under the file that replaced it meanwhile."""
    progress = json.loads((w / "run" / "eval-progress.json").read_text())
    before = hashlib.sha256((w / "checkpoint-before.pt").read_bytes()).hexdigest()
    assert progress["fingerprint"]["checkpoint"] == f"sha256:{before}"
    assert json.loads((w / "run" / "eval.json").read_text())["epoch"] == 1  # the first checkpoint's epoch


CASES = [
    # writers: a full disk, a read-only disk, Ctrl-C while writing, a path through a file
    Case("convert --force, full disk at once", reconvert, Disk(ENOSPC), 2, ("no space left", "shapes"), True),
    Case("convert --force, full disk mid-file", reconvert, Disk(ENOSPC, 150_000), 2, ("no space left",), True),
    Case("convert --force, read-only disk", reconvert, Disk(EROFS), 2, ("read-only",)),
    Case("convert --force, Ctrl-C mid-file", reconvert, Disk(after=100_000, interrupt=True), 130, ("interrupted",)),
    Case("resume, full disk at the checkpoint", resume, Disk(ENOSPC, 1000, "checkpoint.pt"), 2, ("no space left",), True),
    Case("resume, full disk appending to metrics.jsonl", resume, Disk(ENOSPC, 0, "=metrics.jsonl"), 2, ("no space",), True),
    Case("resume, full disk mid-line of metrics.jsonl", resume, Disk(ENOSPC, 30, "=metrics.jsonl"), 2, ("no space",), True),
    Case("resume, full disk rewriting metrics.jsonl", resume, Disk(ENOSPC, 30, "metrics"), 2, ("no space",), True),
    Case("resume, Ctrl-C writing the checkpoint", resume, Disk(after=5000, target="checkpoint", interrupt=True), 130,
         ("interrupted",), True),
    Case("resume, full disk at config.json", resume, Disk(ENOSPC, 0, "config.json"), 2, ("config.json",), True),
    Case("new run, read-only disk", new_run, Disk(EROFS), 2, ("read-only",)),
    Case("eval, full disk at eval.json", resume_eval, Disk(ENOSPC, 0, "eval.json"), 2, ("no space left",), True),
    Case("eval, full disk at its progress", evaluate, Disk(ENOSPC, 0, "eval-progress"), 2, ("no space left",)),
    Case("eval, read-only disk", resume_eval, Disk(EROFS), 2, ("read-only",)),
    Case("report, read-only disk", report, Disk(EROFS), 2, ("read-only",)),
    Case("report, full disk at a figure", report, Disk(ENOSPC, 100, ".png"), 2, ("no space left",), True),
    Case("report --out through a file", report_through_a_file, Disk(target="nothing"), 2, ("a-file",)),
    Case("export, read-only disk", export, Disk(EROFS), 2, ("read-only",)),
    Case("export, full disk at the weights", export, Disk(ENOSPC, 2000, ".pt"), 2, ("no space left",), True),
    Case("export through a file", export_through_a_file, Disk(target="nothing"), 2, ("a-file",)),
    # readers: every file read from disk is checked before it is trusted
    Case("resume, checkpoint truncated", resume, Damage("run/checkpoint.pt", "truncate"), 2, ("checkpoint.pt", "truncated")),
    Case("eval, checkpoint with a flipped bit", evaluate, Damage("run/checkpoint.pt", "flip"), 2, ("checkpoint.pt", "CRC")),
    Case("resume, checkpoint with a flipped bit", resume, Damage("run/checkpoint.pt", "flip"), 2, ("checkpoint.pt", "CRC")),
    Case("eval, checkpoint of garbage", evaluate, Damage("run/checkpoint.pt", "garbage"), 2, ("checkpoint.pt",)),
    Case("resume, checkpoint without torch_rng", resume, Damage("run/checkpoint.pt", "edit", {"torch_rng": ...}), 2,
         ("checkpoint.pt", "'torch_rng'")),
    Case("resume, checkpoint config as a list", resume, Damage("run/checkpoint.pt", "edit", {"config": [1, 2]}), 2,
         ("checkpoint.pt", "'config'")),
    Case("eval, checkpoint config as a list", evaluate, Damage("run/checkpoint.pt", "edit", {"config": [1, 2]}), 2,
         ("checkpoint.pt", "'config'")),
    Case("eval, checkpoint epoch as text", evaluate, Damage("run/checkpoint.pt", "edit", {"epoch": "one"}), 2,
         ("checkpoint.pt", "'epoch'")),
    Case("resume, checkpoint config.eps as text", resume, Damage("run/checkpoint.pt", "edit", {"config.eps": "8/255"}),
         2, ("checkpoint.pt", "'eps'")),
    Case("resume, config.json epochs as text", resume, Damage("run/config.json", "edit", {"epochs": "two"}), 2,
         ("config.json", "'epochs'")),
    Case("resume, config.json with a budget above 1", resume, Damage("run/config.json", "edit", {"eps": 8}), 2,
         ("config.json", "8/255")),
    Case("report, config.json not an object", report, Damage("run/config.json", "edit", {"whole": [1]}), 2,
         ("config.json",)),
    Case("report, env.json device_name a number", report, Damage("run/env.json", "edit", {"device_name": 5}), 2,
         ("env.json", "'device_name'")),
    Case("report, env.json versions a list", report, Damage("run/env.json", "edit", {"versions": [1]}), 2,
         ("env.json", "'versions'")),
    Case("report, eval.json results a list", report, Damage("run/eval.json", "edit", {"results": [1]}), 2,
         ("eval.json", "'results'")),
    Case("export, eval.json accuracy as text", export, Damage("run/eval.json", "edit", {"results.natural": {"accuracy": "high"}}),
         2, ("eval.json", "'results'")),
    Case("eval, progress of garbage", resume_eval, Damage("run/eval-progress.json", "garbage"), 0),
    Case("eval, progress with numbers as text", resume_eval,
         Damage("run/eval-progress.json", "edit", {"done": {"natural": {"0": ["a", "b", "c"]}}}), 0),
    Case("resume, manifest num_classes as text", resume, Damage("data/shapes/manifest.json", "edit", {"num_classes": "ten"}),
         2, ("manifest.json", "'num_classes'")),
    Case("eval, manifest without splits", evaluate, Damage("data/shapes/manifest.json", "edit", {"splits": ...}), 2,
         ("manifest.json", "'splits'")),
    Case("resume, train.npz truncated", resume, Damage("data/shapes/train.npz", "truncate"), 2, ("train.npz", "truncated")),
    Case("eval, test.npz truncated", evaluate, Damage("data/shapes/test.npz", "truncate"), 2, ("test.npz",)),
    Case("resume, a label 17 of 10 classes", resume, Damage("data/shapes/train.npz", "arrays", {"labels": labels_17}), 2,
         ("train.npz", "label 17")),
    Case("resume, 48x40 images under a 32x32 manifest", resume, Damage("data/shapes/train.npz", "arrays", {"images": wider}),
         2, ("train.npz", "40x48")),
    Case("report, a metrics line with text for a number", report,
         Damage("run/metrics.jsonl", "edit-lines", {"loss": "low"}), 0),
    # a file replaced between two reads (a training beside an evaluation)
    Case("eval, checkpoint replaced while it loads", evaluate, Swap("run/checkpoint.pt", "checkpoint-after.pt"), 0,
         check=evaluated_the_loaded_weights),
]


# ---------------------------------------------------------------------------------------------
# The world and the runner
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A converted dataset, a run of 2 epochs stopped (Ctrl-C) after its first, its evaluation (with an AutoAttack
    number for export), and a later checkpoint of the same run (for the swap)."""
    root = tmp_path_factory.mktemp("world")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # every path relative: a copy of the world is a world
        assert main(["convert", "shapes", "--n-train", "64", "--n-test", "32", "--out", "data", "--format", "npz"]) == 0
        with ctrl_c_before_epoch(patch, 2):
            assert main(resume(root)[:-1]) == 130
        assert main(resume_eval(root)) == 0
        record = json.loads((root / "run" / "eval.json").read_text())
        record["results"]["aa"] = {**record["results"]["natural"], "label": "AutoAttack standard"}
        (root / "run" / "eval.json").write_text(json.dumps(record))
        copy_tree(root / "run", root / "later")
        assert main(["train", *TRAIN, "--data-dir", "data", "--out", "later", "--resume"]) == 0
    (root / "checkpoint-after.pt").write_bytes((root / "later" / "checkpoint.pt").read_bytes())
    (root / "checkpoint-before.pt").write_bytes((root / "run" / "checkpoint.pt").read_bytes())
    return root


def _edit_lines(path: Path, change: dict[str, Any]) -> None:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({**line, **change}) + "\n" for line in lines[:1]) +
                    "".join(json.dumps(line) + "\n" for line in lines[1:]))


def _run(case: Case, w: Path, monkeypatch, capsys) -> tuple[int, list[str], str]:
    command = case.command(w)
    capsys.readouterr()
    if isinstance(case.fault, Disk):
        f = case.fault
        with faulty_disk(monkeypatch, w, f.code, f.after, f.target, f.interrupt):
            status = main(command)
    elif isinstance(case.fault, Swap):
        with swapped(monkeypatch, w / case.fault.file, (w / case.fault.by).read_bytes()):
            status = main(command)
    else:
        status = main(command)
    err = capsys.readouterr().err
    return status, [line for line in err.splitlines() if line.startswith("fastpart")], err


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fault(case: Case, world: Path, tmp_path: Path, monkeypatch, capsys):
    w = copy_tree(world, tmp_path / "w")
    monkeypatch.chdir(w)
    if isinstance(case.fault, Damage):
        d = case.fault
        if d.how == "edit-lines":
            _edit_lines(w / d.file, d.change)
        else:
            damage(w / d.file, d.how, **d.change)
    before = snapshot(w)
    status, lines, err = _run(case, w, monkeypatch, capsys)
    assert "Traceback" not in err, err[-3000:]
    assert status == case.status, (status, err[-3000:])
    if case.status:  # a failure: one line, and nothing an earlier step wrote is lost
        assert len(lines) == 1, err[-3000:]
        assert all(word.lower() in lines[0].lower() for word in case.words), lines[0]
        assert "weights_only" not in lines[0] and "\x1b[" not in lines[0]
        assert not lost(before, w, RESTATED), lost(before, w, RESTATED)
    assert not leftovers(w), leftovers(w)
    if case.check is not None:
        case.check(w)
    if case.then_ok:
        assert main(case.command(w)) == 0, capsys.readouterr().err[-3000:]


def test_the_table_covers_every_verb_that_writes_and_every_kind_of_fault(tmp_path):
    verbs = {c.command(tmp_path)[0] for c in CASES if isinstance(c.fault, Disk)}
    assert verbs >= {"convert", "train", "eval", "report", "export"}
    kinds = {(type(c.fault).__name__, getattr(c.fault, "how", None) or getattr(c.fault, "code", None)) for c in CASES}
    assert {("Disk", ENOSPC), ("Disk", EROFS), ("Damage", "truncate"), ("Damage", "flip"), ("Damage", "edit"),
            ("Swap", None)} <= kinds
    assert any(isinstance(c.fault, Disk) and c.fault.interrupt for c in CASES)
