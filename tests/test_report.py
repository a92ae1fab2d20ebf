"""The table and the files `evaluate` writes, from a result made by hand."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from lpips_lightning.report import OUTPUT_FILES, means, table, write_outputs

GROUPS = ["2afc/val/cnn", "2afc/val/traditional", "jnd/val/cnn"]
SCORES = {
    "l2": {"2afc/val/cnn": 0.6, "2afc/val/traditional": 0.7, "jnd/val/cnn": 0.25},
    "a model with a long name": {"2afc/val/cnn": 0.8, "2afc/val/traditional": 0.9, "jnd/val/cnn": 0.5},
}


def _result() -> dict:
    rng = np.random.default_rng(0)
    items = {}
    for name in SCORES:
        items[name] = {
            "2afc/val/cnn": {"d0": rng.random(3), "d1": rng.random(3), "target": rng.random(3)},
            "2afc/val/traditional": {"d0": rng.random(2), "d1": rng.random(2), "target": rng.random(2)},
            "jnd/val/cnn": {"d": rng.random(4), "target": np.array([0.0, 1.0, 0.5, 1.0])},
        }
    return {"scores": SCORES, "items": items, "groups": GROUPS}


def test_table_has_a_row_per_group_and_the_means_in_percent():
    lines = table(SCORES, GROUPS).splitlines()
    assert lines[0].split()[0] == "group" and lines[0].endswith("a model with a long name")
    rows = {line[:28].strip(): line[28:].split() for line in lines[2:] if line.strip()}
    assert rows["2afc/val/cnn"] == ["60.00", "80.00"]
    assert rows["mean 2AFC %"] == ["65.00", "85.00"]
    assert rows["jnd/val/cnn"] == rows["mean JND mAP %"] == ["25.00", "50.00"]
    assert list(rows) == ["2afc/val/cnn", "2afc/val/traditional", "mean 2AFC %", "jnd/val/cnn", "mean JND mAP %"]


def test_means_per_kind_present():
    assert means(SCORES, GROUPS)["l2"] == pytest.approx({"2afc": 0.65, "jnd": 0.25})
    assert means(SCORES, GROUPS[:1]) == {"l2": {"2afc": 0.6}, "a model with a long name": {"2afc": 0.8}}


def test_write_outputs_writes_every_file(tmp_path):
    written = write_outputs(_result(), tmp_path)
    assert [p.name for p in written] == list(OUTPUT_FILES)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(OUTPUT_FILES)  # no temporary file left
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["groups"] == GROUPS and saved["scores"] == SCORES
    assert saved["means"]["a model with a long name"] == pytest.approx({"2afc": 0.85, "jnd": 0.5})
    with open(tmp_path / "results.csv") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["group", "measure", *SCORES]
    assert [r[:2] for r in rows[1:]] == [
        ["2afc/val/cnn", "2afc"],
        ["2afc/val/traditional", "2afc"],
        ["jnd/val/cnn", "jnd_map"],
    ]
    with open(tmp_path / "distances.csv") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["model", "group", "index", "d0_or_d", "d1", "judge_or_same"]
    assert len(rows) == 1 + 2 * (3 + 2 + 4)
    jnd = [r for r in rows if r[1] == "jnd/val/cnn"]
    assert all(r[4] == "" for r in jnd) and [r[5] for r in jnd[:4]] == ["0", "1", "0.5", "1"]
    for chart in OUTPUT_FILES[3:]:
        assert (tmp_path / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_charts_only_for_the_kinds_present(tmp_path):
    result = _result()
    result["groups"] = GROUPS[:2]
    written = write_outputs(result, tmp_path)
    assert [p.name for p in written] == ["results.json", "results.csv", "distances.csv", "2afc_by_subset.png"]
