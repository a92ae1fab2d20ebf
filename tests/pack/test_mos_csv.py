"""pack reads a MOS CSV in pyiqa's meta format (ref_name,dist_name,mos[,std][,split]); bad rows are one line."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_refused
from PIL import Image

from lpips_lightning.cli.main import main
from lpips_lightning.data import group_checks, judgments


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("r0", "d0", "d1", "d2", "d3"):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    return tmp_path


def _csv(folder, text: str):
    path = folder / "scores.csv"
    path.write_text(text)
    return path


def test_a_mos_csv_packs_one_group_per_split_with_its_scores(images, capsys):
    rows = "ref_name,dist_name,mos,std,split\n" + "".join(
        f"r0.png,d{k}.png,{score},0.{k},{split}\n"
        for k, (score, split) in enumerate([(1, "test"), (2.5, "test"), (4, "test"), (3, "val")])
    )
    rows += "r0.png,d1.png,2,0.5,val\nr0.png,d0.png,5,0.1,val\n"  # one distorted image may be scored per split
    out = images / "m.h5"
    assert main(["pack", str(_csv(images, rows)), str(out), "--size", "16", "--quiet", "--lower-is-better"]) == 0
    with judgments.open_file(out) as f:
        assert group_checks.resolve(f, ["mos/*/*"]) == ["mos/test/scores", "mos/val/scores"]
        assert f["mos/test/scores/mos"][:].tolist() == [1, 2.5, 4]
        assert np.allclose(f["mos/test/scores/std"][:], [0, 0.1, 0.2])
        assert f["mos/val/scores/dist"].shape == (3, 3, 16, 16)
        assert judgments.higher_is_better(f, "mos/val/scores") is False


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ("ref_name,mos\nr0.png,1\n", "missing column(s) dist_name"),
        ("ref_name,dist_name,mos\nr0.png,d0.png,x\n", "line 2: bad value in mos: x"),
        ("ref_name,dist_name,mos\nr0.png,d0.png,nan\n", "line 2: mos nan is not a finite number"),
        ("ref_name,dist_name,mos,split\nr0.png,d0.png,1,dev\n", "line 2: split 'dev' is not one of train, val, test"),
        (
            "ref_name,dist_name,mos\nr0.png,d0.png,1\nr0.png,d0.png,2\nr0.png,d1.png,3\n",
            "line 3: dist_name d0.png is listed twice",
        ),
        (
            "ref_name,dist_name,mos\nr0.png,d0.png,1\nr0.png,d1.png,2\n",
            ": 2 score(s); a rank correlation needs at least 3",
        ),
        ("ref_name,dist_name,mos\nr0.png,d0.png,2\nr0.png,d1.png,2\nr0.png,d2.png,2\n", "every mos is 2.0"),
        ("ref_name,dist_name,mos\nr0.png,d9.png,1\n", "line 2: image d9.png does not exist"),
    ],
)
def test_bad_mos_csvs_are_one_line_and_write_nothing(images, capfd, rows, expected):
    line = assert_refused(["pack", str(_csv(images, rows)), str(images / "o.h5"), "--quiet"], capfd, images)
    assert expected in line, line


def test_lower_is_better_belongs_to_mos_csvs(images, capfd):
    path = images / "t.csv"
    path.write_text("ref,p0,p1,judge\nr0.png,d0.png,d1.png,0.5\n")
    line = assert_refused(["pack", str(path), str(images / "o.h5"), "--quiet", "--lower-is-better"], capfd, images)
    assert "--lower-is-better applies to a MOS CSV" in line


def test_the_readme_pieapp_conversion_packs_as_2afc(images):
    """The README's one line turns PieAPP's `ref,A,B,prob A preferred` into ref,p0,p1,judge (judge = 1 - prob)."""
    import subprocess
    import sys
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    line = next(x for x in readme.splitlines() if x.startswith('python -c "import csv,sys;') and "pieapp" in x)
    (images / "pieapp.csv").write_text(
        "ref,A,B,prob A preferred\nr0.png,d0.png,d1.png,0.8\nr0.png,d2.png,d3.png,0.25\n"
    )
    command = line.replace("python ", f"{sys.executable} ", 1)
    subprocess.run(command, shell=True, cwd=images, check=True)
    out = images / "p.h5"
    assert main(["pack", str(images / "pieapp_2afc.csv"), str(out), "--group", "2afc/test/pieapp", "--quiet"]) == 0
    with judgments.open_file(out) as f:
        assert np.allclose(f["2afc/test/pieapp/judge"][:], [0.2, 0.75])
