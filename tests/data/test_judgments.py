"""The judgments file format (`data.judgments`): files written by hand or by another tool are refused in one line.

Every refusal goes through the real CLI (`assert_refused`: exit status 2, one ``error:`` line,
no traceback, no file created or changed).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import assert_refused

from lpips_lightning.data import group_checks, judgments
from lpips_lightning.data.dataset import JudgmentsDataset
from lpips_lightning.errors import JudgmentsError


def test_open_refuses_foreign_old_and_truncated_files(tmp_path, module_bapps_h5):
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(JudgmentsError, match="plain.h5: not a judgments file"):
        judgments.open_file(tmp_path / "plain.h5")
    with h5py.File(tmp_path / "v9.h5", "w") as f:
        f.attrs["format"] = judgments.FORMAT
        f.attrs["format_version"] = 9
    with pytest.raises(JudgmentsError, match="v9.h5: judgments format version 9"):
        judgments.open_file(tmp_path / "v9.h5")
    data = module_bapps_h5.read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(JudgmentsError, match="cut.h5: not a readable judgments file: truncated"):
        judgments.open_file(tmp_path / "cut.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(JudgmentsError, match="text.h5: not a readable judgments file: not an HDF5 file"):
        judgments.open_file(tmp_path / "text.h5")


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


def test_a_packed_file_passes_validation(module_bapps_h5):
    with judgments.open_file(module_bapps_h5) as f:
        assert group_checks.resolve(f, ["2afc/*/*", "jnd/*/*"]) == ["2afc/train/trad", "2afc/val/cnn", "jnd/val/cnn"]
