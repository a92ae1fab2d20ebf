"""The facts of the BAPPS data set (Zhang et al., 2018): where it lives, its archives, its folder layout.

=========  ======================  =====================================
part       archive                 unpacks as
=========  ======================  =====================================
``train``  ``twoafc_train.tar.gz``  ``train/<subset>/{ref,p0,p1,judge}/``
``val``    ``twoafc_val.tar.gz``    ``val/<subset>/{ref,p0,p1,judge}/``
``jnd``    ``jnd.tar.gz``           ``jnd/val/<subset>/{p0,p1,same}/``
=========  ======================  =====================================

The archives are the ones the original's ``scripts/download_dataset.sh`` names. Unpacked,
a subset is a folder per image role and one for the judgments (a ``.npy`` of one number per
item); the files of an item share a stem (``000123.png``, ``000123.npy``) and are paired by
it, never by position. Folder trees and archives are read with the same rules.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Iterable

import numpy as np

from ..data import judgments
from ..errors import PackError
from ..images import IMAGE_EXTENSIONS

DEFAULT_BASE_URL = "https://perceptual-similarity.s3.us-west-2.amazonaws.com/dataset/"
ARCHIVES = {"train": "twoafc_train.tar.gz", "val": "twoafc_val.tar.gz", "jnd": "jnd.tar.gz"}
DATASETS: dict[str, dict[str, str]] = {"bapps": ARCHIVES}  # what `download` fetches: dataset -> {part: archive}
FOLDERS = {"2afc": ("ref", "p0", "p1", "judge"), "jnd": ("p0", "p1", "same")}  # a subset's folders, by kind


def bapps_archives() -> tuple[str, ...]:
    """The archive names a SOURCE folder is searched for (``lpips-lightning download bapps``'s), in order."""
    return tuple(ARCHIVES.values())


def extensions(folder: str) -> set[str]:
    """The file suffixes a subset's folder holds: ``.npy`` judgments, or images."""
    return {".npy"} if folder in ("judge", "same") else IMAGE_EXTENSIONS


def stem_suffix(filename: str) -> tuple[str, str]:
    """`Path(filename).stem` and `.suffix`, without pathlib's cost (600,000 members)."""
    i = filename.rfind(".")
    return (filename[:i], filename[i:]) if 0 < i < len(filename) - 1 else (filename, "")


def check_subset(where: str, group: str, present: Iterable[str]) -> None:
    """Refuse a subset that lacks one of its kind's folders, or whose names make no group name."""
    kind = judgments.kind_of(group)
    folders = FOLDERS[kind]
    missing = [f for f in folders if f not in set(present)]
    if missing:
        raise PackError(
            f"{where}: missing sub-folder(s) {', '.join(missing)} (a {kind} subset needs {', '.join(folders)})"
        )
    if not judgments.GROUP_RE.match(group):
        raise PackError(
            f"{where}: folder names become the group name {group!r}, which may hold only letters, "
            "digits, '_', '-' and '.'; rename the folder"
        )


def paired_stems(where: str, kind: str, per_folder: dict[str, dict], label: Callable[[str], str]) -> list[str]:
    """The sorted stems of a subset whose every folder holds a file for every stem; else `PackError`.

    `per_folder` maps each folder to its files by stem; `label(folder)` names a folder in messages.
    """
    folders = FOLDERS[kind]
    all_stems = set().union(*per_folder.values())
    for f in folders:
        lacking = sorted(all_stems - set(per_folder[f]))
        if lacking:
            other = next(o for o in folders if lacking[0] in per_folder[o])
            raise PackError(
                f"{label(f)}: no file for stem {lacking[0]} (present in {other}/)"
                + (f" and {len(lacking) - 1} more stems" if len(lacking) > 1 else "")
            )
    if not all_stems:
        raise PackError(f"{where}: the {kind} subset is empty")
    return sorted(all_stems)


def load_fraction(path: str | os.PathLike | bytes, name: str | None = None) -> float:
    """Read a BAPPS judgment: a ``.npy`` holding one finite number in [0, 1] (a file, or its bytes named `name`)."""
    source, path = path, name or path
    try:
        value = np.load(io.BytesIO(source) if isinstance(source, bytes) else source, allow_pickle=False)
    except Exception as err:
        raise PackError(f"{path}: not a readable .npy judgment ({type(err).__name__})") from None
    if not isinstance(value, np.ndarray) or value.size != 1 or value.dtype.kind not in "fiub":
        shape = getattr(value, "shape", "?")
        raise PackError(
            f"{path}: a judgment must be one number, found {getattr(value, 'dtype', type(value).__name__)} "
            f"array of shape {shape}"
        )
    return check_fraction(float(value.reshape(())), str(path))


def check_fraction(value: float, where: str) -> float:
    """Return `value` if it is a finite number in [0, 1], else raise `PackError` naming `where`."""
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise PackError(f"{where}: judgment {value} is not a finite number in [0, 1]")
    return value
