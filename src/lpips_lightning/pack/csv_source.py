"""A CSV of custom judgments as one group plan: ``ref,p0,p1,judge`` (2AFC) or ``p0,p1,same`` (JND).

Image paths are relative to the CSV (or absolute). UTF-8 with or without a byte-order mark
(Excel's export); column names and values are stripped of surrounding spaces and names are
case-blind; blank lines are skipped; extra columns are ignored. A 2AFC judgment is a fraction
(``judge``) or two vote counts (``votes_p0,votes_p1``; both given, they must agree), with an
optional ``votes`` per row. Every problem is one `PackError` naming the line, found before the
output is created: an image that is not a regular file, a value that is not a number in [0, 1].
"""

from __future__ import annotations

import csv
import io
import os
import stat
import unicodedata
from pathlib import Path

import numpy as np

from ..data import judgments
from ..errors import LPIPSLightningError, PackError
from .bapps import check_fraction
from .plans import GroupPlan

MAX_VOTES = np.iinfo(np.uint16).max


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


def read_csv(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
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


def image_path(rel: str, csv_path: Path, where: str, col: str) -> str:
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


def csv_float(text: str) -> float:
    """A CSV number as Python's float reads it, without its digit separators ("0_5" is not 0.5)."""
    if "_" in text:
        raise ValueError(text)
    return float(text)


def _csv_int(text: str) -> int:
    """A CSV count: digits only, no digit separators ("1_0" is not 10)."""
    if "_" in text:
        raise ValueError(text)
    return int(text)


def plan_csv(path: Path, group: str | None = None, parsed: tuple | None = None) -> list[GroupPlan]:
    """One group from a CSV: ``ref,p0,p1,judge`` (2AFC) or ``p0,p1,same`` (JND); paths relative to the CSV.

    `parsed`: the CSV as `read_csv` returned it (a MOS CSV goes to `mos_csv` instead).

    UTF-8 with or without a byte-order mark (Excel's export); names and values are stripped of
    surrounding spaces; blank lines are skipped.
    """
    header, records = parsed or read_csv(path)
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
        images = tuple(image_path(row[col], path, where, col) for col in image_cols)
        try:
            if counted:
                v0, v1 = _csv_int(row["votes_p0"]), _csv_int(row["votes_p1"])
                if v0 < 0 or v1 < 0 or v0 + v1 == 0:
                    raise ValueError
                value, votes = v1 / (v0 + v1), v0 + v1
                given = {c: row[c] for c in (target, "votes") if c in columns}  # also present: must agree
                if target in given and not abs(csv_float(given[target]) - value) <= 1e-6:  # NaN included
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
                value = csv_float(row[target])
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
