"""Training on MOS groups: pairs of distorted images of one reference served as 2AFC triplets, an index only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import assert_cache_matches_full, random_group, write_judgments

from lpips_lightning.data.datamodule import JudgmentsDataModule
from lpips_lightning.data.mos_pairs import pair_indices, pair_judgments
from lpips_lightning.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

REFS, PER_REF = 3, 4  # three reference images, four distorted images of each


def mos_group(size: int = 16, seed: int = 1, std: bool = True, better: bool = True, refs: int = REFS) -> dict:
    """A MOS group whose items come in runs of PER_REF sharing one reference image, interleaved in storage."""
    rng = np.random.default_rng(seed)
    n = refs * PER_REF
    references = rng.integers(0, 256, (refs, 3, size, size), dtype=np.uint8)
    which = np.arange(n) % refs  # stored interleaved: item k belongs to reference k % refs
    arrays = {
        "ref": references[which],
        "dist": rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8),
        "mos": rng.permutation(np.linspace(1, 5, n)).astype(np.float32),
        "higher_is_better": better,
    }
    if std:
        arrays["std"] = rng.uniform(0.2, 1.0, n).astype(np.float32)
    return arrays


def all_items(dm: JudgmentsDataModule) -> dict[str, torch.Tensor]:
    ds = dm.datasets["train"][0]
    return ds.__getitems__(list(range(len(ds))))


def find(rows: np.ndarray, image: np.ndarray) -> int:
    """The stored row holding `image` (the test's images are all distinct)."""
    (hit,) = np.flatnonzero((rows == image).reshape(len(rows), -1).all(axis=1))
    return int(hit)


def test_judgment_rule_gaussian_observer_sign_and_dmos():
    m0, m1 = np.array([3.0, 3.0, 2.0, 4.0]), np.array([4.0, 3.0, 2.5, 1.0])
    s0, s1 = np.array([0.5, 1.0, 0.0, 0.3]), np.array([1.0, 1.0, 0.0, 0.4])
    phi = [
        0.5 * (1 + math.erf((b - a) / math.sqrt(2 * (x * x + y * y)))) if x or y else None
        for a, b, x, y in zip(m0, m1, s0, s1)
    ]
    got = pair_judgments(m0, m1, s0, s1)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, [phi[0], 0.5, 1.0, phi[3]], rtol=1e-6)  # both stds 0: the sign rule
    np.testing.assert_array_equal(pair_judgments(m0, m1), [1.0, 0.5, 1.0, 0.0])  # no std: the sign
    # DMOS: a higher score is worse, so the second image is preferred when its score is lower
    np.testing.assert_allclose(pair_judgments(m0, m1, s0, s1, higher_is_better=False), 1 - got, rtol=1e-6)
    np.testing.assert_array_equal(pair_judgments(m0, m1, higher_is_better=False), [0.0, 0.5, 0.0, 1.0])


def test_pair_indices_all_pairs_in_order_or_a_seeded_sample():
    a, b = pair_indices(7, None, np.random.default_rng(0))
    ta, tb = np.triu_indices(7, 1)
    np.testing.assert_array_equal(a, ta)
    np.testing.assert_array_equal(b, tb)
    a, b = pair_indices(7, 5, np.random.default_rng(3))
    pairs = set(zip(a.tolist(), b.tolist()))
    assert len(pairs) == 5 and pairs <= set(zip(ta.tolist(), tb.tolist()))
    again = pair_indices(7, 5, np.random.default_rng(3))
    np.testing.assert_array_equal(again[0], a)
    np.testing.assert_array_equal(again[1], b)
    assert pair_indices(1, 64, np.random.default_rng(0))[0].size == 0


