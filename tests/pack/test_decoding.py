"""The decoding pool (`pack.decoding`): in order, bounded, never a hang; a dead worker is one line, and workers
never outlive pack."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import alive, assert_refused, children, make_bapps, start_pack
from pack_inputs import slow_csv

from lpips_lightning.errors import PackError
from lpips_lightning.pack import decoding
from lpips_lightning.pack.pack import pack


@pytest.fixture
def slow_source(tmp_path) -> Path:
    return slow_csv(tmp_path)


def _tasks_code(size: int, fmt: str, n: int) -> str:
    """Python source that makes `tasks`: `n` member tasks of one random size x size image saved as `fmt`."""
    return (
        "import io, numpy as np\n"
        "from PIL import Image\n"
        "from lpips_lightning.pack.decoding import Decoder, MemberTask\n"
        "rng = np.random.default_rng(0)\n"
        f"image = Image.fromarray(rng.integers(0, 256, ({size}, {size}, 3), dtype=np.uint8))\n"
        f"buf = io.BytesIO(); image.save(buf, {fmt!r})\n"
        f"tasks = [MemberTask(buf.getvalue(), f'm{{i}}', True, {size}, (0, 0, i)) for i in range({n})]\n"
    )


def test_decoder_never_deadlocks_on_messages_larger_than_a_pipe():
    """Tasks and results both larger than a pipe holds, many chunks in flight: must finish, in order."""
    code = _tasks_code(160, "PNG", 400) + (
        "d = Decoder(2, lambda: None)\n"
        "rows = [tag[2] for tag, image in d.decoded(tasks, chunk=16, ahead=64)]\n"
        "d.close()\n"
        "assert rows == list(range(400)), rows\n"
        "print('done')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "done" in result.stdout, result.stderr


def test_closing_mid_stream_never_hangs():
    """A refusal stops pack while workers send large results: closing must not leave half a message in the pipe.

    (Killing the workers there made the pool's manager thread wait forever for the rest of it.)
    """
    code = _tasks_code(256, "BMP", 2000) + (
        "for attempt in range(10):\n"
        "    d = Decoder(2, lambda: None)\n"
        "    for n, _ in enumerate(d.decoded(tasks, chunk=32, ahead=8)):\n"
        "        if n == 100:\n"
        "            break\n"
        "    d.close()\n"
        "print('done')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "done" in result.stdout, result.stderr


def test_chunks_by_count_and_by_bytes():
    tasks = [decoding.MemberTask(b"x" * 10, "m", True, 1, (0, 0, i)) for i in range(7)]
    assert [len(c) for c in decoding.chunks(tasks, 3)] == [3, 3, 1]
    assert [len(c) for c in decoding.chunks(tasks, 5, nbytes=25)] == [3, 3, 1]


def test_worker_errors_come_back_as_one_line(tmp_path, capfd):
    make_bapps(tmp_path / "b", n=40, size=8, jnd=False)
    (tmp_path / "b/2afc/val/cnn/p1/000033.png").write_bytes(b"broken")
    line = assert_refused(
        ["pack", str(tmp_path / "b"), str(tmp_path / "o.h5"), "--quiet", "--workers", "2"], capfd, tmp_path
    )
    assert "000033.png: image does not decode" in line
    with pytest.raises(PackError):
        pack(tmp_path / "b", tmp_path / "o.h5", workers=2, progress=False)


def test_a_killed_worker_is_one_error_not_a_hang(tmp_path, slow_source):
    children = Path("/proc/self/task") / str(os.getpid()) / "children"
    if not children.exists():
        pytest.skip("needs /proc/PID/task/PID/children")
    out = tmp_path / "o.h5"
    proc = start_pack(slow_source, out)
    workers = (Path("/proc") / str(proc.pid) / "task" / str(proc.pid) / "children").read_text().split()
    assert len(workers) == 2
    os.kill(int(workers[0]), signal.SIGKILL)  # the OOM killer's way
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2, err
    assert (
        err.strip() == f"error: {slow_source}: a decoding worker process ended unexpectedly "
        "(signal SIGKILL: killed, or out of memory?)"
    ), err
    assert not out.exists() and not list(tmp_path.glob(".o.h5.tmp-*"))


@pytest.mark.slow
def test_workers_die_with_a_parent_killed_outright(tmp_path, slow_source):
    if not glob.glob(f"/proc/{os.getpid()}/task/*/children"):
        pytest.skip("needs /proc/PID/task/TID/children")
    out = tmp_path / "o.h5"
    proc = start_pack(slow_source, out)
    workers = children(proc.pid)
    assert len(workers) == 2, workers
    proc.kill()  # SIGKILL to pack alone: nothing of it runs again
    try:
        # The workers hold copies of stdout/stderr: this returns only once they are gone too.
        proc.communicate(timeout=10)
        deadline = time.monotonic() + 5
        while any(alive(pid) for pid in workers):
            assert time.monotonic() < deadline, f"decoding workers outlived pack: {workers}"
            time.sleep(0.05)
    finally:
        for pid in workers:  # no orphans left behind by a failure
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_the_parent_watch_alone_ends_a_worker(monkeypatch):
    """A worker's watch thread exits the worker when its parent changes (the parent is gone)."""
    exits = []
    monkeypatch.setattr(decoding.os, "getppid", lambda: 1)
    monkeypatch.setattr(decoding.os, "_exit", exits.append)
    monkeypatch.setattr(decoding.time, "sleep", lambda s: None)
    decoding._watch_parent(os.getpid())
    assert exits == [1]
