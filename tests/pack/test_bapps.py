"""BAPPS: its facts, and its unpacked folder tree packed (paired by stem, resized as the original loader does)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from conftest import assert_refused, make_bapps
from pack_inputs import bad_pack
from PIL import Image

from lpips_lightning.data import judgments
from lpips_lightning.pack import bapps
from lpips_lightning.pack.pack import pack


def test_the_archives_and_folders():
    assert bapps.bapps_archives() == ("twoafc_train.tar.gz", "twoafc_val.tar.gz", "jnd.tar.gz")
    assert bapps.DATASETS["bapps"] == {"train": "twoafc_train.tar.gz", "val": "twoafc_val.tar.gz", "jnd": "jnd.tar.gz"}
    assert {k: v[:-1] for k, v in bapps.FOLDERS.items()} == {k: judgments.KINDS[k] for k in ("2afc", "jnd")}
    assert bapps.stem_suffix("000001.png") == ("000001", ".png") and bapps.stem_suffix(".DS_Store")[1] == ""


@pytest.mark.parametrize("workers", [1, 2])
def test_bapps_round_trip_pairs_by_stem(tmp_path, workers):
    expected = make_bapps(tmp_path / "b", n=7, size=8)
    out = pack(tmp_path / "b", tmp_path / "o.h5", size=8, workers=workers, progress=False)
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


def test_bad_bapps_trees(tmp_path, capsys):
    make_bapps(tmp_path / "b", n=3, size=8, jnd=False)
    (tmp_path / "b/2afc/val/cnn/p1/000002.png").unlink()
    bad_pack(tmp_path, capsys, tmp_path / "b", tmp_path / "o.h5", match="cnn/p1: no file for stem 000002")
    make_bapps(tmp_path / "c", n=3, size=8, jnd=False)
    for f in (tmp_path / "c/2afc/val/cnn/judge").iterdir():
        f.unlink()
    (tmp_path / "c/2afc/val/cnn/judge").rmdir()
    bad_pack(tmp_path, capsys, tmp_path / "c", tmp_path / "o.h5", match="missing sub-folder(s) judge")


def test_bad_image_and_judgment(tmp_path, capsys):
    make_bapps(tmp_path / "b", n=3, size=8, jnd=False)
    (tmp_path / "b/2afc/val/cnn/p0/000001.png").write_bytes(b"not a png")
    bad_pack(tmp_path, capsys, tmp_path / "b", tmp_path / "o.h5", match="000001.png: image does not decode")
    make_bapps(tmp_path / "c", n=3, size=8, jnd=False)
    np.save(tmp_path / "c/2afc/train/trad/judge/000002.npy", np.array([1.5]))
    bad_pack(tmp_path, capsys, tmp_path / "c", tmp_path / "o.h5", match="000002.npy: judgment 1.5 is not a finite")
    make_bapps(tmp_path / "d", n=3, size=8, jnd=False)
    np.save(tmp_path / "d/2afc/train/trad/judge/000000.npy", np.array([0.1, 0.2]))
    bad_pack(tmp_path, capsys, tmp_path / "d", tmp_path / "o.h5", match="must be one number")
    make_bapps(tmp_path / "e", n=3, size=8, jnd=False)
    np.save(tmp_path / "e/2afc/train/trad/judge/000000.npy", np.array([np.nan]))
    bad_pack(tmp_path, capsys, tmp_path / "e", tmp_path / "o.h5", match="is not a finite number")


def test_bapps_subset_name_that_is_no_group_name(tmp_path, capfd):
    make_bapps(tmp_path / "b", n=2, size=8, jnd=False)
    (tmp_path / "b/2afc/val/cnn").rename(tmp_path / "b/2afc/val/my cnn")
    line = assert_refused(["pack", str(tmp_path / "b"), str(tmp_path / "o.h5"), "--quiet"], capfd, tmp_path)
    assert "my cnn" in line and "rename the folder" in line


def test_a_broken_link_in_a_bapps_folder_is_named_as_such(tmp_path, capfd):
    make_bapps(tmp_path / "b", n=2, size=8, jnd=False)
    image = tmp_path / "b" / "2afc/val/cnn/p1/000001.png"
    image.unlink()
    image.symlink_to(tmp_path / "moved.png")
    line = assert_refused(["pack", str(tmp_path / "b"), str(tmp_path / "o.h5"), "--quiet"], capfd, tmp_path)
    assert f"{image}: a link to {tmp_path / 'moved.png'}, which does not exist" in line
