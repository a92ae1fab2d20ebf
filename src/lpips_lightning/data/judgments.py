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
          votes         uint16 (N,)          optional
          names         str (N,)             optional
      mos/<split>/<subset>/           attrs: kind = "mos", source, higher_is_better (True: MOS, False: DMOS)
          ref, dist     uint8 (N, 3, H, W)   the reference and the distorted image
          mos           float32 (N,)         the opinion score, finite, in the data set's own unit
          std           float32 (N,)         optional: the scores' standard deviation, >= 0
          names         str (N,)             optional

Groups of kinds this file does not list are left alone: files written before MOS groups open unchanged.

Files are written to a temporary name beside the target and renamed when complete
(`outputs.atomic_output`, the one place that knows how outputs are written).
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from ..errors import JudgmentsError
from ..outputs import atomic_output

FORMAT = "lpips-lightning/judgments"
FORMAT_VERSION = 1
KINDS = {"2afc": ("ref", "p0", "p1"), "jnd": ("p0", "p1"), "mos": ("ref", "dist")}
TARGET = {"2afc": "judge", "jnd": "same", "mos": "mos"}
GROUP_RE = re.compile(r"^(2afc|jnd|mos)/[A-Za-z0-9_.\-]+/[A-Za-z0-9_.\-]+$")
GROUP_FORMS = "2afc/<split>/<subset>, jnd/<split>/<subset> or mos/<split>/<subset>"
MIN_MOS_ITEMS = 3  # fewer scores have no rank correlation


def unscoreable(scores) -> str | None:
    """Why a MOS group's `scores` cannot be scored by rank correlation (too few, or all equal), or None."""
    if len(scores) < MIN_MOS_ITEMS:
        return f"{len(scores)} score(s); a rank correlation needs at least {MIN_MOS_ITEMS}"
    if min(scores) == max(scores):
        return f"every mos is {scores[0]}: scores that never differ rank nothing"
    return None


def image_keys(kind: str) -> tuple[str, ...]:
    """The image datasets of a group of this kind: ``ref, p0, p1``, ``p0, p1`` or ``ref, dist``."""
    return KINDS[kind]


def kind_of(group: str) -> str:
    """``2afc``, ``jnd`` or ``mos``, from a group path such as ``2afc/val/cnn``."""
    return group.split("/", 1)[0]


def check_group_name(group: str) -> str:
    """Return `group` if it reads ``2afc|jnd|mos/<split>/<subset>``, else raise `JudgmentsError`."""
    if not GROUP_RE.match(group):
        raise JudgmentsError(f"group name {group!r} must read {GROUP_FORMS}")
    return group


class Writer:
    """Writes groups into an open file; obtained from `write`."""

    def __init__(self, file: h5py.File) -> None:
        self.file = file

    def create_group(
        self,
        group: str,
        n: int,
        size: tuple[int, int],
        source: str = "",
        votes: bool = False,
        names: bool = False,
        std: bool = False,
        higher_is_better: bool = True,
    ) -> h5py.Group:
        """Create an empty group of `n` items of `size` (H, W), to be filled with `fill`.

        MOS groups only: `std` adds the scores' standard deviations; `higher_is_better` is False for DMOS.
        """
        kind = kind_of(check_group_name(group))
        if kind != "mos" and std:
            raise JudgmentsError(f"group {group}: std belongs to MOS groups only")
        g = self.file.create_group(group)
        g.attrs["kind"] = kind
        g.attrs["source"] = str(source)
        if kind == "mos":
            g.attrs["higher_is_better"] = bool(higher_is_better)
        h, w = size
        for key in image_keys(kind):
            # uncompressed, one sample per chunk: random single-sample reads stay fast
            g.create_dataset(key, shape=(n, 3, h, w), dtype=np.uint8, chunks=(1, 3, h, w) if n else None)
        g.create_dataset(TARGET[kind], shape=(n,), dtype=np.float32)
        if votes:
            g.create_dataset("votes", shape=(n,), dtype=np.uint16)
        if std:
            g.create_dataset("std", shape=(n,), dtype=np.float32)
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
    try:
        mode = path.stat().st_mode
    except OSError:
        raise JudgmentsError(f"{path}: no such judgments file (make one with `lpips-lightning pack`)") from None
    if stat.S_ISDIR(mode):
        raise JudgmentsError(f"{path}: is a folder, not a judgments file")
    if not stat.S_ISREG(mode):  # a pipe would block the open forever
        raise JudgmentsError(f"{path}: not a regular file (a device, pipe or socket), not a judgments file")
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
    fmt, raw = as_text(attr_of(f, "format")), attr_of(f, "format_version")
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
            f"{path}: judgments format version {version if version is not None else shown(raw)}, "
            f"this lpips-lightning reads version {FORMAT_VERSION}"
        )
    return f


def shown(value) -> str:
    """An attribute's value as a message shows it: a number plainly, text quoted."""
    if isinstance(value, (np.generic, np.ndarray)):
        value = value.tolist()
    return repr(value) if isinstance(value, (str, bytes)) else str(value)


def attr_of(obj, name: str):
    """An attribute, or None when it is missing or of a type h5py cannot read."""
    try:
        return obj.attrs.get(name)
    except Exception:
        return None


def as_text(value) -> str | None:
    """An attribute as text: h5py returns variable-length strings as str, fixed-length ones as bytes."""
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def what_is(obj) -> str:
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
                f"{f.filename}: {kind} is {what_is(top)}, expected a group holding {kind}/<split>/<subset>"
            )
        for split in sorted(top):
            g = top.get(split)
            if not isinstance(g, h5py.Group):
                raise JudgmentsError(
                    f"{f.filename}: {kind}/{split} is {what_is(g)}, expected a group holding {kind}/{split}/<subset>"
                )
            for subset in sorted(g):
                sub = g.get(subset)
                if not isinstance(sub, h5py.Group):
                    raise JudgmentsError(
                        f"{f.filename}: group {kind}/{split}/{subset} is {what_is(sub)}, expected a group of datasets"
                    )
                found[f"{kind}/{split}/{subset}"] = kind
    return found


def higher_is_better(f: h5py.File, group: str) -> bool:
    """Whether a higher score of MOS group `group` means better quality (MOS) rather than worse (DMOS)."""
    return bool(f[group].attrs["higher_is_better"])


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
