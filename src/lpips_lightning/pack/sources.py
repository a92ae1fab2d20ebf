"""What a SOURCE of ``pack`` is, and its group plans: a BAPPS folder tree, BAPPS archives or a CSV.

- a folder holding ``2afc/`` or ``jnd/``: an unpacked BAPPS tree (`plan_tree`), every
  ``<kind>/<split>/<subset>`` folder a group, its files paired by stem;
- a folder holding any of `bapps.bapps_archives`, or one ``.tar.gz``/``.tgz``/``.tar``: BAPPS
  archives, read once to their end here (`archive_index.plan_archives`);
- a folder holding ``data.csv``: NIGHTS as published (`nights.plan_nights`);
- a ``.csv`` file: a MOS CSV in pyiqa's meta format (``ref_name,dist_name,mos``: `mos_csv.plan_mos_csv`),
  else one 2AFC or JND group (`csv_source.plan_csv`).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import PackError
from .archive_index import plan_archives
from .archives import ARCHIVE_SUFFIXES
from .bapps import FOLDERS, bapps_archives, check_subset, extensions, paired_stems
from .csv_source import plan_csv, read_csv
from .mos_csv import is_mos_csv, plan_mos_csv
from .nights import MIN_VOTES, is_nights_root, plan_nights
from .plans import GroupPlan


def _stems(folder: Path, suffixes: set[str]) -> dict[str, Path]:
    """The files of one subset folder by stem (those with one of `suffixes`); a stem twice is refused."""
    found: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.suffix.lower() in suffixes and entry.is_symlink() and not entry.exists():
            raise PackError(f"{entry}: a link to {os.readlink(entry)}, which does not exist")
        if entry.suffix.lower() in suffixes and entry.is_file():
            if entry.stem in found:
                raise PackError(
                    f"{folder}: two files with stem {entry.stem!r} ({found[entry.stem].name}, {entry.name})"
                )
            found[entry.stem] = entry
    return found


def plan_tree(root: Path) -> list[GroupPlan]:
    """Every ``<kind>/<split>/<subset>`` folder under a BAPPS root, its files paired by stem."""
    plans = []
    for kind, folders in FOLDERS.items():
        if not (root / kind).is_dir():
            continue
        for split in sorted(p for p in (root / kind).iterdir() if p.is_dir()):
            for subset in sorted(p for p in split.iterdir() if p.is_dir()):
                group = f"{kind}/{split.name}/{subset.name}"
                check_subset(str(subset), group, [f for f in folders if (subset / f).is_dir()])
                per_folder = {f: _stems(subset / f, extensions(f)) for f in folders}
                stems = paired_stems(str(subset), kind, per_folder, lambda f, subset=subset: str(subset / f))
                plan = GroupPlan(group, str(subset), names=stems)
                image_folders, target_folder = folders[:-1], folders[-1]
                for s in stems:
                    plan.images.append(tuple(str(per_folder[f][s]) for f in image_folders))
                    plan.targets.append(str(per_folder[target_folder][s]))
                plans.append(plan)
    if not plans:
        raise PackError(f"{root}: no subsets found (expected 2afc/<split>/<subset>/ or jnd/<split>/<subset>/)")
    return plans


def named_archives(source: Path) -> list[Path]:
    """The archives SOURCE names before any is read: itself (an archive file), or those its folder holds."""
    try:
        if source.name.lower().endswith(ARCHIVE_SUFFIXES) and source.is_file():
            return [source]
        if source.is_dir() and not any((source / k).is_dir() for k in FOLDERS):
            return [source / name for name in bapps_archives() if (source / name).is_file()]
    except OSError:
        pass
    return []


def _no_group(source: Path, group: str | None) -> None:
    if group:
        raise PackError(f"{source}: --group applies to a CSV source; BAPPS and NIGHTS subsets keep their own names")


def _only(source: Path, given: dict[str, object], here: str | None = None) -> None:
    """Refuse the options of `given` that are set (not None or False) but for another source than `here`."""
    applies = {
        "lower_is_better": "a MOS CSV (ref_name,dist_name,mos)",
        "min_votes": "a NIGHTS root (a folder holding data.csv)",
    }
    for name, value in given.items():
        if value is not None and value is not False and name != here:
            raise PackError(f"{source}: --{name.replace('_', '-')} applies to {applies[name]} only")


def plan_source(
    source: str | os.PathLike,
    group: str | None = None,
    progress: bool = False,
    lower_is_better: bool = False,
    min_votes: int | None = None,
) -> list[GroupPlan]:
    """What `pack` would write for SOURCE (see the module docstring); `progress`: a bar of archive bytes read.

    `lower_is_better`: the source is a MOS CSV of DMOS scores. `min_votes`: a NIGHTS root's
    triplets with fewer votes are left out (default `nights.MIN_VOTES`). Each is refused for any
    other source, before that source is read.
    """
    source = Path(source)
    if min_votes is not None and min_votes < 0:
        raise PackError(f"--min-votes must be 0 or more, got {min_votes}")
    given = {"lower_is_better": lower_is_better, "min_votes": min_votes}
    try:
        if not source.exists():
            raise PackError(f"{source}: no such file or folder")
        if source.suffix.lower() == ".csv":
            if source.is_dir():
                raise PackError(f"{source}: is a folder, not a CSV file")
            if not source.is_file():
                raise PackError(f"{source}: not a regular file")
            parsed = read_csv(source)
            if is_mos_csv(parsed[0]):
                _only(source, given, "lower_is_better")
                return plan_mos_csv(source, *parsed, group, higher_is_better=not lower_is_better)
            _only(source, given)
            return plan_csv(source, group, parsed)
        if source.name.lower().endswith(ARCHIVE_SUFFIXES) and not source.is_dir():
            if not source.is_file():
                raise PackError(f"{source}: not a regular file")
            archives = [source]
        elif source.is_dir():
            tree = [k for k in FOLDERS if (source / k).is_dir()]
            archives = [source / name for name in bapps_archives() if (source / name).is_file()]
            if tree and archives:
                raise PackError(
                    f"{source}: holds both an unpacked BAPPS tree ({', '.join(k + '/' for k in tree)}) and archives "
                    f"({', '.join(a.name for a in archives)}); pass the archive itself, or move the tree to a folder "
                    "of its own"
                )
            if tree:
                _no_group(source, group)
                _only(source, given)
                return plan_tree(source)
            if is_nights_root(source):
                _no_group(source, group)
                _only(source, given, "min_votes")
                return plan_nights(source, MIN_VOTES if min_votes is None else min_votes)
            partial = [
                name
                for name in bapps_archives()
                if (source / f".{name}.part").is_file() and not (source / name).is_file()
            ]
            if partial:  # packing the rest would quietly leave that part's groups out
                raise PackError(
                    f"{source}: {partial[0]} is only partly downloaded (.{partial[0]}.part); run "
                    f"`lpips-lightning download bapps {source}` again to finish it"
                )
        else:
            archives = []
        if archives:
            _no_group(source, group)
            _only(source, given)
            return plan_archives(archives, progress)
    except OSError as err:  # unreadable folders or files, names too long, ...
        raise PackError(f"{err.filename or source}: cannot read ({err.strerror or type(err).__name__})") from None
    raise PackError(
        f"{source}: neither a BAPPS root (a folder holding 2afc/ or jnd/), a folder of BAPPS archives "
        f"({', '.join(bapps_archives())}), a NIGHTS root (a folder holding data.csv), a .tar.gz archive "
        "nor a .csv file"
    )