def test_mos_group_trains_as_2afc_triplets_of_one_reference(tmp_path):
    arrays = mos_group()
    path = write_judgments(tmp_path / "m.h5", {"mos/train/kadid": arrays})
    dm = JudgmentsDataModule(str(path), train=["mos/train/kadid"], val=[], batch_size=5, in_memory=False)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"ref", "p0", "p1", "judge", "group", "index"}  # exactly a 2AFC batch
    items = all_items(dm)
    assert len(items["judge"]) == REFS * math.comb(PER_REF, 2)  # every pair: 6 per reference
    seen = set()
    for k in range(len(items["judge"])):
        i, j = find(arrays["dist"], items["p0"][k].numpy()), find(arrays["dist"], items["p1"][k].numpy())
        assert i != j and i % REFS == j % REFS  # two distorted images of one reference ...
        np.testing.assert_array_equal(items["ref"][k].numpy(), arrays["ref"][i])  # ... and that reference
        m, s = arrays["mos"], arrays["std"]
        expected = 0.5 * (1 + math.erf((m[j] - m[i]) / math.sqrt(2 * (s[i] ** 2 + s[j] ** 2))))
        assert float(items["judge"][k]) == pytest.approx(expected, rel=1e-5)
        seen.add(frozenset((i, j)))
    assert len(seen) == len(items["judge"])  # no pair twice
    assert (items["judge"] > 0.5).any() and (items["judge"] < 0.5).any()  # both orders occur (shuffled pairs)
    assert dm.higher_is_better("mos/train/kadid") is True


def test_dmos_flips_the_judgment_and_the_cap_samples_pairs(tmp_path):
    mos = write_judgments(tmp_path / "mos.h5", {"mos/train/x": mos_group()})
    dmos = write_judgments(tmp_path / "dmos.h5", {"mos/train/x": mos_group(better=False)})
    judged = {}
    for path in (mos, dmos):
        dm = JudgmentsDataModule(str(path), train=["mos/train/x"], val=[])
        dm.setup("fit")
        judged[path] = all_items(dm)
    torch.testing.assert_close(judged[mos]["p1"], judged[dmos]["p1"])  # the same pairs in the same order
    torch.testing.assert_close(judged[dmos]["judge"], 1 - judged[mos]["judge"], rtol=1e-5, atol=1e-6)
    capped = {}
    for seed in (0, 1, 2):
        dm = JudgmentsDataModule(str(mos), train=["mos/train/x"], val=[], mos_pairs_per_ref=2, split_seed=seed)
        dm.setup("fit")
        capped[seed] = all_items(dm)["index"].numel(), dm.datasets["train"][0].rows["p1"].tolist()
    assert {n for n, _ in capped.values()} == {REFS * 2}  # two pairs per reference
    assert len({tuple(rows) for _, rows in capped.values()}) > 1  # the seed picks the sample
    dm = JudgmentsDataModule(str(mos), train=["mos/train/x"], val=[], mos_pairs_per_ref=2, split_seed=1)
    dm.setup("fit")
    assert dm.datasets["train"][0].rows["p1"].tolist() == capped[1][1]  # and the same seed the same one


def test_mixed_training_in_memory_equals_lazy_and_holds_each_image_once(tmp_path):
    path = write_judgments(
        tmp_path / "j.h5", {"2afc/train/a": random_group("2afc", n=5, size=16), "mos/train/b": mos_group()}
    )
    served = {}
    for memory in (False, True):
        dm = JudgmentsDataModule(str(path), train=["2afc/train/*", "mos/train/*"], val=[], in_memory=memory)
        dm.setup("fit")
        served[memory] = all_items(dm)
    for k in served[False]:
        torch.testing.assert_close(served[True][k], served[False][k])
    groups = served[True]["group"]
    assert (groups[:5] == 0).all() and (groups[5:] == 1).all() and len(groups) == 5 + REFS * 6
    ds = dm.datasets["train"][0]
    pools = {id(v) for v in ds.images.values()}
    assert len(pools) == 1  # ref, p0 and p1 share one tensor: the stored rows the items use, each once
    assert 5 * 3 + REFS * PER_REF < ds.images["ref"].shape[0] <= 5 * 3 + 2 * REFS * PER_REF


