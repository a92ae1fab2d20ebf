"""What ``evaluate --out`` leaves: valid JSON with reasons for undefined scores, and one whole result set.

An undefined score (a JND group in which no pair was judged the same) is ``null`` with a reason
in results.json, ``n/a`` with a footnote in the table, empty with a note in results.csv. The set
is written into a temporary folder and moved in when complete: a full disk mid-set leaves the
earlier set (or nothing) and no temporary folder; ``--overwrite`` leaves none of an earlier
evaluation's files beside the new ones.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import random_group, snapshot, write_judgments
from matplotlib.figure import Figure

from lpips_lightning import report
from lpips_lightning.cli.main import main
from lpips_lightning.report import OUTPUT_FILES

REASON = "no pair judged the same"


def _no_nan(text: str):
    raise AssertionError(f"{text} in results.json is not JSON")


@pytest.fixture
def data(tmp_path) -> Path:
    """2AFC and JND groups; jnd/val/nosame has no pair that anyone judged the same."""
    nosame = random_group("jnd", seed=1)
    nosame["same"][:] = 0
    groups = {"2afc/val/a": random_group("2afc"), "jnd/val/some": random_group("jnd", seed=2), "jnd/val/nosame": nosame}
    return write_judgments(tmp_path / "d.h5", groups)


def _evaluate(data: Path, out: Path, *extra: str) -> int:
    return main(["evaluate", "l2", "--data", str(data), "--quiet", "--out", str(out), *extra])


def _ours(out: Path) -> dict[str, bytes]:
    """Every entry of `out` (hidden ones too) with its bytes."""
    return {p.name: p.read_bytes() for p in out.iterdir()}


def test_an_undefined_score_is_null_with_its_reason(data, tmp_path, capfd):
    out = tmp_path / "ev"
    assert _evaluate(data, out) == 0
    printed = capfd.readouterr().out
    saved = json.loads((out / "results.json").read_text(), parse_constant=_no_nan)
    assert saved["scores"]["l2"]["jnd/val/nosame"] is None
    assert 0 <= saved["scores"]["l2"]["jnd/val/some"] <= 1 and 0 <= saved["scores"]["l2"]["2afc/val/a"] <= 1
    assert REASON in saved["notes"]["scores"]["l2"]["jnd/val/nosame"]
    assert list(saved["notes"]["scores"]["l2"]) == ["jnd/val/nosame"]  # the scored groups have no note
    assert saved["means"]["l2"]["jnd"] is None and "jnd/val/nosame" in saved["notes"]["means"]["l2"]["jnd"]
    assert saved["means"]["l2"]["2afc"] == saved["scores"]["l2"]["2afc/val/a"]
    # the table: n/a with a footnote that gives the reason, never "nan"
    row = next(line for line in printed.splitlines() if line.startswith("jnd/val/nosame"))
    assert row.split()[1] == "n/a[1]" and "nan" not in printed.lower()
    assert any(line.startswith("[1] jnd/val/nosame: ") and REASON in line for line in printed.splitlines())
    with open(out / "results.csv") as fh:
        rows = {r["group"]: r for r in csv.DictReader(fh)}
    assert rows["jnd/val/nosame"]["l2"] == "" and REASON in rows["jnd/val/nosame"]["note"]
    assert float(rows["jnd/val/some"]["l2"]) == saved["scores"]["l2"]["jnd/val/some"]
    assert rows["jnd/val/some"]["note"] == ""


def test_results_without_undefined_scores_keep_their_columns(data, tmp_path):
    out = tmp_path / "ev"
    assert _evaluate(data, out, "--groups", "2afc/val/a", "jnd/val/some") == 0
    saved = json.loads((out / "results.json").read_text(), parse_constant=_no_nan)
    assert saved["notes"] == {"scores": {}, "means": {}}
    with open(out / "results.csv") as fh:
        assert next(csv.reader(fh)) == ["group", "measure", "l2"]


def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("where", ["distances.csv", "a chart"])
def test_a_full_disk_mid_set_leaves_the_earlier_set_and_no_temporary_folder(data, tmp_path, capfd, monkeypatch, where):
    out = tmp_path / "ev"
    assert _evaluate(data, out) == 0
    before = _ours(out)
    assert sorted(before) == sorted(OUTPUT_FILES)
    if where == "a chart":  # the fourth file of five
        monkeypatch.setattr(Figure, "savefig", _full_disk)
    else:  # the third: results.json and results.csv are written by then
        monkeypatch.setattr(report, "_distances_csv", _full_disk)
    capfd.readouterr()
    assert _evaluate(data, out, "--overwrite", "--groups", "2afc/val/a") == 2
    err = capfd.readouterr().err
    assert f"--out {out}: cannot write the evaluation results (No space left on device)" in err
    assert "Traceback" not in err
    assert _ours(out) == before  # the earlier set, whole; no temporary folder


def test_a_full_disk_on_a_new_folder_leaves_nothing_that_a_rerun_refuses(data, tmp_path, capfd, monkeypatch):
    out = tmp_path / "new"
    monkeypatch.setattr(report, "_results_csv", _full_disk)
    assert _evaluate(data, out) == 2
    assert not out.exists() or not list(out.iterdir())
    monkeypatch.undo()
    assert _evaluate(data, out) == 0  # not "already holds results.json"
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)


def test_overwrite_leaves_no_file_of_the_earlier_evaluation(data, tmp_path):
    out = tmp_path / "ev"
    assert _evaluate(data, out) == 0
    (out / "notes.txt").write_text("mine")  # not ours: stays
    assert _evaluate(data, out, "--overwrite", "--groups", "2afc/val/a") == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["results.json", "results.csv", "distances.csv", "2afc_by_subset.png", "notes.txt"]
    )  # no JND chart of the earlier evaluation
    assert json.loads((out / "results.json").read_text())["groups"] == ["2afc/val/a"]
    assert (out / "notes.txt").read_text() == "mine"


def test_a_temporary_folder_of_a_killed_evaluation_is_removed(data, tmp_path):
    out = tmp_path / "ev"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = out / f".evaluate.tmp-{int(dead.stdout)}"
    stale.mkdir()
    (stale / "results.json").write_text("{")
    alive = out / f".evaluate.tmp-{os.getppid()}"  # a running process's: left alone
    alive.mkdir()
    before = snapshot(alive)
    assert _evaluate(data, out) == 0
    assert not stale.exists() and alive.is_dir() and snapshot(alive) == before
    assert sorted(p.name for p in out.iterdir()) == sorted([*OUTPUT_FILES, alive.name])
