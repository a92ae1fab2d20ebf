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

Files are written to a temporary name beside the target and renamed when complete
(`outputs.atomic_output`, the one place that knows how outputs are written).
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from fnmatch import fnmatchcase
from pathlib import Path

import h5py
import numpy as np

from ..errors import JudgmentsError
from ..outputs import atomic_output

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
def write(
    path: str | os.PathLike,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike] = (),
    before_rename: Callable[[], None] | None = None,
    checked: bool = False,
) -> Iterator[Writer]:
    """Create a judgments file atomically: a temporary name beside `path`, renamed on success.

    The target is checked first (`outputs.check_output`: a folder, a missing or read-only
    folder, an existing file without `overwrite`, one of `inputs`), and temporary files left by
    a killed run are removed. On any error (or Ctrl-C) the temporary file is removed and `path`
    is left as it was; an `OSError` while writing (disk full) becomes one `OutputError` line.
    `before_rename` runs when the file is complete and closed; raising there (a pending
    Ctrl-C) keeps `path` as it was. `checked`: the caller checked the target already
    (`outputs.atomic_output`).
    """
    with atomic_output(path, overwrite, inputs, what="judgments file", checked=checked) as tmp:
        try:
            # no chunk cache: a failed write (disk full) raises in `fill`, not later in a destructor
            # (where h5py prints it as ignored, and the interpreter may crash on exit)
            f = h5py.File(tmp, "w", rdcc_nbytes=0)
        except OSError as err:
            raise _os_error(err) from None
        try:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            yield Writer(f)
        except BaseException as err:
            _close_quietly(f)
            if isinstance(err, (OSError, RuntimeError)) and _errno(err):
                raise _os_error(err) from None
            raise
        try:
            f.close()
        except (OSError, RuntimeError) as err:
            raise _os_error(err) from None
        if before_rename is not None:
            before_rename()


def _errno(err: BaseException) -> int | None:
    """The errno of an HDF5 failure: h5py buries it in a long message (``errno = 28``)."""
    m = re.search(r"errno = (\d+)", str(err))
    return int(m.group(1)) if m else getattr(err, "errno", None)


def _os_error(err: BaseException) -> OSError:
    """An HDF5 write or close failure as a plain OSError, e.g. ``[Errno 28] No space left on device``."""
    code = _errno(err) or errno.EIO
    return OSError(code, os.strerror(code))


def _close_quietly(f: h5py.File) -> None:
    try:
        f.close()
    except Exception:  # the write already failed: that error is the one to report
        pass


def open_file(path: str | os.PathLike) -> h5py.File:
    """Open a judgments file for reading, checking that it is one, of a version this code reads."""
    path = Path(path)
    if not path.exists():
        raise JudgmentsError(f"{path}: no such judgments file (make one with `lpips-lightning pack`)")
    if path.is_dir():
        raise JudgmentsError(f"{path}: is a folder, not a judgments file")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        text = str(err)
        if "signature" in text:
            reason = "not an HDF5 file"
        elif isinstance(err, PermissionError) or "ermission denied" in text:
            reason = "permission denied"
        elif "unable to lock" in text:
            reason = "locked by another process that is writing it"
        else:
            reason = "truncated or damaged"
        raise JudgmentsError(f"{path}: not a readable judgments file: {reason}") from None
    fmt, raw = _text(_attr(f, "format")), _attr(f, "format_version")
    try:
        version = int(raw) if raw is not None and np.ndim(raw) == 0 and float(raw) == int(raw) else None
    except (TypeError, ValueError, OverflowError):  # not a whole number
        version = None
    if fmt != FORMAT:
        f.close()
        raise JudgmentsError(f"{path}: not a judgments file (HDF5 without format attribute {FORMAT!r})")
    if version != FORMAT_VERSION:
        f.close()
        raise JudgmentsError(
            f"{path}: judgments format version {version if version is not None else _shown(raw)}, "
            f"this lpips-lightning reads version {FORMAT_VERSION}"
        )
    return f


def _shown(value) -> str:
    """An attribute's value as a message shows it: a number plainly, text quoted."""
    if isinstance(value, (np.generic, np.ndarray)):
        value = value.tolist()
    return repr(value) if isinstance(value, (str, bytes)) else str(value)


def _attr(obj, name: str):
    """An attribute, or None when it is missing or of a type h5py cannot read."""
    try:
        return obj.attrs.get(name)
    except Exception:
        return None


def _text(value) -> str | None:
    """An attribute as text: h5py returns variable-length strings as str, fixed-length ones as bytes."""
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def _what(obj) -> str:
    if obj is None:
        return "a broken link"
    if isinstance(obj, h5py.Dataset):
        return "a dataset"
    return "a group" if isinstance(obj, h5py.Group) else "neither a group nor a dataset"


def groups(f: h5py.File) -> dict[str, str]:
    """Every group in an open file: ``{"2afc/val/cnn": "2afc", ...}`` in sorted order.

    Raises `JudgmentsError` where the tree is not ``<kind>/<split>/<subset>`` groups (a dataset
    or a broken link where a group belongs), naming the file and the path.
    """
    found: dict[str, str] = {}
    for kind in KINDS:
        if kind not in f:
            continue
        top = f.get(kind)
        if not isinstance(top, h5py.Group):
            raise JudgmentsError(
                f"{f.filename}: {kind} is {_what(top)}, expected a group holding {kind}/<split>/<subset>"
            )
        for split in sorted(top):
            g = top.get(split)
            if not isinstance(g, h5py.Group):
                raise JudgmentsError(
                    f"{f.filename}: {kind}/{split} is {_what(g)}, expected a group holding {kind}/{split}/<subset>"
                )
            for subset in sorted(g):
                sub = g.get(subset)
                if not isinstance(sub, h5py.Group):
                    raise JudgmentsError(
                        f"{f.filename}: group {kind}/{split}/{subset} is {_what(sub)}, expected a group of datasets"
                    )
                found[f"{kind}/{split}/{subset}"] = kind
    return found


