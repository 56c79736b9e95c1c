"""Runs described by files: `--config FILE` (TOML or JSON) for train and eval, `--from RUN`, `--resume` that reads
the run's config.json; flags override files, files override defaults; a run's config.json is a valid --config.
All of it is settled before torch is imported, so these tests parse and check without training."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from fastpart.cli import build_parser, eval_config, main, train_config
from fastpart.config import EvalConfig, TrainConfig

needs_tomllib = pytest.mark.skipif(sys.version_info < (3, 11), reason="TOML settings need Python 3.11 (tomllib)")


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """A data folder in which shapes counts as converted (train_config only looks for its manifest)."""
    (tmp_path / "data" / "shapes").mkdir(parents=True)
    (tmp_path / "data" / "shapes" / "manifest.json").write_text("{}")
    return tmp_path / "data"


def parse(*argv: str):
    return build_parser().parse_args([str(a) for a in argv])


@needs_tomllib
def test_train_config_file_with_flags_over_it(tmp_path, data_dir):
    (tmp_path / "run.toml").write_text('method = "part-trades"\nepochs = 12\neps = "6/255"\neps-low = "5/255"\n'
                                       'milestones = [8, 10]\nseed = 3\n')
    cfg, given = train_config(parse("train", "--config", tmp_path / "run.toml", "--seed", 4, "--dataset", "shapes",
                                    "--data-dir", data_dir))
    assert (cfg.method, cfg.epochs, cfg.milestones, cfg.seed) == ("part-trades", 12, (8, 10), 4)
    assert cfg.eps == pytest.approx(6 / 255) and cfg.eps_low == pytest.approx(5 / 255)
    assert {"method", "epochs", "eps", "eps_low", "milestones", "seed", "dataset"} <= given


def test_a_runs_config_json_is_a_valid_config_and_from_keeps_all_but_its_folder(tmp_path, data_dir):
    run = tmp_path / "runs" / "x"
    run.mkdir(parents=True)
    recorded = TrainConfig(dataset="shapes", data_dir=str(data_dir), method="mart", epochs=7, lr=0.05, seed=2,
                           out=str(run), eps=4 / 255)
    (run / "config.json").write_text(json.dumps({**asdict(recorded), "val_rows": [1, 2]}))  # as train records it
    from_file, _ = train_config(parse("train", "--config", run / "config.json", "--out", tmp_path / "y"))
    assert asdict(from_file) == {**asdict(recorded), "out": str(tmp_path / "y")}
    again, _ = train_config(parse("train", "--from", run, "--out", tmp_path / "runs" / "y", "--seed", 1))
    assert asdict(again) == {**asdict(recorded), "out": str(tmp_path / "runs" / "y"), "seed": 1}


def test_resume_with_only_its_folder_reads_the_recorded_settings(tmp_path, data_dir):
    run = tmp_path / "run"
    run.mkdir()
    recorded = TrainConfig(dataset="shapes", data_dir=str(data_dir), method="at", epochs=5, steps=2, out=str(run))
    (run / "config.json").write_text(json.dumps(asdict(recorded)))
    cfg, _ = train_config(parse("train", "--out", run, "--resume"))
    assert asdict(cfg) == {**asdict(recorded), "resume": True}
    changed, _ = train_config(parse("train", "--out", run, "--resume", "--eval-every", 2))  # a resume may change it
    assert changed.eval_every == 2 and changed.steps == 2


@pytest.mark.parametrize("content,message", [
    ('{"epocs": 3}', "unknown setting 'epocs' (did you mean epochs?)"),
    ('{"epochs": "many"}', "'epochs'"),
    ('{"eps": 8}', "did you mean 8/255?"),
    ("[1, 2]", "expected a table of settings"),
    ("{not json", "is not valid JSON"),
])
def test_a_bad_settings_file_is_one_line_naming_it(tmp_path, data_dir, capsys, content, message):
    (tmp_path / "bad.json").write_text(content)
    assert main(["train", "--config", str(tmp_path / "bad.json"), "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(tmp_path / "bad.json") in err and message in err, err


@pytest.fixture
def a_run(tmp_path, monkeypatch) -> Path:
    """A folder that eval's checks take for a run (they look for its checkpoint file, and do not open it)."""
    monkeypatch.chdir(tmp_path)
    for run in ("runs/x", "runs/latest", "r"):
        (tmp_path / run).mkdir(parents=True)
        (tmp_path / run / "checkpoint.pt").write_bytes(b"")
    return tmp_path


@needs_tomllib
def test_eval_config_file_with_flags_over_it(tmp_path, a_run):
    (tmp_path / "eval.toml").write_text('attacks = ["natural", "pgd20"]\nn = 64\neps = "4/255"\n'
                                        'eps-curve = ["0", "2/255"]\nbatch-size = 32\n')
    cfg = eval_config(parse("eval", "runs/x", "--config", tmp_path / "eval.toml", "--n", 128, "--alpha", "1/255"))
    assert (cfg.run, cfg.attacks, cfg.n, cfg.batch_size) == ("runs/x", ("natural", "pgd20"), 128, 32)
    assert cfg.eps == pytest.approx(4 / 255) and cfg.alpha == pytest.approx(1 / 255)
    assert cfg.eps_curve == pytest.approx((0.0, 2 / 255))


def test_eval_flags_take_budgets_as_fractions_and_default_to_the_latest_run(a_run):
    cfg = eval_config(parse("eval", "--attacks", "natural, aa-fast", "--eps", "8/255", "--eps-curve", "0", "16/255"))
    assert cfg.run == "runs/latest" and cfg.attacks == ("natural", "aa-fast")
    assert cfg.eps == pytest.approx(8 / 255) and cfg.eps_curve == pytest.approx((0.0, 16 / 255))
    assert asdict(eval_config(parse("eval", "r"))) == asdict(EvalConfig(run="r"))  # the defaults are the config's
    (a_run / "zoo.pt").write_bytes(b"")
    foreign = eval_config(parse("eval", "--checkpoint", "zoo.pt", "--model", "resnet18", "--dataset", "cifar10"))
    assert foreign.run == ""  # a foreign state dict has no run


def test_eval_refuses_a_budget_in_pixel_units_with_one_line(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["eval", "runs/x", "--eps", "8"])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "did you mean 8/255?" in err
