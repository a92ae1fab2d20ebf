"""Pack BAPPS folders or a CSV of custom judgments into one judgments file.

``lpips-lightning pack SOURCE OUT.h5 [--size 64] [--workers N] [--group G] [--overwrite]``

Every input problem is found before anything is written where it can be (folder layout,
stems, CSV columns and values); images and ``.npy`` judgments are checked as they are
decoded, in parallel, and streamed into the file in blocks. The output appears under its
name only when complete.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

from . import judgments
from .errors import PackError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
FOLDERS = {"2afc": ("ref", "p0", "p1", "judge"), "jnd": ("p0", "p1", "same")}
BLOCK = 256  # items decoded per write


def load_image(path: str | os.PathLike, size: int | None = None) -> np.ndarray:
    """Decode an image to RGB uint8 (H, W, 3), resized to size x size (PIL bilinear) when given."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size and im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise PackError(f"{path}: no such image file") from None
    except Exception as err:  # PIL raises many kinds for broken files
        raise PackError(f"{path}: image does not decode ({type(err).__name__})") from None


def load_fraction(path: str | os.PathLike) -> float:
    """Read a BAPPS judgment: a ``.npy`` holding one finite number in [0, 1]."""
    try:
        value = np.load(path, allow_pickle=False)
    except Exception as err:
        raise PackError(f"{path}: not a readable .npy judgment ({type(err).__name__})") from None
    if value.size != 1 or value.dtype.kind not in "fiub":
        raise PackError(f"{path}: a judgment must be one number, found {value.dtype} array of shape {value.shape}")
    return check_fraction(float(value.reshape(())), str(path))


def check_fraction(value: float, where: str) -> float:
    """Return `value` if it is a finite number in [0, 1], else raise `PackError` naming `where`."""
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise PackError(f"{where}: judgment {value} is not a finite number in [0, 1]")
    return value


@dataclass
class GroupPlan:
    """One group to write: its items, each a tuple of image paths and a judgment (or its .npy path)."""

    group: str
    source: str
    images: list[tuple[str, ...]] = field(default_factory=list)
    targets: list[float | str] = field(default_factory=list)
    votes: list[int] | None = None
    names: list[str] | None = None


