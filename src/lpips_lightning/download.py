"""``lpips-lightning download bapps DIR``: fetch the BAPPS archives, resumable and checked.

The archives are the ones the original's ``scripts/download_dataset.sh`` names, under
``https://perceptual-similarity.s3.us-west-2.amazonaws.com/dataset/`` (``--base-url`` points
at a mirror, ``http(s)://`` or ``file://``, or at a local folder):

=========  ======================  =====================================
part       archive                 unpacks as
=========  ======================  =====================================
``train``  ``twoafc_train.tar.gz``  ``train/<subset>/{ref,p0,p1,judge}/``
``val``    ``twoafc_val.tar.gz``    ``val/<subset>/{ref,p0,p1,judge}/``
``jnd``    ``jnd.tar.gz``           ``jnd/val/<subset>/{p0,p1,same}/``
=========  ======================  =====================================

They are saved in DIR as they are (``lpips-lightning pack DIR bapps.h5`` reads them without
unpacking). For each archive:

- the bytes go to ``DIR/.NAME.part``, which is the resume state and stays across runs (the
  stale-temporary cleaning of `lpips_lightning.outputs` never matches it); the next run asks
  for the rest with ``Range: bytes=N-`` and appends it, or starts from zero when the server
  answers with the whole file;
- the length received is checked against the server's (``Content-Length``, or the total of
  ``Content-Range``), and the archive is read to its end (every tar member, the gzip
  checksum) before ``.NAME.part`` is renamed to ``NAME``; a damaged archive is removed, so
  that a rerun fetches it fresh;
- an archive already in DIR is skipped (its size checked against the server's when it
  answers) unless ``--force``;
- no network, an HTTP error, a full disk, a folder that cannot be written, a damaged archive:
  one line naming the URL or file and what to do (exit status 2). Ctrl-C keeps the
  ``.part`` and exits with status 130. Every socket operation times out (``--timeout``).

Only the standard library speaks HTTP (`urllib.request`); proxies follow the usual
``https_proxy`` variables.
"""

from __future__ import annotations

import errno
import http.client
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import DownloadError, DownloadInterrupted, OutputError, check_choice
from .outputs import make_folder, removed_if_unused

DEFAULT_BASE_URL = "https://perceptual-similarity.s3.us-west-2.amazonaws.com/dataset/"
DATASETS: dict[str, dict[str, str]] = {
    "bapps": {"train": "twoafc_train.tar.gz", "val": "twoafc_val.tar.gz", "jnd": "jnd.tar.gz"},
}
CHUNK = 1 << 20
USER_AGENT = "lpips-lightning-download"
MIRROR_HINT = "check the network connection, or pass --base-url with a mirror or a local copy (file:///path/)"


# --- URLs ----------------------------------------------------------------------------------------
MAX_TIMEOUT = 86400.0  # seconds without data before a download gives up, at most


def normalize_base_url(base: str) -> str:
    """``http(s)://`` or ``file://`` URL of a folder, ending in ``/``; a plain local path becomes ``file://``."""
    if "://" not in base:
        return Path(base).expanduser().resolve().as_uri().rstrip("/") + "/"
    try:
        scheme = urllib.parse.urlsplit(base).scheme.lower()
    except ValueError as err:  # e.g. "http://[::1/": an unclosed IPv6 bracket
        raise DownloadError(f"--base-url {base}: not a valid URL ({err})") from None
    if scheme not in ("http", "https", "file"):
        raise DownloadError(f"--base-url {base}: use an http://, https:// or file:// URL, or a local folder")
    return base.rstrip("/") + "/"


def _local_path(url: str) -> Path:
    return Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))


def _is_file_url(url: str) -> bool:
    return urllib.parse.urlsplit(url).scheme.lower() == "file"


