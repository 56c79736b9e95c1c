"""Known datasets: classes, image shapes, official sources, how to read them, and the paper's settings.

``DATASETS`` maps each name to its ``DatasetInfo``; ``get_dataset`` looks one up. The readers of the
file formats live in ``readers.py``; ``convert.py`` writes what they return to .beton files.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastpart.data.arrays import ReadResult, SplitData
from fastpart.data.readers import (
    CIFAR10_CLASS_NAMES,
    CIFAR10C_CORRUPTIONS,
    Reader,
    read_cifar10,
    read_cifar10c,
    read_imagefolder,
    read_shapes,
    read_svhn,
    read_tinyimagenet,
)
from fastpart.data.sources import file_checksum
from fastpart.errors import DatasetError

__all__ = [
    "CIFAR10_CLASS_NAMES", "CIFAR10C_CORRUPTIONS", "DATASETS", "DatasetInfo", "ReadResult", "SourceFile",
    "SplitData", "TrainDefaults", "file_checksum", "get_dataset",
]


@dataclass(frozen=True)
class SourceFile:
    """One official file of a dataset."""

    filename: str  # official file name, e.g. "cifar-10-python.tar.gz"
    url: str  # official download address
    checksum: str  # "md5:<hex>" or "sha256:<hex>" of the official file


@dataclass(frozen=True)
class TrainDefaults:
    """The paper's training settings for a dataset."""

    model: str
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    alpha: float  # PGD step, in [0, 1] pixel units
    augment: bool  # random crop (zero pad crop_padding) + horizontal flip
    crop_padding: int = 4
    lr_schedule: str = "step"  # the paper's: lr / 10 at 75% of the epochs (fastpart.schedules)
    eps_delay: float = 0.0  # fractions of the epochs: clean training first ...
    eps_warmup: float = 0.0  # ... then the budget's linear ramp


@dataclass(frozen=True)
class DatasetInfo:
    """A known dataset: what it is, where it comes from, how to read it and how the paper trains on it."""

    name: str
    description: str  # one line for `fastpart convert --help`
    sources: tuple[SourceFile, ...]  # official files; () for generated datasets
    read: Reader  # (source file-or-folder, options) -> arrays
    defaults: TrainDefaults | None  # None for imagefolder/cifar10c
    num_classes: int | None = None  # None where read from the source (imagefolder)
    image_size: int | None = None
    generated: bool = False  # made by code (shapes): takes no source


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------

_CIFAR10_DEFAULTS = TrainDefaults(
    model="resnet18_cifar", epochs=80, batch_size=128, lr=0.01, weight_decay=2e-4, alpha=2 / 255, augment=True
)

DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            name="cifar10",
            description="CIFAR-10: cifar-10-python.tar.gz (or extracted), or a train|test/<class>/<image> tree/archive",
            sources=(
                SourceFile(
                    "cifar-10-python.tar.gz",
                    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                    "md5:c58f30108f718f92721af3b95e74349a",
                ),
            ),
            read=read_cifar10,
            defaults=_CIFAR10_DEFAULTS,
            num_classes=10,
            image_size=32,
        ),
        DatasetInfo(
            name="svhn",
            description="SVHN (cropped digits): folder with train_32x32.mat and test_32x32.mat",
            sources=(
                SourceFile(
                    "train_32x32.mat",
                    "http://ufldl.stanford.edu/housenumbers/train_32x32.mat",
                    "md5:e26dedcc434d2e4c54c9b2d4a06d8373",
                ),
                SourceFile(
                    "test_32x32.mat",
                    "http://ufldl.stanford.edu/housenumbers/test_32x32.mat",
                    "md5:eb5a983be6a315427106f1b164d9cef3",
                ),
            ),
            read=read_svhn,
            defaults=TrainDefaults(
                model="resnet18_cifar", epochs=80, batch_size=128, lr=0.01, weight_decay=3.5e-3, alpha=1 / 255,
                augment=False,
            ),
            num_classes=10,
            image_size=32,
        ),
        DatasetInfo(
            name="tinyimagenet",
            description="Tiny ImageNet (200 classes, 64x64): tiny-imagenet-200.zip or its extracted folder; test = val",
            sources=(
                SourceFile(
                    "tiny-imagenet-200.zip",
                    "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
                    "md5:90528d7ca1a48142e341f4ef8d21d0de",
                ),
            ),
            read=read_tinyimagenet,
            defaults=TrainDefaults(
                model="wrn34_10", epochs=80, batch_size=512, lr=0.02, weight_decay=5e-4, alpha=2 / 255, augment=True,
            ),
            num_classes=200,
            image_size=64,
        ),
        DatasetInfo(
            name="cifar10c",
            description="CIFAR-10-C (evaluation only): CIFAR-10-C.tar or its folder; one split per corruption; "
            "or --generate-from cifar10",
            sources=(
                SourceFile(
                    "CIFAR-10-C.tar",
                    "https://zenodo.org/record/2535967/files/CIFAR-10-C.tar",
                    "md5:56bf5dcef84df0e2308c6dcbcbbd8499",
                ),
            ),
            read=read_cifar10c,
            defaults=None,
            num_classes=10,
            image_size=32,
        ),
        DatasetInfo(
            name="imagefolder",
            description="Any <split>/<class>/<image> tree or .tar/.tar.gz/.tgz/.zip of one (same-size images)",
            sources=(),
            read=read_imagefolder,
            defaults=None,
        ),
        DatasetInfo(
            name="shapes",
            description="Generated offline 10-class shapes with object masks (no source; --n-train/--n-test/--seed)",
            sources=(),
            read=read_shapes,
            defaults=TrainDefaults(  # a CPU-sized demo, not a paper setting
                model="resnet18_cifar_w8", epochs=10, batch_size=32, lr=0.02, weight_decay=2e-4, alpha=2 / 255,
                augment=True, lr_schedule="onecycle", eps_delay=0.1, eps_warmup=0.2,  # leaves chance in epoch 2
            ),
            generated=True,
            num_classes=10,
            image_size=32,
        ),
    )
}


def get_dataset(name: str) -> DatasetInfo:
    """The DatasetInfo of a known dataset; an unknown name raises DatasetError listing the known ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}") from None
