"""fastpart's RobustBench architectures against RobustBench's own class definitions.

RobustBench is installed for the tests only (``pip install --no-deps robustbench``: importing the package
needs dependencies fastpart does not have), so its architecture files are loaded by path, each on its
own; they import only torch. Layouts and parameter counts are compared at full size on the meta device;
logits at full size once per architecture, on a state dict RobustBench's class initialised (seeded, with
random BN statistics), in eval mode. The two giants (WRN-34-20, WRN-70-16: 0.7 and 1.1 GB) are built for
real once, by RobustBench; the fastpart model is built on the meta device and takes those tensors
(``load_state_dict(strict=True, assign=True)``); its own construction is covered by the layout tests
and by narrow variants of the same classes, built and loaded the ordinary way. Logits agree bit for bit,
except where RobustBench's Swish stands against fastpart's nn.SiLU (the same function; last-bit differences).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import timm
import torch
from support import randomised
from torch import nn

from fastpart.models import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD

_spec = importlib.util.find_spec("robustbench")
if _spec is None or not _spec.submodule_search_locations:
    pytest.skip("robustbench is not installed (setup.sh installs it for the tests, --no-deps)", allow_module_level=True)
ARCHITECTURES = Path(next(iter(_spec.submodule_search_locations))) / "model_zoo" / "architectures"

X = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
SWISH_ATOL = 1e-6  # RobustBench's Swish (x * sigmoid(x)) and nn.SiLU differ in the last bit (1e-7 seen)
PUBLISHED = {"preact_resnet18": 11.17e6, "wrn28_10": 36.5e6, "wrn34_20": 184.5e6, "wrn70_16": 266.8e6}


def _load(name: str) -> ModuleType:
    path = ARCHITECTURES / f"{name}.py"
    if not path.is_file():
        pytest.skip(f"this robustbench has no {path.relative_to(ARCHITECTURES.parents[1])}")
    spec = importlib.util.spec_from_file_location(f"robustbench_architectures_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rb() -> dict[str, ModuleType]:
    return {name: _load(name) for name in ("resnet", "wide_resnet", "dm_wide_resnet")}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reference(rb: dict[str, ModuleType], kind: str, **kwargs) -> nn.Module:
    """RobustBench's class as its zoo entries build it (``kwargs`` narrow it or pick the variant)."""
    if kind == "preact_resnet18":
        return rb["resnet"].PreActResNet(rb["resnet"].PreActBlock, [2, 2, 2, 2], **kwargs)
    if kind == "wide_resnet":
        return rb["wide_resnet"].WideResNet(**kwargs)
    dm = rb["dm_wide_resnet"]
    return dm.DMWideResNet(**{"num_classes": 10, "activation_fn": dm.Swish, "mean": dm.CIFAR10_MEAN,
                              "std": dm.CIFAR10_STD, **kwargs})


# (fastpart name and kwargs, RobustBench kind and kwargs): the zoo's standard forms
FULL_SIZE = [
    ("preact_resnet18", {}, "preact_resnet18", {}),
    ("wrn28_10", {}, "wide_resnet", {"depth": 28, "widen_factor": 10}),
    ("wrn28_10", {"sub_block1": True}, "wide_resnet", {"depth": 28, "widen_factor": 10, "sub_block1": True}),
    ("wrn34_20", {}, "wide_resnet", {"depth": 34, "widen_factor": 20}),
    ("wrn34_20", {"sub_block1": True}, "wide_resnet", {"depth": 34, "widen_factor": 20, "sub_block1": True}),
    ("wrn70_16", {}, "dm_wide_resnet", {"depth": 70, "width": 16}),
    ("wrn70_16", {"mean": CIFAR10_MEAN, "std": CIFAR10_STD}, "dm_wide_resnet", {"depth": 70, "width": 16}),
]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def layout(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(key, tuple(value.shape)) for key, value in model.state_dict().items()]


