"""`pack`: the output checked once, up front (own inputs, folders, options, free space), written whole or not at all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from bapps_mirror import build_bapps_archives
from conftest import assert_refused, make_bapps
from pack_inputs import ONE_ROW, bad_pack, csv_file

from lpips_lightning import outputs
from lpips_lightning.cli.main import main
from lpips_lightning.data import judgments
from lpips_lightning.errors import PackError
from lpips_lightning.pack.pack import pack


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "lpips_lightning.cli", *map(str, args)], capture_output=True, text=True
    )


def test_bad_sources(tmp_path, capsys):
    bad_pack(tmp_path, capsys, tmp_path / "nope", tmp_path / "o.h5", match="nope: no such file or folder")
    (tmp_path / "empty").mkdir()
    bad_pack(tmp_path, capsys, tmp_path / "empty", tmp_path / "o.h5", match="neither a BAPPS root")


def test_refuses_existing_output_unless_overwrite(tmp_path, capsys):
    make_bapps(tmp_path / "b", n=2, jnd=False)
    (tmp_path / "o.h5").write_text("precious")
    code = main(["pack", str(tmp_path / "b"), str(tmp_path / "o.h5"), "--quiet"])
    assert code == 2 and "already exists; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "o.h5").read_text() == "precious"
    assert main(["pack", str(tmp_path / "b"), str(tmp_path / "o.h5"), "--quiet", "--overwrite", "--workers", "1"]) == 0
    with judgments.open_file(tmp_path / "o.h5") as f:
        assert "2afc/val/cnn" in judgments.groups(f)


def test_failed_pack_keeps_existing_output(tmp_path):
    make_bapps(tmp_path / "b", n=3, jnd=False)
    (tmp_path / "b/2afc/val/cnn/ref/000002.png").write_bytes(b"broken")
    (tmp_path / "o.h5").write_text("precious")
    with pytest.raises(PackError):
        pack(tmp_path / "b", tmp_path / "o.h5", size=32, workers=2, overwrite=True, progress=False)
    assert (tmp_path / "o.h5").read_text() == "precious"
    assert not list(tmp_path.glob(".o.h5.tmp*"))


def test_cli_exit_status_in_a_real_process(tmp_path):
    result = _run_cli("pack", tmp_path / "missing", tmp_path / "o.h5")
    assert result.returncode == 2
    assert result.stderr.strip().endswith("missing: no such file or folder")
    assert "Traceback" not in result.stderr


def _own_input_cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    path = csv_file(tmp_path, ONE_ROW)
    make_bapps(tmp_path / "b", n=2, jnd=False)
    (tmp_path / "link.h5").symlink_to(path)
    (tmp_path / "folder.h5").mkdir()
    npy = tmp_path / "b/2afc/val/cnn/judge/000001.npy"
    return {
        "the CSV itself": ([str(path), str(path), "--overwrite"], "mine.csv is also an input"),
        "an image of the CSV": ([str(path), str(tmp_path / "im1.png"), "--overwrite"], "im1.png is also an input"),
        "a link to the CSV": ([str(path), str(tmp_path / "link.h5"), "--overwrite"], "link.h5 is also an input"),
        "a .npy of the tree": ([str(tmp_path / "b"), str(npy), "--overwrite"], "000001.npy is also an input"),
        "the BAPPS root": ([str(tmp_path / "b"), str(tmp_path / "b"), "--overwrite"], "is a folder"),
        "an existing folder": ([str(path), str(tmp_path / "folder.h5"), "--overwrite"], "folder.h5 is a folder"),
        "a missing folder": ([str(path), str(tmp_path / "nope/o.h5")], "folder " + str(tmp_path / "nope")),
        "existing, no --overwrite": ([str(path), str(tmp_path / "im1.png")], "im1.png is also an input"),
        "size 0": ([str(path), str(tmp_path / "o.h5"), "--size", "0"], "--size must be a number of pixels from 1"),
        "size huge": ([str(path), str(tmp_path / "o.h5"), "--size", "100000"], "from 1 to 4096, got 100000"),
        "workers 0": ([str(path), str(tmp_path / "o.h5"), "--workers", "0"], "--workers must be at least 1"),
        "--group on BAPPS": ([str(tmp_path / "b"), str(tmp_path / "o.h5"), "--group", "2afc/x/y"], "applies to a CSV"),
    }


OUTPUT_CASES = [
    "the CSV itself",
    "an image of the CSV",
    "a link to the CSV",
    "a .npy of the tree",
    "the BAPPS root",
    "an existing folder",
    "a missing folder",
    "existing, no --overwrite",
    "size 0",
    "size huge",
    "workers 0",
    "--group on BAPPS",
]


@pytest.mark.parametrize("case", OUTPUT_CASES)
def test_bad_outputs_and_options(tmp_path, capfd, case):
    argv, expected = _own_input_cases(tmp_path)[case]
    if "--workers" not in argv:
        argv += ["--workers", "1"]
    line = assert_refused(["pack", *argv, "--quiet"], capfd, tmp_path)
    assert expected in line, line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder(tmp_path, capfd):
    path = csv_file(tmp_path, ONE_ROW)
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    try:
        line = assert_refused(["pack", str(path), str(tmp_path / "ro/o.h5"), "--quiet"], capfd, tmp_path)
    finally:
        (tmp_path / "ro").chmod(0o755)
    assert "is not writable" in line


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc")
def test_folder_where_no_file_can_be_created(tmp_path, capfd):
    """/proc passes the folder checks (even as root) and refuses the file itself: the OSError path."""
    path = csv_file(tmp_path, ONE_ROW)
    line = assert_refused(["pack", str(path), "/proc/o.h5", "--quiet", "--workers", "1"], capfd, tmp_path)
    assert line.startswith("error: /proc/o.h5: cannot write the judgments file (") and "errno" not in line


def test_not_enough_free_space_is_refused_up_front(tmp_path, capfd, monkeypatch):
    path = csv_file(tmp_path, ONE_ROW)
    real = os.statvfs(tmp_path)
    fake = type("fake", (), {"f_bavail": 10, "f_frsize": real.f_frsize, "f_blocks": real.f_blocks})
    monkeypatch.setattr(os, "statvfs", lambda p: fake)
    line = assert_refused(["pack", str(path), str(tmp_path / "o.h5"), "--quiet"], capfd, tmp_path)
    assert "o.h5: the judgments file needs about" in line and "free" in line


def test_disk_full_while_writing_leaves_nothing(tmp_path):
    """A file-size limit makes HDF5's writes fail half-way (EFBIG), as a full disk does (ENOSPC)."""
    path = csv_file(tmp_path, "ref,p0,p1,judge\n" + "im0.png,im1.png,im2.png,0.5\n" * 20)
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))\n"
        "from lpips_lightning.cli.main import main\n"
        f"sys.exit(main(['pack', {str(path)!r}, {str(tmp_path / 'o.h5')!r}, '--quiet', '--workers', '1',"
        " '--size', '64']))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"error: {tmp_path / 'o.h5'}: cannot write the judgments file (File too large)"
    assert not list(tmp_path.glob("*.h5*")) and not list(tmp_path.glob(".o.h5*"))