def _size(n: int | None) -> str:
    if n is None:
        return "unknown size"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _unreachable(url: str, reason: object, timeout: float) -> DownloadError:
    if isinstance(reason, TimeoutError):
        detail = f"no answer within {timeout:g} s"
    elif isinstance(reason, OSError) and reason.strerror:
        detail = reason.strerror
    else:
        detail = str(reason) or type(reason).__name__
    return DownloadError(f"cannot reach {url} ({detail}); {MIRROR_HINT}")


# --- one request ---------------------------------------------------------------------------------
@dataclass
class _Reply:
    """What a server sent: the body from byte `start` of a file of `total` bytes (None: not said)."""

    stream: BinaryIO | None
    start: int
    total: int | None
    status: int


def _request(url: str, timeout: float, method: str = "GET", offset: int = 0):
    """`urlopen` with every failure but 416 turned into one `DownloadError` line."""
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    req = urllib.request.Request(url, headers=headers, method=method)
    try:
        return urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416:
            return err
        err.close()
        hint = "; check --base-url" if err.code in (403, 404, 410) else ""
        if 300 <= err.code < 400:  # urllib gave up following redirects (a loop, or too many)
            raise DownloadError(
                f"{url}: HTTP {err.code}: the server's redirects go round in a loop or never end"
            ) from None
        reason = " ".join(str(err.reason).split())
        raise DownloadError(f"{url}: HTTP {err.code} {reason}{hint}") from None
    except urllib.error.URLError as err:
        raise _unreachable(url, err.reason, timeout) from None
    except TimeoutError as err:
        raise _unreachable(url, err, timeout) from None
    except (OSError, http.client.HTTPException) as err:
        raise DownloadError(f"{url}: the server closed the connection or sent a bad reply ({err!r})") from None


