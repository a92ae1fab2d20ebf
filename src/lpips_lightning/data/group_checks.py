"""One judgments group checked before it is read: names, dtypes, shapes, values; globs resolved to checked groups.

Every problem is one `JudgmentsError` naming the file and the group (`validate_group`); the
layout itself is `judgments.py`'s.
"""

from __future__ import annotations

import math
from fnmatch import fnmatchcase

import h5py
import numpy as np

from ..errors import JudgmentsError
from .judgments import (
    GROUP_FORMS,
    GROUP_RE,
    TARGET,
    as_text,
    attr_of,
    groups,
    image_keys,
    kind_of,
    read,
    shown,
    unscoreable,
    what_is,
)


def validate_group(f: h5py.File, group: str) -> int:
    """Check one group: names, dtypes, shapes, lengths and judgment values; return its number of items.

    Every problem is one `JudgmentsError` naming the file and the group: a missing group or
    dataset, a dataset where a group belongs, a kind attribute that does not match the path,
    images that are not uint8 (N, 3, H, W) of one size, a judgment column that is not float32 (N,),
    judgments that are NaN or outside [0, 1], optional columns of another length, no items, data
    never written (unallocated chunks read back as zeros). MOS groups (`_validate_scores`): scores
    finite, at least three and not all equal, a boolean ``higher_is_better``, ``std`` finite and >= 0.
    """
    where = f"{f.filename}: group {group}"
    if not GROUP_RE.match(group):
        raise JudgmentsError(f"{where}: the name must read {GROUP_FORMS}")
    kind = kind_of(group)
    parts = group.split("/")
    for depth in range(1, 4):
        path = "/".join(parts[:depth])
        obj = f.get(path)
        if obj is None and path not in f:
            raise JudgmentsError(f"{where}: no such group in the file")
        if not isinstance(obj, h5py.Group):
            raise JudgmentsError(f"{where}: {path} is {what_is(obj)}, not a group")
    g = f[group]
    attr = as_text(attr_of(g, "kind"))
    if attr != kind:
        found = "no kind attribute" if attr is None else f"kind attribute {attr!r}"
        raise JudgmentsError(f"{where}: {found}, expected kind = {kind!r}")
    target = TARGET[kind]
    missing = [k for k in (*image_keys(kind), target) if k not in g]
    if missing:
        raise JudgmentsError(f"{where} lacks dataset(s) {', '.join(missing)}")
    for key in (*image_keys(kind), target):
        if not isinstance(g.get(key), h5py.Dataset):
            raise JudgmentsError(f"{where}: {key} is {what_is(g.get(key))}, expected a dataset")
    t = g[target]
    if t.dtype != np.dtype(np.float32) or t.ndim != 1:
        raise JudgmentsError(f"{where}: {target} must be float32 (N,), found {t.dtype} {t.shape}")
    n = t.shape[0]
    if n == 0:
        raise JudgmentsError(f"{where}: no items (the {target} column is empty)")
    optional = ("std", "names") if kind == "mos" else ("votes", "names")
    for key in (*image_keys(kind), target, *(k for k in optional if isinstance(g.get(k), h5py.Dataset))):
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
    for key in (*image_keys(kind), target):
        unwritten, total = _unwritten(g[key])
        if unwritten:
            raise JudgmentsError(
                f"{where}: {key} has {unwritten} of its {total} chunk(s) never written (HDF5 would read them as "
                "zeros): the file is incomplete; pack it again"
            )
    for key in optional:
        if key in g:
            d = g.get(key)
            if not isinstance(d, h5py.Dataset) or d.shape != (n,):
                found = f"{d.dtype} {d.shape}" if isinstance(d, h5py.Dataset) else what_is(d)
                raise JudgmentsError(f"{where}: optional {key} must hold one entry per item (N={n}), found {found}")
            negative = d.dtype.kind == "i" and bool((read(f, group, key) < 0).any())
            if key == "votes" and (d.dtype.kind not in "iu" or negative):
                raise JudgmentsError(
                    f"{where}: optional votes must be non-negative integers, found {d.dtype}"
                    + (" with negative counts" if negative else "")
                )
            if key == "names" and d.dtype.kind not in "SUO":
                raise JudgmentsError(f"{where}: optional names must be strings, found {d.dtype}")
    if kind == "mos":
        _validate_scores(f, g, group, where)
        return n
    values = read(f, group, target)
    bad = ~(np.isfinite(values) & (values >= 0) & (values <= 1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise JudgmentsError(
            f"{where}: {target}[{i}] = {values[i]} is not a finite number in [0, 1]"
            + (f" ({int(bad.sum()) - 1} more such values)" if bad.sum() > 1 else "")
        )
    return n


def _validate_scores(f: h5py.File, g: h5py.Group, group: str, where: str) -> None:
    """A MOS group's scores and their attributes (`validate_group` checked the shapes)."""
    better = attr_of(g, "higher_is_better")
    if not isinstance(better, (bool, np.bool_)):
        found = "none" if better is None else shown(better)
        raise JudgmentsError(f"{where}: attribute higher_is_better must be True (MOS) or False (DMOS), found {found}")
    scores = read(f, group, "mos")
    bad = ~np.isfinite(scores)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise JudgmentsError(f"{where}: mos[{i}] = {scores[i]} is not a finite number")
    why = unscoreable(scores)
    if why is not None:
        raise JudgmentsError(f"{where}: {why}")
    if "std" in g:
        d = g["std"]
        if d.dtype != np.dtype(np.float32):
            raise JudgmentsError(f"{where}: optional std must be float32 (N,), found {d.dtype} {d.shape}")
        std = read(f, group, "std")
        if not (np.isfinite(std) & (std >= 0)).all():
            i = int(np.flatnonzero(~(np.isfinite(std) & (std >= 0)))[0])
            raise JudgmentsError(f"{where}: std[{i}] = {std[i]} is not a finite number >= 0")


def _unwritten(d: h5py.Dataset) -> tuple[int, int]:
    """(chunks never written, chunks in all) of a dataset; a contiguous one counts as one chunk."""
    if d.size == 0:
        return 0, 0
    if d.chunks is None:  # contiguous: its storage is allocated when it is first written
        return int(d.id.get_storage_size() == 0), 1
    total = math.prod(-(-n // c) for n, c in zip(d.shape, d.chunks))
    return max(total - d.id.get_num_chunks(), 0), total


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
