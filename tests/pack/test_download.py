"""`lpips-lightning download` (`pack.download`): resumed, checked, skipped; a damaged archive removed; a full disk,
Ctrl-C and a second download keep the part. Against a local HTTP mirror of a tiny BAPPS (tests/bapps_mirror.py)."""

from __future__ import annotations

import errno
import fcntl
import gzip
import io
import shutil
import tarfile
from pathlib import Path

import pytest
from bapps_mirror import ARCHIVES, build_bapps_archives, part_of, serve
from bapps_mirror import run_download as run
from conftest import assert_refused

from lpips_lightning.outputs import remove_stale_temps
from lpips_lightning.pack import download as dl


def test_synthetic_archives_have_the_original_layout(served):
    with tarfile.open(served / "twoafc_train.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"train/cnn/ref/000000.png", "train/mix/judge/000002.npy", "train/traditional/p1/000001.png"} <= names
    with tarfile.open(served / "twoafc_val.tar.gz") as tar:
        assert "val/frameinterp/p0/000000.png" in tar.getnames()
    with tarfile.open(served / "jnd.tar.gz") as tar:
        assert {"jnd/val/cnn/same/000000.npy", "jnd/val/traditional/p1/000002.png"} <= set(tar.getnames())
    again = build_bapps_archives(served.parent / "again")
    assert (served / "jnd.tar.gz").read_bytes() == again["archives"]["jnd"].read_bytes()  # reproducible
    assert again["groups"]["2afc/val/color"]["ref"].shape == (3, 3, 16, 16)


def test_downloads_all_parts_with_progress(mirror, tmp_path, capfd):
    out_dir = tmp_path / "bapps"
    status, out, err = run(["bapps", str(out_dir), "--base-url", mirror.url], capfd)
    assert status == 0, err
    for name in ARCHIVES.values():
        assert (out_dir / name).read_bytes() == (mirror.folder / name).read_bytes()
        assert [r.range for r in mirror.gets(name)] == [None]
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(ARCHIVES.values())  # no .part left
    assert f"next: lpips-lightning pack {out_dir} bapps.h5" in out
    assert "B/s" in err and "twoafc_train.tar.gz" in err  # the progress bar: bytes, rate


def test_second_run_skips_and_force_fetches_again(mirror, tmp_path, capfd):
    out_dir = tmp_path / "bapps"
    assert run(["bapps", str(out_dir), "--parts", "val", "--base-url", mirror.url, "--quiet"], capfd)[0] == 0
    before = (out_dir / "twoafc_val.tar.gz").stat().st_mtime_ns
    mirror.log.clear()
    status, out, _ = run(["bapps", str(out_dir), "--parts", "val", "--base-url", mirror.url, "--quiet"], capfd)
    assert status == 0
    assert "twoafc_val.tar.gz: already in" in out and "skipped" in out and "same size" in out
    assert [r.method for r in mirror.log] == ["HEAD"]
    assert (out_dir / "twoafc_val.tar.gz").stat().st_mtime_ns == before
    status, _, _ = run(["bapps", str(out_dir), "--parts", "val", "--base-url", mirror.url, "--quiet", "--force"], capfd)
    assert status == 0 and len(mirror.gets("twoafc_val.tar.gz")) == 1
    assert (out_dir / "twoafc_val.tar.gz").read_bytes() == (mirror.folder / "twoafc_val.tar.gz").read_bytes()


def test_cut_off_download_resumes_from_the_cut(mirror, tmp_path, capfd):
    name = "twoafc_train.tar.gz"
    size = (mirror.folder / name).stat().st_size
    cut = size // 2
    out_dir = tmp_path / "bapps"
    mirror.cut_after[name] = cut
    status, _, err = run(["bapps", str(out_dir), "--parts", "train", "--base-url", mirror.url, "--quiet"], capfd)
    assert status == 2 and err.count("error:") == 1 and "resume" in err and "Traceback" not in err
    part = part_of(out_dir, name)
    assert part.stat().st_size == cut and not (out_dir / name).exists()
    assert remove_stale_temps(out_dir / name) == [] and part.exists()  # the resume state survives the cleaning

    status, out, err = run(["bapps", str(out_dir), "--parts", "train", "--base-url", mirror.url, "--quiet"], capfd)
    assert status == 0, err
    first, second = mirror.gets(name)
    assert (first.range, first.sent) == (None, cut)
    assert (second.range, second.status, second.sent) == (f"bytes={cut}-", 206, size - cut)
    assert (out_dir / name).read_bytes() == (mirror.folder / name).read_bytes() and not part.exists()


def test_server_ignoring_range_restarts_from_zero(mirror, tmp_path, capfd):
    name = "jnd.tar.gz"
    size = (mirror.folder / name).stat().st_size
    out_dir = tmp_path / "bapps"
    mirror.cut_after[name] = size // 3
    assert run(["bapps", str(out_dir), "--parts", "jnd", "--base-url", mirror.url, "--quiet"], capfd)[0] == 2
    mirror.ignore_range = True
    status, out, err = run(["bapps", str(out_dir), "--parts", "jnd", "--base-url", mirror.url, "--quiet"], capfd)
    assert status == 0, err
    assert "starting again from zero" in out
    assert mirror.gets(name)[-1].status == 200 and mirror.gets(name)[-1].range == f"bytes={size // 3}-"
    assert (out_dir / name).read_bytes() == (mirror.folder / name).read_bytes()


def test_complete_part_is_checked_and_kept(mirror, tmp_path, capfd):
    """A .part as long as the file (stopped before its check): 416, checked, renamed, no byte fetched."""
    name = "twoafc_val.tar.gz"
    out_dir = tmp_path / "bapps"
    out_dir.mkdir()
    shutil.copy(mirror.folder / name, part_of(out_dir, name))
    status, _, err = run(["bapps", str(out_dir), "--parts", "val", "--base-url", mirror.url, "--quiet"], capfd)
    assert status == 0, err
    assert [(r.status, r.sent) for r in mirror.gets(name)] == [(416, 0)]
    assert (out_dir / name).read_bytes() == (mirror.folder / name).read_bytes()


def test_truncated_archive_is_refused_and_removed(served, tmp_path, capfd):
    bad = tmp_path / "bad"
    bad.mkdir()
    data = (served / "twoafc_val.tar.gz").read_bytes()
    (bad / "twoafc_val.tar.gz").write_bytes(data[: len(data) * 2 // 3])  # served with that smaller length
    out_dir = tmp_path / "bapps"
    with serve(bad) as m:
        line = assert_refused(
            ["download", "bapps", str(out_dir), "--parts", "val", "--base-url", m.url, "--quiet"], capfd, out_dir
        )
    assert "twoafc_val.tar.gz" in line and "the downloaded file: damaged or cut short" in line and "deleted it" in line
    assert "download it again" not in line  # pack's advice; download deletes it and says to rerun
    assert not list(out_dir.glob("*tar.gz*"))


def test_damaged_tar_header_inside_an_intact_gzip_is_refused(served, tmp_path, capfd):
    """Stream-mode tarfile stops quietly at a bad header: the members after it must not go missing."""
    raw = bytearray(gzip.decompress((served / "twoafc_val.tar.gz").read_bytes()))
    with tarfile.open(fileobj=io.BytesIO(bytes(raw))) as tar:
        members = tar.getmembers()
    raw[members[len(members) // 2].offset + 3] ^= 0x55  # a name byte: the header's checksum fails
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "twoafc_val.tar.gz").write_bytes(gzip.compress(bytes(raw)))  # a valid gzip stream
    out_dir = tmp_path / "bapps"
    with serve(bad) as m:
        line = assert_refused(
            ["download", "bapps", str(out_dir), "--parts", "val", "--base-url", m.url, "--quiet"], capfd, out_dir
        )
    assert "twoafc_val.tar.gz" in line and "a damaged tar header" in line and "deleted it" in line
    assert not list(out_dir.glob("*tar.gz*"))


def test_page_that_is_not_an_archive_is_refused(tmp_path, capfd):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "jnd.tar.gz").write_text("<html>captive portal</html>")
    out_dir = tmp_path / "bapps"
    with serve(bad) as m:
        line = assert_refused(
            ["download", "bapps", str(out_dir), "--parts", "jnd", "--base-url", m.url, "--quiet"], capfd, out_dir
        )
    assert "jnd.tar.gz" in line and "the downloaded file: not a .tar.gz archive" in line


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["cifar", "D"], ["unknown dataset 'cifar'", "bapps"]),
        (["bapps", "D", "--parts", "train", "test"], ["unknown part 'test'", "train, val, jnd"]),
        (["bapps", "D", "--base-url", "ftp://example.org/x"], ["--base-url", "http://"]),
        (["bapps", "D", "--timeout", "0"], ["--timeout"]),
    ],
)
def test_bad_choices_are_one_line(argv, words, tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = assert_refused(["download", *argv], capfd, tmp_path)
    assert all(w in line for w in words), line
    assert not (tmp_path / "D").exists()


def test_dir_that_is_a_file_is_one_line(mirror, tmp_path, capfd):
    target = tmp_path / "bapps"
    target.write_text("not a folder")
    line = assert_refused(["download", "bapps", str(target), "--base-url", mirror.url, "--quiet"], capfd, tmp_path)
    assert str(target) in line and "is a file" in line
    assert mirror.log == []


def test_dir_not_writable_is_one_line(mirror, tmp_path, capfd, monkeypatch):
    out_dir = tmp_path / "bapps"
    out_dir.mkdir()
    real = dl.os.access
    monkeypatch.setattr(dl.os, "access", lambda p, mode: False if Path(p) == out_dir else real(p, mode))
    line = assert_refused(["download", "bapps", str(out_dir), "--base-url", mirror.url, "--quiet"], capfd, tmp_path)
    assert str(out_dir) in line and "not writable" in line


def test_full_disk_is_one_line_and_keeps_the_part(mirror, tmp_path, capfd, monkeypatch):
    name = "twoafc_train.tar.gz"
    out_dir = tmp_path / "bapps"
    dl_chunk = 1000
    monkeypatch.setattr(dl, "CHUNK", dl_chunk)
    calls = []
    real = dl._write_chunk

    def filling(fh, data):
        calls.append(len(data))
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fh, data)

    monkeypatch.setattr(dl, "_write_chunk", filling)
    argv = ["download", "bapps", str(out_dir), "--parts", "train", "--base-url", mirror.url, "--quiet"]
    line = assert_refused(argv, capfd, mirror.folder)
    assert "no space left" in line and str(out_dir) in line and "resume" in line
    kept = part_of(out_dir, name).stat().st_size
    assert kept == sum(calls[:2]) > 0
    monkeypatch.setattr(dl, "_write_chunk", real)
    status, _, err = run(["bapps", str(out_dir), "--parts", "train", "--base-url", mirror.url, "--quiet"], capfd)
    assert status == 0, err
    assert mirror.gets(name)[-1].range == f"bytes={kept}-"
    assert (out_dir / name).read_bytes() == (mirror.folder / name).read_bytes()