def normalised(x: torch.Tensor, mean, std) -> torch.Tensor:
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def assert_same_logits(ours: torch.Tensor, theirs: torch.Tensor, swish: bool) -> None:
    """Bit for bit, but where RobustBench's Swish (an autograd Function) stands against nn.SiLU."""
    assert ours.shape == theirs.shape and theirs.abs().max() > 1e-3, "degenerate logits: the test would be vacuous"
    if swish:
        torch.testing.assert_close(ours, theirs, rtol=0, atol=SWISH_ATOL)
    else:
        assert torch.equal(ours, theirs), f"max difference {(ours - theirs).abs().max():.3g}"


def uses_swish(kind: str, rb_kwargs: dict) -> bool:
    return kind == "dm_wide_resnet" and "activation_fn" not in rb_kwargs


@pytest.mark.parametrize("name, kwargs, kind, rb_kwargs", FULL_SIZE)
def test_layout_and_parameter_count_match_robustbench(rb, name: str, kwargs: dict, kind: str, rb_kwargs: dict) -> None:
    with torch.device("meta"):
        ours, theirs = timm.create_model(name, num_classes=10, **kwargs), reference(rb, kind, **rb_kwargs)
    assert layout(ours) == layout(theirs)  # the same keys, in the same order, with the same shapes
    assert n_params(ours) == n_params(theirs)
    if not kwargs.get("sub_block1"):
        assert abs(n_params(ours) - PUBLISHED[name]) <= 0.01 * PUBLISHED[name]


def test_parameter_counts_found() -> None:
    """The exact figures (RobustBench's classes, 10 classes), as reported."""
    with torch.device("meta"):
        counts = {(name, tuple(kw)): n_params(timm.create_model(name, **kw)) for name, kw, _, _ in FULL_SIZE}
    assert counts == {("preact_resnet18", ()): 11_171_146, ("wrn28_10", ()): 36_479_194,
                      ("wrn28_10", ("sub_block1",)): 38_119_866, ("wrn34_20", ()): 184_531_674,
                      ("wrn34_20", ("sub_block1",)): 192_883_066, ("wrn70_16", ()): 266_796_506,
                      ("wrn70_16", ("mean", "std")): 266_796_506}


