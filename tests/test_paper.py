"""The paper's Table 5 as package data, and `evaluate --reference paper` printing it beside our scores."""

from __future__ import annotations

import pytest
from conftest import assert_refused

from lpips_lightning import paper
from lpips_lightning.cli.main import main


def _cells(text: str, name: str) -> list[str]:
    line = next(x for x in text.splitlines() if x.startswith(name + " ") or x == name)
    return line[len(name) :].split()


def test_beside_puts_our_scores_over_the_papers_rows():
    groups = [f"2afc/val/{s}" for s in paper.SUBSETS_2AFC] + ["jnd/val/cnn"]
    ours = {"mine": {g: 0.5 + i / 100 for i, g in enumerate(groups)}}
    text = paper.beside(ours, groups)
    assert _cells(text, "mine") == ["50.0", "51.0", "52.0", "53.0", "54.0", "55.0", "52.5", "50.5"]
    assert _cells(text, "paper lin_alex") == ["73.9", "83.4", "71.5", "61.2", "65.3", "63.2", "69.8", "78.7"]
    assert sum(line.startswith("paper ") for line in text.splitlines()) == 23
    assert "predates the released v0.1 weights" in text and "no JND mAP" in text


def test_beside_shows_only_the_subsets_scored():
    text = paper.beside({"m": {"2afc/val/cnn": 0.8}}, ["2afc/val/cnn"])
    assert _cells(text, "m") == ["80.0"]  # no mean of six, no trad+CNN mean over one subset
    assert _cells(text, "paper human") == ["84.4"]
    with pytest.raises(ValueError, match="none of BAPPS's validation subsets"):
        paper.beside({"m": {"2afc/val/mine": 0.8}}, ["2afc/val/mine"])


def test_evaluate_reference_paper(module_bapps_h5, capsys):
    assert main(["evaluate", "l2", "--data", str(module_bapps_h5), "--reference", "paper", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert _cells(out, "paper l2")[0] == "77.8"  # the cnn subset's column: our packed file holds 2afc/val/cnn
    assert len(_cells(out, "l2")) == 1


def test_evaluate_reference_must_be_paper(module_bapps_h5, capfd, tmp_path):
    line = assert_refused(["evaluate", "l2", "--data", str(module_bapps_h5), "--reference", "table6"], capfd, tmp_path)
    assert "--reference" in line and "paper" in line
