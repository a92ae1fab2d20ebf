"""Packing BAPPS folders and CSVs: round trips, and every bad input refused cleanly."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import make_bapps
from PIL import Image

from lpips_lightning import judgments
from lpips_lightning.cli.main import main
from lpips_lightning.errors import JudgmentsError, PackError
from lpips_lightning.pack import pack


@pytest.mark.parametrize("workers", [1, 2])
def test_bapps_round_trip_pairs_by_stem(tmp_path, workers):
    expected = make_bapps(tmp_path / "b", n=7)
    out = pack(tmp_path / "b", tmp_path / "o.h5", size=32, workers=workers, progress=False)
    with judgments.open_file(out) as f:
        assert list(judgments.groups(f)) == ["2afc/train/trad", "2afc/val/cnn", "jnd/val/cnn"]
        for group, arrays in expected.items():
            for key, value in arrays.items():
                np.testing.assert_array_equal(f[group][key][()], value)
            assert list(f[group]["names"].asstr()[()]) == [f"{i:06d}" for i in range(7)]
            assert f[group].attrs["kind"] == judgments.kind_of(group)
            assert f[group]["p0"].compression is None and f[group]["p0"].chunks[0] == 1
    assert not list(tmp_path.glob(".o.h5.tmp*"))


def test_resize_is_pil_bilinear(tmp_path):
    make_bapps(tmp_path / "b", n=2, size=40, jnd=False)
    out = pack(tmp_path / "b", tmp_path / "o.h5", size=16, workers=1, progress=False)
    img = Image.open(tmp_path / "b/2afc/val/cnn/ref/000001.png").convert("RGB").resize((16, 16), Image.BILINEAR)
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["2afc/val/cnn/ref"][1], np.asarray(img).transpose(2, 0, 1))


def _csv(tmp_path, header, rows, n_images=3):
    for i in range(n_images):
        Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(tmp_path / f"im{i}.png")
    path = tmp_path / "mine.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_csv_with_fractions_and_votes(tmp_path):
    path = _csv(tmp_path, "ref,p0,p1,judge,votes", ["im0.png,im1.png,im2.png,0.25,4", "im1.png,im0.png,im2.png,1,2"])
    out = pack(path, tmp_path / "o.h5", size=8, workers=1, progress=False)
    with judgments.open_file(out) as f:
        g = f["2afc/train/mine"]
        np.testing.assert_allclose(g["judge"][()], [0.25, 1.0])
        np.testing.assert_array_equal(g["votes"][()], [4, 2])
        assert g["p0"][0].max() == 40 and g["ref"][1].max() == 40


def test_csv_with_vote_counts_and_group(tmp_path):
    path = _csv(tmp_path, "ref,p0,p1,votes_p0,votes_p1", ["im0.png,im1.png,im2.png,3,1"])
    out = pack(path, tmp_path / "o.h5", size=8, group="2afc/val/mine", workers=1, progress=False)
    with judgments.open_file(out) as f:
        np.testing.assert_allclose(f["2afc/val/mine/judge"][()], [0.25])
        np.testing.assert_array_equal(f["2afc/val/mine/votes"][()], [4])


def test_csv_jnd(tmp_path):
    path = _csv(tmp_path, "p0,p1,same", ["im0.png,im1.png,0.5"])
    out = pack(path, tmp_path / "o.h5", size=8, workers=1, progress=False)
    with judgments.open_file(out) as f:
        assert list(judgments.groups(f)) == ["jnd/val/mine"]


def _run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "lpips_lightning.cli", *map(str, args)], capture_output=True, text=True
    )


def _bad(tmp_path, capsys, *args, match: str):
    code = main(["pack", *map(str, args), "--quiet", "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert match in err, err
    assert not (tmp_path / "o.h5").exists()
    assert not list(tmp_path.glob(".o.h5.tmp*"))
    return err


def test_bad_sources(tmp_path, capsys):
    _bad(tmp_path, capsys, tmp_path / "nope", tmp_path / "o.h5", match="nope: no such file or folder")
    (tmp_path / "empty").mkdir()
    _bad(tmp_path, capsys, tmp_path / "empty", tmp_path / "o.h5", match="neither a BAPPS root")


def test_bad_bapps_trees(tmp_path, capsys):
    make_bapps(tmp_path / "b", n=3, jnd=False)
    (tmp_path / "b/2afc/val/cnn/p1/000002.png").unlink()
    _bad(tmp_path, capsys, tmp_path / "b", tmp_path / "o.h5", match="cnn/p1: no file for stem 000002")
    make_bapps(tmp_path / "c", n=3, jnd=False)
    for f in (tmp_path / "c/2afc/val/cnn/judge").iterdir():
        f.unlink()
    (tmp_path / "c/2afc/val/cnn/judge").rmdir()
    _bad(tmp_path, capsys, tmp_path / "c", tmp_path / "o.h5", match="missing sub-folder(s) judge")


def test_bad_image_and_judgment(tmp_path, capsys):
    make_bapps(tmp_path / "b", n=3, jnd=False)
    (tmp_path / "b/2afc/val/cnn/p0/000001.png").write_bytes(b"not a png")
    _bad(tmp_path, capsys, tmp_path / "b", tmp_path / "o.h5", match="000001.png: image does not decode")
    make_bapps(tmp_path / "c", n=3, jnd=False)
    np.save(tmp_path / "c/2afc/train/trad/judge/000002.npy", np.array([1.5]))
    _bad(tmp_path, capsys, tmp_path / "c", tmp_path / "o.h5", match="000002.npy: judgment 1.5 is not a finite")
    make_bapps(tmp_path / "d", n=3, jnd=False)
    np.save(tmp_path / "d/2afc/train/trad/judge/000000.npy", np.array([0.1, 0.2]))
    _bad(tmp_path, capsys, tmp_path / "d", tmp_path / "o.h5", match="must be one number")
    make_bapps(tmp_path / "e", n=3, jnd=False)
    np.save(tmp_path / "e/2afc/train/trad/judge/000000.npy", np.array([np.nan]))
    _bad(tmp_path, capsys, tmp_path / "e", tmp_path / "o.h5", match="is not a finite number")


def test_bad_csvs(tmp_path, capsys):
    path = _csv(tmp_path, "ref,p0,judge", ["im0.png,im1.png,0.5"])
    _bad(tmp_path, capsys, path, tmp_path / "o.h5", match="mine.csv: missing columns")
    path = _csv(tmp_path, "ref,p0,p1,judge", ["im0.png,im1.png,im2.png,0.5", "im0.png,gone.png,im2.png,0.5"])
    _bad(tmp_path, capsys, path, tmp_path / "o.h5", match="mine.csv line 3: image gone.png does not exist")
    path = _csv(tmp_path, "ref,p0,p1,judge", ["im0.png,im1.png,im2.png,abc"])
    _bad(tmp_path, capsys, path, tmp_path / "o.h5", match="mine.csv line 2: bad value in judge: abc")
    path = _csv(tmp_path, "ref,p0,p1,judge", ["im0.png,im1.png,im2.png,2"])
    _bad(tmp_path, capsys, path, tmp_path / "o.h5", match="mine.csv line 2: judgment 2.0 is not a finite")
    path = _csv(tmp_path, "ref,p0,p1,votes_p0,votes_p1", ["im0.png,im1.png,im2.png,0,0"])
    _bad(tmp_path, capsys, path, tmp_path / "o.h5", match="bad value in votes_p0,votes_p1: 0, 0")


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


def test_open_refuses_foreign_old_and_truncated_files(tmp_path, bapps_h5):
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(JudgmentsError, match="plain.h5: not a judgments file"):
        judgments.open_file(tmp_path / "plain.h5")
    with h5py.File(tmp_path / "v9.h5", "w") as f:
        f.attrs["format"] = judgments.FORMAT
        f.attrs["format_version"] = 9
    with pytest.raises(JudgmentsError, match="v9.h5: judgments format version 9"):
        judgments.open_file(tmp_path / "v9.h5")
    data = bapps_h5.read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(JudgmentsError, match="cut.h5: not a readable judgments file: truncated"):
        judgments.open_file(tmp_path / "cut.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(JudgmentsError, match="text.h5: not a readable judgments file: not an HDF5 file"):
        judgments.open_file(tmp_path / "text.h5")


def test_cli_exit_status_in_a_real_process(tmp_path):
    result = _run_cli("pack", tmp_path / "missing", tmp_path / "o.h5")
    assert result.returncode == 2
    assert result.stderr.strip().endswith("missing: no such file or folder")
    assert "Traceback" not in result.stderr
