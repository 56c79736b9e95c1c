"""Where a conversion's source comes from: ``--source`` (a file or an extracted folder, checked against
``--checksum``), ``--download`` (the official files, or ``--mirror``, each verified and stored atomically in
``<out>/downloads/``), or a copy already in ``<out>/downloads/``; otherwise one line that says which file to
obtain and where to put it. ``fingerprint`` identifies a source (file or folder) for the reuse check;
``is_official`` says whether it is byte-identical to the official file.
"""

from __future__ import annotations

import hashlib
import urllib.request
from pathlib import Path

from tqdm import tqdm

from fastpart.atomic import atomic_path
from fastpart.config import ConvertConfig
from fastpart.data.datasets import DatasetInfo, SourceFile, file_checksum
from fastpart.errors import DatasetError

__all__ = ["check_checksum", "download", "downloads_dir", "fingerprint", "is_official", "missing_source_message",
           "resolve_source"]



def downloads_dir(out: Path) -> Path:
    return out / "downloads"


def fingerprint(path: Path) -> str:
    """sha256 of a file, or of a folder's sorted (relative path, file sha256) list."""
    if path.is_file():
        return file_checksum(path, "sha256")
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{file_checksum(file, 'sha256')}\n".encode())
    return "sha256-tree:" + digest.hexdigest()


def check_checksum(path: Path, expected: str) -> None:
    algorithm, _, _ = expected.partition(":")
    if algorithm not in ("md5", "sha256") or not path.is_file():
        raise DatasetError(f"cannot check {expected!r} against {path}: use md5:<hex> or sha256:<hex> on a file")
    actual = file_checksum(path, algorithm)
    if actual != expected.lower():
        raise DatasetError(f"checksum mismatch for {path}: expected {expected}, got {actual}")


def download(source: SourceFile, dest_dir: Path, mirror: str | None = None) -> Path:
    """Fetch one official file (or ``<mirror>/<filename>``), verify its checksum, store it atomically."""
    url = f"{mirror.rstrip('/')}/{source.filename}" if mirror else source.url
    dest = dest_dir / source.filename
    if dest.is_file() and file_checksum(dest, source.checksum.split(":")[0]) == source.checksum:
        return dest
    try:
        with atomic_path(dest) as tmp:
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
                size = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=size, unit="B", unit_scale=True, desc=f"downloading {source.filename}") as bar:
                    while chunk := response.read(1 << 20):
                        f.write(chunk)
                        bar.update(len(chunk))
            check_checksum(tmp, source.checksum)
    except OSError as exc:
        raise DatasetError(f"download of {url} failed: {exc}") from None
    except DatasetError as exc:
        raise DatasetError(f"download of {url}: {exc}") from None
    return dest


def missing_source_message(info: DatasetInfo, out: Path) -> str:
    names = ", ".join(f"{s.filename} ({s.url})" for s in info.sources)
    return (
        f"{info.name}: no source given. Obtain {names}, put it in {downloads_dir(out)}/ "
        f"or pass --source PATH (or --download where a network exists)"
    )


def resolve_source(info: DatasetInfo, cfg: ConvertConfig) -> Path | None:
    """The local file or folder to read, fetching it first when asked to."""
    if info.generated:
        if cfg.source is not None:
            raise DatasetError(f"{info.name} is generated; it takes no --source")
        return None
    if cfg.source is None and not info.sources:
        raise DatasetError(f"{info.name} needs --source FOLDER_OR_ARCHIVE")
    if cfg.source is not None:
        source = Path(cfg.source)
        if not source.exists():
            raise DatasetError(f"source not found: {source}")
        if not (source.is_file() or source.is_dir()):  # a FIFO or a device would block or never end
            raise DatasetError(f"source is neither a regular file nor a folder: {source}")
        if cfg.checksum:
            check_checksum(source, cfg.checksum)
        return source
    local = downloads_dir(Path(cfg.out))
    if cfg.download:
        paths = [download(s, local, cfg.mirror) for s in info.sources]
        return paths[0] if len(paths) == 1 else local
    if all((local / s.filename).is_file() for s in info.sources):
        return local / info.sources[0].filename if len(info.sources) == 1 else local
    raise DatasetError(missing_source_message(info, Path(cfg.out)))


def is_official(info: DatasetInfo, source: Path | None) -> bool | None:
    """Whether a source file is byte-identical to the official one; None where that cannot be told."""
    official = {s.filename: s.checksum for s in info.sources}
    if source is None or not source.is_file() or source.name not in official:
        return None
    expected = official[source.name]
    return file_checksum(source, expected.split(":")[0]) == expected
