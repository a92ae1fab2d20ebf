"""HTTP(S) and file:// requests for downloads: one GET from a byte offset, a file's size, a folder's URL.

Only the standard library speaks HTTP (`urllib.request`); proxies follow the usual
``https_proxy`` variables. Every failure is one `DownloadError` line naming the URL: no
network, an HTTP error, a redirect loop, a bad reply. A server may ignore the range asked for
(`open_at` then says where its body really starts) or answer 416 (nothing after the offset).
"""

from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..errors import DownloadError

USER_AGENT = "lpips-lightning-download"
MIRROR_HINT = "check the network connection, or pass --base-url with a mirror or a local copy (file:///path/)"
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


def local_path(url: str) -> Path:
    return Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))


def is_file_url(url: str) -> bool:
    return urllib.parse.urlsplit(url).scheme.lower() == "file"


def _unreachable(url: str, reason: object, timeout: float) -> DownloadError:
    if isinstance(reason, TimeoutError):
        detail = f"no answer within {timeout:g} s"
    elif isinstance(reason, OSError) and reason.strerror:
        detail = reason.strerror
    else:
        detail = str(reason) or type(reason).__name__
    return DownloadError(f"cannot reach {url} ({detail}); {MIRROR_HINT}")


@dataclass
class Reply:
    """What a server sent: the body from byte `start` of a file of `total` bytes (None: not said)."""

    stream: BinaryIO | None
    start: int
    total: int | None
    status: int


def request(url: str, timeout: float, method: str = "GET", offset: int = 0):
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
    if is_file_url(url):
        path = local_path(url)
        if not path.is_file():
            raise DownloadError(f"{url}: no such file; check --base-url")
        return path.stat().st_size
    with request(url, timeout, method="HEAD") as reply:
        return _header_int(reply.headers.get("Content-Length"))


def open_at(url: str, offset: int, timeout: float) -> Reply:
    """Ask for `url` from byte `offset`; the reply says from where the body really starts."""
    if is_file_url(url):
        path = local_path(url)
        try:
            stream = open(path, "rb")  # noqa: SIM115 (closed by the caller)
        except FileNotFoundError:
            raise DownloadError(f"{url}: no such file; check --base-url") from None
        except OSError as err:
            raise DownloadError(f"{url}: cannot read it ({err.strerror})") from None
        total = os.fstat(stream.fileno()).st_size
        start = offset if offset <= total else 0
        stream.seek(start)
        return Reply(stream, start, total, 206 if start else 200)
    reply = request(url, timeout, offset=offset)
    status = reply.status if hasattr(reply, "status") else reply.code
    if status == 416:  # nothing after `offset`: the part is complete, or longer than the file
        _, total = _content_range(reply.headers.get("Content-Range"))
        reply.close()
        return Reply(None, offset, total, 416)
    if status == 206:
        first, total = _content_range(reply.headers.get("Content-Range"))
        if first != offset:  # a range we did not ask for: start again, plainly
            reply.close()
            return open_at(url, 0, timeout) if offset else Reply(None, 0, None, 0)
        if total is None:
            length = _header_int(reply.headers.get("Content-Length"))
            total = None if length is None else offset + length
        return Reply(reply, offset, total, 206)
    return Reply(reply, 0, _header_int(reply.headers.get("Content-Length")), status)
