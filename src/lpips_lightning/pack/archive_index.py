"""Pass 1 over BAPPS archives: every member indexed, placed in the layout and paired by stem into group plans.

`plan_archives` reads each archive once to its end (`archives.archive_members`: headers only,
nothing extracted), so that a damaged archive, a wrong layout and bad pairing are refused
before the output is created. Members are placed as in a folder tree
(``train/<subset>/{ref,p0,p1,judge}/``, ``val/<subset>/...``, ``jnd/<split>/<subset>/{p0,p1,same}/``
or ``2afc/<split>/...``; a leading ``./`` or ``dataset/`` skipped; anything else ignored) and
paired by stem exactly as files are (`bapps.paired_stems`). Where each member's data lies in
the tar stream is kept in the `Archive`'s flat arrays (about 35 bytes a member; some 130 at
the peak, while pairing: 80 MB for BAPPS's 600,000 members), for pass 2.
"""

from __future__ import annotations

import os
import sys
import tarfile
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from ..data import judgments
from ..errors import PackError
from .archives import Archive, archive_members, check_member, shown_name
from .bapps import FOLDERS, check_subset, extensions, paired_stems, stem_suffix
from .plans import GroupPlan


def _locate(name: str) -> tuple[str, str, list[str], list[str]] | None:
    """Where an archive member belongs: (kind, split, the path below the split, the path down to it).

    ``train/<subset>/...`` and ``val/<subset>/...`` (the 2AFC archives) are 2afc's;
    ``jnd/<split>/...`` (the JND archive) and ``2afc/<split>/...`` as in the unpacked tree; a
    leading ``./`` or ``dataset/`` is skipped. None: outside the BAPPS layout.
    """
    parts = [p for p in name.split("/") if p not in ("", ".")]
    skip = 1 if parts[:1] == ["dataset"] else 0
    top = parts[skip : skip + 1]
    if top in (["train"], ["val"]):
        return "2afc", top[0], parts[skip + 1 :], parts[: skip + 1]
    if top and top[0] in FOLDERS and len(parts) > skip + 1:
        return top[0], parts[skip + 1], parts[skip + 2 :], parts[: skip + 2]
    return None


@dataclass
class _Subset:
    """A subset found in an archive: its folders, each ``stem -> the member's index in the archive``."""

    group: str
    kind: str
    archive: Archive
    prefix: str  # its path in the archive, e.g. train/cnn
    folders: dict[str, dict[str, int]] = field(default_factory=dict)


def _index_member(subsets: dict[str, _Subset], archive: Archive, info: tarfile.TarInfo) -> None:
    """Note where one member belongs, as a folder listing would (the rest of the archive is ignored)."""
    check_member(archive.path, info)
    place = _locate(info.name)
    if place is None:
        return
    kind, split, rest, head = place
    if not rest or (len(rest) == 1 and not info.isdir()):
        return  # the split's folder, or a file beside its subsets
    group = f"{kind}/{split}/{rest[0]}"
    sub = subsets.get(group)
    if sub is None:
        sub = subsets[group] = _Subset(group, kind, archive, "/".join([*head, rest[0]]))
    elif sub.archive is not archive:
        raise PackError(
            f"{archive.path}: {sub.prefix} ({group}) is in {sub.archive.path} too; keep one of the two archives"
        )
    if len(rest) < 2 or rest[1] not in FOLDERS[kind]:
        return
    folder = rest[1]
    if len(rest) == 2:
        if info.isdir():
            sub.folders.setdefault(folder, {})
        return
    files = sub.folders.setdefault(folder, {})
    if len(rest) > 3 or not info.isreg():
        return  # a sub-folder or what is in it
    filename = rest[2]
    stem, suffix = stem_suffix(filename)
    if suffix.lower() not in extensions(folder):
        return
    stem = sys.intern(stem)  # BAPPS stems repeat in every folder and subset
    if stem in files:
        first = stem + archive.suffixes[files[stem]]
        if first == filename:
            raise PackError(f"{archive.path}: member {shown_name(info.name)} appears twice in the archive")
        first, second = sorted((first, filename))
        raise PackError(f"{archive.path}: {sub.prefix}/{folder}: two files with stem {stem!r} ({first}, {second})")
    files[stem] = len(archive.offsets)
    archive.offsets.append(info.offset_data)
    archive.sizes.append(info.size)
    archive.suffixes.append(sys.intern(suffix))


def plan_archives(archives: Sequence[str | os.PathLike], progress: bool = False) -> list[GroupPlan]:
    """Every subset inside the BAPPS archives, its members paired by stem, as `sources.plan_tree` pairs files.

    Pass 1: reads each archive once to its end (streaming, headers only, nothing extracted), so
    that every problem of layout and pairing, and a damaged archive, is found before anything is
    written; notes where each member's data lies for pass 2 (`member_name`, `pack.pack`).
    """
    subsets: dict[str, _Subset] = {}
    indexed = []
    for a in archives:
        path = Path(a)
        try:
            st = path.stat()
        except OSError as err:
            raise PackError(f"{path}: cannot read ({err.strerror or type(err).__name__})") from None
        indexed.append(Archive(path, (st.st_size, st.st_mtime_ns)))
    total = sum(a.stamp[0] for a in indexed)
    with tqdm(total=total, unit="B", unit_scale=True, disable=not progress, desc="index", leave=False) as bar:
        for archive in indexed:
            bar.set_description(f"index {archive.path.name}")
            first = None
            for info in archive_members(archive.path, bar):
                first = first or info.name
                _index_member(subsets, archive, info)
            if not any(sub.archive is archive for sub in subsets.values()):
                found = f"its first member is {shown_name(first)}" if first else "it holds no members"
                raise PackError(
                    f"{archive.path}: no BAPPS subsets inside (expected train/<subset>/..., val/<subset>/... or "
                    f"jnd/<split>/<subset>/...; {found})"
                )
    plans = []
    order = list(FOLDERS)
    for archive in indexed:
        n = len(archive.offsets)
        archive.group, archive.folder, archive.row = array("i", [0]) * n, array("b", [0]) * n, array("i", [0]) * n
    for group in sorted(subsets, key=lambda g: (order.index(judgments.kind_of(g)), *g.split("/")[1:])):
        sub = subsets[group]
        where = f"{sub.archive.path}: {sub.prefix}"
        check_subset(where, group, sub.folders)
        stems = paired_stems(where, sub.kind, sub.folders, lambda f, where=where: f"{where}/{f}")
        rows = {stem: row for row, stem in enumerate(stems)}
        archive = sub.archive
        for f, files in sub.folders.items():
            fi = FOLDERS[sub.kind].index(f)
            for stem, k in files.items():
                archive.group[k], archive.folder[k], archive.row[k] = len(plans), fi, rows[stem]
        archive.prefixes[len(plans)] = sub.prefix
        plans.append(GroupPlan(group, f"{archive.path}:{sub.prefix}", names=stems, archive=archive))
        sub.folders.clear()
    return plans


def member_name(plans: list[GroupPlan], archive: Archive, k: int) -> str:
    """The path in its archive of indexed member `k` (for messages), from the index alone."""
    i = archive.group[k]
    folder = FOLDERS[judgments.kind_of(plans[i].group)][archive.folder[k]]
    return f"{archive.prefixes[i]}/{folder}/{plans[i].names[archive.row[k]]}{archive.suffixes[k]}"