def test_ctrl_c_keeps_the_part_and_exits_130(mirror, tmp_path, capfd, monkeypatch):
    out_dir = tmp_path / "bapps"
    monkeypatch.setattr(dl, "CHUNK", 1000)
    calls = []
    real = dl._write_chunk

    def interrupted(fh, data):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        real(fh, data)

    monkeypatch.setattr(dl, "_write_chunk", interrupted)
    status, _, err = run(["bapps", str(out_dir), "--parts", "val", "--base-url", mirror.url, "--quiet"], capfd)
    assert status == 130
    assert len(err.strip().splitlines()) == 1 and "interrupted" in err and "resume" in err
    assert part_of(out_dir, "twoafc_val.tar.gz").stat().st_size > 0


def test_existing_archive_of_another_size_is_refused(mirror, tmp_path, capfd):
    out_dir = tmp_path / "bapps"
    out_dir.mkdir()
    (out_dir / "jnd.tar.gz").write_bytes(b"x" * 10)
    line = assert_refused(
        ["download", "bapps", str(out_dir), "--parts", "jnd", "--base-url", mirror.url, "--quiet"], capfd, out_dir
    )
    assert "jnd.tar.gz is 10 bytes" in line and "--force" in line


def test_a_refused_second_download_leaves_the_first_ones_part_alone(mirror, tmp_path, capfd):
    """The first download holds the lock on a still empty .part (its server has not answered yet):
    the refused second one must not remove it on its way out."""
    out_dir = tmp_path / "bapps"
    out_dir.mkdir()
    part = part_of(out_dir, "jnd.tar.gz")
    with open(part, "ab") as first:
        fcntl.flock(first.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        status, _, err = run(["bapps", str(out_dir), "--parts", "jnd", "--base-url", mirror.url, "--quiet"], capfd)
        assert status == 2 and f"another download is writing {part}" in err
        assert part.is_file()
    # once the first has let go, an empty .part is this run's to use
    status, _, err = run(["bapps", str(out_dir), "--parts", "jnd", "--base-url", mirror.url, "--quiet"], capfd)
    assert status == 0, err
    assert (out_dir / "jnd.tar.gz").is_file() and not part.exists()
