"""A CSV of mean opinion scores in pyiqa's meta format as MOS group plans: ``ref_name,dist_name,mos``.

Optional columns: ``std`` (the scores' standard deviation, >= 0) and ``split`` (train, val or
test: one group per split). Image paths are relative to the CSV (or absolute). The group is
``--group mos/<split>/<name>``, or, with a ``split`` column, ``mos/<split>/<name>`` per split
where ``<name>`` is --group's subset or the CSV's stem. ``lower_is_better`` marks DMOS data (LIVE,
CSIQ). Every problem is one `PackError` naming the line, found before the output is created.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..data import judgments
from ..errors import LPIPSLightningError, PackError
from .csv_source import csv_float, image_path
from .plans import GroupPlan

COLUMNS = ("ref_name", "dist_name", "mos")
SPLITS = ("train", "val", "test")


def is_mos_csv(header: list[str]) -> bool:
    """Whether a CSV header is pyiqa's MOS meta format (one of its own columns names it; missing ones are refused)."""
    return bool({"dist_name", "mos"} & set(header))


def _group_names(path: Path, group: str | None, has_split: bool) -> tuple[str | None, str]:
    """(the one group name without a split column, or None; the subset name for per-split groups)."""
    if group is not None:
        try:
            judgments.check_group_name(group)
        except LPIPSLightningError as err:
            raise PackError(f"{path}: {err}") from None
        if judgments.kind_of(group) != "mos":
            raise PackError(f"{path}: --group {group} is not a mos group, but the columns are a MOS CSV's")
    subset = group.rsplit("/", 1)[-1] if group else path.stem
    if has_split:
        return None, subset
    name = group or f"mos/test/{path.stem}"
    try:
        return judgments.check_group_name(name), subset
    except LPIPSLightningError as err:
        raise PackError(f"{path}: {err} (from the CSV's name {path.name}); pass --group") from None


def plan_mos_csv(
    path: Path, header: list[str], records: list, group: str | None = None, higher_is_better: bool = True
) -> list[GroupPlan]:
    """The MOS groups of one pyiqa-style CSV (`csv_source.read_csv`'s header and rows), in split order.

    `higher_is_better`: False for DMOS scores (a higher score means worse quality).
    """
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise PackError(f"{path}: missing column(s) {', '.join(missing)}; a MOS CSV needs {','.join(COLUMNS)}")
    has_std, has_split = "std" in header, "split" in header
    one, subset = _group_names(path, group, has_split)
    plans: dict[str, GroupPlan] = {}
    seen: dict[str, dict[str, int]] = {}
    width = len(header)
    for line, fields in records:
        where = f"{path} line {line}"
        if len(fields) != width and any(fields[width:]) or len(fields) < width:
            raise PackError(f"{where}: {len(fields)} fields, the header has {width}")
        row = dict(zip(header, fields))
        if has_split:
            split = row["split"].lower()
            if split not in SPLITS:
                raise PackError(f"{where}: split {row['split']!r} is not one of {', '.join(SPLITS)}")
            name = f"mos/{split}/{subset}"
        else:
            name = one
        plan = plans.setdefault(
            name,
            GroupPlan(name, str(path), names=[], std=[] if has_std else None, higher_is_better=higher_is_better),
        )
        images = (
            image_path(row["ref_name"], path, where, "ref_name"),
            image_path(row["dist_name"], path, where, "dist_name"),
        )
        earlier = seen.setdefault(name, {}).setdefault(row["dist_name"], line)
        if earlier != line:
            raise PackError(
                f"{where}: dist_name {row['dist_name']} is listed twice in group {name} (also line {earlier})"
            )
        try:
            score = csv_float(row["mos"])
            std = csv_float(row["std"]) if has_std else None
        except ValueError:
            cols = "mos,std" if has_std else "mos"
            raise PackError(f"{where}: bad value in {cols}: {', '.join(row[c] for c in cols.split(','))}") from None
        if not math.isfinite(score):
            raise PackError(f"{where}: mos {row['mos']} is not a finite number")
        if std is not None and not (math.isfinite(std) and std >= 0):
            raise PackError(f"{where}: std {row['std']} is not a finite number >= 0")
        plan.images.append(images)
        plan.targets.append(score)
        plan.names.append(row["dist_name"])  # type: ignore[union-attr]
        if plan.std is not None:
            plan.std.append(std)  # type: ignore[arg-type]
    if not plans:
        raise PackError(f"{path}: no rows below the header")
    for name, plan in plans.items():
        why = judgments.unscoreable(plan.targets)
        if why is not None:
            raise PackError(f"{path}: group {name}: {why}")
    return [plans[n] for n in sorted(plans, key=lambda g: SPLITS.index(g.split("/")[1]) if has_split else 0)]
