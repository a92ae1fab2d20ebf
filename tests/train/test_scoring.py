"""Validation scores per subset with MOS groups: SRCC, KRCC, PLCC as scipy gives them, the SRCC mean, the chart."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau, pearsonr, spearmanr

from lpips_lightning.model.correlations import fit_logistic, logistic4
from lpips_lightning.train.callbacks import FitSummary, subset_chart
from lpips_lightning.train.scoring import SubsetScores

GROUPS = ["2afc/val/cnn", "mos/test/kadid", "mos/test/live"]


def _mos(seed: int, n: int = 30) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mos = rng.uniform(1, 5, n)
    return 1 / (1 + np.exp(mos - 3)) + rng.normal(0, 0.08, n), mos  # a distance falling as quality rises


def _fed(scores: SubsetScores, stage: str, index: int, d: np.ndarray, target: np.ndarray, batch: int = 7) -> None:
    for start in range(0, len(d), batch):  # in batches, as validation feeds them
        piece = slice(start, start + batch)
        scores.update(stage, index, (torch.from_numpy(d[piece]).float(),), torch.from_numpy(target[piece]).float())


def test_mos_groups_log_srcc_krcc_plcc_as_scipy_and_the_srcc_mean():
    scores = SubsetScores()
    scores.set_groups("val", GROUPS, {"mos/test/kadid": True, "mos/test/live": False})
    scores.update("val", 0, (torch.tensor([0.1, 0.5]), torch.tensor([0.2, 0.4])), torch.tensor([0.0, 1.0]))
    (d_mos, mos), (d_dmos, live) = _mos(0), _mos(1)
    dmos = 6 - live  # DMOS: higher is worse, so the distance is not negated
    _fed(scores, "val", 1, d_mos, mos)
    _fed(scores, "val", 2, d_dmos, dmos)
    values, means = scores.compute("val")
    measures = {f"val/{m}/{s}" for m in ("srcc", "krcc", "plcc") for s in ("kadid", "live")}
    assert set(values) == {"val/2afc/cnn", *measures}
    for name, x, y in (("kadid", -d_mos, mos), ("live", d_dmos, dmos)):
        x32, y32 = torch.from_numpy(x).float().double().numpy(), torch.from_numpy(y).float().double().numpy()
        assert float(values[f"val/srcc/{name}"]) == pytest.approx(spearmanr(x32, y32).statistic, abs=1e-6)
        assert float(values[f"val/krcc/{name}"]) == pytest.approx(kendalltau(x32, y32).statistic, abs=1e-6)
        params = fit_logistic(x32, y32)
        assert params is not None
        expected = pearsonr(logistic4(x32, *params), y32).statistic
        assert float(values[f"val/plcc/{name}"]) == pytest.approx(expected, abs=1e-5)
        assert float(values[f"val/srcc/{name}"]) > 0.7  # a good metric scores positive against MOS and DMOS
    assert set(means) == {"val/2afc/mean", "val/srcc/mean"}
    srccs = [float(values["val/srcc/kadid"]), float(values["val/srcc/live"])]
    assert means["val/srcc/mean"] == pytest.approx(sum(srccs) / 2)
    assert scores.compute("val") == ({}, {})  # the metrics start again


def test_a_mos_group_without_a_direction_is_mos_and_a_backwards_metric_scores_negative():
    scores = SubsetScores()
    scores.set_groups("test", ["mos/test/kadid"])
    d, mos = _mos(2)
    _fed(scores, "test", 0, -d, mos)  # distances that rise with quality
    values, means = scores.compute("test")
    assert all(float(values[f"test/{m}/kadid"]) < 0 for m in ("srcc", "krcc", "plcc"))
    assert means["test/srcc/mean"] == pytest.approx(float(values["test/srcc/kadid"]))


def test_the_subset_chart_shows_srcc_below_zero_and_the_summary_lists_it():
    import matplotlib.pyplot as plt

    fig = subset_chart({"2afc/cnn": 0.7, "srcc/kadid": -0.4, "srcc/mean": -0.4}, "validation")
    try:
        ax = fig.axes[0]
        assert [t.get_text() for t in ax.get_yticklabels()] == ["2afc/cnn", "srcc/kadid", "srcc/mean"]
        assert ax.get_xlim()[0] < -0.4 and [round(p.get_width(), 3) for p in ax.patches] == [0.7, -0.4, -0.4]
    finally:
        plt.close(fig)
    summary = FitSummary(None)
    summary.validated = {"epoch": 0, "step": 3, "end": True, "scores": {"val/srcc/kadid": 0.61, "val/srcc/mean": 0.61}}
    assert summary._validation_lines()[1].split() == ["val/srcc/kadid", "0.6100"]