# --- finding the items ------------------------------------------------------------------------
def _stems(folder: Path, extensions: set[str]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for entry in folder.iterdir():
        if entry.suffix.lower() in extensions and entry.is_file():
            if entry.stem in found:
                raise PackError(
                    f"{folder}: two files with stem {entry.stem!r} ({found[entry.stem].name}, {entry.name})"
                )
            found[entry.stem] = entry
    return found


def plan_bapps(root: Path) -> list[GroupPlan]:
    """Every ``<kind>/<split>/<subset>`` folder under a BAPPS root, its files paired by stem."""
    plans = []
    for kind, folders in FOLDERS.items():
        if not (root / kind).is_dir():
            continue
        for split in sorted(p for p in (root / kind).iterdir() if p.is_dir()):
            for subset in sorted(p for p in split.iterdir() if p.is_dir()):
                missing = [f for f in folders if not (subset / f).is_dir()]
                if missing:
                    raise PackError(
                        f"{subset}: missing sub-folder(s) {', '.join(missing)} (a {kind} subset needs "
                        f"{', '.join(folders)})"
                    )
                per_folder = {
                    f: _stems(subset / f, {".npy"} if f in ("judge", "same") else IMAGE_EXTENSIONS) for f in folders
                }
                all_stems = set().union(*per_folder.values())
                for f, stems in per_folder.items():
                    lacking = sorted(all_stems - set(stems))
                    if lacking:
                        other = next(o for o in folders if lacking[0] in per_folder[o])
                        raise PackError(
                            f"{subset / f}: no file for stem {lacking[0]} (present in {other}/)"
                            + (f" and {len(lacking) - 1} more stems" if len(lacking) > 1 else "")
                        )
                if not all_stems:
                    raise PackError(f"{subset}: the {kind} subset is empty")
                stems = sorted(all_stems)
                plan = GroupPlan(f"{kind}/{split.name}/{subset.name}", str(subset), names=stems)
                image_folders, target_folder = folders[:-1], folders[-1]
                for s in stems:
                    plan.images.append(tuple(str(per_folder[f][s]) for f in image_folders))
                    plan.targets.append(str(per_folder[target_folder][s]))
                judgments.check_group_name(plan.group)
                plans.append(plan)
    if not plans:
        raise PackError(f"{root}: no subsets found (expected 2afc/<split>/<subset>/ or jnd/<split>/<subset>/)")
    return plans


def plan_csv(path: Path, group: str | None = None) -> list[GroupPlan]:
    """One group from a CSV: ``ref,p0,p1,judge`` (2AFC) or ``p0,p1,same`` (JND); paths relative to the CSV."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        columns = set(reader.fieldnames or [])
        if {"ref", "p0", "p1"} <= columns:
            kind, image_cols = "2afc", ("ref", "p0", "p1")
        elif {"p0", "p1"} <= columns:
            kind, image_cols = "jnd", ("p0", "p1")
        else:
            raise PackError(
                f"{path}: missing columns: a 2AFC CSV needs ref,p0,p1 and judge (or votes_p0,votes_p1); "
                f"a JND CSV needs p0,p1,same; found {','.join(reader.fieldnames or []) or 'no header'}"
            )
        target = judgments.TARGET[kind]
        counted = kind == "2afc" and {"votes_p0", "votes_p1"} <= columns
        if target not in columns and not counted:
            need = "judge (or votes_p0,votes_p1)" if kind == "2afc" else "same"
            raise PackError(f"{path}: missing column {need}")
        has_votes = counted or "votes" in columns
        default = f"{kind}/train/{path.stem}" if kind == "2afc" else f"jnd/val/{path.stem}"
        plan = GroupPlan(judgments.check_group_name(group or default), str(path), votes=[] if has_votes else None)
        if judgments.kind_of(plan.group) != kind:
            raise PackError(f"{path}: --group {plan.group} is not a {kind} group, but the columns are {kind}'s")
        for line, row in enumerate(reader, start=2):
            where = f"{path} line {line}"
            images = []
            for col in image_cols:
                rel = (row.get(col) or "").strip()
                if not rel:
                    raise PackError(f"{where}: empty {col} path")
                p = Path(rel) if Path(rel).is_absolute() else path.parent / rel
                if not p.is_file():
                    raise PackError(f"{where}: image {rel} does not exist ({p})")
                images.append(str(p))
            try:
                if counted:
                    v0, v1 = int(row["votes_p0"]), int(row["votes_p1"])
                    if v0 < 0 or v1 < 0 or v0 + v1 == 0:
                        raise ValueError
                    value, votes = v1 / (v0 + v1), v0 + v1
                else:
                    value = float(row[target])
                    votes = int(row["votes"]) if has_votes else None
                    if votes is not None and votes < 1:
                        raise ValueError
            except (TypeError, ValueError):
                cols = "votes_p0,votes_p1" if counted else target + (",votes" if has_votes else "")
                raise PackError(
                    f"{where}: bad value in {cols}: {', '.join(str(row.get(c)) for c in cols.split(','))}"
                ) from None
            plan.images.append(tuple(images))
            plan.targets.append(check_fraction(value, where))
            if plan.votes is not None:
                plan.votes.append(votes)  # type: ignore[arg-type]
        if not plan.images:
            raise PackError(f"{path}: no rows")
    return [plan]


def plan_source(source: str | os.PathLike, group: str | None = None) -> list[GroupPlan]:
    """What `pack` would write for SOURCE: a BAPPS root folder or a CSV file."""
    source = Path(source)
    if not source.exists():
        raise PackError(f"{source}: no such file or folder")
    if source.is_file() and source.suffix.lower() == ".csv":
        return plan_csv(source, group)
    if source.is_dir() and any((source / k).is_dir() for k in FOLDERS):
        if group:
            raise PackError(f"{source}: --group applies to a CSV source; BAPPS subsets keep their own names")
        return plan_bapps(source)
    raise PackError(f"{source}: neither a BAPPS root (a folder holding 2afc/ or jnd/) nor a .csv file")


# --- decoding, in worker processes ------------------------------------------------------------
def _decode(task: tuple[tuple[str, ...], float | str, int]) -> tuple[np.ndarray, float]:
    paths, target, size = task
    images = np.stack([load_image(p, size).transpose(2, 0, 1) for p in paths])
    value = load_fraction(target) if isinstance(target, str) else float(target)
    return images, value


def _decode_many(tasks: list) -> list[tuple[np.ndarray, float]]:
    return [_decode(t) for t in tasks]


def _decoded(pool, tasks: list, chunk: int = 16, ahead: int = 64):
    """Decoded items in order, with at most `ahead` chunks in flight: memory stays a few blocks.

    (`Pool.imap` has no back-pressure: its workers would run ahead of a slow writer.)
    """
    if pool is None:
        yield from map(_decode, tasks)
        return
    pending: deque = deque()
    for start in range(0, len(tasks), chunk):
        pending.append(pool.apply_async(_decode_many, (tasks[start : start + chunk],)))
        if len(pending) >= ahead:
            yield from pending.popleft().get()
    while pending:
        yield from pending.popleft().get()


def pack(
    source: str | os.PathLike,
    out: str | os.PathLike,
    size: int = 64,
    workers: int | None = None,
    group: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Pack SOURCE into the judgments file OUT; return OUT. See the module docstring."""
    from tqdm import tqdm

    out = Path(out)
    if out.exists() and not overwrite:
        raise PackError(f"{out} already exists; pass --overwrite to replace it")
    if size < 1:
        raise PackError(f"--size must be a positive number of pixels, got {size}")
    plans = plan_source(source, group)
    workers = workers or os.cpu_count() or 1
    total = sum(len(p.images) for p in plans)
    pool = Pool(workers) if workers > 1 else None
    try:
        with (
            judgments.write(out, overwrite=overwrite) as writer,
            tqdm(total=total, unit="item", disable=not progress, desc=f"pack {out.name}") as bar,
        ):
            for plan in plans:
                n = len(plan.images)
                g = writer.create_group(
                    plan.group, n, (size, size), plan.source, votes=plan.votes is not None, names=plan.names is not None
                )
                tasks = [(imgs, t, size) for imgs, t in zip(plan.images, plan.targets)]
                results = _decoded(pool, tasks)
                keys = judgments.image_keys(judgments.kind_of(plan.group))
                for start in range(0, n, BLOCK):
                    block = [next(results) for _ in range(min(BLOCK, n - start))]
                    stacked = np.stack([b[0] for b in block])
                    arrays = {k: stacked[:, i] for i, k in enumerate(keys)}
                    arrays[judgments.TARGET[judgments.kind_of(plan.group)]] = np.array(
                        [b[1] for b in block], np.float32
                    )
                    if plan.votes is not None:
                        arrays["votes"] = np.array(plan.votes[start : start + len(block)], np.uint16)
                    if plan.names is not None:
                        arrays["names"] = np.array(plan.names[start : start + len(block)], dtype=object)
                    writer.fill(g, start, arrays)
                    bar.update(len(block))
    finally:
        if pool:
            pool.terminate()
            pool.join()
    return out


def main(argv: Sequence[str]) -> int:
    """``lpips-lightning pack``."""
    p = argparse.ArgumentParser(
        prog="lpips-lightning pack",
        description="Pack BAPPS folders or a CSV of judgments into one judgments file (HDF5).",
    )
    p.add_argument("source", help="a BAPPS root (holding 2afc/ and/or jnd/) or a CSV of judgments")
    p.add_argument("out", help="the judgments file to write, e.g. bapps.h5")
    p.add_argument("--size", type=int, default=64, help="resize images to SIZE x SIZE (default 64, PIL bilinear)")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores)")
    p.add_argument("--group", default=None, help="group of a CSV source (default 2afc/train/<csv stem>)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    out = pack(args.source, args.out, args.size, args.workers, args.group, args.overwrite, progress=not args.quiet)
    with judgments.open_file(out) as f:
        for name in judgments.groups(f):
            print(f"{name}: {f[name][judgments.TARGET[judgments.kind_of(name)]].shape[0]} items")
    print(f"wrote {out}")
    return 0
