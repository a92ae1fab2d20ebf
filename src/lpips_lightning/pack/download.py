"""``lpips-lightning download bapps DIR``: fetch the BAPPS archives (`bapps.ARCHIVES`), resumable and checked.

The archives come from `bapps.DEFAULT_BASE_URL` (``--base-url`` points at a mirror,
``http(s)://`` or ``file://``, or at a local folder) and are saved in DIR as they are
(``lpips-lightning pack DIR bapps.h5`` reads them without unpacking). For each archive:

- the bytes go to ``DIR/.NAME.part``, which is the resume state and stays across runs (the
  stale-temporary cleaning of `lpips_lightning.outputs` never matches it); the next run asks
  for the rest with ``Range: bytes=N-`` and appends it, or starts from zero when the server
  answers with the whole file; the ``.part`` is locked while a download writes it;
- the length received is checked against the server's (``Content-Length``, or the total of
  ``Content-Range``), and the archive is read to its end (every tar member, the gzip
  checksum: `check_archive`) before ``.NAME.part`` is renamed to ``NAME``; a damaged archive
  is removed, so that a rerun fetches it fresh;
- an archive already in DIR is skipped (its size checked against the server's when it
  answers) unless ``--force``;
- no network, an HTTP error, a full disk, a folder that cannot be written, a damaged archive:
  one line naming the URL or file and what to do (exit status 2). Ctrl-C keeps the
  ``.part`` and exits with status 130. Every socket operation times out (``--timeout``).
"""

from __future__ import annotations

import errno
import http.client
import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from ..errors import DownloadError, DownloadInterrupted, OutputError, PackError, check_choice
from ..outputs import make_folder, removed_if_unused, size_text
from .archives import archive_members
from .bapps import DATASETS, DEFAULT_BASE_URL
from .http import MAX_TIMEOUT, normalize_base_url, open_at, remote_size

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None

CHUNK = 1 << 20


def _write_chunk(fh: BinaryIO, data: bytes) -> None:
    """Append `data` to the (unbuffered) partial file; one place, so tests can make the disk fill up."""
    view = memoryview(data)
    while view:
        view = view[fh.write(view) :]


def _kept(have: int, part: Path) -> str:
    return f"{size_text(have)} kept in {part}" if have else "nothing received"


def _write_failed(err: OSError, part: Path) -> DownloadError:
    kept = part.stat().st_size if part.exists() else 0
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return DownloadError(
            f"no space left in {part.parent} while writing {part.name[1:-5]} ({_kept(kept, part)}); "
            "free some space and run the same command again to resume"
        )
    return DownloadError(f"cannot write {part} ({err.strerror or repr(err)})")


def check_archive(path: str | os.PathLike, progress: bool = False, what: str | None = None) -> int:
    """Read a ``.tar.gz`` to its end (every member, the gzip checksum); return its member count.

    Raises `DownloadError` naming the file (as `what`, if given) when it is not gzip, not tar,
    cut short or corrupt, a damaged tar header inside an intact gzip stream included: `pack`'s
    own reader (`archive_members`) does the reading.
    """
    path = Path(path)
    with tqdm(
        total=path.stat().st_size,
        unit="B",
        unit_scale=True,
        desc=f"checking {path.name}",
        disable=not progress,
        leave=False,
    ) as bar:
        try:
            members = sum(1 for _ in archive_members(path, bar, shown=what, advice=""))
        except PackError as err:
            raise DownloadError(str(err)) from None
    if not members:
        raise DownloadError(f"{what or path} is an empty archive")
    return members


def _lock(fh: BinaryIO, part: Path) -> None:
    if fcntl is None:  # not POSIX: no protection against two downloads into one folder
        return
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise DownloadError(f"another download is writing {part}; wait for it to finish") from None


def fetch(
    url: str, target: str | os.PathLike, force: bool = False, timeout: float = 30.0, progress: bool = True
) -> Path:
    """Download `url` to `target` through ``.NAME.part`` (resumed if present), check it, rename it.

    Returns `target`. An existing `target` is kept (and its size checked against the server's
    when it answers) unless `force`. Raises `DownloadError` / `OutputError` with one line;
    Ctrl-C raises `DownloadInterrupted` with the ``.part`` kept.
    """
    target = Path(target)
    name = target.name
    part = target.with_name(f".{name}.part")
    if target.is_dir() or part.is_dir():
        raise OutputError(f"{target if target.is_dir() else part} is a folder; move it away to download {name}")
    if target.exists() and not force:
        _report_existing(url, target, timeout)
        return target
    try:
        try:
            fh = open(part, "ab", buffering=0)  # unbuffered: nothing left to flush when the disk is full
        except OSError as err:
            raise OutputError(f"cannot write {part} ({err.strerror or repr(err)})") from None
        with fh:  # locked until the archive is checked and renamed
            _lock(fh, part)
            try:
                members = _download_locked(fh, url, part, target, force, timeout, progress)
            finally:  # an empty .part is removed only under its lock: a refused second download leaves it
                if part.is_file() and part.stat().st_size == 0:
                    part.unlink(missing_ok=True)
    except KeyboardInterrupt:
        kept = part.stat().st_size if part.is_file() else 0
        where = f"{size_text(kept)} of {name} kept in {part}" if kept else f"nothing of {name} had arrived"
        raise DownloadInterrupted(f"interrupted: {where}; run the same command again to resume") from None
    print(f"{name}: {size_text(target.stat().st_size)}, {members} entries, saved as {target}")
    return target


