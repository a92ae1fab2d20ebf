"""Pass 1 over the BAPPS archives (`pack.archive_index`): members placed and paired as files are, so that the
archives pack to the same file as their unpacked tree; a bad layout refused before the output is touched."""

from __future__ import annotations

import copy
import tarfile
from pathlib import Path

import h5py
import pytest
from bapps_mirror import ARCHIVES, build_bapps_archives
from conftest import assert_refused, snapshot
from pack_inputs import (
    added,
    assert_holds,
    assert_pack_refused,
    assert_same_file,
    copy_archives,
    edited,
    extract,
    member,
    members,
    special,
    without,
    write_tar,
)

from lpips_lightning.cli.main import main
from lpips_lightning.pack import archive_index
from lpips_lightning.pack.pack import pack

TRAIN, VAL, JND = ARCHIVES["train"], ARCHIVES["val"], ARCHIVES["jnd"]
FOLDERS_2AFC = ("ref", "p0", "p1", "judge")


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> dict:
    """The three tiny archives (members shuffled), and the arrays each group must hold."""
    return build_bapps_archives(tmp_path_factory.mktemp("mirror"), n=3, size=16)


# --- the same file as from the unpacked tree -----------------------------------------------------
def test_archives_pack_to_the_same_file_as_the_extracted_tree(tmp_path, mirror, capfd):
    source = copy_archives(mirror, tmp_path / "data")
    tree = extract(mirror["archives"], tmp_path / "tree")
    before = snapshot(source)
    pack(tree, tmp_path / "tree.h5", size=16, workers=2, progress=False)
    capfd.readouterr()
    assert main(["pack", str(source), str(tmp_path / "archives.h5"), "--size", "16", "--workers", "2"]) == 0
    err = capfd.readouterr().err
    assert "index twoafc_train.tar.gz" in err and "pack jnd.tar.gz" in err  # progress in bytes, per archive
    assert_same_file(tmp_path / "tree.h5", tmp_path / "archives.h5")
    assert_holds(tmp_path / "archives.h5", mirror["groups"])
    with h5py.File(tmp_path / "archives.h5") as f:
        assert f["2afc/val/cnn"].attrs["source"] == f"{source / VAL}:val/cnn"
    assert snapshot(source) == before  # nothing unpacked, nothing written beside the archives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archives.h5", "data", "tree", "tree.h5"]


@pytest.mark.parametrize(
    "shuffle, top, size",
    [(False, "./", 16), (True, "dataset/", 16), (False, "", 8)],
    ids=["folder-order-dot", "dataset-top", "resized"],
)
def test_archive_variants(tmp_path, shuffle, top, size):
    built = build_bapps_archives(tmp_path / "data", n=4, size=16, seed=1, shuffle=shuffle, top=top)
    out = pack(tmp_path / "data", tmp_path / "o.h5", size=size, workers=1, progress=False)
    if size == 16:
        assert_holds(out, built["groups"])
    else:  # resized as the tree would be
        tree = extract(built["archives"], tmp_path / "tree")
        assert_same_file(pack(tree, tmp_path / "t.h5", size=size, workers=1, progress=False), out)


def test_one_archive_file_or_some_of_the_three(tmp_path, mirror):
    out = pack(mirror["archives"]["jnd"], tmp_path / "jnd.h5", size=16, workers=1, progress=False)
    assert_holds(out, {g: a for g, a in mirror["groups"].items() if g.startswith("jnd/")})
    copy_archives(mirror, tmp_path / "some", "val", "jnd")
    out = pack(tmp_path / "some", tmp_path / "some.h5", size=16, workers=2, progress=False)
    assert_holds(out, {g: a for g, a in mirror["groups"].items() if not g.startswith("2afc/train/")})


# --- layouts and pairings refused ----------------------------------------------------------------
def _members_under(path: Path, prefix: str) -> list:
    return [(m, d) for m, d in members(path) if m.name.startswith(prefix)]


def _both(mirror: dict, folder: Path) -> Path:
    copy_archives(mirror, folder, "val")
    (folder / "2afc" / "val").mkdir(parents=True)
    return folder


def _partial(mirror: dict, folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / f".{TRAIN}.part").write_bytes(b"\x1f\x8b half")
    return folder


