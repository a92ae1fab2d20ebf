"""pack reads NIGHTS as it is published (data.csv, ref/, distort/): four 2AFC groups, too few votes left out."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_refused
from pack_inputs import NIGHTS_HEADER, nights_root, nights_row

from lpips_lightning.cli.main import main
from lpips_lightning.data import group_checks, judgments

ROWS = [
    nights_row(0, 1.0, 6, "train"),
    nights_row(1, 0.25, 8, "train", imagenet=False),
    nights_row(2, 1.0, 3, "train"),  # fewer than 6 votes: left out by default
    nights_row(3, 0.0, 7, "val"),
    nights_row(4, 1.0, 6, "test", imagenet=True),
    nights_row(5, 0.0, 9, "test", imagenet=False),
    nights_row(6, 0.5, 10, "test", imagenet=False),
]


def _pack(root, *extra: str) -> int:
    return main(["pack", str(root), str(root / "n.h5"), "--size", "16", "--quiet", "--workers", "1", *extra])


def test_a_nights_root_packs_its_four_groups_and_says_what_it_left_out(tmp_path, capsys):
    root = nights_root(tmp_path / "nights", ROWS)
    assert _pack(root) == 0
    out, err = capsys.readouterr()
    assert err == f"{root / 'data.csv'}: left out 1 of 7 triplets with fewer than 6 votes (--min-votes)\n"
    assert "2afc/train/nights: 2 items" in out and "2afc/test/no_imagenet: 2 items" in out
    with judgments.open_file(root / "n.h5") as f:
        assert list(judgments.groups(f)) == [
            "2afc/test/imagenet",
            "2afc/test/no_imagenet",
            "2afc/train/nights",
            "2afc/val/nights",
        ]
        for group in judgments.groups(f):
            group_checks.validate_group(f, group)
        g = f["2afc/train/nights"]
        assert g.attrs["source"] == str(root)
        assert list(g["names"].asstr()[()]) == ["0", "1"]
        np.testing.assert_allclose(g["judge"][()], [1.0, 0.25])  # right_vote: the share preferring p1 (right)
        np.testing.assert_array_equal(g["votes"][()], [6, 8])
        # ref = ref_path (10 i), p0 = left_path (10 i + 1), p1 = right_path (10 i + 2), resized to 16 x 16
        assert g["ref"].shape == (2, 3, 16, 16)
        assert [int(g[k][1].max()) for k in ("ref", "p0", "p1")] == [10, 11, 12]
        t = f["2afc/test/no_imagenet"]
        assert list(t["names"].asstr()[()]) == ["5", "6"]
        np.testing.assert_allclose(t["judge"][()], [0.0, 0.5])
        assert list(f["2afc/test/imagenet/names"].asstr()[()]) == ["4"]


def test_min_votes_changes_what_is_left_out(tmp_path, capsys):
    root = nights_root(tmp_path / "nights", ROWS)
    assert _pack(root, "--min-votes", "0") == 0
    out, err = capsys.readouterr()
    assert err == "" and "2afc/train/nights: 3 items" in out
    assert _pack(root, "--min-votes", "8", "--overwrite") == 0
    out, err = capsys.readouterr()
    assert "left out 4 of 7 triplets with fewer than 8 votes" in err
    assert "2afc/val/nights" not in out  # its one triplet had 7 votes: no empty group is written
    with judgments.open_file(root / "n.h5") as f:
        assert list(judgments.groups(f)) == ["2afc/test/no_imagenet", "2afc/train/nights"]


def _missing_image(root):
    (root / "distort" / "001_1.png").unlink()


def _no_distort(root):
    for p in (root / "distort").iterdir():
        p.unlink()
    (root / "distort").rmdir()


BAD = [
    (NIGHTS_HEADER.replace(",is_imagenet", ""), [], "data.csv: missing column(s) is_imagenet"),
    (None, [nights_row(0), nights_row(1).replace(",6,ref", ",6.5,ref")], "line 3: column votes: '6.5' is not a whole"),
    (None, [nights_row(0).replace(",6,ref", ",six,ref")], "line 2: column votes: 'six' is not a whole"),
    (None, [nights_row(0).replace("0.0,1.0,6", "0.0,1.5,6")], "line 2: column right_vote: '1.5' is not a share"),
    (None, [nights_row(0, right_vote=-0.5)], "line 2: column left_vote: '1.5' is not a share of observers in [0, 1]"),
    (None, [nights_row(0).replace(",1.0,6", ",nan,6")], "line 2: column right_vote: 'nan' is not a share"),
    (
        None,
        [nights_row(0), nights_row(1), nights_row(0, split="val")],
        "line 4: column id: 0 is listed twice (also line 2)",
    ),
    (None, [nights_row(0, split="dev")], "line 2: column split: 'dev' is not one of train, val, test"),
    (None, [nights_row(0).replace(",True", ",maybe")], "line 2: column is_imagenet: 'maybe' is not True or False"),
    (None, [nights_row(0), nights_row(1)], "line 3: image distort/001_1.png does not exist"),
    (None, [nights_row(0, votes=2), nights_row(1, votes=5)], "every one of its 2 triplets has fewer than 6 votes"),
    (None, [nights_row(0)], "holds data.csv but no distort/: a NIGHTS root holds data.csv, ref/ and distort/"),
    (None, [], "data.csv: no rows below the header"),
]


@pytest.mark.parametrize(("header", "rows", "expected"), BAD)
def test_bad_nights_roots_are_one_line_and_write_nothing(tmp_path, capfd, header, rows, expected):
    root = nights_root(tmp_path / "nights", rows, header or NIGHTS_HEADER)
    if "001_1.png does not exist" in expected:
        _missing_image(root)
    if "no distort/" in expected:
        _no_distort(root)
    argv = ["pack", str(root), str(tmp_path / "o.h5"), "--quiet", "--workers", "1"]
    line = assert_refused(argv, capfd, tmp_path)
    assert expected in line, line
    assert str(root) in line  # names the file (or the root)


@pytest.mark.parametrize(
    ("source", "option", "expected"),
    [
        ("nights", ["--min-votes", "-1"], "--min-votes must be 0 or more, got -1"),
        ("nights", ["--lower-is-better"], "--lower-is-better applies to a MOS CSV (ref_name,dist_name,mos) only"),
        ("nights", ["--group", "2afc/train/x"], "--group applies to a CSV source"),
        ("mine.csv", ["--min-votes", "3"], "--min-votes applies to a NIGHTS root (a folder holding data.csv) only"),
    ],
)
def test_options_for_another_source_are_refused(tmp_path, capfd, source, option, expected):
    root = nights_root(tmp_path / "nights", ROWS)
    (root / "mine.csv").write_text("ref,p0,p1,judge\nref/000.png,distort/000_0.png,distort/000_1.png,0.5\n")
    argv = ["pack", str(root if source == "nights" else root / source), str(tmp_path / "o.h5"), "--quiet", *option]
    line = assert_refused(argv, capfd, tmp_path)
    assert expected in line, line
