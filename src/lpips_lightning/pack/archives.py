"""Tar and tar.gz archives read as a stream, never unpacked: their members, each checked, and their data.

Two streaming passes over an archive (tarfile's ``r|``), nothing extracted or written:

1. `archive_members`: every tar header, to the end of the file (the gzip checksum is checked
   there, and what follows the last member must be the end-of-archive NULs: stream-mode
   tarfile takes a damaged header for the end). `check_member` refuses a member that would
   land outside the folder it is extracted into (an absolute path, ``..``, a link leading
   out), a link, a device or a FIFO. The caller notes in an `Archive` where the data of each
   member it wants lies in the decompressed stream.
2. `cut_members`: the stream again, decompressed and cut at those offsets (no header parsed
   twice), to the end, so that the checksum is checked again; a file changed since pass 1 is
   refused.

A file that is not gzip or tar, is cut short or damaged is one `PackError` naming it and the
member reached.
"""

from __future__ import annotations

import gzip
import io
import os
import posixpath
import tarfile
import zlib
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PackError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
READ_BYTES = 1 << 20
END_OF_ARCHIVE = 512  # a tar ends with NUL blocks (two, by the standard; at least one here)


def shown_name(name: str) -> str:
    """An archive member's name for a message: quoted when it holds odd characters, cut when long."""
    text = name if name and name.isprintable() and name.strip() == name else repr(name)
    return text if len(text) <= 200 else f"{text[:120]}...{text[-60:]}"


@dataclass(eq=False)
class Archive:
    """An indexed archive: where the data of each member to decode lies in its (decompressed) tar stream.

    Members are kept in archive order, in flat arrays (BAPPS has 600,000): `offsets` and `sizes`
    of their data, `suffixes` of their names (shared strings); once the subsets are paired,
    `group`, `folder` and `row` say where each goes (the plan's index, its folder's index in
    `bapps.FOLDERS`, the item).
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
    where = (
        "before its first member" if reached is None else f"{'in' if reading else 'after'} member {shown_name(reached)}"
    )
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
    """Every member of the tar or tar.gz `path`, in order (pass 1: their headers, not their data).

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


def cut_members(archive: Archive, bar, name: Callable[[int], str]) -> Iterator[tuple[int, bytes]]:
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


def _check_unchanged(archive: Archive) -> None:
    try:
        st = archive.path.stat()
    except OSError as err:
        raise PackError(f"{archive.path}: cannot read ({err.strerror or type(err).__name__})") from None
    if (st.st_size, st.st_mtime_ns) != archive.stamp:
        raise PackError(f"{archive.path}: changed while it was being packed (its size or time); run pack again")


def check_member(path: Path, info: tarfile.TarInfo) -> None:
    """Refuse a member that would land outside the folder it is extracted into, a link, a device, a FIFO."""
    name, why = info.name, None
    shown = shown_name(name)
    if name.startswith("/") or os.path.isabs(name):
        why = "an absolute path"
    elif ".." in name.split("/"):
        why = "'..' in its path"
    elif info.issym() or info.islnk():
        kind = "symbolic" if info.issym() else "hard"
        base = posixpath.dirname(name) if info.issym() else ""
        target = posixpath.normpath(posixpath.join(base, info.linkname))
        if info.linkname.startswith("/") or target == ".." or target.startswith("../"):
            why = f"a {kind} link to {shown_name(info.linkname)}"
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