def validate_group(f: h5py.File, group: str) -> int:
    """Check one group: names, dtypes, shapes, lengths and judgment values; return its number of items.

    Every problem is one `JudgmentsError` naming the file and the group: a missing group or
    dataset, a dataset where a group belongs, a kind attribute that does not match the path,
    images that are not uint8 (N, 3, H, W) of one size, a judgment column that is not float32 (N,),
    judgments that are NaN or outside [0, 1], optional columns of another length, no items.
    """
    where = f"{f.filename}: group {group}"
    if not GROUP_RE.match(group):
        raise JudgmentsError(f"{where}: the name must read 2afc/<split>/<subset> or jnd/<split>/<subset>")
    kind = kind_of(group)
    parts = group.split("/")
    for depth in range(1, 4):
        path = "/".join(parts[:depth])
        obj = f.get(path)
        if obj is None and path not in f:
            raise JudgmentsError(f"{where}: no such group in the file")
        if not isinstance(obj, h5py.Group):
            raise JudgmentsError(f"{where}: {path} is {_what(obj)}, not a group")
    g = f[group]
    attr = _text(_attr(g, "kind"))
    if attr != kind:
        found = "no kind attribute" if attr is None else f"kind attribute {attr!r}"
        raise JudgmentsError(f"{where}: {found}, expected kind = {kind!r}")
    target = TARGET[kind]
    missing = [k for k in (*image_keys(kind), target) if k not in g]
    if missing:
        raise JudgmentsError(f"{where} lacks dataset(s) {', '.join(missing)}")
    for key in (*image_keys(kind), target):
        if not isinstance(g.get(key), h5py.Dataset):
            raise JudgmentsError(f"{where}: {key} is {_what(g.get(key))}, expected a dataset")
    t = g[target]
    if t.dtype != np.dtype(np.float32) or t.ndim != 1:
        raise JudgmentsError(f"{where}: {target} must be float32 (N,), found {t.dtype} {t.shape}")
    n = t.shape[0]
    if n == 0:
        raise JudgmentsError(f"{where}: no items (the {target} column is empty)")
    for key in (*image_keys(kind), target, *(k for k in ("votes", "names") if isinstance(g.get(k), h5py.Dataset))):
        d = g[key]
        if d.is_virtual or d.external:
            raise JudgmentsError(
                f"{where}: {key} keeps its data in other files (an HDF5 {'virtual' if d.is_virtual else 'external'} "
                "dataset), which may be missing; copy it into the file (h5repack) or pack again"
            )
    shapes = set()
    for key in image_keys(kind):
        d = g[key]
        if d.dtype != np.uint8 or d.ndim != 4 or d.shape[1] != 3 or d.shape[0] != n or 0 in d.shape[2:]:
            raise JudgmentsError(f"{where}: {key} must be uint8 (N={n}, 3, H, W), found {d.dtype} {d.shape}")
        shapes.add(d.shape[2:])
    if len(shapes) > 1:
        sizes = ", ".join(f"{k} {g[k].shape[2]}x{g[k].shape[3]}" for k in image_keys(kind))
        raise JudgmentsError(f"{where}: images of different sizes ({sizes}); all must be H x W alike")
    for key in ("votes", "names"):
        if key in g:
            d = g.get(key)
            if not isinstance(d, h5py.Dataset) or d.shape != (n,):
                found = f"{d.dtype} {d.shape}" if isinstance(d, h5py.Dataset) else _what(d)
                raise JudgmentsError(f"{where}: optional {key} must hold one entry per item (N={n}), found {found}")
            negative = d.dtype.kind == "i" and bool((read(f, group, key) < 0).any())
            if key == "votes" and (d.dtype.kind not in "iu" or negative):
                raise JudgmentsError(
                    f"{where}: optional votes must be non-negative integers, found {d.dtype}"
                    + (" with negative counts" if negative else "")
                )
            if key == "names" and d.dtype.kind not in "SUO":
                raise JudgmentsError(f"{where}: optional names must be strings, found {d.dtype}")
    values = read(f, group, target)
    bad = ~(np.isfinite(values) & (values >= 0) & (values <= 1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise JudgmentsError(
            f"{where}: {target}[{i}] = {values[i]} is not a finite number in [0, 1]"
            + (f" ({int(bad.sum()) - 1} more such values)" if bad.sum() > 1 else "")
        )
    return n


def resolve(f: h5py.File, patterns: list[str] | tuple[str, ...] | None) -> list[str]:
    """Expand group names and globs (``2afc/val/*``) against the file's groups, in order, no repeats.

    Every chosen group is validated (`validate_group`).
    """
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


def read(f: h5py.File, group: str, key: str, index=()) -> np.ndarray:
    """``f[group][key][index]``; a read that fails (a damaged chunk) is one `JudgmentsError` naming the file."""
    try:
        return f[group][key][index]
    except OSError as err:
        raise damaged(f.filename, group, key, err) from None


def damaged(path: str, group: str, key: str, err: BaseException) -> JudgmentsError:
    """The error for data that HDF5 cannot read back (a damaged or truncated chunk)."""
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    reason = reason.replace("Can't synchronously read data ", "").strip("() ") or reason
    return JudgmentsError(f"{path}: group {group}: {key} cannot be read ({reason}): the file is damaged; pack it again")
