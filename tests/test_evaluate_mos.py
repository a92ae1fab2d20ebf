"""evaluate on MOS groups: SRCC per group signed by its direction, details in results.json, bootstrap intervals."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import pytorch_lightning as pl
from conftest import cpu_trainer, random_group, write_judgments
from scipy.stats import kendalltau, spearmanr

from lpips_lightning.cli.main import main
from lpips_lightning.data.datamodule import JudgmentsDataModule
from lpips_lightning.evaluate import L2Distance, evaluate
from lpips_lightning.report import NO_FIT, table
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
    afc = doc["details"]["l2"]["2afc/val/x"]
    assert afc["ci95"][0] <= afc["value"] <= afc["ci95"][1] and doc["bootstrap"] == {"resamples": 50, "seed": 0}
    kadid = doc["details"]["l2"]["mos/test/kadid"]
    lines = printed.splitlines()
    row = lines.index(next(line for line in lines if line.startswith("mos/test/kadid")))
    assert lines[row].split()[1:] == [f"{kadid['value']:.4f}", f"[{kadid['ci95'][0]:.3f},", f"{kadid['ci95'][1]:.3f}]"]
    assert lines[row + 1].split() == ["KRCC", f"{kadid['krcc']:.4f}"]
    assert lines[row + 2].split()[:2] == ["PLCC", f"{kadid['plcc']:.4f}" + ("" if kadid["logistic_fit"] else "*")]
    assert "95 % bootstrap interval over 50 resamples" in printed
    with open(out / "results.csv") as fh:
        table = {(r["group"], r["measure"]): r for r in csv.DictReader(fh)}
    assert float(table["mos/test/kadid", "srcc"]["l2"]) == pytest.approx(kadid["value"])
    assert float(table["mos/test/kadid", "srcc"]["l2 ci95 low"]) == pytest.approx(kadid["ci95"][0])
    assert float(table["mos/test/live", "krcc"]["l2"]) == pytest.approx(doc["details"]["l2"]["mos/test/live"]["krcc"])
    assert float(table["2afc/val/x", "2afc"]["l2 ci95 high"]) == pytest.approx(afc["ci95"][1])
    for chart in ("mos_scatter.png", "mos_srcc_by_subset.png", "2afc_by_subset.png"):
        assert (out / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_bootstrap_is_reproducible_with_its_seed(mos_file):
    def intervals(seed):
        found = evaluate({"l2": L2Distance()}, mos_file, bootstrap=40, seed=seed, progress=False, device="cpu")
        return {g: d["ci95"] for g, d in found["details"]["l2"].items()}

    first = intervals(1)
    assert first == intervals(1) and first != intervals(2)
    assert set(first) == {"mos/test/kadid", "mos/test/live", "2afc/val/x"}


def test_a_progress_line_per_model_unless_quiet(mos_file, capsys):
    assert main(["evaluate", "l2", "ssim", "--data", str(mos_file), "--groups", "mos/test/kadid"]) == 0
    err = capsys.readouterr().err
    assert "scoring l2 (1 of 2)" in err and "scoring ssim (2 of 2)" in err
    assert main(["evaluate", "l2", "--data", str(mos_file), "--groups", "mos/test/kadid", "--quiet"]) == 0
    assert "scoring" not in capsys.readouterr().err


def test_the_table_marks_a_plcc_without_the_logistic_fit():
    scores = {"m": {"mos/test/a": 0.5}}
    details = {"m": {"mos/test/a": {"srcc": 0.5, "krcc": 0.4, "plcc": 0.45, "logistic_fit": False}}}
    shown = table(scores, ["mos/test/a"], details)
    rows = {line[:28].strip(): line[28:].split() for line in shown.splitlines()[2:] if line.strip()}
    assert rows["mos/test/a"] == ["0.5000"] and rows["KRCC"] == ["0.4000"] and rows["PLCC"] == ["0.4500*"]
    assert NO_FIT in shown and "bootstrap" not in shown
    details["m"]["mos/test/a"]["logistic_fit"] = True
    fitted = table(scores, ["mos/test/a"], details)
    assert "0.4500*" not in fitted and NO_FIT not in fitted


def test_a_negative_bootstrap_is_one_line(mos_file, capsys):
    assert main(["evaluate", "l2", "--data", str(mos_file), "--bootstrap", "-1"]) == 2
    assert "--bootstrap must be a number of resamples >= 0" in capsys.readouterr().err


def test_validation_logs_srcc_per_mos_group(mos_file):
    pl.seed_everything(0)
    model = LPIPSModule(variant="lin", pretrained=False)
    dm = JudgmentsDataModule(str(mos_file), train=["2afc/val/x"], val=["mos/test/*"], batch_size=4)
    cpu_trainer().validate(model, dm)
    measures = {f"val/{m}/{s}" for m in ("srcc", "krcc", "plcc") for s in ("kadid", "live")}
    assert set(model.scores["val"]) == {*measures, "val/srcc/mean"}
    assert all(-1 <= v <= 1 for v in model.scores["val"].values())
