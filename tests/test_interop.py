"""fastpart among the tools of the field: models it did not train (plain state dicts, as RobustBench's zoo
stores them) evaluated with every attack, and runs exported so that RobustBench's own evaluation reports the
numbers ``fastpart eval`` reports."""

from __future__ import annotations

import importlib
import importlib.util
import json
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SMALL_EPS
from formats import CIFAR10_CLASS_NAMES, CIFAR10_PYTHON_FOLDER
from fastpart.cli import main
from fastpart.data.splitfiles import read_split, split_path

N = 20  # test images of the tiny CIFAR-10


def results(path: Path) -> dict[str, float]:
    return {k: v["accuracy"] for k, v in json.loads(path.read_text())["results"].items()}


def test_a_plain_state_dict_is_evaluated_like_the_run_it_came_from(trained_shapes, shapes_data, tmp_path, capsys):
    state = torch.load(trained_shapes / "checkpoint.pt", weights_only=True)["model"]
    attacks = ["--attacks", "natural,pgd5,mma", "--n", "48", "--batch-size", "48", "--eps", str(SMALL_EPS),
               "--device", "cpu"]
    assert main(["eval", str(trained_shapes), *attacks, "--out", str(tmp_path / "run")]) == 0
    expected = results(tmp_path / "run" / "eval.json")
    for name, payload in (("zoo.pt", {"state_dict": {f"module.{k}": v for k, v in state.items()}}), ("bare.pt", state)):
        torch.save(payload, tmp_path / name)
        assert main(["eval", "--checkpoint", str(tmp_path / name), "--model", "resnet18_cifar_w8", "--dataset", "shapes",
                     "--data-dir", str(shapes_data), *attacks, "--out", str(tmp_path / name.removesuffix(".pt"))]) == 0
        assert results(tmp_path / name.removesuffix(".pt") / "eval.json") == expected
    capsys.readouterr()
    torch.save({"state_dict": state}, tmp_path / "other.pt")
    assert main(["eval", "--checkpoint", str(tmp_path / "other.pt"), "--model", "wrn16_2", "--dataset", "shapes",
                 "--data-dir", str(shapes_data), "--attacks", "natural", "--device", "cpu"]) == 2
    line = capsys.readouterr().err.strip()
    assert len(line.splitlines()) == 1 and "missing keys: block1." in line and "unexpected keys: layer1." in line
    assert "size mismatch: conv1.weight (8, 3, 3, 3) (model: (16, 3, 3, 3))" in line
    assert main(["eval", "--checkpoint", str(tmp_path / "bare.pt"), "--dataset", "shapes", "--data-dir",
                 str(shapes_data), "--attacks", "natural", "--device", "cpu"]) == 2
    assert "needs --model NAME and --dataset D" in capsys.readouterr().err


def test_normalisation_of_a_foreign_model(trained_shapes, shapes_data, tmp_path, capsys):
    """A file whose model expects normalised inputs: --normalize puts the normalisation in front of it."""
    state = torch.load(trained_shapes / "checkpoint.pt", weights_only=True)["model"]
    torch.save(state, tmp_path / "plain.pt")
    common = ["eval", "--checkpoint", str(tmp_path / "plain.pt"), "--model", "resnet18_cifar_w8", "--dataset", "shapes",
              "--data-dir", str(shapes_data), "--attacks", "natural", "--n", "64", "--device", "cpu"]
    assert main([*common, "--out", str(tmp_path / "raw")]) == 0
    assert main([*common, "--normalize", "0.5,0.25", "--out", str(tmp_path / "normalised")]) == 0
    record = json.loads((tmp_path / "normalised" / "eval.json").read_text())
    assert record["results"]["natural"]["accuracy"] != results(tmp_path / "raw" / "eval.json")["natural"]
    capsys.readouterr()
    assert main([*common, "--normalize", "0.5"]) == 2
    assert "--normalize '0.5'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# RobustBench out, and RobustBench's own evaluation of the exported model
# ---------------------------------------------------------------------------------------------


def official_pickle(entries: dict) -> bytes:
    """The official files are Python 2 pickles, whose keys load as str under ``encoding="latin1"`` (torchvision,
    fastpart) and as bytes under ``"bytes"``; a Python 3 pickle with str keys loads as str under both."""
    return pickle.dumps(entries, protocol=2)


def batch(images: np.ndarray, labels: np.ndarray, name: str) -> bytes:
    return official_pickle({"batch_label": name, "labels": [int(v) for v in labels],
                            "data": np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(len(images), -1),
                            "filenames": [f"image_{i:05d}.png" for i in range(len(images))]})


def tiny_cifar10(shapes_data: Path, root: Path) -> Path:
    """The official CIFAR-10 python layout (cifar-10-batches-py/) holding shapes images: the model under test
    learned shapes, so its accuracy and robustness on these images are far from trivial."""
    test = read_split(split_path(shapes_data, "shapes", "test"))
    train = read_split(split_path(shapes_data, "shapes", "train"))
    folder = root / CIFAR10_PYTHON_FOLDER
    folder.mkdir(parents=True)
    (folder / "batches.meta").write_bytes(official_pickle({"num_cases_per_batch": 10, "num_vis": 3072,
                                                           "label_names": list(CIFAR10_CLASS_NAMES)}))
    for i in range(1, 6):
        rows = slice((i - 1) * 10, i * 10)
        (folder / f"data_batch_{i}").write_bytes(batch(train.images[rows], train.labels[rows], f"training batch {i} of 5"))
    (folder / "test_batch").write_bytes(batch(test.images[:N], test.labels[:N], "testing batch 1 of 1"))
    return root