def test_preact_resnet18_loads_and_matches(rb) -> None:
    """Full size; also as Wong2020Fast (its checkpoint lacks the mu/sigma buffers RobustBench's wrapper adds)."""
    torch.manual_seed(0)
    theirs = randomised(reference(rb, "preact_resnet18"), 0)
    ours = timm.create_model("preact_resnet18", num_classes=10).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    wong = timm.create_model("preact_resnet18", num_classes=10, mean=CIFAR10_MEAN, std=CIFAR10_STD).eval()
    wong.load_state_dict(theirs.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(ours(X), theirs(X))
        assert torch.equal(wong(X), theirs(normalised(X, CIFAR10_MEAN, CIFAR10_STD)))


def test_wrn28_10_loads_and_matches_with_and_without_sub_block1(rb) -> None:
    torch.manual_seed(0)
    theirs = randomised(reference(rb, "wide_resnet", depth=28, widen_factor=10, sub_block1=True), 1)
    state = theirs.state_dict()
    ours = timm.create_model("wrn28_10", num_classes=10, sub_block1=True).eval()
    ours.load_state_dict(state, strict=True)
    plain = timm.create_model("wrn28_10", num_classes=10).eval()
    plain.load_state_dict({k: v for k, v in state.items() if not k.startswith("sub_block1.")}, strict=True)
    with torch.no_grad():
        expected = theirs(X)
        assert torch.equal(ours(X), expected) and torch.equal(plain(X), expected)


@pytest.mark.parametrize("name, kwargs, rb_kwargs", [
    ("wrn34_20", {}, {"depth": 34, "widen_factor": 20}),  # Rice2020Overfitting's layout
    ("wrn70_16", {}, {"depth": 70, "width": 16}),  # Gowal2020Uncovering_70_16
])
def test_giant_loads_and_matches(rb, name: str, kwargs: dict, rb_kwargs: dict) -> None:
    """Once each, batch 2 at 32x32: RobustBench's model for real, fastpart's on its tensors (module docstring).
    Normalisation is applied outside fastpart's model here; inside, it is checked on the narrow variants."""
    kind = "wide_resnet" if name.startswith("wrn34") else "dm_wide_resnet"
    torch.manual_seed(0)
    theirs = randomised(reference(rb, kind, **rb_kwargs), 2)
    with torch.device("meta"):
        ours = timm.create_model(name, num_classes=10, **kwargs)
    ours.load_state_dict(theirs.state_dict(), strict=True, assign=True)
    ours.eval()
    assert not any(t.is_meta for t in [*ours.parameters(), *ours.buffers()])
    x = X if kind == "wide_resnet" else normalised(X, CIFAR10_MEAN, CIFAR10_STD)  # DMWideResNet normalises
    with torch.no_grad():
        assert_same_logits(ours(x), theirs(X), swish=kind == "dm_wide_resnet")


NARROW = [  # (fastpart name and kwargs, RobustBench kind and kwargs): same classes, few channels, every variant
    ("wrn28_10", {"depth": 16, "widen": 2}, "wide_resnet", {"depth": 16, "widen_factor": 2}),
    ("wrn28_10", {"depth": 16, "widen": 2, "sub_block1": True, "mean": CIFAR10_MEAN, "std": CIFAR10_STD},
     "wide_resnet", {"depth": 16, "widen_factor": 2, "sub_block1": True}),
    ("wrn70_16", {"widen": 1, "mean": CIFAR10_MEAN, "std": CIFAR10_STD}, "dm_wide_resnet", {"depth": 70, "width": 1}),
    ("wrn70_16", {"depth": 28, "widen": 2, "mean": CIFAR100_MEAN, "std": CIFAR100_STD, "num_classes": 100},
     "dm_wide_resnet", {"depth": 28, "width": 2, "mean": CIFAR100_MEAN, "std": CIFAR100_STD, "num_classes": 100}),
    ("wrn70_16", {"depth": 16, "widen": 2, "mean": CIFAR10_MEAN, "std": CIFAR10_STD, "act_layer": nn.ReLU},
     "dm_wide_resnet", {"depth": 16, "width": 2, "activation_fn": nn.ReLU}),
]


@pytest.mark.parametrize("name, kwargs, kind, rb_kwargs", NARROW)
def test_narrow_variants_load_and_match(rb, name: str, kwargs: dict, kind: str, rb_kwargs: dict) -> None:
    """Built the ordinary way (CPU, own init), normalisation inside the model where the reference has one."""
    torch.manual_seed(0)
    theirs = randomised(reference(rb, kind, **rb_kwargs), 3)
    ours = timm.create_model(name, **kwargs).eval()
    assert layout(ours) == layout(theirs)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    mean, std = kwargs.get("mean"), kwargs.get("std")
    x = normalised(X, mean, std) if kind == "wide_resnet" and mean else X  # RobustBench's WideResNet has none
    with torch.no_grad():
        assert_same_logits(ours(X), theirs(x), uses_swish(kind, rb_kwargs))


def test_dm_wide_resnet_keeps_robustbench_normalisation_out_of_the_state_dict(rb) -> None:
    theirs = reference(rb, "dm_wide_resnet", depth=16, width=1)
    ours = timm.create_model("wrn70_16", depth=16, widen=1, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    assert {name for name, _ in theirs.named_buffers()} - set(theirs.state_dict()) == {"mean", "std"}
    assert {name for name, _ in ours.named_buffers()} - set(ours.state_dict()) == {"normalize.mean", "normalize.std"}
    torch.testing.assert_close(ours.normalize.mean.flatten(), theirs.mean.flatten(), rtol=0, atol=0)
    torch.testing.assert_close(ours.normalize.std.flatten(), theirs.std.flatten(), rtol=0, atol=0)
