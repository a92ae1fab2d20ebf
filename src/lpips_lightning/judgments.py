"""The judgments file, format v1: the one place that writes, opens and validates it.

::

    judgments.h5                      attrs: format = "lpips-lightning/judgments", format_version = 1
      2afc/<split>/<subset>/          attrs: kind = "2afc", source
          ref, p0, p1   uint8 (N, 3, H, W)   one sample per chunk, uncompressed
          judge         float32 (N,)         fraction of observers who preferred p1
          votes         uint16 (N,)          optional
          names         str (N,)             optional
      jnd/<split>/<subset>/           attrs: kind = "jnd", source
          p0, p1        uint8 (N, 3, H, W)
          same          float32 (N,)         fraction of observers who answered "same"

Files are written to a temporary name beside the target and renamed when complete.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from .errors import JudgmentsError

FORMAT = "lpips-lightning/judgments"
FORMAT_VERSION = 1
KINDS = {"2afc": ("ref", "p0", "p1"), "jnd": ("p0", "p1")}
TARGET = {"2afc": "judge", "jnd": "same"}
GROUP_RE = re.compile(r"^(2afc|jnd)/[A-Za-z0-9_.\-]+/[A-Za-z0-9_.\-]+$")


def image_keys(kind: str) -> tuple[str, ...]:
    """The image datasets of a group of this kind: ``ref, p0, p1`` or ``p0, p1``."""
    return KINDS[kind]


def kind_of(group: str) -> str:
    """``2afc`` or ``jnd``, from a group path such as ``2afc/val/cnn``."""
    return group.split("/", 1)[0]


def check_group_name(group: str) -> str:
    """Return `group` if it reads ``2afc|jnd/<split>/<subset>``, else raise `JudgmentsError`."""
    if not GROUP_RE.match(group):
        raise JudgmentsError(f"group name {group!r} must read 2afc/<split>/<subset> or jnd/<split>/<subset>")
    return group


class Writer:
    """Writes groups into an open file; obtained from `write`."""

    def __init__(self, file: h5py.File) -> None:
        self.file = file

    def create_group(
        self, group: str, n: int, size: tuple[int, int], source: str = "", votes: bool = False, names: bool = False
    ) -> h5py.Group:
        """Create an empty group of `n` items of `size` (H, W), to be filled with `fill`."""
        kind = kind_of(check_group_name(group))
        g = self.file.create_group(group)
        g.attrs["kind"] = kind
        g.attrs["source"] = str(source)
        h, w = size
        for key in image_keys(kind):
            # uncompressed, one sample per chunk: random single-sample reads stay fast
            g.create_dataset(key, shape=(n, 3, h, w), dtype=np.uint8, chunks=(1, 3, h, w) if n else None)
        g.create_dataset(TARGET[kind], shape=(n,), dtype=np.float32)
        if votes:
            g.create_dataset("votes", shape=(n,), dtype=np.uint16)
        if names:
            g.create_dataset("names", shape=(n,), dtype=h5py.string_dtype())
        return g

    @staticmethod
    def fill(g: h5py.Group, start: int, arrays: dict[str, np.ndarray]) -> None:
        """Write a block of items starting at index `start`."""
        for key, value in arrays.items():
            g[key][start : start + len(value)] = value


@contextmanager
def write(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Writer]:
    """Create a judgments file atomically: a temporary name beside `path`, renamed on success.

    On any error (or Ctrl-C) the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise JudgmentsError(f"{path} already exists; pass --overwrite to replace it")
    if not path.parent.exists():
        raise JudgmentsError(f"{path}: folder {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            yield Writer(f)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def open_file(path: str | os.PathLike) -> h5py.File:
    """Open a judgments file for reading, checking that it is one, of a version this code reads."""
    path = Path(path)
    if not path.exists():
        raise JudgmentsError(f"{path}: no such judgments file (make one with `lpips-lightning pack`)")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        reason = "not an HDF5 file" if "signature" in str(err) else "truncated or damaged"
        raise JudgmentsError(f"{path}: not a readable judgments file: {reason}") from None
    fmt = f.attrs.get("format")
    if fmt != FORMAT:
        f.close()
        raise JudgmentsError(f"{path}: not a judgments file (HDF5 without format attribute {FORMAT!r})")
    version = int(f.attrs.get("format_version", -1))
    if version != FORMAT_VERSION:
        f.close()
        raise JudgmentsError(
            f"{path}: judgments format version {version}, this lpips-lightning reads version {FORMAT_VERSION}"
        )
    return f


def groups(f: h5py.File) -> dict[str, str]:
    """Every group in an open file: ``{"2afc/val/cnn": "2afc", ...}`` in sorted order."""
    found: dict[str, str] = {}
    for kind in KINDS:
        if kind not in f:
            continue
        for split in sorted(f[kind]):
            for subset in sorted(f[kind][split]):
                found[f"{kind}/{split}/{subset}"] = kind
    return found


def validate_group(f: h5py.File, group: str) -> int:
    """Check one group's datasets (names, dtypes, shapes, lengths); return its number of items."""
    g = f[group]
    kind = kind_of(group)
    where = f"{f.filename}: group {group}"
    missing = [k for k in (*image_keys(kind), TARGET[kind]) if k not in g]
    if missing:
        raise JudgmentsError(f"{where} lacks dataset(s) {', '.join(missing)}")
    n = g[TARGET[kind]].shape[0]
    for key in image_keys(kind):
        d = g[key]
        if d.dtype != np.uint8 or d.ndim != 4 or d.shape[1] != 3 or d.shape[0] != n:
            raise JudgmentsError(f"{where}: {key} must be uint8 (N={n}, 3, H, W), found {d.dtype} {d.shape}")
    return n


def resolve(f: h5py.File, patterns: list[str] | tuple[str, ...] | None) -> list[str]:
    """Expand group names and globs (``2afc/val/*``) against the file's groups, in order, no repeats."""
    from fnmatch import fnmatchcase

    available = list(groups(f))
    chosen: list[str] = []
    for pattern in patterns or []:
        hits = [g for g in available if fnmatchcase(g, pattern)]
        if not hits:
            raise JudgmentsError(
                f"{f.filename}: no group matches {pattern!r}; the file has: {', '.join(available) or 'no groups'}"
            )
        chosen += [g for g in hits if g not in chosen]
    for g in chosen:
        validate_group(f, g)
    return chosen


def read_group(f: h5py.File, group: str) -> dict[str, np.ndarray]:
    """Read a whole group into memory: images (uint8) and the judgment column."""
    g = f[group]
    kind = kind_of(group)
    return {key: g[key][()] for key in (*image_keys(kind), TARGET[kind])}
