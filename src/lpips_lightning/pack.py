"""Pack BAPPS (folders or the downloaded archives) or a CSV of custom judgments into one judgments file.

``lpips-lightning pack SOURCE OUT.h5 [--size 64] [--workers N] [--group G] [--overwrite]``

Every input problem is found before anything is written where it can be (folder layout,
stems, CSV columns and values, the output's folder, an output that is one of the inputs);
images and ``.npy`` judgments are checked as they are decoded, in parallel, and streamed
into the file in blocks. The output appears under its name only when complete
(`judgments.write`, through `outputs.atomic_output`).

Archives (SOURCE a folder holding any of ``twoafc_train.tar.gz``, ``twoafc_val.tar.gz``,
``jnd.tar.gz``, or one ``.tar.gz``/``.tgz``/``.tar``) are read as they are, never unpacked,
in two streaming passes over each:

1. index (`plan_archives`): every tar header, to the end of the file. Members are checked
   (none may land outside the folder it would be extracted into: no absolute path, no ``..``,
   no link; no device or FIFO), placed in the layout (``train/<subset>/{ref,p0,p1,judge}/``,
   ``val/<subset>/...``, ``jnd/<split>/<subset>/{p0,p1,same}/``, or ``2afc/<split>/...``; a
   leading ``./`` or ``dataset/`` skipped; anything else ignored, as in a folder) and paired
   by stem exactly as files are (`_paired_stems`); where each member's data lies in the tar
   stream is kept in flat arrays (about 35 bytes a member; some 130 at the peak, while pairing:
   80 MB for BAPPS's 600,000 members). A damaged archive (cut short, bad gzip checksum, a
   damaged header), a wrong layout, bad pairing: refused here, before the output is created.
2. pack (`_write_archives`): the stream again, decompressed and cut at those offsets (no
   header parsed twice); each member's bytes go to a decoding worker, and its image straight
   into its row of the group (datasets hold one image per chunk). Memory: the index, and the
   members in flight (a few MB a worker); nothing is extracted or written anywhere but the
   output. The file is the one packing the unpacked tree gives (same groups, arrays, names;
   ``source`` reads ``ARCHIVE:PREFIX``).

Ctrl-C and SIGTERM are recorded while packing and acted on between blocks and before the
final rename: the temporary file is removed, the output is left as it was, and the command
exits with status 130 (SIGINT) or 143 (SIGTERM). Decoding workers ignore Ctrl-C; the
parent kills them. Workers also die with a parent killed outright (SIGKILL): `_die_with_parent`.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import multiprocessing
import os
import pickle
import posixpath
import queue
import signal
import stat
import sys
import tarfile
import threading
import time
import unicodedata
import warnings
import zlib
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing import connection as mp_connection
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from . import judgments, outputs
from .errors import Interrupted, LPIPSLightningError, PackError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
FOLDERS = {"2afc": ("ref", "p0", "p1", "judge"), "jnd": ("p0", "p1", "same")}
BLOCK = 256  # items decoded per write, at most (fewer for large images: a block stays near BLOCK_BYTES)
BLOCK_BYTES = 64 << 20
IN_FLIGHT_BYTES = 256 << 20  # decoded images waiting for the writer, at most (about)
MAX_SIZE = 4096  # --size: 3 x 4096^2 bytes per image chunk; beyond, memory and HDF5 chunk limits bite
MAX_VOTES = np.iinfo(np.uint16).max


# --- images -----------------------------------------------------------------------------------
_SIXTEEN_BIT_GRAY = {"I;16", "I;16L", "I;16B", "I;16N"}
# 16-bit colour: PIL keeps the high byte of each sample; the same data decoded with the other
# byte order gives the low byte. (Gray + alpha: its 32 bits read as RGBA are Lhi, Llo, Ahi, Alo.)
_NATIVE = "L" if sys.byteorder == "little" else "B"
_LOW_BYTES = {
    **{f"{m};16{e}": f"{m};16{'B' if e == 'L' else 'L'}" for m in ("RGB", "RGBA") for e in "LB"},
    **{f"{m};16N": f"{m};16{'B' if _NATIVE == 'L' else 'L'}" for m in ("RGB", "RGBA")},
    "LA;16B": "RGBA",
}


def _rawmodes(im: Image.Image) -> set[str]:
    """The raw modes PIL will decode `im`'s tiles with (read before `load`, which clears them)."""
    found = set()
    for tile in getattr(im, "tile", None) or ():
        args = tile[3]
        raw = args if isinstance(args, str) else args[0] if isinstance(args, tuple) and args else None
        if isinstance(raw, str):
            found.add(raw)
    return found


def _to_8bit(values: np.ndarray) -> np.ndarray:
    """16-bit samples (0..65535) to 8 bits: value * 255 / 65535, rounded (never a tie)."""
    return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _open_image(source: str | os.PathLike | bytes) -> Image.Image:
    """PIL's lazy open of a file, or of an image's encoded bytes (an archive member)."""
    return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)


def _sixteen_bit_colour(source: str | os.PathLike | bytes, high: np.ndarray, raw: str) -> np.ndarray:
    """RGB uint8 of a 16-bit colour image PIL decoded to `high` (its high bytes), correctly rounded.

    Decodes the image again with the low bytes; if PIL cannot, the high bytes stand (within one
    level of the rounded value, never clipped).
    """
    try:
        with _open_image(source) as im:
            im.tile = [(*t[:3], _swap_raw(t[3])) for t in im.tile]
            im.load()
            low = np.array(im)
    except Exception:
        return high
    if raw == "LA;16B":  # low = (Lhi, Llo, Ahi, Alo)
        gray = _to_8bit(low[..., 0].astype(np.uint32) * 256 + low[..., 1])
        return np.repeat(gray[..., None], 3, axis=2)
    if low.shape[:2] != high.shape[:2] or low.ndim != 3:
        return high
    return _to_8bit(high[..., :3].astype(np.uint32) * 256 + low[..., :3])


def _swap_raw(args):
    if isinstance(args, str):
        return _LOW_BYTES[args]
    return (_LOW_BYTES[args[0]], *args[1:])


