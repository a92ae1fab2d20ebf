"""Archives read as a stream (`pack.archives`): plain tar too, members' bytes decoded as files are; every damaged
archive, unsafe member and bad member refused in one line, nothing extracted, nothing left behind."""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from bapps_mirror import ARCHIVES, build_bapps_archives
from conftest import rgb16_samples, write_png16
from pack_inputs import (
    added,
    assert_holds,
    assert_pack_refused,
    assert_same_file,
    edited,
    member,
    members,
    npy,
    replaced,
    special,
    write_tar,
)

from lpips_lightning.errors import PackError
from lpips_lightning.pack.pack import pack

TRAIN, VAL = ARCHIVES["train"], ARCHIVES["val"]


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> dict:
    """The three tiny archives (members shuffled), and the arrays each group must hold."""
    return build_bapps_archives(tmp_path_factory.mktemp("mirror"), n=3, size=16)


def test_plain_tar_and_files_beside_the_layout_are_fine(tmp_path, mirror):
    """An uncompressed .tar reads the same; files outside the layout are ignored, as in a folder."""
    entries = members(mirror["archives"]["val"])
    entries += [
        member("val/README.txt", b"hello"),
        member("val/cnn/notes.txt", b"x"),
        member("val/cnn/ref/sub/000000.png", b"not read"),
        member("val/cnn/ref/.DS_Store", b"x"),
        member("LICENSE", b"x"),
    ]
    write_tar(tmp_path / "v.tar", entries, compress=False)
    out = pack(tmp_path / "v.tar", tmp_path / "o.h5", size=16, workers=1, progress=False)
    assert_holds(out, {g: a for g, a in mirror["groups"].items() if g.startswith("2afc/val/")})


def test_16_bit_colour_members_decode_as_files_do(tmp_path):
    """The 16-bit colour path decodes an image twice (high, then low bytes): from a member's bytes too."""
    tree = tmp_path / "tree" / "2afc" / "val" / "deep"
    entries = []
    for i, f in enumerate(("ref", "p0", "p1")):
        (tree / f).mkdir(parents=True)
        write_png16(tree / f / "000000.png", np.roll(rgb16_samples(), i, axis=2), 2)
        entries.append(member(f"val/deep/{f}/000000.png", (tree / f / "000000.png").read_bytes()))
    (tree / "judge").mkdir()
    np.save(tree / "judge" / "000000.npy", np.float32([0.25]))
    entries.append(member("val/deep/judge/000000.npy", (tree / "judge" / "000000.npy").read_bytes()))
    write_tar(tmp_path / "data" / VAL, entries)
    a = pack(tmp_path / "data", tmp_path / "a.h5", size=4, workers=1, progress=False)
    assert_same_file(pack(tmp_path / "tree", tmp_path / "t.h5", size=4, workers=1, progress=False), a)


# --- damaged archives, unsafe members, members that do not decode ----------------------------------
def _cut(mirror: dict, folder: Path, keep: Callable[[int], int]) -> Path:
    data = mirror["archives"]["train"].read_bytes()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / TRAIN).write_bytes(data[: keep(len(data))])
    return folder


def _flipped(mirror: dict, folder: Path) -> Path:
    data = bytearray(mirror["archives"]["train"].read_bytes())
    data[len(data) // 2] ^= 0xFF
    folder.mkdir(parents=True, exist_ok=True)
    (folder / TRAIN).write_bytes(bytes(data))
    return folder


def _tar_inside(mirror: dict, folder: Path, damage: Callable[[bytearray, list], None]) -> Path:
    raw = bytearray(gzip.decompress(mirror["archives"]["train"].read_bytes()))
    with tarfile.open(fileobj=io.BytesIO(bytes(raw))) as tar:
        infos = tar.getmembers()
    damage(raw, infos)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / TRAIN).write_bytes(gzip.compress(bytes(raw)))
    return folder