def test_on_device_store_and_index_only_batches_gather_the_same_images(tmp_path):
    path = write_judgments(tmp_path / "j.h5", {"mos/train/b": mos_group()})
    dm = JudgmentsDataModule(str(path), train=["mos/train/b"], val=[], batch_size=4, on_device=True)
    dm.setup("fit")
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert set(batch) == {"judge", "group", "index"}
    gathered = dm.gather_images(batch["index"])
    for k, v in dm.datasets["train"][0].read_images(batch["index"]).items():
        torch.testing.assert_close(gathered[k], v)


def test_feature_cache_works_on_mos_triplets(tmp_path):
    from lpips_lightning.train.module import LPIPSModule
    from lpips_lightning.train.steps import Steps

    path = write_judgments(tmp_path / "j.h5", {"mos/train/b": mos_group(size=32)})
    model = LPIPSModule(variant="lin", pretrained=False, dropout=False, feature_cache=True)
    with torch.no_grad():
        for h in model.lpips.heads:
            h.weight.uniform_(0, 1)
    dm = JudgmentsDataModule(str(path), train=["mos/train/b"], val=[], batch_size=5, index_only=True)
    dm.setup("fit")
    model.steps = Steps(model.lpips, model.rank_head, model.backbone_pass, cache_from=dm.datasets["train"][0])
    model.steps.build_cache(chunk=5)
    assert model.steps.cache.shape[1] == REFS * 6
    assert_cache_matches_full(model, dm.datasets["train"][0], torch.tensor([0, 7, 17, 4]))


def test_mos_groups_that_make_no_pairs_and_bad_options_are_refused(tmp_path):
    lonely = random_group("mos", n=4, size=16)  # four different references: no pair
    path = write_judgments(tmp_path / "j.h5", {"mos/train/lonely": lonely, "jnd/train/j": random_group("jnd")})
    with pytest.raises(ConfigError, match="mos/train/lonely: no two of its distorted images share a reference"):
        JudgmentsDataModule(str(path), train=["mos/train/lonely"], val=[])
    with pytest.raises(ConfigError, match="training needs 2AFC or MOS groups; jnd/train/j is JND"):
        JudgmentsDataModule(str(path), train=["jnd/train/j"], val=[])
    with pytest.raises(ConfigError, match="mos_pairs_per_ref must be at least 1"):
        JudgmentsDataModule(str(path), train=["mos/train/lonely"], mos_pairs_per_ref=0)


def test_mos_val_groups_are_served_as_they_are(tmp_path):
    path = write_judgments(
        tmp_path / "j.h5", {"2afc/train/a": random_group("2afc", size=16), "mos/val/v": mos_group(better=False)}
    )
    dm = JudgmentsDataModule(str(path))
    dm.setup("fit")
    assert dm.groups("val") == ["mos/val/v"]
    batch = next(iter(dm.val_dataloader()[0]))
    assert {"ref", "dist", "mos"} <= set(batch) and "judge" not in batch
    assert dm.higher_is_better("mos/val/v") is False
    with pytest.raises(ConfigError, match="2afc/train/a is not a selected MOS group"):
        dm.higher_is_better("2afc/train/a")


@pytest.mark.slow
def test_a_fit_trains_on_mos_and_2afc_groups_together(tmp_path):
    from conftest import cpu_trainer

    from lpips_lightning.train.module import LPIPSModule

    path = write_judgments(
        tmp_path / "j.h5",
        {
            "2afc/train/a": random_group("2afc", n=4, size=32),
            "mos/train/b": mos_group(size=32),
            "2afc/val/v": random_group("2afc", n=4, size=32, seed=2),
        },
    )
    model = LPIPSModule(variant="lin", pretrained=False)
    before = [h.weight.clone() for h in model.lpips.heads]
    dm = JudgmentsDataModule(str(path), train=["2afc/train/*", "mos/train/*"], batch_size=8)
    cpu_trainer(tmp_path, max_epochs=1).fit(model, dm)
    assert model.global_step == -(-(4 + REFS * 6) // 8)  # every triplet of both kinds, in batches of 8
    assert any(not torch.equal(a, h.weight) for a, h in zip(before, model.lpips.heads))
    assert "val/2afc/v" in model.scores["val"]
