"""Pack BAPPS folders or a CSV of custom judgments into one judgments file.

``lpips-lightning pack SOURCE OUT.h5 [--size 64] [--workers N] [--group G] [--overwrite]``

Every input problem is found before anything is written where it can be (folder layout,
stems, CSV columns and values, the output's folder, an output that is one of the inputs);
images and ``.npy`` judgments are checked as they are decoded, in parallel, and streamed
into the file in blocks. The output appears under its name only when complete
(`judgments.write`, through `outputs.atomic_output`).

Ctrl-C and SIGTERM are recorded while packing and acted on between blocks and before the
final rename: the temporary file is removed, the output is left as it was, and the command
exits with status 130 (SIGINT) or 143 (SIGTERM). Decoding workers ignore Ctrl-C; the
parent kills them.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import multiprocessing
import os
import pickle
import queue
import signal
import stat
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing import connection as mp_connection
from pathlib import Path

import numpy as np
from PIL import Image

from . import judgments, outputs
from .errors import LPIPSLightningError, PackError

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


def _sixteen_bit_colour(path: str | os.PathLike, high: np.ndarray, raw: str) -> np.ndarray:
    """RGB uint8 of a 16-bit colour image PIL decoded to `high` (its high bytes), correctly rounded.

    Decodes the file again with the low bytes; if PIL cannot, the high bytes stand (within one
    level of the rounded value, never clipped).
    """
    try:
        with Image.open(path) as im:
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


def _rgb8(im: Image.Image, path: str | os.PathLike) -> np.ndarray:
    """Any decodable image as RGB uint8 (H, W, 3), 16-bit samples scaled (not clipped) to 8 bits."""
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
        rgb = _sixteen_bit_colour(path, rgb, colour16)
    return rgb


def load_image(path: str | os.PathLike, size: int | None = None) -> np.ndarray:
    """Decode an image to RGB uint8 (H, W, 3), resized to size x size (PIL bilinear) when given.

    16-bit images (PNG, TIFF, PGM/PPM; gray or colour) are scaled to 8 bits (value * 255 / 65535,
    rounded); 32-bit integer and floating-point images are refused. The array is writable.
    """
    try:
        with Image.open(path) as im:
            rgb = _rgb8(im, path)
        if size and rgb.shape[:2] != (size, size):
            rgb = np.array(Image.fromarray(rgb).resize((size, size), Image.BILINEAR))
        return rgb
    except LPIPSLightningError:
        raise
    except FileNotFoundError:
        raise PackError(f"{path}: no such image file") from None
    except IsADirectoryError:
        raise PackError(f"{path}: is a folder, not an image file") from None
    except Exception as err:  # PIL raises many kinds for broken files
        raise PackError(f"{path}: image does not decode ({type(err).__name__})") from None


def load_fraction(path: str | os.PathLike) -> float:
    """Read a BAPPS judgment: a ``.npy`` holding one finite number in [0, 1]."""
    try:
        value = np.load(path, allow_pickle=False)
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
    """One group to write: its items, each a tuple of image paths and a judgment (or its .npy path)."""

    group: str
    source: str
    images: list[tuple[str, ...]] = field(default_factory=list)
    targets: list[float | str] = field(default_factory=list)
    votes: list[int] | None = None
    names: list[str] | None = None

    def files(self) -> Iterator[str]:
        """Every file this group reads: images and ``.npy`` judgments."""
        for images in self.images:
            yield from images
        yield from (t for t in self.targets if isinstance(t, str))


# --- finding the items ------------------------------------------------------------------------
def _stems(folder: Path, extensions: set[str]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
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
                group = f"{kind}/{split.name}/{subset.name}"
                if not judgments.GROUP_RE.match(group):
                    raise PackError(
                        f"{subset}: folder names become the group name {group!r}, which may hold only letters, "
                        "digits, '_', '-' and '.'; rename the folder"
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
                plan = GroupPlan(group, str(subset), names=stems)
                image_folders, target_folder = folders[:-1], folders[-1]
                for s in stems:
                    plan.images.append(tuple(str(per_folder[f][s]) for f in image_folders))
                    plan.targets.append(str(per_folder[target_folder][s]))
                plans.append(plan)
    if not plans:
        raise PackError(f"{root}: no subsets found (expected 2afc/<split>/<subset>/ or jnd/<split>/<subset>/)")
    return plans


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
        raise PackError(f"{where}: image {shown} does not exist ({p if len(str(p)) <= 200 else '...'})") from None
    except OSError as err:
        raise PackError(f"{where}: image {shown} cannot be read ({err.strerror or type(err).__name__})") from None
    if stat.S_ISDIR(mode):
        raise PackError(f"{where}: {col} {shown} is a folder, not an image file")
    if not stat.S_ISREG(mode):
        raise PackError(f"{where}: {col} {shown} is not a regular file")
    return str(p)


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
        if votes is not None and votes > MAX_VOTES:
            raise PackError(f"{where}: {votes} votes; the file stores at most {MAX_VOTES} per item")
        plan.images.append(images)
        plan.targets.append(check_fraction(value, where))
        if plan.votes is not None:
            plan.votes.append(votes)  # type: ignore[arg-type]
    if not plan.images:
        raise PackError(f"{path}: no rows below the header")
    return [plan]


def plan_source(source: str | os.PathLike, group: str | None = None) -> list[GroupPlan]:
    """What `pack` would write for SOURCE: a BAPPS root folder or a CSV file."""
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
        if source.is_dir() and any((source / k).is_dir() for k in FOLDERS):
            if group:
                raise PackError(f"{source}: --group applies to a CSV source; BAPPS subsets keep their own names")
            return plan_bapps(source)
    except OSError as err:  # unreadable folders or files, names too long, ...
        raise PackError(f"{err.filename or source}: cannot read ({err.strerror or type(err).__name__})") from None
    raise PackError(f"{source}: neither a BAPPS root (a folder holding 2afc/ or jnd/) nor a .csv file")


# --- signals ----------------------------------------------------------------------------------
class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM while packing; `status` is the exit status to return (128 + signal).

    No message: the CLI prints a bare ``interrupted`` (a KeyboardInterrupt with a message would
    read ``interrupted: <message>``).
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.status = 128 + signum
        super().__init__()

    def __repr__(self) -> str:
        return f"Interrupted({signal.Signals(self.signum).name})"


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


def _decode_many(tasks: list) -> list[tuple[np.ndarray, float]]:
    return [_decode(t) for t in tasks]


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


def _worker(tasks, results) -> None:
    """A decoding process: chunks of tasks in, ("ok", items) or ("error", exception) out, until EOF.

    A thread takes the tasks off their pipe at once: while this process waits for the parent to
    read a result larger than a pipe holds, the parent must never wait to hand it a task (a
    deadlock as soon as more tasks are in flight than the pipe holds).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
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
        try:
            for _ in range(workers):
                task_out, task_in = ctx.Pipe(duplex=False)
                result_out, result_in = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_worker, args=(task_out, result_in), daemon=True, name="pack-decoder")
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

    def decoded(self, tasks: list, chunk: int = 16, ahead: int = 64) -> Iterator[tuple[np.ndarray, float]]:
        """Decoded items in order, with at most `ahead` chunks of `chunk` tasks in flight.

        (`Pool.imap` has no back-pressure: its workers would run ahead of a slow writer.)
        """
        if not self.procs:
            for task in tasks:
                self.check()
                yield _decode(task)
            return
        pending: deque = deque()
        for start in range(0, len(tasks), chunk):
            w = self.turn
            self.turn = (self.turn + 1) % len(self.procs)
            self.tasks[w].send(tasks[start : start + chunk])
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
    # exists must not be answered with "pass --overwrite")
    out = outputs.check_output(out, True, inputs=[source], what="judgments file")
    with _Signals() as signals:
        signals.raise_now = True  # planning holds nothing to clean up
        plans = plan_source(source, group)
        signals.raise_now = False
        signals.check()
        # `pack j.csv j.csv --overwrite`, or an output that is one of the images or .npy files
        outputs.check_output(out, overwrite, inputs=[p for plan in plans for p in plan.files()], what="judgments file")
        total = sum(len(p.images) for p in plans)
        item_bytes = max(len(judgments.image_keys(judgments.kind_of(p.group))) for p in plans) * 3 * size * size
        block = max(1, min(BLOCK, BLOCK_BYTES // item_bytes))
        chunk = min(16, block)
        ahead = max(2, min(64, IN_FLIGHT_BYTES // (chunk * item_bytes)))
        _check_free_space(out, plans, size)
        workers = min(workers or os.cpu_count() or 1, math.ceil(total / chunk))
        decoder = _Decoder(workers, signals.check, str(source))  # before the HDF5 file is open: workers fork without it
        try:
            with (
                judgments.write(out, overwrite=overwrite, before_rename=signals.check) as writer,
                tqdm(total=total, unit="item", disable=not progress, desc=f"pack {out.name}") as bar,
            ):
                for plan in plans:
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
        need += len(plan.images) * (per_item + (2 if plan.votes is not None else 0) + (24 if plan.names else 0))
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
    n = len(plan.images)
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
    # Interrupted (SIGINT, SIGTERM) goes up to cli.main: "interrupted", exit status err.status
    out = pack(args.source, args.out, args.size, args.workers, args.group, args.overwrite, progress=not args.quiet)
    with judgments.open_file(out) as f:
        for name in judgments.groups(f):
            print(f"{name}: {f[name][judgments.TARGET[judgments.kind_of(name)]].shape[0]} items")
    print(f"wrote {out}")
    return 0