def robustbench_eval(monkeypatch):
    """``robustbench.eval`` importable without its heavy dependencies (installed --no-deps for the tests).

    RobustBench calls the reference AutoAttack code by its git package name ``autoattack``; ``pyautoattack`` is
    the same code packaged on PyPI with a few renamed arguments (``bs`` -> ``batch_size``, no ``log_path``) and
    (x_adv, labels) returned, so the adapter below only translates the call. It also runs the quick subset APGD-CE + APGD-T (standard AA's
    FAB-T and Square take minutes on this CPU), with the seed fastpart's evaluation draws for the same batch.
    ``pkg_resources`` (gone from current setuptools) is only used by RobustBench's ImageNet loaders."""
    for name in ("robustbench", "geotorch", "torchdiffeq", "pandas", "requests", "gdown"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"robustbench.eval needs {name}: setup.sh installs it for the tests")
    import pyautoattack

    from fastpart.evaluation import batch_generator

    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=batch_generator(0, "aa-fast", 0, torch.device("cpu"))))

    class ReferenceAutoAttack(pyautoattack.AutoAttack):
        def __init__(self, model, norm, eps, version, device, log_path=None):
            super().__init__(model, norm=norm, eps=eps, version=version, device=device, seed=seed)
            self.verbose = False
            self.attacks_to_run = ["apgd-ce", "apgd-t"]

        def run_standard_evaluation(self, x, y, bs=250, state_path=None):  # the reference returns x_adv alone
            return super().run_standard_evaluation(x, y, batch_size=bs, state_path=state_path)[0]

    monkeypatch.setitem(sys.modules, "autoattack", pyautoattack)
    monkeypatch.setitem(sys.modules, "autoattack.state", importlib.import_module("pyautoattack.state"))
    stub = types.ModuleType("pkg_resources")
    stub.resource_filename = lambda package, path: str(Path(importlib.import_module(package).__file__).parent / path)
    monkeypatch.setitem(sys.modules, "pkg_resources", stub)
    evaluation = importlib.import_module("robustbench.eval")
    monkeypatch.setattr(evaluation, "AutoAttack", ReferenceAutoAttack)
    # torchvision's CIFAR-10 reader checks the official files' md5 sums; these files have the official layout only
    import torchvision.datasets.cifar

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: Path(path).is_file())
    return evaluation


@pytest.mark.slow
def test_exported_run_gives_robustbench_the_numbers_of_fastpart_eval(trained_shapes, shapes_data, tmp_path, monkeypatch):
    cifar = tiny_cifar10(shapes_data, tmp_path / "cifar")
    data = tmp_path / "data"
    # converted under the name the run was trained on, so `fastpart eval RUN --data-dir` finds it
    assert main(["convert", "cifar10", "--source", str(cifar / CIFAR10_PYTHON_FOLDER), "--out", str(data),
                 "--name", "shapes", "--format", "npz"]) == 0
    assert main(["eval", str(trained_shapes), "--data-dir", str(data), "--attacks", "natural,aa-fast", "--eps",
                 str(SMALL_EPS), "--batch-size", str(N), "--device", "cpu", "--out", str(tmp_path / "eval")]) == 0
    ours = results(tmp_path / "eval" / "eval.json")
    run = tmp_path / "run"  # the run folder, evaluated on the tiny CIFAR-10: what gets exported
    run.mkdir()
    for name in ("checkpoint.pt", "config.json"):
        (run / name).write_bytes((trained_shapes / name).read_bytes())
    (run / "eval.json").write_bytes((tmp_path / "eval" / "eval.json").read_bytes())
    assert main(["export", str(run), "--robustbench", str(tmp_path / "models"), "--name", "fastpart_at", "--aa",
                 "aa-fast"]) == 0
    weights = tmp_path / "models" / "shapes" / "Linf" / "fastpart_at.pt"
    info = json.loads((tmp_path / "models" / "model_info" / "shapes" / "Linf" / "fastpart_at.json").read_text())
    assert info["clean_acc"] == f"{100 * ours['natural']:.2f}" and info["autoattack_acc"] == f"{100 * ours['aa-fast']:.2f}"
    assert info["architecture"] == "resnet18_cifar_w8" and "not standard AutoAttack" in info["footnote"]
    assert {"name", "authors", "additional_data", "number_forward_passes", "dataset", "venue", "eps", "reported",
            "footnote", "link"} <= set(info)
    assert 0.1 < ours["aa-fast"] < ours["natural"]  # a model with robust and non-robust points: not vacuous

    # RobustBench's side: the architecture rebuilt, the file loaded as RobustBench loads zoo files, its benchmark
    from fastpart.models import create_model

    model = create_model("resnet18_cifar_w8", num_classes=10)
    checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict({k.removeprefix("module."): v for k, v in checkpoint["state_dict"].items()})
    evaluation = robustbench_eval(monkeypatch)
    clean, robust = evaluation.benchmark(model.eval(), n_examples=N, dataset="cifar10", threat_model="Linf",
                                         data_dir=str(cifar), device=torch.device("cpu"), batch_size=N, eps=SMALL_EPS)
    assert clean == pytest.approx(ours["natural"], abs=1e-9)
    assert robust == pytest.approx(ours["aa-fast"], abs=1e-9)
    assert np.isfinite(clean)