def _partial_beside(mirror: dict, folder: Path) -> Path:
    """val and jnd downloaded, train still a .part: packing the two would leave training data out."""
    copy_archives(mirror, folder, "val", "jnd")
    (folder / f".{TRAIN}.part").write_bytes(b"\x1f\x8b half")
    return folder


BAD = {
    "unexpected-layout": (
        lambda m, f: write_tar(f / VAL, [member("images/cnn/ref/0.png", b"x")]).parent,
        "no BAPPS subsets inside (expected train/<subset>/..., val/<subset>/... or jnd/<split>/<subset>/...; "
        "its first member is images/cnn/ref/0.png)",
    ),
    "empty-archive": (lambda m, f: write_tar(f / VAL, []).parent, "no BAPPS subsets inside"),
    "stem-missing": (
        lambda m, f: edited(m, f, without("val/cnn/p1/000002.png")),
        f"{VAL}: val/cnn/p1: no file for stem 000002 (present in ref/)",
    ),
    "duplicate-stem": (
        lambda m, f: edited(m, f, added(member("val/cnn/ref/000001.jpg", b"x"))),
        "val/cnn/ref: two files with stem '000001' (000001.jpg, 000001.png)",
    ),
    "member-twice": (
        lambda m, f: edited(m, f, added(member("./val/cnn/ref/000001.png", b"x"))),
        "member ./val/cnn/ref/000001.png appears twice in the archive",
    ),
    "empty-subset": (
        lambda m, f: edited(m, f, added(*(special(f"val/empty/{d}", tarfile.DIRTYPE) for d in FOLDERS_2AFC))),
        f"{VAL}: val/empty: the 2afc subset is empty",
    ),
    "missing-folder": (
        lambda m, f: edited(m, f, lambda ms: [(i, d) for i, d in ms if not i.name.startswith("val/cnn/judge")]),
        f"{VAL}: val/cnn: missing sub-folder(s) judge (a 2afc subset needs ref, p0, p1, judge)",
    ),
    "subset-in-two-archives": (
        lambda m, f: edited(
            m, copy_archives(m, f, "train"), added(*_members_under(m["archives"]["train"], "train/cnn/"))
        ),
        f"train/cnn (2afc/train/cnn) is in {{tmp}}/case/{TRAIN} too; keep one of the two archives",
    ),
    "tree-and-archives": (_both, "holds both an unpacked BAPPS tree (2afc/) and archives (twoafc_val.tar.gz)"),
    "partial-download": (_partial, f"{TRAIN} is only partly downloaded (.{TRAIN}.part); run `lpips-lightning download"),
    "partial beside complete archives": (
        _partial_beside,
        f"{TRAIN} is only partly downloaded (.{TRAIN}.part); run `lpips-lightning download",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_layouts_are_refused_in_one_line(tmp_path, mirror, capfd, case):
    make, expected = BAD[case]
    assert_pack_refused(make(mirror, tmp_path / "case"), tmp_path, capfd, expected)


def _renamed(info: tarfile.TarInfo, name: str) -> tarfile.TarInfo:
    info = copy.copy(info)
    info.name = name
    return info


def test_bad_group_name_in_an_archive(tmp_path, mirror, capfd):
    def rename(entries):
        return [(_renamed(i, i.name.replace("val/cnn", "val/my cnn")), d) for i, d in entries]

    source = edited(mirror, tmp_path / "case", rename)
    line = assert_refused(["pack", str(source), str(tmp_path / "o.h5"), "--quiet"], capfd, tmp_path)
    assert "val/my cnn: folder names become the group name '2afc/val/my cnn'" in line, line


def test_group_option_and_outputs_refused_before_any_archive_is_read(tmp_path, mirror, capfd, monkeypatch):
    source = copy_archives(mirror, tmp_path / "data", "jnd")
    line = assert_refused(["pack", str(source), str(tmp_path / "o.h5"), "--group", "x/y/z"], capfd, tmp_path)
    assert "--group applies to a CSV source" in line

    def never(*args):
        raise AssertionError("an archive was read")

    monkeypatch.setattr(archive_index, "archive_members", never)
    line = assert_refused(["pack", str(source), str(source / JND), "--overwrite"], capfd, tmp_path)
    assert "is also an input of this command" in line
    (tmp_path / "o.h5").write_text("precious")
    for src in (source, source / JND):
        line = assert_refused(["pack", str(src), str(tmp_path / "o.h5")], capfd, tmp_path)
        assert "o.h5 already exists; pass --overwrite" in line
