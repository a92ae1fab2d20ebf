"""JudgmentsDataModule and JudgmentsDataset: batches, per-group loaders, memory modes, workers, what a model asks."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from lpips_lightning.data.datamodule import JudgmentsDataModule
from lpips_lightning.data.dataset import JudgmentsDataset, UnpaddedDistributedSampler
from lpips_lightning.errors import ConfigError, JudgmentsError


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


def test_index_only_batches_and_batches_of_several_minibatches(bapps_h5):
    """What a model needs of its training batches is the data module's own arguments (fit links them)."""
    plain = JudgmentsDataModule(str(bapps_h5), batch_size=2)
    dm = JudgmentsDataModule(str(bapps_h5), batch_size=2, index_only=True, steps_per_batch=3)
    for m in (plain, dm):
        m.setup("fit")
    batches = list(dm.train_dataloader())
    assert [len(b["judge"]) for b in batches] == [6, 6]  # 12 items: minibatches of 2, three per batch
    assert set(batches[0]) == {"judge", "group", "index"}  # no images
    # the same items in the same order as one minibatch per batch
    order = torch.cat([b["index"] for b in plain.train_dataloader()])
    torch.testing.assert_close(torch.cat([b["index"] for b in batches]), order)
    with pytest.raises(ConfigError, match="steps_per_batch must be at least 1, got 0"):
        JudgmentsDataModule(str(bapps_h5), steps_per_batch=0)


def test_on_device_batches_hold_indices_that_gather_their_images(bapps_h5):
    dm = JudgmentsDataModule(str(bapps_h5), batch_size=4, on_device=True)
    dm.setup("fit")
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert "ref" not in batch and dm.datasets["train"][0].index_only
    images = dm.gather_images(batch["index"])
    torch.testing.assert_close(images["p0"], dm.datasets["train"][0].read_images(batch["index"])["p0"])
    with pytest.raises(ConfigError, match="not kept on the device"):
        JudgmentsDataModule(str(bapps_h5), on_device=False).gather_images(batch["index"])


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