def test_an_output_created_meanwhile_by_another_process_is_not_replaced(tmp_path, monkeypatch, capfd):
    """Two packs of one output: the "exists" check at the start passes for both; the second to
    finish must be refused (without --overwrite), not silently replace the first one's file."""
    path = csv_file(tmp_path, ONE_ROW)
    out = tmp_path / "o.h5"
    write = judgments.Writer.fill

    def fill_then_other_process_finishes(g, start, arrays):
        write(g, start, arrays)
        out.write_bytes(b"the other pack's file")

    monkeypatch.setattr(judgments.Writer, "fill", staticmethod(fill_then_other_process_finishes))
    capfd.readouterr()
    assert main(["pack", str(path), str(out), "--quiet", "--workers", "1"]) == 2
    err = capfd.readouterr().err
    assert (
        err.strip() == f"error: {out} was created by another process while this one wrote it; "
        "pass --overwrite to replace it"
    ), err
    assert out.read_bytes() == b"the other pack's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["im0.png", "im1.png", "im2.png", "mine.csv", "o.h5"]


def test_stale_temp_of_a_dead_process_is_removed_a_live_ones_kept(tmp_path, capfd):
    path = csv_file(tmp_path, ONE_ROW)
    dead = tmp_path / f".o.h5.tmp-{_dead_pid()}"
    dead.write_bytes(b"half a file")
    live = tmp_path / f".o.h5.tmp-{os.getppid()}"
    live.write_bytes(b"another pack, still running")
    capfd.readouterr()
    assert main(["pack", str(path), str(tmp_path / "o.h5"), "--quiet", "--workers", "1"]) == 0
    err = capfd.readouterr().err
    assert f"removed {dead}" in err and err.count("\n") == 1, err
    assert not dead.exists() and live.exists()


def test_a_broken_link_as_the_output_is_refused_before_any_work(tmp_path, capfd):
    path = csv_file(tmp_path, ONE_ROW)
    (tmp_path / "o.h5").symlink_to(tmp_path / "nowhere.h5")
    line = assert_refused(["pack", str(path), str(tmp_path / "o.h5"), "--quiet", "--workers", "1"], capfd, tmp_path)
    assert "o.h5 is a link to" in line and "which does not exist; remove the link first" in line


@pytest.mark.parametrize("source", ["csv", "tree", "archive"])
def test_the_output_is_checked_once(tmp_path, monkeypatch, source):
    if source == "csv":
        path = csv_file(tmp_path, ONE_ROW)
    elif source == "tree":
        make_bapps(tmp_path / "b", n=2, size=8, jnd=False)
        path = tmp_path / "b"
    else:
        path = build_bapps_archives(tmp_path / "a", n=1, size=8)["archives"]["jnd"]
    calls = []
    check = outputs.check_output
    monkeypatch.setattr(outputs, "check_output", lambda *a, **k: calls.append(a) or check(*a, **k))
    pack(path, tmp_path / "o.h5", size=8, workers=1, progress=False)
    assert len(calls) == 1