def _rgb8(im: Image.Image, source: str | os.PathLike | bytes, path: str | os.PathLike) -> np.ndarray:
    """Any decodable image as RGB uint8 (H, W, 3), 16-bit samples scaled (not clipped) to 8 bits.

    `source` is what `im` was opened from (to decode it again), `path` its name in messages.
    """
    raws = _rawmodes(im)
    mode = im.mode
    if mode in _SIXTEEN_BIT_GRAY or (
        mode == "I" and (im.format in ("PNG", "PPM") or any(r.startswith("I;16") and r[-1:] != "S" for r in raws))
    ):
        values = np.array(im)
        if values.min(initial=0) < 0 or values.max(initial=0) > 65535:
            raise PackError(f"{path}: 16-bit image with values outside 0..65535")
        return np.repeat(_to_8bit(values)[..., None], 3, axis=2)
    if mode == "I":
        values = np.array(im)
        lo, hi = (values.min(), values.max()) if values.size else (0, 0)
        raise PackError(
            f"{path}: signed or 32-bit integer pixels (values {lo}..{hi}) have no fixed white level; "
            "save the image as 8- or 16-bit"
        )
    if mode == "F":
        raise PackError(
            f"{path}: floating-point pixels (mode F) have no fixed white level; save the image as 8- or 16-bit"
        )
    colour16 = next((r for r in raws if r in _LOW_BYTES), None)
    try:
        rgb = np.array(im.convert("RGB"))
    except ValueError as err:  # e.g. LAB, HSV
        raise PackError(f"{path}: cannot convert PIL mode {mode} to RGB ({err})") from None
    if colour16 is not None:
        rgb = _sixteen_bit_colour(source, rgb, colour16)
    return rgb


def load_image(path: str | os.PathLike | bytes, size: int | None = None, name: str | None = None) -> np.ndarray:
    """Decode an image to RGB uint8 (H, W, 3), resized to size x size (PIL bilinear) when given.

    `path` is a file, or the encoded bytes of one (an archive member; `name` names it in
    messages). 16-bit images (PNG, TIFF, PGM/PPM; gray or colour) are scaled to 8 bits
    (value * 255 / 65535, rounded); 32-bit integer and floating-point images are refused. The
    array is writable.
    """
    source, path = path, name or path
    try:
        with warnings.catch_warnings():  # PIL warns (twice, over several lines) above 89M pixels: they decode
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _open_image(source) as im:
                rgb = _rgb8(im, source, path)
        if size and rgb.shape[:2] != (size, size):
            rgb = np.array(Image.fromarray(rgb).resize((size, size), Image.BILINEAR))
        return rgb
    except LPIPSLightningError:
        raise
    except Image.DecompressionBombError as err:
        raise PackError(f"{path}: image too large to decode safely ({str(err).split(',')[0]})") from None
    except FileNotFoundError:
        raise PackError(f"{path}: no such image file") from None
    except IsADirectoryError:
        raise PackError(f"{path}: is a folder, not an image file") from None
    except Exception as err:  # PIL raises many kinds for broken files
        empty = source == b"" if isinstance(source, bytes) else _is_empty(source)
        raise PackError(
            f"{path}: "
            + ("empty file (0 bytes), not an image" if empty else f"image does not decode ({type(err).__name__})")
        ) from None


def _is_empty(path: str | os.PathLike) -> bool:
    try:
        return os.path.getsize(path) == 0
    except OSError:
        return False


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


@dataclass
class GroupPlan:
    """One group to write: its items, each a tuple of image paths and a judgment (or its .npy path).

    A group read from an archive (`archive` set) lists no paths: its items are the sorted
    `names` (stems), and its members lie where the archive's index says.
    """

    group: str
    source: str
    images: list[tuple[str, ...]] = field(default_factory=list)
    targets: list[float | str] = field(default_factory=list)
    votes: list[int] | None = None
    names: list[str] | None = None
    archive: _Archive | None = None

    @property
    def n(self) -> int:
        """The number of items."""
        return len(self.names or ()) if self.archive else len(self.images)

    def files(self) -> Iterator[str]:
        """Every file this group reads: images and ``.npy`` judgments, or its archive."""
        if self.archive:
            yield str(self.archive.path)
            return
        for images in self.images:
            yield from images
        yield from (t for t in self.targets if isinstance(t, str))


