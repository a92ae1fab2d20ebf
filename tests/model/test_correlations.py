"""MOS correlations against scipy, their sign for MOS and DMOS, the logistic PLCC, the bootstrap interval."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau, pearsonr, spearmanr

from lpips_lightning.model.correlations import bootstrap_ci, correlations, fit_logistic, logistic4, srcc
from lpips_lightning.model.metrics import score_subset, subset_metric


def _noisy(n=40, seed=0):
    rng = np.random.default_rng(seed)
    mos = rng.uniform(1, 5, n)
    d = 1 / (1 + np.exp(mos - 3)) + rng.normal(0, 0.05, n)  # falls as quality rises, not linearly
    return d, mos


def test_correlations_equal_scipy_on_negated_distances_for_mos_and_plain_ones_for_dmos():
    d, mos = _noisy()
    got = correlations(d, mos, higher_is_better=True)
    assert got["srcc"] == pytest.approx(spearmanr(-d, mos).statistic, abs=1e-12)
    assert got["krcc"] == pytest.approx(kendalltau(-d, mos).statistic, abs=1e-12)
    assert got["srcc"] > 0.8 and got["plcc"] > 0.8 and got["logistic_fit"]
    dmos = 6 - mos  # the same judgments as DMOS: the same scores
    assert correlations(d, dmos, higher_is_better=False)["srcc"] == pytest.approx(got["srcc"], abs=1e-12)
    assert score_subset("mos", (torch.from_numpy(d),), torch.from_numpy(mos)) == pytest.approx(got["srcc"], abs=1e-12)


def test_plcc_is_pearson_after_the_fitted_rising_logistic_and_keeps_the_sign():
    d, mos = _noisy(seed=1)
    params = fit_logistic(-d, mos)
    assert params is not None and params[0] >= params[1] and params[3] > 0
    expected = pearsonr(logistic4(-d, *params), mos).statistic
    assert correlations(d, mos)["plcc"] == pytest.approx(expected, abs=1e-9)
    backwards = correlations(-d, mos)  # a metric that ranks backwards scores negative on every measure
    assert backwards["srcc"] < 0 and backwards["krcc"] < 0 and backwards["plcc"] < 0


def test_the_bootstrap_is_seeded_and_holds_the_estimate():
    d, mos = _noisy(n=30, seed=2)

    def score(d, mos):
        return srcc(d, mos)

    first = bootstrap_ci(score, {"d": d, "mos": mos}, 200, seed=3)
    assert first == bootstrap_ci(score, {"d": d, "mos": mos}, 200, seed=3)
    assert first != bootstrap_ci(score, {"d": d, "mos": mos}, 200, seed=4)
    assert first[0] <= score(d, mos) <= first[1]


def test_every_measure_of_a_mos_metric_equals_correlations_and_a_nan_distance_gives_nan():
    d, mos = _noisy(seed=5)
    metric = subset_metric("mos", higher_is_better=False, every_measure=True)
    for piece in (slice(0, 13), slice(13, None)):
        metric.update(torch.from_numpy(d[piece]), torch.from_numpy(mos[piece]))
    got = {k: float(v) for k, v in metric.compute().items()}
    expected = correlations(d, mos, higher_is_better=False)
    assert got == pytest.approx({k: expected[k] for k in ("srcc", "krcc", "plcc")}, abs=1e-12)
    assert got["srcc"] == pytest.approx(spearmanr(d, mos).statistic, abs=1e-12)  # DMOS: not negated
    broken = subset_metric("mos", every_measure=True)
    broken.update(torch.tensor([0.1, float("nan"), 0.3]), torch.tensor([1.0, 2.0, 3.0]))
    assert all(np.isnan(float(v)) for v in broken.compute().values())


@pytest.mark.parametrize("kind", ["2afc", "jnd"])
def test_the_bootstrap_of_2afc_and_jnd_resamples_their_items(kind):
    rng = np.random.default_rng(7)
    n = 40
    arrays = {"d0": rng.random(n), "target": (rng.random(n) < 0.5).astype(np.float64)}
    if kind == "2afc":
        arrays["d1"] = arrays["d0"] + rng.normal(0.1, 0.3, n) * (1 - 2 * arrays["target"])

    def score(target, **d):
        return score_subset(kind, [torch.from_numpy(v) for v in d.values()], torch.from_numpy(target))

    low, high = bootstrap_ci(score, arrays, 100, seed=0)
    assert low <= score(**arrays) <= high and low < high
    assert (low, high) == bootstrap_ci(score, arrays, 100, seed=0)
