"""`pack` reading the downloaded BAPPS archives directly: the same file as packing the unpacked tree,
every bad archive refused in one line, signals as for folders."""

from __future__ import annotations

import copy
import gzip
import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from bapps_mirror import ARCHIVES, build_bapps_archives
from conftest import assert_refused, snapshot, start_pack
from PIL import Image

from lpips_lightning import judgments
from lpips_lightning import pack as pack_module
from lpips_lightning.errors import PackError
from lpips_lightning.pack import Interrupted, pack

CLI = (sys.executable, "-m", "lpips_lightning.cli")
TRAIN, VAL, JND = ARCHIVES["train"], ARCHIVES["val"], ARCHIVES["jnd"]


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> dict:
    """The three tiny archives (members shuffled), and the arrays each group must hold."""
    return build_bapps_archives(tmp_path_factory.mktemp("mirror"), n=3, size=16)


def _copy(mirror: dict, folder: Path, *parts: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for part in parts or ARCHIVES:
        shutil.copy(mirror["archives"][part], folder / ARCHIVES[part])
    return folder


def _extract(archives: dict, root: Path) -> Path:
    """Unpack the archives the way the original's instructions lay them out (2afc/ and jnd/ under `root`)."""
    for part, path in archives.items():
        target = root / "2afc" if part in ("train", "val") else root
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(path, "r:gz") as tar:
            tar.extractall(target, filter="data")
    return root


def _same_file(a: Path, b: Path) -> None:
    """Same groups, datasets, dtypes, shapes, chunks, values and attributes (but `source`)."""
    with h5py.File(a) as fa, h5py.File(b) as fb:
        names_a, names_b = [], []
        fa.visit(names_a.append)
        fb.visit(names_b.append)
        assert names_a == names_b
        assert dict(fa.attrs) == dict(fb.attrs)
        for name in names_a:
            x, y = fa[name], fb[name]
            assert type(x) is type(y), name
            assert {k: v for k, v in x.attrs.items() if k != "source"} == {
                k: v for k, v in y.attrs.items() if k != "source"
            }, name
            if isinstance(x, h5py.Dataset):
                assert (x.dtype, x.shape, x.chunks, x.compression) == (y.dtype, y.shape, y.chunks, y.compression), name
                assert np.array_equal(x[()], y[()]), name


def _expected(out: Path, groups: dict) -> None:
    with judgments.open_file(out) as f:
        assert list(judgments.groups(f)) == sorted(groups, key=lambda g: (g.split("/")[0] != "2afc", g))
        for group, arrays in groups.items():
            for key, value in arrays.items():
                np.testing.assert_array_equal(f[group][key][()], value)
            assert list(f[group]["names"].asstr()[()]) == [f"{i:06d}" for i in range(len(value))]
            judgments.validate_group(f, group)


# --- the same file as from the unpacked tree -----------------------------------------------------
def test_archives_pack_to_the_same_file_as_the_extracted_tree(tmp_path, mirror, capfd):
    source = _copy(mirror, tmp_path / "data")
    tree = _extract(mirror["archives"], tmp_path / "tree")
    before = snapshot(source)
    pack(tree, tmp_path / "tree.h5", size=16, workers=2, progress=False)
    capfd.readouterr()
    from lpips_lightning.cli.main import main

    assert main(["pack", str(source), str(tmp_path / "archives.h5"), "--size", "16", "--workers", "2"]) == 0
    err = capfd.readouterr().err
    assert "index twoafc_train.tar.gz" in err and "pack jnd.tar.gz" in err  # progress in bytes, per archive
    _same_file(tmp_path / "tree.h5", tmp_path / "archives.h5")
    _expected(tmp_path / "archives.h5", mirror["groups"])
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
        _expected(out, built["groups"])
    else:  # resized as the tree would be
        tree = _extract(built["archives"], tmp_path / "tree")
        _same_file(pack(tree, tmp_path / "t.h5", size=size, workers=2, progress=False), out)


def test_one_archive_file_or_some_of_the_three(tmp_path, mirror):
    out = pack(mirror["archives"]["jnd"], tmp_path / "jnd.h5", size=16, workers=1, progress=False)
    _expected(out, {g: a for g, a in mirror["groups"].items() if g.startswith("jnd/")})
    _copy(mirror, tmp_path / "some", "val", "jnd")
    out = pack(tmp_path / "some", tmp_path / "some.h5", size=16, workers=2, progress=False)
    _expected(out, {g: a for g, a in mirror["groups"].items() if not g.startswith("2afc/train/")})


def test_plain_tar_and_files_beside_the_layout_are_fine(tmp_path, mirror):
    """An uncompressed .tar reads the same; files outside the layout are ignored, as in a folder."""
    members = _members(mirror["archives"]["val"])
    members += [
        _file("val/README.txt", b"hello"),
        _file("val/cnn/notes.txt", b"x"),
        _file("val/cnn/ref/sub/000000.png", b"not read"),
        _file("val/cnn/ref/.DS_Store", b"x"),
        _file("LICENSE", b"x"),
    ]
    _write(tmp_path / "v.tar", members, compress=False)
    out = pack(tmp_path / "v.tar", tmp_path / "o.h5", size=16, workers=1, progress=False)
    _expected(out, {g: a for g, a in mirror["groups"].items() if g.startswith("2afc/val/")})


def test_16_bit_colour_members_decode_as_files_do(tmp_path):
    """The 16-bit colour path decodes an image twice (high, then low bytes): from a member's bytes too."""
    from test_trust_pack import _png16, _rgb_samples

    tree = tmp_path / "tree" / "2afc" / "val" / "deep"
    members = []
    for i, f in enumerate(("ref", "p0", "p1")):
        (tree / f).mkdir(parents=True)
        _png16(tree / f / "000000.png", np.roll(_rgb_samples(), i, axis=2), 2)
        members.append(_file(f"val/deep/{f}/000000.png", (tree / f / "000000.png").read_bytes()))
    (tree / "judge").mkdir()
    np.save(tree / "judge" / "000000.npy", np.float32([0.25]))
    members.append(_file("val/deep/judge/000000.npy", (tree / "judge" / "000000.npy").read_bytes()))
    _write(tmp_path / "data" / VAL, members)
    a = pack(tmp_path / "data", tmp_path / "a.h5", size=4, workers=1, progress=False)
    _same_file(pack(tmp_path / "tree", tmp_path / "t.h5", size=4, workers=1, progress=False), a)


# --- bad archives: one line each, nothing left behind ----------------------------------------------
def _members(path: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(path, "r:gz") as tar:
        return [(m, tar.extractfile(m).read() if m.isreg() else None) for m in tar.getmembers()]


def _members_under(path: Path, prefix: str) -> list:
    return [(m, d) for m, d in _members(path) if m.name.startswith(prefix)]


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, type_: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = type_, linkname
    return info, None


def _write(path: Path, members: list, compress: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    path.write_bytes(gzip.compress(buffer.getvalue(), mtime=0) if compress else buffer.getvalue())
    return path


def _edited(mirror: dict, folder: Path, edit: Callable[[list], list], part: str = "val") -> Path:
    """`folder` holding the mirror's `part` archive with its member list passed through `edit`."""
    _write(folder / ARCHIVES[part], edit(_members(mirror["archives"][part])))
    return folder


def _without(name: str) -> Callable[[list], list]:
    return lambda members: [(m, d) for m, d in members if m.name != name]


def _replaced(name: str, data: bytes) -> Callable[[list], list]:
    return lambda members: [(m, d) if m.name != name else _file(name, data) for m, d in members]


def _added(*extra) -> Callable[[list], list]:
    return lambda members: members + list(extra)


def _npy(value) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array(value))
    return buffer.getvalue()


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
        members = tar.getmembers()
    damage(raw, members)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / TRAIN).write_bytes(gzip.compress(bytes(raw)))
    return folder


def _corrupt_header(raw: bytearray, members: list) -> None:
    raw[members[len(members) // 2].offset + 3] ^= 0x55  # its name: the header checksum fails


def _drop_end(raw: bytearray, members: list) -> None:
    last = members[-1]
    del raw[last.offset_data + -(-last.size // 512) * 512 :]  # no end-of-archive blocks


def _both(mirror: dict, folder: Path) -> Path:
    _copy(mirror, folder, "val")
    (folder / "2afc" / "val").mkdir(parents=True)
    return folder


def _partial(mirror: dict, folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / f".{TRAIN}.part").write_bytes(b"\x1f\x8b half")
    return folder


def _partial_beside(mirror: dict, folder: Path) -> Path:
    """val and jnd downloaded, train still a .part: packing the two would leave training data out."""
    _copy(mirror, folder, "val", "jnd")
    (folder / f".{TRAIN}.part").write_bytes(b"\x1f\x8b half")
    return folder


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
    "unexpected-layout": (
        lambda m, f: _write(f / VAL, [_file("images/cnn/ref/0.png", b"x")]).parent,
        "no BAPPS subsets inside (expected train/<subset>/..., val/<subset>/... or jnd/<split>/<subset>/...; "
        "its first member is images/cnn/ref/0.png)",
    ),
    "empty-archive": (lambda m, f: _write(f / VAL, []).parent, "no BAPPS subsets inside"),
    "dot-dot": (
        lambda m, f: _edited(m, f, _added(_file("val/../../escaped.png", b"x"))),
        "member val/../../escaped.png would land outside the folder it is extracted into ('..' in its path)",
    ),
    "absolute": (
        lambda m, f: _edited(m, f, _added(_file("/tmp/escaped.png", b"x"))),
        "member /tmp/escaped.png would land outside the folder it is extracted into (an absolute path)",
    ),
    "symlink-out": (
        lambda m, f: _edited(m, f, _added(_special("val/cnn/ref/link.png", tarfile.SYMTYPE, "../../../../etc/passwd"))),
        "member val/cnn/ref/link.png would land outside the folder it is extracted into "
        "(a symbolic link to ../../../../etc/passwd)",
    ),
    "symlink-absolute": (
        lambda m, f: _edited(m, f, _added(_special("val/x", tarfile.SYMTYPE, "/etc/passwd"))),
        "(a symbolic link to /etc/passwd)",
    ),
    "hardlink-out": (
        lambda m, f: _edited(m, f, _added(_special("val/cnn/ref/hard.png", tarfile.LNKTYPE, "../outside"))),
        "member val/cnn/ref/hard.png would land outside the folder it is extracted into (a hard link to ../outside)",
    ),
    "symlink-inside": (
        lambda m, f: _edited(m, f, _added(_special("val/cnn/ref/000009.png", tarfile.SYMTYPE, "000001.png"))),
        "member val/cnn/ref/000009.png is a symbolic link; pack reads only files and folders from archives",
    ),
    "device": (
        lambda m, f: _edited(m, f, _added(_special("val/cnn/ref/dev", tarfile.CHRTYPE))),
        "member val/cnn/ref/dev is a device file",
    ),
    "fifo": (
        lambda m, f: _edited(m, f, _added(_special("val/cnn/fifo", tarfile.FIFOTYPE))),
        "member val/cnn/fifo is a FIFO",
    ),
    "image-does-not-decode": (
        lambda m, f: _edited(m, f, _replaced(_LINK, b"\x89PNG broken")),
        f"{VAL}: {_LINK}: image does not decode (",
    ),
    "bad-judgment": (
        lambda m, f: _edited(m, f, _replaced("val/cnn/judge/000002.npy", _npy([1.5]))),
        f"{VAL}: val/cnn/judge/000002.npy: judgment 1.5 is not a finite number in [0, 1]",
    ),
    "stem-missing": (
        lambda m, f: _edited(m, f, _without("val/cnn/p1/000002.png")),
        f"{VAL}: val/cnn/p1: no file for stem 000002 (present in ref/)",
    ),
    "duplicate-stem": (
        lambda m, f: _edited(m, f, _added(_file("val/cnn/ref/000001.jpg", b"x"))),
        "val/cnn/ref: two files with stem '000001' (000001.jpg, 000001.png)",
    ),
    "member-twice": (
        lambda m, f: _edited(m, f, _added(_file("./val/cnn/ref/000001.png", b"x"))),
        "member ./val/cnn/ref/000001.png appears twice in the archive",
    ),
    "empty-subset": (
        lambda m, f: _edited(m, f, _added(*(_special(f"val/empty/{d}", tarfile.DIRTYPE) for d in FOLDERS_2AFC))),
        f"{VAL}: val/empty: the 2afc subset is empty",
    ),
    "missing-folder": (
        lambda m, f: _edited(m, f, lambda ms: [(i, d) for i, d in ms if not i.name.startswith("val/cnn/judge")]),
        f"{VAL}: val/cnn: missing sub-folder(s) judge (a 2afc subset needs ref, p0, p1, judge)",
    ),
    "subset-in-two-archives": (
        lambda m, f: _edited(m, _copy(m, f, "train"), _added(*_members_under(m["archives"]["train"], "train/cnn/"))),
        f"train/cnn (2afc/train/cnn) is in {{tmp}}/case/{TRAIN} too; keep one of the two archives",
    ),
    "tree-and-archives": (_both, "holds both an unpacked BAPPS tree (2afc/) and archives (twoafc_val.tar.gz)"),
    "partial-download": (_partial, f"{TRAIN} is only partly downloaded (.{TRAIN}.part); run `lpips-lightning download"),
    "partial beside complete archives": (
        lambda m, f: _partial_beside(m, f),
        f"{TRAIN} is only partly downloaded (.{TRAIN}.part); run `lpips-lightning download",
    ),
}
FOLDERS_2AFC = ("ref", "p0", "p1", "judge")


@pytest.mark.parametrize("case", list(BAD))
def test_bad_archives_are_refused_in_one_line(tmp_path, mirror, capfd, case):
    make, expected = BAD[case]
    source = make(mirror, tmp_path / "case")
    line = assert_refused(
        ["pack", str(source), str(tmp_path / "o.h5"), "--quiet", "--workers", "2", "--size", "16"], capfd, tmp_path
    )
    assert expected.format(tmp=tmp_path) in line, line
    assert line.count(str(tmp_path)) >= 1, line  # names the archive (or the folder)
    assert not (tmp_path / "escaped.png").exists() and not Path("/tmp/escaped.png").exists()


def test_bad_group_name_in_an_archive(tmp_path, mirror, capfd):
    def rename(members):
        return [(_renamed(i, i.name.replace("val/cnn", "val/my cnn")), d) for i, d in members]

    source = _edited(mirror, tmp_path / "case", rename)
    line = assert_refused(["pack", str(source), str(tmp_path / "o.h5"), "--quiet"], capfd, tmp_path)
    assert "val/my cnn: folder names become the group name '2afc/val/my cnn'" in line, line


def _renamed(info: tarfile.TarInfo, name: str) -> tarfile.TarInfo:
    info = copy.copy(info)
    info.name = name
    return info


def test_group_option_and_outputs_refused_before_any_archive_is_read(tmp_path, mirror, capfd, monkeypatch):
    source = _copy(mirror, tmp_path / "data", "jnd")
    line = assert_refused(["pack", str(source), str(tmp_path / "o.h5"), "--group", "x/y/z"], capfd, tmp_path)
    assert "--group applies to a CSV source" in line

    def never(*args):
        raise AssertionError("an archive was read")

    monkeypatch.setattr(pack_module, "archive_members", never)
    line = assert_refused(["pack", str(source), str(source / JND), "--overwrite"], capfd, tmp_path)
    assert "is also an input of this command" in line
    (tmp_path / "o.h5").write_text("precious")
    for src in (source, source / JND):
        line = assert_refused(["pack", str(src), str(tmp_path / "o.h5")], capfd, tmp_path)
        assert "o.h5 already exists; pass --overwrite" in line


# --- the worker pipes: big tasks, big results ----------------------------------------------------
def test_decoder_never_deadlocks_on_messages_larger_than_a_pipe(tmp_path):
    """Tasks and results both larger than a pipe holds, many chunks in flight: must finish, in order."""
    code = (
        "import io, numpy as np\n"
        "from PIL import Image\n"
        "from lpips_lightning.pack import _Decoder, _MemberTask\n"
        "rng = np.random.default_rng(0)\n"
        "buf = io.BytesIO(); Image.fromarray(rng.integers(0, 256, (160, 160, 3), dtype=np.uint8)).save(buf, 'PNG')\n"
        "tasks = [_MemberTask(buf.getvalue(), f'm{i}', True, 160, (0, 0, i)) for i in range(400)]\n"
        "d = _Decoder(2, lambda: None)\n"
        "rows = [tag[2] for tag, image in d.decoded(tasks, chunk=16, ahead=64)]\n"
        "d.close()\n"
        "assert rows == list(range(400)), rows\n"
        "print('done')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "done" in result.stdout, result.stderr


# --- signals ----------------------------------------------------------------------------------------
@pytest.fixture
def slow_archive(tmp_path) -> Path:
    """One subset of 60 triplets of 2048x2048 PNGs that compress to little: seconds to decode, kB to store."""
    ramp = np.broadcast_to(np.arange(2048, dtype=np.uint16)[None, :, None] // 8, (2048, 2048, 3)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="PNG", compress_level=9)
    png = buffer.getvalue()
    members = []
    for i in range(60):
        members += [_file(f"val/slow/{f}/{i:06d}.png", png) for f in ("ref", "p0", "p1")]
        members.append(_file(f"val/slow/judge/{i:06d}.npy", _npy(np.float32([0.5]))))
    return _write(tmp_path / "data" / VAL, members).parent


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_archive_leaves_nothing(tmp_path, slow_archive, signum, status):
    out = tmp_path / "o.h5"
    out.write_text("precious")
    proc = start_pack(slow_archive, out, "--overwrite")  # in pass 2
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
    source = _copy(mirror, tmp_path / "data")
    index_member = pack_module._index_member
    calls = []

    def index_then_interrupt(*args):
        calls.append(1)
        index_member(*args)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(pack_module, "_index_member", index_then_interrupt)
    before = snapshot(tmp_path)
    with pytest.raises(Interrupted) as info:
        pack(source, tmp_path / "o.h5", size=16, workers=2, progress=False)
    assert info.value.status == 143 and len(calls) < 10
    assert snapshot(tmp_path) == before


def test_failed_archive_pack_keeps_the_old_file(tmp_path, mirror):
    source = _edited(mirror, tmp_path / "data", _replaced("val/cnn/p0/000000.png", b"broken"))
    (tmp_path / "o.h5").write_text("precious")
    with pytest.raises(PackError, match="val/cnn/p0/000000.png: image does not decode"):
        pack(source, tmp_path / "o.h5", size=16, workers=2, overwrite=True, progress=False)
    assert (tmp_path / "o.h5").read_text() == "precious" and not list(tmp_path.glob(".o.h5.tmp-*"))
