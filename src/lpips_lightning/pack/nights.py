"""NIGHTS (DreamSim, Fu et al., 2023) as it is published: a root holding ``data.csv``, ``ref/`` and ``distort/``.

``data.csv`` has one row per triplet: ``id,left_vote,right_vote,votes,ref_path,left_path,right_path,
split,is_imagenet``; the paths are relative to the root. As DreamSim's loader does, triplets with
fewer than `MIN_VOTES` votes are left out (`min_votes` changes it; the first plan's `note` says
how many). The judgment is ``right_vote``, the share of observers preferring the right image: ref is
``ref_path``, p0 ``left_path``, p1 ``right_path``; ``votes`` is stored and ``id`` is the item's name.

=============  ==========================  ===========================
split          is_imagenet                 group
=============  ==========================  ===========================
``train``      either                      ``2afc/train/nights``
``val``        either                      ``2afc/val/nights``
``test``       true                        ``2afc/test/imagenet``
``test``       false                       ``2afc/test/no_imagenet``
=============  ==========================  ===========================

Every problem is one `PackError` naming the line (and column), found before the output is created.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import PackError
from .csv_source import MAX_VOTES, csv_float, image_path, read_csv
from .plans import GroupPlan

CSV_NAME = "data.csv"
FOLDERS = ("ref", "distort")
COLUMNS = ("id", "left_vote", "right_vote", "votes", "ref_path", "left_path", "right_path", "split", "is_imagenet")
MIN_VOTES = 6  # DreamSim's loader: `self.csv[self.csv['votes'] >= 6]`
GROUPS = {
    ("train", None): "2afc/train/nights",
    ("val", None): "2afc/val/nights",
    ("test", True): "2afc/test/imagenet",
    ("test", False): "2afc/test/no_imagenet",
}
TRUTH = {"true": True, "1": True, "false": False, "0": False}


def is_nights_root(folder: Path) -> bool:
    """Whether a folder is laid out as NIGHTS is published (it holds ``data.csv``)."""
    return (folder / CSV_NAME).is_file()


def _votes(text: str, where: str) -> int:
    """A vote count: a whole number (``6`` or ``6.0``) from 0 to `MAX_VOTES`."""
    try:
        value = csv_float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value.is_integer() and 0 <= value <= MAX_VOTES):
        raise PackError(f"{where}: column votes: {text!r} is not a whole number of votes from 0 to {MAX_VOTES}")
    return int(value)


def _share(row: dict[str, str], col: str, where: str) -> float:
    """A share of observers (``left_vote``, ``right_vote``): a number in [0, 1]."""
    try:
        value = csv_float(row[col])
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise PackError(f"{where}: column {col}: {row[col]!r} is not a share of observers in [0, 1]")
    return value


def _group(row: dict[str, str], where: str) -> str:
    split = row["split"].lower()
    if split not in ("train", "val", "test"):
        raise PackError(f"{where}: column split: {row['split']!r} is not one of train, val, test")
    imagenet = TRUTH.get(row["is_imagenet"].lower())
    if imagenet is None:
        raise PackError(f"{where}: column is_imagenet: {row['is_imagenet']!r} is not True or False")
    return GROUPS[(split, imagenet if split == "test" else None)]


def plan_nights(root: Path, min_votes: int = MIN_VOTES) -> list[GroupPlan]:
    """The 2AFC groups of a NIGHTS root (see the module docstring), in the order of `GROUPS`."""
    missing = [f + "/" for f in FOLDERS if not (root / f).is_dir()]
    if missing:
        raise PackError(
            f"{root}: holds {CSV_NAME} but no {' or '.join(missing)}: a NIGHTS root holds data.csv, ref/ and distort/"
        )
    path = root / CSV_NAME
    header, records = read_csv(path)
    absent = [c for c in COLUMNS if c not in header]
    if absent:
        raise PackError(f"{path}: missing column(s) {', '.join(absent)}; NIGHTS' data.csv has {','.join(COLUMNS)}")
    plans = {name: GroupPlan(name, str(root), votes=[], names=[]) for name in GROUPS.values()}
    seen: dict[str, int] = {}
    width, left_out = len(header), 0
    for line, fields in records:
        where = f"{path} line {line}"
        if len(fields) < width or any(fields[width:]):
            raise PackError(f"{where}: {len(fields)} fields, the header has {width}")
        row = dict(zip(header, fields))
        name = row["id"]
        if not name:
            raise PackError(f"{where}: column id is empty")
        earlier = seen.setdefault(name, line)
        if earlier != line:
            raise PackError(f"{where}: column id: {name} is listed twice (also line {earlier})")
        votes = _votes(row["votes"], where)
        _share(row, "left_vote", where)
        judge = _share(row, "right_vote", where)
        plan = plans[_group(row, where)]
        images = tuple(image_path(row[c], path, where, c) for c in ("ref_path", "left_path", "right_path"))
        if votes < min_votes:
            left_out += 1
            continue
        plan.images.append(images)
        plan.targets.append(judge)
        plan.votes.append(votes)  # type: ignore[union-attr]
        plan.names.append(name)  # type: ignore[union-attr]
    if not records:
        raise PackError(f"{path}: no rows below the header")
    kept = [p for p in plans.values() if p.n]
    if not kept:
        raise PackError(
            f"{path}: every one of its {len(records)} triplets has fewer than {min_votes} votes (--min-votes)"
        )
    if left_out:
        note = f"left out {left_out} of {len(records)} triplets with fewer than {min_votes} votes (--min-votes)"
        kept[0].note = f"{path}: {note}"
    return kept
