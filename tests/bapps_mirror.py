"""A tiny BAPPS in the original's archive layout, and a local HTTP mirror serving it.

`build_bapps_archives(folder)` writes ``twoafc_train.tar.gz``, ``twoafc_val.tar.gz`` and
``jnd.tar.gz`` laid out as the real ones (``train/<subset>/{ref,p0,p1,judge}/000000.png|.npy``,
``val/<subset>/...``, ``jnd/val/<subset>/{p0,p1,same}/...``), members in shuffled order, bytes
reproducible for a seed. `serve(folder)` serves a folder on 127.0.0.1 with Range support and
knobs for the failures a download must survive:

    with serve(folder) as mirror:
        mirror.url            # "http://127.0.0.1:PORT/"
        mirror.cut_after[name] = K    # the next GET of `name` closes the connection after K body bytes
        mirror.stall_after[name] = (K, s)  # ... sends K bytes, then waits s seconds
        mirror.missing.add(name)      # 404
        mirror.ignore_range = True    # answers every GET with 200 and the whole file
        mirror.log            # one Request per request: method, name, range, status, sent (body bytes)
"""

from __future__ import annotations

import gzip
import http.server
import io
import re
import tarfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

ARCHIVES = {"train": "twoafc_train.tar.gz", "val": "twoafc_val.tar.gz", "jnd": "jnd.tar.gz"}
SUBSETS = {
    "2afc/train": ("traditional", "cnn", "mix"),
    "2afc/val": ("traditional", "cnn", "superres", "deblur", "color", "frameinterp"),
    "jnd/val": ("traditional", "cnn"),
}


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _npy(value: float) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([value], np.float32))
    return buffer.getvalue()


def _write_tar_gz(path: Path, files: dict[str, bytes], rng: np.random.Generator, shuffle: bool = True) -> None:
    """A gzip'd tar of `files` (member name -> bytes) with directory entries, members shuffled (or in
    folder order, as ``tar czf`` stores a tree), mtime 0."""
    folders = sorted({str(Path(name).parents[i]) for name in files for i in range(len(Path(name).parts) - 1)})
    with open(path, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name in folders:
                info = tarfile.TarInfo(name)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                tar.addfile(info)
            names = list(files)
            for i in rng.permutation(len(names)) if shuffle else np.argsort(names, kind="stable"):
                info = tarfile.TarInfo(names[i])
                info.size, info.mode, info.mtime = len(files[names[i]]), 0o644, 0
                tar.addfile(info, io.BytesIO(files[names[i]]))


def build_bapps_archives(
    folder: str | Path, n: int = 3, size: int = 16, seed: int = 0, shuffle: bool = True, top: str = ""
) -> dict:
    """Write the three BAPPS archives into `folder`.

    `shuffle=False` stores the members folder after folder; `top` goes before every member name
    (``"./"``, ``"dataset/"``: the variants a re-packed archive may have).

    Returns ``{"archives": {part: path}, "groups": {group: {field: array}}}`` where groups are
    named as in the judgments file (``2afc/train/cnn``, ``jnd/val/traditional``) and hold, in
    stem order, ``ref``/``p0``/``p1`` uint8 (n, 3, size, size) and ``judge``/``same`` float32 (n,).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    groups: dict[str, dict[str, np.ndarray]] = {}
    members: dict[str, dict[str, bytes]] = {part: {} for part in ARCHIVES}
    for split, subsets in SUBSETS.items():
        kind, name = split.split("/")
        images, target = (("ref", "p0", "p1"), "judge") if kind == "2afc" else (("p0", "p1"), "same")
        part = name if kind == "2afc" else "jnd"
        prefix = top + (name if kind == "2afc" else "jnd/val")  # the archives' own top folders
        for subset in subsets:
            data = {f: rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8) for f in images}
            values = rng.random(n).astype(np.float32)
            for i in range(n):
                for f in images:
                    members[part][f"{prefix}/{subset}/{f}/{i:06d}.png"] = _png(data[f][i])
                members[part][f"{prefix}/{subset}/{target}/{i:06d}.npy"] = _npy(values[i])
            groups[f"{split}/{subset}"] = {f: v.transpose(0, 3, 1, 2) for f, v in data.items()}
            groups[f"{split}/{subset}"][target] = values
    archives = {}
    for part, filename in ARCHIVES.items():
        archives[part] = folder / filename
        _write_tar_gz(archives[part], members[part], rng, shuffle)
    return {"archives": archives, "groups": groups}


# --- the mirror ----------------------------------------------------------------------------------
@dataclass
class Request:
    method: str
    name: str
    range: str | None
    status: int = 0
    sent: int = 0


@dataclass
class Mirror:
    folder: Path
    url: str = ""
    log: list[Request] = field(default_factory=list)
    cut_after: dict[str, int] = field(default_factory=dict)
    stall_after: dict[str, tuple[int, float]] = field(default_factory=dict)
    missing: set[str] = field(default_factory=set)
    ignore_range: bool = False

    def gets(self, name: str) -> list[Request]:
        return [r for r in self.log if r.method == "GET" and r.name == name]


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "bapps-mirror"

    def log_message(self, format, *args) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        mirror: Mirror = self.server.mirror
        name = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
        record = Request(self.command, name, self.headers.get("Range"))
        mirror.log.append(record)
        path = mirror.folder / name
        if name in mirror.missing or not path.is_file():
            record.status = 404
            self.send_error(404)
            return
        data = path.read_bytes()
        total, start, end = len(data), 0, len(data) - 1
        status = 200
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", record.range or "")
        if match and not mirror.ignore_range:
            start = int(match[1])
            end = min(int(match[2]), total - 1) if match[2] else total - 1
            if start >= total:
                record.status = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{total}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        record.status = status
        payload = data[start : end + 1]
        self.send_response(status)
        self.send_header("Content-Type", "application/x-tar")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{total}")
        self.end_headers()
        if not body:
            return
        cut = mirror.cut_after.pop(name, None) if self.command == "GET" else None
        stall = mirror.stall_after.pop(name, None) if self.command == "GET" else None
        try:
            if cut is not None:
                self._send(record, payload[:cut])
                self.close_connection = True
                return
            if stall is not None:
                self._send(record, payload[: stall[0]])
                time.sleep(stall[1])
                payload = payload[stall[0] :]
            for i in range(0, len(payload), 4096):
                self._send(record, payload[i : i + 4096])
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _send(self, record: Request, chunk: bytes) -> None:
        self.wfile.write(chunk)
        self.wfile.flush()
        record.sent += len(chunk)


@contextmanager
def serve(folder: str | Path, **knobs) -> Iterator[Mirror]:
    """Serve `folder` on 127.0.0.1 (a free port) in a thread; yield its `Mirror` (see the module docs)."""
    mirror = Mirror(Path(folder), **knobs)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.mirror = mirror
    mirror.url = f"http://127.0.0.1:{server.server_address[1]}/"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield mirror
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def run_download(argv: list[str], capfd) -> tuple[int, str, str]:
    """``lpips-lightning download ARGV`` in this process: (exit status, stdout, stderr)."""
    from lpips_lightning.cli.main import main

    capfd.readouterr()
    status = main(["download", *argv])
    out, err = capfd.readouterr()
    return status, out, err


def part_of(folder: Path, name: str) -> Path:
    """Where a download of archive `name` into `folder` keeps its partial file."""
    return folder / f".{name}.part"