def _header_int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total) of ``bytes A-B/T`` or ``bytes */T``; None where not given."""
    if not value or not value.strip().lower().startswith("bytes"):
        return None, None
    span, _, total = value.strip()[5:].strip().partition("/")
    first = _header_int(span.partition("-")[0]) if span != "*" else None
    return first, _header_int(total) if total != "*" else None


def remote_size(url: str, timeout: float = 30.0) -> int | None:
    """The length of the file at `url` (HEAD, or ``stat`` for ``file://``); None when not said."""
    if _is_file_url(url):
        path = _local_path(url)
        if not path.is_file():
            raise DownloadError(f"{url}: no such file; check --base-url")
        return path.stat().st_size
    with _request(url, timeout, method="HEAD") as reply:
        return _header_int(reply.headers.get("Content-Length"))


def _open(url: str, offset: int, timeout: float) -> _Reply:
    """Ask for `url` from byte `offset`; the reply says from where the body really starts."""
    if _is_file_url(url):
        path = _local_path(url)
        try:
            stream = open(path, "rb")  # noqa: SIM115 (closed by the caller)
        except FileNotFoundError:
            raise DownloadError(f"{url}: no such file; check --base-url") from None
        except OSError as err:
            raise DownloadError(f"{url}: cannot read it ({err.strerror})") from None
        total = os.fstat(stream.fileno()).st_size
        start = offset if offset <= total else 0
        stream.seek(start)
        return _Reply(stream, start, total, 206 if start else 200)
    reply = _request(url, timeout, offset=offset)
    status = reply.status if hasattr(reply, "status") else reply.code
    if status == 416:  # nothing after `offset`: the part is complete, or longer than the file
        _, total = _content_range(reply.headers.get("Content-Range"))
        reply.close()
        return _Reply(None, offset, total, 416)
    if status == 206:
        first, total = _content_range(reply.headers.get("Content-Range"))
        if first != offset:  # a range we did not ask for: start again, plainly
            reply.close()
            return _open(url, 0, timeout) if offset else _Reply(None, 0, None, 0)
        if total is None:
            length = _header_int(reply.headers.get("Content-Length"))
            total = None if length is None else offset + length
        return _Reply(reply, offset, total, 206)
    return _Reply(reply, 0, _header_int(reply.headers.get("Content-Length")), status)


# --- writing and checking ------------------------------------------------------------------------
def _write_chunk(fh: BinaryIO, data: bytes) -> None:
    """Append `data` to the (unbuffered) partial file; one place, so tests can make the disk fill up."""
    view = memoryview(data)
    while view:
        view = view[fh.write(view) :]


def _kept(have: int, part: Path) -> str:
    return f"{_size(have)} kept in {part}" if have else "nothing received"


def _write_failed(err: OSError, part: Path) -> DownloadError:
    kept = part.stat().st_size if part.exists() else 0
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return DownloadError(
            f"no space left in {part.parent} while writing {part.name[1:-5]} ({_kept(kept, part)}); "
            "free some space and run the same command again to resume"
        )
    return DownloadError(f"cannot write {part} ({err.strerror or err!r})")


def check_archive(path: str | os.PathLike, progress: bool = False, what: str | None = None) -> int:
    """Read a ``.tar.gz`` to its end (every member, the gzip checksum); return its member count.

    Raises `DownloadError` naming the file (as `what`, if given) when it is not gzip, not tar,
    cut short or corrupt, a damaged tar header inside an intact gzip stream included: `pack`'s
    own reader (`archive_members`) does the reading.
    """
    from tqdm import tqdm

    from .errors import PackError
    from .pack import archive_members

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


# --- one archive ---------------------------------------------------------------------------------
def _lock(fh: BinaryIO, part: Path) -> None:
    try:
        import fcntl
    except ImportError:  # not POSIX: no protection against two downloads into one folder
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
            raise OutputError(f"cannot write {part} ({err.strerror or err!r})") from None
        with fh:  # locked until the archive is checked and renamed
            _lock(fh, part)
            try:
                members = _download_locked(fh, url, part, target, force, timeout, progress)
            finally:  # an empty .part is removed only under its lock: a refused second download leaves it
                if part.is_file() and part.stat().st_size == 0:
                    part.unlink(missing_ok=True)
    except KeyboardInterrupt:
        kept = part.stat().st_size if part.is_file() else 0
        where = f"{_size(kept)} of {name} kept in {part}" if kept else f"nothing of {name} had arrived"
        raise DownloadInterrupted(f"interrupted: {where}; run the same command again to resume") from None
    print(f"{name}: {_size(target.stat().st_size)}, {members} entries, saved as {target}")
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
        raise OutputError(f"cannot rename {part} to {target} ({err.strerror or err!r})") from None
    return members


def _report_existing(url: str, target: Path, timeout: float) -> None:
    have = target.stat().st_size
    try:
        expected = remote_size(url, timeout)
    except DownloadError as err:
        print(f"{target.name}: already in {target.parent} ({_size(have)}), skipped; size not checked ({err})")
        return
    if expected is not None and expected != have:
        raise DownloadError(f"{target} is {have} bytes but {url} is {expected}; pass --force to fetch it again")
    checked = "same size as the server's" if expected is not None else "the server does not say its size"
    print(f"{target.name}: already in {target.parent} ({_size(have)}, {checked}), skipped; --force fetches it again")


def _receive_into(fh: BinaryIO, url: str, part: Path, timeout: float, progress: bool) -> None:
    """Append the rest of `url` to the open partial file; raise unless it ends complete."""
    from tqdm import tqdm

    name = part.name[1:-5]
    have = fh.seek(0, os.SEEK_END)
    reply = _open(url, have, timeout)
    if reply.status == 416:
        total = reply.total if reply.total is not None else remote_size(url, timeout)
        if total == have:
            return  # complete already: only the check and the rename were missing
        print(f"{name}: {part} does not fit the server's file ({_size(have)} of {_size(total)}); starting again")
        fh.truncate(0)
        have = 0
        reply = _open(url, 0, timeout)
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


# --- the whole dataset ---------------------------------------------------------------------------
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
