"""Where a result comes from: the package's version, the command line, and each input file with its sha256.

`provenance(...)` is the record a run folder keeps (``provenance.json``, written when a run
starts) and ``results.json`` carries; `sha256_file` hashes a file once per process (streamed,
remembered by path, size and modification time), so a checkpoint saved every epoch, or a
model scored twice, reads its weights file once.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import shlex
import sys
from collections.abc import Iterable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from .outputs import atomic_output

PROVENANCE_FILE = "provenance.json"  # in every run folder
CHUNK = 1 << 20  # bytes read at a time while hashing
VERSIONS = ("lpips-lightning", "torch", "torchvision", "pytorch-lightning", "timm")  # recorded when installed


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 (hex) of a file's bytes, read in 1 MiB chunks; remembered while the file is unchanged.

    Unchanged: the same inode, size and modification and change times (a file replaced or
    rewritten is hashed again).
    """
    path = Path(path).resolve()
    stat = path.stat()
    return _sha256(str(path), (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns))


@functools.lru_cache(maxsize=128)
def _sha256(path: str, stamp: tuple[int, int, int, int]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_entry(value: str | os.PathLike) -> dict:
    """A file as provenance: its absolute path, size and sha256; anything else (a built-in name) as it was given."""
    path = Path(value)
    if not path.is_file():
        return {"name": str(value)}
    return {"path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def versions() -> dict[str, str]:
    """The installed versions of this package and the libraries its numbers depend on (Python's too)."""
    found = {"python": platform.python_version()}
    for name in VERSIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def provenance(
    data: str | os.PathLike | None = None,
    models: Iterable[str | os.PathLike] = (),
    argv: list[str] | None = None,
) -> dict:
    """The record of where a result comes from: versions, the command line, the data file and each model file.

    `argv`: the command line (default: this process's, ``sys.argv``); `data`: the judgments file;
    `models`: model files (or built-in names), each hashed once (`sha256_file`).
    """
    argv = list(sys.argv if argv is None else argv)
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "command": shlex.join(argv),
        "argv": argv,
        "cwd": os.getcwd(),
        "data": None if data is None else file_entry(data),
        "models": [file_entry(m) for m in models],
    }


def write_provenance(path: str | os.PathLike, record: dict) -> Path:
    """Write `record` as indented JSON to `path` (beside it first, then renamed; an existing file is replaced)."""
    with atomic_output(path, overwrite=True, what="provenance record") as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    return Path(path)