def _download_locked(
    fh: BinaryIO, url: str, part: Path, target: Path, force: bool, timeout: float, progress: bool
) -> int:
    """Under `part`'s lock: receive into it, check the archive, give it its name; return its entry count."""
    if force:
        fh.truncate(0)
    _receive_into(fh, url, part, timeout, progress)
    try:
        os.fsync(fh.fileno())
    except OSError as err:
        raise _write_failed(err, part) from None
    try:
        members = check_archive(part, progress, what="the downloaded file")
    except DownloadError as err:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"{url}: {err}; deleted it, run the same command again to fetch it fresh "
            "(or pass --base-url with another mirror if it stays damaged)"
        ) from None
    try:
        os.replace(part, target)
    except OSError as err:
        raise OutputError(f"cannot rename {part} to {target} ({err.strerror or repr(err)})") from None
    return members


def _report_existing(url: str, target: Path, timeout: float) -> None:
    have = target.stat().st_size
    try:
        expected = remote_size(url, timeout)
    except DownloadError as err:
        print(f"{target.name}: already in {target.parent} ({size_text(have)}), skipped; size not checked ({err})")
        return
    if expected is not None and expected != have:
        raise DownloadError(f"{target} is {have} bytes but {url} is {expected}; pass --force to fetch it again")
    checked = "same size as the server's" if expected is not None else "the server does not say its size"
    print(
        f"{target.name}: already in {target.parent} ({size_text(have)}, {checked}), skipped; --force fetches it again"
    )


def _receive_into(fh: BinaryIO, url: str, part: Path, timeout: float, progress: bool) -> None:
    """Append the rest of `url` to the open partial file; raise unless it ends complete."""
    name = part.name[1:-5]
    have = fh.seek(0, os.SEEK_END)
    reply = open_at(url, have, timeout)
    if reply.status == 416:
        total = reply.total if reply.total is not None else remote_size(url, timeout)
        if total == have:
            return  # complete already: only the check and the rename were missing
        print(
            f"{name}: {part} does not fit the server's file ({size_text(have)} of {size_text(total)}); starting again"
        )
        fh.truncate(0)
        have = 0
        reply = open_at(url, 0, timeout)
    if reply.stream is None:
        raise DownloadError(f"{url}: the server answered a range that was not asked for")
    if reply.start != have:
        if have:
            print(f"{name}: the server does not resume downloads; starting again from zero")
        fh.truncate(0)
        have = 0
    total = reply.total
    read = getattr(reply.stream, "read1", reply.stream.read)
    with (
        reply.stream,
        tqdm(
            total=total,
            initial=have,
            unit="B",
            unit_scale=True,
            desc=name,
            disable=not progress,
            dynamic_ncols=True,
        ) as bar,
    ):
        while True:
            try:
                data = read(CHUNK)
            except TimeoutError:
                raise DownloadError(
                    f"{url}: no data for {timeout:g} s ({_kept(have, part)}); "
                    "check the network and run the same command again to resume"
                ) from None
            except (OSError, http.client.HTTPException) as err:
                raise DownloadError(
                    f"{url}: connection lost ({getattr(err, 'strerror', None) or err!r}; {_kept(have, part)}); "
                    "run the same command again to resume"
                ) from None
            if not data:
                break
            if total is not None and have + len(data) > total:
                fh.truncate(0)
                raise DownloadError(f"{url}: the server sent more than the {total} bytes it announced; run again")
            try:
                _write_chunk(fh, data)
            except OSError as err:
                raise _write_failed(err, part) from None
            have += len(data)
            bar.update(len(data))
    if total is not None and have < total:
        raise DownloadError(
            f"{url}: the connection closed after {have} of {total} bytes ({_kept(have, part)}); "
            "run the same command again to resume"
        )


def prepare_folder(folder: str | os.PathLike) -> Path:
    """Create `folder` if needed; refuse a file, or a folder that cannot be written, in one line."""
    folder = make_folder(folder, "DIR")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"folder {folder} is not writable; choose another DIR")
    return folder


def download(
    dataset: str,
    folder: str | os.PathLike,
    parts: Sequence[str] | None = None,
    base_url: str = DEFAULT_BASE_URL,
    force: bool = False,
    timeout: float = 30.0,
    progress: bool = True,
) -> dict[str, Path]:
    """Fetch `parts` (default: all) of `dataset` into `folder`; return {part: archive path}."""
    check_choice("dataset", dataset, list(DATASETS))
    table = DATASETS[dataset]
    parts = list(dict.fromkeys(parts or table))
    for part in parts:
        check_choice("part", part, list(table))
    if not 0 < timeout <= MAX_TIMEOUT:  # NaN fails too; beyond a day the socket's deadline overflows
        raise DownloadError(f"--timeout {timeout}: give a number of seconds from 0 to {MAX_TIMEOUT:g}")
    base_url = normalize_base_url(base_url)
    with removed_if_unused(folder):  # a download that got nothing leaves no new folder (a kept .part stays)
        folder = prepare_folder(folder)
        return {part: fetch(base_url + table[part], folder / table[part], force, timeout, progress) for part in parts}
