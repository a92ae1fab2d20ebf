"""JudgmentsDataModule: batches, per-group loaders, memory modes, workers, errors, the demo set."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from lpips_lightning.datamodules import JudgmentsDataModule, JudgmentsDataset, UnpaddedDistributedSampler
from lpips_lightning.datamodules.demo import build_demo
from lpips_lightning.errors import JudgmentsError


def test_batches_and_per_group_loaders(bapps_h5):
    dm = JudgmentsDataModule(str(bapps_h5), train=["2afc/train/*"], val=["2afc/val/*", "jnd/*/*"], batch_size=5)
    dm.setup("fit")
    assert dm.groups("val") == ["2afc/val/cnn", "jnd/val/cnn"]
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"ref", "p0", "p1", "judge", "group", "index"}
    assert batch["ref"].dtype == torch.uint8 and batch["ref"].shape == (5, 3, 32, 32)
    assert batch["judge"].dtype == torch.float32
    loaders = dm.val_dataloader()
    assert len(loaders) == 2
    jnd = next(iter(loaders[1]))
    assert set(jnd) == {"p0", "p1", "same", "group", "index"} and (jnd["group"] == 1).all()
    with h5py.File(bapps_h5) as f:  # validation order is the file's order
        np.testing.assert_array_equal(jnd["p1"].numpy(), f["jnd/val/cnn/p1"][:5])
        np.testing.assert_allclose(jnd["same"].numpy(), f["jnd/val/cnn/same"][:5])


def test_unknown_group_lists_available(bapps_h5):
    with pytest.raises(JudgmentsError, match=r"no group matches '2afc/val/nope'; the file has: 2afc/train/trad, "):
        JudgmentsDataModule(str(bapps_h5), val=["2afc/val/nope"])


def test_missing_file_fails_at_construction(tmp_path):
    with pytest.raises(JudgmentsError, match="gone.h5: no such judgments file"):
        JudgmentsDataModule(str(tmp_path / "gone.h5"))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_in_memory_and_lazy_give_identical_batches(bapps_h5, num_workers):
    batches = {}
    for mode in (True, False):
        dm = JudgmentsDataModule(
            str(bapps_h5), val=["2afc/val/*", "jnd/val/*"], batch_size=4, num_workers=num_workers, in_memory=mode
        )
        dm.setup("fit")
        assert (dm.datasets["train"][0].images is not None) == mode
        torch.manual_seed(0)
        train = [b for b in dm.train_dataloader()]
        val = [b for loader in dm.val_dataloader() for b in loader]
        batches[mode] = train + val
    for a, b in zip(*batches.values()):
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k])


def test_dataset_pickles_without_open_file(bapps_h5):
    import pickle

    ds = JudgmentsDataset(bapps_h5, ["2afc/val/cnn"], in_memory=False)
    ds.__getitems__([0, 3])
    assert ds._file is not None
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._file is None
    torch.testing.assert_close(clone[2]["ref"], ds[2]["ref"])


def test_unpadded_sampler_covers_every_item_once():
    data = list(range(11))
    seen = [i for r in range(4) for i in UnpaddedDistributedSampler(data, num_replicas=4, rank=r)]
    assert sorted(seen) == data
    assert [len(UnpaddedDistributedSampler(data, num_replicas=4, rank=r)) for r in range(4)] == [3, 3, 3, 2]


def test_demo_is_deterministic_and_shaped(tmp_path):
    a = build_demo(tmp_path / "a.h5", seed=3, n_train=40, n_val=20, n_jnd=10)
    b = build_demo(tmp_path / "b.h5", seed=3, n_train=40, n_val=20, n_jnd=10)
    c = build_demo(tmp_path / "c.h5", seed=4, n_train=40, n_val=20, n_jnd=10)
    with h5py.File(a) as fa, h5py.File(b) as fb, h5py.File(c) as fc:
        for g in ("2afc/train/mixed", "2afc/val/mixed", "2afc/val/same_kind"):
            for k in ("ref", "p0", "p1", "judge"):
                np.testing.assert_array_equal(fa[g][k][()], fb[g][k][()])
            assert not np.array_equal(fa[g]["ref"][()], fc[g]["ref"][()])
        judge = fa["2afc/val/mixed/judge"][()]
        assert set(np.round(judge * 5).astype(int)) <= set(range(6)) and 0 < judge.mean() < 1
        assert len(set(judge.tolist())) > 2  # fractional, with disagreement
        assert fa["jnd/val/traditional/p0"].shape == (10, 3, 64, 64)
        assert fa["2afc/val/mixed"].attrs["simulated"]
