"""Convert a dataset's source files into one .beton (or .npz) per split plus a manifest.json.

Layout written: ``<out>/<name>/<split>.beton`` (fields ``image`` raw uint8 RGB = lossless, ``label``,
``index`` and any extras such as ``mask`` or ``severity``) and ``<out>/<name>/manifest.json``.

A conversion is written into a folder beside its destination (``.<name>.partial``), the manifest last,
and swapped in only when complete, so whatever stops it (bad input, a full disk, Ctrl-C, a kill) the
previous conversion stays whole and nothing half-written is left: a manifest whose checksums match the
files beside it is the proof that a conversion finished, which makes conversion idempotent and
crash-safe. Decoded images wait on the disk in that folder (``imageops.spooling``), not in memory, and
statistics are taken a bounded block at a time: memory does not grow with the number or size of images.

``cifar10c`` can also be generated (``--generate-from cifar10``) from a converted CIFAR-10 test
split by ``fastpart.data.corruptions``; its manifest then says ``"generated": true, "official": false``.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
from tqdm import tqdm

import fastpart
from fastpart.atomic import atomic_folder, hold, recover_folder, write_json_atomic
from fastpart.config import ConvertConfig
from fastpart.data.corruptions import CORRUPTIONS, generate_cifar10c
from fastpart.data.datasets import DatasetInfo, ReadResult, SplitData, file_checksum, get_dataset
from fastpart.data.fetch import fingerprint, is_official, resolve_source
from fastpart.data.imageops import spooling
from fastpart.errors import DatasetError, FastpartError
from fastpart.data.splitfiles import MANIFEST, import_ffcv, load_manifest, read_split, write_beton, write_npz

FORMAT_VERSION = 1
SUFFIX = {"beton": ".beton", "npz": ".npz"}


@dataclass(frozen=True)
class ConvertResult:
    out_dir: Path
    manifest: dict[str, Any]
    reused: bool
    note: str = ""  # how --format auto chose, when it matters


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


STATS_PIXELS = 1 << 18  # pixels per block of channel_stats: 6 MiB of float64 whatever the images' size


def channel_stats(images: np.ndarray, pixels: int = STATS_PIXELS) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 NHWC images, in [0, 1] units, a bounded block of pixels at a time."""
    total = np.zeros(3)
    total_sq = np.zeros(3)
    flat = images.reshape(-1, 3) if images.flags.c_contiguous else None  # a view, in memory or mapped from the disk
    rows = max(1, pixels // max(1, images.shape[1] * images.shape[2]))  # else whole images, about as many pixels
    blocks = ((flat[i : i + pixels] for i in range(0, len(flat), pixels)) if flat is not None
              else (images[i : i + rows].reshape(-1, 3) for i in range(0, len(images), rows)))
    for part in blocks:
        block = part.astype(np.float64) / 255.0
        total += block.sum(0)
        total_sq += np.einsum("ij,ij->j", block, block)
    count = images.shape[0] * images.shape[1] * images.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


def class_counts(labels: np.ndarray, num_classes: int) -> list[int]:
    return np.bincount(labels, minlength=num_classes).tolist()


def split_manifest(split: SplitData, file: Path, num_classes: int) -> dict[str, Any]:
    return {
        "file": file.name,
        "count": int(len(split.labels)),
        "class_counts": class_counts(split.labels, num_classes),
        "extras": {k: {"dtype": str(v.dtype), "shape": list(v.shape[1:])} for k, v in split.extras.items()},
        "sha256": file_checksum(file, "sha256"),
    }


def build_manifest(
    info: DatasetInfo, name: str, data: ReadResult, files: Mapping[str, Path], source: Path | None, cfg: ConvertConfig
) -> dict[str, Any]:
    first = next(iter(data.splits.values()))
    stats_split = data.splits.get("train", first)
    mean, std = channel_stats(stats_split.images)
    n, h, w, c = first.images.shape
    return {
        "name": name,
        "dataset": cfg.dataset,
        "format": cfg.format,
        "format_version": FORMAT_VERSION,
        "fastpart_version": fastpart.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "class_names": list(data.class_names),
        "num_classes": len(data.class_names),
        "image_shape": [c, h, w],
        "mean": mean,
        "std": std,
        "stats_split": "train" if "train" in data.splits else next(iter(data.splits)),
        "splits": {s: split_manifest(data.splits[s], files[s], len(data.class_names)) for s in data.splits},
        "source": {
            "path": str(source) if source else None,
            "fingerprint": fingerprint(source) if source else None,
            "official": is_official(info, source),
        },
        "options": dict(cfg.generator_options()),
        "dropped": dict(data.dropped),  # what the source held that the splits do not (see readers)
    }


def validate(data: ReadResult) -> None:
    if not data.splits:
        raise DatasetError("the source holds no splits")
    shapes = {s.images.shape[1:] for s in data.splits.values()}
    if len(shapes) != 1:
        raise DatasetError(f"splits have different image shapes: {sorted(shapes)}")
    for name, split in data.splits.items():
        if len(split.labels) == 0:
            raise DatasetError(f"split {name!r} is empty")
        if split.labels.min() < 0 or split.labels.max() >= len(data.class_names):
            raise DatasetError(f"split {name!r} has labels outside 0..{len(data.class_names) - 1}")


# ---------------------------------------------------------------------------------------------
# Reuse
# ---------------------------------------------------------------------------------------------


def is_current(manifest: dict[str, Any] | None, out_dir: Path, source: Path | None, cfg: ConvertConfig) -> bool:
    """A finished conversion of the same source with the same settings, its files intact."""
    if not manifest or manifest.get("format_version") != FORMAT_VERSION or manifest.get("format") != cfg.format:
        return False
    if manifest.get("dataset") != cfg.dataset or manifest.get("options") != dict(cfg.generator_options()):
        return False
    if source is not None and manifest["source"].get("fingerprint") != fingerprint(source):
        return False
    for entry in manifest.get("splits", {}).values():
        file = out_dir / entry["file"]
        if not file.is_file() or file_checksum(file, "sha256") != entry["sha256"]:
            return False
    return True


# ---------------------------------------------------------------------------------------------
# Generated from another conversion (cifar10c from cifar10's test split)
# ---------------------------------------------------------------------------------------------

# dataset -> (the dataset its data is generated from, the split used)
GENERATED_FROM = {"cifar10c": ("cifar10", "test")}


@dataclass(frozen=True)
class GenerationSource:
    """The converted split a dataset is generated from."""

    path: Path
    manifest: dict[str, Any]  # the manifest of the conversion that holds it
    identity: dict[str, Any]  # what the generated data depends on, recorded as "generated_from"


def generation_source(info: DatasetInfo, cfg: ConvertConfig) -> GenerationSource:
    """Find and check the converted split that ``--generate-from`` names; nothing is read yet."""
    if info.name not in GENERATED_FROM:
        raise FastpartError(f"--generate-from applies to {', '.join(GENERATED_FROM)}, not {info.name}")
    for flag, value in (("--source", cfg.source), ("--download", cfg.download), ("--mirror", cfg.mirror),
                        ("--checksum", cfg.checksum), ("--n-train", cfg.n_train)):
        if value:
            raise FastpartError(f"{flag} does not go with --generate-from")
    if cfg.seed is not None and cfg.seed < 0:
        raise FastpartError(f"--seed must be 0 or more, got {cfg.seed}")
    if cfg.n_test is not None and cfg.n_test < 1:
        raise FastpartError(f"--n-test must be 1 or more, got {cfg.n_test}")
    expected, split = GENERATED_FROM[info.name]
    data_dir = Path(cfg.data_dir if cfg.data_dir is not None else cfg.out)
    folder = data_dir / cfg.generate_from
    redo = f"`fastpart convert {expected} --out {data_dir} --force`"
    manifest = load_manifest(folder)
    if manifest is None:
        raise DatasetError(
            f"{cfg.generate_from} is not converted in {data_dir} (no {folder / MANIFEST}): "
            f"run `fastpart convert {expected} --out {data_dir}` first, or pass --data-dir"
        )
    if manifest.get("dataset") != expected:
        raise DatasetError(f"{info.name} is generated from {expected}; {folder} holds {manifest.get('dataset')!r}")
    entry = manifest.get("splits", {}).get(split)
    if entry is None:
        raise DatasetError(f"{folder / MANIFEST} lists no {split!r} split; reconvert with {redo}")
    path = folder / entry["file"]
    if not path.is_file():
        raise DatasetError(f"{path} is missing; reconvert with {redo}")
    sha256 = file_checksum(path, "sha256")
    if sha256 != entry.get("sha256"):
        raise DatasetError(f"{path} does not match its manifest (changed or damaged); reconvert with {redo}")
    count = int(entry["count"])
    if cfg.n_test is not None and cfg.n_test > count:
        raise FastpartError(f"--n-test {cfg.n_test} is more than the {count} images of {path}")
    identity = {
        "dataset": expected,
        "name": cfg.generate_from,
        "split": split,
        "file": entry["file"],
        "sha256": sha256,
        "count": count if cfg.n_test is None else cfg.n_test,  # the first `count` images
    }
    return GenerationSource(path, manifest, identity)


@contextlib.contextmanager
def rewriting(out_dir: Path) -> Iterator[Path]:
    """A fresh folder beside ``out_dir`` for a new conversion, swapped in whole when the block succeeds
    (``atomic_folder``); decoded images wait on the disk inside it (``spooling``) and are removed before the swap."""
    with atomic_folder(out_dir) as staging:
        try:
            with spooling(staging / ".spool"):
                yield staging
        finally:
            shutil.rmtree(staging / ".spool", ignore_errors=True)


def convert_generated(info: DatasetInfo, name: str, out_dir: Path, cfg: ConvertConfig) -> ConvertResult:
    """cifar10c made by ``fastpart.data.corruptions`` from a converted cifar10 test split; one file per corruption.

    Each corruption is generated and written in turn (memory holds one split at a time); the manifest,
    written last, marks the data as generated: ``generated``, ``generated_from`` (source split and its
    sha256), ``seed``, ``approximated`` (corruptions that depart from the published definition) and
    ``official: false``.
    """
    source = generation_source(info, cfg)
    seed = 0 if cfg.seed is None else cfg.seed
    if not cfg.force:
        manifest = load_manifest(out_dir)
        if (
            is_current(manifest, out_dir, None, cfg)
            and manifest.get("generated_from") == source.identity
            and manifest.get("seed") == seed
        ):
            return ConvertResult(out_dir, manifest, reused=True)

    clean = read_split(source.path)
    count = source.identity["count"]
    images, labels = np.ascontiguousarray(clean.images[:count]), clean.labels[:count]
    class_names = list(source.manifest["class_names"])
    validate(ReadResult(splits={"source": SplitData(images, labels)}, class_names=class_names))

    with rewriting(out_dir) as staging:
        entries: dict[str, Any] = {}
        first: tuple[str, SplitData, Path] | None = None
        for corruption in tqdm(CORRUPTIONS, desc=f"generating {name}", unit="corruption", disable=None):
            split = generate_cifar10c(images, labels, seed, names=[corruption])[corruption]
            file = staging / f"{corruption}{SUFFIX[cfg.format]}"
            (write_beton if cfg.format == "beton" else write_npz)(file, split)
            entries[corruption] = split_manifest(split, file, len(class_names))
            first = first or (corruption, split, file)
        assert first is not None
        data = ReadResult(splits={first[0]: first[1]}, class_names=class_names)
        manifest = build_manifest(info, name, data, {first[0]: first[2]}, source.path, cfg)
        manifest["splits"] = entries
        manifest["source"]["official"] = False
        manifest.update(
            generated=True,
            official=False,
            generated_from=source.identity,
            seed=seed,
            approximated=[c.name for c in CORRUPTIONS.values() if c.approximated],
        )
        write_json_atomic(staging / MANIFEST, manifest)
    return ConvertResult(out_dir, manifest, reused=False)


# ---------------------------------------------------------------------------------------------
# The one entry point
# ---------------------------------------------------------------------------------------------


def convert(cfg: ConvertConfig) -> ConvertResult:
    """Convert ``cfg.dataset`` into ``<cfg.out>/<name>/``; reuse a current conversion unless forced.

    One conversion at a time per output folder: the whole conversion holds ``<cfg.out>/.<name>.lock``
    (beside the folder, which a failed conversion removes); a second one gets ``FolderBusy``."""
    info = get_dataset(cfg.dataset)
    if cfg.format not in (*SUFFIX, "auto"):
        raise FastpartError(f"unknown format {cfg.format!r}; choose from auto, {', '.join(SUFFIX)}")
    if cfg.generate_from is None and cfg.data_dir is not None:
        raise FastpartError("--data-dir goes with --generate-from only")
    name = cfg.name or info.name
    out_dir = Path(cfg.out) / name
    with hold(Path(cfg.out) / f".{name}.lock", f"the output folder {out_dir}"):
        recover_folder(out_dir)  # what a killed conversion left: the previous conversion whole again
        cfg, note = chosen_format(cfg, out_dir)
        if cfg.generate_from is not None:
            result = convert_generated(info, name, out_dir, cfg)
        else:
            result = convert_source(info, name, out_dir, cfg)
    return replace(result, note=note)


def ffcv_installed() -> bool:
    try:
        import_ffcv()
    except FastpartError:
        return False
    return True


def chosen_format(cfg: ConvertConfig, out_dir: Path) -> tuple[ConvertConfig, str]:
    """--format auto: the format of the conversion already in ``out_dir`` (so that it is reused), else .beton where
    ffcv is installed and .npz otherwise. Returns the config with its format and a note when .npz was chosen."""
    if cfg.format != "auto":
        return cfg, ""
    previous = (load_manifest(out_dir) or {}).get("format")
    if previous in SUFFIX and not cfg.force:
        return replace(cfg, format=previous), ""
    if ffcv_installed():
        return replace(cfg, format="beton"), ""
    return replace(cfg, format="npz"), "ffcv is not installed: .npz files (pip install 'fastpart[ffcv]' for .beton)"


def convert_source(info: DatasetInfo, name: str, out_dir: Path, cfg: ConvertConfig) -> ConvertResult:
    """Read the dataset's source (or generate it), validate it, then write it; the caller holds the folder."""
    source = resolve_source(info, cfg)
    if not cfg.force:
        manifest = load_manifest(out_dir)
        if is_current(manifest, out_dir, source, cfg):
            return ConvertResult(out_dir, manifest, reused=True)

    with rewriting(out_dir) as staging:  # decoded images wait on the disk there, not in memory (imageops.spooling)
        data = info.read(source, cfg.generator_options())
        validate(data)
        files = {}
        for split_name, split in data.splits.items():
            files[split_name] = staging / f"{split_name}{SUFFIX[cfg.format]}"
            (write_beton if cfg.format == "beton" else write_npz)(files[split_name], split)
        manifest = build_manifest(info, name, data, files, source, cfg)
        write_json_atomic(staging / MANIFEST, manifest)
    return ConvertResult(out_dir, manifest, reused=False)


def dropped_text(dropped: Mapping[str, Any]) -> str:
    """What a conversion left out of its source, in words ("" when nothing)."""
    parts = []
    if dropped.get("alpha_channels"):
        n = dropped["alpha_channels"]
        parts.append(f"the alpha channel (transparency) of {n} image{'s' if n != 1 else ''}")
    if dropped.get("empty_class_folders"):
        folders = dropped["empty_class_folders"]
        shown = ", ".join(folders[:5]) + (f" and {len(folders) - 5} more" if len(folders) > 5 else "")
        parts.append(f"{len(folders)} class folder{'s' if len(folders) != 1 else ''} without images ({shown})")
    return "; dropped " + " and ".join(parts) if parts else ""


def summary(result: ConvertResult) -> str:
    m = result.manifest
    counts = ", ".join(f"{s} {e['count']:,}" for s, e in m["splits"].items())
    verb = "up to date" if result.reused else "converted"
    dropped = dropped_text(m.get("dropped", {}))
    shape = "x".join(map(str, m["image_shape"]))
    note = "; source is not byte-identical to the official file" if m["source"].get("official") is False else ""
    if m.get("generated_from"):
        g = m["generated_from"]
        note = f"; generated from {g['name']} {g['split']} with seed {m['seed']}, not the official files"
    note += f"; {result.note}" if result.note else ""
    return f"{m['name']}: {verb} in {result.out_dir} ({counts}; {m['num_classes']} classes; {shape}{note}{dropped})"