def _corrupt_header(raw: bytearray, infos: list) -> None:
    raw[infos[len(infos) // 2].offset + 3] ^= 0x55  # its name: the header checksum fails


def _drop_end(raw: bytearray, infos: list) -> None:
    last = infos[-1]
    del raw[last.offset_data + -(-last.size // 512) * 512 :]  # no end-of-archive blocks


_LINK = "val/cnn/ref/000001.png"
BAD = {
    "truncated": (lambda m, f: _cut(m, f, lambda n: n // 2), f"{TRAIN}: damaged or cut short after member train/"),
    "cut-before-trailer": (lambda m, f: _cut(m, f, lambda n: n - 4), "the file ends early"),
    "corrupt-bytes": (_flipped, f"{TRAIN}: damaged"),
    "damaged-tar-header": (lambda m, f: _tar_inside(m, f, _corrupt_header), "(a damaged tar header)"),
    "no-end-of-archive": (lambda m, f: _tar_inside(m, f, _drop_end), "the file ends early"),
    "not-an-archive": (
        lambda m, f: (f.mkdir(), (f / TRAIN).write_text("<html>404 Not Found</html>"), f)[-1],
        f"{TRAIN}: not a .tar.gz archive",
    ),
    "gzip-not-tar": (
        lambda m, f: (f.mkdir(), (f / VAL).write_bytes(gzip.compress(b"just text" * 100)), f)[-1],
        f"{VAL}: gzip-compressed, but no tar archive inside",
    ),
    "dot-dot": (
        lambda m, f: edited(m, f, added(member("val/../../escaped.png", b"x"))),
        "member val/../../escaped.png would land outside the folder it is extracted into ('..' in its path)",
    ),
    "absolute": (
        lambda m, f: edited(m, f, added(member("/tmp/escaped.png", b"x"))),
        "member /tmp/escaped.png would land outside the folder it is extracted into (an absolute path)",
    ),
    "symlink-out": (
        lambda m, f: edited(m, f, added(special("val/cnn/ref/link.png", tarfile.SYMTYPE, "../../../../etc/passwd"))),
        "member val/cnn/ref/link.png would land outside the folder it is extracted into "
        "(a symbolic link to ../../../../etc/passwd)",
    ),
    "symlink-absolute": (
        lambda m, f: edited(m, f, added(special("val/x", tarfile.SYMTYPE, "/etc/passwd"))),
        "(a symbolic link to /etc/passwd)",
    ),
    "hardlink-out": (
        lambda m, f: edited(m, f, added(special("val/cnn/ref/hard.png", tarfile.LNKTYPE, "../outside"))),
        "member val/cnn/ref/hard.png would land outside the folder it is extracted into (a hard link to ../outside)",
    ),
    "symlink-inside": (
        lambda m, f: edited(m, f, added(special("val/cnn/ref/000009.png", tarfile.SYMTYPE, "000001.png"))),
        "member val/cnn/ref/000009.png is a symbolic link; pack reads only files and folders from archives",
    ),
    "device": (
        lambda m, f: edited(m, f, added(special("val/cnn/ref/dev", tarfile.CHRTYPE))),
        "member val/cnn/ref/dev is a device file",
    ),
    "fifo": (
        lambda m, f: edited(m, f, added(special("val/cnn/fifo", tarfile.FIFOTYPE))),
        "member val/cnn/fifo is a FIFO",
    ),
    "image-does-not-decode": (
        lambda m, f: edited(m, f, replaced(_LINK, b"\x89PNG broken")),
        f"{VAL}: {_LINK}: image does not decode (",
    ),
    "bad-judgment": (
        lambda m, f: edited(m, f, replaced("val/cnn/judge/000002.npy", npy([1.5]))),
        f"{VAL}: val/cnn/judge/000002.npy: judgment 1.5 is not a finite number in [0, 1]",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_archives_are_refused_in_one_line(tmp_path, mirror, capfd, case):
    make, expected = BAD[case]
    assert_pack_refused(make(mirror, tmp_path / "case"), tmp_path, capfd, expected)


def test_failed_archive_pack_keeps_the_old_file(tmp_path, mirror):
    source = edited(mirror, tmp_path / "data", replaced("val/cnn/p0/000000.png", b"broken"))
    (tmp_path / "o.h5").write_text("precious")
    with pytest.raises(PackError, match="val/cnn/p0/000000.png: image does not decode"):
        pack(source, tmp_path / "o.h5", size=16, workers=2, overwrite=True, progress=False)
    assert (tmp_path / "o.h5").read_text() == "precious" and not list(tmp_path.glob(".o.h5.tmp-*"))
