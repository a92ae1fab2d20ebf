"""evaluate on MOS groups: SRCC per group signed by its direction, details in results.json, bootstrap intervals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import pytorch_lightning as pl
from conftest import cpu_trainer, random_group, write_judgments
from scipy.stats import kendalltau, spearmanr

from lpips_lightning.cli.main import main
from lpips_lightning.data.datamodule import JudgmentsDataModule
from lpips_lightning.train.module import LPIPSModule


@pytest.fixture
def mos_file(tmp_path):
    dmos = {**random_group("mos", n=9, size=32, seed=1), "higher_is_better": False}
    groups = {"mos/test/kadid": random_group("mos", n=12, size=32), "mos/test/live": dmos}
    return write_judgments(tmp_path / "mos.h5", {**groups, "2afc/val/x": random_group("2afc", n=6, size=32)})


def test_evaluate_scores_mos_groups_as_scipy_does(mos_file, tmp_path, capsys):
    out = tmp_path / "res"
    argv = ["evaluate", "l2", "--data", str(mos_file), "--out", str(out), "--bootstrap", "50", "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "mean SRCC" in printed and "4-parameter logistic" in printed
    doc = json.loads((out / "results.json").read_text())
    rows = {}
    for line in (out / "distances.csv").read_text().splitlines()[1:]:
        _, group, _, d, _, target = line.split(",")
        rows.setdefault(group, []).append((float(d), float(target)))
    for group, sign in (("mos/test/kadid", -1), ("mos/test/live", 1)):
        d, mos = np.array(rows[group]).T
        detail = doc["details"]["l2"][group]
        assert detail["kind"] == "mos" and detail["n"] == len(d) and detail["measure"] == "srcc"
        assert (
            detail["value"] == doc["scores"]["l2"][group] == pytest.approx(spearmanr(sign * d, mos).statistic, abs=1e-6)
        )
        assert detail["krcc"] == pytest.approx(kendalltau(sign * d, mos).statistic, abs=1e-6)
        assert -1 <= detail["plcc"] <= 1
        low, high = detail["ci95"]
        assert low <= detail["value"] <= high
    assert doc["means"]["l2"]["mos"] == pytest.approx(
        (doc["scores"]["l2"]["mos/test/kadid"] + doc["scores"]["l2"]["mos/test/live"]) / 2
    )
    assert "ci95" in doc["details"]["l2"]["2afc/val/x"]


def test_a_negative_bootstrap_is_one_line(mos_file, capsys):
    assert main(["evaluate", "l2", "--data", str(mos_file), "--bootstrap", "-1"]) == 2
    assert "--bootstrap must be a number of resamples >= 0" in capsys.readouterr().err


def test_validation_logs_srcc_per_mos_group(mos_file):
    pl.seed_everything(0)
    model = LPIPSModule(variant="lin", pretrained=False)
    dm = JudgmentsDataModule(str(mos_file), train=["2afc/val/x"], val=["mos/test/*"], batch_size=4)
    cpu_trainer().validate(model, dm)
    assert set(model.scores["val"]) == {"val/srcc/kadid", "val/srcc/live", "val/srcc/mean"}
    assert all(-1 <= v <= 1 for v in model.scores["val"].values())
