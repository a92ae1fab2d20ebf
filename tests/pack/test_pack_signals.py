"""Ctrl-C and SIGTERM while packing (`interrupts.Signals`): status 130/143, nothing half-written, workers gone.

Real signals: ``python -m lpips_lightning.cli pack`` as a process of its own on a source slow
enough to be interrupted half-way, or a signal sent to this process where raising it would be
swallowed (a destructor) or just before the final rename.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import h5py
import pytest
from bapps_mirror import build_bapps_archives
from conftest import alive, children, snapshot, start_pack
from pack_inputs import ONE_ROW, copy_archives, csv_file, slow_archive, slow_csv

import lpips_lightning.pack.pack
from lpips_lightning.cli.main import main
from lpips_lightning.data import judgments
from lpips_lightning.errors import Interrupted
from lpips_lightning.pack import archive_index, sources
from lpips_lightning.pack.pack import pack


@pytest.fixture
def slow_source(tmp_path) -> Path:
    return slow_csv(tmp_path)


@pytest.fixture
def slow_archive_source(tmp_path) -> Path:
    return slow_archive(tmp_path / "data" / "twoafc_val.tar.gz").parent


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> dict:
    return build_bapps_archives(tmp_path_factory.mktemp("mirror"), n=3, size=16)


@pytest.mark.parametrize(
    "signum, whole_group, status",
    [
        (signal.SIGINT, True, 130),  # Ctrl-C in a terminal: the parent and its workers get it
        (signal.SIGTERM, False, 143),  # kill PID
        (signal.SIGTERM, True, 143),  # kill -TERM -PGID, a scheduler stopping the job
        (signal.SIGINT, False, 130),
    ],
)
def test_signal_mid_pack_leaves_nothing(tmp_path, slow_source, signum, whole_group, status):
    out = tmp_path / "o.h5"
    proc = start_pack(slow_source, out)
    workers = children(proc.pid)
    assert len(workers) == 2, workers
    if whole_group:
        os.killpg(proc.pid, signum)
    else:
        os.kill(proc.pid, signum)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == status, err
    assert err.strip() == "interrupted", err  # no worker traceback, nothing else
    assert not out.exists()
    assert not list(tmp_path.glob(".o.h5.tmp-*"))
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in workers):  # the workers went with the parent
        assert time.monotonic() < deadline, "decoding workers outlived pack"
        time.sleep(0.05)


def test_sigterm_keeps_the_file_it_would_overwrite(tmp_path, slow_source):
    out = tmp_path / "o.h5"
    out.write_text("precious")
    proc = start_pack(slow_source, out, "--overwrite")
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143 and err.strip() == "interrupted", err
    assert out.read_text() == "precious"
    assert not list(tmp_path.glob(".o.h5.tmp-*"))


def test_after_sigkill_the_next_pack_removes_the_stale_temp(tmp_path, slow_source, capfd):
    out = tmp_path / "o.h5"
    proc = start_pack(slow_source, out)
    os.killpg(proc.pid, signal.SIGKILL)  # no clean-up possible
    proc.communicate(timeout=30)
    stale = list(tmp_path.glob(".o.h5.tmp-*"))
    assert len(stale) == 1
    small = csv_file(tmp_path, ONE_ROW)
    capfd.readouterr()
    assert main(["pack", str(small), str(out), "--quiet", "--workers", "1"]) == 0
    err = capfd.readouterr().err
    assert err.strip() == f"removed {stale[0]}, left by an interrupted run (process {proc.pid})", err
    assert not list(tmp_path.glob(".o.h5.tmp-*"))
    with judgments.open_file(out) as f:
        assert list(judgments.groups(f)) == ["2afc/train/mine"]


# in-process: the signal arrives where raising it would be swallowed, or just before the rename


class _SignalOnDelete:
    def __init__(self, signum):
        self.signum = signum

    def __del__(self):
        os.kill(os.getpid(), self.signum)


def test_sigint_during_a_destructor_is_not_swallowed(tmp_path, monkeypatch, harmless_sigint):
    """A KeyboardInterrupt raised inside ``__del__`` is printed and ignored by Python: pack must not
    finish with status 0 after such a Ctrl-C."""
    path = csv_file(tmp_path, "ref,p0,p1,judge\n" + "im0.png,im1.png,im2.png,0.5\n" * 3)
    fill = judgments.Writer.fill

    def fill_then_interrupt(g, start, arrays):
        fill(g, start, arrays)
        _SignalOnDelete(signal.SIGINT)  # created and destroyed at once

    monkeypatch.setattr(judgments.Writer, "fill", staticmethod(fill_then_interrupt))
    with pytest.raises(Interrupted) as info:
        pack(path, tmp_path / "o.h5", size=8, workers=1, progress=False)
    assert info.value.status == 130
    assert not (tmp_path / "o.h5").exists() and not list(tmp_path.glob(".o.h5.tmp-*"))


def test_signal_before_the_rename_keeps_the_old_file(tmp_path, monkeypatch, harmless_sigint):
    path = csv_file(tmp_path, ONE_ROW)
    (tmp_path / "o.h5").write_text("precious")
    close = h5py.File.close

    def close_then_terminate(self):
        close(self)
        if (tmp_path / "o.h5").read_text() == "precious":
            os.kill(os.getpid(), signal.SIGTERM)  # the file is complete and closed, not yet renamed

    monkeypatch.setattr(h5py.File, "close", close_then_terminate)
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    with pytest.raises(Interrupted) as info:
        pack(path, tmp_path / "o.h5", size=8, workers=1, overwrite=True, progress=False)
    assert info.value.status == 143
    assert (tmp_path / "o.h5").read_text() == "precious"
    assert not list(tmp_path.glob(".o.h5.tmp-*"))
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # handlers restored


def test_signal_while_planning_stops_at_once(tmp_path, monkeypatch, harmless_sigint):
    path = csv_file(tmp_path, ONE_ROW)
    plan_csv = sources.plan_csv

    def plan_then_interrupt(*args):
        plan_csv(*args)
        os.kill(os.getpid(), signal.SIGINT)
        raise AssertionError("the signal should have stopped planning")  # pragma: no cover

    monkeypatch.setattr(sources, "plan_csv", plan_then_interrupt)
    before = snapshot(tmp_path)
    with pytest.raises(Interrupted):
        pack(path, tmp_path / "o.h5", size=8, workers=1, progress=False)
    assert snapshot(tmp_path) == before


def test_cli_prints_interrupted_with_the_status(tmp_path, capfd, monkeypatch):
    def interrupted(*args, **kwargs):
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(lpips_lightning.pack.pack, "pack", interrupted)  # where `pack_command` imports it from
    capfd.readouterr()
    assert main(["pack", "a.csv", str(tmp_path / "o.h5")]) == 143
    assert capfd.readouterr().err == "interrupted\n"


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_archive_leaves_nothing(tmp_path, slow_archive_source, signum, status):
    out = tmp_path / "o.h5"
    out.write_text("precious")
    proc = start_pack(slow_archive_source, out, "--overwrite")  # in pass 2
    os.killpg(proc.pid, signum)  # the whole group, as a terminal's Ctrl-C or a scheduler does
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == status, err
    assert err.strip() == "interrupted", err
    assert out.read_text() == "precious" and not list(tmp_path.glob(".o.h5.tmp-*"))
    deadline = time.monotonic() + 5
    while True:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "decoding workers outlived pack"
        time.sleep(0.05)


def test_signal_while_indexing_stops_at_once(tmp_path, mirror, monkeypatch, harmless_sigint):
    source = copy_archives(mirror, tmp_path / "data")
    index_member = archive_index._index_member
    calls = []

    def index_then_interrupt(*args):
        calls.append(1)
        index_member(*args)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(archive_index, "_index_member", index_then_interrupt)
    before = snapshot(tmp_path)
    with pytest.raises(Interrupted) as info:
        pack(source, tmp_path / "o.h5", size=16, workers=2, progress=False)
    assert info.value.status == 143 and len(calls) < 10
    assert snapshot(tmp_path) == before
