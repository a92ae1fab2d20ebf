"""2AFC and JND metrics against independent numpy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import numpy_2afc, numpy_voc_ap, voc_area

from lpips_lightning.errors import ConfigError
from lpips_lightning.model.metrics import (
    JNDAveragePrecision,
    TwoAFCScore,
    jnd_average_precision,
    score_subset,
    subset_metric,
    two_afc,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("seed", range(4))
def test_2afc_matches_numpy_over_batches(seed):
    rng = np.random.default_rng(seed)
    d0, d1 = rng.random(103), rng.random(103)
    d1[:10] = d0[:10]  # ties count half
    judge = rng.integers(0, 6, 103) / 5
    m = TwoAFCScore()
    for i in range(0, 103, 25):
        m.update(torch.tensor(d0[i : i + 25]), torch.tensor(d1[i : i + 25]), torch.tensor(judge[i : i + 25]))
    assert m.compute().item() == pytest.approx(numpy_2afc(d0, d1, judge), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_jnd_map_matches_numpy_and_is_not_the_original_bug(seed):
    rng = np.random.default_rng(seed)
    d = rng.random(200)
    same = (rng.random(200) < 1 / (1 + np.exp(8 * (d - 0.5)))).astype(float) * rng.choice([1, 2 / 3], 200)
    m = JNDAveragePrecision()
    for i in range(0, 200, 64):  # (N, 1, 1, 1) like the original's distances: flattened
        m.update(torch.tensor(d[i : i + 64]).view(-1, 1, 1, 1), torch.tensor(same[i : i + 64]))
    value = m.compute().item()
    assert value == pytest.approx(numpy_voc_ap(d, same), abs=1e-12)
    assert 0.3 < value < 0.99


def test_jnd_map_is_one_for_a_perfect_ranking():
    m = JNDAveragePrecision()
    m.update(torch.arange(10.0), torch.tensor([1.0] * 4 + [0.0] * 6))
    assert m.compute().item() == pytest.approx(1.0)


def numpy_voc_ap_thresholds(d, same):
    """Independent reference with ties: one precision/recall point per distinct distance threshold."""
    thresholds = np.unique(d)
    tp = np.array([same[d <= t].sum() for t in thresholds])
    fp = np.array([(1 - same[d <= t]).sum() for t in thresholds])
    return voc_area(tp / same.sum(), tp / (tp + fp))


@pytest.mark.parametrize("seed", range(4))
def test_jnd_map_with_ties_does_not_depend_on_item_order(seed):
    """Tied distances (e.g. identical pairs at distance 0) are one block: any arrival order, one score."""
    rng = np.random.default_rng(seed)
    d = np.round(rng.random(120), 1)  # eleven distinct values: many ties
    d[:12] = 0.0
    same = rng.choice([0.0, 1 / 3, 2 / 3, 1.0], 120)
    expected = numpy_voc_ap_thresholds(d, same)
    for perm in range(6):
        order = rng.permutation(120) if perm else np.arange(120)
        m = JNDAveragePrecision()
        for part in np.array_split(order, 3):  # arriving in several updates, as from several loaders
            m.update(torch.tensor(d[part]), torch.tensor(same[part]))
        assert m.compute().item() == pytest.approx(expected, abs=1e-12)
    # and it differs from ranking ties by arrival order, which is what DDP got wrong
    assert any(abs(numpy_voc_ap(d[o], same[o]) - expected) > 1e-6 for o in (rng.permutation(120) for _ in range(6)))


def test_nan_distances_score_nan_not_wrong():
    """A broken model (NaN distances) must not look like a model that merely disagrees with people."""
    nan = float("nan")
    scores = two_afc(torch.tensor([0.1, nan, 0.3]), torch.tensor([0.2, 0.4, nan]), torch.tensor([0.0, 1.0, 0.5]))
    assert scores[0] == 1 and scores[1:].isnan().all()
    assert jnd_average_precision(torch.tensor([0.1, nan]), torch.tensor([1.0, 0.0])).isnan()


@pytest.mark.parametrize("seed", range(2))
def test_one_subset_scorer_for_validation_and_evaluate(seed):
    """Scoring all of a subset's distances at once gives what the batches of validation accumulate, bit for bit."""
    rng = np.random.default_rng(seed)
    d0, d1, d = (torch.tensor(rng.random(90)) for _ in range(3))
    judge, same = torch.tensor(rng.integers(0, 6, 90) / 5), torch.tensor(rng.choice([0.0, 0.5, 1.0], 90))
    for kind, distances, target, numpy_score in (
        ("2afc", (d0, d1), judge, numpy_2afc(d0.numpy(), d1.numpy(), judge.numpy())),
        ("jnd", (d,), same, numpy_voc_ap(d.numpy(), same.numpy())),
    ):
        whole = score_subset(kind, distances, target)
        assert whole == pytest.approx(numpy_score, abs=1e-12)
        m = subset_metric(kind)
        for part in range(3):  # as validation sees it: batch by batch
            m.update(*(x[part * 30 : (part + 1) * 30] for x in distances), target[part * 30 : (part + 1) * 30])
        assert float(m.compute()) == pytest.approx(whole, abs=1e-15)
    # all at once, the scorer is exactly the plain functions evaluate used
    assert score_subset("2afc", (d0, d1), judge) == float(two_afc(d0, d1, judge).mean())
    assert score_subset("jnd", (d,), same) == float(jnd_average_precision(d, same))
    with pytest.raises(ConfigError, match="unknown subset kind 'mse'; choose one of: 2afc, jnd, mos"):
        subset_metric("mse")
