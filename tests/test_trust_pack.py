"""`pack` and the judgments format under hostile input: right numbers, one-line refusals, clean signals.

Every refusal goes through the real CLI (`assert_refused`: exit status 2, one ``error:`` line,
no traceback, no file created or changed). Signal tests run ``python -m lpips_lightning.cli
pack`` as a real process on a source slow enough to be interrupted half-way.
"""

from __future__ import annotations

import glob
import os
import signal
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import assert_refused, make_bapps, snapshot, start_pack
from PIL import Image

from lpips_lightning import judgments
from lpips_lightning import pack as pack_module
from lpips_lightning.cli.main import main
from lpips_lightning.errors import JudgmentsError, OutputError, PackError
from lpips_lightning.pack import Interrupted, load_image, pack

CLI = [sys.executable, "-m", "lpips_lightning.cli"]


# --- helpers ----------------------------------------------------------------------------------
def _images(folder: Path, n: int = 3, size: int = 8) -> None:
    for i in range(n):
        Image.fromarray(np.full((size, size, 3), i * 40, np.uint8)).save(folder / f"im{i}.png")


def _csv(folder: Path, text: str | bytes, name: str = "mine.csv") -> Path:
    _images(folder)
    path = folder / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _png16(path: Path, samples: np.ndarray, color_type: int) -> None:
    """A 16-bit PNG written by hand (PIL cannot write 16-bit colour): gray 0, RGB 2, gray+alpha 4, RGBA 6."""
    h, w = samples.shape[:2]
    rows = samples.reshape(h, -1).astype(">u2")
    raw = b"".join(b"\x00" + rows[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def _pgm16(path: Path, samples: np.ndarray, maxval: int = 65535) -> None:
    h, w = samples.shape
    path.write_bytes(b"P5\n%d %d\n%d\n" % (w, h, maxval) + samples.astype(">u2").tobytes())


def _to8(v) -> np.ndarray:
    """The expected 8-bit value of 16-bit samples: v * 255 / 65535, rounded."""
    return np.floor(np.asarray(v, np.float64) * 255 / 65535 + 0.5).astype(np.uint8)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


SAMPLES = np.array([[0, 1000, 30000, 65535], [128, 129, 32896, 65000]], np.uint16)  # (2, 4)


# --- 1. the right numbers ---------------------------------------------------------------------
def _rgb_samples() -> np.ndarray:
    return np.stack([SAMPLES, SAMPLES[::-1], np.roll(SAMPLES, 1, axis=1)], axis=-1)  # (2, 4, 3)


@pytest.mark.parametrize(
    "kind",
    [
        "gray16-png",
        "gray16-pgm (mode I)",
        "gray12-pgm",
        "gray16-tiff-big-endian",
        "rgb16-png",
        "rgba16-png",
        "gray-alpha16-png",
        "rgb16-tiff",
    ],
)
def test_16_bit_images_are_scaled_not_clipped(tmp_path, kind):
    path = tmp_path / "im.png"
    rgb = _rgb_samples()
    expected = np.repeat(_to8(SAMPLES)[..., None], 3, axis=2)
    if kind == "gray16-png":
        Image.fromarray(SAMPLES).save(path)
        assert Image.open(path).mode == "I;16"
    elif kind == "gray16-pgm (mode I)":
        path = tmp_path / "im.pgm"
        _pgm16(path, SAMPLES)
        assert Image.open(path).mode == "I"  # 16-bit samples in a 32-bit PIL image
    elif kind == "gray12-pgm":
        path = tmp_path / "im.pgm"
        twelve = SAMPLES // 16
        _pgm16(path, twelve, maxval=4095)
        expected = np.repeat(np.floor(twelve.astype(float) * 255 / 4095 + 0.5).astype(np.uint8)[..., None], 3, axis=2)
    elif kind == "gray16-tiff-big-endian":
        tifffile = pytest.importorskip("tifffile")
        path = tmp_path / "im.tif"
        tifffile.imwrite(path, SAMPLES.astype(">u2"), byteorder=">")
        assert Image.open(path).mode == "I;16B"
    elif kind == "rgb16-png":
        _png16(path, rgb, 2)
        expected = _to8(rgb)
    elif kind == "rgba16-png":
        _png16(path, np.concatenate([rgb, np.full((2, 4, 1), 65535, np.uint16)], axis=2), 6)
        expected = _to8(rgb)
    elif kind == "gray-alpha16-png":
        _png16(path, np.stack([SAMPLES, np.full_like(SAMPLES, 65535)], axis=-1), 4)
    elif kind == "rgb16-tiff":
        tifffile = pytest.importorskip("tifffile")
        path = tmp_path / "im.tif"
        tifffile.imwrite(path, rgb, photometric="rgb")
        expected = _to8(rgb)
    np.testing.assert_array_equal(load_image(path), expected)
    np.testing.assert_array_equal(load_image(path.read_bytes(), name=path.name), expected)  # an archive member
    # and through pack, at the image's own size: the stored pixels are the same numbers
    (tmp_path / "j.csv").write_text(f"ref,p0,p1,judge\n{path.name},{path.name},{path.name},0.5\n")
    out = pack(tmp_path / "j.csv", tmp_path / "o.h5", size=4, workers=1, progress=False)
    resized = np.asarray(Image.fromarray(expected).resize((4, 4), Image.BILINEAR)).transpose(2, 0, 1)
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["2afc/train/j/ref"][0], resized)


def test_16_bit_png_opened_as_mode_i(tmp_path, monkeypatch):
    """Older Pillow releases open a 16-bit gray PNG as a 32-bit "I" image: still scaled as 16-bit."""
    from PIL import PngImagePlugin

    Image.fromarray(SAMPLES).save(tmp_path / "g.png")
    monkeypatch.setitem(PngImagePlugin._MODES, (16, 0), ("I", "I;16B"))
    assert Image.open(tmp_path / "g.png").mode == "I"
    np.testing.assert_array_equal(load_image(tmp_path / "g.png")[..., 0], _to8(SAMPLES))


def test_load_image_returns_a_writable_array(tmp_path):
    import torch

    _images(tmp_path, n=1)
    for size in (None, 4):
        image = load_image(tmp_path / "im0.png", size)
        assert image.flags.writeable and image.dtype == np.uint8 and image.shape[2] == 3
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            torch.from_numpy(image)  # no "array is not writable" warning


# --- bad input, refused in one line -----------------------------------------------------------
def _make_float_tiff(folder: Path) -> str:
    Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(folder / "f.tif")
    return "ref,p0,p1,judge\nf.tif,im1.png,im2.png,0.5\n"


def _make_int32_tiff(folder: Path) -> str:
    Image.fromarray(np.full((4, 4), 100_000, np.int32)).save(folder / "i.tif")
    return "ref,p0,p1,judge\ni.tif,im1.png,im2.png,0.5\n"


def _make_fifo(folder: Path) -> str:
    os.mkfifo(folder / "pipe.png")
    return "ref,p0,p1,judge\npipe.png,im1.png,im2.png,0.5\n"


def _make_broken_image(folder: Path) -> str:
    (folder / "im0.png").write_bytes(b"\x89PNG broken")
    return "ref,p0,p1,judge\nim0.png,im1.png,im2.png,0.5\n"


def _make_empty_image(folder: Path) -> str:
    (folder / "im0.png").write_bytes(b"")
    return "ref,p0,p1,judge\nim0.png,im1.png,im2.png,0.5\n"


def _make_folder_image(folder: Path) -> str:
    (folder / "sub.png").mkdir()
    return "ref,p0,p1,judge\nsub.png,im1.png,im2.png,0.5\n"


BAD_CSVS = {
    "empty file": ("", "mine.csv: empty file"),
    "header only": ("ref,p0,p1,judge\n", "mine.csv: no rows below the header"),
    "blank lines only": ("\n\n  \n", "mine.csv: empty file"),
    "too few fields": ("ref,p0,p1,judge\nim0.png,im1.png,im2.png\n", "line 2: 3 fields, the header has 4"),
    "too many fields": ("ref,p0,p1,judge\nim0.png,im1.png,im2.png,0.5,x\n", "line 2: 5 fields, the header has 4"),
    "not UTF-8": (
        "ref,p0,p1,judge\nim0.png,im\xe9.png,im2.png,0.5\n".encode("latin-1"),
        "line 2: byte 0xe9 is not UTF-8",
    ),
    "UTF-16": ("ref,p0,p1,judge\n".encode("utf-16"), "mine.csv: UTF-16 text"),
    "duplicated column": ("ref,p0,p1,judge,judge\nim0.png,im1.png,im2.png,0.5,0.7\n", "column judge appears more"),
    "duplicated column, spaced": ("ref,p0,p1,judge, Judge\nim0.png,im1.png,im2.png,0.5,0.7\n", "column judge appears"),
    "NUL in a path": ("ref,p0,p1,judge\nim\x000.png,im1.png,im2.png,0.5\n", "NUL character"),
    "path too long": (
        "ref,p0,p1,judge\n" + "a" * 5000 + ",im1.png,im2.png,0.5\n",
        "cannot be read (File name too long)",
    ),
    "missing image": ("ref,p0,p1,judge\nim0.png,gone.png,im2.png,0.5\n", "line 2: image gone.png does not exist"),
    "judge NaN": ("ref,p0,p1,judge\nim0.png,im1.png,im2.png,nan\n", "judgment nan is not a finite number"),
    "unclosed quote": (
        'ref,p0,p1,judge\nim0.png,im1.png,im2.png,0.5\n"im0.png,im1.png,im2.png,0.5\nim0.png,im1.png,im2.png,0.5\n',
        'mine.csv line 3: a field opens a quote (") that is never closed',
    ),
    "judge empty": ("ref,p0,p1,judge\nim0.png,im1.png,im2.png,\n", "line 2: bad value in judge"),
    "judge with a digit separator": ("ref,p0,p1,judge\nim0.png,im1.png,im2.png,0_1\n", "bad value in judge: 0_1"),
    "votes with a digit separator": (
        "ref,p0,p1,votes_p0,votes_p1\nim0.png,im1.png,im2.png,1_0,3\n",
        "line 2: bad value in votes_p0,votes_p1: 1_0, 3",
    ),
    "votes beyond uint16": ("ref,p0,p1,judge,votes\nim0.png,im1.png,im2.png,0.5,70000\n", "70000 votes; the file"),
    "vote counts beyond uint16": ("ref,p0,p1,votes_p0,votes_p1\nim0.png,im1.png,im2.png,40000,40000\n", "80000 votes"),
    "image is a folder": (_make_folder_image, "line 2: ref sub.png is a folder, not an image file"),
    "image is a FIFO": (_make_fifo, "line 2: ref pipe.png is not a regular file"),
    "float image": (_make_float_tiff, "f.tif: floating-point pixels (mode F)"),
    "32-bit image": (
        _make_int32_tiff,
        "i.tif: signed or 32-bit integer pixels (values 100000..100000) have no fixed white level",
    ),
    "broken image": (_make_broken_image, "im0.png: image does not decode"),
    "empty image": (_make_empty_image, "im0.png: empty file (0 bytes), not an image"),
    "judge contradicts the vote counts": (
        "ref,p0,p1,judge,votes_p0,votes_p1\nim0.png,im1.png,im2.png,0.25,3,1\nim0.png,im1.png,im2.png,0.9,3,1\n",
        "mine.csv line 3: judge 0.9 contradicts votes_p0,votes_p1 3,1 (= 0.25); give one or the other",
    ),
    "judge NaN beside vote counts": (
        "ref,p0,p1,judge,votes_p0,votes_p1\nim0.png,im1.png,im2.png,nan,3,1\n",
        "line 2: judge nan contradicts votes_p0,votes_p1 3,1",
    ),
    "judge unreadable beside vote counts": (
        "ref,p0,p1,votes_p0,votes_p1,judge\nim0.png,im1.png,im2.png,3,1,x\n",
        "line 2: bad value in votes_p0,votes_p1,judge: 3, 1, x",
    ),
    "votes contradicts the vote counts": (
        "ref,p0,p1,votes,votes_p0,votes_p1\nim0.png,im1.png,im2.png,5,3,1\n",
        "line 2: votes 5 contradicts votes_p0,votes_p1 3,1 (= 4)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CSVS))
def test_bad_csv_is_refused_in_one_line(tmp_path, capfd, case):
    text, expected = BAD_CSVS[case]
    path = _csv(tmp_path, b"")
    if callable(text):
        text = text(tmp_path)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    line = assert_refused(["pack", str(path), str(tmp_path / "o.h5"), "--quiet", "--workers", "1"], capfd, tmp_path)
    assert expected in line, line
    assert len(line) < 400, line


@pytest.mark.parametrize(
    "text",
    [
        "\ufeffref,p0,p1,judge\nim0.png,im1.png,im2.png,0.25\n",  # Excel's CSV UTF-8: a byte-order mark
        "ref, p0, p1, judge\nim0.png, im1.png, im2.png, 0.25\n",  # spaces after the commas
        "REF,P0,P1,Judge\r\nim0.png,im1.png,im2.png,0.25\r\n",  # upper case, CRLF
        "\n ref ,p0,p1,judge\n\nim0.png,im1.png,im2.png,0.25\n  \n",  # blank lines
        'ref,p0,p1,judge,note\n"im0.png","im1.png",im2.png,0.25,"a, b"\n',  # quoting, an extra column
        "ref,p0,p1,judge,\nim0.png,im1.png,im2.png,0.25,\n",  # a trailing comma (empty column)
    ],
)
def test_csv_variants_that_must_work(tmp_path, text):
    path = _csv(tmp_path, text)
    out = pack(path, tmp_path / "o.h5", size=8, workers=1, progress=False)
    with judgments.open_file(out) as f:
        g = f["2afc/train/mine"]
        np.testing.assert_allclose(g["judge"][()], [0.25])
        assert [int(g[k][0].max()) for k in ("ref", "p0", "p1")] == [0, 40, 80]


def test_a_name_in_the_other_unicode_normalisation_is_the_same_image(tmp_path):
    """macOS writes file names decomposed (NFD), a spreadsheet composed (NFC): the CSV means that file."""
    import unicodedata

    _images(tmp_path)
    os.rename(tmp_path / "im1.png", tmp_path / unicodedata.normalize("NFD", "é1.png"))
    path = tmp_path / "mine.csv"
    path.write_text("ref,p0,p1,judge\n" + unicodedata.normalize("NFC", "im0.png,é1.png,im2.png,0.25\n"))
    out = pack(path, tmp_path / "o.h5", size=8, workers=1, progress=False)
    with judgments.open_file(out) as f:
        assert int(f["2afc/train/mine"]["p0"][0].max()) == 40


def test_a_broken_link_is_named_as_such(tmp_path, capfd):
    path = _csv(tmp_path, "ref,p0,p1,judge\nim0.png,gone.png,im2.png,0.25\n")
    (tmp_path / "gone.png").symlink_to(tmp_path / "elsewhere.png")
    line = assert_refused(["pack", str(path), str(tmp_path / "o.h5"), "--quiet", "--workers", "1"], capfd, tmp_path)
    assert f"line 2: p0 gone.png is a link to {tmp_path / 'elsewhere.png'}, which does not exist" in line


def test_judge_beside_vote_counts_that_agree_is_accepted(tmp_path):
    path = _csv(tmp_path, "ref,p0,p1,judge,votes_p0,votes_p1,votes\nim0.png,im1.png,im2.png,0.3333333,2,1,3\n")
    out = pack(path, tmp_path / "o.h5", size=8, workers=1, progress=False)
    with judgments.open_file(out) as f:
        g = f["2afc/train/mine"]
        np.testing.assert_allclose(g["judge"][()], [1 / 3])
        assert list(g["votes"][()]) == [3]


def test_csv_name_that_is_no_group_name_asks_for_group(tmp_path, capfd):
    path = _csv(tmp_path, "ref,p0,p1,judge\nim0.png,im1.png,im2.png,0.5\n", name="my data.csv")
    line = assert_refused(["pack", str(path), str(tmp_path / "o.h5"), "--quiet"], capfd, tmp_path)
    assert "my data.csv" in line and "--group" in line


def test_folder_named_like_a_csv(tmp_path, capfd):
    (tmp_path / "x.csv").mkdir()
    line = assert_refused(["pack", str(tmp_path / "x.csv"), str(tmp_path / "o.h5"), "--quiet"], capfd, tmp_path)
    assert "x.csv: is a folder, not a CSV file" in line


def test_bapps_subset_name_that_is_no_group_name(tmp_path, capfd):
    make_bapps(tmp_path / "b", n=2, jnd=False)
    (tmp_path / "b/2afc/val/cnn").rename(tmp_path / "b/2afc/val/my cnn")
    line = assert_refused(["pack", str(tmp_path / "b"), str(tmp_path / "o.h5"), "--quiet"], capfd, tmp_path)
    assert "my cnn" in line and "rename the folder" in line


# --- outputs: own inputs, folders, options ------------------------------------------------------
def _own_input_cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    path = _csv(tmp_path, "ref,p0,p1,judge\nim0.png,im1.png,im2.png,0.5\n")
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
    path = _csv(tmp_path, "ref,p0,p1,judge\nim0.png,im1.png,im2.png,0.5\n")
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
    path = _csv(tmp_path, "ref,p0,p1,judge\nim0.png,im1.png,im2.png,0.5\n")
    line = assert_refused(["pack", str(path), "/proc/o.h5", "--quiet", "--workers", "1"], capfd, tmp_path)
    assert line.startswith("error: /proc/o.h5: cannot write the judgments file (") and "errno" not in line


def test_not_enough_free_space_is_refused_up_front(tmp_path, capfd, monkeypatch):
    path = _csv(tmp_path, "ref,p0,p1,judge\nim0.png,im1.png,im2.png,0.5\n")
    real = os.statvfs(tmp_path)
    fake = type("fake", (), {"f_bavail": 10, "f_frsize": real.f_frsize, "f_blocks": real.f_blocks})
    monkeypatch.setattr(pack_module.os, "statvfs", lambda p: fake)
    line = assert_refused(["pack", str(path), str(tmp_path / "o.h5"), "--quiet"], capfd, tmp_path)
    assert "o.h5: the judgments file needs about" in line and "free" in line


def test_disk_full_while_writing_leaves_nothing(tmp_path):
    """A file-size limit makes HDF5's writes fail half-way (EFBIG), as a full disk does (ENOSPC)."""
    path = _csv(tmp_path, "ref,p0,p1,judge\n" + "im0.png,im1.png,im2.png,0.5\n" * 20)
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


# --- 2. judgments files written by hand or by another tool ----------------------------------------
def _judgments_file(path: Path, n: int = 4, kind_attr: bool = True, **datasets) -> h5py.File:
    f = h5py.File(path, "w")
    f.attrs["format"] = judgments.FORMAT
    f.attrs["format_version"] = judgments.FORMAT_VERSION
    g = f.create_group("2afc/val/x")
    if kind_attr:
        g.attrs["kind"] = "2afc"
    for key in ("ref", "p0", "p1"):
        g[key] = datasets.get(key, np.zeros((n, 3, 8, 8), np.uint8))
    g["judge"] = datasets.get("judge", np.linspace(0, 1, n).astype(np.float32))
    return f


def _set(key, value):
    def edit(f):
        f["2afc/val/x"][key][...] = value

    return edit


def _replace(path, value):
    def edit(f):
        del f[path]
        if isinstance(value, str) and value == "group":
            f.create_group(path)
        elif isinstance(value, str) and value == "link":
            f[path] = h5py.SoftLink("/nowhere")
        else:
            f[path] = value

    return edit


def _empty(f):
    for key in ("ref", "p0", "p1"):
        _replace(f"2afc/val/x/{key}", np.zeros((0, 3, 8, 8), np.uint8))(f)
    _replace("2afc/val/x/judge", np.zeros(0, np.float32))(f)


BAD_FILES = {
    "judge NaN": (_set("judge", [0, np.nan, 0.5, 1]), "group 2afc/val/x: judge[1] = nan is not a finite number"),
    "judge 1.5": (_set("judge", [0, 1, 1.5, 1]), "judge[2] = 1.5 is not a finite number in [0, 1]"),
    "judge -0.1, twice": (_set("judge", [-0.1, -0.1, 0, 1]), "judge[0] = -0.1"),
    "judge inf": (_set("judge", [0, np.inf, 0, 1]), "judge[1] = inf"),
    "judge (N, 2)": (_replace("2afc/val/x/judge", np.zeros((4, 2), np.float32)), "judge must be float32 (N,), found"),
    "judge float64": (_replace("2afc/val/x/judge", np.zeros(4)), "judge must be float32 (N,), found float64"),
    "judge big-endian": (_replace("2afc/val/x/judge", np.zeros(4, ">f4")), "judge must be float32 (N,)"),
    "judge a group": (_replace("2afc/val/x/judge", "group"), "judge is a group, expected a dataset"),
    "judge missing": (lambda f: f["2afc/val/x"].__delitem__("judge"), "lacks dataset(s) judge"),
    "p1 shorter": (_replace("2afc/val/x/p1", np.zeros((3, 3, 8, 8), np.uint8)), "p1 must be uint8 (N=4, 3, H, W)"),
    "p1 float": (_replace("2afc/val/x/p1", np.zeros((4, 3, 8, 8), np.float32)), "found float32 (4, 3, 8, 8)"),
    "p1 other size": (_replace("2afc/val/x/p1", np.zeros((4, 3, 9, 9), np.uint8)), "images of different sizes"),
    "p0 (N, H, W, 3)": (_replace("2afc/val/x/p0", np.zeros((4, 8, 8, 3), np.uint8)), "p0 must be uint8 (N=4, 3, H, W)"),
    "votes shorter": (lambda f: f["2afc/val/x"].create_dataset("votes", data=np.ones(3, np.uint16)), "optional votes"),
    "empty group": (_empty, "2afc/val/x: no items"),
    "no kind attribute": (
        lambda f: f["2afc/val/x"].attrs.__delitem__("kind"),
        "no kind attribute, expected kind = '2afc'",
    ),
    "kind attribute jnd": (lambda f: f["2afc/val/x"].attrs.__setitem__("kind", "jnd"), "kind attribute 'jnd'"),
    "2afc/val a dataset": (_replace("2afc/val", np.zeros(3)), "2afc/val is a dataset, expected a group"),
    "2afc/val/x a dataset": (_replace("2afc/val/x", np.zeros(3)), "group 2afc/val/x is a dataset"),
    "2afc a dataset": (_replace("2afc", np.zeros(3)), "2afc is a dataset, expected a group"),
    "a broken link": (
        lambda f: f["2afc/val"].__setitem__("y", h5py.SoftLink("/nowhere")),
        "2afc/val/y is a broken link",
    ),
    "no kinds at all": (lambda f: f.__delitem__("2afc"), "no group"),
    "format version text": (lambda f: f.attrs.__setitem__("format_version", "abc"), "judgments format version 'abc'"),
    "format version 1.7": (lambda f: f.attrs.__setitem__("format_version", 1.7), "judgments format version 1.7"),
    "votes float": (lambda f: f["2afc/val/x"].create_dataset("votes", data=np.ones(4)), "votes must be non-negative"),
    "votes negative": (
        lambda f: f["2afc/val/x"].create_dataset("votes", data=np.array([1, -2, 3, 4], np.int32)),
        "optional votes must be non-negative integers, found int32 with negative counts",
    ),
    "names numbers": (lambda f: f["2afc/val/x"].create_dataset("names", data=np.arange(4)), "names must be strings"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_judgments_file_is_refused_by_evaluate(tmp_path, capfd, case):
    edit, expected = BAD_FILES[case]
    f = _judgments_file(tmp_path / "j.h5")
    edit(f)
    f.close()
    line = assert_refused(["evaluate", "l2", "--data", str(tmp_path / "j.h5"), "--quiet"], capfd, tmp_path)
    assert "j.h5" in line and expected in line, line


def test_validation_reaches_the_dataset_and_groups_never_crashes(tmp_path):
    from lpips_lightning.datamodules.judgments_datamodule import JudgmentsDataset

    with _judgments_file(tmp_path / "j.h5") as f:
        f["2afc/val/x/judge"][1] = np.nan
    with pytest.raises(JudgmentsError, match=r"j.h5: group 2afc/val/x: judge\[1\] = nan"):
        JudgmentsDataset(tmp_path / "j.h5", ["2afc/val/x"])
    with pytest.raises(JudgmentsError, match="group 2afc/val/nope: no such group"):
        JudgmentsDataset(tmp_path / "j.h5", ["2afc/val/nope"])
    with _judgments_file(tmp_path / "k.h5") as f:
        del f["2afc/val"]
        f["2afc/val"] = np.zeros(3)
        assert f.filename.endswith("k.h5")
    with (
        judgments.open_file(tmp_path / "k.h5") as f,
        pytest.raises(JudgmentsError, match="k.h5: 2afc/val is a dataset"),
    ):
        judgments.groups(f)


def test_a_packed_file_passes_validation(bapps_h5):
    with judgments.open_file(bapps_h5) as f:
        assert judgments.resolve(f, ["2afc/*/*", "jnd/*/*"]) == ["2afc/train/trad", "2afc/val/cnn", "jnd/val/cnn"]


# --- 3. signals ---------------------------------------------------------------------------------
@pytest.fixture
def slow_source(tmp_path) -> Path:
    """A CSV of 400 triplets of three large uncompressed PNGs: seconds of decoding, milliseconds to make."""
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(
            tmp_path / f"big{i}.png", compress_level=0
        )
    path = tmp_path / "slow.csv"
    path.write_text("ref,p0,p1,judge\n" + "big0.png,big1.png,big2.png,0.5\n" * 400)
    return path


def _process_group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


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
    while not _process_group_gone(proc.pid):  # the workers went with the parent
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


def test_after_sigkill_the_next_pack_removes_the_stale_temp(tmp_path, slow_source, capfd):
    out = tmp_path / "o.h5"
    proc = start_pack(slow_source, out)
    os.killpg(proc.pid, signal.SIGKILL)  # no clean-up possible
    proc.communicate(timeout=30)
    stale = list(tmp_path.glob(".o.h5.tmp-*"))
    assert len(stale) == 1
    small = _csv(tmp_path, "ref,p0,p1,judge\nim0.png,im1.png,im2.png,0.5\n")
    capfd.readouterr()
    assert main(["pack", str(small), str(out), "--quiet", "--workers", "1"]) == 0
    err = capfd.readouterr().err
    assert err.strip() == f"removed {stale[0]}, left by an interrupted run (process {proc.pid})", err
    assert not list(tmp_path.glob(".o.h5.tmp-*"))
    with judgments.open_file(out) as f:
        assert list(judgments.groups(f)) == ["2afc/train/mine"]


def test_stale_temp_of_a_dead_process_is_removed_a_live_ones_kept(tmp_path, capfd):
    path = _csv(tmp_path, "ref,p0,p1,judge\nim0.png,im1.png,im2.png,0.5\n")
    dead = tmp_path / f".o.h5.tmp-{_dead_pid()}"
    dead.write_bytes(b"half a file")
    live = tmp_path / f".o.h5.tmp-{os.getppid()}"
    live.write_bytes(b"another pack, still running")
    capfd.readouterr()
    assert main(["pack", str(path), str(tmp_path / "o.h5"), "--quiet", "--workers", "1"]) == 0
    err = capfd.readouterr().err
    assert f"removed {dead}" in err and err.count("\n") == 1, err
    assert not dead.exists() and live.exists()


# in-process: the signal arrives where raising it would be swallowed, or just before the rename


class _SignalOnDelete:
    def __init__(self, signum):
        self.signum = signum

    def __del__(self):
        os.kill(os.getpid(), self.signum)


def test_sigint_during_a_destructor_is_not_swallowed(tmp_path, monkeypatch, harmless_sigint):
    """A KeyboardInterrupt raised inside ``__del__`` is printed and ignored by Python: pack must not
    finish with status 0 after such a Ctrl-C."""
    path = _csv(tmp_path, "ref,p0,p1,judge\n" + "im0.png,im1.png,im2.png,0.5\n" * 3)
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
    path = _csv(tmp_path, "ref,p0,p1,judge\nim0.png,im1.png,im2.png,0.5\n")
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
    path = _csv(tmp_path, "ref,p0,p1,judge\nim0.png,im1.png,im2.png,0.5\n")
    plan_csv = pack_module.plan_csv

    def plan_then_interrupt(*args):
        plan_csv(*args)
        os.kill(os.getpid(), signal.SIGINT)
        raise AssertionError("the signal should have stopped planning")  # pragma: no cover

    monkeypatch.setattr(pack_module, "plan_csv", plan_then_interrupt)
    before = snapshot(tmp_path)
    with pytest.raises(Interrupted):
        pack(path, tmp_path / "o.h5", size=8, workers=1, progress=False)
    assert snapshot(tmp_path) == before


def test_cli_prints_interrupted_with_the_status(tmp_path, capfd, monkeypatch):
    def interrupted(*args, **kwargs):
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(pack_module, "pack", interrupted)
    capfd.readouterr()
    assert main(["pack", "a.csv", str(tmp_path / "o.h5")]) == 143
    assert capfd.readouterr().err == "interrupted\n"


def test_worker_errors_come_back_as_one_line(tmp_path, capfd):
    make_bapps(tmp_path / "b", n=40, jnd=False)
    (tmp_path / "b/2afc/val/cnn/p1/000033.png").write_bytes(b"broken")
    line = assert_refused(
        ["pack", str(tmp_path / "b"), str(tmp_path / "o.h5"), "--quiet", "--workers", "2"], capfd, tmp_path
    )
    assert "000033.png: image does not decode" in line
    with pytest.raises(PackError):
        pack(tmp_path / "b", tmp_path / "o.h5", workers=2, progress=False)


def _children(pid: int) -> set[int]:
    """The child processes of `pid` (all its threads'), from /proc."""
    found: set[int] = set()
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            found.update(int(c) for c in Path(path).read_text().split())
        except OSError:
            pass
    return found


def _alive(pid: int) -> bool:
    """`pid` exists and is not a zombie."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat_line.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@pytest.mark.slow
def test_workers_die_with_a_parent_killed_outright(tmp_path, slow_source):
    if not glob.glob(f"/proc/{os.getpid()}/task/*/children"):
        pytest.skip("needs /proc/PID/task/TID/children")
    out = tmp_path / "o.h5"
    proc = start_pack(slow_source, out)
    workers = _children(proc.pid)
    assert len(workers) == 2, workers
    proc.kill()  # SIGKILL to pack alone: nothing of it runs again
    try:
        # The workers hold copies of stdout/stderr: this returns only once they are gone too.
        proc.communicate(timeout=10)
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in workers):
            assert time.monotonic() < deadline, f"decoding workers outlived pack: {workers}"
            time.sleep(0.05)
    finally:
        for pid in workers:  # no orphans left behind by a failure
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_the_parent_watch_alone_ends_a_worker(monkeypatch):
    """The fallback where PR_SET_PDEATHSIG is missing: a thread exits the worker when its parent changes."""
    exits = []
    monkeypatch.setattr(pack_module.os, "getppid", lambda: 1)
    monkeypatch.setattr(pack_module.os, "_exit", exits.append)
    monkeypatch.setattr(pack_module.time, "sleep", lambda s: None)
    pack_module._watch_parent(os.getpid())
    assert exits == [1]


# --- the output's name: taken only while free, and only this process's temporary files go ---------
def test_an_output_created_meanwhile_by_another_process_is_not_replaced(tmp_path, monkeypatch, capfd):
    """Two packs of one output: the "exists" check at the start passes for both; the second to
    finish must be refused (without --overwrite), not silently replace the first one's file."""
    path = _csv(tmp_path, "ref,p0,p1,judge\nim0.png,im1.png,im2.png,0.5\n")
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


def test_clean_up_removes_only_this_process_temp_even_with_glob_characters(tmp_path, monkeypatch):
    """``.o[1].h5.tmp-PID`` is removed on failure (its name is not a pattern), while another live
    process's ``.o[1].h5.tmp-PID7`` (same prefix) is kept."""
    from lpips_lightning import outputs

    out = tmp_path / "o[1].h5"
    other = outputs.temp_name(out, int(f"{os.getpid()}7"))
    with pytest.raises(RuntimeError):
        with outputs.atomic_output(out) as tmp:
            other.write_bytes(b"another writer's half file")
            tmp.write_bytes(b"half")
            (tmp.parent / (tmp.name + ".data")).write_bytes(b"an ONNX side file")
            raise RuntimeError("failed half-way")
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name]


def test_outputs_get_the_usual_mode_for_new_files(tmp_path):
    from lpips_lightning import outputs

    mask = os.umask(0o027)
    try:
        with outputs.atomic_output(tmp_path / "o.bin") as tmp:
            fd = os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600)  # a writer that creates its file private
            os.close(fd)
    finally:
        os.umask(mask)
    assert (tmp_path / "o.bin").stat().st_mode & 0o777 == 0o640


def test_outputs_on_a_file_system_without_hard_links_or_modes(tmp_path, monkeypatch):
    """FAT/exFAT: chmod fails and there are no hard links; the output is still written, and still
    never replaces a file that appeared meanwhile."""
    from lpips_lightning import outputs

    def refused(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "chmod", refused)
    monkeypatch.setattr(os, "link", refused)
    with outputs.atomic_output(tmp_path / "o.bin") as tmp:
        os.close(os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600))
    assert [p.name for p in tmp_path.iterdir()] == ["o.bin"]
    with pytest.raises(OutputError, match="created by another process"):
        with outputs.atomic_output(tmp_path / "p.bin") as tmp:
            tmp.write_bytes(b"mine")
            (tmp_path / "p.bin").write_bytes(b"theirs")
    assert (tmp_path / "p.bin").read_bytes() == b"theirs"


def test_a_broken_link_as_the_output_is_refused_before_any_work(tmp_path, capfd):
    path = _csv(tmp_path, "ref,p0,p1,judge\nim0.png,im1.png,im2.png,0.5\n")
    (tmp_path / "o.h5").symlink_to(tmp_path / "nowhere.h5")
    line = assert_refused(["pack", str(path), str(tmp_path / "o.h5"), "--quiet", "--workers", "1"], capfd, tmp_path)
    assert "o.h5 is a link to" in line and "which does not exist; remove the link first" in line


def test_a_space_after_a_quoted_field_still_parses(tmp_path):
    path = _csv(tmp_path, 'ref,p0,p1,judge\n"im0.png" ,im1.png,im2.png,0.25\n')
    out = pack(path, tmp_path / "o.h5", size=8, workers=1, progress=False)
    with judgments.open_file(out) as f:
        np.testing.assert_allclose(f["2afc/train/mine"]["judge"][()], [0.25])


def test_a_broken_link_in_a_bapps_folder_is_named_as_such(tmp_path, capfd):
    make_bapps(tmp_path / "b", n=2, jnd=False)
    image = tmp_path / "b" / "2afc/val/cnn/p1/000001.png"
    image.unlink()
    image.symlink_to(tmp_path / "moved.png")
    line = assert_refused(["pack", str(tmp_path / "b"), str(tmp_path / "o.h5"), "--quiet"], capfd, tmp_path)
    assert f"{image}: a link to {tmp_path / 'moved.png'}, which does not exist" in line
