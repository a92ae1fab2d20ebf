"""Inputs for the pack tests: CSVs beside tiny images, hand-made tar archives, sources slow enough to interrupt."""

from __future__ import annotations

import gzip
import io
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
from bapps_mirror import ARCHIVES
from conftest import assert_refused
from PIL import Image

from lpips_lightning.cli.main import main
from lpips_lightning.data import group_checks, judgments


def images(folder: Path, n: int = 3, size: int = 8) -> None:
    """``im0.png`` ... flat gray images of value 0, 40, 80, ..."""
    for i in range(n):
        Image.fromarray(np.full((size, size, 3), i * 40, np.uint8)).save(folder / f"im{i}.png")


def csv_file(folder: Path, text: str | bytes, name: str = "mine.csv") -> Path:
    """`text` as the CSV `name` in `folder`, beside the images `images` writes."""
    images(folder)
    path = folder / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def csv_rows(folder: Path, header: str, rows: list[str], n_images: int = 3) -> Path:
    """``mine.csv``: `header` and `rows`, beside `n_images` images."""
    images(folder, n_images)
    path = folder / "mine.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def bad_pack(tmp_path: Path, capsys, *args, match: str) -> str:
    """``pack ARGS --quiet --workers 1`` refused: status 2, one ``error:`` line holding `match`, no o.h5 left."""
    code = main(["pack", *map(str, args), "--quiet", "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert match in err, err
    assert not (tmp_path / "o.h5").exists()
    assert not list(tmp_path.glob(".o.h5.tmp*"))
    return err


ONE_ROW = "ref,p0,p1,judge\nim0.png,im1.png,im2.png,0.5\n"


# --- NIGHTS as published: data.csv, ref/, distort/ ---------------------------------------------------
NIGHTS_HEADER = "id,left_vote,right_vote,votes,ref_path,left_path,right_path,split,is_imagenet"


def nights_row(i: int, right_vote: float = 1.0, votes: int = 6, split: str = "train", imagenet: bool = True) -> str:
    """One data.csv row: triplet `i`'s images ``ref/i.png``, ``distort/i_0.png``, ``distort/i_1.png``."""
    return (
        f"{i},{1 - right_vote},{right_vote},{votes},ref/{i:03d}.png,distort/{i:03d}_0.png,distort/{i:03d}_1.png,"
        f"{split},{imagenet}"
    )


def nights_root(root: Path, rows: list[str], header: str = NIGHTS_HEADER, n: int = 8) -> Path:
    """A NIGHTS root: `header` and `rows` as data.csv; triplet i as 20x20 PNGs of values 10 i, 10 i + 1, 10 i + 2."""
    for folder in ("ref", "distort"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        for value, name in enumerate((f"ref/{i:03d}", f"distort/{i:03d}_0", f"distort/{i:03d}_1")):
            Image.fromarray(np.full((20, 20, 3), 10 * i + value, np.uint8)).save(root / f"{name}.png")
    (root / "data.csv").write_text("\n".join([header, *rows]) + "\n")
    return root


def npy(value) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array(value))
    return buffer.getvalue()


# --- archives by hand ------------------------------------------------------------------------------
def members(path: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """Every member of a .tar.gz with its data (None for what is not a file)."""
    with tarfile.open(path, "r:gz") as tar:
        return [(m, tar.extractfile(m).read() if m.isreg() else None) for m in tar.getmembers()]


def member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def special(name: str, type_: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = type_, linkname
    return info, None


def write_tar(path: Path, entries: list, compress: bool = True) -> Path:
    """A tar (gzip'd unless not `compress`) of `entries` (TarInfo, data) in that order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    path.write_bytes(gzip.compress(buffer.getvalue(), mtime=0) if compress else buffer.getvalue())
    return path


# --- sources slow enough to be interrupted half-way -------------------------------------------------
def slow_csv(folder: Path) -> Path:
    """A CSV of 400 triplets of three large uncompressed PNGs: seconds of decoding, milliseconds to make."""
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(
            folder / f"big{i}.png", compress_level=0
        )
    path = folder / "slow.csv"
    path.write_text("ref,p0,p1,judge\n" + "big0.png,big1.png,big2.png,0.5\n" * 400)
    return path


def slow_archive(path: Path) -> Path:
    """`path`: one subset of 60 triplets of 2048x2048 PNGs that compress to little: seconds to decode, kB to store."""
    ramp = np.broadcast_to(np.arange(2048, dtype=np.uint16)[None, :, None] // 8, (2048, 2048, 3)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="PNG", compress_level=9)
    png = buffer.getvalue()
    entries = []
    for i in range(60):
        entries += [member(f"val/slow/{f}/{i:06d}.png", png) for f in ("ref", "p0", "p1")]
        entries.append(member(f"val/slow/judge/{i:06d}.npy", npy(np.float32([0.5]))))
    return write_tar(path, entries)


# --- the tiny BAPPS archives (bapps_mirror.build_bapps_archives), copied, unpacked, edited ----------
def copy_archives(mirror: dict, folder: Path, *parts: str) -> Path:
    """`folder` holding copies of the mirror's archives (`parts`, default all three)."""
    folder.mkdir(parents=True, exist_ok=True)
    for part in parts or ARCHIVES:
        shutil.copy(mirror["archives"][part], folder / ARCHIVES[part])
    return folder


def extract(archives: dict, root: Path) -> Path:
    """Unpack the archives the way the original's instructions lay them out (2afc/ and jnd/ under `root`)."""
    for part, path in archives.items():
        target = root / "2afc" if part in ("train", "val") else root
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(path, "r:gz") as tar:
            tar.extractall(target, filter="data")
    return root


def assert_same_file(a: Path, b: Path) -> None:
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


def assert_holds(out: Path, groups: dict) -> None:
    """`out` holds exactly `groups` ({group: {field: array}}), named by stem, each valid."""
    with judgments.open_file(out) as f:
        assert list(judgments.groups(f)) == sorted(groups, key=lambda g: (g.split("/")[0] != "2afc", g))
        for group, arrays in groups.items():
            for key, value in arrays.items():
                np.testing.assert_array_equal(f[group][key][()], value)
            assert list(f[group]["names"].asstr()[()]) == [f"{i:06d}" for i in range(len(value))]
            group_checks.validate_group(f, group)


def edited(mirror: dict, folder: Path, edit: Callable[[list], list], part: str = "val") -> Path:
    """`folder` holding the mirror's `part` archive with its member list passed through `edit`."""
    write_tar(folder / ARCHIVES[part], edit(members(mirror["archives"][part])))
    return folder


def without(name: str) -> Callable[[list], list]:
    return lambda entries: [(m, d) for m, d in entries if m.name != name]


def replaced(name: str, data: bytes) -> Callable[[list], list]:
    return lambda entries: [(m, d) if m.name != name else member(name, data) for m, d in entries]


def added(*extra) -> Callable[[list], list]:
    return lambda entries: entries + list(extra)


def assert_pack_refused(source: Path, tmp_path: Path, capfd, expected: str) -> None:
    """`pack` of `source` is one line holding `expected` (``{tmp}``: the test's folder) naming a path in
    `tmp_path`, leaves nothing behind, and writes no member outside its output."""
    line = assert_refused(
        ["pack", str(source), str(tmp_path / "o.h5"), "--quiet", "--workers", "2", "--size", "16"], capfd, tmp_path
    )
    assert expected.format(tmp=tmp_path) in line, line
    assert line.count(str(tmp_path)) >= 1, line  # names the archive (or the folder)
    assert not (tmp_path / "escaped.png").exists() and not Path("/tmp/escaped.png").exists()
