"""A CSV of custom judgments packed: fractions, vote counts, JND; every bad CSV refused in one line naming the line."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_refused
from pack_inputs import bad_pack, csv_file, csv_rows, images
from PIL import Image

from lpips_lightning.data import judgments
from lpips_lightning.pack.pack import pack


def test_csv_with_fractions_and_votes(tmp_path):
    path = csv_rows(
        tmp_path, "ref,p0,p1,judge,votes", ["im0.png,im1.png,im2.png,0.25,4", "im1.png,im0.png,im2.png,1,2"]
    )
    out = pack(path, tmp_path / "o.h5", size=8, workers=1, progress=False)
    with judgments.open_file(out) as f:
        g = f["2afc/train/mine"]
        np.testing.assert_allclose(g["judge"][()], [0.25, 1.0])
        np.testing.assert_array_equal(g["votes"][()], [4, 2])
        assert g["p0"][0].max() == 40 and g["ref"][1].max() == 40


def test_csv_with_vote_counts_and_group(tmp_path):
    path = csv_rows(tmp_path, "ref,p0,p1,votes_p0,votes_p1", ["im0.png,im1.png,im2.png,3,1"])
    out = pack(path, tmp_path / "o.h5", size=8, group="2afc/val/mine", workers=1, progress=False)
    with judgments.open_file(out) as f:
        np.testing.assert_allclose(f["2afc/val/mine/judge"][()], [0.25])
        np.testing.assert_array_equal(f["2afc/val/mine/votes"][()], [4])


def test_csv_jnd(tmp_path):
    path = csv_rows(tmp_path, "p0,p1,same", ["im0.png,im1.png,0.5"])
    out = pack(path, tmp_path / "o.h5", size=8, workers=1, progress=False)
    with judgments.open_file(out) as f:
        assert list(judgments.groups(f)) == ["jnd/val/mine"]


def test_bad_csvs(tmp_path, capsys):
    path = csv_rows(tmp_path, "ref,p0,judge", ["im0.png,im1.png,0.5"])
    bad_pack(tmp_path, capsys, path, tmp_path / "o.h5", match="mine.csv: missing columns")
    path = csv_rows(tmp_path, "ref,p0,p1,judge", ["im0.png,im1.png,im2.png,0.5", "im0.png,gone.png,im2.png,0.5"])
    bad_pack(tmp_path, capsys, path, tmp_path / "o.h5", match="mine.csv line 3: image gone.png does not exist")
    path = csv_rows(tmp_path, "ref,p0,p1,judge", ["im0.png,im1.png,im2.png,abc"])
    bad_pack(tmp_path, capsys, path, tmp_path / "o.h5", match="mine.csv line 2: bad value in judge: abc")
    path = csv_rows(tmp_path, "ref,p0,p1,judge", ["im0.png,im1.png,im2.png,2"])
    bad_pack(tmp_path, capsys, path, tmp_path / "o.h5", match="mine.csv line 2: judgment 2.0 is not a finite")
    path = csv_rows(tmp_path, "ref,p0,p1,votes_p0,votes_p1", ["im0.png,im1.png,im2.png,0,0"])
    bad_pack(tmp_path, capsys, path, tmp_path / "o.h5", match="bad value in votes_p0,votes_p1: 0, 0")


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
    path = csv_file(tmp_path, b"")
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
    path = csv_file(tmp_path, text)
    out = pack(path, tmp_path / "o.h5", size=8, workers=1, progress=False)
    with judgments.open_file(out) as f:
        g = f["2afc/train/mine"]
        np.testing.assert_allclose(g["judge"][()], [0.25])
        assert [int(g[k][0].max()) for k in ("ref", "p0", "p1")] == [0, 40, 80]


def test_a_name_in_the_other_unicode_normalisation_is_the_same_image(tmp_path):
    """macOS writes file names decomposed (NFD), a spreadsheet composed (NFC): the CSV means that file."""
    images(tmp_path)
    os.rename(tmp_path / "im1.png", tmp_path / unicodedata.normalize("NFD", "é1.png"))
    path = tmp_path / "mine.csv"
    path.write_text("ref,p0,p1,judge\n" + unicodedata.normalize("NFC", "im0.png,é1.png,im2.png,0.25\n"))
    out = pack(path, tmp_path / "o.h5", size=8, workers=1, progress=False)
    with judgments.open_file(out) as f:
        assert int(f["2afc/train/mine"]["p0"][0].max()) == 40


def test_a_broken_link_is_named_as_such(tmp_path, capfd):
    path = csv_file(tmp_path, "ref,p0,p1,judge\nim0.png,gone.png,im2.png,0.25\n")
    (tmp_path / "gone.png").symlink_to(tmp_path / "elsewhere.png")
    line = assert_refused(["pack", str(path), str(tmp_path / "o.h5"), "--quiet", "--workers", "1"], capfd, tmp_path)
    assert f"line 2: p0 gone.png is a link to {tmp_path / 'elsewhere.png'}, which does not exist" in line


def test_judge_beside_vote_counts_that_agree_is_accepted(tmp_path):
    path = csv_file(tmp_path, "ref,p0,p1,judge,votes_p0,votes_p1,votes\nim0.png,im1.png,im2.png,0.3333333,2,1,3\n")
    out = pack(path, tmp_path / "o.h5", size=8, workers=1, progress=False)
    with judgments.open_file(out) as f:
        g = f["2afc/train/mine"]
        np.testing.assert_allclose(g["judge"][()], [1 / 3])
        assert list(g["votes"][()]) == [3]


def test_csv_name_that_is_no_group_name_asks_for_group(tmp_path, capfd):
    path = csv_file(tmp_path, "ref,p0,p1,judge\nim0.png,im1.png,im2.png,0.5\n", name="my data.csv")
    line = assert_refused(["pack", str(path), str(tmp_path / "o.h5"), "--quiet"], capfd, tmp_path)
    assert "my data.csv" in line and "--group" in line


def test_folder_named_like_a_csv(tmp_path, capfd):
    (tmp_path / "x.csv").mkdir()
    line = assert_refused(["pack", str(tmp_path / "x.csv"), str(tmp_path / "o.h5"), "--quiet"], capfd, tmp_path)
    assert "x.csv: is a folder, not a CSV file" in line


def test_a_space_after_a_quoted_field_still_parses(tmp_path):
    path = csv_file(tmp_path, 'ref,p0,p1,judge\n"im0.png" ,im1.png,im2.png,0.25\n')
    out = pack(path, tmp_path / "o.h5", size=8, workers=1, progress=False)
    with judgments.open_file(out) as f:
        np.testing.assert_allclose(f["2afc/train/mine"]["judge"][()], [0.25])
