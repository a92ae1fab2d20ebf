"""Requests of a download (`pack.http`): HTTP errors, refused connections, silent servers, redirect loops, file://
and local folders, bad URLs and timeouts: one line each."""

from __future__ import annotations

import http.server
import socket
import threading
import time

import pytest
from bapps_mirror import ARCHIVES, part_of
from bapps_mirror import run_download as run
from conftest import assert_refused


def test_404_is_one_line(mirror, tmp_path, capfd):
    mirror.missing.add("twoafc_val.tar.gz")
    out_dir = tmp_path / "bapps"
    line = assert_refused(
        ["download", "bapps", str(out_dir), "--parts", "val", "--base-url", mirror.url, "--quiet"], capfd, out_dir
    )
    assert f"{mirror.url}twoafc_val.tar.gz" in line and "404" in line


def test_connection_refused_is_one_fast_line(tmp_path, capfd):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    out_dir = tmp_path / "bapps"
    start = time.perf_counter()
    line = assert_refused(
        ["download", "bapps", str(out_dir), "--base-url", f"http://127.0.0.1:{port}/", "--quiet"], capfd, out_dir
    )
    assert time.perf_counter() - start < 5
    assert f"http://127.0.0.1:{port}/twoafc_train.tar.gz" in line and "--base-url" in line
    assert "refused" in line.lower()


def test_silent_server_times_out_and_keeps_the_part(mirror, tmp_path, capfd):
    name = "jnd.tar.gz"
    mirror.stall_after[name] = (1000, 3.0)
    out_dir = tmp_path / "bapps"
    start = time.perf_counter()
    status, _, err = run(
        ["bapps", str(out_dir), "--parts", "jnd", "--base-url", mirror.url, "--quiet", "--timeout", "0.5"], capfd
    )
    assert time.perf_counter() - start < 2.5
    assert status == 2 and err.count("error:") == 1 and "no data for 0.5 s" in err
    assert part_of(out_dir, name).stat().st_size == 1000


def test_file_url_and_local_folder_work(served, tmp_path, capfd):
    out_dir = tmp_path / "bapps"
    status, out, err = run(["bapps", str(out_dir), "--base-url", served.as_uri(), "--quiet"], capfd)
    assert status == 0, err
    for name in ARCHIVES.values():
        assert (out_dir / name).read_bytes() == (served / name).read_bytes()
    # a partial copy resumes from a plain folder path too
    (out_dir / "jnd.tar.gz").unlink()
    part = part_of(out_dir, "jnd.tar.gz")
    part.write_bytes((served / "jnd.tar.gz").read_bytes()[:500])
    status, out, err = run(["bapps", str(out_dir), "--parts", "jnd", "--base-url", str(served), "--quiet"], capfd)
    assert status == 0, err
    assert (out_dir / "jnd.tar.gz").read_bytes() == (served / "jnd.tar.gz").read_bytes() and not part.exists()
    line = assert_refused(
        ["download", "bapps", str(tmp_path / "x"), "--base-url", (tmp_path / "nowhere").as_uri(), "--quiet"],
        capfd,
        tmp_path / "x",
    )
    assert "no such file" in line


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--base-url", "http://[::1/"], ["--base-url http://[::1/: not a valid URL"]),
        (["--timeout", "inf"], ["--timeout inf", "from 0 to 86400"]),
        (["--timeout", "nan"], ["--timeout nan"]),
    ],
)
def test_bad_urls_and_timeouts_are_one_line(extra, words, tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = assert_refused(["download", "bapps", "D", "--parts", "jnd", *extra], capfd, tmp_path)
    assert all(w in line for w in words), line
    assert not (tmp_path / "D").exists()


class _Loop(http.server.BaseHTTPRequestHandler):
    """Redirects every GET to itself."""

    def do_GET(self):  # noqa: N802
        self.send_response(302)
        self.send_header("Location", self.path)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_redirect_loop_is_one_line_and_leaves_no_folder(tmp_path, capfd):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Loop)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        line = assert_refused(
            ["download", "bapps", str(tmp_path / "new" / "D"), "--parts", "jnd", "--base-url", url, "--quiet"],
            capfd,
            tmp_path,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert "redirects go round in a loop" in line
    assert not (tmp_path / "new").exists()  # the folders it made for nothing are gone