# --- finding the items ------------------------------------------------------------------------
def _stems(folder: Path, extensions: set[str]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.suffix.lower() in extensions and entry.is_symlink() and not entry.exists():
            raise PackError(f"{entry}: a link to {os.readlink(entry)}, which does not exist")
        if entry.suffix.lower() in extensions and entry.is_file():
            if entry.stem in found:
                raise PackError(
                    f"{folder}: two files with stem {entry.stem!r} ({found[entry.stem].name}, {entry.name})"
                )
            found[entry.stem] = entry
    return found


def _check_subset(where: str, group: str, present: Iterable[str]) -> None:
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


def _paired_stems(where: str, kind: str, per_folder: dict[str, dict], label: Callable[[str], str]) -> list[str]:
    """The sorted stems of a subset whose every folder holds a file for every stem; else `PackError`."""
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


def plan_bapps(root: Path) -> list[GroupPlan]:
    """Every ``<kind>/<split>/<subset>`` folder under a BAPPS root, its files paired by stem."""
    plans = []
    for kind, folders in FOLDERS.items():
        if not (root / kind).is_dir():
            continue
        for split in sorted(p for p in (root / kind).iterdir() if p.is_dir()):
            for subset in sorted(p for p in split.iterdir() if p.is_dir()):
                group = f"{kind}/{split.name}/{subset.name}"
                _check_subset(str(subset), group, [f for f in folders if (subset / f).is_dir()])
                per_folder = {f: _stems(subset / f, _extensions(f)) for f in folders}
                stems = _paired_stems(str(subset), kind, per_folder, lambda f, subset=subset: str(subset / f))
                plan = GroupPlan(group, str(subset), names=stems)
                image_folders, target_folder = folders[:-1], folders[-1]
                for s in stems:
                    plan.images.append(tuple(str(per_folder[f][s]) for f in image_folders))
                    plan.targets.append(str(per_folder[target_folder][s]))
                plans.append(plan)
    if not plans:
        raise PackError(f"{root}: no subsets found (expected 2afc/<split>/<subset>/ or jnd/<split>/<subset>/)")
    return plans


def _unclosed_quote(text: str) -> int | None:
    """The line where a quoted field starts that the text never closes, or None.

    Python's lenient reader would take the rest of the file into that field; its strict one
    also refuses harmless things (``"a b.png" ,x.png``), so only its end-of-data error counts.
    """
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    done = 0  # the last line of the last complete row
    try:
        for _ in reader:
            done = reader.line_num
    except csv.Error as err:
        return done + 1 if "unexpected end of data" in str(err) else None
    return None


def _csv_records(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header (names stripped, lower case) and the non-blank rows with their line numbers."""
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise PackError(f"{path}: UTF-16 text; save the CSV as UTF-8 (Excel: CSV UTF-8)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        offset = err.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        line = data[:offset].count(b"\n") + 1
        raise PackError(
            f"{path} line {line}: byte 0x{data[offset]:02x} is not UTF-8 text; save the CSV as UTF-8 (Excel: CSV UTF-8)"
        ) from None
    unclosed = _unclosed_quote(text)
    if unclosed is not None:
        raise PackError(f'{path} line {unclosed}: a field opens a quote (") that is never closed')
    reader = csv.reader(io.StringIO(text, newline=""))
    records: list[tuple[int, list[str]]] = []
    header: list[str] | None = None
    try:
        for row in reader:
            if not any(v.strip() for v in row):
                continue  # blank line
            if header is None:
                header = [name.strip().lower() for name in row]
            else:
                records.append((reader.line_num, [v.strip() for v in row]))
    except csv.Error as err:
        raise PackError(f"{path} line {reader.line_num}: not readable as CSV ({err})") from None
    if header is None:
        raise PackError(f"{path}: empty file; a 2AFC CSV needs the header ref,p0,p1,judge, a JND CSV p0,p1,same")
    repeated = sorted({name for name in header if name and header.count(name) > 1})
    if repeated:
        raise PackError(f"{path}: column {repeated[0]} appears more than once in the header")
    return header, records


def _image_path(rel: str, csv_path: Path, where: str, col: str) -> str:
    """The path of one image named in a CSV row, checked to be a regular file."""
    if not rel:
        raise PackError(f"{where}: empty {col} path")
    shown = rel if len(rel) <= 100 else f"{rel[:60]}...{rel[-30:]}"
    if "\x00" in rel:
        raise PackError(f"{where}: {col} path {shown!r} holds a NUL character")
    p = Path(rel) if Path(rel).is_absolute() else csv_path.parent / rel
    try:
        mode = p.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        if p.is_symlink():
            raise PackError(f"{where}: {col} {shown} is a link to {os.readlink(p)}, which does not exist") from None
        # the same name in the other Unicode normalisation (macOS writes NFD, Excel NFC): the file a person means
        alternatives = {unicodedata.normalize(form, str(p)) for form in ("NFC", "NFD")} - {str(p)}
        found = [a for a in alternatives if os.path.isfile(a)]
        if len(found) == 1:
            return found[0]
        raise PackError(f"{where}: image {shown} does not exist ({p if len(str(p)) <= 200 else '...'})") from None
    except OSError as err:
        raise PackError(f"{where}: image {shown} cannot be read ({err.strerror or type(err).__name__})") from None
    if stat.S_ISDIR(mode):
        raise PackError(f"{where}: {col} {shown} is a folder, not an image file")
    if not stat.S_ISREG(mode):
        raise PackError(f"{where}: {col} {shown} is not a regular file")
    return str(p)


def _csv_float(text: str) -> float:
    """A CSV number as Python's float reads it, without its digit separators ("0_5" is not 0.5)."""
    if "_" in text:
        raise ValueError(text)
    return float(text)


def _csv_int(text: str) -> int:
    """A CSV count: digits only, no digit separators ("1_0" is not 10)."""
    if "_" in text:
        raise ValueError(text)
    return int(text)


def plan_csv(path: Path, group: str | None = None) -> list[GroupPlan]:
    """One group from a CSV: ``ref,p0,p1,judge`` (2AFC) or ``p0,p1,same`` (JND); paths relative to the CSV.

    UTF-8 with or without a byte-order mark (Excel's export); names and values are stripped of
    surrounding spaces; blank lines are skipped.
    """
    header, records = _csv_records(path)
    columns = set(header)
    if {"ref", "p0", "p1"} <= columns:
        kind, image_cols = "2afc", ("ref", "p0", "p1")
    elif {"p0", "p1"} <= columns:
        kind, image_cols = "jnd", ("p0", "p1")
    else:
        raise PackError(
            f"{path}: missing columns: a 2AFC CSV needs ref,p0,p1 and judge (or votes_p0,votes_p1); "
            f"a JND CSV needs p0,p1,same; found {','.join(header)}"
        )
    target = judgments.TARGET[kind]
    counted = kind == "2afc" and {"votes_p0", "votes_p1"} <= columns
    if target not in columns and not counted:
        need = "judge (or votes_p0,votes_p1)" if kind == "2afc" else "same"
        raise PackError(f"{path}: missing column {need}")
    has_votes = counted or "votes" in columns
    default = f"{kind}/train/{path.stem}" if kind == "2afc" else f"jnd/val/{path.stem}"
    try:
        name = judgments.check_group_name(group or default)
    except LPIPSLightningError as err:
        hint = "" if group else f" (from the CSV's name {path.name}); pass --group"
        raise PackError(f"{path}: {err}{hint}") from None
    plan = GroupPlan(name, str(path), votes=[] if has_votes else None)
    if judgments.kind_of(plan.group) != kind:
        raise PackError(f"{path}: --group {plan.group} is not a {kind} group, but the columns are {kind}'s")
    width = len(header)
    for line, fields in records:
        where = f"{path} line {line}"
        if len(fields) < width:
            raise PackError(f"{where}: {len(fields)} fields, the header has {width}")
        if any(fields[width:]):
            raise PackError(
                f"{where}: {len(fields)} fields, the header has {width} (a comma inside a path? quote the field)"
            )
        row = dict(zip(header, fields))
        images = tuple(_image_path(row[col], path, where, col) for col in image_cols)
        try:
            if counted:
                v0, v1 = _csv_int(row["votes_p0"]), _csv_int(row["votes_p1"])
                if v0 < 0 or v1 < 0 or v0 + v1 == 0:
                    raise ValueError
                value, votes = v1 / (v0 + v1), v0 + v1
                given = {c: row[c] for c in (target, "votes") if c in columns}  # also present: must agree
                if target in given and not abs(_csv_float(given[target]) - value) <= 1e-6:  # NaN included
                    raise PackError(
                        f"{where}: {target} {given[target]} contradicts votes_p0,votes_p1 {v0},{v1} "
                        f"(= {value:.6g}); give one or the other"
                    )
                if "votes" in given and _csv_int(given["votes"]) != votes:
                    raise PackError(
                        f"{where}: votes {given['votes']} contradicts votes_p0,votes_p1 {v0},{v1} "
                        f"(= {votes}); give one or the other"
                    )
            else:
                value = _csv_float(row[target])
                votes = _csv_int(row["votes"]) if has_votes else None
                if votes is not None and votes < 1:
                    raise ValueError
        except (TypeError, ValueError):
            if counted:
                cols = ",".join(c for c in ("votes_p0", "votes_p1", target, "votes") if c in columns)
            else:
                cols = target + (",votes" if has_votes else "")
            raise PackError(
                f"{where}: bad value in {cols}: {', '.join(str(row.get(c)) for c in cols.split(','))}"
            ) from None
        if votes is not None and votes > MAX_VOTES:
            raise PackError(f"{where}: {votes} votes; the file stores at most {MAX_VOTES} per item")
        plan.images.append(images)
        plan.targets.append(check_fraction(value, where))
        if plan.votes is not None:
            plan.votes.append(votes)  # type: ignore[arg-type]
    if not plan.images:
        raise PackError(f"{path}: no rows below the header")
    return [plan]


# --- archives ---------------------------------------------------------------------------------
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
READ_BYTES = 1 << 20
MEMBER_CHUNK = 32  # archive members per message to a decoding worker, at most ...
MEMBER_CHUNK_BYTES = 4 << 20  # ... and about this many encoded bytes
END_OF_ARCHIVE = 512  # a tar ends with NUL blocks (two, by the standard; at least one here)


def bapps_archives() -> tuple[str, ...]:
    """The archive names a SOURCE folder is searched for (``lpips-lightning download bapps``'s), in order."""
    from .download import DATASETS

    return tuple(DATASETS["bapps"].values())


def _shown(name: str) -> str:
    """An archive member's name for a message: quoted when it holds odd characters, cut when long."""
    text = name if name and name.isprintable() and name.strip() == name else repr(name)
    return text if len(text) <= 200 else f"{text[:120]}...{text[-60:]}"


@dataclass(eq=False)
class _Archive:
    """An indexed archive: where the data of each member to decode lies in its (decompressed) tar stream.

    Members are kept in archive order, in flat arrays (BAPPS has 600,000): `offsets` and `sizes`
    of their data, `suffixes` of their names (shared strings); once the subsets are paired,
    `group`, `folder` and `row` say where each goes (the plan's index, its folder's index in
    `FOLDERS`, the item).
    """

    path: Path
    stamp: tuple[int, int]  # (size, mtime) when indexed: pass 2 refuses a changed file
    offsets: array = field(default_factory=lambda: array("q"))
    sizes: array = field(default_factory=lambda: array("q"))
    suffixes: list[str] = field(default_factory=list)
    group: array = field(default_factory=lambda: array("i"))
    folder: array = field(default_factory=lambda: array("b"))
    row: array = field(default_factory=lambda: array("i"))
    prefixes: dict[int, str] = field(default_factory=dict)  # plan index -> the subset's path in the archive


class _Progress(io.RawIOBase):
    """A readable file that reports every byte read to a progress bar."""

    def __init__(self, fh, bar) -> None:
        self.fh, self.bar = fh, bar

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.fh.readinto(buffer)
        if n:
            self.bar.update(n)
        return n


class _Tail:
    """The tar stream as tarfile reads it: its bytes counted, the last ones (at least `KEEP`) kept.

    Stream-mode tarfile takes a damaged header, or a stream that ends at a header, for the end
    of the archive; the bytes from there on must be the end-of-archive NULs, and this is where
    they are found.
    """

    KEEP = 1 << 20

    def __init__(self, stream) -> None:
        self.stream = stream
        self.delivered = 0
        self.kept: deque[bytes] = deque()
        self.held = 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        if data:
            self.delivered += len(data)
            self.kept.append(data)
            self.held += len(data)
            while self.held - len(self.kept[0]) >= self.KEEP:
                self.held -= len(self.kept.popleft())
        return data

    def since(self, offset: int) -> bytes | None:
        """The bytes delivered from stream position `offset` on; None when no longer kept."""
        n = self.delivered - offset
        if not 0 <= n <= self.held:
            return None
        return b"".join(self.kept)[self.held - n :] if n else b""


REDOWNLOAD = "; delete it and download it again"


def _damaged(
    path: Path | str, reached: str | None, reading: bool, gzipped: bool, err: BaseException, advice: str = REDOWNLOAD
) -> PackError:
    if isinstance(err, EOFError) or "unexpected end of data" in str(err):
        detail = "the file ends early"
    elif isinstance(err, zlib.error):
        detail = f"corrupt compressed data: {err}"
    else:
        detail = str(err) or type(err).__name__
    if reached is None and isinstance(err, tarfile.ReadError):
        if not gzipped:
            return PackError(f"{path}: not a .tar.gz archive (neither gzip-compressed nor a tar file: {detail})")
        return PackError(f"{path}: gzip-compressed, but no tar archive inside ({detail})")
    if isinstance(err, gzip.BadGzipFile) and ("CRC check" in detail or "length" in detail):
        return PackError(f"{path}: damaged (its gzip checksum does not match: {detail}){advice}")
    where = "before its first member" if reached is None else f"{'in' if reading else 'after'} member {_shown(reached)}"
    return PackError(f"{path}: damaged or cut short {where} ({detail}){advice}")


_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


def _open_stream(fh, bar):
    """The tar stream of an open archive file, through gzip when it is gzip-compressed; and whether it is."""
    raw = io.BufferedReader(_Progress(fh, bar), READ_BYTES)
    gzipped = raw.peek(2)[:2] == b"\x1f\x8b"
    return (gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw), gzipped


def _open_archive(path: Path):
    try:
        return open(path, "rb")
    except OSError as err:
        raise PackError(f"{path}: cannot read ({err.strerror or type(err).__name__})") from None


def archive_members(path: Path, bar, shown: str | None = None, advice: str = REDOWNLOAD) -> Iterator[tarfile.TarInfo]:
    """Every member of the tar or tar.gz `path`, in order (pass 1 of `pack`: their headers, not their data).

    One streaming pass (tarfile's ``r|``): nothing is extracted or written anywhere. A file
    that is not gzip or tar, is cut short or damaged raises `PackError` naming it (as `shown`,
    if given) and the member reached, then `advice`: the gzip checksum is checked at the end,
    and what follows the last member must be the end-of-archive NULs (stream-mode tarfile
    takes a damaged header for the end). `download` checks each archive it fetched with this.
    """
    reached, gzipped = None, False
    with _open_archive(path) as fh:
        try:
            stream, gzipped = _open_stream(fh, bar)
            tail = _Tail(stream)
            tar = tarfile.open(fileobj=tail, mode="r|")
            while (info := tar.next()) is not None:
                tar.members.clear()  # stream mode keeps every TarInfo: 600,000 of them for BAPPS
                reached = info.name
                yield info
            rest = tail.since(tar.offset)
            if rest is None:  # (cannot happen: tarfile reads a record ahead at most)
                raise tarfile.ReadError("lost track of the end of the archive")
            ended = len(rest)
            while rest:
                if rest.strip(b"\0"):
                    raise tarfile.ReadError("a damaged tar header")
                rest = stream.read(READ_BYTES)  # to the end: the gzip checksum and length are checked
                ended += len(rest)
            if ended < END_OF_ARCHIVE:
                raise EOFError
        except _READ_ERRORS as err:
            raise _damaged(shown or path, reached, False, gzipped, err, advice) from None


def _cut(archive: _Archive, bar, name: Callable[[int], str]) -> Iterator[tuple[int, bytes]]:
    """Pass 2: the data of every indexed member of `archive`, ``(k, bytes)``, cut from the decompressed stream.

    No tar header is parsed again: the data lie where pass 1 found them (`archive.stamp` refuses a
    file changed since). Read to the end, so that the gzip checksum is checked again.
    """
    _check_unchanged(archive)
    k, gzipped, reading = -1, False, False
    with _open_archive(archive.path) as fh:
        try:
            stream, gzipped = _open_stream(fh, bar)
            pos = 0
            for k, (offset, size) in enumerate(zip(archive.offsets, archive.sizes)):
                while pos < offset:  # headers, padding, members not read
                    skipped = len(stream.read(min(offset - pos, READ_BYTES)))
                    if not skipped:
                        raise EOFError
                    pos += skipped
                reading = True
                data = stream.read(size)
                if len(data) != size:
                    raise EOFError
                pos += size
                reading = False
                yield k, data
            while stream.read(READ_BYTES):
                pass
        except _READ_ERRORS as err:
            raise _damaged(archive.path, name(k) if k >= 0 else None, reading, gzipped, err) from None
    _check_unchanged(archive)


def _check_unchanged(archive: _Archive) -> None:
    try:
        st = archive.path.stat()
    except OSError as err:
        raise PackError(f"{archive.path}: cannot read ({err.strerror or type(err).__name__})") from None
    if (st.st_size, st.st_mtime_ns) != archive.stamp:
        raise PackError(f"{archive.path}: changed while it was being packed (its size or time); run pack again")


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


def _check_member(path: Path, info: tarfile.TarInfo) -> None:
    """Refuse a member that would land outside the folder it is extracted into, a link, a device, a FIFO."""
    name, why = info.name, None
    shown = _shown(name)
    if name.startswith("/") or os.path.isabs(name):
        why = "an absolute path"
    elif ".." in name.split("/"):
        why = "'..' in its path"
    elif info.issym() or info.islnk():
        kind = "symbolic" if info.issym() else "hard"
        base = posixpath.dirname(name) if info.issym() else ""
        target = posixpath.normpath(posixpath.join(base, info.linkname))
        if info.linkname.startswith("/") or target == ".." or target.startswith("../"):
            why = f"a {kind} link to {_shown(info.linkname)}"
        else:
            raise PackError(f"{path}: member {shown} is a {kind} link; pack reads only files and folders from archives")
    if why:
        raise PackError(f"{path}: member {shown} would land outside the folder it is extracted into ({why}); refused")
    if info.ischr() or info.isblk() or info.isfifo():
        what = "a FIFO" if info.isfifo() else "a device file"
        raise PackError(f"{path}: member {shown} is {what}; pack reads only files and folders from archives")
    if not (info.isreg() or info.isdir()):
        raise PackError(
            f"{path}: member {shown} is of tar type {info.type!r}; pack reads only files and folders from archives"
        )


@dataclass
class _Subset:
    """A subset found in an archive: its folders, each ``stem -> the member's index in the archive``."""

    group: str
    kind: str
    archive: _Archive
    prefix: str  # its path in the archive, e.g. train/cnn
    folders: dict[str, dict[str, int]] = field(default_factory=dict)


def _index_member(subsets: dict[str, _Subset], archive: _Archive, info: tarfile.TarInfo) -> None:
    """Note where one member belongs, as a folder listing would (the rest of the archive is ignored)."""
    _check_member(archive.path, info)
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
    stem, suffix = _stem_suffix(filename)
    if suffix.lower() not in _extensions(folder):
        return
    stem = sys.intern(stem)  # BAPPS stems repeat in every folder and subset
    if stem in files:
        first = stem + archive.suffixes[files[stem]]
        if first == filename:
            raise PackError(f"{archive.path}: member {_shown(info.name)} appears twice in the archive")
        first, second = sorted((first, filename))
        raise PackError(f"{archive.path}: {sub.prefix}/{folder}: two files with stem {stem!r} ({first}, {second})")
    files[stem] = len(archive.offsets)
    archive.offsets.append(info.offset_data)
    archive.sizes.append(info.size)
    archive.suffixes.append(sys.intern(suffix))


def _extensions(folder: str) -> set[str]:
    return {".npy"} if folder in ("judge", "same") else IMAGE_EXTENSIONS


def _stem_suffix(filename: str) -> tuple[str, str]:
    """`Path(filename).stem` and `.suffix`, without pathlib's cost (600,000 members)."""
    i = filename.rfind(".")
    return (filename[:i], filename[i:]) if 0 < i < len(filename) - 1 else (filename, "")


def plan_archives(archives: Sequence[str | os.PathLike], progress: bool = False) -> list[GroupPlan]:
    """Every subset inside the BAPPS archives, its members paired by stem, as `plan_bapps` pairs files.

    Pass 1: reads each archive once to its end (streaming, headers only, nothing extracted), so
    that every problem of layout and pairing, and a damaged archive, is found before anything is
    written; notes where each member's data lies for pass 2 (`_write_archives`).
    """
    from tqdm import tqdm

    subsets: dict[str, _Subset] = {}
    indexed = []
    for a in archives:
        path = Path(a)
        try:
            st = path.stat()
        except OSError as err:
            raise PackError(f"{path}: cannot read ({err.strerror or type(err).__name__})") from None
        indexed.append(_Archive(path, (st.st_size, st.st_mtime_ns)))
    total = sum(a.stamp[0] for a in indexed)
    with tqdm(total=total, unit="B", unit_scale=True, disable=not progress, desc="index", leave=False) as bar:
        for archive in indexed:
            bar.set_description(f"index {archive.path.name}")
            first = None
            for info in archive_members(archive.path, bar):
                first = first or info.name
                _index_member(subsets, archive, info)
            if not any(sub.archive is archive for sub in subsets.values()):
                found = f"its first member is {_shown(first)}" if first else "it holds no members"
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
        _check_subset(where, group, sub.folders)
        stems = _paired_stems(where, sub.kind, sub.folders, lambda f, where=where: f"{where}/{f}")
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


def _write_archives(writer, plans: list[GroupPlan], decoder: _Decoder, size: int, check, bar) -> None:
    """Pass 2: fill the groups of `plans` from their archives, read again: each member straight to its row."""
    datasets, targets, filled = [], [], []
    for plan in plans:
        kind = judgments.kind_of(plan.group)
        g = writer.create_group(plan.group, plan.n, (size, size), plan.source, names=True)
        writer.fill(g, 0, {"names": np.array(plan.names, dtype=object)})
        datasets.append((g, [_RowWriter(g[key]) for key in judgments.image_keys(kind)]))
        targets.append(np.zeros(plan.n, np.float32))
        filled.append(np.zeros((plan.n, len(FOLDERS[kind])), bool))
    ahead = max(2, min(4 * max(1, len(decoder.procs)), IN_FLIGHT_BYTES // MEMBER_CHUNK_BYTES))
    for archive in dict.fromkeys(plan.archive for plan in plans):
        bar.set_description(f"pack {archive.path.name}")

        def name(k: int, archive=archive) -> str:
            i = archive.group[k]
            folder = FOLDERS[judgments.kind_of(plans[i].group)][archive.folder[k]]
            return f"{archive.prefixes[i]}/{folder}/{plans[i].names[archive.row[k]]}{archive.suffixes[k]}"

        def tasks(archive=archive, name=name) -> Iterator[_MemberTask]:
            for k, data in _cut(archive, bar, name):
                i, f = archive.group[k], archive.folder[k]
                image = f < len(FOLDERS[judgments.kind_of(plans[i].group)]) - 1
                yield _MemberTask(data, f"{archive.path}: {_shown(name(k))}", image, size, (i, f, archive.row[k]))

        members = tasks()
        try:
            for (i, f, row), value in decoder.decoded_chunks(_chunks(members, MEMBER_CHUNK, MEMBER_CHUNK_BYTES), ahead):
                filled[i][row, f] = True
                if isinstance(value, np.ndarray):
                    datasets[i][1][f].put(row, value)
                else:
                    targets[i][row] = value
                check()
        finally:
            members.close()
    for i, plan in enumerate(plans):
        if not filled[i].all():  # (cannot happen: pass 1 paired every stem)
            raise PackError(f"{plan.source}: not every member was found again; run pack again")
        writer.fill(datasets[i][0], 0, {judgments.TARGET[judgments.kind_of(plan.group)]: targets[i]})


class _RowWriter:
    """Writes one image at a time into a dataset of one image per chunk (straight into its chunk when it can)."""

    def __init__(self, ds) -> None:
        self.ds = ds
        self.direct = ds.chunks == (1, *ds.shape[1:]) and ds.id.get_create_plist().get_nfilters() == 0

    def put(self, row: int, image: np.ndarray) -> None:
        if self.direct:  # 20 us instead of 170 for ds[row] = image
            self.ds.id.write_direct_chunk((row, 0, 0, 0), np.ascontiguousarray(image, np.uint8).tobytes())
        else:
            self.ds[row] = image


def _named_archives(source: Path) -> list[Path]:
    """The archives SOURCE names before any is read: itself (an archive file), or those its folder holds."""
    try:
        if source.name.lower().endswith(ARCHIVE_SUFFIXES) and source.is_file():
            return [source]
        if source.is_dir() and not any((source / k).is_dir() for k in FOLDERS):
            return [source / name for name in bapps_archives() if (source / name).is_file()]
    except OSError:
        pass
    return []


def plan_source(source: str | os.PathLike, group: str | None = None, progress: bool = False) -> list[GroupPlan]:
    """What `pack` would write for SOURCE: a BAPPS root folder, BAPPS archives or a CSV file.

    Archives (a folder holding any of `bapps_archives`, or one ``.tar.gz``/``.tgz``/``.tar``) are
    read once here, to their end (`plan_archives`; `progress`: a bar of the bytes read).
    """
    source = Path(source)
    try:
        if not source.exists():
            raise PackError(f"{source}: no such file or folder")
        if source.suffix.lower() == ".csv":
            if source.is_dir():
                raise PackError(f"{source}: is a folder, not a CSV file")
            if not source.is_file():
                raise PackError(f"{source}: not a regular file")
            return plan_csv(source, group)
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
                if group:
                    raise PackError(f"{source}: --group applies to a CSV source; BAPPS subsets keep their own names")
                return plan_bapps(source)
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
            if group:
                raise PackError(f"{source}: --group applies to a CSV source; BAPPS subsets keep their own names")
            return plan_archives(archives, progress)
    except OSError as err:  # unreadable folders or files, names too long, ...
        raise PackError(f"{err.filename or source}: cannot read ({err.strerror or type(err).__name__})") from None
    raise PackError(
        f"{source}: neither a BAPPS root (a folder holding 2afc/ or jnd/), a folder of BAPPS archives "
        f"({', '.join(bapps_archives())}), a .tar.gz archive nor a .csv file"
    )


# --- signals ----------------------------------------------------------------------------------
class _Signals:
    """Record SIGINT and SIGTERM; `check` raises `Interrupted` at a point where that is safe.

    The handler never raises by itself (unless `raise_now`): an exception raised from a signal
    handler while a ``__del__`` or an h5py callback runs is printed and ignored, and the command
    would finish as if nothing happened. Signals ignored by the parent (a background job's
    SIGINT) stay ignored. Outside the main thread nothing is installed.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self.raise_now = False
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        first = self.received is None
        if first:
            self.received = signum
        if first and self.raise_now:
            self.raise_now = False
            raise Interrupted(signum)

    def check(self) -> None:
        if self.received is not None:
            raise Interrupted(self.received)

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                previous = signal.getsignal(sig)
                if previous is not signal.SIG_IGN:
                    self._previous[sig] = previous
                    signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()


def _decode(task: tuple[tuple[str, ...], float | str, int]) -> tuple[np.ndarray, float]:
    paths, target, size = task
    images = np.stack([load_image(p, size).transpose(2, 0, 1) for p in paths])
    value = load_fraction(target) if isinstance(target, str) else float(target)
    return images, value


class _MemberTask(NamedTuple):
    """One archive member to decode: its bytes, its name for messages, image or judgment, and where it goes."""

    data: bytes
    name: str
    image: bool
    size: int
    tag: tuple[int, int, int]  # (group index, folder index, row)


def _decode_member(task: _MemberTask) -> tuple[tuple[int, int, int], np.ndarray | float]:
    if task.image:
        value = np.ascontiguousarray(load_image(task.data, task.size, name=task.name).transpose(2, 0, 1))
    else:
        value = load_fraction(task.data, name=task.name)
    return task.tag, value


def _decode_task(task):
    return _decode_member(task) if isinstance(task, _MemberTask) else _decode(task)


def _decode_many(tasks: list) -> list:
    return [_decode_task(t) for t in tasks]


def _chunks(tasks: Iterable, items: int, nbytes: int = 0) -> Iterator[list]:
    """`tasks` in lists of at most `items` (and, when `nbytes`, of about `nbytes` of member data)."""
    chunk: list = []
    held = 0
    for task in tasks:
        chunk.append(task)
        held += len(task.data) if nbytes else 0
        if len(chunk) >= items or (nbytes and held >= nbytes):
            yield chunk
            chunk, held = [], 0
    if chunk:
        yield chunk


def _drain(tasks, inbox: queue.SimpleQueue) -> None:
    """Move chunks from the task pipe into `inbox` as soon as they arrive (None at the end)."""
    while True:
        try:
            chunk = tasks.recv()
        except (EOFError, OSError):
            chunk = None
        inbox.put(chunk)
        if chunk is None:
            return


def _watch_parent(parent: int) -> None:
    """Exit this process as soon as its parent is gone (reparented: `os.getppid` changes)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _die_with_parent(parent: int, inherited: Sequence[int]) -> None:
    """Make sure a worker never outlives `parent`, even one killed with SIGKILL (no clean-up runs).

    Linux: PR_SET_PDEATHSIG, the kernel kills this process when the parent dies (then the
    parent is checked again: it may have died before the call). Anywhere: a thread that exits
    when the parent is gone, within half a second. And the pipe ends the parent holds, which a
    forked child inherits, are closed here: with them open, a write to a dead parent would block
    forever instead of failing (EPIPE).
    """
    for fd in inherited:
        try:
            os.close(fd)
        except OSError:
            pass
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="pack-parent").start()


def _worker(tasks, results, parent: int | None = None, inherited: Sequence[int] = ()) -> None:
    """A decoding process: chunks of tasks in, ("ok", items) or ("error", exception) out, until EOF.

    A thread takes the tasks off their pipe at once: while this process waits for the parent to
    read a result larger than a pipe holds, the parent must never wait to hand it a task (a
    deadlock as soon as more tasks are in flight than the pipe holds). The worker dies with
    its parent (`_die_with_parent`).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if parent is not None:
        _die_with_parent(parent, inherited)
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    threading.Thread(target=_drain, args=(tasks, inbox), daemon=True, name="pack-tasks").start()
    while True:
        chunk = inbox.get()
        if chunk is None:
            return
        try:
            reply: tuple = ("ok", _decode_many(chunk))
        except Exception as err:
            try:
                pickle.dumps(err)
            except Exception:
                err = PackError(f"decoding failed: {type(err).__name__}: {err}")
            reply = ("error", err)
        results.send(reply)


class _Decoder:
    """Decodes tasks in order, in `workers` processes (or in this one), with bounded memory.

    Each worker has its own pipes: no lock is shared with the parent, so a worker killed from
    outside (the OOM killer, a SIGTERM to the whole process group) is reported as one error
    instead of hanging the parent, as it can hang `multiprocessing.Pool`. Waits poll `check`,
    so that a recorded signal ends them. `close` kills the workers.
    """

    def __init__(self, workers: int, check: Callable[[], None], source: str = "pack") -> None:
        self.check = check
        self.source = source
        self.procs: list = []
        self.tasks: list = []
        self.results: list = []
        self.turn = 0
        if workers < 2:
            return
        ctx = multiprocessing.get_context()
        forked = ctx.get_start_method() == "fork"  # a forked child holds copies of all the parent's descriptors
        try:
            for _ in range(workers):
                task_out, task_in = ctx.Pipe(duplex=False)
                result_out, result_in = ctx.Pipe(duplex=False)
                # The parent's ends, this worker's and the earlier ones': closed in the child (same numbers there).
                inherited = [c.fileno() for c in (*self.tasks, *self.results, task_in, result_out)] if forked else []
                proc = ctx.Process(
                    target=_worker,
                    args=(task_out, result_in, os.getpid(), inherited),
                    daemon=True,
                    name="pack-decoder",
                )
                proc.start()
                task_out.close()
                result_in.close()
                self.procs.append(proc)
                self.tasks.append(task_in)
                self.results.append(result_out)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for proc in self.procs:
            if proc.exitcode is None:
                proc.kill()
        for proc in self.procs:
            proc.join()
        for conn in (*self.tasks, *self.results):
            conn.close()
        self.procs, self.tasks, self.results = [], [], []

    def _receive(self, w: int) -> list:
        conn, proc = self.results[w], self.procs[w]
        while True:
            ready = mp_connection.wait([conn, proc.sentinel], timeout=0.05)
            self.check()
            if conn in ready:
                try:
                    status, payload = conn.recv()
                except (EOFError, OSError):
                    break
                if status == "error":
                    raise payload
                return payload
            if ready:
                break
        proc.join(1)
        code = proc.exitcode
        how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"status {code}"
        raise PackError(
            f"{self.source}: a decoding worker process ended unexpectedly ({how}: killed, or out of memory?)"
        )

    def decoded(self, tasks: Iterable, chunk: int = 16, ahead: int = 64) -> Iterator:
        """Decoded items in order, with at most `ahead` chunks of `chunk` tasks in flight.

        (`Pool.imap` has no back-pressure: its workers would run ahead of a slow writer.)
        """
        return self.decoded_chunks(_chunks(tasks, chunk), ahead)

    def decoded_chunks(self, chunks: Iterable[list], ahead: int = 64) -> Iterator:
        """Decoded items of `chunks` (lists of tasks, taken as they come) in order, `ahead` chunks in flight at most."""
        if not self.procs:
            for tasks in chunks:
                for task in tasks:
                    self.check()
                    yield _decode_task(task)
            return
        pending: deque = deque()
        for tasks in chunks:
            self.check()
            w = self.turn
            self.turn = (self.turn + 1) % len(self.procs)
            self.tasks[w].send(tasks)
            pending.append(w)
            if len(pending) >= ahead:
                yield from self._receive(pending.popleft())
        while pending:
            yield from self._receive(pending.popleft())


def pack(
    source: str | os.PathLike,
    out: str | os.PathLike,
    size: int = 64,
    workers: int | None = None,
    group: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Pack SOURCE into the judgments file OUT; return OUT. See the module docstring.

    Raises `Interrupted` (a KeyboardInterrupt carrying the exit status) on SIGINT or SIGTERM.
    """
    from tqdm import tqdm

    if not 1 <= size <= MAX_SIZE:
        raise PackError(f"--size must be a number of pixels from 1 to {MAX_SIZE}, got {size}")
    if workers is not None and workers < 1:
        raise PackError(f"--workers must be at least 1, got {workers}")
    # the target's folder now; whether it exists only once the inputs are known (an input that
    # exists must not be answered with "pass --overwrite"). Archives are known before they are read
    # (a minute for BAPPS): all of it now.
    named = _named_archives(Path(source))
    out = outputs.check_output(out, overwrite if named else True, inputs=[source, *named], what="judgments file")
    with _Signals() as signals:
        signals.raise_now = True  # planning holds nothing to clean up
        plans = plan_source(source, group, progress)
        signals.raise_now = False
        signals.check()
        # `pack j.csv j.csv --overwrite`, or an output that is one of the images or .npy files
        outputs.check_output(out, overwrite, inputs=[p for plan in plans for p in plan.files()], what="judgments file")
        total = sum(p.n for p in plans)
        item_bytes = max(len(judgments.image_keys(judgments.kind_of(p.group))) for p in plans) * 3 * size * size
        block = max(1, min(BLOCK, BLOCK_BYTES // item_bytes))
        chunk = min(16, block)
        ahead = max(2, min(64, IN_FLIGHT_BYTES // (chunk * item_bytes)))
        _check_free_space(out, plans, size)
        archives = list(dict.fromkeys(p.archive for p in plans if p.archive))
        if archives:  # members to decode, in chunks of MEMBER_CHUNK
            members = sum(p.n * len(FOLDERS[judgments.kind_of(p.group)]) for p in plans)
            workers = min(workers or os.cpu_count() or 1, math.ceil(members / MEMBER_CHUNK))
            bar_options = dict(total=sum(a.stamp[0] for a in archives), unit="B", unit_scale=True)
        else:
            workers = min(workers or os.cpu_count() or 1, math.ceil(total / chunk))
            bar_options = dict(total=total, unit="item", desc=f"pack {out.name}")
        decoder = _Decoder(workers, signals.check, str(source))  # before the HDF5 file is open: workers fork without it
        try:
            with (
                judgments.write(out, overwrite=overwrite, before_rename=signals.check) as writer,
                tqdm(disable=not progress, **bar_options) as bar,
            ):
                if archives:
                    _write_archives(writer, plans, decoder, size, signals.check, bar)
                for plan in plans if not archives else ():
                    _write_group(writer, plan, decoder, size, block, chunk, ahead, signals.check, bar)
        finally:
            decoder.close()
    signals.check()  # a signal after the rename: the file is complete, the command still stops
    return out


def _check_free_space(out: Path, plans: list[GroupPlan], size: int) -> None:
    """Refuse up front when the output's folder lacks the space the file will take (about)."""
    need = 1 << 20
    for plan in plans:
        per_item = len(judgments.image_keys(judgments.kind_of(plan.group))) * 3 * size * size + 4
        need += plan.n * (per_item + (2 if plan.votes is not None else 0) + (24 if plan.names else 0))
    try:
        st = os.statvfs(out.parent)
    except (OSError, AttributeError):  # no statvfs (Windows), or it failed: the write itself will tell
        return
    free = st.f_bavail * st.f_frsize
    if st.f_blocks and free < need:  # (pseudo file systems report no size at all)
        raise PackError(f"{out}: the judgments file needs about {_size(need)} and {out.parent} has {_size(free)} free")


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} GB"


def _write_group(
    writer, plan: GroupPlan, decoder: _Decoder, size: int, block: int, chunk: int, ahead: int, check, bar
) -> None:
    n = plan.n
    kind = judgments.kind_of(plan.group)
    g = writer.create_group(
        plan.group, n, (size, size), plan.source, votes=plan.votes is not None, names=plan.names is not None
    )
    tasks = [(imgs, t, size) for imgs, t in zip(plan.images, plan.targets)]
    results = decoder.decoded(tasks, chunk, ahead)
    keys = judgments.image_keys(kind)
    for start in range(0, n, block):
        items = [next(results) for _ in range(min(block, n - start))]
        stacked = np.stack([b[0] for b in items])
        arrays = {k: stacked[:, i] for i, k in enumerate(keys)}
        arrays[judgments.TARGET[kind]] = np.array([b[1] for b in items], np.float32)
        if plan.votes is not None:
            arrays["votes"] = np.array(plan.votes[start : start + len(items)], np.uint16)
        if plan.names is not None:
            arrays["names"] = np.array(plan.names[start : start + len(items)], dtype=object)
        check()
        writer.fill(g, start, arrays)
        bar.update(len(items))
